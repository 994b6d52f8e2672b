-- Limits (rate, concurrency, spend) and the shared counters that make them hold across gateway
-- replicas. See docs/LIMITS.md.

-- One row per limited subject. scope: 0 = the platform default for access keys (subject 0),
-- 1 = an access key, 2 = a user, 3 = a model (all users together). NULL = no limit.
CREATE TABLE limits (
    scope              SMALLINT    NOT NULL CHECK (scope BETWEEN 0 AND 3),
    subject            BIGINT      NOT NULL,
    rpm_limit          INTEGER     CHECK (rpm_limit > 0),
    tpm_limit          BIGINT      CHECK (tpm_limit > 0),
    max_concurrency    INTEGER     CHECK (max_concurrency > 0),
    spend_limit        NUMERIC(28, 8) CHECK (spend_limit >= 0),
    spend_limit_period TEXT        NOT NULL DEFAULT 'total'
                                   CHECK (spend_limit_period IN ('total', 'day', 'month')),
    -- Jobs PENDING or PROCESSING per user at most (the platform row and user rows only).
    max_pending_jobs   INTEGER     CHECK (max_pending_jobs > 0),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, subject),
    -- Models have no spend limit (what a user may spend is the key's and the user's business).
    CONSTRAINT limits_model_no_spend CHECK (scope <> 3 OR spend_limit IS NULL)
);
INSERT INTO limits (scope, subject, max_pending_jobs) VALUES (0, 0, 1000);
-- A user's unfinished jobs, counted at each submission (up to the cap).
CREATE INDEX async_jobs_user_open_idx ON async_jobs (user_id)
    WHERE status IN ('PENDING', 'PROCESSING');

-- Requests and tokens admitted per subject and calendar minute, by every replica together.
-- A replica borrows a slice of a window (one statement, `borrow_rate`) and admits against it in
-- memory; the sum of slices never exceeds the limit. unit: 1 = requests, 2 = tokens.
CREATE TABLE rate_windows (
    scope        SMALLINT    NOT NULL,
    subject      BIGINT      NOT NULL,
    unit         SMALLINT    NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    used         BIGINT      NOT NULL CHECK (used >= 0),
    PRIMARY KEY (scope, subject, unit, window_start)
);

-- Calls in flight of a subject with max_concurrency, one row each, across replicas. A row
-- outlives its call only when its process died: it stops counting at expires_at (the call's
-- deadline has passed by then).
CREATE TABLE concurrency_slots (
    id         UUID        PRIMARY KEY,
    scope      SMALLINT    NOT NULL,
    subject    BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX concurrency_slots_subject_idx ON concurrency_slots (scope, subject, expires_at);

-- What a key or user with a spend limit has been charged in a period (settled charges; open
-- holds count on top at admission). period_start: the start of the UTC day or month, or
-- -infinity for 'total'. Kept by billing-worker for subjects that have a spend limit.
CREATE TABLE spend_totals (
    scope        SMALLINT       NOT NULL,
    subject      BIGINT         NOT NULL,
    period_start TIMESTAMPTZ    NOT NULL,
    spent        NUMERIC(28, 8) NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, subject, period_start)
);

-- The key a hold was placed for: a key's open holds count against its spend limit.
ALTER TABLE balance_holds ADD COLUMN access_key_id BIGINT;
CREATE INDEX balance_holds_open_key_idx ON balance_holds (access_key_id)
    WHERE closed_at IS NULL AND access_key_id IS NOT NULL;

-- The period a spend limit counts in, the same for admission and settlement.
CREATE FUNCTION limit_period_start(p_period TEXT) RETURNS TIMESTAMPTZ
LANGUAGE sql STABLE AS $$
    SELECT CASE p_period
        WHEN 'day' THEN date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        WHEN 'month' THEN date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        ELSE '-infinity'::timestamptz
    END
$$;

-- Borrows up to p_want (at least p_need) of a window's capacity for one replica; answers what
-- was granted (0: the window cannot give p_need) and what the window has used after it.
CREATE FUNCTION borrow_rate(p_scope SMALLINT, p_subject BIGINT, p_unit SMALLINT,
                            p_window TIMESTAMPTZ, p_need BIGINT, p_want BIGINT, p_limit BIGINT)
RETURNS TABLE (granted BIGINT, used BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_used BIGINT;
    v_grant BIGINT;
BEGIN
    INSERT INTO rate_windows (scope, subject, unit, window_start, used)
    VALUES (p_scope, p_subject, p_unit, p_window, 0)
    ON CONFLICT DO NOTHING;
    SELECT w.used INTO v_used FROM rate_windows w
    WHERE w.scope = p_scope AND w.subject = p_subject AND w.unit = p_unit
      AND w.window_start = p_window
    FOR UPDATE;
    v_grant := least(greatest(p_want, p_need), p_limit - v_used);
    IF v_grant < p_need OR v_grant <= 0 THEN
        RETURN QUERY SELECT 0::BIGINT, v_used;
        RETURN;
    END IF;
    UPDATE rate_windows w SET used = v_used + v_grant
    WHERE w.scope = p_scope AND w.subject = p_subject AND w.unit = p_unit
      AND w.window_start = p_window;
    RETURN QUERY SELECT v_grant, v_used + v_grant;
END
$$;

-- Takes one of a subject's max_concurrency slots for call p_id until p_expires, or answers false
-- when the live slots (those not expired) already reach p_limit. Callers of one subject take
-- turns on an advisory lock, so two replicas never both take the last slot.
CREATE FUNCTION acquire_slot(p_scope SMALLINT, p_subject BIGINT, p_limit INTEGER, p_id UUID,
                             p_expires TIMESTAMPTZ)
RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_live BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('slot:' || p_scope || ':' || p_subject, 0));
    SELECT count(*) INTO v_live FROM concurrency_slots s
    WHERE s.scope = p_scope AND s.subject = p_subject AND s.expires_at > now();
    IF v_live >= p_limit THEN
        RETURN FALSE;
    END IF;
    INSERT INTO concurrency_slots (id, scope, subject, expires_at)
    VALUES (p_id, p_scope, p_subject, p_expires);
    RETURN TRUE;
END
$$;
