//! The operations HTTP server of the workers: liveness, readiness and the Prometheus scrape.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

/// Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A readiness probe that hangs longer than this is reported as not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(3);

/// Seconds the ops server gives open requests when it is stopped.
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

/// Whether the process can do useful work now (its database, broker and consumers are up).
pub trait Readiness: Send + Sync {
    /// `Err` carries a short, operator-facing reason.
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// Always ready: for processes without dependencies and for tests.
pub struct AlwaysReady;

impl Readiness for AlwaysReady {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}

/// A bound, not yet started ops server: spawn `server` (or await it) to serve.
pub struct OpsServer {
    pub server: Server,
    pub port: u16,
}

impl OpsServer {
    /// Binds `listen` (port 0 picks a free port); see [`serve_ops`].
    pub fn bind(
        listen: SocketAddr,
        readiness: Arc<dyn Readiness>,
        metrics: PrometheusHandle,
    ) -> std::io::Result<Self> {
        let (server, port) = serve_ops(listen, readiness, metrics)?;
        Ok(Self { server, port })
    }
}

struct OpsState {
    readiness: Arc<dyn Readiness>,
    metrics: PrometheusHandle,
    /// Readiness checks run on the caller's runtime, where the pools and broker tasks live,
    /// not on the HTTP worker's own single-threaded runtime.
    runtime: Option<tokio::runtime::Handle>,
}

/// Binds `GET /healthz`, `GET /readyz` and `GET /metrics` on `listen` and returns the server
/// (not yet polled: spawn it) with the bound port. The server ignores process signals; stop
/// it through `server.handle().stop(true)`.
pub fn serve_ops(
    listen: SocketAddr,
    readiness: Arc<dyn Readiness>,
    metrics: PrometheusHandle,
) -> std::io::Result<(Server, u16)> {
    let state = web::Data::new(OpsState {
        readiness,
        metrics,
        runtime: tokio::runtime::Handle::try_current().ok(),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics_text))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECONDS)
    .bind(listen)?;
    let port = server
        .addrs()
        .first()
        .map(SocketAddr::port)
        .ok_or_else(|| std::io::Error::other("ops server bound no address"))?;
    Ok((server.run(), port))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(state: web::Data<OpsState>) -> HttpResponse {
    let readiness = Arc::clone(&state.readiness);
    let probe = async move { tokio::time::timeout(READINESS_TIMEOUT, readiness.check()).await };
    let outcome = match &state.runtime {
        Some(runtime) => runtime
            .spawn(probe)
            .await
            .unwrap_or_else(|error| Ok(Err(format!("readiness check failed: {error}")))),
        None => probe.await,
    };
    let reason = match outcome {
        Ok(Ok(())) => return HttpResponse::Ok().json(json!({ "status": "ready" })),
        Ok(Err(reason)) => reason,
        Err(_elapsed) => format!(
            "readiness check timed out after {} s",
            READINESS_TIMEOUT.as_secs()
        ),
    };
    tracing::warn!(%reason, "not ready");
    HttpResponse::ServiceUnavailable().json(json!({
        "error": { "message": reason, "type": "unavailable", "code": "unavailable" }
    }))
}

async fn metrics_text(state: web::Data<OpsState>) -> HttpResponse {
    // Scrapes drive the recorder's housekeeping, so no background thread is needed.
    state.metrics.run_upkeep();
    HttpResponse::Ok()
        .content_type(METRICS_CONTENT_TYPE)
        .body(state.metrics.render())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    struct Switch(AtomicBool);

    impl Readiness for Switch {
        fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            Box::pin(async move {
                if self.0.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("database unreachable".to_owned())
                }
            })
        }
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics_on_an_ephemeral_port() {
        let handle = crate::metrics::install().expect("recorder");
        metrics::counter!("runtime_ops_test_total").increment(1);
        let switch = Arc::new(Switch(AtomicBool::new(false)));
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let ops = OpsServer::bind(listen, switch.clone(), handle).expect("bind");
        assert_ne!(ops.port, 0);
        let server_handle = ops.server.handle();
        let running = tokio::spawn(ops.server);
        let base = format!("http://127.0.0.1:{}", ops.port);
        let client = reqwest::Client::new();

        let health = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(health.status(), 200);
        assert_eq!(health.text().await.expect("body"), r#"{"status":"ok"}"#);

        let not_ready = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(not_ready.status(), 503);
        let body: serde_json::Value = not_ready.json().await.expect("json");
        assert_eq!(
            body,
            json!({"error": {"message": "database unreachable", "type": "unavailable", "code": "unavailable"}})
        );

        switch.0.store(true, Ordering::SeqCst);
        let ready = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 200);
        assert_eq!(ready.text().await.expect("body"), r#"{"status":"ready"}"#);

        let scrape = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(scrape.status(), 200);
        let content_type = scrape
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = scrape.text().await.expect("body");
        assert!(text.contains("runtime_ops_test_total"), "{text}");

        server_handle.stop(true).await;
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("server stops")
            .expect("join")
            .expect("server result");
    }
}
