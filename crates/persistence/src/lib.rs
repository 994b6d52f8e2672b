//! The only crate that talks SQL: the schema, the connection pool, migrations and every query.
//!
//! Query functions take `&mut AsyncPgConnection` so callers can compose them inside one
//! transaction; money-moving functions write their ledger row themselves.

pub mod access_keys;
pub mod batch;
pub mod billing;
pub mod catalog;
mod error;
pub mod jobs;
pub mod leases;
pub mod ledger;
pub mod limits;
pub mod login_failures;
pub mod orders;
mod page;
mod pool;
mod prepared;
pub mod schema;
pub mod stats;
pub mod stored;
#[cfg(feature = "testing")]
pub mod testing;
pub mod usage;
pub mod users;
pub mod webhook_secrets;

pub use diesel_async::AsyncPgConnection;
pub use error::StoreError;
pub use page::{Page, Paged};
pub use pool::{
    DatabaseSettings, Pool, PooledConnection, build_batch_pool, build_pool,
    build_relaxed_batch_pool, build_reservation_pool, ping, run_migrations,
};
