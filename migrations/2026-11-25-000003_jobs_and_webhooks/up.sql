-- Asynchronous jobs: where to tell the caller, and whether the invocation message went out.
ALTER TABLE async_jobs ADD COLUMN callback_url TEXT;
-- Set once the invocation message was confirmed by the broker; a PENDING job without it is
-- re-published by the sweeper.
ALTER TABLE async_jobs ADD COLUMN published_at TIMESTAMPTZ;

-- Signed webhook deliveries of terminal jobs, retried with backoff.
CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    job_id          UUID        NOT NULL REFERENCES async_jobs (job_id) ON DELETE CASCADE,
    url             TEXT        NOT NULL,
    attempts        INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_job_id_key UNIQUE (job_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE delivered_at IS NULL;
