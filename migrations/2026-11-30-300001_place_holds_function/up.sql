-- Admission of many model calls in one call (gateway-api, persistence::billing::place_holds):
-- lock the calls' users, admit each call whose maximum cost fits in its user's balance minus
-- open holds, and hold it. Called on its own (autocommit), it is one round trip that also
-- commits, for a whole batch of calls.
--
-- The users are locked first, in id order (the order settlements and job submissions lock them
-- in), by a statement of their own, NO KEY UPDATE; the next statement has a fresh snapshot that
-- already sees the locked versions (see settle_charges for the deadlock a single lock-and-update
-- statement runs into).
--
-- Several calls of one user are admitted cheapest first while the running sum of their holds
-- fits, which is what admitting them one by one in that order would do, so never more than the
-- balance covers. Returns the admitted calls with their hold ids.
CREATE FUNCTION place_holds(p_ord BIGINT[], p_users BIGINT[], p_request_ids UUID[],
                            p_amounts NUMERIC[], p_ttl_seconds BIGINT)
RETURNS TABLE (request_id UUID, hold_id BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM users WHERE id = ANY (p_users) ORDER BY id FOR NO KEY UPDATE;

    RETURN QUERY
    WITH r AS (
        SELECT * FROM unnest(p_ord, p_users, p_request_ids, p_amounts)
            AS r(ord, user_id, request_id, amount)),
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
        SELECT admitted.request_id, admitted.user_id, admitted.amount,
               now() + make_interval(secs => p_ttl_seconds)
        FROM admitted
        RETURNING balance_holds.request_id, balance_holds.id)
    SELECT held.request_id, held.id FROM held;
END
$$;

-- Job submission admits through the same function: one admission rule for calls and jobs.
-- Same signature and result as before (see the submit_jobs migration); a job is inserted
-- PENDING only if place_holds admitted (and held) it.
CREATE OR REPLACE FUNCTION submit_jobs(p_ord BIGINT[], p_job_ids UUID[], p_users BIGINT[],
                                       p_amounts NUMERIC[], p_job_types TEXT[],
                                       p_access_keys BIGINT[], p_models BIGINT[],
                                       p_payloads JSONB[], p_callbacks TEXT[],
                                       p_hold_ttl_seconds BIGINT)
RETURNS TABLE (job_id UUID)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH admitted AS (
        SELECT h.request_id
        FROM place_holds(p_ord, p_users, p_job_ids, p_amounts, p_hold_ttl_seconds) h),
    r AS (
        SELECT * FROM unnest(p_ord, p_job_ids, p_users, p_job_types, p_access_keys, p_models,
                             p_payloads, p_callbacks)
            AS r(ord, job_id, user_id, job_type, access_key_id, model_id, payload,
                 callback_url)),
    job AS (
        INSERT INTO async_jobs (job_id, job_type, user_id, access_key_id, model_id,
                                request_payload, callback_url)
        SELECT r.job_id, r.job_type, r.user_id, r.access_key_id, r.model_id, r.payload,
               r.callback_url
        FROM r JOIN admitted a ON a.request_id = r.job_id
        ORDER BY r.ord
        RETURNING async_jobs.job_id)
    SELECT job.job_id FROM job;
END
$$;
