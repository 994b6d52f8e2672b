//! A provider of kind `anthropic` end to end: clients call it with OpenAI's API, the gateway
//! speaks Anthropic's Messages API to it (the mock LLM's `/v1/messages`), and the call is billed
//! from Anthropic's usage, cached prompt tokens included.

use std::str::FromStr;

use bigdecimal::BigDecimal;
use domain::{Money, Pricing, Usage};
use integration_tests::{BillingWorker, ChatSetup, Credential, TestApp, eventually, spawn_app};
use mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

const MODEL: &str = "claude-demo";

fn pricing() -> Pricing {
    Pricing {
        input_per_million: Some(Money::parse("3").unwrap()),
        output_per_million: Some(Money::parse("15").unwrap()),
        cached_input_per_million: Some(Money::parse("0.3").unwrap()),
        per_image: None,
        per_request: None,
        ..Pricing::default()
    }
}

/// The mock as an Anthropic provider with `keys` and a user with 10 (the shared chat set-up),
/// plus a model priced with a cached-input price.
async fn setup(app: &TestApp, config: MockConfig, keys: &[(&str, i32)]) -> ChatSetup {
    let mock = mock_llm::start(config, "127.0.0.1", 0).await.unwrap();
    let setup = app.chat_setup_of_kind("anthropic", mock, keys, "10").await;
    app.post(
        "/v1/admin/models",
        app.admin_token(),
        json!({
            "name": MODEL, "provider_id": setup.provider_id, "upstream_model": "claude-up",
            "kind": "chat", "pricing": pricing(), "max_output_tokens": 64
        }),
    )
    .await
    .assert_status(201);
    setup
}

async fn call(app: &TestApp, setup: &ChatSetup, body: Value) -> integration_tests::Reply {
    app.send(
        Method::POST,
        "/v1/chat/completions",
        Credential::Bearer(&setup.access_key),
        Some(body),
    )
    .await
}

fn cost(prompt: u64, completion: u64, cached: u64) -> BigDecimal {
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_prompt_tokens: cached,
        ..Usage::default()
    };
    pricing().cost(&usage).unwrap().into_decimal()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_call_to_an_anthropic_model_is_translated_and_billed_with_cached_tokens() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = setup(&app, MockConfig::default(), &[("ant-key", 1)]).await;

    let reply = call(
        &app,
        &setup,
        json!({
            "model": MODEL, "max_tokens": 8,
            "messages": [
                {"role": "system", "content": "You are terse [[cached:3]]"},
                {"role": "user", "content": "one two three four"}
            ]
        }),
    )
    .await;
    let body = reply.assert_status(200);
    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["id"].as_str().unwrap().starts_with("msg_"),
        "answered through the Messages API: {body}"
    );
    assert_eq!(body["model"], MODEL, "the public name, not claude-up");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 8);
    let usage = &body["usage"];
    // The mock counts the system prompt's words too, and reports 3 of them read from cache.
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(prompt, 8);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 3);
    assert_eq!(usage["completion_tokens"], 8);
    assert_eq!(setup.mock.calls_with_key("ant-key"), 1);

    let rows = eventually(10, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    // 5 uncached x 3 + 3 cached x 0.3 + 8 completion x 15, per million.
    let expected = cost(8, 8, 3);
    assert_eq!(expected, BigDecimal::from_str("0.0001359").unwrap());
    assert_eq!(rows[0], (8, 8, expected.clone()));
    let (balance, ledger) = app.balance_and_ledger_sum(setup.user_id).await;
    assert_eq!(balance, BigDecimal::from(10) - expected);
    assert_eq!(balance, ledger);
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_from_an_anthropic_model_arrives_as_openai_chunks_and_is_billed() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = setup(&app, MockConfig::default(), &[("ant-key", 1)]).await;
    let request = |include_usage: bool| {
        json!({
            "model": MODEL, "max_tokens": 5, "stream": true,
            "stream_options": {"include_usage": include_usage},
            "messages": [{"role": "user", "content": "alpha beta gamma"}]
        })
    };
    for include_usage in [false, true] {
        let reply = call(&app, &setup, request(include_usage)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert!(!reply.text.contains("claude-up"), "upstream name leaked");
        assert!(
            !reply.text.contains("message_start"),
            "Anthropic events leaked"
        );
        let chunks: Vec<Value> = reply
            .text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(reply.text.ends_with("data: [DONE]\n\n"));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text.split_whitespace().count(), 5);
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
        let usage: Vec<&Value> = chunks.iter().filter_map(|c| c.get("usage")).collect();
        if include_usage {
            assert_eq!(usage.len(), 1, "{}", reply.text);
            assert_eq!(usage[0]["prompt_tokens"], 3);
            assert_eq!(usage[0]["completion_tokens"], 5);
        } else {
            assert!(usage.is_empty(), "usage chunk not hidden: {}", reply.text);
        }
    }
    let rows = eventually(10, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    for row in rows {
        assert_eq!(row, (3, 5, cost(3, 5, 0)));
    }
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_round_trip_and_an_overloaded_key_fails_over() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    // The overloaded key (529) is picked first almost always; the good one answers.
    let setup = setup(
        &app,
        MockConfig::default(),
        &[("fail-529", 1000), ("ant-key", 1)],
    )
    .await;
    let tools = json!([{"type": "function", "function": {
        "name": "weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
    }}]);
    let reply = call(
        &app,
        &setup,
        json!({
            "model": MODEL, "max_tokens": 32, "tools": tools, "tool_choice": "required",
            "messages": [{"role": "user", "content": "Weather in Paris?"}]
        }),
    )
    .await;
    let body = reply.assert_status(200).clone();
    assert!(
        setup.mock.calls_with_key("fail-529") >= 1,
        "failover was not exercised"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let tool_call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(tool_call["type"], "function");
    assert_eq!(tool_call["function"]["name"], "weather");
    let arguments: Value =
        serde_json::from_str(tool_call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"mock": true}));

    // The conversation continues with the tool's result; the mock refuses a tool_result whose
    // tool_use it has not seen, so this proves both are translated and paired.
    let follow_up = call(
        &app,
        &setup,
        json!({
            "model": MODEL, "max_tokens": 4, "tools": tools,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [tool_call]},
                {"role": "tool", "tool_call_id": tool_call["id"], "content": "sunny"}
            ]
        }),
    )
    .await;
    let follow_up = follow_up.assert_status(200);
    assert_eq!(follow_up["choices"][0]["finish_reason"], "length");
    eventually(10, || async {
        (app.usage_of(setup.user_id).await.len() == 2).then_some(())
    })
    .await;
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_anthropic_cannot_do_is_refused_before_any_hold_or_call() {
    let app = spawn_app().await;
    let setup = setup(&app, MockConfig::default(), &[("ant-key", 1)]).await;
    let admin = app.admin_token().to_owned();

    // No image models on an Anthropic provider.
    let before = app.snapshot().await;
    let image = app
        .post(
            "/v1/admin/models",
            &admin,
            json!({
                "name": "claude-image", "provider_id": setup.provider_id, "upstream_model": "x",
                "kind": "image", "pricing": {"per_image": "0.04"}
            }),
        )
        .await;
    image.assert_error(400, "invalid_request");
    assert!(image.text.contains("anthropic"), "{}", image.text);
    assert_eq!(app.snapshot().await, before);
    // Nor moved there from a provider that generates images.
    let openai = app
        .post(
            "/v1/admin/providers",
            &admin,
            json!({"name": "images", "kind": "openai", "base_url": setup.mock.base_url()}),
        )
        .await;
    let openai_id = openai.assert_status(201)["id"].as_i64().unwrap();
    let model = app
        .post(
            "/v1/admin/models",
            &admin,
            json!({
                "name": "some-image", "provider_id": openai_id, "upstream_model": "x",
                "kind": "image", "pricing": {"per_image": "0.04"}
            }),
        )
        .await;
    let model_id = model.assert_status(201)["id"].as_i64().unwrap();
    let before = app.snapshot().await;
    app.patch(
        &format!("/v1/admin/models/{model_id}"),
        &admin,
        json!({"provider_id": setup.provider_id}),
    )
    .await
    .assert_error(400, "invalid_request");
    let unchanged = app
        .get(&format!("/v1/admin/models/{model_id}"), &admin)
        .await;
    assert_eq!(unchanged.assert_status(200)["provider_id"], openai_id);
    // Nor an unknown provider kind.
    app.post(
        "/v1/admin/providers",
        &admin,
        json!({"name": "x", "kind": "gemini", "base_url": "http://127.0.0.1:9"}),
    )
    .await
    .assert_error(400, "invalid_request");
    assert_eq!(app.snapshot().await, before);

    let holds_before = app.count("balance_holds").await;
    for (field, value) in [
        ("n", json!(2)),
        ("response_format", json!({"type": "json_object"})),
    ] {
        let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
        body[field] = value;
        let reply = call(&app, &setup, body).await;
        reply.assert_error(400, "invalid_request");
    }
    assert_eq!(app.count("balance_holds").await, holds_before);
    assert_eq!(setup.mock.calls(), 0);
    let (balance, _) = app.balance_and_ledger_sum(setup.user_id).await;
    assert_eq!(balance, BigDecimal::from(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_an_anthropic_stream_pays_the_providers_prompt_count() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let slow = MockConfig {
        stream_chunk_delay_ms: 100,
        completion_tokens: 50,
        ..MockConfig::default()
    };
    let setup = setup(&app, slow, &[("ant-key", 1)]).await;
    let body = json!({
        "model": MODEL, "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "tell me a long story please"}]
    });
    app.stream_then_leave(&setup.access_key, &body, 5).await;

    let rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    let (prompt, completion, billed) = rows[0].clone();
    // The prompt count Anthropic reported (the mock's 6 words); the offline estimate adds
    // framing tokens (6 more) and would not match.
    assert_eq!(prompt, 6);
    // The provider's stream is read to its end after the client left, and its usage billed.
    assert_eq!(completion, 50, "the whole generation is billed");
    assert_eq!(billed, cost(6, completion as u64, 0));
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}
