//! `POST /v1/messages` over real HTTP, as the gateway's Anthropic adapter sees it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mock_llm::{MockConfig, MockServer};
use serde_json::{Value, json};

const VERSION: &str = "2023-06-01";

async fn spawn(config: MockConfig) -> MockServer {
    mock_llm::start(config, "127.0.0.1", 0).await.unwrap()
}

/// A Messages call with `x-api-key: key` and `anthropic-version: version` when given.
async fn send(
    server: &MockServer,
    key: Option<&str>,
    version: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/messages", server.base_url()))
        .json(body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    if let Some(version) = version {
        request = request.header("anthropic-version", version);
    }
    request.send().await.unwrap()
}

async fn messages(server: &MockServer, key: &str, body: &Value) -> reqwest::Response {
    send(server, Some(key), Some(VERSION), body).await
}

async fn ok(server: &MockServer, body: &Value) -> Value {
    let response = messages(server, "sk-ant-test", body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn ask(prompt: &str) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": prompt}]
    })
}

/// Checks Anthropic's error shape and returns `(type, message)`.
async fn anthropic_error(response: reqwest::Response) -> (String, String) {
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    let error = body["error"].as_object().unwrap();
    assert_eq!(error.len(), 2, "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(!message.is_empty(), "{body}");
    (
        error["type"].as_str().unwrap().to_owned(),
        message.to_owned(),
    )
}

/// Expects a 400 `invalid_request_error` and returns its message.
async fn rejected(server: &MockServer, body: &Value) -> String {
    let response = messages(server, "sk-ant-test", body).await;
    assert_eq!(response.status(), 400, "{body}");
    let (kind, message) = anthropic_error(response).await;
    assert_eq!(kind, "invalid_request_error", "{body}");
    message
}

/// The `(event, data)` pairs of an SSE body, checking each data's `type` is its event name.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name, "{event}");
            (name.to_owned(), data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

#[tokio::test]
async fn a_message_reports_exact_usage() {
    let server = spawn(MockConfig::default()).await;
    let body = ok(
        &server,
        &json!({
            "model": "claude-haiku",
            "max_tokens": 100,
            "temperature": 0.2,
            "metadata": {"user_id": "u1"},
            "system": "You are  terse",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "hello there"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                    {"type": "text", "text": "general\nkenobi"}
                ]},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "bye"}
            ]
        }),
    )
    .await;
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("msg_") && id.len() == 4 + 32, "{id}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-haiku");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    let content = body["content"].as_array().unwrap();
    assert_eq!(content.len(), 1);
    assert_eq!(content[0]["type"], "text");
    let text = content[0]["text"].as_str().unwrap();
    assert!(text.starts_with("lorem ipsum dolor"));
    assert_eq!(text.split(' ').count(), 16);
    // 3 system words + 4 + 1 + 1.
    assert_eq!(
        body["usage"],
        json!({
            "input_tokens": 9,
            "output_tokens": 16,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0
        })
    );
}

#[tokio::test]
async fn the_system_prompt_counts_as_a_string_or_text_blocks() {
    let server = spawn(MockConfig::default()).await;
    let mut request = ask("two words");
    assert_eq!(ok(&server, &request).await["usage"]["input_tokens"], 2);
    request["system"] = json!("three more words");
    assert_eq!(ok(&server, &request).await["usage"]["input_tokens"], 5);
    request["system"] = json!([
        {"type": "text", "text": "three more words", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "and four others"}
    ]);
    assert_eq!(ok(&server, &request).await["usage"]["input_tokens"], 8);
}

#[tokio::test]
async fn answers_have_the_chat_length_capped_by_max_tokens() {
    let server = spawn(MockConfig {
        completion_tokens: 8,
        ..MockConfig::default()
    })
    .await;
    for (max_tokens, prompt, words, stop_reason) in [
        (5, "a b", 5, "max_tokens"),
        (8, "a b", 8, "end_turn"),
        (1024, "[[tokens:100]]", 100, "end_turn"),
        (40, "[[tokens:100]]", 40, "max_tokens"),
        (10, "[[tokens:0]]", 0, "end_turn"),
    ] {
        let mut request = ask(prompt);
        request["max_tokens"] = json!(max_tokens);
        let body = ok(&server, &request).await;
        let text = body["content"][0]["text"].as_str().unwrap();
        assert_eq!(text.split_whitespace().count(), words, "{prompt} {body}");
        assert_eq!(body["usage"]["output_tokens"], words, "{body}");
        assert_eq!(body["stop_reason"], stop_reason, "{prompt} {body}");
    }
}

#[tokio::test]
async fn the_cached_directive_moves_input_tokens_to_cache_reads() {
    let server = spawn(MockConfig::default()).await;
    let mut request = ask("[[cached:4]] one two three four five");
    request["system"] = json!("sys tem");
    let usage = &ok(&server, &request).await["usage"];
    assert_eq!(usage["input_tokens"], 8 - 4);
    assert_eq!(usage["cache_read_input_tokens"], 4);
    assert_eq!(usage["cache_creation_input_tokens"], 0);

    // Never more than the prompt has; the directive may sit in the system prompt.
    let mut request = ask("a b");
    request["system"] = json!([{"type": "text", "text": "[[cached:1000]]"}]);
    let usage = &ok(&server, &request).await["usage"];
    assert_eq!(usage["input_tokens"], 0);
    assert_eq!(usage["cache_read_input_tokens"], 3);
}

#[tokio::test]
async fn a_forced_tool_choice_gets_a_tool_use() {
    let server = spawn(MockConfig::default()).await;
    let tools = json!([
        {"name": "get_weather", "description": "d", "input_schema": {"type": "object", "properties": {}}},
        {"name": "get_time", "input_schema": {"type": "object"}}
    ]);
    for (choice, name) in [
        (json!({"type": "any"}), "get_weather"),
        (json!({"type": "tool", "name": "get_time"}), "get_time"),
    ] {
        let mut request = ask("what is the weather");
        request["tools"] = tools.clone();
        request["tool_choice"] = choice.clone();
        let body = ok(&server, &request).await;
        assert_eq!(body["stop_reason"], "tool_use", "{body}");
        let content = body["content"].as_array().unwrap();
        assert_eq!(content.len(), 1, "{body}");
        let block = content[0].as_object().unwrap();
        assert_eq!(block["type"], "tool_use");
        assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(block["name"], name, "{choice}");
        assert_eq!(block["input"], json!({"mock": true}));
        assert_eq!(body["usage"]["output_tokens"], 10);
        assert_eq!(body["usage"]["input_tokens"], 4);
    }

    // `auto` (or no tool_choice) answers with text.
    let mut request = ask("hi");
    request["tools"] = tools;
    assert_eq!(ok(&server, &request).await["content"][0]["type"], "text");
    request["tool_choice"] = json!({"type": "auto"});
    assert_eq!(ok(&server, &request).await["stop_reason"], "end_turn");
}

#[tokio::test]
async fn a_tool_round_trip_is_accepted_and_its_result_counted() {
    let server = spawn(MockConfig::default()).await;
    let body = ok(
        &server,
        &json!({
            "model": "m",
            "max_tokens": 50,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "weather in Paris"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "let me look"},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"},
                    {"type": "text", "text": "thanks"}
                ]}
            ]
        }),
    )
    .await;
    assert_eq!(body["usage"]["input_tokens"], 3 + 3 + 1 + 1);
    assert_eq!(body["stop_reason"], "end_turn");
}

#[tokio::test]
async fn a_missing_api_key_is_an_authentication_error() {
    let server = spawn(MockConfig::default()).await;
    let response = send(&server, None, Some(VERSION), &ask("hi")).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        anthropic_error(response).await,
        (
            "authentication_error".to_owned(),
            "x-api-key header is required".to_owned()
        )
    );

    // A bearer key is OpenAI's way, not Anthropic's.
    let bearer = reqwest::Client::new()
        .post(format!("{}/messages", server.base_url()))
        .bearer_auth("sk-ant-test")
        .header("anthropic-version", VERSION)
        .json(&ask("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401);
    assert_eq!(anthropic_error(bearer).await.0, "authentication_error");

    let blank = send(&server, Some(" "), Some(VERSION), &ask("hi")).await;
    assert_eq!(blank.status(), 401);
}

#[tokio::test]
async fn the_version_header_is_required() {
    let server = spawn(MockConfig::default()).await;
    let response = send(&server, Some("sk-ant-test"), None, &ask("hi")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        anthropic_error(response).await,
        (
            "invalid_request_error".to_owned(),
            "anthropic-version header is required".to_owned()
        )
    );
    let response = send(&server, Some("sk-ant-test"), Some("2024-99-99"), &ask("hi")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(anthropic_error(response).await.0, "invalid_request_error");
}

#[tokio::test]
async fn a_system_role_in_messages_is_refused() {
    let server = spawn(MockConfig::default()).await;
    let message = rejected(
        &server,
        &json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"}
        ]}),
    )
    .await;
    assert!(message.contains("messages.0.role"), "{message}");
    assert!(message.contains("top-level \"system\""), "{message}");
}

#[tokio::test]
async fn an_unknown_block_type_is_refused_by_name() {
    let server = spawn(MockConfig::default()).await;
    let message = rejected(
        &server,
        &json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png"}}
            ]}
        ]}),
    )
    .await;
    assert!(message.contains("messages.0.content.1.type"), "{message}");
    assert!(message.contains("image_url"), "{message}");
}

#[tokio::test]
async fn a_tool_result_needs_an_earlier_tool_use() {
    let server = spawn(MockConfig::default()).await;
    let message = rejected(
        &server,
        &json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_abc", "content": "sunny"}
            ]}
        ]}),
    )
    .await;
    assert!(message.contains("call_abc"), "{message}");
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let server = spawn(MockConfig::default()).await;
    let hi = json!([{"role": "user", "content": "hi"}]);
    for bad in [
        json!([1, 2]),
        json!({"max_tokens": 10, "messages": hi}),
        json!({"model": 7, "max_tokens": 10, "messages": hi}),
        json!({"model": "m", "messages": hi}),
        json!({"model": "m", "max_tokens": 0, "messages": hi}),
        json!({"model": "m", "max_tokens": -1, "messages": hi}),
        json!({"model": "m", "max_tokens": 1.5, "messages": hi}),
        json!({"model": "m", "max_tokens": 10, "messages": []}),
        json!({"model": "m", "max_tokens": 10, "messages": "hi"}),
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": null}]}),
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "tool", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "assistant", "content": [{"type": "text", "text": "x"}], "tool_calls": []},
            {"role": "user", "content": [{"type": "text"}]}
        ]}),
        json!({"model": "m", "max_tokens": 10, "messages": hi, "system": [{"type": "image", "source": {}}]}),
        json!({"model": "m", "max_tokens": 10, "messages": hi, "system": 3}),
        json!({"model": "m", "max_tokens": 10, "messages": hi, "stop_sequences": "END"}),
        json!({"model": "m", "max_tokens": 10, "messages": hi, "stop_sequences": [1]}),
        json!({"model": "m", "max_tokens": 10, "messages": hi, "tools": [{"name": "f"}]}),
        json!({"model": "m", "max_tokens": 10, "messages": hi,
               "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
        json!({"model": "m", "max_tokens": 10, "messages": hi,
               "tools": [{"name": "f", "input_schema": {}}], "tool_choice": "required"}),
        json!({"model": "m", "max_tokens": 10, "messages": hi, "tool_choice": {"type": "any"}}),
    ] {
        rejected(&server, &bad).await;
    }

    // Not JSON at all.
    let response = reqwest::Client::new()
        .post(format!("{}/messages", server.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", VERSION)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(anthropic_error(response).await.0, "invalid_request_error");

    // An empty final assistant message (a prefill) and unknown fields are fine.
    let mut prefill = ask("hi");
    prefill["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "assistant", "content": ""}));
    prefill["future_field"] = json!({"anything": [1, 2]});
    ok(&server, &prefill).await;
}

#[tokio::test]
async fn keys_and_prompts_inject_anthropic_errors() {
    let server = spawn(MockConfig::default()).await;
    for (key, status, kind) in [
        ("fail-400", 400, "invalid_request_error"),
        ("fail-401", 401, "authentication_error"),
        ("fail-403", 403, "permission_error"),
        ("fail-404", 404, "not_found_error"),
        ("fail-413", 413, "request_too_large"),
        ("fail-429", 429, "rate_limit_error"),
        ("fail-500", 500, "api_error"),
        ("fail-503", 503, "api_error"),
        ("fail-529", 529, "overloaded_error"),
    ] {
        let response = messages(&server, key, &ask("hi")).await;
        assert_eq!(response.status().as_u16(), status, "{key}");
        let retry_after = response.headers().get("retry-after").cloned();
        assert_eq!(retry_after.is_some(), status == 429, "{key}");
        assert_eq!(anthropic_error(response).await.0, kind, "{key}");
    }

    let started = Instant::now();
    let response = messages(&server, "slow-300", &ask("hi")).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let response = messages(&server, "k", &ask("please [[status:529]] now")).await;
    assert_eq!(response.status().as_u16(), 529);
    assert_eq!(anthropic_error(response).await.0, "overloaded_error");

    let response = messages(&server, "k", &ask("[[reject]]")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(anthropic_error(response).await.0, "invalid_request_error");

    let started = Instant::now();
    let response = messages(&server, "k", &ask("[[sleep:300]]")).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The system prompt is read too.
    let mut request = ask("hi");
    request["system"] = json!("[[status:503]]");
    assert_eq!(messages(&server, "k", &request).await.status(), 503);
}

#[tokio::test]
async fn a_stream_sends_anthropic_events_in_order() {
    let server = spawn(MockConfig {
        completion_tokens: 5,
        ..MockConfig::default()
    })
    .await;
    let mut request = ask("[[cached:1]] three little words");
    request["system"] = json!("be brief");
    let plain = ok(&server, &request).await;

    request["stream"] = json!(true);
    let response = messages(&server, "sk-ant-test", &request).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = response.text().await.unwrap();
    let events = events(&body);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{body}"
    );
    let message = &events[0].1["message"];
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "claude-sonnet-4-5");
    assert_eq!(message["content"], json!([]));
    assert_eq!(message["stop_reason"], Value::Null);
    assert_eq!(message["stop_sequence"], Value::Null);
    assert_eq!(
        message["usage"],
        json!({
            "input_tokens": 6 - 1,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 1
        })
    );
    assert_eq!(
        events[2].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    let mut text = String::new();
    for (_, delta) in &events[3..8] {
        assert_eq!(delta["index"], 0);
        assert_eq!(delta["delta"]["type"], "text_delta");
        text.push_str(delta["delta"]["text"].as_str().unwrap());
    }
    assert_eq!(text, plain["content"][0]["text"].as_str().unwrap());
    assert_eq!(text, "lorem ipsum dolor sit amet");
    assert_eq!(
        events[8].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(
        events[9].1,
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 5}
        })
    );
    assert_eq!(plain["usage"]["output_tokens"], 5);
    assert_eq!(events[10].1, json!({"type": "message_stop"}));
}

#[tokio::test]
async fn a_capped_stream_stops_for_max_tokens() {
    let server = spawn(MockConfig::default()).await;
    let mut request = ask("hi");
    request["max_tokens"] = json!(3);
    request["stream"] = json!(true);
    let body = messages(&server, "k", &request).await.text().await.unwrap();
    let events = events(&body);
    assert_eq!(events.len(), 3 + 6, "{body}");
    assert_eq!(events[7].1["delta"]["stop_reason"], "max_tokens");
    assert_eq!(events[7].1["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn a_streamed_tool_use_sends_its_input_in_pieces() {
    let server = spawn(MockConfig::default()).await;
    let mut request = ask("weather?");
    request["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    request["tool_choice"] = json!({"type": "any"});
    request["stream"] = json!(true);
    let body = messages(&server, "k", &request).await.text().await.unwrap();
    let events = events(&body);
    let names = names(&events);
    assert_eq!(names[..3], ["message_start", "ping", "content_block_start"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let block = &events[2].1["content_block"];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({}));
    let pieces: Vec<&str> = events[3..events.len() - 3]
        .iter()
        .map(|(_, delta)| {
            assert_eq!(delta["delta"]["type"], "input_json_delta");
            delta["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert!(pieces.len() >= 2, "{body}");
    let input: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(input, json!({"mock": true}));
    let finish = &events[events.len() - 2].1;
    assert_eq!(finish["delta"]["stop_reason"], "tool_use");
    assert_eq!(finish["usage"]["output_tokens"], 10);
}

#[tokio::test]
async fn stream_events_arrive_as_they_are_produced() {
    let server = spawn(MockConfig {
        stream_chunk_delay_ms: 50,
        completion_tokens: 6,
        ..MockConfig::default()
    })
    .await;
    let mut request = ask("hi");
    request["stream"] = json!(true);
    let started = Instant::now();
    let mut body = messages(&server, "k", &request).await.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_after = started.elapsed();
    assert!(first.starts_with(b"event: message_start\n"));
    let mut rest = Vec::new();
    while let Some(bytes) = body.next().await {
        rest.extend_from_slice(&bytes.unwrap());
    }
    let all_after = started.elapsed();
    // 12 events, 11 pauses of 50 ms.
    assert!(all_after >= Duration::from_millis(550), "{all_after:?}");
    assert!(first_after < Duration::from_millis(250), "{first_after:?}");
    assert!(rest.ends_with(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[tokio::test]
async fn a_cut_stream_dies_without_message_stop() {
    let server = spawn(MockConfig::default()).await;
    let mut request = ask("[[cut:4]]");
    request["stream"] = json!(true);
    let response = messages(&server, "k", &request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(bytes) = body.next().await {
        match bytes {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body must end in an error, not cleanly");
    let received = String::from_utf8(received).unwrap();
    assert_eq!(
        names(&events(&received)),
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta"
        ],
        "{received}"
    );
}

#[tokio::test]
async fn messages_calls_share_the_counters() {
    let server = spawn(MockConfig::default()).await;
    messages(&server, "key-a", &ask("hi")).await;
    messages(&server, "key-a", &ask("[[status:500]]")).await;
    messages(&server, "fail-529", &ask("hi")).await;
    send(&server, None, Some(VERSION), &ask("hi")).await;
    send(&server, Some("key-b"), None, &ask("hi")).await;
    reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .bearer_auth("key-a")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();

    assert_eq!(server.calls(), 6);
    assert_eq!(server.calls_with_key("key-a"), 3);
    assert_eq!(server.calls_with_key("key-b"), 1);
    assert_eq!(server.calls_with_key("fail-529"), 1);
}
