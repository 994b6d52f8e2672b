-- submit_jobs as the submit_jobs migration created it.
CREATE OR REPLACE FUNCTION submit_jobs(p_ord BIGINT[], p_job_ids UUID[], p_users BIGINT[],
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

DROP FUNCTION place_holds(BIGINT[], BIGINT[], UUID[], NUMERIC[], BIGINT);
