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
