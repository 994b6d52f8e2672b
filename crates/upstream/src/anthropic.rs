//! Anthropic's Messages API behind OpenAI's chat completions: the request translated on the way
//! out, the answer (and its SSE events, one by one as they arrive) on the way back.
//!
//! Mapped: system and developer messages (to `system`), text and image parts, tool calls and tool
//! results, `max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `stop`, `tools`,
//! `tool_choice`, `parallel_tool_calls`, `user`. Refused with a 400 before anything is sent: what
//! Anthropic cannot do (`n` > 1, JSON response formats, log probabilities, audio and file parts).
//! Other OpenAI fields (penalties, `seed`, `logit_bias`, ...) have no Anthropic meaning and are
//! dropped.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use domain::Usage;
use futures_util::Stream;
use serde_json::{Map, Value, json};

use crate::error::UpstreamError;
use crate::sse::{StreamUsage, event_data, event_end};

/// The API version every request names (`anthropic-version`).
pub(crate) const API_VERSION: &str = "2023-06-01";

/// Why a request cannot go to Anthropic, worded for our client.
fn refused(message: impl Into<String>) -> String {
    message.into()
}

/// Checks an OpenAI chat request can be translated, without keeping the translation; the
/// gateway asks before it places a hold, so a request we would refuse writes nothing.
pub fn check_request(body: &Value) -> Result<(), String> {
    let Value::Object(body) = body else {
        return Err("the body must be a JSON object".to_owned());
    };
    translate(body.clone(), "model", false).map(|_| ())
}

/// [`translate`], a refusal being the client's error (400, in OpenAI's error shape).
pub(crate) fn translate_request(
    body: Map<String, Value>,
    upstream_model: &str,
    stream: bool,
) -> Result<Map<String, Value>, UpstreamError> {
    translate(body, upstream_model, stream).map_err(|message| UpstreamError::BadRequest {
        status: 400,
        body: json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string(),
    })
}

/// An OpenAI chat completions request as a Messages request for `upstream_model`, or why it
/// cannot be one.
fn translate(
    mut body: Map<String, Value>,
    upstream_model: &str,
    stream: bool,
) -> Result<Map<String, Value>, String> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(refused("n > 1 is not supported by this model's provider"));
    }
    if let Some(format) = body.get("response_format").filter(|v| !v.is_null())
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(refused(
            "response_format other than text is not supported by this model's provider",
        ));
    }
    if body.get("logprobs").and_then(Value::as_bool) == Some(true)
        || body.get("top_logprobs").is_some_and(|v| !v.is_null())
    {
        return Err(refused(
            "logprobs are not supported by this model's provider",
        ));
    }
    let messages = match body.remove("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        _ => return Err(refused("messages must be a non-empty array")),
    };
    let (system, messages) = translate_messages(messages)?;

    let mut out = Map::new();
    out.insert("model".to_owned(), Value::String(upstream_model.to_owned()));
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|field| body.get(*field).and_then(Value::as_u64))
        .ok_or_else(|| refused("max_tokens is required"))?;
    out.insert("max_tokens".to_owned(), Value::from(max_tokens));
    if !system.is_empty() {
        out.insert("system".to_owned(), Value::Array(system));
    }
    out.insert("messages".to_owned(), Value::Array(messages));
    // OpenAI accepts a temperature up to 2, Anthropic up to 1: refused here, with the reason,
    // rather than by the provider after the call was admitted.
    for field in ["temperature", "top_p"] {
        if let Some(value) = body.remove(field).filter(|v| !v.is_null()) {
            if !value.as_f64().is_some_and(|v| (0.0..=1.0).contains(&v)) {
                return Err(refused(format!(
                    "{field} must be a number between 0 and 1 for this model's provider"
                )));
            }
            out.insert(field.to_owned(), value);
        }
    }
    match body.remove("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".to_owned(), json!([stop]));
        }
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            out.insert("stop_sequences".to_owned(), Value::Array(stops));
        }
        Some(_) => return Err(refused("stop must be a string or an array of strings")),
    }
    if let Some(tools) = body.remove("tools").filter(|v| !v.is_null()) {
        out.insert("tools".to_owned(), translate_tools(tools)?);
    }
    let parallel = body.get("parallel_tool_calls").and_then(Value::as_bool);
    if let Some(choice) = translate_tool_choice(body.remove("tool_choice"), parallel)? {
        out.insert("tool_choice".to_owned(), choice);
    }
    if let Some(Value::String(user)) = body.remove("user") {
        out.insert("metadata".to_owned(), json!({ "user_id": user }));
    }
    if stream {
        out.insert("stream".to_owned(), Value::Bool(true));
    }
    Ok(out)
}

/// The system blocks and the conversation: system/developer text goes to `system`, tool results
/// become user turns, and consecutive turns of one role are merged into one.
fn translate_messages(messages: Vec<Value>) -> Result<(Vec<Value>, Vec<Value>), String> {
    let mut system = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for (at, message) in messages.into_iter().enumerate() {
        let Value::Object(mut message) = message else {
            return Err(refused(format!("messages[{at}] must be an object")));
        };
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let content = message.remove("content").unwrap_or(Value::Null);
        let (role, blocks) = match role.as_str() {
            "system" | "developer" => {
                system.extend(content_blocks(content, at, false)?);
                continue;
            }
            "user" => ("user", content_blocks(content, at, true)?),
            "assistant" => {
                let mut blocks = content_blocks(content, at, false)?;
                if let Some(Value::Array(calls)) = message.remove("tool_calls") {
                    for call in calls {
                        blocks.push(tool_use_block(&call, at)?);
                    }
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| refused(format!("messages[{at}].tool_call_id is required")))?;
                let text: Vec<Value> = content_blocks(content, at, false)?;
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": text})],
                )
            }
            other => {
                return Err(refused(format!(
                    "messages[{at}].role {other:?} is not supported by this model's provider"
                )));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => turns.push((role.to_owned(), blocks)),
        }
    }
    if turns.is_empty() {
        return Err(refused(
            "messages must hold at least one user or assistant message",
        ));
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

/// A message's content (a string, parts, or null) as content blocks; images only where allowed.
fn content_blocks(content: Value, at: usize, images: bool) -> Result<Vec<Value>, String> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![json!({"type": "text", "text": text})]),
        Value::Array(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
                        if !text.is_empty() {
                            blocks.push(json!({"type": "text", "text": text}));
                        }
                    }
                    Some("image_url") if images => {
                        let url = part
                            .pointer("/image_url/url")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                refused(format!("messages[{at}] has an image_url without url"))
                            })?;
                        blocks.push(image_block(url, at)?);
                    }
                    other => {
                        return Err(refused(format!(
                            "messages[{at}] has a content part of type {} that this model's \
                             provider does not accept",
                            other.unwrap_or("(none)")
                        )));
                    }
                }
            }
            Ok(blocks)
        }
        _ => Err(refused(format!(
            "messages[{at}].content must be a string, an array or null"
        ))),
    }
}

/// An image part: a `data:` URL becomes base64 source, anything else a URL source.
fn image_block(url: &str, at: usize) -> Result<Value, String> {
    let Some(inline) = url.strip_prefix("data:") else {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    };
    let (media_type, data) = inline
        .split_once(";base64,")
        .ok_or_else(|| refused(format!("messages[{at}] has a data URL that is not base64")))?;
    Ok(json!({
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": data}
    }))
}

/// An assistant's OpenAI tool call as a `tool_use` block (arguments are a JSON object in text).
fn tool_use_block(call: &Value, at: usize) -> Result<Value, String> {
    let id = call.get("id").and_then(Value::as_str);
    let name = call.pointer("/function/name").and_then(Value::as_str);
    let (Some(id), Some(name)) = (id, name) else {
        return Err(refused(format!(
            "messages[{at}].tool_calls entries need an id and a function name"
        )));
    };
    let arguments = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    let input = match serde_json::from_str::<Value>(if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    }) {
        Ok(input @ Value::Object(_)) => input,
        _ => {
            return Err(refused(format!(
                "messages[{at}].tool_calls arguments must be a JSON object"
            )));
        }
    };
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn translate_tools(tools: Value) -> Result<Value, String> {
    let Value::Array(tools) = tools else {
        return Err(refused("tools must be an array"));
    };
    tools
        .into_iter()
        .map(|tool| {
            let function = tool
                .get("function")
                .filter(|_| tool.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| refused("only tools of type function are supported"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| refused("every tool needs a function name"))?;
            let mut out = Map::new();
            out.insert("name".to_owned(), Value::String(name.to_owned()));
            if let Some(description) = function.get("description").filter(|v| v.is_string()) {
                out.insert("description".to_owned(), description.clone());
            }
            let schema = function
                .get("parameters")
                .filter(|v| v.is_object())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            out.insert("input_schema".to_owned(), schema);
            Ok(Value::Object(out))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn translate_tool_choice(
    choice: Option<Value>,
    parallel: Option<bool>,
) -> Result<Option<Value>, String> {
    let mut out = match choice {
        None | Some(Value::Null) => {
            if parallel != Some(false) {
                return Ok(None);
            }
            json!({"type": "auto"})
        }
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => return Ok(Some(json!({"type": "none"}))),
            "required" => json!({"type": "any"}),
            other => return Err(refused(format!("tool_choice {other:?} is not supported"))),
        },
        Some(choice) => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({"type": "tool", "name": name}),
            None => return Err(refused("tool_choice must name a function")),
        },
    };
    if parallel == Some(false) {
        out["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Ok(Some(out))
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
fn finish_reason(stop_reason: Option<&str>) -> Option<&'static str> {
    Some(match stop_reason? {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop", // end_turn, stop_sequence, pause_turn
    })
}

/// Token counts of an Anthropic `usage` object. Its `input_tokens` leaves out the prompt tokens
/// read from or written to the cache; all three are prompt tokens, the reads the cached ones,
/// the writes the cache-written ones.
pub(crate) fn parse_usage(usage: &Value) -> Option<Usage> {
    let usage = usage.as_object()?;
    let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
    if !usage.contains_key("input_tokens") && !usage.contains_key("output_tokens") {
        return None;
    }
    let cached = count("cache_read_input_tokens");
    Some(Usage {
        prompt_tokens: count("input_tokens")
            .saturating_add(count("cache_creation_input_tokens"))
            .saturating_add(cached),
        completion_tokens: count("output_tokens"),
        cached_prompt_tokens: cached,
        images: 0,
        cache_write_prompt_tokens: count("cache_creation_input_tokens"),
    })
}

/// OpenAI's usage object for `usage`.
fn openai_usage(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_prompt_tokens,
            "cache_write_tokens": usage.cache_write_prompt_tokens,
        },
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A Messages answer as an OpenAI `chat.completion`, with its usage.
pub(crate) fn translate_response(
    answer: &Map<String, Value>,
    public_model: &str,
) -> (Map<String, Value>, Option<Usage>) {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    let blocks = answer.get("content").and_then(Value::as_array);
    for block in blocks.into_iter().flatten() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("thinking") => reasoning.push_str(block["thinking"].as_str().unwrap_or_default()),
            Some("tool_use") => tool_calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {
                    "name": block["name"],
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".to_owned(), json!("assistant"));
    message.insert(
        "content".to_owned(),
        if text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    if !reasoning.is_empty() {
        message.insert("reasoning_content".to_owned(), Value::String(reasoning));
    }
    if !tool_calls.is_empty() {
        message.insert("tool_calls".to_owned(), Value::Array(tool_calls));
    }
    let usage = answer.get("usage").and_then(parse_usage);
    let mut out = Map::new();
    out.insert(
        "id".to_owned(),
        answer.get("id").cloned().unwrap_or(Value::Null),
    );
    out.insert("object".to_owned(), json!("chat.completion"));
    out.insert("created".to_owned(), json!(unix_now()));
    out.insert("model".to_owned(), json!(public_model));
    out.insert(
        "choices".to_owned(),
        json!([{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(answer.get("stop_reason").and_then(Value::as_str)),
        }]),
    );
    if let Some(usage) = &usage {
        out.insert("usage".to_owned(), openai_usage(usage));
    }
    (out, usage)
}

type Source = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// Anthropic's SSE events turned into OpenAI's `chat.completion.chunk` events as they arrive;
/// the usage comes as a last chunk without choices, before `data: [DONE]`.
pub(crate) struct EventStream {
    source: Source,
    buffer: BytesMut,
    scanned: usize,
    state: Translation,
    done: bool,
    /// Pass Anthropic's events through (with this public model name) instead of translating
    /// them; the translation still records the usage.
    native: Option<String>,
}

/// What the events so far told about the message.
#[derive(Default)]
struct Translation {
    /// Where the counts known before the end are noted, for a stream cut short.
    recorder: StreamUsage,
    id: Value,
    model: Value,
    created: u64,
    usage: Option<Usage>,
    /// The OpenAI `tool_calls` index of each content block that is a tool use.
    tool_index: Vec<(u64, usize)>,
}

impl EventStream {
    /// Translates `source`; the counts Anthropic reports before the end go to `recorder`.
    pub(crate) fn new(
        source: impl Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
        recorder: StreamUsage,
    ) -> Self {
        Self {
            source: Box::pin(source),
            buffer: BytesMut::new(),
            scanned: 0,
            state: Translation {
                recorder,
                created: unix_now(),
                ..Translation::default()
            },
            done: false,
            native: None,
        }
    }

    /// Passes `source`'s events through with `public_model` as the model's name, recording
    /// their usage and generated text in `recorder` as the translation would.
    pub(crate) fn native(
        source: impl Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
        recorder: StreamUsage,
        public_model: String,
    ) -> Self {
        Self {
            native: Some(public_model),
            ..Self::new(source, recorder)
        }
    }

    fn drain(&mut self, out: &mut BytesMut) {
        while let Some(end) = event_end(&self.buffer, self.scanned) {
            let event = self.buffer.split_to(end);
            self.scanned = 0;
            let Some(public_model) = &self.native else {
                self.state.translate(&event, out);
                continue;
            };
            let mut translated = BytesMut::new();
            self.state.translate(&event, &mut translated);
            for chunk in crate::sse::chat_chunks(&translated) {
                self.state.recorder.record(&chunk);
            }
            out.extend_from_slice(&with_public_model(&event, public_model));
        }
        self.scanned = self.buffer.len();
    }
}

impl Translation {
    /// Appends the OpenAI events for one Anthropic event to `out`.
    fn translate(&mut self, event: &[u8], out: &mut BytesMut) {
        let Some(data) = std::str::from_utf8(event).ok().and_then(event_data) else {
            return; // comments and blank keep-alives carry nothing a client needs
        };
        let Ok(Value::Object(data)) = serde_json::from_str::<Value>(&data) else {
            tracing::debug!("skipping an Anthropic SSE event that is not a JSON object");
            return;
        };
        match data.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let message = data.get("message").cloned().unwrap_or(Value::Null);
                self.id = message.get("id").cloned().unwrap_or(Value::Null);
                self.model = message.get("model").cloned().unwrap_or(Value::Null);
                self.usage = message.get("usage").and_then(parse_usage);
                if let Some(usage) = self.usage {
                    self.recorder.set_partial(usage);
                }
                self.chunk(out, json!({"role": "assistant", "content": ""}), None);
            }
            Some("content_block_start") => {
                let block = &data["content_block"];
                if block["type"] == "tool_use" {
                    let index = self.tool_index.len();
                    let block_index = data["index"].as_u64().unwrap_or(0);
                    self.tool_index.push((block_index, index));
                    self.chunk(
                        out,
                        json!({"tool_calls": [{
                            "index": index,
                            "id": block["id"],
                            "type": "function",
                            "function": {"name": block["name"], "arguments": ""},
                        }]}),
                        None,
                    );
                } else if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                    self.chunk(out, json!({"content": text}), None);
                }
            }
            Some("content_block_delta") => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        self.chunk(out, json!({"content": delta["text"]}), None);
                    }
                    Some("thinking_delta") => {
                        self.chunk(out, json!({"reasoning_content": delta["thinking"]}), None);
                    }
                    Some("input_json_delta") => {
                        let block_index = data["index"].as_u64().unwrap_or(0);
                        let index = self
                            .tool_index
                            .iter()
                            .find(|(block, _)| *block == block_index)
                            .map_or(0, |(_, index)| *index);
                        self.chunk(
                            out,
                            json!({"tool_calls": [{
                                "index": index,
                                "function": {"arguments": delta["partial_json"]},
                            }]}),
                            None,
                        );
                    }
                    _ => {} // signatures and future delta kinds
                }
            }
            Some("message_delta") => {
                if let Some(delta_usage) = data.get("usage").and_then(parse_usage) {
                    let mut usage = self.usage.unwrap_or_default();
                    // The delta's counts are cumulative; input counts come only when it has them.
                    usage.completion_tokens = delta_usage.completion_tokens;
                    if delta_usage.prompt_tokens > 0 {
                        usage.prompt_tokens = delta_usage.prompt_tokens;
                        usage.cached_prompt_tokens = delta_usage.cached_prompt_tokens;
                    }
                    self.usage = Some(usage);
                    self.recorder.set_partial(usage);
                }
                let reason = finish_reason(
                    data.get("delta")
                        .and_then(|d| d.get("stop_reason"))
                        .and_then(Value::as_str),
                );
                if reason.is_some() {
                    self.chunk(out, json!({}), reason);
                }
            }
            Some("message_stop") => {
                if let Some(usage) = self.usage {
                    let mut chunk = self.envelope();
                    chunk.insert("choices".to_owned(), json!([]));
                    chunk.insert("usage".to_owned(), openai_usage(&usage));
                    write_data(out, &Value::Object(chunk));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            Some("ping") => out.extend_from_slice(b": ping\n\n"),
            Some("error") => {
                let error = &data["error"];
                write_data(
                    out,
                    &json!({"error": {
                        "message": error["message"].as_str().unwrap_or("the provider failed mid-stream"),
                        "type": error["type"].as_str().unwrap_or("api_error"),
                    }}),
                );
            }
            _ => {}
        }
    }

    fn envelope(&self) -> Map<String, Value> {
        let mut chunk = Map::new();
        chunk.insert("id".to_owned(), self.id.clone());
        chunk.insert("object".to_owned(), json!("chat.completion.chunk"));
        chunk.insert("created".to_owned(), json!(self.created));
        chunk.insert("model".to_owned(), self.model.clone());
        chunk
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish_reason: Option<&str>) {
        let mut chunk = self.envelope();
        chunk.insert(
            "choices".to_owned(),
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
        );
        write_data(out, &Value::Object(chunk));
    }
}

/// A `message_start` event with the model renamed to `public_model`; any other event as it is.
fn with_public_model(event: &[u8], public_model: &str) -> Bytes {
    let data = std::str::from_utf8(event)
        .ok()
        .and_then(event_data)
        .and_then(|data| serde_json::from_str::<Value>(&data).ok());
    match data {
        Some(mut data) if data["type"] == "message_start" && data["message"].is_object() => {
            data["message"]["model"] = json!(public_model);
            Bytes::from(format!("event: message_start\ndata: {data}\n\n"))
        }
        _ => Bytes::copy_from_slice(event),
    }
}

fn write_data(out: &mut BytesMut, value: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl Stream for EventStream {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut out = BytesMut::new();
        loop {
            this.drain(&mut out);
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out.freeze())));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.source.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buffer.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    // A last event without its blank line still counts.
                    if !this.buffer.iter().all(u8::is_ascii_whitespace) {
                        this.buffer.extend_from_slice(b"\n\n");
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::{StreamExt, stream};

    fn translate(body: Value) -> Result<Value, String> {
        let Value::Object(body) = body else {
            panic!("object expected")
        };
        super::translate(body, "claude-up", false).map(Value::Object)
    }

    #[test]
    fn system_text_tools_and_tool_results_are_translated() {
        let request = json!({
            "model": "public",
            "max_tokens": 100,
            "temperature": 0.5,
            "stop": "END",
            "user": "u-1",
            "presence_penalty": 1,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                ]}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false
        });
        let out = translate(request).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-up",
                "max_tokens": 100,
                "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}]},
                    // The tool result and the next user message are one user turn.
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
                        {"type": "text", "text": "And this?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
                    ]}
                ],
                "temperature": 0.5,
                "stop_sequences": ["END"],
                "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "metadata": {"user_id": "u-1"}
            })
        );
    }

    #[test]
    fn max_completion_tokens_wins_and_stream_is_set() {
        let Value::Object(body) = json!({
            "max_completion_tokens": 7, "max_tokens": 9,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": true, "stream_options": {"include_usage": true}
        }) else {
            unreachable!()
        };
        let out = translate_request(body, "m", true).unwrap();
        assert_eq!(out["max_tokens"], 7);
        assert_eq!(out["stream"], true);
        assert!(!out.contains_key("stream_options"));
        assert!(!out.contains_key("system"));
    }

    #[test]
    fn what_anthropic_cannot_do_is_refused_with_a_reason() {
        let base = || json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let cases = [
            ("n", json!(2), "n > 1"),
            (
                "response_format",
                json!({"type": "json_object"}),
                "response_format",
            ),
            ("logprobs", json!(true), "logprobs"),
            ("stop", json!(5), "stop must be"),
            (
                "temperature",
                json!(1.5),
                "temperature must be a number between 0 and 1",
            ),
            ("temperature", json!(-0.1), "temperature must be"),
            ("temperature", json!("hot"), "temperature must be"),
            ("top_p", json!(2), "top_p must be a number between 0 and 1"),
            ("tools", json!([{"type": "retrieval"}]), "type function"),
            ("tool_choice", json!("sometimes"), "tool_choice"),
        ];
        for (field, value, reason) in cases {
            let mut request = base();
            request[field] = value;
            let error = translate(request.clone()).unwrap_err();
            assert!(error.contains(reason), "{field}: {error}");
            assert!(check_request(&request).unwrap_err().contains(reason));
        }
        let parts = json!({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]});
        assert!(translate(parts).unwrap_err().contains("input_audio"));
        let only_system =
            json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]});
        assert!(
            translate(only_system)
                .unwrap_err()
                .contains("at least one user")
        );
        let bad_args = json!({"max_tokens": 5, "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]});
        assert!(translate(bad_args).unwrap_err().contains("JSON object"));
        assert!(check_request(&base()).is_ok());
        let mut one = base();
        one["n"] = json!(1);
        assert!(check_request(&one).is_ok());
        for (temperature, top_p) in [
            (json!(0), json!(1)),
            (json!(1.0), json!(0.0)),
            (json!(null), json!(null)),
        ] {
            let mut edge = base();
            edge["temperature"] = temperature;
            edge["top_p"] = top_p;
            assert!(check_request(&edge).is_ok(), "{edge}");
        }
    }

    #[test]
    fn answers_become_chat_completions() {
        let Value::Object(answer) = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
            "content": [
                {"type": "thinking", "thinking": "hmm"},
                {"type": "text", "text": "Hello "},
                {"type": "text", "text": "there"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 2}
        }) else {
            unreachable!()
        };
        let (out, usage) = translate_response(&answer, "public");
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 17,
                completion_tokens: 4,
                cached_prompt_tokens: 5,
                images: 0,
                cache_write_prompt_tokens: 2,
            })
        );
        assert_eq!(out["model"], "public");
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["id"], "msg_1");
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Hello there");
        assert_eq!(choice["message"]["reasoning_content"], "hmm");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(out["usage"]["prompt_tokens"], 17);
        assert_eq!(out["usage"]["total_tokens"], 21);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 5);

        for (stop, finish) in [
            ("end_turn", "stop"),
            ("max_tokens", "length"),
            ("stop_sequence", "stop"),
            ("refusal", "content_filter"),
        ] {
            let mut answer = answer.clone();
            answer.insert("stop_reason".to_owned(), json!(stop));
            assert_eq!(
                translate_response(&answer, "p").0["choices"][0]["finish_reason"],
                finish
            );
        }
    }

    const EVENTS: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_9\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-up\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: ping\n",
        "data: {\"type\":\"ping\"}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé\"}}\r\n\r\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"llo\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    async fn collect(chunks: Vec<Vec<u8>>) -> String {
        let source = stream::iter(chunks.into_iter().map(|chunk| Ok(Bytes::from(chunk))));
        let parts: Vec<Bytes> = EventStream::new(source, StreamUsage::default())
            .map(|part| part.expect("no error"))
            .collect()
            .await;
        let sse = String::from_utf8(parts.concat()).expect("utf-8");
        // Runs compared with each other may straddle a second.
        let mut normalised = String::with_capacity(sse.len());
        let mut rest = sse.as_str();
        while let Some(at) = rest.find("\"created\":") {
            let (head, tail) = rest.split_at(at + "\"created\":".len());
            normalised.push_str(head);
            normalised.push('0');
            rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
        }
        normalised.push_str(rest);
        normalised
    }

    fn data_events(sse: &str) -> Vec<Value> {
        sse.split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str(data).expect("json"))
            .collect()
    }

    #[tokio::test]
    async fn events_become_chunks_whatever_the_split() {
        let whole = collect(vec![EVENTS.as_bytes().to_vec()]).await;
        let bytes = EVENTS.as_bytes();
        for split in (1..bytes.len()).step_by(7) {
            let parts = vec![bytes[..split].to_vec(), bytes[split..].to_vec()];
            assert_eq!(collect(parts).await, whole, "split at byte {split}");
        }
        assert!(whole.contains(": ping\n\n"));
        assert!(whole.ends_with("data: [DONE]\n\n"));
        let chunks = data_events(&whole);
        let content: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(content, "Héllo");
        let arguments: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(arguments, "{\"a\":1}");
        let tool_start = chunks
            .iter()
            .find(|c| c.pointer("/choices/0/delta/tool_calls/0/id").is_some())
            .unwrap();
        assert_eq!(
            tool_start["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(
            tool_start["choices"][0]["delta"]["tool_calls"][0]["index"],
            0
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["id"] == "msg_9" && c["object"] == "chat.completion.chunk")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let finish: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/finish_reason")
                    .filter(|v| !v.is_null())
            })
            .collect();
        assert_eq!(finish, vec!["tool_calls"]);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 15);
        assert_eq!(last["usage"]["completion_tokens"], 9);
        assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    }

    #[tokio::test]
    async fn an_error_event_becomes_an_error_chunk_and_a_cut_ends_without_done() {
        let events = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1}}}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        let out = collect(vec![events.as_bytes().to_vec()]).await;
        let chunks = data_events(&out);
        assert_eq!(chunks[1]["error"]["type"], "overloaded_error");
        assert_eq!(chunks[1]["error"]["message"], "Overloaded");
        assert!(!out.contains("[DONE]"));
    }

    #[tokio::test]
    async fn a_stream_cut_short_still_tells_the_prompt_tokens() {
        let cut = EVENTS.find("event: content_block_delta").unwrap() + 300;
        let source = stream::iter(vec![
            Ok(Bytes::copy_from_slice(&EVENTS.as_bytes()[..cut])),
            Err(UpstreamError::Connect("cut".to_owned())),
        ]);
        let recorder = StreamUsage::default();
        let out: Vec<_> = EventStream::new(source, recorder.clone()).collect().await;
        assert!(matches!(out.last(), Some(Err(UpstreamError::Connect(_)))));
        let seen = recorder.snapshot();
        assert_eq!(seen.usage, None, "the final usage never came");
        assert_eq!(
            seen.partial_usage,
            Some(Usage {
                prompt_tokens: 15,
                completion_tokens: 1,
                cached_prompt_tokens: 3,
                images: 0,
                cache_write_prompt_tokens: 0,
            })
        );
    }

    #[test]
    fn usage_without_counts_is_none() {
        assert_eq!(parse_usage(&json!({})), None);
        assert_eq!(parse_usage(&Value::Null), None);
        assert_eq!(
            parse_usage(&json!({"output_tokens": 3})).map(|u| u.completion_tokens),
            Some(3)
        );
    }
}
