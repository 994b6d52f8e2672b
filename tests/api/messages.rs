//! `POST /v1/messages` end to end, beyond the SDK runs (tests/api/sdk.rs): the key in
//! `x-api-key`, every error in Anthropic's shape with nothing written, and `GET /v1/models`
//! still OpenAI's.

use integration_tests::{Reply, TestApp, spawn_app};
use serde_json::{Value, json};

async fn post_message(app: &TestApp, key: Option<&str>, body: Value) -> Reply {
    let mut request = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    TestApp::read(request.send().await.unwrap()).await
}

/// Asserts Anthropic's error shape with this status and error type.
fn assert_anthropic_error(reply: &Reply, status: u16, kind: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    assert_eq!(reply.json["type"], "error", "{}", reply.text);
    assert_eq!(reply.json["error"]["type"], kind, "{}", reply.text);
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        reply.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_has_anthropics_shape_and_writes_nothing() {
    let app = spawn_app().await;
    let setup = app.mock_setup("openai").await;
    let key = setup.access_key.as_str();
    let text = json!([{"role": "user", "content": "hi"}]);

    let refused = [
        (
            json!({"model": "demo-chat", "messages": text}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "demo-chat", "max_tokens": 100000, "messages": text}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "demo-chat", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "demo-chat", "max_tokens": 5, "messages": text,
                "tools": [{"type": "bash_20250124", "name": "bash"}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "demo-embed", "max_tokens": 5, "messages": text}),
            404,
            "not_found_error",
        ),
        (
            json!({"model": "nope", "max_tokens": 5, "messages": text}),
            404,
            "not_found_error",
        ),
    ];
    for (body, status, kind) in refused {
        let reply = post_message(&app, Some(key), body).await;
        assert_anthropic_error(&reply, status, kind);
    }
    // Not JSON at all, no key, a wrong key.
    let raw = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_anthropic_error(&TestApp::read(raw).await, 400, "invalid_request_error");
    let body = json!({"model": "demo-chat", "max_tokens": 5, "messages": text});
    assert_anthropic_error(
        &post_message(&app, None, body.clone()).await,
        401,
        "authentication_error",
    );
    assert_anthropic_error(
        &post_message(&app, Some("sk-wrong"), body.clone()).await,
        401,
        "authentication_error",
    );
    // A balance short of the hold: Anthropic's billing error.
    let (poor_id, token) = app.new_user().await;
    let poor = app
        .post("/v1/me/access-keys", &token, json!({"name": "poor"}))
        .await;
    let poor = poor.assert_status(201)["key"].as_str().unwrap().to_owned();
    assert_anthropic_error(
        &post_message(&app, Some(&poor), body).await,
        402,
        "billing_error",
    );

    for user in [setup.user_id, poor_id] {
        assert!(app.usage_of(user).await.is_empty());
        assert_eq!(app.open_holds(user).await, 0);
    }
    assert_eq!(setup.mock.calls(), 0, "nothing reached the provider");
    app.assert_books_balance().await;

    // Other routes keep OpenAI's shapes, whichever header carries the key.
    let models = app
        .client
        .get(format!("{}/v1/models", app.address))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let models = TestApp::read(models).await;
    assert_eq!(models.assert_status(200)["object"], "list");
    let chat_error = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .header("x-api-key", key)
        .json(&json!({"model": "nope", "messages": text}))
        .send()
        .await
        .unwrap();
    TestApp::read(chat_error)
        .await
        .assert_error(404, "model_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_provider_gets_the_request_and_answers_as_it_came() {
    let app = spawn_app().await;
    let worker = integration_tests::BillingWorker::start(&app).await;
    let setup = app.mock_setup("anthropic").await;
    let key = setup.access_key.as_str();
    // Fields the chat translation drops (top_k, cache_control, thinking quoted back) reach the
    // provider untouched; 2 system words + 3 + 1 + the directive's 1 word, 2 read from the cache.
    let body = |stream: bool| {
        json!({"model": "demo-chat", "max_tokens": 8, "top_k": 5, "stream": stream,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "one two three"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                    {"type": "text", "text": "ok"}]},
                {"role": "user", "content": "[[cached:2]]"}]})
    };
    let plain = post_message(&app, Some(key), body(false)).await;
    let message = plain.assert_status(200);
    assert_eq!(message["model"], "demo-chat");
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 5, "output_tokens": 8, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 2})
    );

    let streamed = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("x-api-key", key)
        .json(&body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    // The provider's own events: its ping, its prompt count up front, its model renamed.
    assert!(text.contains("event: ping"), "{text}");
    let start: Value = serde_json::from_str(
        text.split("\n\n")
            .find(|e| e.starts_with("event: message_start"))
            .and_then(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(start["message"]["model"], "demo-chat");
    assert_eq!(start["message"]["usage"]["input_tokens"], 5);
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let tail = &events[events.len() - 2..];
    assert!(tail[0].starts_with("event: message_delta"), "{text}");
    assert!(tail[1].starts_with("event: message_stop"), "{text}");

    let rows = integration_tests::eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let pricing = domain::Pricing {
        input_per_million: Some(
            domain::Money::parse(integration_tests::INPUT_PER_MILLION).unwrap(),
        ),
        output_per_million: Some(
            domain::Money::parse(integration_tests::OUTPUT_PER_MILLION).unwrap(),
        ),
        ..domain::Pricing::default()
    };
    let usage = domain::Usage {
        prompt_tokens: 7,
        cached_prompt_tokens: 2,
        completion_tokens: 8,
        ..domain::Usage::default()
    };
    let cost = pricing.cost(&usage).unwrap().into_decimal();
    for row in rows {
        assert_eq!(row, (7, 8, cost.clone()));
    }
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}
