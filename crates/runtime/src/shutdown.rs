//! The process shutdown trigger: SIGINT (Ctrl-C) or SIGTERM (Kubernetes, docker stop).

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    let sigint = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => tracing::info!("SIGINT received, shutting down"),
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    let sigterm = async {
        match unix_signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
                tracing::info!("SIGTERM received, shutting down");
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = sigint => {}
        () = sigterm => {}
    }
}

/// The work did not finish within the grace period after the shutdown signal.
#[derive(Debug, thiserror::Error)]
#[error("shutdown did not complete within {0:?}")]
pub struct GraceExceeded(pub std::time::Duration);

/// Runs `run(stop)`, where `stop` resolves when `trigger` does; from that moment the run has
/// `grace` to finish, after which this returns `Err` so the process can exit anyway.
pub async fn with_grace<R, Fut>(
    grace: std::time::Duration,
    trigger: impl std::future::Future<Output = ()> + Send + 'static,
    run: R,
) -> Result<Fut::Output, GraceExceeded>
where
    R: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future,
{
    // The trigger is watched here, not through `stop`: a run that never looks at `stop` must
    // still be cut off after the grace.
    let (fired, watch) = tokio::sync::watch::channel(false);
    let mut seen = watch.clone();
    let stop = Box::pin(async move {
        let _ = seen.wait_for(|fired| *fired).await;
    });
    let work = run(stop);
    tokio::pin!(work);
    tokio::pin!(trigger);
    tokio::select! {
        output = &mut work => return Ok(output),
        () = &mut trigger => {}
    }
    let _ = fired.send(true);
    tokio::select! {
        output = &mut work => Ok(output),
        () = tokio::time::sleep(grace) => Err(GraceExceeded(grace)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_run_that_stops_in_time_returns_its_output() {
        let output = with_grace(Duration::from_secs(1), async {}, |stop| async move {
            stop.await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        })
        .await;
        assert_eq!(output.ok(), Some(7));
    }

    #[tokio::test]
    async fn a_run_that_ignores_the_signal_is_cut_off_after_the_grace() {
        let started = std::time::Instant::now();
        let output = with_grace(Duration::from_millis(100), async {}, |_stop| async {
            std::future::pending::<()>().await;
        })
        .await;
        assert!(output.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn without_a_signal_there_is_no_deadline() {
        let output = with_grace(
            Duration::from_millis(10),
            std::future::pending::<()>(),
            |_stop| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                "done"
            },
        )
        .await;
        assert_eq!(output.ok(), Some("done"));
    }
}
