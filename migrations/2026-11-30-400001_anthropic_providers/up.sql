-- Providers may speak Anthropic's Messages API (chat models only; the gateway checks that).
ALTER TABLE providers
    DROP CONSTRAINT providers_kind_check,
    ADD CONSTRAINT providers_kind_check CHECK (kind IN ('openai', 'anthropic'));
