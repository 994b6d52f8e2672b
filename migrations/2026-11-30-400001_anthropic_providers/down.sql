-- Fails while Anthropic providers exist: delete them first, rather than lose them silently.
ALTER TABLE providers
    DROP CONSTRAINT providers_kind_check,
    ADD CONSTRAINT providers_kind_check CHECK (kind IN ('openai'));
