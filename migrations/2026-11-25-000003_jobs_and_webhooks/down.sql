DROP TABLE webhook_deliveries;
ALTER TABLE async_jobs DROP COLUMN published_at;
ALTER TABLE async_jobs DROP COLUMN callback_url;
