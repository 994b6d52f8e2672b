//! `POST /v1/embeddings` end to end: priced per input token from the provider's usage (or the
//! input counted offline), held from the input, and every bad input refused with nothing written.

use gateway_api::core::tokens;
use integration_tests::{BillingWorker, Credential, TestApp, embed_cost, eventually, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

async fn embed(app: &TestApp, key: &str, body: Value) -> integration_tests::Reply {
    app.send(
        Method::POST,
        "/v1/embeddings",
        Credential::Bearer(key),
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_are_billed_per_input_token_by_the_formula() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app.mock_setup("openai").await;
    let key = &setup.access_key;

    // A string: the mock counts 3 words.
    let reply = embed(
        &app,
        key,
        json!({"model": "demo-embed", "input": "one two three"}),
    )
    .await;
    let body = reply.assert_status(200);
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "demo-embed");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    // Strings, as base64 (what the official SDKs ask for): 2 + 1 + 4 words.
    let reply = embed(
        &app,
        key,
        json!({"model": "demo-embed", "input": ["a b", "c", "d e f g"], "encoding_format": "base64"}),
    )
    .await;
    let body = reply.assert_status(200);
    assert_eq!(body["data"].as_array().unwrap().len(), 3);
    assert!(body["data"][2]["embedding"].is_string());
    assert_eq!(body["usage"]["prompt_tokens"], 7);

    // Token arrays: one token per id.
    embed(
        &app,
        key,
        json!({"model": "demo-embed", "input": [[1, 2], [3, 4, 5]]}),
    )
    .await
    .assert_status(200);

    // No usage from the provider: the input is counted offline.
    let unreported = "what the provider did not count [[no-usage]]";
    let reply = embed(
        &app,
        key,
        json!({"model": "demo-embed", "input": unreported}),
    )
    .await;
    assert!(reply.assert_status(200).get("usage").is_none());
    let offline = tokens::count(unreported);

    let mut rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 4).then_some(rows)
    })
    .await;
    // Charges settle in any order.
    let mut expected: Vec<_> = [3, 7, 5, offline]
        .into_iter()
        .map(|tokens| (tokens as i64, 0, embed_cost(tokens)))
        .collect();
    rows.sort();
    expected.sort();
    assert_eq!(rows, expected);
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_embedding_requests_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    let setup = app.mock_setup("openai").await;
    let key = &setup.access_key;
    let refused = [
        (json!({"input": "x"}), 400, "model is required"),
        (json!({"model": "demo-embed"}), 400, "input is required"),
        (
            json!({"model": "demo-embed", "input": ""}),
            400,
            "input must not be an empty string",
        ),
        (
            json!({"model": "demo-embed", "input": []}),
            400,
            "input must not be empty",
        ),
        (
            json!({"model": "demo-embed", "input": ["a", 1.5]}),
            400,
            "input[1]",
        ),
        (
            json!({"model": "demo-embed", "input": {"a": 1}}),
            400,
            "input must be",
        ),
        (
            json!({"model": "demo-embed", "input": "a", "encoding_format": "int8"}),
            400,
            "encoding_format",
        ),
        (
            json!({"model": "demo-embed", "input": "a", "dimensions": 0}),
            400,
            "dimensions",
        ),
        // A chat model is no embedding model, and the other way round.
        (
            json!({"model": setup.model, "input": "a"}),
            404,
            "not an embedding model",
        ),
        (
            json!({"model": "no-such", "input": "a"}),
            404,
            "does not exist",
        ),
    ];
    app.assert_refused("/v1/embeddings", key, &refused).await;
    let chat_on_embedder = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(key),
            Some(json!({"model": "demo-embed", "messages": [{"role": "user", "content": "x"}]})),
        )
        .await;
    assert_eq!(chat_on_embedder.status.as_u16(), 404);
    // Without a key: 401.
    let anonymous = app
        .send(
            Method::POST,
            "/v1/embeddings",
            Credential::None,
            Some(json!({"model": "demo-embed", "input": "a"})),
        )
        .await;
    assert_eq!(anonymous.status.as_u16(), 401);
    // A balance short of the hold: 402 (the input is held for at most its bytes).
    let (user_id, token) = app.new_user().await;
    let poor = app
        .post("/v1/me/access-keys", &token, json!({"name": "poor"}))
        .await;
    let poor = poor.assert_status(201)["key"].as_str().unwrap().to_owned();
    let reply = embed(
        &app,
        &poor,
        json!({"model": "demo-embed", "input": "a b c"}),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 402, "{}", reply.text);

    app.assert_nothing_billed(setup.user_id).await;
    app.assert_nothing_billed(user_id).await;
    assert_eq!(setup.mock.calls(), 0, "nothing reached the provider");
}
