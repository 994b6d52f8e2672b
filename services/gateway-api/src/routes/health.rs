//! Liveness, readiness and Prometheus metrics.

use actix_web::{HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::auth::AdminUser;
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
    let database = database_state(persistence::ping(&state.pool).await)?;
    let broker = if state.broker.is_connected() {
        "connected"
    } else {
        "disconnected (charges use the outbox)"
    };
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "database": database, "broker": broker})))
}

/// Readiness as the database decides it. Every connection in use means the database answers
/// and this replica is only busy: taking it out of the Service would push its load onto the
/// others, so it stays ready.
fn database_state(ping: Result<(), persistence::StoreError>) -> Result<&'static str, ApiError> {
    match ping {
        Ok(()) => Ok("ok"),
        Err(persistence::StoreError::Busy) => Ok("busy"),
        Err(error) => {
            tracing::warn!(%error, "readiness: database");
            Err(ApiError::Unavailable("database unreachable".to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::database_state;
    use actix_web::ResponseError;
    use persistence::StoreError;

    #[test]
    fn a_busy_pool_stays_ready_and_an_unreachable_database_does_not() {
        assert_eq!(database_state(Ok(())).ok(), Some("ok"));
        assert_eq!(database_state(Err(StoreError::Busy)).ok(), Some("busy"));
        let down = database_state(Err(StoreError::Pool("connection refused".to_owned())));
        assert_eq!(down.err().map(|e| e.status_code().as_u16()), Some(503));
    }
}

/// Prometheus text exposition; admins only here (the counters tell a lot about the platform's
/// users and traffic). Prometheus scrapes the ops port (`server.ops_port`) instead.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(("token" = [])),
    responses((status = 200, content_type = "text/plain"), (status = 401, body = crate::error::ErrorBody),
        (status = 403, body = crate::error::ErrorBody)))]
pub async fn metrics(handle: web::Data<PrometheusHandle>, _admin: AdminUser) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}
