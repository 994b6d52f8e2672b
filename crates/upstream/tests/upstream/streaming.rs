//! Streaming chat: SSE pass-through, model rewrite, the usage chunk, usage recording, timeouts.

use std::time::Instant;

use bytes::Bytes;
use domain::Usage;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use upstream::{ChatStream, UpstreamError, UpstreamSettings};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::slow_server::{self, Step, send};
use crate::{PUBLIC_MODEL, UPSTREAM_MODEL, client, client_with, millis, settings, target};

fn content_chunk(text: &str) -> String {
    let chunk = json!({
        "id": "chatcmpl-9", "object": "chat.completion.chunk", "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
    });
    format!("data: {chunk}\n\n")
}

fn usage_chunk() -> String {
    let chunk = json!({
        "id": "chatcmpl-9", "object": "chat.completion.chunk", "model": UPSTREAM_MODEL, "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                  "prompt_tokens_details": {"cached_tokens": 5}}
    });
    format!("data: {chunk}\n\n")
}

const DONE: &str = "data: [DONE]\n\n";

fn full_answer(with_usage: bool) -> String {
    let mut sse = content_chunk("Hello") + &content_chunk(", wor") + &content_chunk("ld");
    if with_usage {
        sse += &usage_chunk();
    }
    sse + DONE
}

async fn sse_server(body: String) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(json!({
            "model": UPSTREAM_MODEL, "stream": true, "stream_options": {"include_usage": true}
        })))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "text/event-stream"))
        .mount(&server)
        .await;
    server
}

async fn read_all(stream: ChatStream) -> String {
    let parts: Vec<Bytes> = stream
        .map(|part| part.expect("no stream error"))
        .collect()
        .await;
    String::from_utf8(parts.concat()).expect("utf-8")
}

/// The JSON of each `data:` event, `[DONE]` as a string.
fn events(sse: &str) -> Vec<Value> {
    assert!(
        sse.ends_with("\n\n"),
        "the stream ends at an event boundary: {sse:?}"
    );
    sse.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let data = event.strip_prefix("data: ").expect("a data event");
            serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn events_pass_through_with_the_public_model_and_the_usage_chunk_hidden() {
    let server = sse_server(full_answer(true)).await;
    let request = json!({"model": PUBLIC_MODEL, "stream": true, "messages": []});
    let stream = client()
        .chat_stream(&target(&server.uri(), "k"), request, false)
        .await
        .expect("stream starts");
    let usage = stream.usage();
    let events = events(&read_all(stream).await);

    assert_eq!(
        events.len(),
        4,
        "three content chunks and [DONE]: {events:?}"
    );
    for chunk in &events[..3] {
        assert_eq!(chunk["model"], PUBLIC_MODEL);
        assert!(chunk.get("usage").is_none());
    }
    assert_eq!(events[3], "[DONE]");
    // Hidden from the client, still recorded for billing.
    assert_eq!(
        usage.usage(),
        Some(Usage {
            prompt_tokens: 9,
            completion_tokens: 4,
            cached_prompt_tokens: 5,
            images: 0,
            cache_write_prompt_tokens: 0,
        })
    );
    assert!(usage.completed());
}

#[tokio::test]
async fn the_usage_chunk_is_kept_when_the_client_asked_for_it() {
    let server = sse_server(full_answer(true)).await;
    let request =
        json!({"stream": true, "stream_options": {"include_usage": true}, "messages": []});
    let stream = client()
        .chat_stream(&target(&server.uri(), "k"), request, true)
        .await
        .expect("stream starts");
    let usage = stream.usage();
    let events = events(&read_all(stream).await);
    assert_eq!(events.len(), 5);
    assert_eq!(events[3]["choices"], json!([]));
    assert_eq!(events[3]["model"], PUBLIC_MODEL);
    assert_eq!(
        events[3]["usage"]["prompt_tokens_details"]["cached_tokens"],
        5
    );
    assert_eq!(usage.usage().map(|u| u.completion_tokens), Some(4));
}

#[tokio::test]
async fn a_stream_without_usage_reports_none_and_the_generated_text() {
    let server = sse_server(full_answer(false)).await;
    let stream = client()
        .chat_stream(&target(&server.uri(), "k"), json!({"messages": []}), false)
        .await
        .expect("stream starts");
    let usage = stream.usage();
    read_all(stream).await;
    assert_eq!(usage.usage(), None);
    assert_eq!(usage.generated_text(), "Hello, world");
    assert_eq!(usage.completion_chars(), 12);
    assert_eq!(usage.content_deltas(), 3);
}

#[tokio::test]
async fn events_split_at_odd_byte_boundaries_are_reassembled() {
    let sse = full_answer(true);
    let bytes = sse.as_bytes();
    // Cut points that fall inside `data:`, inside the JSON, inside a multi-byte boundary "\n\n", and
    // several events in one piece.
    let cuts = [
        3,
        4,
        7,
        41,
        42,
        43,
        bytes.len() / 2,
        bytes.len() - 8,
        bytes.len() - 1,
    ];
    let mut steps = Vec::new();
    let mut from = 0;
    for cut in cuts {
        steps.push(Step::Send(bytes[from..cut].to_vec()));
        steps.push(Step::Sleep(millis(15)));
        from = cut;
    }
    steps.push(Step::Send(bytes[from..].to_vec()));
    let (uri, request) = slow_server::start(steps).await;

    let stream = client()
        .chat_stream(&target(&uri, "k"), json!({"messages": []}), true)
        .await
        .expect("stream starts");
    let usage = stream.usage();
    let out = read_all(stream).await;

    let expected = events(&full_answer(true))
        .into_iter()
        .map(|mut event| {
            if let Some(model) = event.get_mut("model") {
                *model = json!(PUBLIC_MODEL);
            }
            event
        })
        .collect::<Vec<_>>();
    assert_eq!(events(&out), expected);
    assert_eq!(usage.usage().map(|u| u.prompt_tokens), Some(9));
    let request = request.await.expect("request seen");
    assert_eq!(request["stream"], true);
    assert_eq!(request["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn the_first_event_reaches_the_consumer_before_the_upstream_finished() {
    let (release_tx, release_rx) = oneshot::channel();
    let steps = vec![
        send(&content_chunk("first")),
        Step::WaitFor(release_rx),
        send(&content_chunk("second")),
        send(&usage_chunk()),
        send(DONE),
    ];
    let (uri, _) = slow_server::start(steps).await;
    let mut stream = client()
        .chat_stream(&target(&uri, "k"), json!({"messages": []}), false)
        .await
        .expect("stream starts");
    let usage = stream.usage();

    // The upstream holds the rest back until released: only a pass-through stream can yield now.
    let first = tokio::time::timeout(millis(1_500), stream.next())
        .await
        .expect("the first event arrives while the upstream is still generating")
        .expect("an item")
        .expect("not an error");
    let first = String::from_utf8(first.to_vec()).expect("utf-8");
    assert_eq!(events(&first)[0]["choices"][0]["delta"]["content"], "first");
    assert!(!usage.completed());
    assert_eq!(usage.generated_text(), "first");

    release_tx.send(()).expect("server waiting");
    let rest = read_all(stream).await;
    assert_eq!(events(&rest).len(), 2, "second chunk and [DONE]: {rest}");
    assert_eq!(usage.usage().map(|u| u.completion_tokens), Some(4));
    assert_eq!(usage.generated_text(), "firstsecond");
}

#[tokio::test]
async fn a_dropped_stream_leaves_the_text_generated_so_far() {
    let (uri, _) = slow_server::start(vec![send(&content_chunk("partial")), Step::Stall]).await;
    let mut stream = client()
        .chat_stream(&target(&uri, "k"), json!({"messages": []}), false)
        .await
        .expect("stream starts");
    let usage = stream.usage();
    stream.next().await.expect("an item").expect("not an error");
    drop(stream); // the client disconnected
    assert_eq!(usage.usage(), None);
    assert_eq!(usage.generated_text(), "partial");
    assert!(!usage.completed());
}

#[tokio::test]
async fn the_first_byte_timeout_is_honoured() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(full_answer(true), "text/event-stream")
                .set_delay(millis(5_000)),
        )
        .mount(&server)
        .await;
    let settings = UpstreamSettings {
        first_byte_timeout_ms: 300,
        total_timeout_ms: 60_000,
        ..settings()
    };
    let started = Instant::now();
    let error = client_with(&settings)
        .chat_stream(&target(&server.uri(), "k"), json!({"messages": []}), false)
        .await
        .expect_err("no headers in time");
    assert!(matches!(error, UpstreamError::Timeout), "{error:?}");
    assert!(
        started.elapsed() < millis(2_000),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stream_that_goes_idle_ends_with_a_timeout() {
    let (uri, _) = slow_server::start(vec![send(&content_chunk("a")), Step::Stall]).await;
    let settings = UpstreamSettings {
        first_byte_timeout_ms: 300,
        ..settings()
    };
    let mut stream = client_with(&settings)
        .chat_stream(&target(&uri, "k"), json!({"messages": []}), false)
        .await
        .expect("stream starts");
    assert!(matches!(stream.next().await, Some(Ok(_))));
    let started = Instant::now();
    assert!(matches!(
        stream.next().await,
        Some(Err(UpstreamError::Timeout))
    ));
    assert!(
        started.elapsed() < millis(2_000),
        "took {:?}",
        started.elapsed()
    );
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_streaming_call_rejected_upstream_fails_before_streaming() {
    let server = MockServer::start().await;
    Mock::given(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(429).set_body_string("rate limited"))
        .mount(&server)
        .await;
    let error = client()
        .chat_stream(&target(&server.uri(), "k"), json!({"messages": []}), false)
        .await
        .expect_err("429");
    assert!(matches!(error, UpstreamError::RateLimited), "{error:?}");
}
