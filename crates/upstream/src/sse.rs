//! The client-bound SSE stream of a streaming chat: events passed through as they arrive, with the
//! public model name, the usage chunk hidden unless asked for, and usage recorded for billing.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use domain::Usage;
use futures_util::Stream;
use serde_json::{Map, Value};
use tokio::time::{Instant, Sleep};

use crate::client::parse_usage;
use crate::error::UpstreamError;

type EventSource = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// What a streaming call produced so far; shared between the stream and whoever bills it.
///
/// Read it after the stream ended or was dropped (client gone): `usage()` is the upstream's own
/// count when its usage chunk came, else `None`, and the generated text lets the caller estimate.
#[derive(Clone, Default)]
pub struct StreamUsage(Arc<Mutex<StreamUsageSnapshot>>);

/// A copy of a [`StreamUsage`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamUsageSnapshot {
    /// The upstream's reported usage (the last one seen).
    pub usage: Option<Usage>,
    /// Counts the upstream reported before its final usage, when it reports them early
    /// (Anthropic sends the prompt tokens first): what a stream cut short can still bill by.
    pub partial_usage: Option<Usage>,
    /// Content, reasoning and tool-call argument deltas received, concatenated.
    pub generated_text: String,
    /// Characters (not bytes) in `generated_text`.
    pub completion_chars: u64,
    /// Chunks that carried generated text; close to the token count for most providers.
    pub content_deltas: u64,
    /// The upstream finished its stream (`[DONE]` or a clean end) and we read all of it.
    pub completed: bool,
}

impl StreamUsage {
    fn lock(&self) -> MutexGuard<'_, StreamUsageSnapshot> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn usage(&self) -> Option<Usage> {
        self.lock().usage
    }

    pub fn generated_text(&self) -> String {
        self.lock().generated_text.clone()
    }

    pub fn completion_chars(&self) -> u64 {
        self.lock().completion_chars
    }

    pub fn content_deltas(&self) -> u64 {
        self.lock().content_deltas
    }

    pub fn completed(&self) -> bool {
        self.lock().completed
    }

    pub fn snapshot(&self) -> StreamUsageSnapshot {
        self.lock().clone()
    }

    pub(crate) fn set_partial(&self, usage: Usage) {
        self.lock().partial_usage = Some(usage);
    }

    /// Notes the chunk's usage and generated text.
    pub(crate) fn record(&self, chunk: &Map<String, Value>) {
        let usage = chunk.get("usage").and_then(parse_usage);
        let mut state = self.lock();
        if usage.is_some() {
            state.usage = usage;
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        let before = state.generated_text.len();
        for choice in choices {
            let delta = choice.get("delta");
            let field = |name: &str| {
                delta
                    .and_then(|delta| delta.get(name))
                    .and_then(Value::as_str)
            };
            for text in [field("content"), field("reasoning_content")]
                .into_iter()
                .flatten()
            {
                state.generated_text.push_str(text);
            }
            let tool_calls = delta
                .and_then(|delta| delta.get("tool_calls"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for call in tool_calls {
                if let Some(arguments) = call.pointer("/function/arguments").and_then(Value::as_str)
                {
                    state.generated_text.push_str(arguments);
                }
            }
            // Legacy completions stream `text` instead of a delta.
            if let Some(text) = choice.get("text").and_then(Value::as_str) {
                state.generated_text.push_str(text);
            }
        }
        if state.generated_text.len() > before {
            let added = state.generated_text[before..].chars().count();
            state.completion_chars = state.completion_chars.saturating_add(added as u64);
            state.content_deltas = state.content_deltas.saturating_add(1);
        }
    }
}

impl fmt::Debug for StreamUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("StreamUsage")
            .field("usage", &state.usage)
            .field("completion_chars", &state.completion_chars)
            .field("completed", &state.completed)
            .finish()
    }
}

/// SSE bytes for the client. Reads the upstream only as it is polled (no buffering beyond one
/// partial event); each read waits at most the idle timeout, then yields `Err(Timeout)` and ends.
pub struct ChatStream {
    source: EventSource,
    buffer: BytesMut,
    /// Bytes of `buffer` already searched for an event boundary.
    scanned: usize,
    public_model: String,
    client_wants_usage: bool,
    usage: StreamUsage,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    /// A read is in progress and `idle` holds its deadline.
    reading: bool,
    source_done: bool,
    finished: bool,
    /// The provider's own events, passed through (Anthropic's, for Anthropic's clients).
    native: bool,
}

impl ChatStream {
    pub(crate) fn new(
        source: impl Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
        public_model: String,
        client_wants_usage: bool,
        idle_timeout: Duration,
    ) -> Self {
        Self::with_usage(
            source,
            StreamUsage::default(),
            public_model,
            client_wants_usage,
            idle_timeout,
        )
    }

    /// [`Self::new`] recording into `usage`, which the source may also write (a translating
    /// source notes early counts there).
    pub(crate) fn with_usage(
        source: impl Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
        usage: StreamUsage,
        public_model: String,
        client_wants_usage: bool,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            source: Box::pin(source),
            buffer: BytesMut::new(),
            scanned: 0,
            public_model,
            client_wants_usage,
            usage,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            reading: false,
            source_done: false,
            finished: false,
            native: false,
        }
    }

    /// A stream of the provider's own events, passed through unchanged; `source` records the
    /// usage in `usage` itself.
    pub(crate) fn native(
        source: impl Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
        usage: StreamUsage,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            native: true,
            ..Self::with_usage(source, usage, String::new(), true, idle_timeout)
        }
    }

    /// Whether the events are the provider's own (see [`ChatStream::native`]), not OpenAI's.
    pub fn is_native(&self) -> bool {
        self.native
    }

    /// The shared usage record; keep a clone to bill after the stream is gone.
    pub fn usage(&self) -> StreamUsage {
        self.usage.clone()
    }

    /// Rewrites every complete buffered event; `None` when none produced output.
    fn drain_complete_events(&mut self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        while let Some(end) = event_end(&self.buffer, self.scanned) {
            let event = self.buffer.split_to(end).freeze();
            self.scanned = 0;
            if let Some(rewritten) = self.rewrite(event) {
                out.extend_from_slice(&rewritten);
            }
        }
        self.scanned = self.buffer.len();
        (!out.is_empty()).then(|| out.freeze())
    }

    /// One event for the client: unchanged, rewritten, or `None` to drop it.
    fn rewrite(&self, event: Bytes) -> Option<Bytes> {
        if self.native {
            return Some(event); // the source records the usage and rewrites what it must
        }
        let Ok(text) = std::str::from_utf8(&event) else {
            return Some(event);
        };
        let Some(data) = event_data(text) else {
            return Some(event); // comments, keep-alives
        };
        if data.trim() == "[DONE]" {
            self.usage.lock().completed = true;
            return Some(event);
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(&data) else {
            tracing::debug!("passing through an SSE event that is not a JSON object");
            return Some(event);
        };
        self.usage.record(&chunk);

        let has_usage = chunk.get("usage").is_some_and(|usage| !usage.is_null());
        let has_choices = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| !choices.is_empty());
        let mut changed = false;
        if !self.client_wants_usage {
            if has_usage && !has_choices {
                return None; // the usage-only chunk we asked for on our own behalf
            }
            changed |= chunk.remove("usage").is_some();
        }
        if let Some(model) = chunk.get_mut("model")
            && model.as_str() != Some(self.public_model.as_str())
        {
            *model = Value::String(self.public_model.clone());
            changed = true;
        }
        if !changed {
            return Some(event);
        }

        let json = serde_json::to_string(&chunk).ok()?;
        let mut out = String::with_capacity(json.len() + 16);
        for line in text.lines() {
            if !line.is_empty() && !line.starts_with("data:") {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str("data: ");
        out.push_str(&json);
        out.push_str("\n\n");
        Some(Bytes::from(out))
    }

    fn finish_source(&mut self) -> Option<Bytes> {
        self.finished = true;
        self.usage.lock().completed = true;
        let tail = self.buffer.split().freeze();
        if tail.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        // The upstream ended without the final blank line: still deliver its last event, terminated.
        let mut event = BytesMut::from(&tail[..]);
        event.extend_from_slice(b"\n\n");
        self.rewrite(event.freeze())
    }
}

impl Stream for ChatStream {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(events) = this.drain_complete_events() {
                return Poll::Ready(Some(Ok(events)));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if this.source_done {
                match this.finish_source() {
                    Some(event) => return Poll::Ready(Some(Ok(event))),
                    None => return Poll::Ready(None),
                }
            }
            if !this.reading {
                let deadline = Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                this.reading = true;
            }
            match this.source.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.reading = false;
                    this.buffer.extend_from_slice(&chunk);
                }
                Poll::Ready(Some(Err(error))) => {
                    this.finished = true;
                    tracing::warn!(error = %error, "upstream stream broke");
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => this.source_done = true,
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        this.finished = true;
                        tracing::warn!(idle_timeout = ?this.idle_timeout, "upstream stream went idle");
                        return Poll::Ready(Some(Err(UpstreamError::Timeout)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("public_model", &self.public_model)
            .field("client_wants_usage", &self.client_wants_usage)
            .field("buffered", &self.buffer.len())
            .field("finished", &self.finished)
            .finish()
    }
}

/// The JSON chunks in complete SSE events of a chat stream (as [`ChatStream`] yields them), in
/// order; `[DONE]`, comments and events that are no JSON object are skipped.
pub fn chat_chunks(events: &[u8]) -> Vec<Map<String, Value>> {
    sse_events(events)
        .into_iter()
        .filter_map(|(_, data)| match data {
            Some(Value::Object(chunk)) => Some(chunk),
            _ => None,
        })
        .collect()
}

/// Complete SSE events, each with its `data` parsed as JSON when it is.
pub fn sse_events(events: &[u8]) -> Vec<(&[u8], Option<Value>)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let end = event_end(events, start).unwrap_or(events.len());
        let event = &events[start..end];
        let data = std::str::from_utf8(event)
            .ok()
            .and_then(event_data)
            .and_then(|data| serde_json::from_str::<Value>(&data).ok());
        out.push((event, data));
        start = end;
    }
    out
}

/// The `data` of one SSE event (its `data:` lines joined by newlines); `None` when it has none.
pub(crate) fn event_data(event: &str) -> Option<String> {
    let mut data: Option<String> = None;
    for line in event.lines() {
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    data
}

/// The end (exclusive) of the first complete event: the first blank line, with `\n` or `\r\n`
/// line endings. Only bytes from `from` on are new; the look-back covers boundaries split across chunks.
pub(crate) fn event_end(buffer: &[u8], from: usize) -> Option<usize> {
    (from..buffer.len()).find_map(|i| {
        let blank_line = buffer[i] == b'\n'
            && ((i >= 1 && buffer[i - 1] == b'\n') || (i >= 2 && &buffer[i - 2..i] == b"\n\r"));
        blank_line.then_some(i + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{StreamExt, stream};

    const UPSTREAM: &str = concat!(
        ": keep-alive\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hé\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"}}],\"usage\":null}\r\n\r\n",
        "data: {\"id\":\"c1\",\"model\":\"up-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"up-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":3}}}\n\n",
        "data: [DONE]\n\n",
    );

    fn chat_stream(chunks: Vec<Vec<u8>>, wants_usage: bool) -> ChatStream {
        let source = stream::iter(chunks.into_iter().map(|chunk| Ok(Bytes::from(chunk))));
        ChatStream::new(
            source,
            "public-model".to_owned(),
            wants_usage,
            Duration::from_secs(5),
        )
    }

    async fn collect(stream: ChatStream) -> String {
        let parts: Vec<Bytes> = stream.map(|part| part.expect("no error")).collect().await;
        String::from_utf8(parts.concat()).expect("utf-8")
    }

    fn data_events(sse: &str) -> Vec<String> {
        sse.split("\n\n")
            .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn every_split_point_gives_the_same_output() {
        let whole = collect(chat_stream(vec![UPSTREAM.as_bytes().to_vec()], false)).await;
        let bytes = UPSTREAM.as_bytes();
        for split in 1..bytes.len() {
            let parts = vec![bytes[..split].to_vec(), bytes[split..].to_vec()];
            assert_eq!(
                collect(chat_stream(parts, false)).await,
                whole,
                "split at byte {split}"
            );
        }
        let one_byte_chunks = bytes.iter().map(|b| vec![*b]).collect();
        assert_eq!(collect(chat_stream(one_byte_chunks, false)).await, whole);
    }

    #[tokio::test]
    async fn model_is_rewritten_and_usage_chunk_hidden_unless_asked() {
        let hidden = collect(chat_stream(vec![UPSTREAM.as_bytes().to_vec()], false)).await;
        assert!(!hidden.contains("up-model"));
        assert!(!hidden.contains("prompt_tokens"));
        assert!(!hidden.contains("\"usage\""));
        assert!(hidden.starts_with(": keep-alive\n\n"));
        assert_eq!(
            data_events(&hidden).len(),
            4,
            "three chunks and [DONE]: {hidden}"
        );
        assert!(hidden.ends_with("data: [DONE]\n\n"));

        let kept = collect(chat_stream(vec![UPSTREAM.as_bytes().to_vec()], true)).await;
        let events = data_events(&kept);
        assert_eq!(events.len(), 5);
        let usage_chunk: Value = serde_json::from_str(&events[3]).expect("json");
        assert_eq!(usage_chunk["model"], "public-model");
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 2);
    }

    #[tokio::test]
    async fn usage_and_text_are_recorded() {
        let stream = chat_stream(vec![UPSTREAM.as_bytes().to_vec()], false);
        let usage = stream.usage();
        collect(stream).await;
        let snapshot = usage.snapshot();
        assert_eq!(
            snapshot.usage,
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 2,
                cached_prompt_tokens: 3,
                images: 0,
                cache_write_prompt_tokens: 0,
            })
        );
        assert_eq!(snapshot.generated_text, "Héllo");
        assert_eq!(snapshot.completion_chars, 5);
        assert_eq!(snapshot.content_deltas, 2);
        assert!(snapshot.completed);
    }

    #[tokio::test]
    async fn a_last_event_without_blank_line_is_still_delivered() {
        let chunks = vec![
            b"data: {\"model\":\"up\",\"choices\":[{\"delta\":{\"content\":\"x\"}}]}".to_vec(),
        ];
        let out = collect(chat_stream(chunks, false)).await;
        assert!(out.ends_with("\n\n"));
        let events = data_events(&out);
        assert_eq!(events.len(), 1);
        let chunk: Value = serde_json::from_str(&events[0]).expect("json");
        assert_eq!(chunk["model"], "public-model");
    }

    #[tokio::test]
    async fn an_idle_upstream_times_out() {
        let source =
            stream::iter(vec![Ok(Bytes::from_static(b"data: {}\n\n"))]).chain(stream::pending());
        let mut stream = ChatStream::new(source, "m".to_owned(), false, Duration::from_millis(50));
        assert!(matches!(stream.next().await, Some(Ok(_))));
        assert!(matches!(
            stream.next().await,
            Some(Err(UpstreamError::Timeout))
        ));
        assert!(stream.next().await.is_none());
        assert!(!stream.usage().completed());
    }

    #[test]
    fn chat_chunks_are_read_from_concatenated_events() {
        let chunks = chat_chunks(UPSTREAM.as_bytes());
        assert_eq!(chunks.len(), 4, "{chunks:?}");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "llo");
        assert!(chat_chunks(b"data: [DONE]\n\n: ping\n\n").is_empty());
    }

    #[test]
    fn event_boundaries() {
        assert_eq!(event_end(b"data: a\n\ndata: b", 0), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\n", 0), Some(11));
        assert_eq!(event_end(b"data: a\n", 0), None);
        assert_eq!(event_end(b"data: a\n\n", 8), Some(9));
    }
}
