//! Liveness, readiness and Prometheus metrics.

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready: Postgres answers through the pool (503 otherwise). The broker's state is reported
/// but does not fail readiness: while RabbitMQ is away calls still succeed and their charges
/// wait in the Postgres outbox, so taking every replica out of rotation would only add an outage.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200), (status = 503, body = crate::error::ErrorBody)))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    persistence::ping(&state.pool).await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: database");
        ApiError::Unavailable("database unreachable".to_owned())
    })?;
    let broker = if state.broker.is_connected() {
        "connected"
    } else {
        "disconnected (charges use the outbox)"
    };
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "database": "ok", "broker": broker})))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200)))]
pub async fn metrics(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}
