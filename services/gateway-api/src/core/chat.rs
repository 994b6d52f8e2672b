//! The synchronous model call: validate, hold the maximum cost, forward with key failover,
//! price the real usage and hand the charge to billing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::web::Bytes;
use domain::{ModelKind, ProviderKind, Usage};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use upstream::{ChatStream, StreamUsage, UpstreamError, with_failover};
use uuid::Uuid;

use crate::auth::KeyHolder;
use crate::core::admission::{self, Admission, Reservation};
use crate::core::billing::{self, Caller};
use crate::core::limits::Ask;
use crate::core::tokens;
use crate::error::ApiError;
use crate::state::{AppState, CallPath};
use catalog::Route;

/// What the reservation and the bill need to know about one admitted call.
#[derive(Clone)]
struct Admitted {
    request_id: Uuid,
    caller: Caller,
    route: Arc<Route>,
    prompt_text: String,
    message_count: u64,
    /// What reserves the call's maximum cost (`reserved`, also what usage that cannot be priced
    /// is billed).
    /// Shared with the stream's pump; its concurrency slots are freed when the last is dropped.
    admission: Arc<Admission>,
    /// The call ends by then, streams included (`upstream.total_timeout_ms` from admission),
    /// well inside its hold's lifetime.
    deadline: Instant,
}

impl Admitted {
    /// Prompt tokens counted offline, for calls whose provider reported no usage.
    fn counted_prompt_tokens(&self) -> u64 {
        tokens::count_prompt(&self.prompt_text, self.message_count)
    }
}

fn invalid(message: &str) -> ApiError {
    ApiError::InvalidRequest(message.to_owned())
}

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
            .ok_or_else(|| invalid(&format!("{field} must be a positive integer")))?;
        let requested = u32::try_from(requested)
            .ok()
            .filter(|n| *n <= route.max_output_tokens)
            .ok_or_else(|| {
                invalid(&format!(
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

fn upstream_error(error: UpstreamError) -> ApiError {
    let message = match &error {
        UpstreamError::BadRequest { body, .. } => {
            // The provider's own explanation of what was wrong with the request.
            serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "the provider refused the request".to_owned())
        }
        UpstreamError::NoKeyAvailable => "no provider key is available for this model".to_owned(),
        other => format!("the provider failed: {other}"),
    };
    match error.http_status_for_client() {
        504 => ApiError::UpstreamTimeout(message),
        503 => ApiError::Unavailable(message),
        502 => ApiError::UpstreamError(message),
        400 | 422 => ApiError::InvalidRequest(message),
        404 => ApiError::NotFound(message),
        409 => ApiError::Conflict(message),
        413 => ApiError::PayloadTooLarge(message),
        _ => ApiError::UpstreamError(message),
    }
}

/// `POST /v1/chat/completions`.
pub async fn complete(
    state: Arc<AppState>,
    call_path: Arc<CallPath>,
    holder: KeyHolder,
    mut body: Value,
) -> Result<HttpResponse, ApiError> {
    if !body.is_object() {
        return Err(invalid("the body must be a JSON object"));
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("model is required"))?;
    let route = state
        .routing
        .route(model)
        .filter(|r| r.kind == ModelKind::Chat)
        .ok_or_else(|| {
            ApiError::ModelNotFound(format!(
                "model {model:?} does not exist or is not a chat model"
            ))
        })?;
    if body
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return Err(invalid("messages must be a non-empty array"));
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream must be a boolean")),
    };
    let completion_limit = completion_limit(&mut body, &route)?;
    // `n` choices each generate up to the limit.
    let choices = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(n) => n
            .as_u64()
            .filter(|n| (1..=16).contains(n))
            .ok_or_else(|| invalid("n must be an integer between 1 and 16"))?,
    };
    if route.provider_kind == ProviderKind::Anthropic {
        // Refused before the hold: what cannot be translated costs nothing and writes nothing.
        upstream::anthropic::check_request(&body).map_err(ApiError::InvalidRequest)?;
    }
    // What the hold cannot count would be served for less than the provider bills.
    if let Some(field) = tokens::unpriced_input(&body) {
        return Err(invalid(&field));
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
        .cost(&worst_case)
        .map_err(|_| invalid("the request is too large to be priced"))?;

    let request_id = Uuid::new_v4();
    let deadline = Instant::now() + state.call_deadline;
    let ask = Ask {
        user_id: holder.user_id,
        key_id: holder.key_id,
        model_id: route.model_id,
        tokens: worst_case.prompt_tokens + worst_case.completion_tokens,
        deadline: chrono::Utc::now()
            + chrono::Duration::from_std(state.call_deadline).unwrap_or(chrono::Duration::MAX),
    };
    let admission = admission::admit(
        &state,
        &call_path,
        &holder.limits,
        &ask,
        request_id,
        &max_cost,
    )
    .await?;
    let admitted = Admitted {
        request_id,
        caller: Caller {
            user_id: holder.user_id,
            access_key_id: holder.key_id,
        },
        route,
        prompt_text,
        message_count: body["messages"].as_array().map_or(0, Vec::len) as u64,
        admission: Arc::new(admission),
        deadline,
    };
    if stream {
        let result = forward_stream(&state, &call_path, &admitted, body).await;
        if result.is_err() {
            admitted
                .admission
                .release(&state, &call_path.reservations)
                .await;
        }
        return result;
    }
    // The call runs detached from the request (on this same worker thread): a client that
    // hangs up mid-call does not stop it, so the provider's answer is still billed (or the hold
    // released) rather than the hold lingering until it expires and the call going unpaid.
    let (answered, answer) = tokio::sync::oneshot::channel();
    let background = state.background.clone();
    background.spawn_here(async move {
        let result = forward(&state, &call_path, &admitted, body).await;
        if result.is_err() {
            admitted
                .admission
                .release(&state, &call_path.reservations)
                .await;
        }
        let _ = answered.send(result);
    });
    let body = answer
        .await
        .map_err(|_| ApiError::Internal("the call task ended without an answer".to_owned()))??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// The non-streaming call: the provider's answer body, already billed.
async fn forward(
    state: &Arc<AppState>,
    call_path: &CallPath,
    call: &Admitted,
    body: Value,
) -> Result<Bytes, ApiError> {
    let route = &call.route;
    let answer = tokio::time::timeout_at(
        call.deadline,
        with_failover(
            &state.routing.keys,
            route.provider_id,
            state.max_failover_attempts,
            |key| {
                let target = route.target(key.secret());
                let client = call_path.upstream.clone();
                let body = body.clone();
                async move { client.chat(&target, body).await }
            },
        ),
    )
    .await
    .map_err(|_| upstream_error(UpstreamError::Timeout))?
    .map_err(upstream_error)?;
    let usage = match answer.usage {
        Some(usage) => usage,
        None => Usage {
            prompt_tokens: call.counted_prompt_tokens(),
            completion_tokens: tokens::count(&answer_text(&answer.body)),
            ..Usage::default()
        },
    };
    bill(state, call, usage).await?;
    Ok(answer.body)
}

/// Everything a chat completion body generated, for counting when it reports no usage: each
/// choice's content, reasoning, refusal, and its tool calls' names and arguments.
fn answer_text(answer: &Bytes) -> String {
    let parsed: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
    let mut text = String::new();
    for choice in parsed
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let message = &choice["message"];
        for field in ["content", "reasoning_content", "refusal"] {
            if let Some(part) = message[field].as_str() {
                text.push_str(part);
            }
        }
        let calls = message["tool_calls"].as_array().into_iter().flatten();
        for function in calls
            .map(|call| &call["function"])
            .chain(std::iter::once(&message["function_call"]))
        {
            for field in ["name", "arguments"] {
                if let Some(part) = function[field].as_str() {
                    text.push_str(part);
                }
            }
        }
    }
    text
}

/// Prices the real usage and makes the charge durable before the caller answers. Usage that
/// cannot be priced (absurd counts) is billed what was held, never nothing.
async fn bill(state: &AppState, call: &Admitted, usage: Usage) -> Result<(), ApiError> {
    let cost = match call.route.pricing.cost(&usage) {
        Ok(cost) => cost,
        Err(error) => {
            tracing::error!(%error, request_id = %call.request_id, ?usage, held = %call.admission.reserved,
                "usage could not be priced; billing what was held");
            metrics::counter!("calls_unpriceable_usage_total").increment(1);
            call.admission.reserved.clone()
        }
    };
    let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    let mut message = billing::charge_message(
        call.request_id,
        &call.caller,
        &call.route,
        usage,
        cost.clone(),
    );
    if let Reservation::Lease(lease) = call.admission.reservation {
        message.lease_id = Some(lease);
    }
    billing::make_durable(state, message).await?;
    call.admission.billed(state, &cost, tokens);
    Ok(())
}

async fn forward_stream(
    state: &Arc<AppState>,
    call_path: &CallPath,
    call: &Admitted,
    body: Value,
) -> Result<HttpResponse, ApiError> {
    let route = &call.route;
    let client_wants_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let stream = with_failover(
        &state.routing.keys,
        route.provider_id,
        state.max_failover_attempts,
        |key| {
            let target = route.target(key.secret());
            let client = call_path.upstream.clone();
            let body = body.clone();
            async move { client.chat_stream(&target, body, client_wants_usage).await }
        },
    )
    .await
    .map_err(upstream_error)?;
    // The provider accepted the call: from here it is billed, whatever the client does. The
    // provider's stream is read to its end by a task of its own, independently of the client.
    let (chunks, to_client) = mpsc::channel(STREAM_READ_AHEAD);
    let pump = Pump {
        state: Arc::clone(state),
        usage: stream.usage(),
        call: call.clone(),
        stall: state.stream_stall,
    };
    state.background.spawn_here(pump.run(stream, chunks));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(ClientStream {
            chunks: to_client,
            ended: false,
        }))
}

/// Chunks read ahead from the provider for a client that reads slower than it generates.
const STREAM_READ_AHEAD: usize = 64;

/// What the provider's stream hands the client.
enum Piece {
    Bytes(Bytes),
    /// The stream ended cleanly and its charge is durable: the client may see the end.
    End,
}

/// Reads a provider's stream to its end (or the call's deadline), forwarding it to the client
/// while the client keeps up, then bills it. The client's final event (`data: [DONE]`) and the
/// end of the response are sent only once the charge is durable.
struct Pump {
    state: Arc<AppState>,
    usage: StreamUsage,
    call: Admitted,
    stall: Duration,
}

/// The SSE event that ends a chat stream for OpenAI clients.
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

impl Pump {
    async fn run(self, mut stream: ChatStream, chunks: mpsc::Sender<Piece>) {
        let mut client = Some(chunks);
        let mut done_event: Option<Bytes> = None;
        let mut clean = false;
        loop {
            let next = match tokio::time::timeout_at(self.call.deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::warn!(request_id = %self.call.request_id, "stream reached the call's deadline; billing what was generated");
                    metrics::counter!("stream_cut_total", "reason" => "deadline").increment(1);
                    break;
                }
            };
            let mut bytes = match next {
                None => {
                    clean = true;
                    break;
                }
                Some(Err(_)) => break, // logged by the stream; billed below
                Some(Ok(bytes)) => bytes,
            };
            if bytes.ends_with(DONE_EVENT) {
                done_event = Some(bytes.split_off(bytes.len() - DONE_EVENT.len()));
            }
            let Some(sender) = &client else { continue };
            if bytes.is_empty() {
                continue;
            }
            let room = self.call.deadline.min(Instant::now() + self.stall);
            match tokio::time::timeout_at(room, sender.send(Piece::Bytes(bytes))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => client = None, // the client left
                Err(_) => {
                    tracing::info!(request_id = %self.call.request_id, "streaming client too slow; cut off, the stream is still read and billed");
                    metrics::counter!("stream_cut_total", "reason" => "slow_client").increment(1);
                    client = None;
                }
            }
        }
        drop(stream);
        let durable = bill(&self.state, &self.call, self.usage_of_stream())
            .await
            .is_ok();
        if !durable {
            // Not billed, so not answered in full either: it costs nothing.
            self.call
                .admission
                .release(&self.state, &self.state.reservations)
                .await;
        }
        let Some(sender) = client else { return };
        if durable && clean {
            if let Some(done) = done_event {
                let _ = sender.send(Piece::Bytes(done)).await;
            }
            let _ = sender.send(Piece::End).await;
        }
        // Otherwise the sender is dropped without `End`: the client's response breaks off
        // rather than looking complete.
    }

    /// The provider's usage if it came; else what it reported early (Anthropic's prompt count)
    /// and what was generated, counted offline; the prompt at least, as the provider accepted
    /// the call.
    fn usage_of_stream(&self) -> Usage {
        let seen = self.usage.snapshot();
        if let Some(usage) = seen.usage {
            return usage;
        }
        let generated = tokens::count(&seen.generated_text);
        match seen.partial_usage {
            Some(partial) => Usage {
                completion_tokens: partial.completion_tokens.max(generated),
                ..partial
            },
            None => Usage {
                prompt_tokens: self.call.counted_prompt_tokens(),
                completion_tokens: generated,
                ..Usage::default()
            },
        }
    }
}

/// The client's side of a stream: the pieces the pump forwards. A stream that stops without
/// `End` (provider error, deadline, charge not durable, client cut off) ends in an error, so
/// the connection is broken off instead of ending like a complete answer.
struct ClientStream {
    chunks: mpsc::Receiver<Piece>,
    ended: bool,
}

/// Breaks a client's response off (see [`ClientStream`]).
#[derive(Debug, thiserror::Error)]
#[error("the stream ended before its answer was complete and billed")]
struct StreamBroken;

impl Stream for ClientStream {
    type Item = Result<Bytes, StreamBroken>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(Piece::Bytes(bytes))) => Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(Piece::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(StreamBroken)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
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
