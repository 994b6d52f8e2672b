//! Builds the real worker against local Postgres and RabbitMQ (unique queue prefix) and
//! checks its ops endpoints and its graceful stop.

use billing_worker::{Application, DEFAULT_CONFIG, Settings};
use messaging::BILLING_LOG_QUEUE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_probes_and_metrics_consumes_and_stops_promptly() {
    let mut settings: Settings = runtime::config::load(DEFAULT_CONFIG).expect("defaults load");
    runtime::testing::isolate(&mut settings.worker);
    settings.worker.database.url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let app = Application::build(settings.clone())
        .await
        .expect("build (needs Postgres on 5432 and RabbitMQ on 5672)");
    // Not a valid charge: whatever the handler makes of it, it leaves the queue.
    runtime::testing::assert_worker_lifecycle(
        &settings.worker,
        app.ops_port(),
        |stop| app.run_until(stop),
        BILLING_LOG_QUEUE,
        br#"{"request_id":"x"}"#,
    )
    .await;
}
