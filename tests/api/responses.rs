//! `POST /v1/responses` end to end, beyond the SDK runs (tests/api/sdk.rs): function calls
//! translated both ways through a provider that calls tools (the mock's Anthropic API), billed
//! exactly, and every request that cannot be translated refused with nothing written.

use integration_tests::{BillingWorker, Credential, TestApp, chat_cost, eventually, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

async fn respond(app: &TestApp, key: &str, body: Value) -> integration_tests::Reply {
    app.send(
        Method::POST,
        "/v1/responses",
        Credential::Bearer(key),
        Some(body),
    )
    .await
}

fn tool_request(stream: bool) -> Value {
    json!({
        "model": "demo-chat",
        "input": [
            {"role": "user", "content": "weather in paris"},
            {"type": "function_call", "call_id": "toolu_1", "name": "weather", "arguments": "{\"city\":\"rome\"}"},
            {"type": "function_call_output", "call_id": "toolu_1", "output": "sunny"}
        ],
        "tools": [{"type": "function", "name": "weather", "description": "the weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": "required",
        "stream": stream
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn function_calls_are_translated_both_ways_and_billed() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app.mock_setup("anthropic").await;
    let key = &setup.access_key;

    let reply = respond(&app, key, tool_request(false)).await;
    let response = reply.assert_status(200);
    assert_eq!(response["status"], "completed", "{response}");
    let call = &response["output"][0];
    assert_eq!(call["type"], "function_call", "{response}");
    assert_eq!(call["name"], "weather");
    let arguments = |item: &Value| -> Value {
        serde_json::from_str(item["arguments"].as_str().unwrap()).unwrap()
    };
    assert_eq!(arguments(call), json!({"mock": true}));
    assert!(call["call_id"].as_str().unwrap().starts_with("toolu_"));
    // The mock counts the prompt's words (the tool result's included): 3 + 1.
    assert_eq!(response["usage"]["input_tokens"], 4);
    assert_eq!(response["usage"]["output_tokens"], 10);

    let streamed = app
        .client
        .post(format!("{}/v1/responses", app.address))
        .bearer_auth(key)
        .json(&tool_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let text = streamed.text().await.unwrap();
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            serde_json::from_str(data).unwrap()
        })
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"response.created"), "{types:?}");
    assert!(
        types.contains(&"response.function_call_arguments.delta"),
        "{types:?}"
    );
    assert_eq!(types.last(), Some(&"response.completed"), "{types:?}");
    let done = &events.last().unwrap()["response"];
    assert_eq!(arguments(&done["output"][0]), json!({"mock": true}));
    assert_eq!(done["usage"]["output_tokens"], 10);

    let rows = eventually(15, || async {
        let rows = app.usage_of(setup.user_id).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    for row in rows {
        assert_eq!(row, (4, 10, chat_cost(4, 10)));
    }
    assert_eq!(app.open_holds(setup.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_translated_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    let setup = app.mock_setup("openai").await;
    let key = &setup.access_key;
    let refused = [
        (
            json!({"model": "demo-chat", "input": "x", "previous_response_id": "resp_1"}),
            400,
            "previous_response_id",
        ),
        (
            json!({"model": "demo-chat", "input": "x", "tools": [{"type": "web_search_preview"}]}),
            400,
            "tools[0].type",
        ),
        (
            json!({"model": "demo-chat", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            400,
            "input[0].type",
        ),
        (
            json!({"model": "demo-chat", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]}]}),
            400,
            "input[0].content[0].type",
        ),
        (json!({"model": "demo-chat"}), 400, "input is required"),
        (
            json!({"model": "demo-chat", "input": "x", "max_output_tokens": 100000}),
            400,
            "at most 256",
        ),
        (
            json!({"model": "demo-chat", "input": "x", "stream": "yes"}),
            400,
            "stream must be a boolean",
        ),
        (
            json!({"model": "demo-embed", "input": "x"}),
            404,
            "not a chat model",
        ),
        (
            json!({"model": "nope", "input": "x"}),
            404,
            "does not exist",
        ),
    ];
    app.assert_refused("/v1/responses", key, &refused).await;
    app.assert_nothing_billed(setup.user_id).await;
    assert_eq!(setup.mock.calls(), 0, "nothing reached the provider");
}
