-- A batch of job submissions (gateway-api, persistence::jobs::submit_many) in one call: lock
-- the batch's users, admit each job whose hold fits in its user's balance minus open holds,
-- hold it and insert it PENDING. Called on its own (autocommit), it is one round trip that
-- also commits, where a transaction of the same two statements took three (BEGIN, the
-- statements, COMMIT).
--
-- The users are locked first, in id order (the order settlements lock them in), by a
-- statement of their own, NO KEY UPDATE (what updating `held` needs; it does not wait for a
-- concurrent insert that merely references a user). The next statement has a fresh snapshot
-- that already sees the locked versions (see settle_charges for the deadlock a single
-- lock-and-update statement runs into).
--
-- Several jobs of one user are admitted cheapest first while the running sum of their holds
-- fits, which is what admitting them one by one in that order would do. Returns the admitted
-- job ids.
CREATE FUNCTION submit_jobs(p_ord BIGINT[], p_job_ids UUID[], p_users BIGINT[],
                            p_amounts NUMERIC[], p_job_types TEXT[], p_access_keys BIGINT[],
                            p_models BIGINT[], p_payloads JSONB[], p_callbacks TEXT[],
                            p_hold_ttl_seconds BIGINT)
RETURNS TABLE (job_id UUID)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM users WHERE id = ANY (p_users) ORDER BY id FOR NO KEY UPDATE;

    RETURN QUERY
    WITH r AS (
        SELECT * FROM unnest(p_ord, p_job_ids, p_users, p_amounts, p_job_types, p_access_keys,
                             p_models, p_payloads, p_callbacks)
            AS r(ord, job_id, user_id, amount, job_type, access_key_id, model_id, payload,
                 callback_url)),
    running AS (
        SELECT r.*, u.balance - u.held AS available,
               sum(r.amount) OVER (PARTITION BY r.user_id ORDER BY r.amount, r.ord) AS upto
        FROM r JOIN users u ON u.id = r.user_id AND u.status = 'active'),
    admitted AS (SELECT * FROM running WHERE running.upto <= running.available),
    per_user AS (
        SELECT admitted.user_id, sum(admitted.amount) AS amount
        FROM admitted GROUP BY admitted.user_id),
    reserved AS (
        UPDATE users u SET held = u.held + p.amount FROM per_user p WHERE u.id = p.user_id),
    held AS (
        INSERT INTO balance_holds (request_id, user_id, amount, expires_at)
        SELECT admitted.job_id, admitted.user_id, admitted.amount,
               now() + make_interval(secs => p_hold_ttl_seconds)
        FROM admitted),
    job AS (
        INSERT INTO async_jobs (job_id, job_type, user_id, access_key_id, model_id,
                                request_payload, callback_url)
        SELECT admitted.job_id, admitted.job_type, admitted.user_id, admitted.access_key_id,
               admitted.model_id, admitted.payload, admitted.callback_url
        FROM admitted ORDER BY admitted.ord
        RETURNING async_jobs.job_id)
    SELECT job.job_id FROM job;
END
$$;
