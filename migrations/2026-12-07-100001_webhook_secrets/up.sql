-- Each user's own job-webhook signing secret (issue 15): before it, one platform secret signed
-- every tenant's webhooks, so any tenant could forge another's. Sealed with the master key
-- (AES-256-GCM, like provider keys); shown once when created or rotated, never read back by
-- the API. One row per user; rotation replaces it.
CREATE TABLE webhook_secrets (
    user_id BIGINT PRIMARY KEY REFERENCES users (id),
    sealed BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
