//! Test support for the services' ops servers (feature `testing`).

use std::time::{Duration, Instant};

/// Asserts the ops server on 127.0.0.1:`port` stops accepting connections within `within`.
/// A stopped server's worker thread may still answer on a connection it already had for a
/// moment (the workers stop it without waiting for that thread), so each look opens a new one.
pub async fn assert_port_closes(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "port {port} still accepts connections {within:?} after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
