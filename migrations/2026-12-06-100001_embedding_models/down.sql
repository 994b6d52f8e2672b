-- Fails while embedding models exist: delete them first, rather than lose them silently.
ALTER TABLE llm_models
    DROP CONSTRAINT llm_models_kind_check,
    ADD CONSTRAINT llm_models_kind_check CHECK (kind IN ('chat', 'image'));
