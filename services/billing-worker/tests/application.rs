//! Builds the real worker against local Postgres and RabbitMQ (unique queue prefix) and
//! checks its ops endpoints and its graceful stop.

use std::time::{Duration, Instant};

use billing_worker::{Application, DEFAULT_CONFIG, Settings};
use messaging::{Broker, delete_topology};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

fn test_settings() -> Settings {
    let mut settings: Settings = runtime::config::load(DEFAULT_CONFIG).expect("defaults load");
    settings.ops.port = 0;
    settings.broker.queue_prefix = format!("test_{}_", uuid::Uuid::new_v4().simple());
    settings.broker.url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    settings.database.url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    settings.shutdown_grace_seconds = 3;
    settings
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.expect("ops server answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_probes_and_metrics_consumes_and_stops_promptly() {
    let settings = test_settings();
    let names = messaging::queue_names(&settings.broker.queue_prefix);
    let app = Application::build(settings.clone())
        .await
        .expect("build (needs Postgres on 5432 and RabbitMQ on 5672)");
    let ops_port = app.ops_port();
    let base = format!("http://127.0.0.1:{ops_port}");
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();

    let (status, body) = get(&client, &format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    // The consumer subscribes right after start; readiness follows.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = get(&client, &format!("{base}/readyz")).await;
        if status == 200 {
            assert_eq!(body, r#"{"status":"ready"}"#);
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, metrics) = get(&client, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let running_gauge = format!(
        "messaging_consumer_running{{queue=\"{}\"}} 1",
        names.billing_log.work
    );
    assert!(
        metrics.contains(&running_gauge),
        "{running_gauge} missing in:\n{metrics}"
    );

    // The placeholder handler acks what arrives.
    let producer = Broker::connect(settings.broker.clone())
        .await
        .expect("producer");
    producer
        .publish_json("billing_log_queue", br#"{"request_id":"x"}"#, "x")
        .await
        .expect("publish");
    let channel = producer.open_channel().await.expect("channel");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, count, _) = channel
            .queue_declare(
                amqprs::channel::QueueDeclareArguments::new(&names.billing_log.work)
                    .passive(true)
                    .finish(),
            )
            .await
            .expect("passive declare")
            .expect("declare-ok");
        if count == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "message never consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    stop.send(()).expect("worker still running");
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run_until returns within 5 s of shutdown")
        .expect("worker task")
        .expect("worker result");
    assert!(started.elapsed() < Duration::from_secs(5));
    runtime::testing::assert_port_closes(ops_port, Duration::from_secs(3)).await;

    delete_topology(&channel, &names).await.expect("cleanup");
    producer.close().await;
}
