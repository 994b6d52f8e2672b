//! The HTTP server: routes, key checks (bearer, or `x-api-key` on Anthropic's route), call
//! counters, and the handle tests hold.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use actix_web::dev::ServerHandle;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use tokio::task::JoinHandle;

use crate::config::MockConfig;
use crate::error::{AnthropicError, MockError};
use crate::{chat, embeddings, images, messages};

/// Workers of a server started by [`start`]: enough for tests, few threads per test.
const TEST_WORKERS: usize = 2;
/// Prompts can be long; OpenAI accepts far more than actix's 256 KiB default.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How long `stop` lets in-flight answers (streams included) finish.
const SHUTDOWN_GRACE_SECS: u64 = 5;

/// Starts the mock on `host:port` (port 0 picks a free one) with two workers.
pub async fn start(config: MockConfig, host: &str, port: u16) -> io::Result<MockServer> {
    start_with_workers(config, host, port, TEST_WORKERS).await
}

/// Starts the mock with `workers` threads; the server runs until [`MockServer::stop`] or drop.
pub async fn start_with_workers(
    config: MockConfig,
    host: &str,
    port: u16,
    workers: usize,
) -> io::Result<MockServer> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "host has no address"))?;
    let state = web::Data::new(State {
        config,
        counters: Counters::default(),
    });
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .configure(routes)
    })
    .workers(workers.max(1))
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_GRACE_SECS)
    .bind(addr)?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| io::Error::other("server bound no address"))?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::debug!(%bound, "mock-llm started");
    Ok(MockServer {
        addr: reachable(bound),
        handle,
        task: Some(task),
        state,
    })
}

fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(HttpResponse::Ok))
        .service(
            web::scope("/v1")
                .route("/chat/completions", web::post().to(chat_completions))
                .route("/images/generations", web::post().to(image_generations))
                .route("/embeddings", web::post().to(embeddings))
                .route("/messages", web::post().to(anthropic_messages))
                .route("/models", web::get().to(models)),
        );
}

struct State {
    config: MockConfig,
    counters: Counters,
}

impl State {
    /// Counts a model call made with `key` (read from the route's header) and returns the key.
    fn admit<'r>(&self, key: Option<&'r str>) -> Result<&'r str, MockError> {
        self.counters.record(key);
        key.ok_or(MockError::MissingKey)
    }
}

async fn chat_completions(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
) -> Result<HttpResponse, MockError> {
    let key = state.admit(bearer_key(&request))?;
    chat::complete(&state.config, key, &body).await
}

async fn image_generations(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
) -> Result<HttpResponse, MockError> {
    let key = state.admit(bearer_key(&request))?;
    images::generate(&state.config, key, &body).await
}

async fn embeddings(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
) -> Result<HttpResponse, MockError> {
    let key = state.admit(bearer_key(&request))?;
    embeddings::embed(&state.config, key, &body).await
}

/// Anthropic's Messages API: the key comes from `x-api-key`, errors have Anthropic's shape.
async fn anthropic_messages(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<State>,
) -> Result<HttpResponse, AnthropicError> {
    let key = state.admit(api_key(&request))?;
    let version = request
        .headers()
        .get("anthropic-version")
        .and_then(|version| version.to_str().ok());
    messages::create(&state.config, key, version, &body).await
}

const MODELS: &str = r#"{"object":"list","data":[
{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"mock-llm"},
{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"mock-llm"},
{"id":"dall-e-3","object":"model","created":1698785189,"owned_by":"mock-llm"}]}"#;

/// Any model name is answered; this list only serves clients that look before they call (and
/// key checks: the key may come as a bearer or as `x-api-key`, and its faults apply).
async fn models(request: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, MockError> {
    let key = bearer_key(&request)
        .or_else(|| api_key(&request))
        .ok_or(MockError::MissingKey)?;
    crate::faults::before_answer(&state.config, key).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(MODELS))
}

fn bearer_key(request: &HttpRequest) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!key.is_empty()).then_some(key)
}

fn api_key(request: &HttpRequest) -> Option<&str> {
    let key = request.headers().get("x-api-key")?.to_str().ok()?.trim();
    (!key.is_empty()).then_some(key)
}

/// Model calls served, in total and per key (bearer or `x-api-key`).
#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    by_key: RwLock<HashMap<Box<str>, AtomicU64>>,
}

impl Counters {
    fn record(&self, key: Option<&str>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let Some(key) = key else { return };
        // A known key needs only the shared lock; the write lock is taken once per new key.
        if let Some(count) = self
            .by_key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.by_key
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.into())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    fn with_key(&self, key: &str) -> u64 {
        self.by_key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }
}

/// A server bound to "any address" is reached through loopback.
fn reachable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

/// A running mock. Dropping it stops the server without waiting; [`MockServer::stop`] lets
/// in-flight answers finish.
pub struct MockServer {
    addr: SocketAddr,
    handle: ServerHandle,
    task: Option<JoinHandle<io::Result<()>>>,
    state: web::Data<State>,
}

impl MockServer {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address clients connect to (loopback when bound to 0.0.0.0 or ::).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, e.g. `http://127.0.0.1:9200/v1`; Anthropic's Messages API is
    /// `POST {base_url}/messages`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received on the model endpoints (chat, images, messages), whatever their outcome.
    pub fn calls(&self) -> u64 {
        self.state.counters.calls.load(Ordering::Relaxed)
    }

    /// Requests received on the model endpoints with `Authorization: Bearer <key>` (or, on
    /// `/v1/messages`, `x-api-key: <key>`).
    pub fn calls_with_key(&self, key: &str) -> u64 {
        self.state.counters.with_key(key)
    }

    /// Stops accepting, lets in-flight answers finish (up to a few seconds) and waits.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "mock-llm stopped with an error"),
                Err(error) => tracing::warn!(%error, "mock-llm server task failed"),
            }
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if self.task.is_some() {
            // The stop command is sent now; awaiting the returned future is optional.
            drop(self.handle.stop(false));
        }
    }
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}
