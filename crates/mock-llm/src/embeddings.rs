//! `POST /v1/embeddings`: one deterministic vector per input, as floats or base64 (the official
//! SDKs ask for base64 by default); a prompt token is a word, or an element of a token array.

use actix_web::HttpResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::MockConfig;
use crate::error::MockError;
use crate::faults::{self, Directives};
use crate::words::PromptTokens;

/// Dimensions of a vector when the request names none.
const DEFAULT_DIMENSIONS: usize = 8;
const MAX_DIMENSIONS: usize = 4096;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Input,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

/// OpenAI's four input shapes.
#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One input: its text (directives are read from it) and its prompt tokens.
struct Item {
    text: String,
    tokens: u32,
}

impl Input {
    fn items(self) -> Vec<Item> {
        let text = |text: String| {
            let mut tokens = PromptTokens::default();
            tokens.add(&text);
            Item {
                tokens: tokens.total(),
                text,
            }
        };
        let ids = |ids: Vec<u32>| Item {
            tokens: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            text: String::new(),
        };
        match self {
            Input::Text(one) => vec![text(one)],
            Input::Texts(many) => many.into_iter().map(text).collect(),
            Input::Tokens(one) => vec![ids(one)],
            Input::TokenLists(many) => many.into_iter().map(ids).collect(),
        }
    }
}

pub(crate) async fn embed(
    config: &MockConfig,
    key: &str,
    body: &[u8],
) -> Result<HttpResponse, MockError> {
    faults::before_answer(config, key).await?;
    let request: EmbeddingsRequest = serde_json::from_slice(body)
        .map_err(|error| MockError::InvalidRequest(format!("invalid request body: {error}")))?;
    let items = request.input.items();
    if items.is_empty() {
        return Err(MockError::InvalidRequest(
            "'input' must not be empty".to_owned(),
        ));
    }
    let dimensions = request.dimensions.unwrap_or(DEFAULT_DIMENSIONS);
    if !(1..=MAX_DIMENSIONS).contains(&dimensions) {
        return Err(MockError::InvalidRequest(format!(
            "'dimensions' must be between 1 and {MAX_DIMENSIONS}"
        )));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(MockError::InvalidRequest(format!(
                "'encoding_format' {other:?} is not one of float, base64"
            )));
        }
    };
    let mut directives = Directives::default();
    for item in &items {
        directives.scan(&item.text);
    }
    directives.apply().await?;

    let prompt_tokens: u32 = items.iter().map(|item| item.tokens).sum();
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let vector = vector(item.tokens, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                Value::String(STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut answer = json!({"object": "list", "data": data, "model": request.model});
    if !directives.no_usage {
        answer["usage"] = json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens});
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// The components vectors are made of (no float arithmetic needed).
const COMPONENTS: [f32; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// A deterministic vector: the same input length always gives the same vector.
fn vector(tokens: u32, dimensions: usize) -> Vec<f32> {
    (0..dimensions)
        .map(|i| COMPONENTS[(tokens as usize + i) % COMPONENTS.len()])
        .collect()
}
