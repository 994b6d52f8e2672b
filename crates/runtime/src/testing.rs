//! Test support for the services' ops servers and workers (feature `testing`).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use messaging::{Broker, delete_topology};

use crate::worker::WorkerSettings;

const WAIT: Duration = Duration::from_secs(10);

/// Points `settings` at the local RabbitMQ (`AMQP_URL`) under a queue prefix of its own, on a
/// free ops port, with a short grace; the database is the test's to choose.
pub fn isolate(settings: &mut WorkerSettings) {
    settings.ops.port = 0;
    settings.broker.queue_prefix = format!("test_{}_", uuid::Uuid::new_v4().simple());
    settings.broker.url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    settings.shutdown_grace_seconds = 3;
}

/// Runs a built worker (`run` is its `run_until`) and checks what every worker promises: it
/// serves /healthz, becomes ready, reports its consumer in /metrics, consumes `body`
/// published to `queue`, and stops within 5 s of shutdown, its ops port closed. Deletes the
/// test's topology at the end.
pub async fn assert_worker_lifecycle<F, E>(
    settings: &WorkerSettings,
    ops_port: u16,
    run: impl FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
    queue: &str,
    body: &[u8],
) where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Debug + Send + 'static,
{
    let names = messaging::queue_names(&settings.broker.queue_prefix);
    let base = format!("http://127.0.0.1:{ops_port}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(run(Box::pin(async {
        let _ = stopped.await;
    })));
    let client = reqwest::Client::new();

    let (status, text) = get(&client, &format!("{base}/healthz")).await;
    assert_eq!((status, text.as_str()), (200, r#"{"status":"ok"}"#));

    // The consumer subscribes right after start; readiness follows.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, text) = get(&client, &format!("{base}/readyz")).await;
        if status == 200 {
            assert_eq!(text, r#"{"status":"ready"}"#);
            break;
        }
        assert_eq!(status, 503, "{text}");
        assert!(Instant::now() < deadline, "never ready: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, metrics) = get(&client, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let work_queue = format!("{}{queue}", settings.broker.queue_prefix);
    let running_gauge = format!("messaging_consumer_running{{queue=\"{work_queue}\"}} 1");
    assert!(
        metrics.contains(&running_gauge),
        "{running_gauge} missing in:\n{metrics}"
    );

    // Whatever the handler makes of `body`, the message leaves the queue.
    let producer = Broker::connect(settings.broker.clone())
        .await
        .expect("producer");
    producer
        .publish_json(queue, body, "x")
        .await
        .expect("publish");
    let deadline = Instant::now() + WAIT;
    while producer.waiting(queue).await.expect("count waiting") > 0 {
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
    assert_port_closes(ops_port, Duration::from_secs(3)).await;

    let channel = producer.open_channel().await.expect("channel");
    delete_topology(&channel, &names).await.expect("cleanup");
    producer.close().await;
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.expect("ops server answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// Asserts the ops server on 127.0.0.1:`port` stops accepting connections within `within`.
/// A stopped server's worker thread may still answer on a connection it already had for a
/// moment (the workers stop it without waiting for that thread), so each look opens a new one.
pub async fn assert_port_closes(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "port {port} still accepts connections {within:?} after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
