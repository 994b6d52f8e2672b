//! The process-wide Prometheus recorder behind every `metrics::counter!`/`histogram!` call.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder};

pub use metrics_exporter_prometheus::PrometheusHandle;

/// Latency buckets in seconds: 1 ms to 60 s, dense where HTTP handlers and queue handlers live.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(#[from] BuildError),
}

/// Installs the global recorder on the first call; later calls return the same handle.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    // Two threads may race here; the loser's recorder is refused by `metrics` and it then
    // reads the winner's handle.
    let installed = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS_SECONDS)?
        .install_recorder();
    match installed {
        Ok(handle) => Ok(HANDLE.get_or_init(|| handle).clone()),
        Err(error) => HANDLE.get().cloned().ok_or(MetricsError::Install(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_and_renders_recorded_metrics() {
        let first = install().expect("first install");
        let second = install().expect("second install");
        metrics::counter!("runtime_test_events_total").increment(3);
        metrics::histogram!("runtime_test_duration_seconds").record(0.02);
        let text = second.render();
        assert!(text.contains("runtime_test_events_total 3"), "{text}");
        assert!(
            text.contains("runtime_test_duration_seconds_bucket{le=\"0.025\"} 1"),
            "{text}"
        );
        // Same recorder behind both handles (render order of families is unspecified).
        assert!(first.render().contains("runtime_test_events_total 3"));
    }
}
