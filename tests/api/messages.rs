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
