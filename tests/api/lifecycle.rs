//! Processes dying or being stopped: a killed worker's job is taken over after its lease, a
//! SIGTERM lets in-flight work finish; either way every job ends once and is billed once.

use std::str::FromStr;
use std::time::Duration;

use bigdecimal::BigDecimal;
use integration_tests::{
    BillingWorker, Credential, InvocationWorker, eventually, job_status, spawn_app,
};
use mock_llm::MockConfig;
use reqwest::Method;
use serde_json::json;

async fn submit_slow_job(app: &integration_tests::TestApp, key: &str) -> uuid::Uuid {
    let reply = app
        .send(
            Method::POST,
            "/v1/jobs/image-generation",
            Credential::Bearer(key),
            Some(json!({"model": "demo-image", "prompt": "take your time [[sleep:1500]]"})),
        )
        .await;
    reply.assert_status(202)["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_job_is_taken_over_and_ends_once_billed_once() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let s = app.chat_setup(mock, &[("good-key", 1)], "1").await;
    let mut doomed = integration_tests::spawn_invocation_worker_process(&app);

    let job_id = submit_slow_job(&app, &s.access_key).await;
    // Claimed and its provider call under way (PROCESSING alone may still be before the call).
    eventually(20, || async {
        (s.mock.calls() == 1 && job_status(&app, job_id).await == "PROCESSING").then_some(())
    })
    .await;
    doomed.kill().unwrap(); // SIGKILL, mid-call
    doomed.wait().unwrap();

    let survivor = InvocationWorker::start(&app).await;
    eventually(30, || async {
        (job_status(&app, job_id).await == "COMPLETED").then_some(())
    })
    .await;
    eventually(15, || async {
        (app.usage_of(s.user_id).await.len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.usage_of(s.user_id).await.len(), 1, "billed once");
    assert_eq!(
        app.balance_and_ledger_sum(s.user_id).await.0,
        BigDecimal::from_str("0.96").unwrap()
    );
    assert_eq!(
        s.mock.calls(),
        2,
        "the killed attempt's call, then the takeover's"
    );
    app.assert_books_balance().await;
    survivor.stop().await;
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_in_flight_job_finish_before_the_worker_exits() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let s = app.chat_setup(mock, &[("good-key", 1)], "1").await;
    let mut worker = integration_tests::spawn_invocation_worker_process(&app);

    let job_id = submit_slow_job(&app, &s.access_key).await;
    eventually(20, || async {
        (job_status(&app, job_id).await == "PROCESSING").then_some(())
    })
    .await;
    let pid = worker.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::task::spawn_blocking(move || worker.wait().unwrap())
        .await
        .unwrap();
    assert!(
        exited.success(),
        "the worker exits cleanly after SIGTERM: {exited:?}"
    );
    // It finished the job before leaving: no takeover was needed.
    assert_eq!(job_status(&app, job_id).await, "COMPLETED");
    assert_eq!(s.mock.calls(), 1);
    eventually(15, || async {
        (app.usage_of(s.user_id).await.len() == 1).then_some(())
    })
    .await;
    app.assert_books_balance().await;
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_calls_answers_them_all_and_loses_no_charge() {
    let mut app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let mock = mock_llm::start(
        MockConfig {
            latency_ms: 1500,
            ..MockConfig::default()
        },
        "127.0.0.1",
        0,
    )
    .await
    .unwrap();
    let s = app.chat_setup(mock, &[("good-key", 1)], "5").await;

    // A second gateway, as its own process, on the same database and queues.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = app.settings.clone();
    let mut gateway =
        std::process::Command::new(integration_tests::workspace_binary("gateway-api"))
            .env("APP__SERVER__PORT", port.to_string())
            .env("APP__DATABASE__URL", &settings.database.url)
            .env("APP__BROKER__URL", &settings.broker.url)
            .env("APP__BROKER__QUEUE_PREFIX", &settings.broker.queue_prefix)
            .env(
                "APP__AUTH__JWT_SECRET",
                "test-jwt-secret-that-is-long-enough-0123456789",
            )
            .env("APP__AUTH__BCRYPT_COST", "4")
            .env(
                "APP__SECURITY__MASTER_KEY",
                integration_tests::test_master_key(),
            )
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
    app.address = format!("http://127.0.0.1:{port}");
    eventually(30, || async {
        let ready = app
            .client
            .get(format!("{}/readyz", app.address))
            .send()
            .await;
        ready.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;

    let body = json!({"model": "demo-chat", "messages": [{"role": "user", "content": "slow one"}]});
    let calls = (0..10).map(|_| {
        app.send(
            Method::POST,
            "/v1/chat/completions",
            Credential::Bearer(&s.access_key),
            Some(body.clone()),
        )
    });
    let stop = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = gateway.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let (replies, ()) = tokio::join!(futures_util::future::join_all(calls), stop);
    for reply in &replies {
        reply.assert_status(200);
    }
    let exited = tokio::task::spawn_blocking(move || gateway.wait().unwrap())
        .await
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    // Every answered call is billed, once.
    eventually(20, || async {
        (app.usage_of(s.user_id).await.len() == 10).then_some(())
    })
    .await;
    app.assert_books_balance().await;
    assert_eq!(app.open_holds(s.user_id).await, 0);
    billing.stop().await;
}
