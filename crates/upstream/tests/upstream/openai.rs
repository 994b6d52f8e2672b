//! Non-streaming calls: model mapping, usage, images, and error classification.

use std::time::Instant;

use domain::Usage;
use serde_json::{Value, json};
use upstream::{UpstreamError, UpstreamSettings};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{PUBLIC_MODEL, UPSTREAM_MODEL, client, client_with, millis, settings, target};

fn completion() -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 8}
        }
    })
}

#[tokio::test]
async fn chat_maps_the_model_out_and_back_and_parses_usage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-a"))
        .and(body_partial_json(
            json!({"model": UPSTREAM_MODEL, "messages": [{"role": "user", "content": "hi"}]}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion()))
        .expect(2)
        .mount(&server)
        .await;

    let request = json!({"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let mut with_slash = target(&server.uri(), "sk-a");
    with_slash.base_url.push('/');
    for target in [target(&server.uri(), "sk-a"), with_slash] {
        let answer = client()
            .chat(&target, request.clone())
            .await
            .expect("chat succeeds");
        let body: Value = serde_json::from_slice(&answer.body).expect("json body");
        assert_eq!(body["model"], PUBLIC_MODEL);
        assert_eq!(body["choices"][0]["message"]["content"], "Hi");
        assert_eq!(
            answer.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 3,
                cached_prompt_tokens: 8,
                images: 0,
                cache_write_prompt_tokens: 0,
            })
        );
    }
}

#[tokio::test]
async fn chat_without_usage_reports_none() {
    let server = MockServer::start().await;
    let mut body = completion();
    body.as_object_mut().expect("object").remove("usage");
    Mock::given(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    let answer = client()
        .chat(&target(&server.uri(), "k"), json!({"messages": []}))
        .await
        .expect("ok");
    assert_eq!(answer.usage, None);
}

#[tokio::test]
async fn images_count_the_generated_images() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .and(body_partial_json(json!({"model": UPSTREAM_MODEL, "n": 2})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "created": 1,
            "data": [{"url": "https://img/1.png"}, {"url": "https://img/2.png"}]
        })))
        .mount(&server)
        .await;
    let answer = client()
        .images(
            &target(&server.uri(), "k"),
            json!({"model": PUBLIC_MODEL, "prompt": "a cat", "n": 2}),
        )
        .await
        .expect("images succeed");
    assert_eq!(answer.images, 2);
    assert_eq!(answer.usage().images, 2);
    assert_eq!(answer.body["data"][1]["url"], "https://img/2.png");
}

async fn chat_error(status: u16, body: &str) -> UpstreamError {
    let server = MockServer::start().await;
    Mock::given(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .mount(&server)
        .await;
    client()
        .chat(&target(&server.uri(), "k"), json!({"messages": []}))
        .await
        .expect_err("the call fails")
}

#[tokio::test]
async fn error_statuses_are_classified() {
    let error = chat_error(401, "bad key").await;
    assert!(
        matches!(error, UpstreamError::Unauthorized { status: 401 }),
        "{error:?}"
    );
    assert!(error.is_key_failure());
    assert_eq!(error.http_status_for_client(), 502);

    let error = chat_error(429, "slow down").await;
    assert!(matches!(error, UpstreamError::RateLimited), "{error:?}");
    assert!(error.is_key_failure());

    let error = chat_error(500, "oops").await;
    assert!(
        matches!(error, UpstreamError::Server { status: 500 }),
        "{error:?}"
    );
    assert!(error.is_key_failure());
    assert_eq!(error.client_error_code(), "upstream_error");

    let error = chat_error(400, r#"{"error":{"message":"max_tokens too large"}}"#).await;
    match &error {
        UpstreamError::BadRequest { status: 400, body } => {
            assert!(body.contains("max_tokens too large"))
        }
        other => panic!("expected BadRequest, got {other:?}"),
    }
    assert!(!error.is_key_failure());
    assert_eq!(error.http_status_for_client(), 400);

    let error = chat_error(200, "this is not json").await;
    assert!(matches!(error, UpstreamError::Protocol(_)), "{error:?}");
}

#[tokio::test]
async fn a_slow_non_streaming_call_hits_the_total_timeout() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(completion())
                .set_delay(millis(5_000)),
        )
        .mount(&server)
        .await;
    let settings = UpstreamSettings {
        total_timeout_ms: 300,
        ..settings()
    };
    let started = Instant::now();
    let error = client_with(&settings)
        .chat(&target(&server.uri(), "k"), json!({"messages": []}))
        .await
        .expect_err("times out");
    assert!(matches!(error, UpstreamError::Timeout), "{error:?}");
    assert!(
        started.elapsed() < millis(2_000),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        (error.http_status_for_client(), error.client_error_code()),
        (504, "upstream_timeout")
    );
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let uri = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let error = client()
        .chat(&target(&uri, "k"), json!({"messages": []}))
        .await
        .expect_err("fails");
    assert!(matches!(error, UpstreamError::Connect(_)), "{error:?}");
    assert!(error.is_key_failure());
    // The message reaches clients: the provider's address is not in it.
    let port = uri.rsplit(':').next().expect("port");
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(
            !shown.contains(port) && !shown.contains("127.0.0.1"),
            "{shown}"
        );
        assert!(!shown.contains("chat/completions"), "{shown}");
    }
}

#[tokio::test]
async fn an_answer_larger_than_the_cap_is_refused_not_buffered() {
    let server = MockServer::start().await;
    let huge = "x".repeat(upstream::RESPONSE_BODY_LIMIT + 1);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(huge, "application/json"))
        .mount(&server)
        .await;
    let error = client()
        .chat(&target(&server.uri(), "k"), json!({"messages": []}))
        .await
        .expect_err("too large");
    assert!(
        matches!(&error, UpstreamError::Protocol(m) if m.contains("larger than")),
        "{error:?}"
    );
    assert!(!error.to_string().contains(&server.uri()), "{error}");
}
