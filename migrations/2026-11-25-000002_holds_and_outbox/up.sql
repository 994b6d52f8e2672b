-- Admission by hold: a call reserves its maximum cost against balance - held, in one statement.
ALTER TABLE users ADD COLUMN held NUMERIC(28, 8) NOT NULL DEFAULT 0 CHECK (held >= 0);

CREATE TABLE balance_holds (
    id         BIGSERIAL PRIMARY KEY,
    -- The call's request id: the same id the billing message and the usage log carry.
    request_id UUID        NOT NULL,
    user_id    BIGINT      NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    amount     NUMERIC(28, 8) NOT NULL CHECK (amount >= 0),
    status     TEXT        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'settled', 'released')),
    -- A hold whose call never finished (gateway crash) is released by the sweeper after this.
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    closed_at  TIMESTAMPTZ,
    CONSTRAINT balance_holds_request_id_key UNIQUE (request_id),
    CONSTRAINT balance_holds_closed_at CHECK ((status = 'open') = (closed_at IS NULL))
);
CREATE INDEX balance_holds_open_expiry_idx ON balance_holds (expires_at) WHERE status = 'open';
CREATE INDEX balance_holds_user_idx ON balance_holds (user_id) WHERE status = 'open';

-- Charges whose billing message could not be published (broker down): settled later from here.
CREATE TABLE billing_outbox (
    id         BIGSERIAL PRIMARY KEY,
    request_id UUID        NOT NULL,
    payload    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT billing_outbox_request_id_key UNIQUE (request_id)
);
