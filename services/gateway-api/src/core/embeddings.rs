//! OpenAI's embeddings: the input validated and its hold sized from the input itself (an
//! embedding generates no tokens), then run on the one call path (`core::call`).

use std::sync::Arc;

use actix_web::HttpResponse;
use domain::{ModelKind, Usage};
use serde_json::Value;

use crate::auth::KeyHolder;
use crate::core::call::{self, Call, OpenAiShape, Operation, PromptCount};
use crate::error::ApiError;
use crate::state::{AppState, CallPath};

/// OpenAI's limit on the inputs of one request.
const MAX_INPUTS: usize = 2048;

/// `POST /v1/embeddings`.
pub async fn embed(
    state: Arc<AppState>,
    call_path: Arc<CallPath>,
    holder: KeyHolder,
    body: Value,
) -> Result<HttpResponse, ApiError> {
    let call = prepare(&state, body)?;
    // OpenAI's embeddings list, answered as the provider gave it.
    call::run(state, call_path, holder, call, Arc::new(OpenAiShape)).await
}

fn prepare(state: &AppState, body: Value) -> Result<Call, ApiError> {
    let route = call::route_of(state, &body, ModelKind::Embedding)?;
    let prompt = input_prompt(body.get("input"))?;
    match body.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(format)) if matches!(format.as_str(), "float" | "base64") => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "encoding_format must be \"float\" or \"base64\"",
            ));
        }
    }
    if let Some(dimensions) = body.get("dimensions").filter(|v| !v.is_null())
        && dimensions.as_u64().is_none_or(|d| d < 1)
    {
        return Err(ApiError::invalid("dimensions must be a positive integer"));
    }
    // Byte-level BPE never makes more tokens than bytes; a token id is one token.
    let worst_case = Usage {
        prompt_tokens: prompt.text.len() as u64 + prompt.extra_tokens,
        ..Usage::default()
    };
    let max_cost = route
        .pricing
        .max_cost(&worst_case)
        .map_err(|_| ApiError::invalid("the request is too large to be priced"))?;
    Ok(Call {
        providers: route.providers(),
        route,
        body,
        operation: Operation::Embeddings,
        max_cost,
        max_tokens: worst_case.prompt_tokens,
        native: None,
        prompt,
    })
}

/// The input's text and token ids, or why it is not one of OpenAI's four input shapes: a
/// string, strings, a token array, token arrays (none of them empty).
fn input_prompt(input: Option<&Value>) -> Result<PromptCount, ApiError> {
    let shape = "input must be a string, an array of strings, an array of token ids or an array of token id arrays";
    let mut prompt = PromptCount::default();
    match input {
        Some(Value::String(text)) => add_text(&mut prompt, text, "input")?,
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::invalid("input must not be empty"));
        }
        Some(Value::Array(items)) if items.len() > MAX_INPUTS => {
            return Err(ApiError::invalid(format!(
                "input must have at most {MAX_INPUTS} items"
            )));
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
            prompt.extra_tokens = items.len() as u64;
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(text) => add_text(&mut prompt, text, &format!("input[{i}]"))?,
                    Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => {
                        prompt.extra_tokens += ids.len() as u64;
                    }
                    _ => return Err(ApiError::invalid(format!("input[{i}]: {shape}"))),
                }
            }
        }
        None | Some(Value::Null) => return Err(ApiError::invalid("input is required")),
        Some(_) => return Err(ApiError::invalid(shape)),
    }
    Ok(prompt)
}

fn add_text(prompt: &mut PromptCount, text: &str, field: &str) -> Result<(), ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid(format!(
            "{field} must not be an empty string"
        )));
    }
    if !prompt.text.is_empty() {
        prompt.text.push('\n');
    }
    prompt.text.push_str(text);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_input_shape_is_counted() {
        let text = input_prompt(Some(&json!("hello world"))).unwrap();
        assert_eq!((text.text.as_str(), text.extra_tokens), ("hello world", 0));
        let texts = input_prompt(Some(&json!(["a", "b c"]))).unwrap();
        assert_eq!(texts.text, "a\nb c");
        let ids = input_prompt(Some(&json!([1, 2, 3]))).unwrap();
        assert_eq!((ids.text.as_str(), ids.extra_tokens), ("", 3));
        let lists = input_prompt(Some(&json!([[1, 2], [3], "x"]))).unwrap();
        assert_eq!((lists.text.as_str(), lists.extra_tokens), ("x", 3));
    }

    #[test]
    fn bad_inputs_name_their_field() {
        for (input, named) in [
            (json!(""), "input must not be an empty string"),
            (json!([]), "input must not be empty"),
            (json!(["a", ""]), "input[1] must not be an empty string"),
            (json!(["a", 3.5]), "input[1]:"),
            (json!([[]]), "input[0]:"),
            (json!([[-1]]), "input[0]:"),
            (json!({"text": "a"}), "input must be"),
            (json!(null), "input is required"),
        ] {
            let error = input_prompt(Some(&input)).unwrap_err().to_string();
            assert!(error.starts_with(named), "{input}: {error}");
        }
        let too_many = Value::Array(vec![json!("a"); MAX_INPUTS + 1]);
        assert!(input_prompt(Some(&too_many)).is_err());
    }
}
