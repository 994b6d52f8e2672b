DROP TRIGGER usage_logs_forget_model ON llm_models;
DROP TRIGGER usage_logs_forget_access_key ON access_keys;
DROP FUNCTION usage_logs_forget();
DROP TRIGGER usage_logs_keep_user ON users;
DROP FUNCTION usage_logs_keep_user();
-- NOT VALID: rows whose model or key was deleted meanwhile keep their ids; new rows are checked.
ALTER TABLE usage_logs
    ADD CONSTRAINT usage_logs_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id)
        ON DELETE RESTRICT NOT VALID,
    ADD CONSTRAINT usage_logs_access_key_id_fkey FOREIGN KEY (access_key_id)
        REFERENCES access_keys (id) ON DELETE SET NULL NOT VALID,
    ADD CONSTRAINT usage_logs_model_id_fkey FOREIGN KEY (model_id) REFERENCES llm_models (id)
        ON DELETE SET NULL NOT VALID;

-- Back to one ledger row per charge (rows written meanwhile stay shared: they are right).
CREATE OR REPLACE FUNCTION settle_usage(p_ord BIGINT[], p_users BIGINT[], p_costs NUMERIC[],
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

ALTER TABLE usage_logs DROP COLUMN ledger_id;
