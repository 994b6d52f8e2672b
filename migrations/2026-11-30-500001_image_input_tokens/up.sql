-- The prompt tokens one image part of a chat prompt may cost on this model, for sizing the
-- hold: an image URL's bytes say nothing of its tokens, and models differ by twentyfold
-- (GPT-4o at most about 1,445 tokens per image, Anthropic about 1,600, OpenAI's mini models
-- tens of thousands). A constant default adds the column without rewriting the table.
ALTER TABLE llm_models
    ADD COLUMN image_input_tokens INTEGER NOT NULL DEFAULT 1600
        CONSTRAINT llm_models_image_input_tokens_check
        CHECK (image_input_tokens BETWEEN 1 AND 1000000);
