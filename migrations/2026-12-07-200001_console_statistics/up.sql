-- Statistics of the admin overview (issue 16) that usage_logs cannot give: calls that were not
-- billed (errors, refusals) with their latency, and queue depths over time. Neither holds money:
-- a lost flush loses statistics only. Both are pruned by gateway-api after `stats.retention_days`.

-- Model calls per minute, summed over every gateway-api replica: each replica counts in memory
-- and adds its counts with one upsert per flush (`persistence::stats::add_calls`).
CREATE TABLE call_stats (
    minute TIMESTAMPTZ PRIMARY KEY CHECK (date_trunc('minute', minute, 'UTC') = minute),
    -- Answered 2xx.
    ok BIGINT NOT NULL DEFAULT 0 CHECK (ok >= 0),
    -- Refused as the client's fault (4xx other than 402 and 429).
    client_errors BIGINT NOT NULL DEFAULT 0 CHECK (client_errors >= 0),
    -- Failed on the provider's or our side (5xx: upstream error, timeout, unavailable).
    provider_errors BIGINT NOT NULL DEFAULT 0 CHECK (provider_errors >= 0),
    -- Refused by a balance or a limit (402, 429).
    refused BIGINT NOT NULL DEFAULT 0 CHECK (refused >= 0),
    -- Time to the response head of every call counted above, in milliseconds.
    latency_ms_sum BIGINT NOT NULL DEFAULT 0 CHECK (latency_ms_sum >= 0),
    latency_ms_max BIGINT NOT NULL DEFAULT 0 CHECK (latency_ms_max >= 0)
);

-- Depths sampled by one replica at a time (the holder of an advisory lock), about once a
-- `stats.sample_ms`. A queue depth is NULL when the broker did not answer.
CREATE TABLE queue_samples (
    sampled_at TIMESTAMPTZ PRIMARY KEY,
    -- Ready messages in model_invocation_queue and its retry queue.
    invocation_queue BIGINT CHECK (invocation_queue >= 0),
    -- Ready messages in billing_log_queue and its retry queue.
    billing_queue BIGINT CHECK (billing_queue >= 0),
    -- Charges in billing_outbox, not yet published.
    outbox BIGINT NOT NULL CHECK (outbox >= 0),
    -- Jobs PENDING (not yet claimed by a worker).
    pending_jobs BIGINT NOT NULL CHECK (pending_jobs >= 0)
);
