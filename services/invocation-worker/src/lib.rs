//! The invocation worker: consumes `model_invocation_queue` and runs asynchronous jobs.
//! `main.rs` only wires settings, telemetry and signals around [`Application`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use messaging::{
    Broker, BrokerSettings, Consumer, ConsumerStatus, MODEL_INVOCATION_QUEUE, MessagingError,
};
use persistence::{DatabaseSettings, Pool, StoreError};
use runtime::ops::{Readiness, serve_ops};
use runtime::telemetry::LogFormat;
use serde::Deserialize;

pub mod jobs;

use jobs::{InvocationHandler, JobSettings, Runner, WebhookSettings};

/// The built-in configuration layer (see `runtime::config::load`).
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// Part of the grace period kept for closing the channel, the connection and the ops server.
const SHUTDOWN_RESERVE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub database: DatabaseSettings,
    pub ops: OpsSettings,
    pub log_format: LogFormat,
    /// After SIGTERM, in-flight jobs get this long to finish before the process exits.
    pub shutdown_grace_seconds: u64,
    /// Threads running the worker's tasks. 1 (the default): all on one thread, with no
    /// hand-over between threads; the work is waiting on the provider, Postgres and RabbitMQ,
    /// and one thread spends about a fifth less CPU per job than two. More: a work-stealing
    /// pool, for very large results (multi-megabyte images in `b64_json`), whose parsing would
    /// otherwise pause the other jobs for a moment. Scale out with more processes first.
    pub runtime_threads: usize,
    pub jobs: JobSettings,
    pub webhooks: WebhookSettings,
    #[serde(default)]
    pub upstream: upstream::UpstreamSettings,
    /// Secrets come from the environment only; `validate` refuses a missing master key.
    #[serde(default)]
    pub security: SecuritySettings,
}

/// The master key that decrypts provider keys (the same as gateway-api's).
#[derive(Clone, Default, Deserialize)]
pub struct SecuritySettings {
    /// Base64 of 32 bytes, from APP__SECURITY__MASTER_KEY.
    pub master_key: String,
}

impl std::fmt::Debug for SecuritySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecuritySettings { master_key: *** }")
    }
}

impl SecuritySettings {
    pub fn key(&self) -> Option<[u8; 32]> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(self.master_key.trim())
            .ok()?
            .try_into()
            .ok()
    }
}

/// Where /healthz, /readyz and /metrics are served.
#[derive(Debug, Clone, Deserialize)]
pub struct OpsSettings {
    pub host: IpAddr,
    pub port: u16,
}

impl Settings {
    pub fn load() -> Result<Self, WorkerError> {
        let settings: Self = runtime::config::load(DEFAULT_CONFIG)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), WorkerError> {
        let invalid = |reason: &str| Err(WorkerError::InvalidSettings(reason.to_owned()));
        if self.broker.prefetch == 0 {
            return invalid("broker.prefetch must be at least 1");
        }
        if self.database.pool_max_size == 0 {
            return invalid("database.pool_max_size must be at least 1");
        }
        if self.security.key().is_none() {
            return invalid(
                "security.master_key must be base64 of 32 bytes (APP__SECURITY__MASTER_KEY)",
            );
        }
        if self.jobs.lease_seconds * 1000 <= self.upstream.total_timeout_ms as i64 {
            return invalid("jobs.lease_seconds must exceed upstream.total_timeout_ms");
        }
        if self.jobs.max_attempts < 1 || self.jobs.sweep_interval_ms == 0 {
            return invalid("jobs.max_attempts and jobs.sweep_interval_ms must be at least 1");
        }
        if self.jobs.billing_linger_ms > 1_000 {
            return invalid("jobs.billing_linger_ms must be at most 1000");
        }
        if !(1..=64).contains(&self.runtime_threads) {
            return invalid("runtime_threads must be between 1 and 64");
        }
        if self.shutdown_grace_seconds == 0 {
            return invalid("shutdown_grace_seconds must be at least 1");
        }
        Ok(())
    }

    /// The tokio runtime `runtime_threads` asks for.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = if self.runtime_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(self.runtime_threads);
            builder
        };
        builder.enable_all().build()
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] runtime::config::ConfigError),
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    #[error(transparent)]
    Metrics(#[from] runtime::metrics::MetricsError),
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("broker: {0}")]
    Broker(#[from] MessagingError),
    #[error("ops server: {0}")]
    Ops(#[from] std::io::Error),
}

/// A built worker: connected, topology declared, ops server bound; [`Application::run_until`]
/// starts consuming.
pub struct Application {
    runner: Arc<Runner>,
    broker: Broker,
    consumer: Consumer,
    ops_server: actix_web::dev::Server,
    ops_port: u16,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, WorkerError> {
        settings.validate()?;
        let metrics = runtime::metrics::install()?;
        let pool = persistence::build_pool(&settings.database)?;
        persistence::ping(&pool).await?;
        let broker = Broker::connect(settings.broker.clone()).await?;
        let master_key = settings
            .security
            .key()
            .ok_or_else(|| WorkerError::InvalidSettings("security.master_key".to_owned()))?;
        let secrets = catalog::SecretBox::new(&master_key);
        let routing = Arc::new(catalog::Routing::new(upstream::KeyPool::new(
            &settings.upstream,
        )));
        routing.reload(&pool, &secrets).await?;
        // One statement per published batch of charges, off the job's critical path.
        let relaxed = persistence::build_relaxed_batch_pool(&settings.database, 2)?;
        // Claims and completions: batched statements with pinned, cached plans (see
        // `build_batch_pool`). A claim does not wait for the WAL flush (see
        // `build_relaxed_batch_pool`); a completion does.
        let claims = persistence::build_relaxed_batch_pool(&settings.database, jobs::IN_FLIGHT)?;
        let completions = persistence::build_batch_pool(&settings.database, jobs::IN_FLIGHT)?;
        let runner = Arc::new(Runner {
            pool: pool.clone(),
            claims: jobs::start_claims(claims, settings.jobs.lease_seconds),
            completions: jobs::start_completions(completions),
            // One publish at once: charges that finish meanwhile share the next message, and
            // each waits in the outbox only about one confirm plus the linger (billing-worker's
            // sweeper settles what it finds there in one transaction across users, which
            // concurrent holds must wait for). Forgetting a published charge's outbox row does
            // not wait for the WAL flush: losing it only makes the sweeper settle it again.
            charges: charges::ChargeSink::start(
                broker.clone(),
                relaxed,
                &charges::SinkSettings {
                    batch_max: jobs::BATCH_MAX,
                    in_flight: 1,
                    linger: Duration::from_millis(settings.jobs.billing_linger_ms),
                },
            ),
            broker: broker.clone(),
            routing,
            secrets,
            upstream: upstream::UpstreamClient::new(&settings.upstream)
                .map_err(|e| WorkerError::InvalidSettings(e.to_string()))?,
            jobs: settings.jobs.clone(),
            webhooks: settings.webhooks.clone(),
            max_failover_attempts: settings.upstream.max_failover_attempts,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| WorkerError::InvalidSettings(e.to_string()))?,
            webhooks_due: tokio::sync::Notify::new(),
        });
        let consumer = Consumer::new(
            &broker,
            MODEL_INVOCATION_QUEUE,
            settings.broker.prefetch,
            Arc::new(InvocationHandler(Arc::clone(&runner))),
        )?
        .with_drain_timeout(
            settings
                .shutdown_grace()
                .saturating_sub(SHUTDOWN_RESERVE)
                .max(Duration::from_secs(1)),
        );
        let readiness = Arc::new(WorkerReadiness {
            pool,
            broker: broker.clone(),
            consumer: consumer.status(),
        });
        let listen = SocketAddr::new(settings.ops.host, settings.ops.port);
        let (ops_server, ops_port) = serve_ops(listen, readiness, metrics)?;
        tracing::info!(%listen, ops_port, "invocation worker built");
        Ok(Application {
            runner,
            broker,
            consumer,
            ops_server,
            ops_port,
        })
    }

    /// The bound ops port (useful with port 0).
    pub fn ops_port(&self) -> u16 {
        self.ops_port
    }

    /// Serves ops and consumes until `shutdown` resolves; then stops consuming, finishes
    /// in-flight messages, acks them and closes the connection.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        let ops = self.ops_server.handle();
        let ops_task = tokio::spawn(self.ops_server);
        let sweeper = tokio::spawn(jobs::sweep_forever(Arc::clone(&self.runner)));
        let webhooks = tokio::spawn(jobs::deliver_webhooks_forever(Arc::clone(&self.runner)));
        let consumed = self.consumer.run(shutdown).await;
        sweeper.abort();
        webhooks.abort();
        // Probes need no goodbye: stop at once rather than wait for idle keep-alives.
        ops.stop(false).await;
        if let Err(error) = ops_task.await {
            tracing::warn!(%error, "ops server task failed");
        }
        self.broker.close().await;
        tracing::info!("invocation worker stopped");
        Ok(consumed?)
    }
}

/// Ready when Postgres answers, RabbitMQ is connected and the consumer is subscribed.
struct WorkerReadiness {
    pool: Pool,
    broker: Broker,
    consumer: ConsumerStatus,
}

impl Readiness for WorkerReadiness {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            if !self.broker.is_connected() {
                return Err("RabbitMQ is not connected".to_owned());
            }
            if !self.consumer.is_running() {
                return Err("the queue consumer is not running".to_owned());
            }
            persistence::ping(&self.pool)
                .await
                .map_err(|error| format!("Postgres is not reachable: {error}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_defaults_are_complete_and_valid() {
        let mut settings: Settings = runtime::config::load(DEFAULT_CONFIG).expect("defaults load");
        assert!(
            settings.validate().is_err(),
            "the master key has no default"
        );
        settings.security.master_key = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".to_owned();
        settings.validate().expect("defaults valid");
        assert_eq!(settings.ops.port, 9101);
        assert_eq!(settings.ops.host.to_string(), "127.0.0.1");
        assert_eq!(settings.broker.queue_prefix, "");
        assert_eq!(settings.jobs.billing_linger_ms, 25);
        assert_eq!(settings.runtime_threads, 1);
        for threads in [1, 2] {
            settings.runtime_threads = threads;
            let runtime = settings.runtime().expect("runtime");
            assert_eq!(runtime.block_on(async { 6 * 7 }), 42);
        }
        settings.runtime_threads = 0;
        assert!(settings.validate().is_err(), "no thread");
        settings.runtime_threads = 1;
        settings.jobs.billing_linger_ms = 1_001;
        assert!(settings.validate().is_err(), "a linger over a second");
    }
}
