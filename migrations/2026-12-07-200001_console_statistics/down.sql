DROP TABLE queue_samples;
DROP TABLE call_stats;
