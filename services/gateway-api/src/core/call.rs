//! The one path of a synchronous model call, whatever API the client speaks (chat completions,
//! responses, messages, embeddings): admit its maximum cost, forward it through the model's
//! providers with provider and key failover, price the real usage, make the charge durable,
//! then answer. The client's API only shapes the answer ([`Dialect`]); everything that moves
//! money is here, once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::web::Bytes;
use domain::{ModelKind, Money, ProviderKind, Usage};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use upstream::{ChatResponse, ChatStream, StreamUsage, Target, UpstreamClient, UpstreamError};
use uuid::Uuid;

use crate::auth::KeyHolder;
use crate::core::admission::{self, Admission, Reservation};
use crate::core::billing::{self, Caller};
use crate::core::limits::Ask;
use crate::core::tokens;
use crate::error::ApiError;
use crate::state::{AppState, CallPath};
use catalog::{ProviderRoute, Route, with_provider_failover};
use charges::ChargeSink;

/// The enabled model of `kind` a request body names, or why there is none: 400 when the body
/// is no object or names no model, 404 `model_not_found` otherwise.
pub fn route_of(state: &AppState, body: &Value, kind: ModelKind) -> Result<Arc<Route>, ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("model is required"))?;
    let a_model_of_kind = match kind {
        ModelKind::Chat => "a chat model",
        ModelKind::Image => "an image model",
        ModelKind::Embedding => "an embedding model",
    };
    state
        .routing
        .route(model)
        .filter(|route| route.kind == kind)
        .ok_or_else(|| {
            ApiError::ModelNotFound(format!(
                "model {model:?} does not exist or is not {a_model_of_kind}"
            ))
        })
}

/// What the provider is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A chat completion, answered whole.
    Chat,
    /// A streamed chat completion; the provider's usage chunk is passed on only when the
    /// client asked for it.
    ChatStream { client_wants_usage: bool },
    /// An embeddings list.
    Embeddings,
}

/// The prompt as the offline tokenizer counts it, for providers that report no usage.
#[derive(Debug, Clone, Default)]
pub struct PromptCount {
    /// The text sent (message contents, tool payloads, embedding inputs).
    pub text: String,
    /// Tokens added to the text's count: chat framing, or token-array inputs.
    pub extra_tokens: u64,
}

impl PromptCount {
    fn tokens(&self) -> u64 {
        tokens::count(&self.text) + self.extra_tokens
    }
}

/// A validated call, ready for admission: where it goes, what it sends and what it may cost.
pub struct Call {
    pub route: Arc<Route>,
    /// The providers that may serve this call, in the order they are tried.
    pub providers: Vec<ProviderRoute>,
    /// The provider request (OpenAI's chat completions or embeddings body).
    pub body: Value,
    pub operation: Operation,
    /// The most the call may cost: what is reserved before it runs.
    pub max_cost: Money,
    /// The most tokens (prompt and output) it may use: what token limits count at admission.
    pub max_tokens: u64,
    pub prompt: PromptCount,
    /// The client's own Anthropic Messages request, passed through as it is to Anthropic
    /// providers (the others get `body`).
    pub native: Option<Value>,
}

/// The client's API: how the provider's answer (OpenAI's chat completion or embeddings list, or
/// the provider's own answer to a native request) is answered to the client. Billing never
/// depends on it.
pub trait Dialect: Send + Sync + 'static {
    /// A whole answer; `usage` is what was billed. `native`: the body is the provider's answer
    /// to the call's native request (see [`Call::native`]), not OpenAI's shape.
    fn answer(&self, body: Bytes, native: bool, usage: &Usage) -> Bytes;
    /// A translator for one streamed answer (`native` as for [`Dialect::answer`]); by default
    /// OpenAI's chat stream, passed through.
    fn stream(&self, _native: bool) -> Box<dyn StreamDialect> {
        Box::new(ChatEvents { done: None })
    }
}

/// One streamed answer, translated event by event.
pub trait StreamDialect: Send + 'static {
    /// What the client receives for complete SSE events of OpenAI's chat stream, or of the
    /// provider's own stream for a native request (possibly nothing yet).
    fn events(&mut self, events: Bytes) -> Bytes;
    /// The final events: sent only once the stream ended cleanly and its charge (`usage`, as
    /// billed) is durable, so a client never sees an unbilled answer complete.
    fn end(&mut self, usage: &Usage) -> Bytes;
}

/// OpenAI's own shapes (chat completions, embeddings): answered as the provider answered.
pub struct OpenAiShape;

impl Dialect for OpenAiShape {
    fn answer(&self, body: Bytes, _native: bool, _usage: &Usage) -> Bytes {
        body
    }
}

/// What one chunk of OpenAI's chat stream adds to its first choice, in order.
pub enum ChatDelta {
    /// Generated text.
    Text(String),
    /// A piece of a tool call: its `index`, and `id` and `function.name` on its first piece,
    /// `function.arguments` pieces after.
    ToolCall(Value),
    /// The choice's `finish_reason`.
    Finish(String),
}

/// The deltas of complete chat SSE events (as [`ChatStream`] yields them), in order.
pub fn chat_deltas(events: &[u8]) -> Vec<ChatDelta> {
    let mut deltas = Vec::new();
    for chunk in upstream::chat_chunks(events) {
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.first())
        else {
            continue;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            deltas.push(ChatDelta::Text(text.to_owned()));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            deltas.push(ChatDelta::ToolCall(call.clone()));
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            deltas.push(ChatDelta::Finish(reason.to_owned()));
        }
    }
    deltas
}

/// One named SSE event (`event:` and `data:`), as the responses and messages APIs send them.
pub fn sse_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The SSE event that ends a chat stream for OpenAI clients.
const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// Chat events passed through; the provider's `data: [DONE]` held back until billed.
struct ChatEvents {
    done: Option<Bytes>,
}

impl StreamDialect for ChatEvents {
    fn events(&mut self, mut events: Bytes) -> Bytes {
        if events.ends_with(DONE_EVENT) {
            self.done = Some(events.split_off(events.len() - DONE_EVENT.len()));
        }
        events
    }

    fn end(&mut self, _usage: &Usage) -> Bytes {
        self.done.take().unwrap_or_default()
    }
}

/// What the reservation and the bill need to know about one admitted call.
#[derive(Clone)]
struct Admitted {
    request_id: Uuid,
    caller: Caller,
    route: Arc<Route>,
    providers: Arc<Vec<ProviderRoute>>,
    native: Option<Arc<Value>>,
    prompt: Arc<PromptCount>,
    /// What reserves the call's maximum cost (`reserved`, also what usage that cannot be priced
    /// is billed). Shared with a stream's pump; the call's concurrency slots are freed when the
    /// last is dropped.
    admission: Arc<Admission>,
    /// The call ends by then, streams included (`upstream.total_timeout_ms` from admission),
    /// well inside its hold's lifetime.
    deadline: Instant,
}

/// Admits `call`, runs it and answers it in `dialect`'s shape. A call that fails before the
/// provider accepted it releases its reservation and costs nothing.
pub async fn run(
    state: Arc<AppState>,
    call_path: Arc<CallPath>,
    holder: KeyHolder,
    call: Call,
    dialect: Arc<dyn Dialect>,
) -> Result<HttpResponse, ApiError> {
    // Time-ordered (v7): usage, ledger and hold rows keyed by it are appended to the end of
    // their unique indexes instead of scattered over them.
    let request_id = Uuid::now_v7();
    let ask = Ask {
        user_id: holder.user_id,
        key_id: holder.key_id,
        model_id: call.route.model_id,
        tokens: call.max_tokens,
        deadline: chrono::Utc::now()
            + chrono::Duration::from_std(state.call_deadline).unwrap_or(chrono::Duration::MAX),
    };
    let admission = admission::admit(
        &state,
        &call_path,
        &holder.limits,
        &ask,
        request_id,
        &call.max_cost,
    )
    .await?;
    let admitted = Admitted {
        request_id,
        caller: Caller {
            user_id: holder.user_id,
            access_key_id: holder.key_id,
        },
        route: call.route,
        providers: Arc::new(call.providers),
        native: call.native.map(Arc::new),
        prompt: Arc::new(call.prompt),
        admission: Arc::new(admission),
        deadline: Instant::now() + state.call_deadline,
    };
    if let Operation::ChatStream { client_wants_usage } = call.operation {
        let result = forward_stream(
            &state,
            &call_path,
            &admitted,
            call.body,
            client_wants_usage,
            dialect.as_ref(),
        )
        .await;
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
    let operation = call.operation;
    background.spawn_here(async move {
        let result = forward(&state, &call_path, &admitted, call.body, operation).await;
        if result.is_err() {
            admitted
                .admission
                .release(&state, &call_path.reservations)
                .await;
        }
        let _ = answered.send(result);
    });
    let (answer, usage) = answer
        .await
        .map_err(|_| ApiError::Internal("the call task ended without an answer".to_owned()))??;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(dialect.answer(answer.body, answer.native, &usage)))
}

/// The provider's error as the client's.
pub fn upstream_error(error: UpstreamError) -> ApiError {
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

/// Runs `request` through the call's providers in order (each with key failover), within the
/// call's deadline; the provider's error as the client's.
async fn through_providers<T, F, Fut>(
    state: &AppState,
    call_path: &CallPath,
    call: &Admitted,
    request: F,
) -> Result<T, ApiError>
where
    F: Fn(UpstreamClient, Target) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    tokio::time::timeout_at(
        call.deadline,
        with_provider_failover(
            &state.routing.keys,
            &call.providers,
            &call.route.name,
            state.max_failover_attempts,
            |target| request(call_path.upstream.clone(), target),
        ),
    )
    .await
    .map_err(|_| upstream_error(UpstreamError::Timeout))?
    .map_err(upstream_error)
}

/// The non-streaming call: the provider's answer and the usage billed for it.
async fn forward(
    state: &Arc<AppState>,
    call_path: &CallPath,
    call: &Admitted,
    body: Value,
    operation: Operation,
) -> Result<(ChatResponse, Usage), ApiError> {
    let answer: ChatResponse = through_providers(state, call_path, call, |client, target| {
        let native = call.native_for(&target);
        let body = body.clone();
        async move {
            match (operation, native) {
                (Operation::Embeddings, _) => client.embeddings(&target, body).await,
                (_, Some(native)) => client.messages(&target, native).await,
                (_, None) => client.chat(&target, body).await,
            }
        }
    })
    .await?;
    let usage = match answer.usage {
        Some(usage) => usage,
        None => Usage {
            prompt_tokens: call.prompt.tokens(),
            completion_tokens: match operation {
                Operation::Embeddings => 0,
                _ => tokens::count(&answer_text(&answer.body)),
            },
            ..Usage::default()
        },
    };
    bill(state, &call_path.charges, call, usage).await?;
    Ok((answer, usage))
}

impl Admitted {
    /// The native request to send `target`'s provider, when it speaks the client's API.
    fn native_for(&self, target: &Target) -> Option<Value> {
        self.native
            .as_deref()
            .filter(|_| target.kind == ProviderKind::Anthropic)
            .cloned()
    }
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
async fn bill(
    state: &AppState,
    charges: &ChargeSink,
    call: &Admitted,
    usage: Usage,
) -> Result<(), ApiError> {
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
    billing::make_durable(charges, message).await?;
    call.admission.billed(state, &cost, tokens);
    Ok(())
}

async fn forward_stream(
    state: &Arc<AppState>,
    call_path: &CallPath,
    call: &Admitted,
    body: Value,
    client_wants_usage: bool,
    dialect: &dyn Dialect,
) -> Result<HttpResponse, ApiError> {
    let stream = through_providers(state, call_path, call, |client, target| {
        let native = call.native_for(&target);
        let body = body.clone();
        async move {
            match native {
                Some(native) => client.messages_stream(&target, native).await,
                None => client.chat_stream(&target, body, client_wants_usage).await,
            }
        }
    })
    .await?;
    let dialect = dialect.stream(stream.is_native());
    // The provider accepted the call: from here it is billed, whatever the client does. The
    // provider's stream is read to its end by a task of its own, independently of the client.
    let (chunks, to_client) = mpsc::channel(STREAM_READ_AHEAD);
    let pump = Pump {
        state: Arc::clone(state),
        charges: call_path.charges.clone(),
        usage: stream.usage(),
        call: call.clone(),
        stall: state.stream_stall,
        dialect,
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
/// while the client keeps up, then bills it. The client's final events (`data: [DONE]`, or the
/// dialect's) and the end of the response are sent only once the charge is durable.
struct Pump {
    state: Arc<AppState>,
    /// The worker thread's charge sink (the pump runs on that thread).
    charges: ChargeSink,
    usage: StreamUsage,
    call: Admitted,
    stall: Duration,
    dialect: Box<dyn StreamDialect>,
}

impl Pump {
    async fn run(mut self, mut stream: ChatStream, chunks: mpsc::Sender<Piece>) {
        let mut client = Some(chunks);
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
            let bytes = match next {
                None => {
                    clean = true;
                    break;
                }
                Some(Err(_)) => break, // logged by the stream; billed below
                Some(Ok(bytes)) => self.dialect.events(bytes),
            };
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
        let usage = self.usage_of_stream();
        let durable = bill(&self.state, &self.charges, &self.call, usage)
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
            let end = self.dialect.end(&usage);
            if !end.is_empty() {
                let _ = sender.send(Piece::Bytes(end)).await;
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
                prompt_tokens: self.call.prompt.tokens(),
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
