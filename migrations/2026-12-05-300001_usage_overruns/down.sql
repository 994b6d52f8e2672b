DROP FUNCTION settle_usage(BIGINT[], BIGINT[], NUMERIC[], NUMERIC[], UUID[], BIGINT[], BIGINT[],
                           TEXT[], BIGINT[], BIGINT[], BIGINT[], INTEGER[]);
DROP INDEX usage_logs_overrun_idx;
-- cost keeps the charged amount (the backfill is not undone: it is what the ledger says).
ALTER TABLE usage_logs
    DROP CONSTRAINT usage_logs_charged_at_most_priced,
    DROP COLUMN held_amount,
    DROP COLUMN priced_cost;
