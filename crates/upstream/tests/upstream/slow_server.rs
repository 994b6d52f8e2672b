//! A one-connection HTTP/1.1 server that answers with a chunked SSE body written step by step,
//! for what wiremock cannot do: delays and pauses between chunks.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub enum Step {
    /// Writes these bytes as one HTTP chunk and flushes.
    Send(Vec<u8>),
    Sleep(Duration),
    /// Waits until the test releases the server.
    WaitFor(oneshot::Receiver<()>),
    /// Keeps the connection open without sending anything more.
    Stall,
}

pub fn send(text: &str) -> Step {
    Step::Send(text.as_bytes().to_vec())
}

/// Starts the server; returns its URI and a receiver of the request body it got.
pub async fn start(steps: Vec<Step>) -> (String, oneshot::Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!("http://{}", listener.local_addr().expect("addr"));
    let (body_tx, body_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let body = read_request(&mut socket).await;
        let _ = body_tx.send(serde_json::from_slice(&body).expect("request body is JSON"));
        socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            )
            .await
            .expect("write head");
        socket.flush().await.expect("flush");
        for step in steps {
            match step {
                Step::Send(bytes) => {
                    let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
                    chunk.extend_from_slice(&bytes);
                    chunk.extend_from_slice(b"\r\n");
                    if socket.write_all(&chunk).await.is_err() {
                        return; // the client went away
                    }
                    let _ = socket.flush().await;
                }
                Step::Sleep(duration) => tokio::time::sleep(duration).await,
                Step::WaitFor(release) => {
                    let _ = release.await;
                }
                Step::Stall => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            }
        }
        let _ = socket.write_all(b"0\r\n\r\n").await;
        let _ = socket.shutdown().await;
    });
    (uri, body_rx)
}

/// Reads the request head and its `content-length` body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let read = socket.read(&mut chunk).await.expect("read request");
        assert!(read > 0, "connection closed before the request head");
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|value| value.trim().parse().expect("content-length"))
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = socket.read(&mut chunk).await.expect("read body");
        assert!(read > 0, "connection closed before the request body");
        buffer.extend_from_slice(&chunk[..read]);
    }
    buffer[head_end..head_end + length].to_vec()
}
