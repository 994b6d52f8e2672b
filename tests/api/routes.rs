//! A public model served by several providers: routes with their own upstream model, priority
//! and weight; a call fails over across providers while no byte reached the client, is billed
//! at the public model's price, and admins manage the routes.

use integration_tests::{
    BillingWorker, ChatSetup, Credential, TestApp, chat_cost, eventually, spawn_app,
};
use mock_llm::{MockConfig, MockServer};
use reqwest::Method;
use serde_json::{Value, json};

async fn mock() -> MockServer {
    mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap()
}

/// A provider of `kind` at `mock` with one key; its id.
async fn provider(app: &TestApp, name: &str, kind: &str, mock: &MockServer, key: &str) -> i64 {
    let admin = app.admin_token();
    let created = app
        .post(
            "/v1/admin/providers",
            admin,
            json!({"name": name, "kind": kind, "base_url": mock.base_url()}),
        )
        .await;
    let id = created.assert_status(201)["id"].as_i64().unwrap();
    app.post(
        &format!("/v1/admin/providers/{id}/keys"),
        admin,
        json!({"api_key": key}),
    )
    .await
    .assert_status(201);
    id
}

async fn add_route(app: &TestApp, model_id: i64, body: Value) -> Value {
    let reply = app
        .post(
            &format!("/v1/admin/models/{model_id}/routes"),
            app.admin_token(),
            body,
        )
        .await;
    reply.assert_status(201).clone()
}

async fn chat(app: &TestApp, setup: &ChatSetup, prompt: &str, stream: bool) -> String {
    let reply = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .bearer_auth(&setup.access_key)
        .json(
            &json!({"model": setup.model, "max_tokens": 8, "stream": stream,
            "messages": [{"role": "user", "content": prompt}]}),
        )
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    let text = reply.text().await.unwrap();
    format!("{status} {text}")
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_fail_over_across_providers_by_priority_at_the_public_price() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    // The model's own provider answers 503 with its only key.
    let setup = app.chat_setup(mock().await, &[("fail-503", 1)], "10").await;
    let (second, third) = (mock().await, mock().await);
    // An Anthropic provider at priority 0 beside the model's own, and a fallback at -5.
    let second_id = provider(&app, "second", "anthropic", &second, "good").await;
    let third_id = provider(&app, "third", "openai", &third, "good").await;
    let to_second = add_route(
        &app,
        setup.model_id,
        json!({"provider_id": second_id, "upstream_model": "claude-up"}),
    )
    .await;
    assert_eq!(
        (to_second["priority"].as_i64(), to_second["weight"].as_i64()),
        (Some(0), Some(1))
    );
    add_route(
        &app,
        setup.model_id,
        json!({"provider_id": third_id, "upstream_model": "gpt-up", "priority": -5}),
    )
    .await;

    // Plain and streamed: the failing provider is left for the second, whatever the draw.
    let plain = chat(&app, &setup, "one two three", false).await;
    assert!(plain.starts_with("200 "), "{plain}");
    let answer: Value = serde_json::from_str(&plain[4..]).unwrap();
    assert_eq!(
        answer["model"], setup.model,
        "the public name, whoever served"
    );
    let streamed = chat(&app, &setup, "four five", true).await;
    assert!(
        streamed.starts_with("200 ") && streamed.ends_with("data: [DONE]\n\n"),
        "{streamed}"
    );
    assert_eq!(second.calls(), 2);
    assert_eq!(
        third.calls(),
        0,
        "a lower priority waits for the higher ones"
    );

    // Without the second provider's route, the fallback serves.
    let path = format!("/v1/admin/model-routes/{}", to_second["id"]);
    app.patch(&path, app.admin_token(), json!({"enabled": false}))
        .await
        .assert_status(200);
    let fallback = chat(&app, &setup, "six", false).await;
    assert!(fallback.starts_with("200 "), "{fallback}");
    assert_eq!((second.calls(), third.calls()), (2, 1));

    // A request the provider refuses is answered at once, not tried elsewhere.
    app.patch(
        &path,
        app.admin_token(),
        json!({"enabled": true, "priority": 10}),
    )
    .await
    .assert_status(200);
    let refused = chat(&app, &setup, "bad [[status:400]]", false).await;
    assert!(refused.starts_with("400 "), "{refused}");
    assert_eq!((second.calls(), third.calls()), (3, 1));

    // Billed at the public model's price, whoever served: 3 + 8, 2 + 8, 1 + 8; the 400 not.
    let mut rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() >= 3).then_some(rows)
    })
    .await;
    rows.sort();
    let expected: Vec<_> = [(1, 8), (2, 8), (3, 8)]
        .into_iter()
        .map(|(p, c)| (p as i64, c as i64, chat_cost(p, c)))
        .collect();
    assert_eq!(rows, expected);
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_manage_routes_and_bad_ones_are_refused() {
    let app = spawn_app().await;
    let setup = app.chat_setup(mock().await, &[("good-key", 1)], "10").await;
    let other = mock().await;
    let anthropic = provider(&app, "claude", "anthropic", &other, "good").await;
    let openai = provider(&app, "other", "openai", &other, "good").await;
    let admin = app.admin_token().to_owned();
    let image_id = app.get("/v1/admin/models", &admin).await.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "demo-image")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let routes_of = |model_id: i64| format!("/v1/admin/models/{model_id}/routes");

    for (model_id, body, status) in [
        (
            setup.model_id,
            json!({"provider_id": 999_999, "upstream_model": "x"}),
            404,
        ),
        (
            999_999,
            json!({"provider_id": openai, "upstream_model": "x"}),
            404,
        ),
        // An Anthropic provider serves no image model.
        (
            image_id,
            json!({"provider_id": anthropic, "upstream_model": "x"}),
            400,
        ),
        (
            setup.model_id,
            json!({"provider_id": openai, "upstream_model": " "}),
            400,
        ),
        (
            setup.model_id,
            json!({"provider_id": openai, "upstream_model": "x", "weight": 1001}),
            400,
        ),
        (
            setup.model_id,
            json!({"provider_id": openai, "upstream_model": "x", "priority": 1001}),
            400,
        ),
        (
            setup.model_id,
            json!({"provider_id": openai, "upstream_model": "x", "extra": 1}),
            400,
        ),
    ] {
        let reply = app.post(&routes_of(model_id), &admin, body.clone()).await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {}", reply.text);
    }
    let created = app
        .post(
            &routes_of(setup.model_id),
            &admin,
            json!({"provider_id": openai, "upstream_model": "gpt-x", "priority": 3, "weight": 7}),
        )
        .await;
    let created = created.assert_status(201).clone();
    app.post(
        &routes_of(setup.model_id),
        &admin,
        json!({"provider_id": openai, "upstream_model": "gpt-x"}),
    )
    .await
    .assert_error(409, "conflict");
    let list = app.get(&routes_of(setup.model_id), &admin).await;
    assert_eq!(list.assert_status(200)["total"], 1);
    assert_eq!(list.json["data"][0]["upstream_model"], "gpt-x");

    let path = format!("/v1/admin/model-routes/{}", created["id"]);
    app.patch(&path, &admin, json!({"weight": -1}))
        .await
        .assert_error(400, "invalid_request");
    let changed = app.patch(&path, &admin, json!({"weight": 2})).await;
    assert_eq!(changed.assert_status(200)["weight"], 2);
    // A user is no admin.
    let user = app
        .send(
            Method::GET,
            &routes_of(setup.model_id),
            Credential::Bearer(&setup.token),
            None,
        )
        .await;
    assert_eq!(user.status.as_u16(), 403);
    // A provider still routed to cannot be deleted.
    app.send(
        Method::DELETE,
        &format!("/v1/admin/providers/{openai}"),
        Credential::Bearer(&admin),
        None,
    )
    .await
    .assert_error(409, "conflict");
    let deleted = app
        .send(Method::DELETE, &path, Credential::Bearer(&admin), None)
        .await;
    assert_eq!(deleted.status.as_u16(), 204);
    let again = app
        .send(Method::DELETE, &path, Credential::Bearer(&admin), None)
        .await;
    again.assert_error(404, "not_found");
}
