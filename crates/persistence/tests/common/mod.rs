//! Shared by the persistence tests: a fresh, migrated database per test.

#![allow(clippy::unwrap_used, dead_code)]

pub async fn migrated_pool() -> persistence::Pool {
    let (_, pool) = persistence::testing::migrated_database(16).await.unwrap();
    // Applying the migrations again is a no-op.
    persistence::run_migrations(&pool).await.unwrap();
    pool
}
