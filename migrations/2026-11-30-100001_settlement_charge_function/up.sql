-- The last step of a batch settlement (billing-worker, persistence::billing::settle_many): lock
-- the batch's users, debit them, release their holds and write the ledger, in one call.
--
-- A function, not one statement: a statement that both locks rows (FOR ... UPDATE) and then
-- updates them re-locks, through their newer versions, rows that changed after its snapshot,
-- and two concurrent settlements (replicas) deadlocked on the waiters' tuple locks. Here the
-- users are locked first, in id order, by a statement of their own; the next statement has a
-- fresh snapshot that already sees the locked versions. FOR NO KEY UPDATE (what an UPDATE
-- takes), not FOR UPDATE, which would also wait for the key-share locks that the usage logs'
-- foreign keys of a concurrent settlement hold on the same users.
--
-- Each charge (in p_ord order, per user) is capped at what is left of the balance; returns per
-- charge what was debited and the balance after it, in p_ord order.
CREATE FUNCTION settle_charges(p_ord BIGINT[], p_users BIGINT[], p_costs NUMERIC[],
                               p_released NUMERIC[], p_refs TEXT[])
RETURNS TABLE (ord BIGINT, amount NUMERIC, balance_after NUMERIC)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM users WHERE id = ANY (p_users) ORDER BY id FOR NO KEY UPDATE;

    RETURN QUERY
    WITH c AS (
        SELECT * FROM unnest(p_ord, p_users, p_costs, p_released, p_refs)
            AS c(ord, user_id, cost, released, ref)),
    running AS (
        SELECT c.ord, c.user_id, c.released, c.ref, u.balance, c.cost,
               sum(c.cost) OVER (PARTITION BY c.user_id ORDER BY c.ord) AS upto
        FROM c JOIN users u ON u.id = c.user_id),
    charged AS (
        SELECT running.ord, running.user_id, running.released, running.ref,
               greatest(running.balance - (running.upto - running.cost), 0)
                   - greatest(running.balance - running.upto, 0) AS amount,
               greatest(running.balance - running.upto, 0) AS balance_after
        FROM running),
    per_user AS (
        SELECT charged.user_id, min(charged.balance_after) AS balance,
               sum(charged.released) AS released
        FROM charged GROUP BY charged.user_id),
    updated AS (
        UPDATE users u SET balance = p.balance, held = u.held - p.released, updated_at = now()
        FROM per_user p WHERE u.id = p.user_id),
    ledger AS (
        INSERT INTO balance_ledger (user_id, delta, balance_after, kind, reference)
        SELECT charged.user_id, -charged.amount, charged.balance_after, 'charge', charged.ref
        FROM charged WHERE charged.amount > 0)
    SELECT charged.ord, charged.amount, charged.balance_after FROM charged ORDER BY charged.ord;
END
$$;
