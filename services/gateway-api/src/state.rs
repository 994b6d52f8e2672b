//! What every request handler shares: the pool and the keys derived from settings at start.

use domain::Money;
use jsonwebtoken::{DecodingKey, EncodingKey};
use persistence::batch::Batcher;
use persistence::billing::HoldRequest;
use persistence::{Pool, PooledConnection};
use secrecy::{ExposeSecret, SecretString};

use tokio_util::sync::CancellationToken;

use crate::auth::KeyCache;
use crate::error::ApiError;
use crate::settings::Settings;
use catalog::{Routing, SecretBox};

pub struct AppState {
    pub pool: Pool,
    /// For holds only (see `persistence::build_reservation_pool`); the fallback of
    /// `CallPath::reservations`.
    pub reservations: Pool,
    pub jwt_encoding: EncodingKey,
    pub jwt_decoding: DecodingKey,
    pub jwt_ttl_seconds: i64,
    /// Keys the password stamp in session tokens (see `auth::session_stamp`).
    pub session_stamp_secret: Vec<u8>,
    pub bcrypt_cost: u32,
    /// Login and registration throttles, the password-hash cap, trusted proxies.
    pub guards: crate::core::throttle::Guards,
    /// A bcrypt hash of random bytes at the configured cost (see `core::identity::login`).
    pub dummy_password_hash: String,
    pub secret_box: SecretBox,
    pub max_order_amount: Money,
    pub payment_webhook_secret: Option<SecretString>,
    pub payment_tolerance_seconds: i64,
    pub broker: messaging::Broker,
    pub upstream: upstream::UpstreamClient,
    pub routing: Routing,
    pub hold_ttl_seconds: i64,
    /// Hold statements per worker thread at once (`calls.holds_in_flight`).
    pub holds_in_flight: usize,
    pub max_failover_attempts: u32,
    /// A model call, failover and streaming included, ends this long after its admission
    /// (`upstream.total_timeout_ms`; its hold outlives it, see `Settings::validate`).
    pub call_deadline: std::time::Duration,
    /// A streaming client that takes no chunk for this long is cut off (`calls.stream_stall_ms`).
    pub stream_stall: std::time::Duration,
    pub allow_private_callbacks: bool,
    /// Resolves `callback_url` hosts (`calls.callback_hosts_file`, else DNS).
    pub callback_resolver: upstream::egress::Resolver,
    /// Work that outlives its request (billing deliveries, hold releases).
    pub background: Background,
    /// This process's credit leases (see `core::admission`).
    pub leases: std::sync::Arc<crate::core::admission::Leases>,
    /// Charges on their way to billing-worker (see `charges::ChargeSink`).
    pub charges: charges::ChargeSink,
    /// Recently checked access keys (see `auth::KeyCache`).
    pub key_cache: KeyCache,
    /// Rate, concurrency and spend limits (see `core::limits`).
    pub limits: std::sync::Arc<crate::core::limits::Limits>,
    /// Job submissions, batched into one statement (see `core::jobs::Submissions`).
    pub job_submissions: crate::core::jobs::Submissions,
    /// Job messages whose publish failed, published again once the broker takes them.
    pub job_republisher: crate::core::jobs::Republisher,
    /// Model calls by outcome since the last flush (see `core::statistics`).
    pub call_stats: crate::core::statistics::CallStats,
    /// To build each worker's `CallPath`.
    database: persistence::DatabaseSettings,
    upstream_settings: upstream::UpstreamSettings,
}

/// Runs work that must outlive its request on the main runtime (actix's per-worker runtimes
/// stop with their workers) and lets shutdown wait for it, so no charge is dropped on SIGTERM.

#[derive(Clone)]
pub struct Background {
    runtime: tokio::runtime::Handle,
    tracker: tokio_util::task::TaskTracker,
    closing: CancellationToken,
}

impl Background {
    /// Must be called on the main runtime.
    pub fn on_current_runtime() -> Background {
        Background {
            runtime: tokio::runtime::Handle::current(),
            tracker: tokio_util::task::TaskTracker::new(),
            closing: CancellationToken::new(),
        }
    }

    /// Cancelled when draining starts: long-running background loops finish up and return.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    pub fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(self.tracker.track_future(work));
    }

    /// Runs `work` on the actix worker thread it is called from (no hand-over to another
    /// thread), tracked like `spawn`. Only from a request handler. If the worker stops before
    /// `work` ends (shutdown grace exceeded), `work` is dropped.
    pub fn spawn_here(&self, work: impl std::future::Future<Output = ()> + 'static) {
        tokio::task::spawn_local(self.tracker.track_future(work));
    }

    /// Waits (up to `grace`) for everything spawned so far; returns whether all finished.
    pub async fn drain(&self, grace: std::time::Duration) -> bool {
        self.closing.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// What model calls use, one per actix worker thread: holds on the worker's own connections
/// and provider requests on the worker's own HTTP connections. A call then runs entirely on
/// the thread that accepted it, instead of waking other threads for every database and
/// provider round trip (each wake-up costs more than the work it hands over).
pub struct CallPath {
    pub reservations: Pool,
    /// Admissions of this worker's calls: the calls that arrive while earlier admissions are
    /// being written are held together, in one statement (see
    /// `persistence::billing::place_holds`).
    pub holds: Batcher<HoldRequest, Option<i64>>,
    pub upstream: upstream::UpstreamClient,
    /// This worker's charge sink: at low rates a finished call's charge is written to the
    /// outbox by this thread's own task and connection (durably: the commit waits for the WAL
    /// flush); the broker lanes are the process's (see `charges::ChargeSink::local`).
    pub charges: charges::ChargeSink,
}

/// Calls admitted in one statement at most.
const HOLD_BATCH_MAX: usize = 64;

impl AppState {
    /// A new `CallPath` for the calling worker thread, one of `workers`; the shared pool and
    /// client if one cannot be built (they were built from the same settings at start, so
    /// that is unlikely). The workers share half of `database.pool_max_size` for holds (a
    /// hold is one short statement, and a failed call's release another), and each has one
    /// connection of its own for its charges kept in the outbox first, so a replica opens at
    /// most 1.5 times that many connections plus one per worker; at most
    /// `calls.holds_in_flight` of a worker's run hold statements at once.
    pub fn call_path(&self, workers: usize) -> CallPath {
        let per_worker = (self.database.pool_max_size / 2 / workers.max(1)).max(1);
        let settings = persistence::DatabaseSettings {
            pool_max_size: per_worker,
            ..self.database.clone()
        };
        let reservations = persistence::build_relaxed_batch_pool(&settings, per_worker)
            .inspect_err(|error| tracing::error!(%error, "worker pool; using the shared one"))
            .unwrap_or_else(|_| self.reservations.clone());
        let hold_ttl_seconds = self.hold_ttl_seconds;
        let pool = reservations.clone();
        let holds = Batcher::start(
            HOLD_BATCH_MAX,
            self.holds_in_flight.min(per_worker),
            move |batch: Vec<HoldRequest>| {
                let pool = pool.clone();
                async move {
                    let mut conn = pool.get().await?;
                    persistence::billing::place_holds(&mut conn, &batch, hold_ttl_seconds).await
                }
            },
        );
        let upstream = upstream::UpstreamClient::new(&self.upstream_settings)
            .inspect_err(
                |error| tracing::error!(%error, "worker HTTP client; using the shared one"),
            )
            .unwrap_or_else(|_| self.upstream.clone());
        // One connection: the outbox-first lane runs one statement at a time. Durable commits
        // (the main pool's settings): the charge is what the answer waits for.
        let charges = persistence::build_pool(&persistence::DatabaseSettings {
            pool_max_size: 1,
            ..self.database.clone()
        })
        .inspect_err(|error| tracing::error!(%error, "worker outbox pool; using the shared sink"))
        .map_or_else(
            |_| self.charges.clone(),
            |outbox| self.charges.local(outbox),
        );
        CallPath {
            reservations,
            holds,
            upstream,
            charges,
        }
    }

    pub fn new(
        settings: &Settings,
        pool: Pool,
        reservations: Pool,
        master_key: &[u8; 32],
        dummy_password_hash: String,
        broker: messaging::Broker,
        upstream: upstream::UpstreamClient,
    ) -> AppState {
        let jwt_secret = settings.auth.jwt_secret.expose_secret().as_bytes();
        let background = Background::on_current_runtime();
        // A call's answer waits for its charge to be durable: under load the charges that
        // finish while a publish awaits its confirm share the next one; at low rates a charge
        // is kept in the outbox (the main pool: the commit waits for the WAL flush) and then
        // forwarded, and only that forwarding lingers, for company.
        let charges = charges::ChargeSink::start(
            broker.clone(),
            pool.clone(),
            &charges::SinkSettings {
                batch_max: settings.calls.billing_batch_max,
                in_flight: settings.calls.billing_publishes_in_flight,
                linger: std::time::Duration::from_millis(settings.calls.outbox_forward_linger_ms),
                outbox_first_below: settings.calls.outbox_first_below,
            },
        );
        // Grants commit with the WAL flush (the main pool): a lease lost to a Postgres crash
        // would let this process admit against money no longer reserved.
        let leases = crate::core::admission::Leases::new(
            pool.clone(),
            crate::core::admission::LeaseSettings {
                max_percent: settings.calls.lease_max_percent,
                min_calls: settings.calls.lease_min_calls,
                horizon: std::time::Duration::from_millis(settings.calls.lease_horizon_ms),
                idle: std::time::Duration::from_millis(settings.calls.lease_idle_ms),
                ttl_seconds: settings.calls.hold_ttl_seconds,
                valid_for: std::time::Duration::from_millis(
                    u64::try_from(
                        settings.calls.hold_ttl_seconds.saturating_mul(1000)
                            - settings.longest_call_ms(),
                    )
                    .unwrap_or(0),
                ),
            },
            background.clone(),
            uuid::Uuid::new_v4(),
        );
        let job_submissions = crate::core::jobs::Submissions::start(
            &settings.database,
            pool.clone(),
            settings.calls.hold_ttl_seconds,
        );
        let job_republisher = crate::core::jobs::Republisher::start(broker.clone(), &background);
        let limits = std::sync::Arc::new(crate::core::limits::Limits::new(pool.clone()));
        AppState {
            pool,
            reservations,
            jwt_encoding: EncodingKey::from_secret(jwt_secret),
            jwt_decoding: DecodingKey::from_secret(jwt_secret),
            jwt_ttl_seconds: settings.auth.jwt_ttl_seconds,
            session_stamp_secret: jwt_secret.to_vec(),
            bcrypt_cost: settings.auth.bcrypt_cost,
            guards: crate::core::throttle::Guards::new(&settings.abuse),
            dummy_password_hash,
            secret_box: SecretBox::new(master_key),
            max_order_amount: settings.orders.max_amount.clone(),
            payment_webhook_secret: settings.orders.payment_webhook_secret.clone(),
            payment_tolerance_seconds: settings.orders.payment_tolerance_seconds,
            broker,
            upstream,
            routing: Routing::new(upstream::KeyPool::new(&settings.upstream)),
            hold_ttl_seconds: settings.calls.hold_ttl_seconds,
            holds_in_flight: settings.calls.holds_in_flight,
            max_failover_attempts: settings.upstream.max_failover_attempts,
            call_deadline: settings.upstream.total_timeout(),
            stream_stall: std::time::Duration::from_millis(settings.calls.stream_stall_ms),
            allow_private_callbacks: settings.calls.allow_private_callbacks,
            callback_resolver: upstream::egress::Resolver::new(
                settings.calls.callback_hosts_file.clone(),
            ),
            background,
            leases,
            charges,
            key_cache: KeyCache::new(
                std::time::Duration::from_millis(settings.calls.key_cache_ttl_ms),
                std::time::Duration::from_millis(settings.abuse.unknown_key_cache_ttl_ms),
            ),
            limits,
            job_submissions,
            job_republisher,
            call_stats: crate::core::statistics::CallStats::default(),
            database: settings.database.clone(),
            upstream_settings: settings.upstream.clone(),
        }
    }

    /// Reloads the call path's routes and key pools (after an admin change, and periodically).
    /// Also reloads the platform's and the models' limits.
    pub async fn reload_routing(&self) -> Result<(), ApiError> {
        self.routing.reload(&self.pool, &self.secret_box).await?;
        Ok(self.limits.reload().await?)
    }

    pub async fn conn(&self) -> Result<PooledConnection, ApiError> {
        self.pool
            .get()
            .await
            .map_err(|e| persistence::StoreError::from(e).into())
    }
}
