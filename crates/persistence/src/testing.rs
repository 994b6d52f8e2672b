//! Test support (feature `testing`): a fresh, migrated database per test, named `gwtest_*` so
//! `make test` can drop what a crashed run left.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::{DatabaseSettings, Pool, StoreError};

/// The server tests use: `TEST_POSTGRES_URL` or the local one.
pub fn postgres_base_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Creates an empty `gwtest_<uuid>` database and returns its URL.
pub async fn create_database() -> Result<String, StoreError> {
    let base = postgres_base_url();
    let name = format!("gwtest_{}", uuid::Uuid::new_v4().simple());
    let mut admin = AsyncPgConnection::establish(&format!("{base}/postgres"))
        .await
        .map_err(|e| {
            StoreError::Pool(format!(
                "Postgres must run on {base} (make test starts it): {e}"
            ))
        })?;
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    Ok(format!("{base}/{name}"))
}

/// A new database with every migration applied, and a pool of `max_size` connections to it.
pub async fn migrated_database(max_size: usize) -> Result<(String, Pool), StoreError> {
    let url = create_database().await?;
    let pool = crate::build_pool(&DatabaseSettings {
        url: url.clone(),
        pool_max_size: max_size,
        pool_wait_timeout_ms: 5000,
        connect_timeout_ms: 5000,
    })?;
    crate::run_migrations(&pool).await?;
    Ok((url, pool))
}
