//! Asynchronous jobs end to end: gateway-api, invocation-worker, billing-worker and the mock
//! LLM, with real Postgres and RabbitMQ.

use std::str::FromStr;

use bigdecimal::BigDecimal;
use integration_tests::{
    BillingWorker, ChatSetup, Credential, InvocationWorker, Reply, TestApp, WebhookReceiver,
    eventually, spawn_app,
};
use mock_llm::MockConfig;
use reqwest::Method;
use serde_json::{Value, json};

fn dec(s: &str) -> BigDecimal {
    BigDecimal::from_str(s).unwrap()
}

async fn setup(app: &TestApp, balance: &str) -> ChatSetup {
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    app.chat_setup(mock, &[("good-key", 1)], balance).await
}

async fn submit(app: &TestApp, key: &str, body: Value) -> Reply {
    app.send(
        Method::POST,
        "/v1/jobs/image-generation",
        Credential::Bearer(key),
        Some(body),
    )
    .await
}

/// Submits a one-image job of `prompt`; answers its id.
async fn submit_image(app: &TestApp, key: &str, prompt: &str) -> String {
    let reply = submit(app, key, json!({"model": "demo-image", "prompt": prompt})).await;
    reply.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn poll_terminal(app: &TestApp, key: &str, job_id: &str) -> Value {
    eventually(30, || async {
        let reply = app
            .send(
                Method::GET,
                &format!("/v1/jobs/{job_id}"),
                Credential::Bearer(key),
                None,
            )
            .await;
        let status = reply.json["status"].as_str().unwrap_or("").to_owned();
        (status == "COMPLETED" || status == "FAILED").then_some(reply.json)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_completes_and_is_billed_once_per_image() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let worker = InvocationWorker::start(&app).await;
    let s = setup(&app, "1").await;

    let reply = submit(
        &app,
        &s.access_key,
        json!({"model": "demo-image", "prompt": "a red fox", "n": 3, "size": "512x512"}),
    )
    .await;
    let accepted = reply.assert_status(202).clone();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["status"], "PENDING");
    assert_eq!(accepted["status_url"], format!("/v1/jobs/{job_id}"));
    assert_eq!(
        reply.headers["location"],
        format!("/v1/jobs/{job_id}").as_str()
    );

    let job = poll_terminal(&app, &s.access_key, &job_id).await;
    assert_eq!(job["status"], "COMPLETED", "{job}");
    assert_eq!(job["type"], "image-generation");
    assert_eq!(job["model"], "demo-image");
    assert_eq!(job["result"]["data"].as_array().unwrap().len(), 3);
    assert!(job["error"].is_null());
    assert_eq!(job["cost"], "0.12");

    let usage = eventually(15, || async {
        let rows = app.usage_of(s.user_id).await;
        (rows.len() == 1).then_some(rows)
    })
    .await;
    assert_eq!(usage[0].2, dec("0.12"));
    assert_eq!(app.balance_and_ledger_sum(s.user_id).await.0, dec("0.88"));
    assert_eq!(app.open_holds(s.user_id).await, 0);
    app.assert_books_balance().await;

    // Lists: mine and the admin's.
    let mine = app
        .send(
            Method::GET,
            "/v1/jobs",
            Credential::Bearer(&s.access_key),
            None,
        )
        .await;
    assert_eq!(mine.assert_status(200)["total"], 1);
    // Lists leave results out; the job itself keeps its result.
    assert_eq!(mine.json["data"][0]["status"], "COMPLETED");
    assert!(mine.json["data"][0]["result"].is_null(), "{}", mine.text);
    let all = app
        .get(
            &format!("/v1/admin/jobs?user_id={}", s.user_id),
            app.admin_token(),
        )
        .await;
    assert_eq!(all.assert_status(200)["data"][0]["job_id"], job_id.as_str());
    assert!(all.json["data"][0]["result"].is_null(), "{}", all.text);
    let (_, user_token) = app.new_user().await;
    app.get("/v1/admin/jobs", &user_token)
        .await
        .assert_error(403, "forbidden");

    // Another user's job, an unknown id and a malformed id: 404.
    let (_, other_token) = app.new_user().await;
    let other_key = app
        .post("/v1/me/access-keys", &other_token, json!({"name": "k"}))
        .await
        .json["key"]
        .as_str()
        .unwrap()
        .to_owned();
    app.send(
        Method::GET,
        &format!("/v1/jobs/{job_id}"),
        Credential::Bearer(&other_key),
        None,
    )
    .await
    .assert_error(404, "not_found");
    app.send(
        Method::GET,
        &format!("/v1/jobs/{}", uuid::Uuid::new_v4()),
        Credential::Bearer(&s.access_key),
        None,
    )
    .await
    .assert_error(404, "not_found");
    app.send(
        Method::GET,
        "/v1/jobs/not-a-uuid",
        Credential::Bearer(&s.access_key),
        None,
    )
    .await
    .assert_error(404, "not_found");
    assert_eq!(
        app.send(
            Method::GET,
            "/v1/jobs",
            Credential::Bearer(&other_key),
            None
        )
        .await
        .json["total"],
        0
    );

    worker.stop().await;
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_prompt_fails_with_its_reason_and_costs_nothing() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let worker = InvocationWorker::start(&app).await;
    let s = setup(&app, "1").await;
    let reply = submit(
        &app,
        &s.access_key,
        json!({"model": "demo-image", "prompt": "forbidden [[reject]]"}),
    )
    .await;
    let job_id = reply.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = poll_terminal(&app, &s.access_key, &job_id).await;
    assert_eq!(job["status"], "FAILED");
    assert!(job["error"].as_str().unwrap().contains("refused"), "{job}");
    assert!(job["result"].is_null() && job["cost"].is_null());
    assert_eq!(s.mock.calls(), 1, "a permanent failure is not retried");
    assert_eq!(app.open_holds(s.user_id).await, 0);
    // A job behind it: a charge of the failed job would have gone the same way (the outbox
    // with its completion, then the broker) before this one, so once this one is settled that
    // one would be too.
    let behind = submit_image(&app, &s.access_key, "behind it").await;
    let done = poll_terminal(&app, &s.access_key, &behind).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let cost = dec(done["cost"].as_str().unwrap());
    let rows = eventually(15, || async {
        let rows = app.usage_of(s.user_id).await;
        (!rows.is_empty() && app.open_holds(s.user_id).await == 0).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 1, "only the completed job is billed: {rows:?}");
    assert_eq!(rows[0].2, cost);
    assert_eq!(
        app.balance_and_ledger_sum(s.user_id).await.0,
        dec("1") - cost
    );
    app.assert_books_balance().await;
    worker.stop().await;
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_retry_with_backoff_then_fail_without_a_charge() {
    let app = spawn_app().await;
    let worker = InvocationWorker::start(&app).await;
    let s = setup(&app, "1").await;
    let reply = submit(
        &app,
        &s.access_key,
        json!({"model": "demo-image", "prompt": "flaky [[status:503]]"}),
    )
    .await;
    let job_id = reply.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = poll_terminal(&app, &s.access_key, &job_id).await;
    assert_eq!(job["status"], "FAILED");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{job}"
    );
    // One call per attempt (one key, so no failover within an attempt).
    assert_eq!(s.mock.calls(), 3);
    assert_eq!(app.open_holds(s.user_id).await, 0);
    app.assert_books_balance().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_submissions_are_refused_and_write_no_job() {
    let app = spawn_app().await;
    let s = setup(&app, "0.05").await;
    let cases = [
        (
            json!({"model": "demo-chat", "prompt": "x"}),
            404,
            "model_not_found",
        ),
        (
            json!({"model": "nope", "prompt": "x"}),
            404,
            "model_not_found",
        ),
        (
            json!({"model": "demo-image", "prompt": "x", "n": 0}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "demo-image", "prompt": "x", "n": 11}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "demo-image", "prompt": "   "}),
            400,
            "invalid_request",
        ),
        (json!({"model": "demo-image"}), 400, "invalid_request"),
        (
            json!({"model": "demo-image", "prompt": "x".repeat(4001)}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "demo-image", "prompt": "x", "size": "13x13"}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "demo-image", "prompt": "x", "colour": "red"}),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "demo-image", "prompt": "x", "callback_url": "ftp://example.com/x"}),
            400,
            "invalid_request",
        ),
        // 0.05 covers one image at 0.04, not two.
        (
            json!({"model": "demo-image", "prompt": "x", "n": 2}),
            402,
            "insufficient_balance",
        ),
    ];
    for (body, status, code) in cases {
        submit(&app, &s.access_key, body.clone())
            .await
            .assert_error(status, code);
    }
    app.send(
        Method::POST,
        "/v1/jobs/image-generation",
        Credential::None,
        Some(json!({"model": "demo-image", "prompt": "x"})),
    )
    .await
    .assert_error(401, "unauthorized");
    assert_eq!(app.count("async_jobs").await, 0);
    assert_eq!(app.count("balance_holds").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn private_callback_targets_are_refused_unless_allowed() {
    let app = integration_tests::spawn_app_with(|s| s.calls.allow_private_callbacks = false).await;
    let s = setup(&app, "1").await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest",
        "http://localhost/x",
        "http://[::1]/x",
        // Every form of IPv6 that carries an IPv4 address, and the reserved IPv4 ranges.
        "http://[64:ff9b::7f00:1]/x",
        "http://[64:ff9b:1::a00:1]/x",
        "http://[2002:7f00:1::1]/x",
        "http://[::127.0.0.1]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://[::ffff:8.8.8.8]/x",
        "http://198.18.0.1/x",
        "http://240.0.0.1/x",
        "http://255.255.255.255/x",
    ] {
        submit(
            &app,
            &s.access_key,
            json!({"model": "demo-image", "prompt": "x", "callback_url": url}),
        )
        .await
        .assert_error(400, "invalid_request");
    }
    assert_eq!(app.count("async_jobs").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_job_message_makes_no_second_call_and_no_second_charge() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let worker = InvocationWorker::start(&app).await;
    let s = setup(&app, "1").await;
    let reply = submit(
        &app,
        &s.access_key,
        json!({"model": "demo-image", "prompt": "once"}),
    )
    .await;
    let job_id: uuid::Uuid = reply.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    poll_terminal(&app, &s.access_key, &job_id.to_string()).await;
    eventually(10, || async {
        (app.usage_of(s.user_id).await.len() == 1).then_some(())
    })
    .await;

    let broker = messaging::Broker::connect(app.settings.broker.clone())
        .await
        .unwrap();
    let message = domain::InvocationMessage { job_id }.to_json_bytes();
    for _ in 0..3 {
        broker
            .publish_json(
                messaging::MODEL_INVOCATION_QUEUE,
                &message,
                &job_id.to_string(),
            )
            .await
            .unwrap();
    }
    // A fresh job behind the duplicates: once it is done, they were consumed.
    let next = submit(
        &app,
        &s.access_key,
        json!({"model": "demo-image", "prompt": "next"}),
    )
    .await;
    let next_id = next.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    poll_terminal(&app, &s.access_key, &next_id).await;
    assert_eq!(s.mock.calls(), 2, "the duplicates made no provider call");
    eventually(10, || async {
        (app.usage_of(s.user_id).await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(app.balance_and_ledger_sum(s.user_id).await.0, dec("0.92"));
    app.assert_books_balance().await;
    broker.close().await;
    worker.stop().await;
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_signed_retried_and_verifiable() {
    let app = spawn_app().await;
    let worker = InvocationWorker::start(&app).await;
    let s = setup(&app, "1").await;
    let secret = app.webhook_secret(&s.token).await;
    let receiver = WebhookReceiver::start(1).await;
    let reply = submit(
        &app,
        &s.access_key,
        json!({"model": "demo-image", "prompt": "hook", "callback_url": receiver.url}),
    )
    .await;
    let job_id = reply.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let received = eventually(20, || async {
        let got = receiver.received();
        got.iter().any(|r| r.answered == 200).then_some(got)
    })
    .await;
    assert_eq!(
        received.len(),
        2,
        "one failed delivery, then one retried success"
    );
    for hook in &received {
        let header = hook.signature.clone().expect("signed");
        let (t, v1) = header.split_once(",v1=").unwrap();
        let t = t.trim_start_matches("t=");
        assert!(
            domain::signature::verify(secret.as_bytes(), t, &hook.body, v1),
            "signature must verify"
        );
        assert!(!domain::signature::verify(
            b"another-secret",
            t,
            &hook.body,
            v1
        ));
        let job: Value = serde_json::from_slice(&hook.body).unwrap();
        assert_eq!(job["job_id"], job_id.as_str());
        assert_eq!(job["status"], "COMPLETED");
    }
    // A delivered webhook is not sent again, even once it would be due: make it due, then
    // let two more passes of the one delivery loop run. The second job's webhook is sent by a
    // pass that claimed every due delivery; the third's by a later pass (it ends after the
    // second's was recorded), so the pass that could have re-sent the first has finished.
    use diesel_async::RunQueryDsl;
    let mut conn = app.pool.get().await.unwrap();
    diesel::sql_query(
        "UPDATE webhook_deliveries SET next_attempt_at = now() - interval '1 hour' \
         WHERE job_id = $1::uuid",
    )
    .bind::<diesel::sql_types::Text, _>(&job_id)
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    for prompt in ["second hook", "third hook"] {
        let reply = submit(
            &app,
            &s.access_key,
            json!({"model": "demo-image", "prompt": prompt, "callback_url": receiver.url}),
        )
        .await;
        let id = reply.assert_status(202)["job_id"]
            .as_str()
            .unwrap()
            .to_owned();
        eventually(20, || async { delivered(&app, &id).await.then_some(()) }).await;
    }
    let first: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|hook| {
            serde_json::from_slice::<Value>(&hook.body).unwrap()["job_id"] == job_id.as_str()
        })
        .collect();
    assert_eq!(first.len(), 2, "a delivered webhook is not sent again");
    assert_eq!(receiver.received().len(), 4);
    worker.stop().await;
}

/// Whether the webhook of job `job_id` is recorded as delivered.
async fn delivered(app: &TestApp, job_id: &str) -> bool {
    use diesel::{ExpressionMethods, OptionalExtension, QueryDsl};
    use diesel_async::RunQueryDsl;
    use persistence::schema::webhook_deliveries;
    let mut conn = app.pool.get().await.unwrap();
    webhook_deliveries::table
        .filter(webhook_deliveries::job_id.eq(uuid::Uuid::parse_str(job_id).unwrap()))
        .select(webhook_deliveries::delivered_at)
        .first::<Option<chrono::DateTime<chrono::Utc>>>(&mut conn)
        .await
        .optional()
        .unwrap()
        .flatten()
        .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_goes_out_as_soon_as_its_job_ends_not_at_the_next_sweep() {
    let app = spawn_app().await;
    let mut settings = integration_tests::invocation_settings(&app);
    // A sweep would come only after the test gave up: the webhooks must not wait for it.
    settings.jobs.sweep_interval_ms = 60_000;
    let worker = InvocationWorker::start_with(settings).await;
    let s = setup(&app, "1").await;
    app.webhook_secret(&s.token).await;
    let receiver = WebhookReceiver::start(0).await;
    for prompt in ["a quick hook", "forbidden [[reject]]"] {
        let reply = submit(
            &app,
            &s.access_key,
            json!({"model": "demo-image", "prompt": prompt, "callback_url": receiver.url}),
        )
        .await;
        reply.assert_status(202);
    }
    let received = eventually(10, || async {
        let got = receiver.received();
        (got.len() == 2).then_some(got)
    })
    .await;
    let mut statuses: Vec<String> = received
        .iter()
        .map(|hook| {
            let job: Value = serde_json::from_slice(&hook.body).unwrap();
            job["status"].as_str().unwrap().to_owned()
        })
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["COMPLETED", "FAILED"], "both terminal states");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_jobs_submitted_at_once_all_end() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let mut settings = integration_tests::invocation_settings(&app);
    settings.worker.broker.prefetch = 64;
    let worker = InvocationWorker::start_with(settings).await;
    let s = setup(&app, "100").await;
    let submits = futures_util::stream::iter(0..1000)
        .map(|i| {
            let app = &app;
            let key = s.access_key.clone();
            async move {
                submit(
                    app,
                    &key,
                    json!({"model": "demo-image", "prompt": format!("picture {i}")}),
                )
                .await
                .status
                .as_u16()
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<u16>>()
        .await;
    assert!(submits.iter().all(|s| *s == 202));
    eventually(120, || async {
        let done = count_terminal(&app).await;
        (done == 1000).then_some(())
    })
    .await;
    eventually(60, || async {
        (app.usage_of(s.user_id).await.len() == 1000).then_some(())
    })
    .await;
    assert_eq!(app.balance_and_ledger_sum(s.user_id).await.0, dec("60"));
    app.assert_books_balance().await;
    worker.stop().await;
    billing.stop().await;
}

use futures_util::StreamExt;

async fn count_terminal(app: &TestApp) -> i64 {
    use diesel::{ExpressionMethods, QueryDsl};
    use diesel_async::RunQueryDsl;
    use persistence::schema::async_jobs;
    let mut conn = app.pool.get().await.unwrap();
    async_jobs::table
        .filter(async_jobs::status.eq_any(["COMPLETED", "FAILED"]))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_submitted_while_the_broker_is_away_start_once_it_is_back_without_the_sweeper() {
    let mut outage = integration_tests::BrokerOutage::start().await;
    let app = outage.spawn_app_behind().await;
    let mut settings = integration_tests::invocation_settings(&app);
    // The sweeper would re-publish these only after the test gave up.
    settings.jobs.stranded_after_seconds = 3600;
    let worker = InvocationWorker::start_with(settings).await;
    let s = setup(&app, "10").await;
    outage.cut().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit_image(&app, &s.access_key, &format!("while away {i}")).await);
    }
    // Their first publish fails while the broker is away.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    outage.restore().await;
    for id in &ids {
        let job = poll_terminal(&app, &s.access_key, id).await;
        assert_eq!(job["status"], "COMPLETED", "{job}");
    }
    assert_eq!(s.mock.calls(), 5, "each job called the provider once");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_broker_down_during_a_burst_no_job_is_lost_or_stuck() {
    let mut outage = integration_tests::BrokerOutage::start().await;
    let app = outage.spawn_app_behind().await;
    let worker = InvocationWorker::start(&app).await;
    let s = setup(&app, "10").await;
    let mut ids = Vec::new();
    for i in 0..40 {
        if i == 10 {
            outage.cut().await;
        }
        if i == 30 {
            outage.restore().await;
        }
        ids.push(submit_image(&app, &s.access_key, &format!("burst {i}")).await);
    }
    for id in &ids {
        let job = poll_terminal(&app, &s.access_key, id).await;
        assert_eq!(job["status"], "COMPLETED", "{job}");
    }
    assert_eq!(s.mock.calls(), 40, "each job called the provider once");
    worker.stop().await;
}
