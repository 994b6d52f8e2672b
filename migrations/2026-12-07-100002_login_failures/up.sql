-- Failed sign-ins per account, shared by every gateway replica (issue 15): before it each
-- process counted in its own memory, so N replicas gave an attacker N times the free attempts.
-- An attempt is counted when it starts (one row lock per attempt); a success deletes the row;
-- a row idle for `abuse.forget_after_seconds` starts over and is swept by later attempts.
CREATE TABLE login_failures (
    account TEXT PRIMARY KEY,
    attempts INT NOT NULL CONSTRAINT login_failures_attempts_check CHECK (attempts >= 0),
    blocked_until TIMESTAMPTZ,
    last_attempt_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX login_failures_last_attempt_at ON login_failures (last_attempt_at);
