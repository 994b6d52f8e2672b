//! OpenAI's chat completions: the request validated and sized for its hold, then run on the
//! one call path (`core::call`). The responses and messages APIs translate into this request.

use std::sync::Arc;

use actix_web::HttpResponse;
use domain::{ModelKind, ProviderKind, Usage};
use serde_json::Value;

use crate::auth::KeyHolder;
use crate::core::call::{self, Call, OpenAiShape, Operation, PromptCount};
use crate::core::tokens;
use crate::error::ApiError;
use crate::state::{AppState, CallPath};
use catalog::Route;

/// The most tokens each choice may generate: `max_completion_tokens` and the older
/// `max_tokens`, each at most the model's limit, and the larger of the two when both are sent
/// (providers differ in which one they honour, so the hold covers either); the model's limit
/// when neither is, which the upstream then receives as `max_tokens`.
fn completion_limit(body: &mut Value, route: &Route) -> Result<u32, ApiError> {
    let mut limit: Option<u32> = None;
    for field in ["max_completion_tokens", "max_tokens"] {
        let Some(value) = body.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let requested = value
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::invalid(format!("{field} must be a positive integer")))?;
        let requested = u32::try_from(requested)
            .ok()
            .filter(|n| *n <= route.max_output_tokens)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "{field} must be at most {} for model {}",
                    route.max_output_tokens, route.name
                ))
            })?;
        limit = Some(limit.map_or(requested, |other| other.max(requested)));
    }
    Ok(limit.unwrap_or_else(|| {
        body["max_tokens"] = Value::from(route.max_output_tokens);
        route.max_output_tokens
    }))
}

/// `POST /v1/chat/completions`.
pub async fn complete(
    state: Arc<AppState>,
    call_path: Arc<CallPath>,
    holder: KeyHolder,
    body: Value,
) -> Result<HttpResponse, ApiError> {
    let call = prepare(&state, body)?;
    call::run(state, call_path, holder, call, Arc::new(OpenAiShape)).await
}

/// Validates a chat completions request and sizes its hold; nothing is written, so a request
/// refused here costs nothing.
pub fn prepare(state: &AppState, mut body: Value) -> Result<Call, ApiError> {
    let route = call::route_of(state, &body, ModelKind::Chat)?;
    if body
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return Err(ApiError::invalid("messages must be a non-empty array"));
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream must be a boolean")),
    };
    let completion_limit = completion_limit(&mut body, &route)?;
    // `n` choices each generate up to the limit.
    let choices = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(n) => n
            .as_u64()
            .filter(|n| (1..=16).contains(n))
            .ok_or_else(|| ApiError::invalid("n must be an integer between 1 and 16"))?,
    };
    // Providers that cannot take the request are skipped; when none can, it is refused before
    // the hold: what cannot be translated costs nothing and writes nothing.
    let mut refusal = None;
    let providers: Vec<_> = route
        .providers()
        .into_iter()
        .filter(|provider| match provider.provider_kind {
            ProviderKind::Anthropic => match upstream::anthropic::check_request(&body) {
                Ok(()) => true,
                Err(why) => {
                    refusal = Some(why);
                    false
                }
            },
            ProviderKind::OpenAi => true,
        })
        .collect();
    if providers.is_empty() {
        return Err(ApiError::InvalidRequest(refusal.unwrap_or_else(|| {
            "no provider of this model can serve the request".to_owned()
        })));
    }
    // What the hold cannot count would be served for less than the provider bills.
    if let Some(field) = tokens::unpriced_input(&body) {
        return Err(ApiError::invalid(field));
    }
    let prompt_text = tokens::prompt_text(&body);
    let worst_case = Usage {
        prompt_tokens: tokens::prompt_upper_bound(
            &body,
            &prompt_text,
            u64::from(route.image_input_tokens),
        ),
        completion_tokens: u64::from(completion_limit) * choices,
        ..Usage::default()
    };
    let max_cost = route
        .pricing
        .max_cost(&worst_case)
        .map_err(|_| ApiError::invalid("the request is too large to be priced"))?;
    let messages = body["messages"].as_array().map_or(0, Vec::len) as u64;
    let operation = if stream {
        Operation::ChatStream {
            client_wants_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    } else {
        Operation::Chat
    };
    Ok(Call {
        route,
        providers,
        body,
        operation,
        max_cost,
        max_tokens: worst_case.prompt_tokens + worst_case.completion_tokens,
        native: None,
        prompt: PromptCount {
            text: prompt_text,
            extra_tokens: tokens::prompt_framing(messages),
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use domain::Pricing;
    use serde_json::json;

    use super::*;

    fn route(max_output_tokens: u32) -> Route {
        Route {
            model_id: 1,
            name: "m".to_owned(),
            upstream_model: "m".to_owned(),
            kind: ModelKind::Chat,
            pricing: Pricing::default(),
            max_output_tokens,
            image_input_tokens: 1_600,
            provider_id: 1,
            provider_kind: ProviderKind::OpenAi,
            base_url: "http://127.0.0.1:1/v1".to_owned(),
            alternatives: Vec::new(),
        }
    }

    fn limit(body: Value) -> (Result<u32, ApiError>, Value) {
        let mut body = body;
        let limit = completion_limit(&mut body, &route(100));
        (limit, body)
    }

    #[test]
    fn the_completion_limit_covers_every_limit_field_sent() {
        assert_eq!(limit(json!({"max_tokens": 7})).0.unwrap(), 7);
        assert_eq!(limit(json!({"max_completion_tokens": 9})).0.unwrap(), 9);
        // Both: a provider may honour either, so the hold covers the larger.
        for body in [
            json!({"max_completion_tokens": 7, "max_tokens": 9}),
            json!({"max_completion_tokens": 9, "max_tokens": 7}),
            json!({"max_completion_tokens": 9, "max_tokens": null}),
        ] {
            let (result, sent) = limit(body.clone());
            assert_eq!(result.unwrap(), 9, "{body}");
            assert_eq!(sent, body, "a limit the client sent is passed on unchanged");
        }
        // Neither: the model's limit, sent upstream as max_tokens.
        let (result, sent) = limit(json!({"messages": []}));
        assert_eq!(result.unwrap(), 100);
        assert_eq!(sent["max_tokens"], 100);
    }

    #[test]
    fn each_limit_field_is_checked_against_the_model() {
        for body in [
            json!({"max_tokens": 101}),
            json!({"max_completion_tokens": 5, "max_tokens": 101}),
            json!({"max_completion_tokens": 101, "max_tokens": 5}),
            json!({"max_tokens": 0}),
            json!({"max_tokens": -1}),
            json!({"max_tokens": 1.5}),
            json!({"max_completion_tokens": "10"}),
            json!({"max_tokens": u64::MAX}),
        ] {
            assert!(
                matches!(limit(body.clone()).0, Err(ApiError::InvalidRequest(_))),
                "{body}"
            );
        }
    }
}
