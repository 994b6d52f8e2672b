//! The data behind the console's screens: usage filters, spend per day and model, the admin
//! overview over time, provider key tests and failing an order.

use std::str::FromStr;

use bigdecimal::BigDecimal;
use diesel_async::RunQueryDsl;
use integration_tests::{BillingWorker, Credential, TestApp, eventually, ids, spawn_app};
use reqwest::Method;
use serde_json::json;

fn dec(s: &str) -> BigDecimal {
    BigDecimal::from_str(s).unwrap()
}

/// A usage row as billing-worker writes it, at a chosen time; `priced` above `held` makes it
/// an overrun.
#[allow(clippy::too_many_arguments)]
async fn insert_usage(
    app: &TestApp,
    user: i64,
    key: Option<i64>,
    model: &str,
    cost: &str,
    priced: &str,
    held: &str,
    at: &str,
) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let mut conn = app.pool.get().await.unwrap();
    let key = key.map_or("NULL".to_owned(), |k| k.to_string());
    let row: Id = diesel::sql_query(format!(
        "INSERT INTO usage_logs (request_id, user_id, access_key_id, model_name, prompt_tokens, \
         completion_tokens, cost, priced_cost, held_amount, created_at) \
         VALUES (gen_random_uuid(), {user}, {key}, '{model}', 10, 20, {cost}, {priced}, {held}, \
         '{at}') RETURNING id"
    ))
    .get_result(&mut conn)
    .await
    .unwrap();
    row.id
}

async fn key_id(app: &TestApp, token: &str, name: &str) -> i64 {
    let created = app
        .post("/v1/me/access-keys", token, json!({"name": name}))
        .await;
    created.assert_status(201)["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_filtered_by_key_model_time_and_status_and_bad_filters_are_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().to_owned();
    let (alice, alice_token) = app.new_user().await;
    let (bob, bob_token) = app.new_user().await;
    let (k1, k2) = (
        key_id(&app, &alice_token, "one").await,
        key_id(&app, &alice_token, "two").await,
    );
    let bob_key = key_id(&app, &bob_token, "bob").await;
    let a = insert_usage(
        &app,
        alice,
        Some(k1),
        "m-x",
        "0.1",
        "0.1",
        "0.2",
        "2026-11-01T10:00:00Z",
    )
    .await;
    let b = insert_usage(
        &app,
        alice,
        Some(k2),
        "m-x",
        "0.3",
        "0.5",
        "0.3",
        "2026-11-02T10:00:00Z",
    )
    .await;
    let c = insert_usage(
        &app,
        alice,
        Some(k1),
        "m-y",
        "0.2",
        "0.2",
        "0.2",
        "2026-11-03T00:00:00Z",
    )
    .await;
    let d = insert_usage(
        &app,
        bob,
        Some(bob_key),
        "m-x",
        "0.4",
        "0.9",
        "0.1",
        "2026-11-02T12:00:00Z",
    )
    .await;

    let get = |query: &str| {
        let (app, token) = (&app, alice_token.clone());
        let path = format!("/v1/me/usage{query}");
        async move { app.get(&path, &token).await }
    };
    let all = get("").await;
    assert_eq!(ids(all.assert_status(200)), vec![c, b, a]);
    assert_eq!(all.json["data"][1]["access_key_id"], k2);
    assert_eq!(all.json["data"][1]["status"], "overrun");
    assert_eq!(all.json["data"][0]["status"], "charged");
    for (query, expected) in [
        (format!("?access_key_id={k1}"), vec![c, a]),
        ("?model=m-x".to_owned(), vec![b, a]),
        ("?status=overrun".to_owned(), vec![b]),
        ("?status=charged".to_owned(), vec![c, a]),
        // from inclusive, to exclusive.
        (
            "?from=2026-11-02T10:00:00Z&to=2026-11-03T00:00:00Z".to_owned(),
            vec![b],
        ),
        (
            format!("?access_key_id={k1}&model=m-y&status=charged"),
            vec![c],
        ),
        ("?model=m-x&limit=1&offset=1".to_owned(), vec![a]),
    ] {
        let reply = get(&query).await;
        assert_eq!(ids(reply.assert_status(200)), expected, "{query}");
        if query.contains("limit=1") {
            assert_eq!(
                reply.json["total"], 2,
                "the total counts every filtered row"
            );
        }
    }
    // Another user's key is refused, as is every bad value.
    for query in [
        format!("?access_key_id={bob_key}"),
        "?access_key_id=987654".to_owned(),
        "?from=yesterday".to_owned(),
        "?from=2026-11-03T00:00:00Z&to=2026-11-03T00:00:00Z".to_owned(),
        "?from=2026-11-04T00:00:00Z&to=2026-11-03T00:00:00Z".to_owned(),
        "?status=refunded".to_owned(),
        "?user_id=1".to_owned(),
    ] {
        get(&query).await.assert_error(400, "invalid_request");
    }

    // The admin's list filters the same way, and by user.
    let admin_get = |query: &str| {
        let (app, admin) = (&app, admin.clone());
        let path = format!("/v1/admin/usage-logs{query}");
        async move { app.get(&path, &admin).await }
    };
    for (query, expected) in [
        ("?model=m-x".to_owned(), vec![d, b, a]),
        (format!("?user_id={bob}"), vec![d]),
        (format!("?access_key_id={bob_key}"), vec![d]),
        ("?status=overrun".to_owned(), vec![d, b]),
        (format!("?user_id={alice}&status=overrun"), vec![b]),
        (
            "?from=2026-11-02T00:00:00Z&to=2026-11-02T23:59:59Z".to_owned(),
            vec![d, b],
        ),
    ] {
        assert_eq!(
            ids(admin_get(&query).await.assert_status(200)),
            expected,
            "{query}"
        );
    }
    admin_get("?to=not-a-time")
        .await
        .assert_error(400, "invalid_request");
    admin_get("?status=OVERRUN")
        .await
        .assert_error(400, "invalid_request");
    app.get("/v1/admin/usage-logs?model=m-x", &alice_token)
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn spend_per_day_and_model_is_the_sum_of_the_usage_rows() {
    let app = spawn_app().await;
    let (alice, token) = app.new_user().await;
    let (bob, _) = app.new_user().await;
    for (user, model, cost, at) in [
        (alice, "m-x", "0.10000001", "2026-11-01T00:00:00Z"),
        (alice, "m-x", "0.2", "2026-11-01T23:59:59Z"),
        (alice, "m-y", "1.5", "2026-11-01T12:00:00Z"),
        (alice, "m-y", "0.25", "2026-11-03T08:00:00Z"),
        // Outside the range, and another user's: not counted.
        (alice, "m-x", "9", "2026-10-31T23:59:59Z"),
        (alice, "m-x", "9", "2026-11-04T00:00:00Z"),
        (bob, "m-x", "7", "2026-11-02T10:00:00Z"),
    ] {
        insert_usage(&app, user, None, model, cost, cost, cost, at).await;
    }
    let reply = app
        .get("/v1/me/spend?from=2026-11-01&to=2026-11-03", &token)
        .await;
    let spend = reply.assert_status(200);
    assert_eq!(spend["from"], "2026-11-01");
    assert_eq!(spend["to"], "2026-11-03");
    assert_eq!(spend["total"], json!({"spend": "2.05000001", "calls": 4}));
    assert_eq!(
        spend["days"],
        json!([
            {"day": "2026-11-01", "spend": "1.80000001", "calls": 3},
            {"day": "2026-11-02", "spend": "0", "calls": 0},
            {"day": "2026-11-03", "spend": "0.25", "calls": 1},
        ])
    );
    assert_eq!(
        spend["models"],
        json!([
            {"model": "m-y", "spend": "1.75", "calls": 2},
            {"model": "m-x", "spend": "0.30000001", "calls": 2},
        ])
    );
    assert_eq!(
        spend["series"],
        json!([
            {"day": "2026-11-01", "model": "m-x", "spend": "0.30000001", "calls": 2},
            {"day": "2026-11-01", "model": "m-y", "spend": "1.5", "calls": 1},
            {"day": "2026-11-03", "model": "m-y", "spend": "0.25", "calls": 1},
        ])
    );
    // The sums equal the usage rows' costs.
    let day_sum: BigDecimal = spend["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| dec(d["spend"].as_str().unwrap()))
        .sum();
    assert_eq!(day_sum, dec("2.05000001"));

    // The default range is the last 30 days, ending today.
    let recent = app.get("/v1/me/spend", &token).await;
    let days = recent.assert_status(200)["days"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(days.len(), 30);
    assert_eq!(
        recent.json["to"],
        chrono::Utc::now().date_naive().to_string()
    );
    for query in [
        "?from=2026-11-03&to=2026-11-01",
        "?from=2025-01-01&to=2026-01-02",
        "?from=2026-11-01T00:00:00Z",
        "?from=2026-13-01",
        "?days=3",
    ] {
        app.get(&format!("/v1/me/spend{query}"), &token)
            .await
            .assert_error(400, "invalid_request");
    }
    // 366 days is the most.
    app.get("/v1/me/spend?from=2025-01-01&to=2026-01-01", &token)
        .await
        .assert_status(200);
    app.send(Method::GET, "/v1/me/spend", Credential::None, None)
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_overview_counts_the_calls_their_errors_spend_and_queues() {
    let app = spawn_app().await;
    let worker = BillingWorker::start(&app).await;
    let setup = app.mock_setup("openai").await;
    let admin = app.admin_token().to_owned();
    let call = |model: &str, prompt: &str, key: &str| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
        let (app, key) = (&app, key.to_owned());
        async move {
            app.send(
                Method::POST,
                "/v1/chat/completions",
                Credential::Bearer(&key),
                Some(body),
            )
            .await
        }
    };
    for _ in 0..3 {
        call(&setup.model, "one two three", &setup.access_key)
            .await
            .assert_status(200);
    }
    call("no-such-model", "hi", &setup.access_key)
        .await
        .assert_error(404, "model_not_found");
    call(&setup.model, "fail [[status:500]]", &setup.access_key)
        .await
        .assert_error(502, "upstream_error");
    // A user without balance is refused.
    let (_, broke_token) = app.new_user().await;
    let broke_key = app
        .post("/v1/me/access-keys", &broke_token, json!({"name": "k"}))
        .await;
    let broke_key = broke_key.assert_status(201)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    call(&setup.model, "hi", &broke_key)
        .await
        .assert_error(402, "insufficient_balance");

    let overview = eventually(20, || async {
        let reply = app.get("/v1/admin/overview?bucket=hour", &admin).await;
        let body = reply.assert_status(200).clone();
        let last = body["buckets"].as_array().unwrap().last().unwrap().clone();
        let seen = last["ok"] == 3
            && last["client_errors"] == 1
            && last["provider_errors"] == 1
            && last["refused"] == 1
            && last["billed_calls"] == 3
            && !last["queues"]["outbox"].is_null();
        seen.then_some(body)
    })
    .await;
    worker.stop().await;
    let buckets = overview["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 24);
    let last = buckets.last().unwrap();
    let usage: BigDecimal = app
        .usage_of(setup.user_id)
        .await
        .into_iter()
        .map(|(_, _, cost)| cost)
        .sum();
    assert_eq!(dec(last["spend"].as_str().unwrap()), usage);
    assert!(last["latency_ms_max"].as_i64().unwrap() >= last["latency_ms_avg"].as_i64().unwrap());
    assert!(
        buckets[..23]
            .iter()
            .all(|b| b["ok"] == 0 && b["spend"] == "0")
    );
    assert_eq!(overview["bucket"], "hour");
    assert!(overview["current"]["invocation_queue"].is_i64());
    assert!(overview["current"]["billing_queue"].is_i64());
    assert_eq!(overview["current"]["pending_jobs"], 0);

    // By day, the same calls in today's bucket.
    let days = app.get("/v1/admin/overview?bucket=day", &admin).await;
    let days = days.assert_status(200)["buckets"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(days.len(), 30);
    assert_eq!(days.last().unwrap()["ok"], 3);

    for query in [
        "?bucket=week",
        "?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z",
        "?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z&bucket=hour",
        "?from=2024-01-01T00:00:00Z&to=2026-03-01T00:00:00Z&bucket=day",
        "?from=soon",
    ] {
        app.get(&format!("/v1/admin/overview{query}"), &admin)
            .await
            .assert_error(400, "invalid_request");
    }
    app.get("/v1/admin/overview", &setup.token)
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_key_test_reports_the_providers_answer_without_its_address() {
    let app = spawn_app().await;
    let setup = app.mock_setup("openai").await;
    let admin = app.admin_token().to_owned();
    let keys = app
        .get(
            &format!("/v1/admin/providers/{}/keys", setup.provider_id),
            &admin,
        )
        .await;
    let good = keys.assert_status(200)["data"][0]["id"].as_i64().unwrap();
    let refused = app
        .post(
            &format!("/v1/admin/providers/{}/keys", setup.provider_id),
            &admin,
            json!({"api_key": "fail-401", "enabled": false}),
        )
        .await;
    let refused = refused.assert_status(201)["id"].as_i64().unwrap();
    let calls_before = setup.mock.calls();

    let ok = app
        .post(
            &format!("/v1/admin/provider-keys/{good}/test"),
            &admin,
            json!({}),
        )
        .await;
    let ok = ok.assert_status(200);
    assert_eq!(ok["ok"], true);
    assert_eq!(ok["status"], 200);
    assert!(ok["error"].is_null());
    assert!(ok["latency_ms"].is_u64());

    let bad = app
        .post(
            &format!("/v1/admin/provider-keys/{refused}/test"),
            &admin,
            json!({}),
        )
        .await;
    let bad = bad.assert_status(200);
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["status"], 401);
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("refused the provider key")
    );
    assert!(!bad.to_string().contains(&setup.mock.base_url()));
    // The test lists models: no model call was made (nothing the provider bills).
    assert_eq!(setup.mock.calls(), calls_before);

    // A provider that does not answer: no status, and its address stays hidden.
    let provider = app
        .post(
            "/v1/admin/providers",
            &admin,
            json!({"name": "closed", "kind": "anthropic", "base_url": "http://127.0.0.1:9/v1"}),
        )
        .await;
    let provider = provider.assert_status(201)["id"].as_i64().unwrap();
    let key = app
        .post(
            &format!("/v1/admin/providers/{provider}/keys"),
            &admin,
            json!({"api_key": "sk-ant-x"}),
        )
        .await;
    let key = key.assert_status(201)["id"].as_i64().unwrap();
    let down = app
        .post(
            &format!("/v1/admin/provider-keys/{key}/test"),
            &admin,
            json!({}),
        )
        .await;
    let down = down.assert_status(200);
    assert_eq!(down["ok"], false);
    assert!(down["status"].is_null());
    assert!(!down.to_string().contains("127.0.0.1:9"), "{down}");

    app.post("/v1/admin/provider-keys/987654/test", &admin, json!({}))
        .await
        .assert_error(404, "not_found");
    app.post(
        &format!("/v1/admin/provider-keys/{good}/test"),
        &setup.token,
        json!({}),
    )
    .await
    .assert_error(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_order_fails_once_and_then_cannot_complete() {
    let app = spawn_app().await;
    let admin = app.admin_token().to_owned();
    let (user_id, token) = app.new_user().await;
    let order = app
        .post("/v1/me/orders", &token, json!({"amount": "20"}))
        .await;
    let order_no = order.assert_status(201)["order_no"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(&format!("/v1/orders/{order_no}/fail"), &token, json!({}))
        .await
        .assert_error(403, "forbidden");

    // Ten admins fail it at once: one wins.
    let fail = format!("/v1/orders/{order_no}/fail");
    let attempts =
        futures_util::future::join_all((0..10).map(|_| app.post(&fail, &admin, json!({})))).await;
    let won: Vec<_> = attempts.iter().filter(|r| r.status == 200).collect();
    assert_eq!(won.len(), 1);
    assert_eq!(won[0].json["status"], "FAILED");
    for lost in attempts.iter().filter(|r| r.status != 200) {
        lost.assert_error(409, "conflict");
    }
    // A failed order is not completed, and nothing is credited.
    let before = app.snapshot().await;
    app.post(
        &format!("/v1/orders/{order_no}/complete"),
        &admin,
        json!({}),
    )
    .await
    .assert_error(409, "conflict");
    assert_eq!(app.snapshot().await, before);
    let mine = app.get("/v1/me/orders", &token).await;
    assert_eq!(mine.assert_status(200)["data"][0]["status"], "FAILED");
    assert_eq!(app.get("/v1/me", &token).await.json["balance"], "0");
    let (balance, ledger) = app.balance_and_ledger_sum(user_id).await;
    assert_eq!((balance, ledger), (dec("0"), dec("0")));

    // A completed order cannot fail.
    let paid = app
        .post("/v1/me/orders", &token, json!({"amount": "5"}))
        .await;
    let paid = paid.assert_status(201)["order_no"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(&format!("/v1/orders/{paid}/complete"), &admin, json!({}))
        .await
        .assert_status(200);
    let before = app.snapshot().await;
    app.post(&format!("/v1/orders/{paid}/fail"), &admin, json!({}))
        .await
        .assert_error(409, "conflict");
    assert_eq!(app.snapshot().await, before);
    let mine = app.get("/v1/me/orders", &token).await;
    assert_eq!(mine.assert_status(200)["data"][0]["status"], "COMPLETED");
    assert_eq!(app.get("/v1/me", &token).await.json["balance"], "5");
    app.post(
        "/v1/orders/ord_00000000000000000000000000000000/fail",
        &admin,
        json!({}),
    )
    .await
    .assert_error(404, "not_found");
}
