//! The deadpool of async Postgres connections and the embedded migrations.

use std::time::Duration;

use diesel::sql_query;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use serde::Deserialize;

use crate::StoreError;

pub type Pool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;
pub type PooledConnection =
    deadpool::managed::Object<AsyncDieselConnectionManager<AsyncPgConnection>>;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// e.g. postgres://postgres@127.0.0.1:5432/ai_gateway
    pub url: String,
    pub pool_max_size: usize,
    /// How long a request waits for a free connection before failing with 503.
    pub pool_wait_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// Builds the pool; connections are opened lazily, so this succeeds while Postgres is down.
pub fn build_pool(settings: &DatabaseSettings) -> Result<Pool, StoreError> {
    // Fast recycling: no `SELECT 1` on every checkout (a broken connection fails its query and
    // is dropped by the pool); the call path checks out twice per request.
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        settings.url.clone(),
        config,
    );
    Pool::builder(manager)
        .max_size(settings.pool_max_size)
        .wait_timeout(Some(Duration::from_millis(settings.pool_wait_timeout_ms)))
        .create_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .recycle_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))
}

/// A pool whose commits do not wait for the WAL flush, for reservations (placing and releasing
/// holds) and hints that are safe to lose (a job marked published, a settled charge removed
/// from the outbox); never for moving money, nor for anything a client was promised. A hold
/// lost to a Postgres crash only weakens admission for that instant: the call's charge is still
/// settled durably by billing-worker. Waiting for the flush made every admission of one user
/// wait for a disk sync.
pub fn build_reservation_pool(settings: &DatabaseSettings) -> Result<Pool, StoreError> {
    build_pool(&with_session_setting(settings, "synchronous_commit%3Doff"))
}

/// A pool of `size` connections for the hot batched statements (see `batch`): the worker's
/// claims and completions, the settlement of charges, job submissions. Their plans are
/// pinned to what they must be at any table size, an index lookup per element of the batch
/// (a nested loop over the ids), and cached: Postgres plans each such statement once per
/// connection, not at every execution.
///
/// Left to itself Postgres would do neither. A statement taking an array is planned at every
/// execution (the plan for the real array length always looks cheaper than a generic one), and
/// a plan made while a table was still nearly empty (a fresh deployment, or a table not yet
/// analyzed) may be a scan of the whole table or a hash join, which grow with the table. With
/// sequential scans, hash joins and merge joins disabled for the session, the one plan left is
/// the lookup, whatever the statistics say. Use this pool only for statements that find their
/// rows by key; a report over a whole table belongs on the ordinary pool.
pub fn build_batch_pool(settings: &DatabaseSettings, size: usize) -> Result<Pool, StoreError> {
    let mut pinned = settings.clone();
    for setting in PINNED_PLAN_SETTINGS {
        pinned = with_session_setting(&pinned, setting);
    }
    build_pool(&DatabaseSettings {
        pool_max_size: size.max(1),
        ..pinned
    })
}

/// The session settings of [`build_batch_pool`] (URL-encoded `name=value`).
const PINNED_PLAN_SETTINGS: [&str; 4] = [
    "plan_cache_mode%3Dforce_generic_plan",
    "enable_seqscan%3Doff",
    "enable_hashjoin%3Doff",
    "enable_mergejoin%3Doff",
];

/// [`build_batch_pool`] whose commits do not wait for the WAL flush, for batched statements
/// that are safe to lose in a Postgres crash (see [`build_reservation_pool`]): a job claim,
/// whose loss sends the job back to the sweeper, while the completion fenced on that claim
/// commits durably (and, the WAL being one sequence, makes the claim durable with it).
pub fn build_relaxed_batch_pool(
    settings: &DatabaseSettings,
    size: usize,
) -> Result<Pool, StoreError> {
    build_batch_pool(
        &with_session_setting(settings, "synchronous_commit%3Doff"),
        size,
    )
}

/// `settings` with a server setting for every session of the pool (`name%3Dvalue`, URL-encoded).
/// Added to the URL's `options` parameter when it has one (a second one would replace it).
fn with_session_setting(settings: &DatabaseSettings, setting: &str) -> DatabaseSettings {
    let url = &settings.url;
    let existing = url
        .find("?options=")
        .or_else(|| url.find("&options="))
        .map(|at| at + "?options=".len());
    let url = match (existing, url.contains('?')) {
        (Some(value_at), _) => {
            let value_end = url[value_at..]
                .find('&')
                .map_or(url.len(), |e| value_at + e);
            format!(
                "{}%20-c%20{setting}{}",
                &url[..value_end],
                &url[value_end..]
            )
        }
        (None, true) => format!("{url}&options=-c%20{setting}"),
        (None, false) => format!("{url}?options=-c%20{setting}"),
    };
    DatabaseSettings {
        url,
        ..settings.clone()
    }
}

/// Readiness probe: one round trip through the pool.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get().await?;
    sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

/// The session advisory lock that lets one migration run at a time ("aigwmigr").
const MIGRATION_LOCK: i64 = 0x6169_6777_6d69_6772;

/// Applies every pending embedded migration (needs the multi-thread tokio runtime). Runs
/// started together (gateway replicas with `run_migrations`, the migration Job) take turns
/// under an advisory lock: the later ones find nothing pending, instead of failing on a table
/// the first one is creating.
pub async fn run_migrations(pool: &Pool) -> Result<(), StoreError> {
    let mut conn = pool.get().await?;
    sql_query("SELECT pg_advisory_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
        .execute(&mut conn)
        .await?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map(drop)
        .map_err(|e| StoreError::Migration(e.to_string()));
    let mut conn = harness.into_inner();
    let unlocked = sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK)
        .execute(&mut conn)
        .await;
    if unlocked.is_err() {
        // Closing the session releases the lock; never hand it back to the pool holding it.
        drop(deadpool::managed::Object::take(conn));
    }
    applied?;
    unlocked?;
    Ok(())
}
