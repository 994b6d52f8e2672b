-- Models may be embedding models (priced per input token; the gateway checks the pricing).
ALTER TABLE llm_models
    DROP CONSTRAINT llm_models_kind_check,
    ADD CONSTRAINT llm_models_kind_check CHECK (kind IN ('chat', 'image', 'embedding'));
