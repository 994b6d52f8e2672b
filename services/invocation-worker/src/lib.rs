//! The invocation worker: consumes `model_invocation_queue` and runs asynchronous jobs.
//! `main.rs` only wires settings, telemetry and signals around [`Application`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use messaging::MODEL_INVOCATION_QUEUE;
use runtime::worker::{Connected, Worker, WorkerSettings, invalid};
use serde::Deserialize;

pub mod jobs;

use jobs::{InvocationHandler, JobSettings, Runner, WebhookSettings};

pub use runtime::worker::WorkerError;

/// The built-in configuration layer (see `runtime::config::load`).
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Broker, database, ops, log format and shutdown grace (in-flight jobs get this long
    /// after SIGTERM), at the top level of the configuration.
    #[serde(flatten)]
    pub worker: WorkerSettings,
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

impl Settings {
    pub fn load() -> Result<Self, WorkerError> {
        let settings: Self = runtime::config::load(DEFAULT_CONFIG)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), WorkerError> {
        self.worker.validate()?;
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
        if !runtime::threads::RANGE.contains(&self.runtime_threads) {
            return invalid("runtime_threads must be between 1 and 64");
        }
        Ok(())
    }

    /// The tokio runtime `runtime_threads` asks for.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        runtime::threads::build(self.runtime_threads)
    }
}

/// A built worker: connected, topology declared, ops server bound; [`Application::run_until`]
/// starts consuming.
pub struct Application {
    runner: Arc<Runner>,
    worker: Worker,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, WorkerError> {
        settings.validate()?;
        let connected = Connected::open(&settings.worker).await?;
        let (pool, broker) = (&connected.pool, &connected.broker);
        let master_key = settings
            .security
            .key()
            .ok_or_else(|| WorkerError::InvalidSettings("security.master_key".to_owned()))?;
        let secrets = catalog::SecretBox::new(&master_key);
        let resolver = upstream::egress::Resolver::new(settings.webhooks.hosts_file.clone());
        let routing = Arc::new(catalog::Routing::new(upstream::KeyPool::new(
            &settings.upstream,
        )));
        routing.reload(pool, &secrets).await?;
        // One statement per published batch of charges, off the job's critical path.
        let relaxed = persistence::build_relaxed_batch_pool(&settings.worker.database, 2)?;
        // Claims and completions: batched statements with pinned, cached plans (see
        // `build_batch_pool`). A claim does not wait for the WAL flush (see
        // `build_relaxed_batch_pool`); a completion does.
        let claims =
            persistence::build_relaxed_batch_pool(&settings.worker.database, jobs::IN_FLIGHT)?;
        let completions =
            persistence::build_batch_pool(&settings.worker.database, jobs::IN_FLIGHT)?;
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
                    // Job charges are in the outbox already, with the job's completion.
                    outbox_first_below: 0,
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
            // Webhooks: only to public addresses, checked at connect time (DNS rebinding).
            http: upstream::egress::client(
                settings.webhooks.allow_private_targets,
                resolver.clone(),
            )
            .map_err(|e| WorkerError::InvalidSettings(e.to_string()))?,
            resolver,
            webhooks_due: tokio::sync::Notify::new(),
        });
        let handler = Arc::new(InvocationHandler(Arc::clone(&runner)));
        Ok(Application {
            runner,
            worker: connected.consume("invocation worker", MODEL_INVOCATION_QUEUE, handler)?,
        })
    }

    /// The bound ops port (useful with port 0).
    pub fn ops_port(&self) -> u16 {
        self.worker.ops_port()
    }

    /// Serves ops, sweeps, delivers webhooks and consumes until `shutdown` resolves; then
    /// stops consuming, finishes in-flight jobs, acks them and closes the connection.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        let sweeper = Box::pin(jobs::sweep_forever(Arc::clone(&self.runner)));
        let webhooks = Box::pin(jobs::deliver_webhooks_forever(Arc::clone(&self.runner)));
        self.worker
            .run_until(shutdown, vec![sweeper, webhooks])
            .await
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
        assert_eq!(settings.worker.ops.port, 9101);
        assert_eq!(settings.worker.ops.host.to_string(), "127.0.0.1");
        assert_eq!(settings.worker.broker.queue_prefix, "");
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
