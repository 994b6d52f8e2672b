//! Richer pricing end to end: cache read and write prices, long-context tiers and a fee per
//! request, validated when a model is saved and billed exactly by the formula (API.md).

use std::str::FromStr;

use bigdecimal::BigDecimal;
use integration_tests::{BillingWorker, TestApp, eventually, spawn_app};
use serde_json::{Value, json};

fn pricing() -> Value {
    json!({
        "input_per_million": "3", "output_per_million": "15",
        "cached_input_per_million": "0.3", "cache_write_per_million": "3.75",
        "per_request": "0.001",
        "long_context": [{"above_prompt_tokens": 6, "input_per_million": "6",
            "output_per_million": "22.5", "cached_input_per_million": "0.6",
            "cache_write_per_million": "7.5"}]
    })
}

async fn message(app: &TestApp, key: &str, prompt: &str) -> Value {
    let reply = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("x-api-key", key)
        .json(&json!({"model": "claude-tiered", "max_tokens": 64,
            "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    TestApp::read(reply).await.assert_status(200).clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_prices_tiers_and_the_request_fee_are_billed_exactly() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app.mock_setup("anthropic").await;
    app.post(
        "/v1/admin/models",
        app.admin_token(),
        json!({"name": "claude-tiered", "provider_id": setup.provider_id,
            "upstream_model": "claude-up", "kind": "chat", "pricing": pricing(),
            "max_output_tokens": 64}),
    )
    .await
    .assert_status(201);

    // 5 words (the directives are words too), under the tier: 1 read from the cache, 1
    // written to it, 16 generated.
    let below = message(
        &app,
        &setup.access_key,
        "one two three [[cached:1]] [[written:1]]",
    )
    .await;
    assert_eq!(
        below["usage"],
        json!({"input_tokens": 3, "cache_read_input_tokens": 1,
            "cache_creation_input_tokens": 1, "output_tokens": 16})
    );
    // 8 words, past the tier: 2 read, 3 written.
    let above = message(
        &app,
        &setup.access_key,
        "a b c d e f [[cached:2]] [[written:3]]",
    )
    .await;
    assert_eq!(above["usage"]["input_tokens"], 3);
    assert_eq!(above["usage"]["cache_creation_input_tokens"], 3);

    let mut rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    rows.sort(); // charges settle in any order; the tiered call has the longer prompt
    let dec = |text: &str| BigDecimal::from_str(text).unwrap();
    // 3 × 3/M + 1 × 0.3/M + 1 × 3.75/M + 16 × 15/M + 0.001
    assert_eq!(rows[0], (5, 16, dec("0.00125305")));
    // All at the tier: 3 × 6/M + 2 × 0.6/M + 3 × 7.5/M + 16 × 22.5/M + 0.001
    assert_eq!(rows[1], (8, 16, dec("0.0014017")));
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pricing_is_refused_when_the_model_is_saved() {
    let app = spawn_app().await;
    let admin = app.admin_token().to_owned();
    let provider = app
        .post(
            "/v1/admin/providers",
            &admin,
            json!({"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    let provider_id = provider.assert_status(201)["id"].as_i64().unwrap();
    let model = |pricing: Value| {
        json!({"name": "m", "provider_id": provider_id, "upstream_model": "u", "kind": "chat",
            "pricing": pricing, "max_output_tokens": 16})
    };
    let mut cheaper_tier = pricing();
    cheaper_tier["long_context"][0]["output_per_million"] = json!("10");
    let mut unordered = pricing();
    unordered["long_context"] = json!([
        {"above_prompt_tokens": 100, "input_per_million": "6"},
        {"above_prompt_tokens": 50, "input_per_million": "7"}]);
    let mut negative_write = pricing();
    negative_write["cache_write_per_million"] = json!("-1");
    let mut unknown = pricing();
    unknown["long_context"][0]["above"] = json!(5);
    for (pricing, named) in [
        (
            cheaper_tier,
            "pricing.long_context[0]: output_per_million must not be below",
        ),
        (
            unordered,
            "pricing.long_context[1]: above_prompt_tokens must be above 100",
        ),
        (
            negative_write,
            "pricing.cache_write_per_million must not be negative",
        ),
        (unknown, "above"),
    ] {
        let reply = app.post("/v1/admin/models", &admin, model(pricing)).await;
        reply.assert_error(400, "invalid_request");
        assert!(reply.text.contains(named), "{}", reply.text);
    }
    assert_eq!(app.get("/v1/admin/models", &admin).await.json["total"], 0);

    // Saved whole, returned as sent; a bad change is refused and changes nothing.
    let created = app.post("/v1/admin/models", &admin, model(pricing())).await;
    let created = created.assert_status(201).clone();
    assert_eq!(
        created["pricing"]["long_context"][0]["above_prompt_tokens"],
        6
    );
    assert_eq!(created["pricing"]["cache_write_per_million"], "3.75");
    let path = format!("/v1/admin/models/{}", created["id"]);
    let mut lowered = pricing();
    lowered["long_context"][0]["input_per_million"] = json!("1");
    app.patch(&path, &admin, json!({"pricing": lowered}))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(
        app.get(&path, &admin).await.json["pricing"],
        created["pricing"]
    );
}
