//! The Anthropic Messages adapter against a mock Anthropic API: request translation and
//! headers, answers and events translated back, usage, and error classification.

use bytes::Bytes;
use domain::{ProviderKind, Usage};
use futures_util::StreamExt;
use serde_json::{Value, json};
use upstream::{Target, UpstreamError};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{PUBLIC_MODEL, UPSTREAM_MODEL, client, target};

fn anthropic(server: &MockServer, key: &str) -> Target {
    Target {
        kind: ProviderKind::Anthropic,
        ..target(&server.uri(), key)
    }
}

fn request(stream: bool) -> Value {
    json!({
        "model": PUBLIC_MODEL,
        "max_tokens": 50,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"}
        ]
    })
}

/// What the Messages API must receive for `request(stream)`.
fn expected_body(stream: bool) -> Value {
    let mut body = json!({
        "model": UPSTREAM_MODEL,
        "max_tokens": 50,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    });
    if stream {
        body["stream"] = json!(true);
    }
    body
}

#[tokio::test]
async fn a_chat_goes_out_as_a_message_and_comes_back_as_a_completion() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", "sk-ant"))
        .and(header("anthropic-version", "2023-06-01"))
        .and(body_partial_json(expected_body(false)))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": UPSTREAM_MODEL,
            "content": [{"type": "text", "text": "Hello!"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 4,
                      "cache_creation_input_tokens": 0}
        })))
        .expect(1)
        .mount(&server)
        .await;

    let answer = client()
        .chat(&anthropic(&server, "sk-ant"), request(false))
        .await
        .expect("chat succeeds");
    assert_eq!(
        answer.usage,
        Some(Usage {
            prompt_tokens: 11,
            completion_tokens: 3,
            cached_prompt_tokens: 4,
            images: 0,
            cache_write_prompt_tokens: 0,
        })
    );
    let body: Value = serde_json::from_slice(&answer.body).expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], PUBLIC_MODEL);
    assert_eq!(body["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert!(!answer.body.windows(6).any(|w| w == b"sk-ant"));
}

fn event(kind: &str, data: Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

fn events() -> String {
    [
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_2", "model": UPSTREAM_MODEL,
                "content": [], "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ),
        event("ping", json!({"type": "ping"})),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}}),
        ),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 2}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]
    .concat()
}

async fn stream_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", "sk-ant"))
        .and(body_partial_json(expected_body(true)))
        .respond_with(ResponseTemplate::new(200).set_body_raw(events(), "text/event-stream"))
        .mount(&server)
        .await;
    server
}

fn data_events(sse: &str) -> Vec<Value> {
    sse.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap_or(Value::String(data.to_owned())))
        .collect()
}

#[tokio::test]
async fn a_stream_of_events_comes_back_as_openai_chunks_with_usage_recorded() {
    let server = stream_server().await;
    for wants_usage in [false, true] {
        let stream = client()
            .chat_stream(&anthropic(&server, "sk-ant"), request(true), wants_usage)
            .await
            .expect("stream opens");
        let usage = stream.usage();
        let parts: Vec<Bytes> = stream.map(|p| p.expect("no error")).collect().await;
        let sse = String::from_utf8(parts.concat()).expect("utf-8");
        let chunks = data_events(&sse);
        assert_eq!(chunks.last(), Some(&Value::String("[DONE]".to_owned())));
        let text: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        assert_eq!(text, "Hello there");
        assert!(
            chunks
                .iter()
                .filter(|c| c.is_object())
                .all(|c| c["model"] == PUBLIC_MODEL)
        );
        assert!(
            chunks
                .iter()
                .any(|c| c["choices"][0]["finish_reason"] == "length")
        );
        let usage_chunks = chunks.iter().filter(|c| c.get("usage").is_some()).count();
        assert_eq!(usage_chunks, usize::from(wants_usage), "{sse}");
        let seen = usage.snapshot();
        assert!(seen.completed);
        assert_eq!(seen.generated_text, "Hello there");
        assert_eq!(
            seen.usage,
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 2,
                cached_prompt_tokens: 0,
                images: 0,
                cache_write_prompt_tokens: 0,
            })
        );
    }
}

#[tokio::test]
async fn errors_are_classified_like_any_provider() {
    let server = MockServer::start().await;
    let error = |kind: &str| json!({"type": "error", "error": {"type": kind, "message": "nope"}});
    for (key, status, kind) in [
        ("overloaded", 529, "overloaded_error"),
        ("bad-key", 401, "authentication_error"),
        ("limited", 429, "rate_limit_error"),
        ("bad-request", 400, "invalid_request_error"),
    ] {
        Mock::given(method("POST"))
            .and(path("/v1/messages"))
            .and(header("x-api-key", key))
            .respond_with(ResponseTemplate::new(status).set_body_json(error(kind)))
            .mount(&server)
            .await;
    }
    let call = |key: &'static str| {
        let target = anthropic(&server, key);
        async move {
            client()
                .chat(&target, request(false))
                .await
                .expect_err("the call must fail")
        }
    };
    assert!(matches!(
        call("overloaded").await,
        UpstreamError::Server { status: 529 }
    ));
    assert!(call("overloaded").await.is_key_failure());
    assert!(matches!(
        call("bad-key").await,
        UpstreamError::Unauthorized { status: 401 }
    ));
    assert!(matches!(call("limited").await, UpstreamError::RateLimited));
    match call("bad-request").await {
        UpstreamError::BadRequest { status: 400, body } => assert!(body.contains("nope")),
        other => panic!("expected a bad request, got {other:?}"),
    }
}

#[tokio::test]
async fn untranslatable_requests_and_images_never_leave() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let target = anthropic(&server, "sk-ant");
    let mut two_choices = request(false);
    two_choices["n"] = json!(2);
    let error = client()
        .chat(&target, two_choices)
        .await
        .expect_err("the call must fail");
    assert!(
        matches!(error, UpstreamError::BadRequest { status: 400, .. }),
        "{error:?}"
    );
    let error = client()
        .images(&target, json!({"prompt": "a cat", "n": 1}))
        .await
        .expect_err("the call must fail");
    assert!(
        matches!(error, UpstreamError::BadRequest { status: 400, .. }),
        "{error:?}"
    );
}
