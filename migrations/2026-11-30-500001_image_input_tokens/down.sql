ALTER TABLE llm_models DROP COLUMN image_input_tokens;
