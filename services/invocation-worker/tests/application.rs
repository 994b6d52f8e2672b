//! Builds the real worker against local Postgres and RabbitMQ (unique queue prefix) and
//! checks its ops endpoints and its graceful stop.

use invocation_worker::{Application, DEFAULT_CONFIG, Settings};
use messaging::MODEL_INVOCATION_QUEUE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_probes_and_metrics_consumes_and_stops_promptly() {
    let mut settings: Settings = runtime::config::load(DEFAULT_CONFIG).expect("defaults load");
    runtime::testing::isolate(&mut settings.worker);
    settings.security.master_key = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".to_owned();
    // A fresh, migrated database: the worker loads the model catalog when it starts.
    settings.worker.database.url = persistence::testing::migrated_database(2)
        .await
        .expect("a migrated database")
        .0;
    let app = Application::build(settings.clone())
        .await
        .expect("build (needs Postgres on 5432 and RabbitMQ on 5672)");
    // No such job: whatever the handler makes of it, it leaves the queue.
    runtime::testing::assert_worker_lifecycle(
        &settings.worker,
        app.ops_port(),
        |stop| app.run_until(stop),
        MODEL_INVOCATION_QUEUE,
        br#"{"job_id":"x"}"#,
    )
    .await;
}
