DROP FUNCTION submit_jobs(BIGINT[], UUID[], BIGINT[], NUMERIC[], TEXT[], BIGINT[], BIGINT[], JSONB[],
                          TEXT[], BIGINT);
