DROP TABLE billing_outbox;
DROP TABLE balance_holds;
ALTER TABLE users DROP COLUMN held;
