//! Shared by the persistence tests: a fresh, migrated database per test.

#![allow(clippy::unwrap_used, dead_code)]

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use persistence::DatabaseSettings;

pub async fn migrated_pool() -> persistence::Pool {
    let base = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("gwtest_{}", uuid::Uuid::new_v4().simple());
    let mut admin = AsyncPgConnection::establish(&format!("{base}/postgres"))
        .await
        .unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let pool = persistence::build_pool(&DatabaseSettings {
        url: format!("{base}/{name}"),
        pool_max_size: 16,
        pool_wait_timeout_ms: 5000,
        connect_timeout_ms: 5000,
    })
    .unwrap();
    persistence::run_migrations(&pool).await.unwrap();
    // Applying them again is a no-op.
    persistence::run_migrations(&pool).await.unwrap();
    pool
}
