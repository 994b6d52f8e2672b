//! The shell every queue worker runs in: its common settings, the connections it opens, its
//! readiness, its ops server and the run loop that stops it gracefully.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use messaging::{Broker, BrokerSettings, Consumer, ConsumerStatus, Handler, MessagingError};
use persistence::{DatabaseSettings, Pool, StoreError};
use serde::Deserialize;

use crate::metrics::PrometheusHandle;
use crate::ops::{Readiness, serve_ops};
use crate::telemetry::LogFormat;

/// Part of the grace period kept for closing the channel, the connection and the ops server.
const SHUTDOWN_RESERVE: Duration = Duration::from_secs(2);

/// A loop a worker runs beside its consumer (a sweeper, a webhook sender); aborted at shutdown.
pub type BackgroundTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The settings every worker has, at the top level of its configuration (a service flattens
/// them into its own `Settings`, so `APP__OPS__PORT` and `ops.port` keep their names).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub broker: BrokerSettings,
    pub database: DatabaseSettings,
    pub ops: OpsSettings,
    pub log_format: LogFormat,
    /// After SIGTERM, in-flight messages get this long to finish before the process exits.
    pub shutdown_grace_seconds: u64,
}

/// [`WorkerSettings`] as written in the configuration.
#[derive(Deserialize)]
struct WorkerFields {
    broker: BrokerSettings,
    database: DatabaseSettings,
    ops: OpsSettings,
    log_format: LogFormat,
    shutdown_grace_seconds: u64,
}

// A flattened struct gets its values already typed by serde (`APP__BROKER__QUEUE_PREFIX=123`
// as a number, refused by a `String`); read back through a `config::Value`, they get the
// config crate's conversions again, as the fields had before they were flattened.
impl<'de> Deserialize<'de> for WorkerSettings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = config::Value::deserialize(deserializer)?;
        let WorkerFields {
            broker,
            database,
            ops,
            log_format,
            shutdown_grace_seconds,
        } = WorkerFields::deserialize(value).map_err(serde::de::Error::custom)?;
        Ok(WorkerSettings {
            broker,
            database,
            ops,
            log_format,
            shutdown_grace_seconds,
        })
    }
}

/// Where /healthz, /readyz and /metrics are served.
#[derive(Debug, Clone, Deserialize)]
pub struct OpsSettings {
    pub host: IpAddr,
    pub port: u16,
}

impl WorkerSettings {
    /// Refuses the values no worker can run with; each service checks its own on top.
    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.broker.prefetch == 0 {
            return invalid("broker.prefetch must be at least 1");
        }
        if self.database.pool_max_size == 0 {
            return invalid("database.pool_max_size must be at least 1");
        }
        if self.shutdown_grace_seconds == 0 {
            return invalid("shutdown_grace_seconds must be at least 1");
        }
        Ok(())
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

/// `Err(InvalidSettings(reason))`, for `validate` functions.
pub fn invalid(reason: &str) -> Result<(), WorkerError> {
    Err(WorkerError::InvalidSettings(reason.to_owned()))
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("broker: {0}")]
    Broker(#[from] MessagingError),
    #[error("ops server: {0}")]
    Ops(#[from] std::io::Error),
}

/// A worker's connections, open before its handler exists (handlers are built on the pool
/// and the broker); [`Connected::consume`] turns them into a [`Worker`].
pub struct Connected {
    pub pool: Pool,
    pub broker: Broker,
    settings: WorkerSettings,
    metrics: PrometheusHandle,
}

impl Connected {
    /// Installs the metrics recorder, opens the pool (and pings Postgres) and connects to
    /// RabbitMQ (declaring the topology).
    pub async fn open(settings: &WorkerSettings) -> Result<Connected, WorkerError> {
        settings.validate()?;
        let metrics = crate::metrics::install()?;
        let pool = persistence::build_pool(&settings.database)?;
        persistence::ping(&pool).await?;
        let broker = Broker::connect(settings.broker.clone()).await?;
        Ok(Connected {
            pool,
            broker,
            settings: settings.clone(),
            metrics,
        })
    }

    /// Subscribes `handler` to `queue` (not consuming yet) and binds the ops server. `name`
    /// ("billing worker") goes into the worker's log lines.
    pub fn consume(
        self,
        name: &'static str,
        queue: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<Worker, WorkerError> {
        let settings = &self.settings;
        let consumer = Consumer::new(&self.broker, queue, settings.broker.prefetch, handler)?
            .with_drain_timeout(
                settings
                    .shutdown_grace()
                    .saturating_sub(SHUTDOWN_RESERVE)
                    .max(Duration::from_secs(1)),
            );
        let readiness = Arc::new(WorkerReadiness {
            pool: self.pool,
            broker: self.broker.clone(),
            consumer: consumer.status(),
        });
        let listen = SocketAddr::new(settings.ops.host, settings.ops.port);
        let (ops_server, ops_port) = serve_ops(listen, readiness, self.metrics)?;
        tracing::info!(%listen, ops_port, "{name} built");
        Ok(Worker {
            name,
            broker: self.broker,
            consumer,
            ops_server,
            ops_port,
        })
    }
}

/// A built worker: connected, topology declared, ops server bound; [`Worker::run_until`]
/// starts consuming.
pub struct Worker {
    name: &'static str,
    broker: Broker,
    consumer: Consumer,
    ops_server: actix_web::dev::Server,
    ops_port: u16,
}

impl Worker {
    /// The bound ops port (useful with port 0).
    pub fn ops_port(&self) -> u16 {
        self.ops_port
    }

    /// Serves ops, runs `background` and consumes until `shutdown` resolves; then stops
    /// consuming, finishes in-flight messages, acks them, aborts `background` and closes the
    /// connection.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
        background: Vec<BackgroundTask>,
    ) -> Result<(), WorkerError> {
        let ops = self.ops_server.handle();
        let ops_task = tokio::spawn(self.ops_server);
        let background: Vec<_> = background.into_iter().map(tokio::spawn).collect();
        let consumed = self.consumer.run(shutdown).await;
        for task in &background {
            task.abort();
        }
        // Probes need no goodbye: stop at once rather than wait for idle keep-alives.
        ops.stop(false).await;
        if let Err(error) = ops_task.await {
            tracing::warn!(%error, "ops server task failed");
        }
        self.broker.close().await;
        tracing::info!("{} stopped", self.name);
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

    /// A service's settings as the services declare them: the shared part flattened in.
    #[derive(Debug, Deserialize)]
    struct ServiceSettings {
        #[serde(flatten)]
        worker: WorkerSettings,
        own: u32,
    }

    const DEFAULTS: &str = r#"
        log_format = "pretty"
        shutdown_grace_seconds = 25
        own = 1
        [broker]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        prefetch = 8
        [database]
        url = "postgres://postgres@127.0.0.1:5432/ai_gateway"
        pool_max_size = 8
        pool_wait_timeout_ms = 2000
        connect_timeout_ms = 5000
        [ops]
        host = "127.0.0.1"
        port = 9102
    "#;

    #[test]
    fn flattened_settings_keep_their_environment_variables() {
        let env: config::Map<String, String> = [
            ("APP__BROKER__URL", "amqp://rabbit:5672/%2f"),
            ("APP__BROKER__PREFETCH", "32"),
            ("APP__DATABASE__URL", "postgres://db/gateway"),
            ("APP__OPS__HOST", "0.0.0.0"),
            ("APP__OPS__PORT", "0"),
            ("APP__SHUTDOWN_GRACE_SECONDS", "7"),
            ("APP__LOG_FORMAT", "json"),
            ("APP__OWN", "2"),
            ("APP__BROKER__QUEUE_PREFIX", "123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let settings: ServiceSettings = crate::config::load_from(
            DEFAULTS,
            None,
            config::Environment::default().source(Some(env)),
        )
        .expect("settings load");
        let worker = &settings.worker;
        worker.validate().expect("valid");
        assert_eq!(worker.broker.url, "amqp://rabbit:5672/%2f");
        assert_eq!(worker.broker.prefetch, 32);
        assert_eq!(worker.database.url, "postgres://db/gateway");
        assert_eq!(worker.ops.host.to_string(), "0.0.0.0");
        assert_eq!(worker.ops.port, 0);
        assert_eq!(worker.shutdown_grace(), Duration::from_secs(7));
        assert_eq!(worker.log_format, LogFormat::Json);
        assert_eq!(settings.own, 2);
        // A number-like value still fills a text field, flattened or not.
        assert_eq!(worker.broker.queue_prefix, "123");
    }

    #[test]
    fn no_prefetch_no_pool_or_no_grace_is_refused() {
        let base: ServiceSettings = crate::config::load_from(
            DEFAULTS,
            None,
            config::Environment::default().source(Some(config::Map::new())),
        )
        .expect("defaults load");
        base.worker.validate().expect("defaults valid");
        let mut worker = base.worker.clone();
        worker.broker.prefetch = 0;
        assert!(worker.validate().is_err());
        let mut worker = base.worker.clone();
        worker.database.pool_max_size = 0;
        assert!(worker.validate().is_err());
        let mut worker = base.worker;
        worker.shutdown_grace_seconds = 0;
        assert!(matches!(
            worker.validate(),
            Err(WorkerError::InvalidSettings(_))
        ));
    }
}
