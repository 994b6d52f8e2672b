-- Overruns (issue 14, "no free work"): a charge above its reservation takes only what is free
-- and is recorded. usage_logs.cost becomes the amount actually charged (what the ledger's charge
-- row says, so every reader of usage stays right); two columns keep what the call priced at and
-- what its reservation covered. An overrun is a row whose priced_cost is above its held_amount.
ALTER TABLE usage_logs
    -- What the usage priced at. NULL on rows settled before this column existed.
    ADD COLUMN priced_cost NUMERIC(28, 8)
        CONSTRAINT usage_logs_priced_cost_check CHECK (priced_cost >= 0),
    -- What the call's reservation covered: its hold, or the part of its credit lease it took;
    -- 0 when the reservation was gone (released or expired) before the charge arrived. NULL on
    -- rows settled before this column existed.
    ADD COLUMN held_amount NUMERIC(28, 8)
        CONSTRAINT usage_logs_held_amount_check CHECK (held_amount >= 0),
    -- A call is never charged more than it priced at.
    ADD CONSTRAINT usage_logs_charged_at_most_priced CHECK (cost <= priced_cost);

-- Rows the old settlement capped recorded the uncapped amount: make cost what the ledger
-- charged (no charge row: nothing was charged) and keep the old amount as priced_cost, so the
-- usage-against-ledger check of `billing-worker reconcile` holds for history too. Only such
-- rows are written; the rest keep NULL in the new columns (no table rewrite).
WITH charged AS (
    SELECT u.id, COALESCE(-l.delta, 0) AS amount
    FROM usage_logs u
    LEFT JOIN balance_ledger l ON l.kind = 'charge' AND l.reference = u.request_id::text
    WHERE u.cost <> COALESCE(-l.delta, 0))
UPDATE usage_logs u SET priced_cost = u.cost, cost = c.amount
FROM charged c WHERE u.id = c.id;

-- The admin's overrun list (GET /v1/admin/overruns), newest first: a few rows among many.
CREATE INDEX usage_logs_overrun_idx ON usage_logs (created_at DESC, id DESC)
    WHERE priced_cost > held_amount;

-- The last step of a batch settlement (billing-worker, persistence::billing::settle_many): lock
-- the batch's users, debit them, release their reservations, write the ledger and the usage
-- rows, in one call. It replaces settle_charges (kept until no billing-worker of the previous
-- release runs; drop it then), which capped a charge at the whole balance, taking money that
-- other open holds and leases reserved, and left the usage row with the uncapped amount.
--
-- The users are locked first, in id order, by a statement of their own (see settle_charges for
-- the deadlock a single lock-and-update statement runs into). A charge naming no existing user
-- is refused as a foreign-key violation, which billing-worker treats as permanent.
--
-- Per user, charges are applied in p_ord order. Charge i may take what its own reservation
-- released (p_released: its hold, or the part of its lease it took; 0 if the reservation is
-- gone) plus the free balance F (balance minus held, i.e. minus every open hold and lease),
-- never money another open reservation keeps; what a reservation leaves unused becomes free
-- for the later charges. With S the free money before a charge:
--     debit_i = least(cost_i, S_{i-1} + released_i),   S_i = S_{i-1} + released_i - debit_i,
-- S_0 = F, i.e. S_i = greatest(S_{i-1} + released_i - cost_i, 0), a running sum floored at zero.
-- Set-based: with P_i the running sum of (released - cost), what the charges up to i could not
-- collect is U_i = greatest(-F - min(P_1..P_i), 0), so debit_i = cost_i - (U_i - U_{i-1}) and
-- the balance after it is balance - (running sum of costs - U_i). Returns, per charge in p_ord
-- order, what was debited and the balance after it.
CREATE FUNCTION settle_usage(p_ord BIGINT[], p_users BIGINT[], p_costs NUMERIC[],
                             p_released NUMERIC[], p_requests UUID[], p_access_keys BIGINT[],
                             p_models BIGINT[], p_model_names TEXT[], p_prompt_tokens BIGINT[],
                             p_completion_tokens BIGINT[], p_cached_prompt_tokens BIGINT[],
                             p_images INTEGER[])
RETURNS TABLE (ord BIGINT, amount NUMERIC, balance_after NUMERIC)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_locked BIGINT;
BEGIN
    PERFORM 1 FROM users WHERE id = ANY (p_users) ORDER BY id FOR NO KEY UPDATE;
    GET DIAGNOSTICS v_locked = ROW_COUNT;
    IF v_locked < (SELECT count(DISTINCT x) FROM unnest(p_users) AS x) THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'a charge names a user that does not exist',
            CONSTRAINT = 'usage_logs_user_id_fkey';
    END IF;

    RETURN QUERY
    WITH c AS (
        SELECT * FROM unnest(p_ord, p_users, p_costs, p_released, p_requests, p_access_keys,
                             p_models, p_model_names, p_prompt_tokens, p_completion_tokens,
                             p_cached_prompt_tokens, p_images)
            AS c(ord, user_id, cost, released, request_id, access_key_id, model_id,
                 model_name, prompt_tokens, completion_tokens, cached_prompt_tokens, images)),
    running AS (
        SELECT c.*, u.balance, greatest(u.balance - u.held, 0) AS free,
               sum(c.cost) OVER w AS costs_upto,
               sum(c.released - c.cost) OVER w AS left_upto
        FROM c JOIN users u ON u.id = c.user_id
        WINDOW w AS (PARTITION BY c.user_id ORDER BY c.ord)),
    short AS (
        SELECT r.*,
               greatest(-r.free - min(r.left_upto) OVER w, 0) AS short_upto,
               greatest(-r.free - COALESCE(min(r.left_upto) OVER (w ROWS BETWEEN UNBOUNDED
                                                                  PRECEDING AND 1 PRECEDING),
                                           0), 0) AS short_before
        FROM running r
        WINDOW w AS (PARTITION BY r.user_id ORDER BY r.ord)),
    charged AS (
        SELECT s.*, s.cost - (s.short_upto - s.short_before) AS debit,
               s.balance - (s.costs_upto - s.short_upto) AS balance_left
        FROM short s),
    per_user AS (
        SELECT ch.user_id, min(ch.balance_left) AS balance, sum(ch.released) AS released
        FROM charged ch GROUP BY ch.user_id),
    updated AS (
        UPDATE users u SET balance = p.balance, held = u.held - p.released, updated_at = now()
        FROM per_user p WHERE u.id = p.user_id),
    ledger AS (
        INSERT INTO balance_ledger (user_id, delta, balance_after, kind, reference)
        SELECT ch.user_id, -ch.debit, ch.balance_left, 'charge', ch.request_id::text
        FROM charged ch WHERE ch.debit > 0),
    logged AS (
        -- A request id logged meanwhile by a concurrent settlement fails the unique key here,
        -- and the whole transaction with it: the charge is then settled again, and found.
        INSERT INTO usage_logs (request_id, user_id, access_key_id, model_id, model_name,
                                prompt_tokens, completion_tokens, cached_prompt_tokens, images,
                                cost, priced_cost, held_amount)
        SELECT ch.request_id, ch.user_id, ch.access_key_id, ch.model_id, ch.model_name,
               ch.prompt_tokens, ch.completion_tokens, ch.cached_prompt_tokens, ch.images,
               ch.debit, ch.cost, ch.released
        FROM charged ch)
    SELECT ch.ord, ch.debit, ch.balance_left FROM charged ch ORDER BY ch.ord;
END
$$;
