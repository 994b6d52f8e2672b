//! What every binary needs around its business logic: layered config, logging, metrics,
//! the ops HTTP endpoints (/healthz, /readyz, /metrics), the shutdown signal and the queue
//! workers' shell.

pub mod config;
pub mod metrics;
pub mod ops;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod threads;
pub mod worker;
