//! The mock over real HTTP, as the SDKs and the gateway see it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mock_llm::{MockConfig, MockServer};
use serde_json::{Value, json};

async fn spawn(config: MockConfig) -> MockServer {
    mock_llm::start(config, "127.0.0.1", 0).await.unwrap()
}

async fn post(
    server: &MockServer,
    key: Option<&str>,
    path: &str,
    body: Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", server.base_url()))
        .json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

async fn chat(server: &MockServer, key: &str, body: Value) -> reqwest::Response {
    post(server, Some(key), "/chat/completions", body).await
}

fn ask(prompt: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
}

/// The `data:` payloads of an SSE body, in order.
fn events(body: &str) -> Vec<&str> {
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| event.strip_prefix("data: ").unwrap())
        .collect()
}

fn as_u64(value: &Value) -> u64 {
    value.as_u64().unwrap()
}

/// Checks OpenAI's error shape and returns `(type, code)`.
async fn openai_error(response: reqwest::Response) -> (String, Value) {
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["param"], Value::Null);
    assert!(error.as_object().unwrap().contains_key("code"), "{body}");
    (
        error["type"].as_str().unwrap().to_owned(),
        error["code"].clone(),
    )
}

#[tokio::test]
async fn a_completion_reports_exact_usage() {
    let server = spawn(MockConfig::default()).await;
    let response = chat(
        &server,
        "sk-test",
        json!({
            "model": "my-model",
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "You are  terse"},
                {"role": "user", "content": [
                    {"type": "text", "text": "hello there"},
                    {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png"}},
                    {"type": "text", "text": "general\nkenobi"}
                ]}
            ]
        }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "my-model");
    assert!(as_u64(&body["created"]) > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("lorem ipsum dolor"));
    assert_eq!(content.split(' ').count(), 16);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 16, "total_tokens": 23})
    );
}

#[tokio::test]
async fn max_tokens_cut_the_answer_and_tokens_directive_sets_its_length() {
    let server = spawn(MockConfig {
        completion_tokens: 8,
        ..MockConfig::default()
    })
    .await;
    for (extra, prompt, words, finish) in [
        (json!({"max_tokens": 5}), "a b", 5, "length"),
        (json!({"max_completion_tokens": 3}), "a b", 3, "length"),
        (json!({"max_tokens": 8}), "a b", 8, "stop"),
        (json!({}), "[[tokens:100]]", 100, "stop"),
        (json!({"max_tokens": 40}), "[[tokens:100]]", 40, "length"),
        (json!({}), "[[tokens:0]]", 0, "stop"),
    ] {
        let mut request = ask(prompt);
        request
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let body: Value = chat(&server, "sk-test", request)
            .await
            .json()
            .await
            .unwrap();
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content.split_whitespace().count(), words, "{prompt} {body}");
        assert_eq!(as_u64(&body["usage"]["completion_tokens"]), words as u64);
        assert_eq!(
            body["choices"][0]["finish_reason"], finish,
            "{prompt} {body}"
        );
    }
}

#[tokio::test]
async fn the_cached_directive_reports_cached_prompt_tokens() {
    let server = spawn(MockConfig::default()).await;
    let body: Value = chat(&server, "sk-test", ask("[[cached:2]] three more words"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["usage"],
        json!({
            "prompt_tokens": 4,
            "completion_tokens": 16,
            "total_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 2}
        })
    );
    let body: Value = chat(&server, "sk-test", ask("[[cached:99]]"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
}

#[tokio::test]
async fn a_stream_sends_one_chunk_per_word_then_done() {
    let server = spawn(MockConfig {
        completion_tokens: 5,
        ..MockConfig::default()
    })
    .await;
    let mut request = ask("three little words");
    request["stream"] = json!(true);
    let response = chat(&server, "sk-test", request).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = response.text().await.unwrap();
    let events = events(&body);
    assert_eq!(events.len(), 5 + 1 + 1, "{body}");
    assert_eq!(*events.last().unwrap(), "[DONE]");

    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str(event).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut content = String::new();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["model"], "gpt-4o-mini");
        assert!(
            chunk.get("usage").is_none(),
            "usage only when asked: {chunk}"
        );
        if let Some(word) = chunk["choices"][0]["delta"]["content"].as_str() {
            content.push_str(word);
        }
    }
    assert_eq!(content, "lorem ipsum dolor sit amet");
    let last = &chunks[chunks.len() - 1]["choices"][0];
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(last["delta"], json!({}));
}

#[tokio::test]
async fn a_stream_ends_with_usage_when_asked() {
    let server = spawn(MockConfig::default()).await;
    let mut request = ask("three little words");
    request["stream"] = json!(true);
    request["max_tokens"] = json!(4);
    request["stream_options"] = json!({"include_usage": true});
    let body = chat(&server, "sk-test", request)
        .await
        .text()
        .await
        .unwrap();
    let events = events(&body);
    assert_eq!(events.len(), 4 + 1 + 1 + 1, "{body}");
    assert_eq!(events[6], "[DONE]");
    let finish: Value = serde_json::from_str(events[4]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(finish["usage"], Value::Null);
    let usage: Value = serde_json::from_str(events[5]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );
}

#[tokio::test]
async fn stream_chunks_arrive_as_they_are_produced() {
    let server = spawn(MockConfig {
        stream_chunk_delay_ms: 50,
        completion_tokens: 10,
        ..MockConfig::default()
    })
    .await;
    let mut request = ask("hi");
    request["stream"] = json!(true);
    let started = Instant::now();
    let mut body = chat(&server, "sk-test", request).await.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    let first_after = started.elapsed();
    assert!(first.starts_with(b"data: {"));
    let mut rest = Vec::new();
    while let Some(bytes) = body.next().await {
        rest.extend_from_slice(&bytes.unwrap());
    }
    let all_after = started.elapsed();
    // 12 events, 11 pauses of 50 ms: the whole body needs at least 550 ms.
    assert!(all_after >= Duration::from_millis(550), "{all_after:?}");
    assert!(first_after < Duration::from_millis(250), "{first_after:?}");
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
}

#[tokio::test]
async fn keys_inject_failures() {
    let server = spawn(MockConfig::default()).await;
    for (key, status, kind) in [
        ("fail-401", 401, "invalid_request_error"),
        ("fail-403", 403, "permission_error"),
        ("fail-429", 429, "requests"),
        ("fail-500", 500, "server_error"),
        ("fail-503", 503, "server_error"),
    ] {
        let response = chat(&server, key, ask("hi")).await;
        assert_eq!(response.status(), status, "{key}");
        let retry_after = response.headers().get("retry-after").cloned();
        assert_eq!(retry_after.is_some(), status == 429, "{key}");
        assert_eq!(openai_error(response).await.0, kind, "{key}");
    }

    let started = Instant::now();
    let response = chat(&server, "slow-300", ask("hi")).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn prompts_inject_failures() {
    let server = spawn(MockConfig::default()).await;
    let response = chat(&server, "sk-test", ask("please [[status:502]] now")).await;
    assert_eq!(response.status(), 502);
    assert_eq!(openai_error(response).await.0, "server_error");

    let response = chat(&server, "sk-test", ask("[[reject]]")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        openai_error(response).await.1,
        json!("content_policy_violation")
    );

    let started = Instant::now();
    let response = chat(&server, "sk-test", ask("[[sleep:300]]")).await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Only the last user message is read: an old directive does not fire again.
    let history = json!({"model": "m", "messages": [
        {"role": "user", "content": "[[status:500]]"},
        {"role": "assistant", "content": "sorry"},
        {"role": "user", "content": "again"}
    ]});
    assert_eq!(chat(&server, "sk-test", history).await.status(), 200);
}

#[tokio::test]
async fn a_cut_stream_dies_without_done() {
    let server = spawn(MockConfig::default()).await;
    let mut request = ask("[[cut:3]]");
    request["stream"] = json!(true);
    let response = chat(&server, "sk-test", request).await;
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
    assert_eq!(events(&received).len(), 3, "{received}");
    assert!(!received.contains("[DONE]"));
}

#[tokio::test]
async fn images_come_n_at_a_time() {
    let server = spawn(MockConfig::default()).await;
    let body: Value = post(
        &server,
        Some("sk-test"),
        "/images/generations",
        json!({"model": "dall-e-3", "prompt": "a cat", "n": 3, "size": "1024x1024"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(as_u64(&body["created"]) > 1_700_000_000);
    let urls: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), 3);
    assert!(
        urls.iter()
            .all(|url| url.starts_with("https://mock.invalid/img/"))
    );
    assert!(urls.iter().all(|url| url.ends_with(".png")));
    assert_ne!(urls[0], urls[1]);

    let one: Value = post(
        &server,
        Some("k"),
        "/images/generations",
        json!({"prompt": "x"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(one["data"].as_array().unwrap().len(), 1);

    for bad in [
        json!({"prompt": "x", "n": 0}),
        json!({"prompt": "x", "n": 11}),
        json!({"n": 1}),
    ] {
        let response = post(&server, Some("k"), "/images/generations", bad).await;
        assert_eq!(response.status(), 400);
    }
    let rejected = post(
        &server,
        Some("k"),
        "/images/generations",
        json!({"prompt": "[[reject]] a cat"}),
    )
    .await;
    assert_eq!(rejected.status(), 400);
    assert_eq!(
        openai_error(rejected).await.1,
        json!("content_policy_violation")
    );
}

#[tokio::test]
async fn calls_without_a_key_are_refused() {
    let server = spawn(MockConfig::default()).await;
    let response = post(&server, None, "/chat/completions", ask("hi")).await;
    assert_eq!(response.status(), 401);
    assert_eq!(openai_error(response).await.1, json!("invalid_api_key"));

    let blank = reqwest::Client::new()
        .post(format!("{}/images/generations", server.base_url()))
        .header("authorization", "Bearer  ")
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(blank.status(), 401);

    let models = reqwest::Client::new()
        .get(format!("{}/models", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let server = spawn(MockConfig::default()).await;
    for bad in [
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": 7, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "m", "messages": []}),
        json!({"model": "m"}),
        json!({"model": "m", "messages": "hi"}),
    ] {
        let response = chat(&server, "sk-test", bad.clone()).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(openai_error(response).await.0, "invalid_request_error");
    }
}

#[tokio::test]
async fn the_model_list_answers_with_a_key() {
    let server = spawn(MockConfig::default()).await;
    let body: Value = reqwest::Client::new()
        .get(format!("{}/models", server.base_url()))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["object"], "model");
}

#[tokio::test]
async fn counters_count_model_calls_per_key() {
    let server = spawn(MockConfig::default()).await;
    assert_eq!(server.calls(), 0);
    chat(&server, "key-a", ask("hi")).await;
    chat(&server, "key-a", ask("[[status:500]]")).await;
    chat(&server, "fail-429", ask("hi")).await;
    post(
        &server,
        Some("key-b"),
        "/images/generations",
        json!({"prompt": "x"}),
    )
    .await;
    post(&server, None, "/chat/completions", ask("hi")).await;
    reqwest::Client::new()
        .get(format!("{}/models", server.base_url()))
        .bearer_auth("key-a")
        .send()
        .await
        .unwrap();

    assert_eq!(server.calls(), 5);
    assert_eq!(server.calls_with_key("key-a"), 2);
    assert_eq!(server.calls_with_key("key-b"), 1);
    assert_eq!(server.calls_with_key("fail-429"), 1);
    assert_eq!(server.calls_with_key("never-used"), 0);
}

#[tokio::test]
async fn a_server_on_port_zero_stops_promptly() {
    let server = spawn(MockConfig::default()).await;
    assert_ne!(server.port(), 0);
    assert_eq!(
        server.base_url(),
        format!("http://127.0.0.1:{}/v1", server.port())
    );
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/chat/completions", server.base_url()))
        .bearer_auth("k")
        .json(&ask("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let base_url = server.base_url();

    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        client
            .get(format!("{base_url}/models"))
            .bearer_auth("k")
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn embeddings_count_words_and_encode_as_asked() {
    let server = spawn(MockConfig::default()).await;
    let embed = |body: Value| post(&server, Some("k"), "/embeddings", body);
    let floats: Value =
        embed(json!({"model": "e", "input": ["one two", "three"], "dimensions": 4}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["model"], "e");
    assert_eq!(
        floats["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    assert_eq!(floats["data"][1]["index"], 1);
    assert_eq!(floats["data"][0]["embedding"].as_array().unwrap().len(), 4);

    let encoded: Value =
        embed(json!({"model": "e", "input": "a b c", "encoding_format": "base64"}))
            .await
            .json()
            .await
            .unwrap();
    let text = encoded["data"][0]["embedding"].as_str().unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    assert_eq!(bytes.len(), 8 * 4, "8 little-endian f32");

    let tokens: Value = embed(json!({"model": "e", "input": [[1, 2, 3], [4]]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tokens["usage"]["prompt_tokens"], 4);

    let unreported: Value = embed(json!({"model": "e", "input": "x [[no-usage]]"}))
        .await
        .json()
        .await
        .unwrap();
    assert!(unreported.get("usage").is_none(), "{unreported}");

    let empty = embed(json!({"model": "e", "input": []})).await;
    assert_eq!(empty.status(), 400);
}
