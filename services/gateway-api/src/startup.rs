//! Building and running the HTTP application (used by `main` and by the tests).

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::{Compress, from_fn};
use actix_web::{App, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::core::identity;
use crate::error::ApiError;
use crate::middleware::{json_errors, no_store_api, record_metrics, request_id, security_headers};
use crate::openapi::ApiDoc;
use crate::routes;
use crate::settings::Settings;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Database(#[from] persistence::StoreError),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] ApiError),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("listening: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("broker: {0}")]
    Broker(#[from] messaging::MessagingError),
    #[error("upstream client: {0}")]
    Upstream(#[from] upstream::UpstreamError),
}

/// How long a stopping gateway waits for billing deliveries after the last request.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    /// The ops listener (`server.ops_port`): /healthz, /readyz and /metrics without
    /// credentials, for Prometheus and probes; not to be exposed by the ingress.
    ops: Option<(Server, u16)>,
}

/// Readiness on the ops port: Postgres answers through the pool (busy counts as ready, as on
/// the API's /readyz).
struct DatabaseReadiness(persistence::Pool);

impl runtime::ops::Readiness for DatabaseReadiness {
    fn check(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            match persistence::ping(&self.0).await {
                Ok(()) | Err(persistence::StoreError::Busy) => Ok(()),
                Err(error) => Err(format!("database: {error}")),
            }
        })
    }
}

impl Application {
    /// Connects, migrates (when configured), bootstraps the admin and binds (port 0 = any).
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        settings
            .validate()
            .map_err(|e| StartupError::Config(e.to_string()))?;
        let master_key = settings
            .master_key()
            .ok_or_else(|| StartupError::Config("security.master_key".to_owned()))?;
        let pool = persistence::build_pool(&settings.database)?;
        if settings.run_migrations {
            persistence::run_migrations(&pool).await?;
        }
        identity::bootstrap_admin(&pool, &settings.bootstrap, settings.auth.bcrypt_cost).await?;
        let dummy = random_dummy_hash(settings.auth.bcrypt_cost).await?;
        let metrics =
            runtime::metrics::install().map_err(|e| StartupError::Metrics(e.to_string()))?;
        let broker = messaging::Broker::connect(settings.broker.clone()).await?;
        let upstream = upstream::UpstreamClient::new(&settings.upstream)?;
        let reservations = persistence::build_reservation_pool(&settings.database)?;
        let state = web::Data::new(AppState::new(
            &settings,
            pool,
            reservations,
            &master_key,
            dummy,
            broker,
            upstream,
        ));
        state.reload_routing().await?;
        spawn_routing_reloads(state.clone(), settings.calls.catalog_refresh_ms);
        crate::core::admission::spawn_upkeep(&state.leases);
        crate::core::statistics::spawn_statistics(&state, &settings.stats);
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))?;
        let port = listener.local_addr()?.port();
        let ops = match settings.server.ops_port {
            Some(ops_port) => {
                let host: std::net::IpAddr = settings.server.host.parse().map_err(|_| {
                    StartupError::Config("server.host must be an IP address".to_owned())
                })?;
                Some(runtime::ops::serve_ops(
                    std::net::SocketAddr::new(host, ops_port),
                    std::sync::Arc::new(DatabaseReadiness(state.pool.clone())),
                    metrics.clone(),
                )?)
            }
            None => None,
        };
        let server = serve(listener, state.clone(), metrics, &settings)?;
        Ok(Application {
            port,
            server,
            state,
            ops,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bound ops port, when `server.ops_port` is set.
    pub fn ops_port(&self) -> Option<u16> {
        self.ops.as_ref().map(|(_, port)| *port)
    }

    pub fn pool(&self) -> persistence::Pool {
        self.state.pool.clone()
    }

    /// Runs until the server stops (actix stops gracefully on SIGINT/SIGTERM: no new
    /// connections, in-flight requests finish), then waits for the charges still being handed
    /// to billing, so a stop loses none.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let ops = self.ops.map(|(server, _)| {
            let handle = server.handle();
            tokio::spawn(server);
            handle
        });
        let served = self.server.await;
        if let Some(ops) = ops {
            ops.stop(true).await;
        }
        if !self.state.background.drain(SHUTDOWN_DRAIN).await {
            tracing::error!("billing deliveries still running at exit; their holds will expire");
        }
        // No call is in flight any more: what the leases did not use goes back to the balances.
        self.state.leases.maintain(true).await;
        served
    }

    /// A handle to stop the server from elsewhere (tests).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}

/// Keeps routes and key pools in step with changes made through other replicas.
fn spawn_routing_reloads(state: web::Data<AppState>, every_ms: u64) {
    let state = std::sync::Arc::downgrade(&state.into_inner());
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_millis(every_ms));
        ticks.tick().await;
        loop {
            ticks.tick().await;
            // Stops when the application (and so its state) is gone.
            let Some(state) = state.upgrade() else { break };
            if let Err(error) = state.reload_routing().await {
                tracing::warn!(%error, "reloading routes failed; keeping the previous ones");
            }
        }
    });
}

async fn random_dummy_hash(cost: u32) -> Result<String, StartupError> {
    let seed = uuid::Uuid::new_v4().to_string();
    identity::hash_password_at_start(&seed, cost)
        .await
        .map_err(StartupError::Bootstrap)
}

fn serve(
    listener: TcpListener,
    state: web::Data<AppState>,
    metrics: PrometheusHandle,
    settings: &Settings,
) -> Result<Server, StartupError> {
    let body_limit = settings.server.body_limit_bytes;
    let hsts_max_age_seconds = settings.security.hsts_max_age_seconds;
    let metrics = web::Data::new(metrics);
    let openapi = ApiDoc::openapi();
    // actix's own default: one worker per physical core.
    let workers = settings
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let mut server = HttpServer::new(move || {
        // Called once per worker thread: each worker gets its own call path.
        let call_path = web::Data::new(state.call_path(workers));
        App::new()
            .app_data(state.clone())
            .app_data(call_path)
            .app_data(metrics.clone())
            .app_data(json_config(body_limit))
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                ApiError::InvalidRequest(format!("invalid path parameter: {err}")).into()
            }))
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                ApiError::InvalidRequest(format!("invalid query string: {err}")).into()
            }))
            .app_data(web::PayloadConfig::new(body_limit))
            .configure(routes::configure_model_calls)
            // Compressed when the client accepts it: the console, the documentation and the
            // admin lists. Not the model calls: OpenAI's and Anthropic's SDKs send
            // `Accept-Encoding: gzip`, and gzip's setup per response (a compressor's tables,
            // zeroed) cost twice what the rest of a chat call does (callgrind: 881,000
            // instructions per call with gzip, 284,000 without), to shrink an answer of a few
            // hundred bytes; answers of 1 KiB or more were also compressed on another thread.
            .service(
                web::scope("")
                    .wrap(Compress::default())
                    .configure(routes::configure)
                    .service(web::redirect("/docs", "/docs/"))
                    .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi.clone())),
            )
            .default_service(web::to(|req: actix_web::HttpRequest| async move {
                Err::<actix_web::HttpResponse, _>(ApiError::unrouted(req.path()))
            }))
            .wrap(from_fn(json_errors))
            .wrap(from_fn(no_store_api))
            .wrap(security_headers(hsts_max_age_seconds))
            .wrap(from_fn(record_metrics))
            .wrap(from_fn(request_id))
    })
    .listen(listener)?;
    server = server
        .shutdown_timeout(settings.server.shutdown_grace_seconds)
        .workers(workers);
    Ok(server.run())
}

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _| {
            use actix_web::error::JsonPayloadError;
            let error = match &err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"))
                }
                JsonPayloadError::ContentType => {
                    ApiError::InvalidRequest("Content-Type must be application/json".to_owned())
                }
                JsonPayloadError::Deserialize(e) => {
                    ApiError::InvalidRequest(format!("invalid JSON body: {e}"))
                }
                other => ApiError::InvalidRequest(format!("invalid request body: {other}")),
            };
            error.into()
        })
}
