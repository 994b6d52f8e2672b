-- Credit leases: a slice of a user's balance that one gateway process admits calls against in
-- memory, instead of one hold statement per call. A lease counts in users.held exactly like a
-- hold, so "held <= balance" (a CHECK-free invariant kept by every conditional statement) covers
-- holds and leases together: no overdraft whatever the processes do.
CREATE TABLE credit_leases (
    -- Chosen by the gateway process; the charges of the calls admitted against it carry it.
    id         UUID        PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    -- The gateway process that holds it (a random id per process start).
    holder     UUID        NOT NULL,
    -- What the lease still reserves: granted and topped up, minus what settled charges took,
    -- minus what the holder gave back. Part of users.held while the lease is open.
    amount     NUMERIC(28, 8) NOT NULL CHECK (amount >= 0),
    -- Renewed by its holder while it runs; once past (and once no charge against it can still
    -- arrive, the same rule as holds), billing-worker's sweeper releases what is left.
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    closed_at  TIMESTAMPTZ,
    CONSTRAINT credit_leases_closed_empty CHECK (closed_at IS NULL OR amount = 0)
);
CREATE INDEX credit_leases_open_expiry_idx ON credit_leases (expires_at) WHERE closed_at IS NULL;
CREATE INDEX credit_leases_user_idx ON credit_leases (user_id) WHERE closed_at IS NULL;
