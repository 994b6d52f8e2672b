-- The one shared schema: identity, catalog, money (balance + ledger), orders, jobs, usage.
-- Money is NUMERIC(28,8) everywhere (domain::Money's scale); CHECKs keep it sane even if code is wrong.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    email         TEXT        NOT NULL,
    password_hash TEXT        NOT NULL,
    role          TEXT        NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user')),
    status        TEXT        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    balance       NUMERIC(28, 8) NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_email_lowercase CHECK (email = lower(email))
);
CREATE INDEX users_created_idx ON users (created_at DESC, id DESC);

CREATE TABLE providers (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT        NOT NULL,
    kind       TEXT        NOT NULL CHECK (kind IN ('openai')),
    base_url   TEXT        NOT NULL,
    enabled    BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT providers_name_key UNIQUE (name)
);

CREATE TABLE provider_keys (
    id                BIGSERIAL PRIMARY KEY,
    provider_id       BIGINT      NOT NULL REFERENCES providers (id) ON DELETE CASCADE,
    name              TEXT        NOT NULL DEFAULT '',
    -- AES-256-GCM: 12-byte nonce || ciphertext+tag, under the master key from the environment.
    secret_ciphertext BYTEA       NOT NULL,
    key_hint          TEXT        NOT NULL,
    weight            INTEGER     NOT NULL DEFAULT 1 CHECK (weight BETWEEN 0 AND 1000),
    enabled           BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX provider_keys_provider_idx ON provider_keys (provider_id, id);

CREATE TABLE llm_models (
    id                BIGSERIAL PRIMARY KEY,
    name              TEXT        NOT NULL,
    provider_id       BIGINT      NOT NULL REFERENCES providers (id) ON DELETE RESTRICT,
    upstream_model    TEXT        NOT NULL,
    kind              TEXT        NOT NULL CHECK (kind IN ('chat', 'image')),
    pricing           JSONB       NOT NULL CHECK (jsonb_typeof(pricing) = 'object'),
    max_output_tokens INTEGER     NOT NULL DEFAULT 4096 CHECK (max_output_tokens > 0),
    enabled           BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT llm_models_name_key UNIQUE (name)
);
CREATE INDEX llm_models_provider_idx ON llm_models (provider_id);

CREATE TABLE access_keys (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT        NOT NULL,
    -- The first characters of the secret, to recognise a key; the secret itself is never stored.
    prefix       TEXT        NOT NULL,
    -- SHA-256 of the whole secret: the lookup key of every model call.
    key_hash     BYTEA       NOT NULL CHECK (octet_length(key_hash) = 32),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    CONSTRAINT access_keys_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX access_keys_user_idx ON access_keys (user_id, created_at DESC, id DESC);

CREATE TABLE orders (
    id           BIGSERIAL PRIMARY KEY,
    order_no     TEXT        NOT NULL,
    user_id      BIGINT      NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    amount       NUMERIC(28, 8) NOT NULL CHECK (amount > 0),
    status       TEXT        NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    CONSTRAINT orders_order_no_key UNIQUE (order_no),
    CONSTRAINT orders_completed_at CHECK ((status = 'COMPLETED') = (completed_at IS NOT NULL))
);
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_created_idx ON orders (created_at DESC, id DESC);

-- Every change of a balance, written in the same transaction as the change.
-- (kind, reference) is unique: an order is credited once, a request charged once, even if code is wrong.
CREATE TABLE balance_ledger (
    id            BIGSERIAL PRIMARY KEY,
    user_id       BIGINT      NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    delta         NUMERIC(28, 8) NOT NULL CHECK (delta <> 0),
    balance_after NUMERIC(28, 8) NOT NULL CHECK (balance_after >= 0),
    kind          TEXT        NOT NULL CHECK (kind IN ('topup', 'charge', 'adjustment', 'refund')),
    reference     TEXT        NOT NULL,
    note          TEXT,
    actor_user_id BIGINT      REFERENCES users (id),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT balance_ledger_kind_reference_key UNIQUE (kind, reference)
);
CREATE INDEX balance_ledger_user_idx ON balance_ledger (user_id, created_at DESC, id DESC);

-- Signed payment-provider callbacks already processed: a replayed event is refused.
CREATE TABLE payment_events (
    id          BIGSERIAL PRIMARY KEY,
    event_id    TEXT        NOT NULL,
    order_no    TEXT        NOT NULL REFERENCES orders (order_no),
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT payment_events_event_id_key UNIQUE (event_id)
);

CREATE TABLE usage_logs (
    id                   BIGSERIAL PRIMARY KEY,
    request_id           UUID        NOT NULL,
    user_id              BIGINT      NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    access_key_id        BIGINT      REFERENCES access_keys (id) ON DELETE SET NULL,
    model_id             BIGINT      REFERENCES llm_models (id) ON DELETE SET NULL,
    model_name           TEXT        NOT NULL,
    prompt_tokens        BIGINT      NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens    BIGINT      NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    cached_prompt_tokens BIGINT      NOT NULL DEFAULT 0 CHECK (cached_prompt_tokens >= 0),
    images               INTEGER     NOT NULL DEFAULT 0 CHECK (images >= 0),
    cost                 NUMERIC(28, 8) NOT NULL CHECK (cost >= 0),
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT usage_logs_request_id_key UNIQUE (request_id)
);
CREATE INDEX usage_logs_user_idx ON usage_logs (user_id, created_at DESC, id DESC);
CREATE INDEX usage_logs_created_idx ON usage_logs (created_at DESC, id DESC);

CREATE TABLE async_jobs (
    id               BIGSERIAL PRIMARY KEY,
    job_id           UUID        NOT NULL,
    job_type         TEXT        NOT NULL DEFAULT 'image-generation' CHECK (job_type IN ('image-generation')),
    user_id          BIGINT      NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    access_key_id    BIGINT      REFERENCES access_keys (id) ON DELETE SET NULL,
    model_id         BIGINT      NOT NULL REFERENCES llm_models (id) ON DELETE RESTRICT,
    status           TEXT        NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
    request_payload  JSONB       NOT NULL,
    result_payload   JSONB,
    error_message    TEXT,
    attempts         INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_expires_at TIMESTAMPTZ,
    cost             NUMERIC(28, 8) CHECK (cost >= 0),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT async_jobs_job_id_key UNIQUE (job_id),
    CONSTRAINT async_jobs_result_when_completed CHECK (status <> 'COMPLETED' OR result_payload IS NOT NULL),
    CONSTRAINT async_jobs_error_when_failed CHECK (status <> 'FAILED' OR error_message IS NOT NULL)
);
CREATE INDEX async_jobs_user_idx ON async_jobs (user_id, created_at DESC, id DESC);
CREATE INDEX async_jobs_created_idx ON async_jobs (created_at DESC, id DESC);
CREATE INDEX async_jobs_open_idx ON async_jobs (status, updated_at) WHERE status IN ('PENDING', 'PROCESSING');
