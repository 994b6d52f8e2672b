//! OpenAI's Responses API over chat completions: the request translated into a chat request
//! (then validated, held, forwarded and billed like any chat call, on `core::call`), the answer
//! and its stream translated back. Stateless: what needs a stored response
//! (`previous_response_id`, `conversation`, item references, background runs) and built-in tools
//! are refused with 400 before anything is held.

use std::sync::Arc;

use actix_web::HttpResponse;
use actix_web::web::Bytes;
use chrono::Utc;
use domain::Usage;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::auth::KeyHolder;
use crate::core::call::{self, ChatDelta, Dialect, StreamDialect, chat_deltas, sse_event};
use crate::core::chat;
use crate::error::ApiError;
use crate::state::{AppState, CallPath};

/// `POST /v1/responses`.
pub async fn respond(
    state: Arc<AppState>,
    call_path: Arc<CallPath>,
    holder: KeyHolder,
    body: Value,
) -> Result<HttpResponse, ApiError> {
    let (chat_request, echo) = translate_request(body)?;
    let call = chat::prepare(&state, chat_request)?;
    call::run(
        state,
        call_path,
        holder,
        call,
        Arc::new(Responses(Arc::new(echo))),
    )
    .await
}

/// The request's fields a Response object repeats back.
#[derive(Debug, Default)]
struct Echo(Map<String, Value>);

/// Fields of the request a Response object carries, with their defaults.
const ECHOED: [(&str, Value); 9] = [
    ("instructions", Value::Null),
    ("max_output_tokens", Value::Null),
    ("metadata", Value::Null),
    ("parallel_tool_calls", Value::Bool(true)),
    ("temperature", Value::Null),
    ("top_p", Value::Null),
    ("tool_choice", Value::Null),
    ("tools", Value::Null),
    ("text", Value::Null),
];

/// A Responses request as a chat completions request, or the 400 naming what cannot be
/// translated.
fn translate_request(body: Value) -> Result<(Value, Echo), ApiError> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    for (field, why) in [
        (
            "previous_response_id",
            "this gateway stores no responses; send the whole conversation in input",
        ),
        (
            "conversation",
            "this gateway stores no conversations; send the whole conversation in input",
        ),
        ("prompt", "stored prompt templates are not supported"),
    ] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(format!("{field}: {why}")));
        }
    }
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::invalid(
            "background: background responses are not supported",
        ));
    }
    let mut echo = Echo::default();
    for (field, default) in ECHOED {
        let value = body.get(field).cloned().unwrap_or(default);
        echo.0.insert(field.to_owned(), value);
    }
    if let Some(model) = body.get("model") {
        echo.0.insert("model".to_owned(), model.clone());
    }

    let mut chat = Map::new();
    if let Some(model) = body.remove("model") {
        chat.insert("model".to_owned(), model);
    }
    let mut messages = Vec::new();
    match body.remove("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(_) => return Err(ApiError::invalid("instructions must be a string")),
    }
    match body.remove("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => translate_items(items, &mut messages)?,
        None | Some(Value::Null) => return Err(ApiError::invalid("input is required")),
        Some(_) => {
            return Err(ApiError::invalid(
                "input must be a string or an array of items",
            ));
        }
    }
    if messages.is_empty() {
        return Err(ApiError::invalid("input must not be empty"));
    }
    chat.insert("messages".to_owned(), Value::Array(messages));
    match body.remove("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(limit) if limit.as_u64().is_some_and(|n| n >= 1) => {
            chat.insert("max_tokens".to_owned(), limit);
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "max_output_tokens must be a positive integer",
            ));
        }
    }
    if let Some(tools) = body.remove("tools").filter(|v| !v.is_null()) {
        chat.insert("tools".to_owned(), translate_tools(tools)?);
    }
    if let Some(choice) = body.remove("tool_choice").filter(|v| !v.is_null()) {
        chat.insert("tool_choice".to_owned(), translate_tool_choice(choice)?);
    }
    let format = body
        .remove("text")
        .and_then(|text| text.get("format").cloned());
    if let Some(format) = format.map(translate_format).transpose()?.flatten() {
        chat.insert("response_format".to_owned(), format);
    }
    if let Some(effort) = body
        .remove("reasoning")
        .and_then(|reasoning| reasoning.get("effort").cloned())
        .filter(|v| !v.is_null())
    {
        chat.insert("reasoning_effort".to_owned(), effort);
    }
    // Same meaning in both APIs.
    for field in [
        "stream",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "service_tier",
    ] {
        if let Some(value) = body.remove(field) {
            chat.insert(field.to_owned(), value);
        }
    }
    if let Some(user) = body.remove("safety_identifier").filter(|v| !v.is_null()) {
        chat.entry("user").or_insert(user);
    }
    // `store`, `include`, `truncation`, `stream_options` and `metadata` change nothing here.
    Ok((Value::Object(chat), echo))
}

/// Input items as chat messages: messages, the model's function calls (one assistant message
/// per run of calls) and their outputs (tool messages). Reasoning items are dropped: no chat
/// provider reads them back.
fn translate_items(items: Vec<Value>, messages: &mut Vec<Value>) -> Result<(), ApiError> {
    for (i, item) in items.into_iter().enumerate() {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_owned();
        match kind.as_str() {
            "message" => messages.push(translate_message(&item, i)?),
            "function_call" => {
                let call = json!({
                    "id": required_text(&item, "call_id", i)?,
                    "type": "function",
                    "function": {
                        "name": required_text(&item, "name", i)?,
                        "arguments": required_text(&item, "arguments", i)?,
                    },
                });
                let last = messages
                    .last_mut()
                    .filter(|last| last["role"] == "assistant" && last.get("tool_calls").is_some());
                match last.and_then(|last| last["tool_calls"].as_array_mut()) {
                    Some(calls) => calls.push(call),
                    None => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(parts)) => parts_text(parts, i)?,
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "input[{i}].output must be a string or text parts"
                        )));
                    }
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": required_text(&item, "call_id", i)?,
                    "content": output,
                }));
            }
            "reasoning" => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "input[{i}].type: {other:?} items cannot be translated for this model's provider"
                )));
            }
        }
    }
    Ok(())
}

fn required_text(item: &Value, field: &str, i: usize) -> Result<String, ApiError> {
    item.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid(format!("input[{i}].{field} must be a string")))
}

/// The text of `output_text`/`input_text` parts (a function call's output given as parts).
fn parts_text(parts: &[Value], i: usize) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        match part.get("text").and_then(Value::as_str) {
            Some(piece) => text.push_str(piece),
            None => {
                return Err(ApiError::invalid(format!(
                    "input[{i}].output[{j}]: only text parts can be translated"
                )));
            }
        }
    }
    Ok(text)
}

fn translate_message(item: &Value, i: usize) -> Result<Value, ApiError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant" | "system")) => role,
        Some("developer") => "system",
        _ => {
            return Err(ApiError::invalid(format!(
                "input[{i}].role must be user, assistant, system or developer"
            )));
        }
    };
    let content = match item.get("content") {
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                out.push(translate_part(part, i, j)?);
            }
            if role == "user" {
                Value::Array(out)
            } else {
                // Assistant and system content is text in every chat dialect.
                Value::String(
                    out.iter()
                        .filter_map(|part| part["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(""),
                )
            }
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "input[{i}].content must be a string or an array of parts"
            )));
        }
    };
    Ok(json!({"role": role, "content": content}))
}

fn translate_part(part: &Value, i: usize, j: usize) -> Result<Value, ApiError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "input_text" | "output_text" | "text" => {
            let text = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid(format!("input[{i}].content[{j}].text must be a string"))
            })?;
            Ok(json!({"type": "text", "text": text}))
        }
        "refusal" => Ok(
            json!({"type": "text", "text": part.get("refusal").and_then(Value::as_str).unwrap_or("")}),
        ),
        "input_image" => {
            let url = part.get("image_url").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid(format!(
                    "input[{i}].content[{j}].image_url: only images given by URL can be translated"
                ))
            })?;
            let mut image = json!({"url": url});
            if let Some(detail) = part.get("detail").filter(|v| !v.is_null()) {
                image["detail"] = detail.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        other => Err(ApiError::invalid(format!(
            "input[{i}].content[{j}].type: {other:?} parts are not priced by this platform"
        ))),
    }
}

/// Function tools in chat's shape; built-in tools (web search, file search, computer use,
/// code interpreter, ...) run at OpenAI, not at a chat provider.
fn translate_tools(tools: Value) -> Result<Value, ApiError> {
    let Value::Array(tools) = tools else {
        return Err(ApiError::invalid("tools must be an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "function" {
            return Err(ApiError::invalid(format!(
                "tools[{i}].type: built-in {kind:?} tools cannot be translated for this model's provider; only function tools"
            )));
        }
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(format!("tools[{i}].name must be a string")))?;
        let mut function = json!({"name": name});
        for field in ["description", "parameters", "strict"] {
            if let Some(value) = tool.get(field).filter(|v| !v.is_null()) {
                function[field] = value.clone();
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

fn translate_tool_choice(choice: Value) -> Result<Value, ApiError> {
    match &choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => Ok(choice),
        Value::Object(named) if named.get("type").and_then(Value::as_str) == Some("function") => {
            let name = named
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid("tool_choice.name must be a string"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(ApiError::invalid(
            "tool_choice must be \"auto\", \"none\", \"required\" or a function",
        )),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn translate_format(format: Value) -> Result<Option<Value>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for field in ["name", "schema", "strict", "description"] {
                if let Some(value) = format.get(field).filter(|v| !v.is_null()) {
                    schema.insert(field.to_owned(), value.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some(other) => Err(ApiError::invalid(format!(
            "text.format.type: {other:?} is not one of text, json_object, json_schema"
        ))),
    }
}

/// Answers in the Responses API's shapes.
struct Responses(Arc<Echo>);

impl Dialect for Responses {
    fn answer(&self, body: Bytes, _native: bool, usage: &Usage) -> Bytes {
        let completion: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let choice = &completion["choices"][0];
        let message = &choice["message"];
        let mut output = Vec::new();
        let text = message["content"].as_str().unwrap_or("");
        let refusal = message["refusal"].as_str();
        if !text.is_empty() || refusal.is_some() || message["tool_calls"].as_array().is_none() {
            let mut content = vec![output_text(text)];
            if let Some(refusal) = refusal {
                content = vec![json!({"type": "refusal", "refusal": refusal})];
            }
            output.push(message_item(&new_id("msg"), "completed", content));
        }
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            output.push(function_call_item(
                &new_id("fc"),
                "completed",
                call["id"].as_str().unwrap_or(""),
                call["function"]["name"].as_str().unwrap_or(""),
                call["function"]["arguments"].as_str().unwrap_or(""),
            ));
        }
        let response = response_object(
            &self.0,
            &new_id("resp"),
            Utc::now().timestamp(),
            output,
            choice["finish_reason"].as_str(),
            Some(usage),
        );
        Bytes::from(response.to_string())
    }

    fn stream(&self, _native: bool) -> Box<dyn StreamDialect> {
        Box::new(ResponseEvents {
            echo: Arc::clone(&self.0),
            id: new_id("resp"),
            created_at: Utc::now().timestamp(),
            sequence: 0,
            started: false,
            output: Vec::new(),
            open: None,
            finish_reason: None,
        })
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple())
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn function_call_item(id: &str, status: &str, call_id: &str, name: &str, arguments: &str) -> Value {
    json!({"type": "function_call", "id": id, "status": status, "call_id": call_id,
        "name": name, "arguments": arguments})
}

/// A Response object. `usage` is `None` while it is in progress.
fn response_object(
    echo: &Echo,
    id: &str,
    created_at: i64,
    output: Vec<Value>,
    finish_reason: Option<&str>,
    usage: Option<&Usage>,
) -> Value {
    let (status, incomplete) = match (usage, finish_reason) {
        (None, _) => ("in_progress", Value::Null),
        (Some(_), Some("length")) => ("incomplete", json!({"reason": "max_output_tokens"})),
        (Some(_), Some("content_filter")) => ("incomplete", json!({"reason": "content_filter"})),
        (Some(_), _) => ("completed", Value::Null),
    };
    let mut response = json!({
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "output": output,
        "usage": usage.map(|usage| json!({
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
        })),
    });
    for (field, value) in &echo.0 {
        response[field] = value.clone();
    }
    if response["tools"].is_null() {
        response["tools"] = json!([]);
    }
    if response["tool_choice"].is_null() {
        response["tool_choice"] = json!("auto");
    }
    if response["text"].is_null() {
        response["text"] = json!({"format": {"type": "text"}});
    }
    response
}

/// The output item being streamed.
enum Open {
    /// A message: its id and the text so far.
    Message { id: String, text: String },
    /// A function call: the chat tool call's index, and the item so far.
    Call {
        index: u64,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// A chat stream as Responses events: `response.created`, `response.in_progress`, then per
/// output item `response.output_item.added`, its deltas and its `.done` events, and at the end
/// (once billed) `response.completed` (or `response.incomplete`) with the usage.
struct ResponseEvents {
    echo: Arc<Echo>,
    id: String,
    created_at: i64,
    sequence: u64,
    started: bool,
    /// Finished output items.
    output: Vec<Value>,
    open: Option<Open>,
    finish_reason: Option<String>,
}

impl ResponseEvents {
    fn emit(&mut self, out: &mut String, kind: &str, mut event: Value) {
        event["type"] = json!(kind);
        event["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push_str(&sse_event(kind, &event));
    }

    fn start(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let response = response_object(
            &self.echo,
            &self.id,
            self.created_at,
            Vec::new(),
            None,
            None,
        );
        for kind in ["response.created", "response.in_progress"] {
            self.emit(out, kind, json!({"response": response}));
        }
    }

    fn text_delta(&mut self, out: &mut String, delta: &str) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(out);
            let id = new_id("msg");
            let index = self.output.len();
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": index, "item": message_item(&id, "in_progress", Vec::new())}),
            );
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text("")}),
            );
            self.open = Some(Open::Message {
                id,
                text: String::new(),
            });
        }
        let index = self.output.len();
        let Some(Open::Message { id, text }) = &mut self.open else {
            return;
        };
        text.push_str(delta);
        let id = id.clone();
        self.emit(
            out,
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }

    fn tool_call_delta(&mut self, out: &mut String, call: &Value) {
        let index = call["index"].as_u64().unwrap_or(0);
        if !matches!(&self.open, Some(Open::Call { index: open, .. }) if *open == index) {
            self.close(out);
            let id = new_id("fc");
            let call_id = call["id"].as_str().unwrap_or("").to_owned();
            let name = call["function"]["name"].as_str().unwrap_or("").to_owned();
            let item = function_call_item(&id, "in_progress", &call_id, &name, "");
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": self.output.len(), "item": item}),
            );
            self.open = Some(Open::Call {
                index,
                id,
                call_id,
                name,
                arguments: String::new(),
            });
        }
        let delta = call["function"]["arguments"].as_str().unwrap_or("");
        if delta.is_empty() {
            return;
        }
        let output_index = self.output.len();
        let Some(Open::Call { id, arguments, .. }) = &mut self.open else {
            return;
        };
        arguments.push_str(delta);
        let id = id.clone();
        self.emit(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": output_index, "delta": delta}),
        );
    }

    /// Ends the open item with its `.done` events.
    fn close(&mut self, out: &mut String) {
        let index = self.output.len();
        match self.open.take() {
            None => {}
            Some(Open::Message { id, text }) => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": output_text(&text)}),
                );
                let item = message_item(&id, "completed", vec![output_text(&text)]);
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
            Some(Open::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            }) => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                );
                let item = function_call_item(&id, "completed", &call_id, &name, &arguments);
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
        }
    }
}

impl StreamDialect for ResponseEvents {
    fn events(&mut self, events: Bytes) -> Bytes {
        let mut out = String::new();
        for delta in chat_deltas(&events) {
            self.start(&mut out);
            match delta {
                ChatDelta::Text(text) => self.text_delta(&mut out, &text),
                ChatDelta::ToolCall(call) => self.tool_call_delta(&mut out, &call),
                ChatDelta::Finish(reason) => self.finish_reason = Some(reason),
            }
        }
        Bytes::from(out)
    }

    fn end(&mut self, usage: &Usage) -> Bytes {
        let mut out = String::new();
        self.start(&mut out);
        self.close(&mut out);
        let response = response_object(
            &self.echo,
            &self.id,
            self.created_at,
            std::mem::take(&mut self.output),
            self.finish_reason.as_deref(),
            Some(usage),
        );
        let kind = match response["status"].as_str() {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        self.emit(&mut out, kind, json!({"response": response}));
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

    fn refused(body: Value) -> String {
        translate_request(body).unwrap_err().to_string()
    }

    #[test]
    fn a_string_input_with_instructions_is_a_system_and_a_user_message() {
        let chat = translated(json!({
            "model": "m", "instructions": "be brief", "input": "hi", "max_output_tokens": 20,
            "stream": true, "temperature": 0.5, "store": true
        }));
        assert_eq!(
            chat,
            json!({"model": "m", "messages": [
                {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "max_tokens": 20, "stream": true, "temperature": 0.5})
        );
    }

    #[test]
    fn items_tools_and_function_calls_are_translated() {
        let chat = translated(json!({
            "model": "m",
            "input": [
                {"role": "developer", "content": "rules"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "done"}]}
            ],
            "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}},
            "reasoning": {"effort": "low"}
        }));
        let messages = chat["messages"].as_array().unwrap();
        assert_eq!(messages[0], json!({"role": "system", "content": "rules"}));
        assert_eq!(
            messages[1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}})
        );
        assert_eq!(messages[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(messages[2]["tool_calls"][1]["function"]["name"], "g");
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "one"})
        );
        assert_eq!(messages[4]["content"], "two");
        assert_eq!(messages[5], json!({"role": "assistant", "content": "done"}));
        assert_eq!(
            chat["tools"],
            json!([{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}])
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(chat["response_format"]["json_schema"]["name"], "s");
        assert_eq!(chat["reasoning_effort"], "low");
    }

    #[test]
    fn what_needs_stored_state_or_built_in_tools_is_refused_by_name() {
        for (body, named) in [
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id:",
            ),
            (
                json!({"model": "m", "input": "x", "conversation": "conv_1"}),
                "conversation:",
            ),
            (
                json!({"model": "m", "input": "x", "background": true}),
                "background:",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type:",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
                "input[0].type:",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[0].type:",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].image_url:",
            ),
            (json!({"model": "m"}), "input is required"),
            (
                json!({"model": "m", "input": []}),
                "input must not be empty",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}),
                "text.format.type:",
            ),
        ] {
            let message = refused(body.clone());
            assert!(message.starts_with(named), "{body}: {message}");
        }
    }

    fn echo() -> Echo {
        translate_request(json!({"model": "m", "input": "x"}))
            .unwrap()
            .1
    }

    fn sse(chunks: &[Value]) -> Bytes {
        let mut text = String::new();
        for chunk in chunks {
            text.push_str(&format!("data: {chunk}\n\n"));
        }
        text.push_str("data: [DONE]\n\n");
        Bytes::from(text)
    }

    /// `(type, data)` of each SSE event.
    fn parse(events: &[u8]) -> Vec<(String, Value)> {
        std::str::from_utf8(events)
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|event| {
                let (name, data) = event.split_once('\n').unwrap();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                let name = name.strip_prefix("event: ").unwrap();
                assert_eq!(data["type"], name);
                (name.to_owned(), data)
            })
            .collect()
    }

    #[test]
    fn a_chat_stream_becomes_response_events_ending_with_the_billed_usage() {
        let mut stream = Responses(Arc::new(echo())).stream(false);
        let first = stream.events(sse(&[
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ]));
        let usage = Usage {
            prompt_tokens: 7,
            completion_tokens: 5,
            cached_prompt_tokens: 2,
            images: 0,
            cache_write_prompt_tokens: 0,
        };
        let mut all = parse(&first);
        all.extend(parse(&stream.end(&usage)));
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (_, data)) in all.iter().enumerate() {
            assert_eq!(data["sequence_number"], i as u64);
        }
        let done = &all.last().unwrap().1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(done["output"][1]["call_id"], "call_1");
        assert_eq!(done["usage"]["input_tokens"], 7);
        assert_eq!(done["usage"]["input_tokens_details"]["cached_tokens"], 2);
        assert_eq!(done["usage"]["output_tokens"], 5);
        assert_eq!(done["usage"]["total_tokens"], 12);
    }

    #[test]
    fn a_whole_answer_is_a_response_object() {
        let completion = json!({"choices": [{"index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": "cut"}}]});
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 1,
            ..Usage::default()
        };
        let answer =
            Responses(Arc::new(echo())).answer(Bytes::from(completion.to_string()), false, &usage);
        let response: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(response["object"], "response");
        assert_eq!(response["model"], "m");
        assert_eq!(response["status"], "incomplete");
        assert_eq!(
            response["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(response["output"][0]["content"][0]["text"], "cut");
        assert_eq!(response["usage"]["output_tokens"], 1);
    }
}
