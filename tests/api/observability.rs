//! Traffic moves the Prometheus counters operators watch.

use integration_tests::{BillingWorker, Credential, InvocationWorker, eventually, spawn_app};
use mock_llm::MockConfig;
use reqwest::Method;
use serde_json::json;

/// The value of the first sample of `name` whose labels contain every `labels` pair.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|pair| l.contains(pair)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_and_jobs_move_the_counters() {
    let app = spawn_app().await;
    let billing = BillingWorker::start(&app).await;
    let worker = InvocationWorker::start(&app).await;
    let mock = mock_llm::start(MockConfig::default(), "127.0.0.1", 0)
        .await
        .unwrap();
    let s = app.chat_setup(mock, &[("good-key", 1)], "5").await;
    let key = Credential::Bearer(&s.access_key);
    app.send(
        Method::POST,
        "/v1/chat/completions",
        key,
        Some(json!({"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await
    .assert_status(200);
    let job = app
        .send(
            Method::POST,
            "/v1/jobs/image-generation",
            Credential::Bearer(&s.access_key),
            Some(json!({"model": "demo-image", "prompt": "p"})),
        )
        .await;
    job.assert_status(202);
    eventually(20, || async {
        (app.usage_of(s.user_id).await.len() == 2).then_some(())
    })
    .await;

    let metrics = eventually(10, || async {
        let text = app
            .send(
                Method::GET,
                "/metrics",
                Credential::Bearer(app.admin_token()),
                None,
            )
            .await
            .text;
        sample(&text, "billing_holds_open", &[])
            .is_some()
            .then_some(text)
    })
    .await;
    let moved = [
        (
            "http_requests_total",
            vec!["route=\"/v1/chat/completions\"", "status=\"200\""],
        ),
        (
            "http_requests_total",
            vec!["route=\"/v1/jobs/image-generation\"", "status=\"202\""],
        ),
        (
            "http_request_duration_seconds_count",
            vec!["route=\"/v1/chat/completions\""],
        ),
        ("upstream_requests_total", vec!["outcome=\"ok\""]),
        ("upstream_latency_seconds_count", vec![]),
        ("billing_published_total", vec!["path=\"broker\""]),
        ("billing_settlements_total", vec!["outcome=\"settled\""]),
        ("billing_lag_seconds_count", vec![]),
        ("jobs_submitted_total", vec![]),
        ("jobs_total", vec!["status=\"COMPLETED\""]),
        ("job_duration_seconds_count", vec![]),
        ("messaging_consumed_total", vec![]),
        ("messaging_acked_total", vec![]),
    ];
    for (name, labels) in moved {
        let value = sample(&metrics, name, &labels)
            .unwrap_or_else(|| panic!("{name}{labels:?} missing from /metrics"));
        assert!(value >= 1.0, "{name}{labels:?} = {value}");
    }
    assert!(sample(&metrics, "billing_outbox_size", &[]).is_some());
    assert!(sample(&metrics, "messaging_in_flight", &[]).is_some());
    worker.stop().await;
    billing.stop().await;
}
