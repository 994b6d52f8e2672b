//! What every request handler shares: the pool and the keys derived from settings at start.

use domain::Money;
use jsonwebtoken::{DecodingKey, EncodingKey};
use persistence::{Pool, PooledConnection};
use secrecy::{ExposeSecret, SecretString};

use crate::error::ApiError;
use crate::settings::Settings;
use catalog::{Routing, SecretBox};

pub struct AppState {
    pub pool: Pool,
    /// For holds only (see `persistence::build_reservation_pool`).
    pub reservations: Pool,
    pub jwt_encoding: EncodingKey,
    pub jwt_decoding: DecodingKey,
    pub jwt_ttl_seconds: i64,
    pub bcrypt_cost: u32,
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
    pub max_failover_attempts: u32,
    pub allow_private_callbacks: bool,
    /// Work that outlives its request (billing deliveries, hold releases).
    pub background: Background,
}

/// Runs work that must outlive its request on the main runtime (actix's per-worker runtimes
/// stop with their workers) and lets shutdown wait for it, so no charge is dropped on SIGTERM.
#[derive(Clone)]
pub struct Background {
    runtime: tokio::runtime::Handle,
    tracker: tokio_util::task::TaskTracker,
}

impl Background {
    /// Must be called on the main runtime.
    pub fn on_current_runtime() -> Background {
        Background {
            runtime: tokio::runtime::Handle::current(),
            tracker: tokio_util::task::TaskTracker::new(),
        }
    }

    pub fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(self.tracker.track_future(work));
    }

    /// Waits (up to `grace`) for everything spawned so far; returns whether all finished.
    pub async fn drain(&self, grace: std::time::Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

impl AppState {
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
        AppState {
            pool,
            reservations,
            jwt_encoding: EncodingKey::from_secret(jwt_secret),
            jwt_decoding: DecodingKey::from_secret(jwt_secret),
            jwt_ttl_seconds: settings.auth.jwt_ttl_seconds,
            bcrypt_cost: settings.auth.bcrypt_cost,
            dummy_password_hash,
            secret_box: SecretBox::new(master_key),
            max_order_amount: settings.orders.max_amount.clone(),
            payment_webhook_secret: settings.orders.payment_webhook_secret.clone(),
            payment_tolerance_seconds: settings.orders.payment_tolerance_seconds,
            broker,
            upstream,
            routing: Routing::new(upstream::KeyPool::new(&settings.upstream)),
            hold_ttl_seconds: settings.calls.hold_ttl_seconds,
            max_failover_attempts: settings.upstream.max_failover_attempts,
            allow_private_callbacks: settings.calls.allow_private_callbacks,
            background: Background::on_current_runtime(),
        }
    }

    /// Reloads the call path's routes and key pools (after an admin change, and periodically).
    pub async fn reload_routing(&self) -> Result<(), ApiError> {
        Ok(self.routing.reload(&self.pool, &self.secret_box).await?)
    }

    pub async fn conn(&self) -> Result<PooledConnection, ApiError> {
        self.pool
            .get()
            .await
            .map_err(|e| persistence::StoreError::from(e).into())
    }
}
