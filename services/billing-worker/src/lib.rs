//! The billing worker: consumes `billing_log_queue` and settles charges.
//! `main.rs` only wires settings, telemetry and signals around [`Application`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use messaging::{BILLING_LOG_QUEUE, Broker};
use persistence::batch::Linger;
use persistence::{Pool, StoreError};
use runtime::worker::{Connected, Worker, WorkerSettings, invalid};
use serde::Deserialize;

pub mod settle;

use settle::{BillingHandler, Settler};

pub use runtime::worker::WorkerError;

/// The built-in configuration layer (see `runtime::config::load`).
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// Beyond a week, the money of dead calls would stay reserved for no reason an operator has.
const MAX_HOLD_RELEASE_GRACE_SECONDS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// Broker, database, ops, log format and shutdown grace (in-flight settlements get this
    /// long after SIGTERM), at the top level of the configuration.
    #[serde(flatten)]
    pub worker: WorkerSettings,
    pub billing: BillingSettings,
}

/// How charges are settled.
#[derive(Debug, Clone, Deserialize)]
pub struct BillingSettings {
    /// Charges settled in one transaction at most (1 = one transaction per charge).
    pub batch_max: usize,
    /// Once a charge arrived, how long to wait for more to share its transaction.
    pub batch_linger_ms: u64,
    /// ... but no longer than this after the latest charge (0: only `batch_linger_ms`).
    pub batch_idle_ms: u64,
    /// Batches settling at once (each on its own connection); charges arriving meanwhile
    /// wait and form the next batch. Overlaps one batch's commit with the next one's work.
    pub batches_in_flight: usize,
    /// How often expired holds are released and the outbox is settled.
    pub sweep_interval_ms: u64,
    /// A hold (or credit lease) expired for longer than this is released even while charges
    /// wait in the queue (see `settle::HoldRelease`); sooner only once the queue was seen empty.
    pub hold_release_grace_seconds: u64,
}

impl Settings {
    pub fn load() -> Result<Self, WorkerError> {
        let settings: Self = runtime::config::load(DEFAULT_CONFIG)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), WorkerError> {
        self.worker.validate()?;
        if self.billing.batch_max == 0
            || self.billing.sweep_interval_ms == 0
            || self.billing.batches_in_flight == 0
        {
            return invalid(
                "billing.batch_max, billing.batches_in_flight and billing.sweep_interval_ms must be at least 1",
            );
        }
        if self.billing.hold_release_grace_seconds == 0
            || self.billing.hold_release_grace_seconds > MAX_HOLD_RELEASE_GRACE_SECONDS
        {
            return invalid(
                "billing.hold_release_grace_seconds must be between 1 and 604800 (a week)",
            );
        }
        Ok(())
    }
}

/// A built worker: connected, topology declared, ops server bound; [`Application::run_until`]
/// starts consuming.
pub struct Application {
    worker: Worker,
    sweeper: Sweeper,
    sweep_every: Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, WorkerError> {
        settings.validate()?;
        let connected = Connected::open(&settings.worker).await?;
        let sweeper = Sweeper::new(connected.pool.clone(), connected.broker.clone())
            .with_hold_release_grace(Duration::from_secs(
                settings.billing.hold_release_grace_seconds,
            ));
        let handler = Arc::new(BillingHandler {
            settler: Settler::start(
                persistence::build_batch_pool(
                    &settings.worker.database,
                    settings.billing.batches_in_flight,
                )?,
                settings.billing.batch_max,
                settings.billing.batches_in_flight,
                Linger {
                    max: Duration::from_millis(settings.billing.batch_linger_ms),
                    idle: Duration::from_millis(settings.billing.batch_idle_ms),
                },
            ),
        });
        Ok(Application {
            worker: connected.consume("billing worker", BILLING_LOG_QUEUE, handler)?,
            sweeper,
            sweep_every: Duration::from_millis(settings.billing.sweep_interval_ms),
        })
    }

    /// The bound ops port (useful with port 0).
    pub fn ops_port(&self) -> u16 {
        self.worker.ops_port()
    }

    /// Serves ops, sweeps and consumes until `shutdown` resolves; then stops consuming,
    /// finishes in-flight settlements, acks them and closes the connection.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        let sweeper = Box::pin(sweep_forever(self.sweeper, self.sweep_every));
        self.worker.run_until(shutdown, vec![sweeper]).await
    }
}

/// The sweeper: releases holds of calls that never finished (once no charge waits in the
/// queue, or once expired for longer than the grace, see `settle::HoldRelease`) and settles
/// charges parked in the outbox while the broker was down. Safe to run in every replica (rows
/// are locked SKIP LOCKED).
pub struct Sweeper {
    pool: Pool,
    broker: Broker,
    hold_release: settle::HoldRelease,
}

impl Sweeper {
    /// A sweeper that releases expired holds only once the queue was seen empty (add the
    /// grace rule with [`Sweeper::with_hold_release_grace`], as the application does).
    pub fn new(pool: Pool, broker: Broker) -> Sweeper {
        Sweeper {
            pool,
            broker,
            hold_release: settle::HoldRelease::default(),
        }
    }

    /// Also releases holds and leases expired for longer than `grace`, whatever the queue.
    pub fn with_hold_release_grace(mut self, grace: Duration) -> Sweeper {
        self.hold_release = settle::HoldRelease::with_grace(grace);
        self
    }

    /// One pass (see `settle::sweep`): (holds released, outbox charges settled).
    pub async fn pass(&mut self) -> Result<(usize, usize), StoreError> {
        let waiting = match self.broker.waiting(BILLING_LOG_QUEUE).await {
            Ok(waiting) => Some(waiting),
            Err(error) => {
                tracing::debug!(%error, "cannot count the waiting charges");
                None
            }
        };
        let expired_for = self.hold_release.observe(waiting);
        // 1 while only holds expired for longer than the grace (or none) may be released.
        let paused = expired_for != Some(Duration::ZERO);
        metrics::gauge!("billing_hold_release_paused").set(if paused { 1.0 } else { 0.0 });
        settle::sweep(&self.pool, expired_for).await
    }
}

async fn sweep_forever(mut sweeper: Sweeper, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        match sweeper.pass().await {
            Ok((_, settled)) if settled > 0 => tracing::info!(settled, "settled outbox charges"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "sweep failed; retrying next tick"),
        }
    }
}

/// `billing-worker reconcile`: every balance against its ledger, `held` against the open holds
/// and leases, and charged usage against the ledger's charges. Returns the mismatches (empty
/// when the books are right).
pub async fn reconcile(
    settings: &Settings,
) -> Result<Vec<persistence::billing::Mismatch>, WorkerError> {
    let pool = persistence::build_pool(&settings.worker.database)?;
    let mut conn = pool.get().await.map_err(StoreError::from)?;
    Ok(persistence::billing::reconcile(&mut conn).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_defaults_are_complete_and_valid() {
        let settings: Settings = runtime::config::load(DEFAULT_CONFIG).expect("defaults load");
        settings.validate().expect("defaults valid");
        assert_eq!(settings.worker.ops.port, 9102);
        assert_eq!(settings.worker.ops.host.to_string(), "127.0.0.1");
        assert_eq!(settings.worker.broker.queue_prefix, "");
        assert_eq!(settings.billing.hold_release_grace_seconds, 600);
    }

    #[test]
    fn a_hold_release_grace_of_zero_or_beyond_a_week_is_refused() {
        let mut settings: Settings = runtime::config::load(DEFAULT_CONFIG).expect("defaults load");
        for bad in [0, 7 * 24 * 3600 + 1] {
            settings.billing.hold_release_grace_seconds = bad;
            assert!(
                matches!(settings.validate(), Err(WorkerError::InvalidSettings(_))),
                "{bad} accepted"
            );
        }
        settings.billing.hold_release_grace_seconds = 1;
        settings.validate().expect("one second is valid");
    }
}
