//! Limits end to end: rate, token, concurrency and spend limits of keys, users and the
//! platform, the rate, concurrency and spend limits of keys measured across two gateways on one
//! database: the test's own and a `gateway-api` process (each with its own in-memory slices, as
//! two replicas have); refusals are 429 with their headers and write
//! nothing; bad limits are 400 and write nothing; pending jobs are capped per user.

use bigdecimal::BigDecimal;
use diesel_async::RunQueryDsl;
use integration_tests::{
    BillingWorker, ChatSetup, GatewayProcess, TestApp, eventually, spawn_app_with,
};
use mock_llm::MockConfig;
use serde_json::{Value, json};
use std::str::FromStr;

/// A second gateway: a `gateway-api` process of its own on the first one's database and
/// queues (its own limits in memory, its own leases and slices); stopped when dropped.
async fn second_gateway(app: &TestApp) -> GatewayProcess {
    GatewayProcess::spawn(app).await
}

async fn setup(app: &TestApp, latency_ms: u64, balance: &str) -> ChatSetup {
    app.chat_setup(
        mock_llm::start(
            MockConfig {
                latency_ms,
                ..MockConfig::default()
            },
            "127.0.0.1",
            0,
        )
        .await
        .unwrap(),
        &[("good-key", 1)],
        balance,
    )
    .await
}

/// Mints a key for the setup's user with `limits`; its secret.
async fn key_with(app: &TestApp, setup: &ChatSetup, limits: Value) -> String {
    let mut body = json!({"name": "limited"});
    body.as_object_mut()
        .unwrap()
        .extend(limits.as_object().unwrap().clone());
    let reply = app.post("/v1/me/access-keys", &setup.token, body).await;
    reply.assert_status(201)["key"].as_str().unwrap().to_owned()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn call_via(app: &TestApp, address: &str, key: &str, body: &Value) -> Answer {
    let response = app
        .client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

fn chat(setup: &ChatSetup, max_tokens: u32) -> Value {
    json!({"model": setup.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens})
}

/// Waits until the second gateway routes the setup's model (a call through it with an
/// unlimited key succeeds).
async fn routed(app: &TestApp, address: &str, setup: &ChatSetup) {
    let body = chat(setup, 8);
    eventually(10, || async {
        (call_via(app, address, &setup.access_key, &body)
            .await
            .status
            == 200)
            .then_some(())
    })
    .await;
}

/// Waits until at least `seconds` remain in the current calendar minute, so that a burst's
/// calls all fall into one minute's window.
async fn room_in_minute(seconds: i64) {
    while 60 - chrono::Utc::now().timestamp().rem_euclid(60) < seconds {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `n` calls at once, alternating between the two addresses.
async fn burst(
    app: &TestApp,
    addresses: [&str; 2],
    key: &str,
    body: &Value,
    n: usize,
) -> Vec<Answer> {
    futures_util::future::join_all((0..n).map(|i| call_via(app, addresses[i % 2], key, body))).await
}

fn statuses(answers: &[Answer]) -> (usize, usize) {
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let limited = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!(ok + limited, answers.len(), "only 200 or 429 expected");
    (ok, limited)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keys_rpm_limit_holds_across_two_gateways_with_openai_headers() {
    let app = spawn_app_with(|_| {}).await;
    let gateway_b = second_gateway(&app).await;
    let b = gateway_b.address.clone();
    let setup = setup(&app, 0, "10").await;
    routed(&app, &b, &setup).await;
    let key = key_with(&app, &setup, json!({"rpm_limit": 5})).await;
    room_in_minute(20).await;
    let answers = burst(&app, [&app.address, &b], &key, &chat(&setup, 8), 20).await;
    let (ok, limited) = statuses(&answers);
    assert_eq!(
        (ok, limited),
        (5, 15),
        "two replicas together admit exactly the limit"
    );
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(refused.body["error"]["code"], "rate_limited");
    assert_eq!(refused.body["error"]["type"], "rate_limit_error");
    let header = |name: &str| refused.headers[name].to_str().unwrap().to_owned();
    assert_eq!(header("x-ratelimit-limit-requests"), "5");
    assert_eq!(header("x-ratelimit-remaining-requests"), "0");
    assert!(header("x-ratelimit-reset-requests").ends_with('s'));
    let retry: u64 = header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Refused calls wrote nothing: only the warm-up and the 5 admitted calls are billed.
    let worker = BillingWorker::start(&app).await;
    let usage = eventually(20, || async {
        let usage = app.usage_of(setup.user_id).await;
        (usage.len() >= 6).then_some(usage)
    })
    .await;
    worker.stop().await;
    assert!(usage.len() <= 7, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_holds_across_two_gateways_and_frees_slots_when_calls_end() {
    let app = spawn_app_with(|_| {}).await;
    let gateway_b = second_gateway(&app).await;
    let b = gateway_b.address.clone();
    let setup = setup(&app, 1_500, "10").await;
    routed(&app, &b, &setup).await;
    let key = key_with(&app, &setup, json!({"max_concurrency": 2})).await;
    let answers = burst(&app, [&app.address, &b], &key, &chat(&setup, 8), 6).await;
    assert_eq!(statuses(&answers), (2, 4));
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(refused.body["error"]["code"], "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
    // The two calls ended: their slots are free again (released after the answer).
    let body = chat(&setup, 8);
    eventually(10, || async {
        let answers = burst(&app, [&app.address, &b], &key, &body, 2).await;
        (statuses(&answers) == (2, 0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tpm_limit_counts_the_estimate_and_gives_back_what_was_not_used() {
    let app = spawn_app_with(|_| {}).await;
    let setup = setup(&app, 1_000, "10").await;
    // Each call is estimated at its prompt plus 256 completion tokens: two fit in 600.
    let key = key_with(&app, &setup, json!({"tpm_limit": 600})).await;
    room_in_minute(20).await;
    let body = chat(&setup, 256);
    let answers = burst(&app, [&app.address, &app.address], &key, &body, 3).await;
    assert_eq!(statuses(&answers), (2, 1));
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(refused.headers["x-ratelimit-limit-tokens"], "600");
    // The two calls used far fewer tokens than estimated: the difference came back.
    let again = call_via(&app, &app.address, &key, &body).await;
    assert_eq!(again.status, 200, "{}", again.body);
    // A call whose estimate alone passes the limit is told so.
    let small = key_with(&app, &setup, json!({"tpm_limit": 100})).await;
    let huge = call_via(&app, &app.address, &small, &body).await;
    assert_eq!(huge.status, 429, "{}", huge.body);
    assert!(
        huge.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lower max_tokens"),
        "{}",
        huge.body
    );
}

fn decimal(text: &str) -> BigDecimal {
    BigDecimal::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spend_limit_is_never_passed_by_concurrent_calls_on_two_gateways() {
    let app = spawn_app_with(|_| {}).await;
    let gateway_b = second_gateway(&app).await;
    let b = gateway_b.address.clone();
    let worker = BillingWorker::start(&app).await;
    let setup = setup(&app, 200, "10").await;
    routed(&app, &b, &setup).await;
    // One call may cost up to about 0.00015 (256 completion tokens at 0.60 per million).
    let limit = "0.001";
    let key = key_with(
        &app,
        &setup,
        json!({"spend_limit": limit, "spend_limit_period": "day"}),
    )
    .await;
    let body = chat(&setup, 256);
    let mut refusals = Vec::new();
    for _ in 0..6 {
        let answers = burst(&app, [&app.address, &b], &key, &body, 16).await;
        refusals.extend(answers.into_iter().filter(|a| a.status == 429));
    }
    assert!(!refusals.is_empty(), "the limit refused nothing");
    let refused = &refusals[0];
    assert_eq!(refused.body["error"]["code"], "spend_limit_reached");
    assert!(
        refused.headers.contains_key("retry-after"),
        "a daily limit says when it resets"
    );
    // Everything admitted settles; the key's charges stay within its limit.
    eventually(30, || async {
        let mut conn = app.pool.get().await.unwrap();
        let open: i64 = diesel::sql_query(
            "SELECT count(*) AS n FROM balance_holds WHERE user_id = $1 AND closed_at IS NULL",
        )
        .bind::<diesel::sql_types::BigInt, _>(setup.user_id)
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n;
        (open == 0).then_some(())
    })
    .await;
    let spent = app
        .usage_of(setup.user_id)
        .await
        .into_iter()
        .map(|(_, _, cost)| cost)
        .fold(BigDecimal::from(0), |a, b| a + b);
    assert!(spent <= decimal(limit) + decimal("0.001"), "{spent}");
    let mut conn = app.pool.get().await.unwrap();
    let key_spent: Vec<Spent> = diesel::sql_query(
        "SELECT spent FROM spend_totals WHERE scope = 1 AND period_start = limit_period_start('day')",
    )
    .load(&mut conn)
    .await
    .unwrap();
    assert_eq!(key_spent.len(), 1);
    assert!(
        key_spent[0].spent <= decimal(limit),
        "{}",
        key_spent[0].spent
    );
    assert!(key_spent[0].spent > decimal("0"));
    worker.stop().await;
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct Spent {
    #[diesel(sql_type = diesel::sql_types::Numeric)]
    spent: BigDecimal,
}

#[tokio::test(flavor = "multi_thread")]
async fn the_platform_default_and_a_users_limit_apply_to_keys_without_their_own() {
    let app = spawn_app_with(|_| {}).await;
    let setup = setup(&app, 0, "10").await;
    let admin = app.admin_token().to_owned();
    app.send(
        reqwest::Method::PUT,
        "/v1/admin/limits",
        integration_tests::Credential::Bearer(&admin),
        Some(json!({"rpm_limit": 2})),
    )
    .await
    .assert_status(200);
    room_in_minute(20).await;
    let plain = key_with(&app, &setup, json!({})).await;
    let own = key_with(&app, &setup, json!({"rpm_limit": 10})).await;
    let body = chat(&setup, 8);
    let answers = burst(&app, [&app.address, &app.address], &plain, &body, 4).await;
    assert_eq!(statuses(&answers), (2, 2), "the platform default applies");
    let answers = burst(&app, [&app.address, &app.address], &own, &body, 4).await;
    assert_eq!(statuses(&answers), (4, 0), "a key's own value wins");
    // A user's limit covers all of the user's keys together.
    let user = app
        .send(
            reqwest::Method::PUT,
            &format!("/v1/admin/users/{}/limits", setup.user_id),
            integration_tests::Credential::Bearer(&admin),
            Some(json!({"max_concurrency": 1})),
        )
        .await;
    assert_eq!(user.assert_status(200)["max_concurrency"], 1);
    let listed = app.get("/v1/me/access-keys", &setup.token).await;
    let rows = listed.assert_status(200)["data"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        rows.iter()
            .any(|k| k["rpm_limit"] == 10 && k["spend_limit_period"] == "total")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_limits_are_refused_and_write_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let setup = setup(&app, 0, "10").await;
    let keys = || async {
        app.get("/v1/me/access-keys", &setup.token)
            .await
            .assert_status(200)["total"]
            .as_i64()
            .unwrap()
    };
    let before = keys().await;
    for bad in [
        json!({"name": "k", "rpm_limit": 0}),
        json!({"name": "k", "rpm_limit": -3}),
        json!({"name": "k", "tpm_limit": "many"}),
        json!({"name": "k", "max_concurrency": 10_000_000}),
        json!({"name": "k", "spend_limit": "-1"}),
        json!({"name": "k", "spend_limit": "1.123456789"}),
        json!({"name": "k", "spend_limit": 5}),
        json!({"name": "k", "spend_limit_period": "week"}),
        json!({"name": "k", "max_pending_jobs": 3}),
        json!({"rpm_limit": 3}),
    ] {
        let reply = app
            .post("/v1/me/access-keys", &setup.token, bad.clone())
            .await;
        reply.assert_error(400, "invalid_request");
    }
    assert_eq!(keys().await, before);
    // Another user's key is not found, and a model takes no spend limit.
    let (_, email) = app.register("password-123").await;
    let other = app.login(&email, "password-123").await;
    let mine = app
        .post("/v1/me/access-keys", &setup.token, json!({"name": "mine"}))
        .await;
    let id = mine.assert_status(201)["id"].as_i64().unwrap();
    let reply = app
        .patch(
            &format!("/v1/me/access-keys/{id}"),
            &other,
            json!({"rpm_limit": 1}),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 404, "{}", reply.text);
    let reply = app
        .send(
            reqwest::Method::PUT,
            &format!("/v1/admin/models/{}/limits", setup.model_id),
            integration_tests::Credential::Bearer(app.admin_token()),
            Some(json!({"spend_limit": "1"})),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 400, "{}", reply.text);
    // The owner's change applies, and `null` removes a limit.
    let changed = app
        .patch(
            &format!("/v1/me/access-keys/{id}"),
            &setup.token,
            json!({"rpm_limit": 7}),
        )
        .await;
    assert_eq!(changed.assert_status(200)["rpm_limit"], 7);
    let cleared = app
        .patch(
            &format!("/v1/me/access-keys/{id}"),
            &setup.token,
            json!({"rpm_limit": null}),
        )
        .await;
    assert!(cleared.assert_status(200)["rpm_limit"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_jobs_per_user_are_capped() {
    let app = spawn_app_with(|_| {}).await;
    let setup = setup(&app, 0, "10").await;
    let admin = app.admin_token().to_owned();
    app.send(
        reqwest::Method::PUT,
        &format!("/v1/admin/users/{}/limits", setup.user_id),
        integration_tests::Credential::Bearer(&admin),
        Some(json!({"max_pending_jobs": 2})),
    )
    .await
    .assert_status(200);
    let image_model = "demo-image";
    let submit = || async {
        app.send(
            reqwest::Method::POST,
            "/v1/jobs/image-generation",
            integration_tests::Credential::Bearer(&setup.access_key),
            Some(json!({"model": image_model, "prompt": "a cat"})),
        )
        .await
    };
    // No invocation worker runs: the jobs stay pending.
    submit().await.assert_status(202);
    submit().await.assert_status(202);
    let third = submit().await;
    assert_eq!(third.status.as_u16(), 429, "{}", third.text);
    assert_eq!(third.json["error"]["code"], "rate_limited");
    // A key's rate limit counts job submissions too, and a spend limit covers their holds.
    let admin = app.admin_token().to_owned();
    app.send(
        reqwest::Method::PUT,
        &format!("/v1/admin/users/{}/limits", setup.user_id),
        integration_tests::Credential::Bearer(&admin),
        Some(json!({"max_pending_jobs": 100})),
    )
    .await
    .assert_status(200);
    room_in_minute(10).await;
    let per_minute = key_with(&app, &setup, json!({"rpm_limit": 1})).await;
    let spend = key_with(&app, &setup, json!({"spend_limit": "0.05"})).await;
    let submit_with = |key: String| {
        let app = &app;
        async move {
            app.send(
                reqwest::Method::POST,
                "/v1/jobs/image-generation",
                integration_tests::Credential::Bearer(&key),
                Some(json!({"model": image_model, "prompt": "a cat"})),
            )
            .await
        }
    };
    submit_with(per_minute.clone()).await.assert_status(202);
    submit_with(per_minute)
        .await
        .assert_error(429, "rate_limited");
    // One image costs 0.04: the first job fits in 0.05, the second would pass it.
    submit_with(spend.clone()).await.assert_status(202);
    submit_with(spend)
        .await
        .assert_error(429, "spend_limit_reached");
}
