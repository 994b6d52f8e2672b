//! Anthropic's Messages API inbound: the request translated into a chat request, which is
//! validated, held for and billed like any chat call (on `core::call`). An Anthropic provider
//! gets the client's request itself, passed through (with its upstream model's name), and its
//! answer and events go back as they came; any other provider gets the chat request, and its
//! answer and stream are translated into Anthropic's shapes. Errors on this route have
//! Anthropic's shape (see `routes::messages`).

use std::sync::Arc;

use actix_web::HttpResponse;
use actix_web::web::Bytes;
use domain::Usage;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::auth::KeyHolder;
use crate::core::call::{self, ChatDelta, Dialect, StreamDialect, chat_deltas, sse_event};
use crate::core::chat;
use crate::error::ApiError;
use crate::state::{AppState, CallPath};

/// `POST /v1/messages`.
pub async fn create(
    state: Arc<AppState>,
    call_path: Arc<CallPath>,
    holder: KeyHolder,
    body: Value,
) -> Result<HttpResponse, ApiError> {
    let (chat_request, model) = translate_request(body.clone())?;
    let mut call = chat::prepare(&state, chat_request)?;
    call.native = Some(body);
    call::run(state, call_path, holder, call, Arc::new(Messages { model })).await
}

/// A Messages request as a chat completions request (and the model named), or the 400 naming
/// what cannot be translated. Extended thinking, `top_k`, `cache_control` marks and thinking
/// blocks quoted back have no chat equivalent and are dropped (an Anthropic provider gets
/// them: it is sent the request itself).
fn translate_request(body: Value) -> Result<(Value, String), ApiError> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("model: field required"))?
        .to_owned();
    let max_tokens = body
        .get("max_tokens")
        .filter(|v| v.as_u64().is_some_and(|n| n >= 1))
        .cloned()
        .ok_or_else(|| ApiError::invalid("max_tokens: a positive integer is required"))?;
    // Billed by the provider beyond tokens (MCP servers' and code containers' use), so not
    // held for: refused, as an Anthropic provider would be sent them as they are.
    for field in ["mcp_servers", "container"] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(format!(
                "{field}: not priced by this platform"
            )));
        }
    }
    let mut chat = Map::new();
    chat.insert("model".to_owned(), Value::String(model.clone()));
    chat.insert("max_tokens".to_owned(), max_tokens);

    let mut messages = Vec::new();
    match body.remove("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(Value::Array(blocks)) => {
            let text = blocks_text(&blocks, "system")?;
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => return Err(ApiError::invalid("system: must be a string or text blocks")),
    }
    let Some(Value::Array(inbound)) = body.remove("messages") else {
        return Err(ApiError::invalid("messages: must be an array"));
    };
    if inbound.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    for (i, message) in inbound.iter().enumerate() {
        translate_message(message, i, &mut messages)?;
    }
    chat.insert("messages".to_owned(), Value::Array(messages));

    match body.remove("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            chat.insert("stop".to_owned(), Value::Array(stops));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stop_sequences: must be an array of strings",
            ));
        }
    }
    if let Some(tools) = body.remove("tools").filter(|v| !v.is_null()) {
        chat.insert("tools".to_owned(), translate_tools(tools)?);
    }
    if let Some(choice) = body.remove("tool_choice").filter(|v| !v.is_null()) {
        let (choice, parallel) = translate_tool_choice(&choice)?;
        chat.insert("tool_choice".to_owned(), choice);
        if let Some(parallel) = parallel {
            chat.insert("parallel_tool_calls".to_owned(), Value::Bool(parallel));
        }
    }
    if let Some(user) = body
        .remove("metadata")
        .and_then(|metadata| metadata.get("user_id").cloned())
        .filter(Value::is_string)
    {
        chat.insert("user".to_owned(), user);
    }
    for field in ["stream", "temperature", "top_p"] {
        if let Some(value) = body.remove(field) {
            chat.insert(field.to_owned(), value);
        }
    }
    Ok((Value::Object(chat), model))
}

/// The text of text blocks (`system`, a tool result's content).
fn blocks_text(blocks: &[Value], field: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, block) in blocks.iter().enumerate() {
        match (block.get("type").and_then(Value::as_str), block.get("text")) {
            (Some("text"), Some(Value::String(piece))) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(piece);
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "{field}[{j}]: only text blocks can be translated here"
                )));
            }
        }
    }
    Ok(text)
}

/// One message: a user's tool results become tool messages (before the rest of its content),
/// an assistant's `tool_use` blocks its tool calls.
fn translate_message(message: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = match message.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant")) => role,
        _ => {
            return Err(ApiError::invalid(format!(
                "messages.{i}.role: must be \"user\" or \"assistant\""
            )));
        }
    };
    let blocks = match message.get("content") {
        Some(Value::String(text)) => {
            out.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(ApiError::invalid(format!(
                "messages.{i}.content: must be a string or an array of blocks"
            )));
        }
    };
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = || format!("messages.{i}.content.{j}");
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        match (role, kind) {
            (_, "text") => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::invalid(format!("{}.text: must be a string", at())))?;
                parts.push(json!({"type": "text", "text": text}));
            }
            ("user", "image") => parts.push(translate_image(block, &at())?),
            ("user", "tool_result") => {
                let id = block
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid(format!("{}.tool_use_id: must be a string", at()))
                    })?;
                let content = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(blocks)) => {
                        blocks_text(blocks, &format!("{}.content", at()))?
                    }
                    Some(_) => {
                        return Err(ApiError::invalid(format!(
                            "{}.content: must be a string or text blocks",
                            at()
                        )));
                    }
                };
                out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            ("assistant", "tool_use") => {
                let field = |name: &str| {
                    block.get(name).and_then(Value::as_str).ok_or_else(|| {
                        ApiError::invalid(format!("{}.{name}: must be a string", at()))
                    })
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": field("id")?,
                    "type": "function",
                    "function": {"name": field("name")?, "arguments": input.to_string()},
                }));
            }
            // Earlier reasoning quoted back: no chat provider reads it.
            ("assistant", "thinking" | "redacted_thinking") => {}
            _ => {
                return Err(ApiError::invalid(format!(
                    "{}.type: {kind:?} blocks in {role} messages cannot be translated for this model",
                    at()
                )));
            }
        }
    }
    if role == "assistant" {
        let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut message = json!({"role": "assistant", "content": text.join("")});
        if !tool_calls.is_empty() {
            if text.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = Value::Array(tool_calls);
        }
        out.push(message);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn translate_image(block: &Value, at: &str) -> Result<Value, ApiError> {
    let source = &block["source"];
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let (Some(media_type), Some(data)) =
                (source["media_type"].as_str(), source["data"].as_str())
            else {
                return Err(ApiError::invalid(format!(
                    "{at}.source: media_type and data are required"
                )));
            };
            format!("data:{media_type};base64,{data}")
        }
        Some("url") => source["url"]
            .as_str()
            .ok_or_else(|| ApiError::invalid(format!("{at}.source.url: must be a string")))?
            .to_owned(),
        _ => {
            return Err(ApiError::invalid(format!(
                "{at}.source.type: only base64 and url images can be translated"
            )));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Client tools as chat functions; Anthropic's server tools (web search, code execution,
/// computer use, ...) cannot run at a chat provider.
fn translate_tools(tools: Value) -> Result<Value, ApiError> {
    let Value::Array(tools) = tools else {
        return Err(ApiError::invalid("tools: must be an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(kind) => {
                return Err(ApiError::invalid(format!(
                    "tools.{i}.type: server tool {kind:?} cannot be translated for this model; only client tools"
                )));
            }
        }
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(format!("tools.{i}.name: must be a string")))?;
        let mut function = json!({"name": name});
        if let Some(description) = tool.get("description").filter(|v| !v.is_null()) {
            function["description"] = description.clone();
        }
        if let Some(schema) = tool.get("input_schema").filter(|v| !v.is_null()) {
            function["parameters"] = schema.clone();
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

/// Anthropic's tool choice as chat's, and `parallel_tool_calls` when it disables them.
fn translate_tool_choice(choice: &Value) -> Result<(Value, Option<bool>), ApiError> {
    let parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|disabled| !disabled);
    let chat = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid("tool_choice.name: must be a string"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(ApiError::invalid(
                "tool_choice.type: must be \"auto\", \"any\", \"tool\" or \"none\"",
            ));
        }
    };
    Ok((chat, parallel))
}

/// Answers in Anthropic's shapes.
struct Messages {
    model: String,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple())
}

fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's usage: its `input_tokens` leave out what was read from or written to the cache.
fn usage_object(usage: &Usage) -> Value {
    let cache = usage
        .cached_prompt_tokens
        .saturating_add(usage.cache_write_prompt_tokens);
    json!({
        "input_tokens": usage.prompt_tokens.saturating_sub(cache),
        "cache_creation_input_tokens": usage.cache_write_prompt_tokens,
        "cache_read_input_tokens": usage.cached_prompt_tokens,
        "output_tokens": usage.completion_tokens,
    })
}

/// A tool call's arguments as the `input` object Anthropic clients expect.
fn tool_input(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

impl Dialect for Messages {
    fn answer(&self, body: Bytes, native: bool, usage: &Usage) -> Bytes {
        if native {
            return body; // Anthropic's own message, with the public model's name
        }
        let completion: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let choice = &completion["choices"][0];
        let message = &choice["message"];
        let mut content = Vec::new();
        if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
            content.push(json!({"type": "text", "text": text}));
        }
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            content.push(json!({
                "type": "tool_use",
                "id": call["id"],
                "name": call["function"]["name"],
                "input": tool_input(call["function"]["arguments"].as_str().unwrap_or("")),
            }));
        }
        let answer = json!({
            "id": new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason(choice["finish_reason"].as_str()),
            "stop_sequence": null,
            "usage": usage_object(usage),
        });
        Bytes::from(answer.to_string())
    }

    fn stream(&self, native: bool) -> Box<dyn StreamDialect> {
        if native {
            return Box::new(NativeEvents { held: Vec::new() });
        }
        Box::new(MessageEvents {
            model: self.model.clone(),
            started: false,
            blocks: 0,
            open: None,
            finish_reason: None,
        })
    }
}

/// Anthropic's own events passed through, but for the last two (`message_delta` with the usage
/// and `message_stop`), which wait until the charge is durable.
struct NativeEvents {
    held: Vec<u8>,
}

impl StreamDialect for NativeEvents {
    fn events(&mut self, events: Bytes) -> Bytes {
        let mut out = Vec::with_capacity(events.len());
        for (event, data) in upstream::sse_events(&events) {
            let last = data
                .as_ref()
                .and_then(|data| data["type"].as_str())
                .is_some_and(|kind| matches!(kind, "message_delta" | "message_stop"));
            if last {
                self.held.extend_from_slice(event);
            } else {
                out.extend_from_slice(event);
            }
        }
        Bytes::from(out)
    }

    fn end(&mut self, _usage: &Usage) -> Bytes {
        Bytes::from(std::mem::take(&mut self.held))
    }
}

/// The content block being streamed.
enum OpenBlock {
    Text,
    /// A tool call, by its index among the chat stream's tool calls.
    ToolUse(u64),
}

/// A chat stream as Anthropic's events: `message_start`, per content block
/// `content_block_start`, its deltas and `content_block_stop`, and at the end (once billed)
/// `message_delta` with the stop reason and the usage, then `message_stop`.
struct MessageEvents {
    model: String,
    started: bool,
    /// Content blocks started so far.
    blocks: u64,
    open: Option<OpenBlock>,
    finish_reason: Option<String>,
}

impl MessageEvents {
    fn start(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": new_id("msg"), "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": usage_object(&Usage::default()),
        });
        out.push_str(&sse_event(
            "message_start",
            &json!({"type": "message_start", "message": message}),
        ));
    }

    fn open_block(&mut self, out: &mut String, block: OpenBlock, content_block: Value) {
        self.close(out);
        let event = json!({"type": "content_block_start", "index": self.blocks, "content_block": content_block});
        out.push_str(&sse_event("content_block_start", &event));
        self.open = Some(block);
        self.blocks += 1;
    }

    fn delta(&self, out: &mut String, delta: Value) {
        let event =
            json!({"type": "content_block_delta", "index": self.blocks - 1, "delta": delta});
        out.push_str(&sse_event("content_block_delta", &event));
    }

    fn close(&mut self, out: &mut String) {
        if self.open.take().is_some() {
            let event = json!({"type": "content_block_stop", "index": self.blocks - 1});
            out.push_str(&sse_event("content_block_stop", &event));
        }
    }
}

impl StreamDialect for MessageEvents {
    fn events(&mut self, events: Bytes) -> Bytes {
        let mut out = String::new();
        for delta in chat_deltas(&events) {
            self.start(&mut out);
            match delta {
                ChatDelta::Text(text) => {
                    if !matches!(self.open, Some(OpenBlock::Text)) {
                        let block = json!({"type": "text", "text": ""});
                        self.open_block(&mut out, OpenBlock::Text, block);
                    }
                    self.delta(&mut out, json!({"type": "text_delta", "text": text}));
                }
                ChatDelta::ToolCall(call) => {
                    let index = call["index"].as_u64().unwrap_or(0);
                    if !matches!(self.open, Some(OpenBlock::ToolUse(open)) if open == index) {
                        let block = json!({"type": "tool_use", "id": call["id"],
                            "name": call["function"]["name"], "input": {}});
                        self.open_block(&mut out, OpenBlock::ToolUse(index), block);
                    }
                    if let Some(arguments) = call["function"]["arguments"]
                        .as_str()
                        .filter(|a| !a.is_empty())
                    {
                        let delta = json!({"type": "input_json_delta", "partial_json": arguments});
                        self.delta(&mut out, delta);
                    }
                }
                ChatDelta::Finish(reason) => self.finish_reason = Some(reason),
            }
        }
        Bytes::from(out)
    }

    fn end(&mut self, usage: &Usage) -> Bytes {
        let mut out = String::new();
        self.start(&mut out);
        self.close(&mut out);
        let delta = json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish_reason.as_deref()), "stop_sequence": null},
            "usage": usage_object(usage),
        });
        out.push_str(&sse_event("message_delta", &delta));
        out.push_str(&sse_event("message_stop", &json!({"type": "message_stop"})));
        Bytes::from(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn translated(body: Value) -> Value {
        translate_request(body).unwrap().0
    }

    #[test]
    fn a_conversation_with_tools_is_a_chat_request() {
        let chat = translated(json!({
            "model": "claude", "max_tokens": 100, "stream": true, "top_k": 5,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42"}]},
                    {"type": "text", "text": "and?"}]}
            ],
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u1"}
        }));
        assert_eq!(
            chat,
            json!({
                "model": "claude", "max_tokens": 100, "stream": true,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                    {"role": "assistant", "content": "calling", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "42"},
                    {"role": "user", "content": [{"type": "text", "text": "and?"}]}
                ],
                "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "stop": ["END"],
                "user": "u1"
            })
        );
    }

    #[test]
    fn what_cannot_be_translated_is_refused_by_name() {
        let text = json!([{"role": "user", "content": "x"}]);
        for (body, named) in [
            (json!({"max_tokens": 5, "messages": text}), "model:"),
            (json!({"model": "m", "messages": text}), "max_tokens:"),
            (
                json!({"model": "m", "max_tokens": 0, "messages": text}),
                "max_tokens:",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": []}),
                "messages:",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role:",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "A"}}]}]}),
                "messages.0.content.0.type:",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": text, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools.0.type:",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": text, "tool_choice": {"type": "maybe"}}),
                "tool_choice.type:",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": text, "mcp_servers": [{"type": "url"}]}),
                "mcp_servers:",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": text, "container": "c"}),
                "container:",
            ),
        ] {
            let message = translate_request(body.clone()).unwrap_err().to_string();
            assert!(message.starts_with(named), "{body}: {message}");
        }
    }

    fn sse(chunks: &[Value]) -> Bytes {
        let text: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        Bytes::from(text + "data: [DONE]\n\n")
    }

    #[test]
    fn a_chat_stream_becomes_anthropic_events_ending_with_the_billed_usage() {
        let dialect = Messages {
            model: "claude".to_owned(),
        };
        let mut stream = dialect.stream(false);
        let mut text = String::from_utf8(
            stream
                .events(sse(&[
                    json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}),
                    json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
                    json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
                    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
                ]))
                .to_vec(),
        )
        .unwrap();
        let usage = Usage {
            prompt_tokens: 9,
            cached_prompt_tokens: 4,
            completion_tokens: 3,
            images: 0,
            cache_write_prompt_tokens: 0,
        };
        text.push_str(std::str::from_utf8(&stream.end(&usage)).unwrap());
        let events: Vec<Value> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.split_once("\ndata: ").unwrap().1).unwrap())
            .collect();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[4]["index"], 1);
        assert_eq!(events[4]["content_block"]["name"], "f");
        assert_eq!(events[6]["delta"]["partial_json"], ":1}");
        assert_eq!(events[8]["delta"]["stop_reason"], "tool_use");
        assert_eq!(
            events[8]["usage"],
            json!({"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 3})
        );
    }

    #[test]
    fn anthropics_own_events_pass_but_the_last_two_wait_for_the_charge() {
        let dialect = Messages {
            model: "claude".to_owned(),
        };
        let mut stream = dialect.stream(true);
        let events = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{}}\n\n",
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let passed = stream.events(Bytes::from_static(events.as_bytes()));
        let passed = std::str::from_utf8(&passed).unwrap();
        assert!(passed.contains("event: ping") && passed.contains("content_block_delta"));
        assert!(!passed.contains("message_delta") && !passed.contains("message_stop"));
        let end = stream.end(&Usage::default());
        let end = std::str::from_utf8(&end).unwrap();
        assert!(end.starts_with("event: message_delta") && end.ends_with("message_stop\"}\n\n"));
        let answer = dialect.answer(
            Bytes::from_static(b"{\"type\":\"message\"}"),
            true,
            &Usage::default(),
        );
        assert_eq!(&answer[..], b"{\"type\":\"message\"}", "passed through");
    }

    #[test]
    fn a_whole_answer_is_an_anthropic_message() {
        let completion = json!({"choices": [{"index": 0, "finish_reason": "length", "message": {
            "role": "assistant", "content": "cut", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}]});
        let answer = Messages {
            model: "claude".to_owned(),
        }
        .answer(
            Bytes::from(completion.to_string()),
            false,
            &Usage {
                prompt_tokens: 2,
                completion_tokens: 1,
                ..Usage::default()
            },
        );
        let message: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(message["type"], "message");
        assert_eq!(message["model"], "claude");
        assert_eq!(message["stop_reason"], "max_tokens");
        assert_eq!(
            message["content"][0],
            json!({"type": "text", "text": "cut"})
        );
        assert_eq!(message["content"][1]["input"], json!({"a": 1}));
        assert_eq!(message["usage"]["input_tokens"], 2);
        assert_eq!(message["usage"]["output_tokens"], 1);
    }
}
