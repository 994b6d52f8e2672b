//! The shared HTTP client and the OpenAI-compatible adapter: chat, streaming chat and image generation.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use domain::{ProviderKind, Usage};
use futures_util::StreamExt;
use reqwest::header::{ACCEPT, HeaderValue};
use serde_json::{Map, Value};

use crate::anthropic;
use crate::error::UpstreamError;
use crate::settings::UpstreamSettings;
use crate::sse::{ChatStream, StreamUsage};

/// The most of an error response body kept for the caller.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Where one call goes: the provider's API and key, and the model's names on both sides.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The API the provider speaks.
    pub kind: ProviderKind,
    /// The provider's API root, e.g. `https://api.openai.com/v1` (a trailing slash is fine).
    pub base_url: String,
    /// The provider key's secret, sent as `Authorization: Bearer` (OpenAI) or `x-api-key` (Anthropic).
    pub api_key: String,
    /// The model name the provider knows.
    pub upstream_model: String,
    /// The model name our clients send and see.
    pub public_model: String,
}

impl Target {
    /// The URL of `path` (without a leading slash) under the base URL.
    pub fn endpoint(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.base_url.trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("upstream_model", &self.upstream_model)
            .field("public_model", &self.public_model)
            .finish()
    }
}

/// A non-streaming chat completion (or embeddings list, or Anthropic message), ready for the
/// client.
#[derive(Debug, Clone)]
pub struct ChatResponse {
    /// The upstream's JSON body with `model` set to the public name.
    pub body: Bytes,
    /// The upstream's reported usage; `None` when it reported none.
    pub usage: Option<Usage>,
    /// The body is the provider's own Anthropic message (see [`UpstreamClient::messages`]),
    /// not OpenAI's shape.
    pub native: bool,
}

impl ChatResponse {
    /// An OpenAI-shaped answer with `model` set to the public name, and its usage.
    fn for_client(
        mut answer: Map<String, Value>,
        target: &Target,
    ) -> Result<ChatResponse, UpstreamError> {
        answer.insert(
            "model".to_owned(),
            Value::String(target.public_model.clone()),
        );
        let usage = answer.get("usage").and_then(parse_usage);
        let body = serde_json::to_vec(&answer)
            .map_err(|error| UpstreamError::Protocol(error.to_string()))?;
        Ok(ChatResponse {
            body: Bytes::from(body),
            usage,
            native: false,
        })
    }
}

/// An image generation answer.
#[derive(Debug, Clone)]
pub struct ImagesResponse {
    /// The upstream's JSON body (with `model`, if present, set to the public name).
    pub body: Value,
    /// The number of images in `data`.
    pub images: u32,
}

impl ImagesResponse {
    /// The usage to bill.
    pub fn usage(&self) -> Usage {
        Usage {
            images: self.images,
            ..Usage::default()
        }
    }
}

/// One pooled HTTP client for every provider; cheap to clone.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    http: reqwest::Client,
    first_byte_timeout: Duration,
    total_timeout: Duration,
    endpoints: Arc<Endpoints>,
}

/// Provider endpoint URLs already parsed, shared by a client's clones: a gateway calls a
/// handful of them (providers times paths), and parsing a URL for every call cost a few
/// percent of its CPU per call (perf: up to 5%). Bounded: past [`Endpoints::MAX`] entries it
/// starts over.
#[derive(Debug, Default)]
struct Endpoints(Mutex<HashMap<String, reqwest::Url>>);

impl Endpoints {
    const MAX: usize = 1024;

    /// The parsed URL of `path` under `target`'s base URL, or the text when it does not parse
    /// (the request then fails at send, with reqwest's error, as it would have).
    fn of(&self, target: &Target, path: &str) -> Result<reqwest::Url, String> {
        let text = target.endpoint(path);
        // A poisoned map holds only parsed URLs: use it as it is.
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(url) = known.get(&text) {
            return Ok(url.clone());
        }
        let Ok(url) = reqwest::Url::parse(&text) else {
            return Err(text);
        };
        if known.len() >= Self::MAX {
            known.clear();
        }
        known.insert(text, url.clone());
        Ok(url)
    }
}

impl UpstreamClient {
    pub fn new(settings: &UpstreamSettings) -> Result<Self, UpstreamError> {
        settings.validate().map_err(UpstreamError::Config)?;
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout())
            .pool_max_idle_per_host(settings.pool_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            // An API endpoint that redirects is misconfigured; following it would re-send the key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ai-gateway-upstream/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| UpstreamError::Config(error.to_string()))?;
        Ok(Self {
            http,
            first_byte_timeout: settings.first_byte_timeout(),
            total_timeout: settings.total_timeout(),
            endpoints: Arc::default(),
        })
    }

    /// A non-streaming chat completion. The whole exchange is bounded by the total timeout (a
    /// non-streaming upstream sends its headers only once the answer is complete).
    #[tracing::instrument(skip_all, fields(model = %target.public_model))]
    pub async fn chat(&self, target: &Target, body: Value) -> Result<ChatResponse, UpstreamError> {
        let mut request = into_object(body)?;
        if target.kind == ProviderKind::Anthropic {
            let request = anthropic::translate_request(request, &target.upstream_model, false)?;
            let bytes = self.post_json(target, "messages", &request).await?;
            let (answer, usage) =
                anthropic::translate_response(&parse_object(&bytes)?, &target.public_model);
            let body = serde_json::to_vec(&answer)
                .map_err(|error| UpstreamError::Protocol(error.to_string()))?;
            return Ok(ChatResponse {
                body: Bytes::from(body),
                usage,
                native: false,
            });
        }
        request.insert(
            "model".to_owned(),
            Value::String(target.upstream_model.clone()),
        );
        request.remove("stream");
        request.remove("stream_options");
        let bytes = self.post_json(target, "chat/completions", &request).await?;
        ChatResponse::for_client(parse_object(&bytes)?, target)
    }

    /// A streaming chat completion. Returns once the upstream answered 2xx (within the first-byte
    /// timeout), before any event was read, so the caller can still fail over.
    #[tracing::instrument(skip_all, fields(model = %target.public_model))]
    pub async fn chat_stream(
        &self,
        target: &Target,
        body: Value,
        client_wants_usage: bool,
    ) -> Result<ChatStream, UpstreamError> {
        let mut request = into_object(body)?;
        if target.kind == ProviderKind::Anthropic {
            let request = anthropic::translate_request(request, &target.upstream_model, true)?;
            let events = self.open_stream(target, "messages", &request).await?;
            let usage = StreamUsage::default();
            return Ok(ChatStream::with_usage(
                anthropic::EventStream::new(events, usage.clone()),
                usage,
                target.public_model.clone(),
                client_wants_usage,
                self.first_byte_timeout,
            ));
        }
        request.insert(
            "model".to_owned(),
            Value::String(target.upstream_model.clone()),
        );
        request.insert("stream".to_owned(), Value::Bool(true));
        // We always need the usage chunk to bill; it is hidden again from clients that did not ask.
        let options = request
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Value::Object(options) = options {
            options.insert("include_usage".to_owned(), Value::Bool(true));
        }

        let events = self
            .open_stream(target, "chat/completions", &request)
            .await?;
        Ok(ChatStream::new(
            events,
            target.public_model.clone(),
            client_wants_usage,
            self.first_byte_timeout,
        ))
    }

    /// An Anthropic Messages request passed through to an Anthropic provider as the client sent
    /// it (with the upstream model's name), answered with the provider's own message (with the
    /// public name) and its usage. Bounded by the total timeout.
    #[tracing::instrument(skip_all, fields(model = %target.public_model))]
    pub async fn messages(
        &self,
        target: &Target,
        body: Value,
    ) -> Result<ChatResponse, UpstreamError> {
        let mut request = native_request(target, body)?;
        request.remove("stream");
        let bytes = self.post_json(target, "messages", &request).await?;
        let mut answer = parse_object(&bytes)?;
        answer.insert(
            "model".to_owned(),
            Value::String(target.public_model.clone()),
        );
        let usage = answer.get("usage").and_then(anthropic::parse_usage);
        let body = serde_json::to_vec(&answer)
            .map_err(|error| UpstreamError::Protocol(error.to_string()))?;
        Ok(ChatResponse {
            body: Bytes::from(body),
            usage,
            native: true,
        })
    }

    /// [`UpstreamClient::messages`] streamed: the provider's own events, passed through (the
    /// model renamed), their usage recorded. Returns once the provider answered 2xx.
    #[tracing::instrument(skip_all, fields(model = %target.public_model))]
    pub async fn messages_stream(
        &self,
        target: &Target,
        body: Value,
    ) -> Result<ChatStream, UpstreamError> {
        let mut request = native_request(target, body)?;
        request.insert("stream".to_owned(), Value::Bool(true));
        let events = self.open_stream(target, "messages", &request).await?;
        let usage = StreamUsage::default();
        Ok(ChatStream::native(
            anthropic::EventStream::native(events, usage.clone(), target.public_model.clone()),
            usage,
            self.first_byte_timeout,
        ))
    }

    /// An embeddings call (`POST /embeddings`), bounded by the total timeout; the answer is
    /// OpenAI's embeddings list with `model` set to the public name, and its usage.
    #[tracing::instrument(skip_all, fields(model = %target.public_model))]
    pub async fn embeddings(
        &self,
        target: &Target,
        body: Value,
    ) -> Result<ChatResponse, UpstreamError> {
        let answer = self
            .post_for_model(target, domain::ModelKind::Embedding, "embeddings", body)
            .await?;
        if !answer.get("data").is_some_and(Value::is_array) {
            return Err(UpstreamError::Protocol(
                "embeddings response has no `data` array".to_owned(),
            ));
        }
        ChatResponse::for_client(answer, target)
    }

    /// An image generation (`POST /images/generations`), bounded by the total timeout.
    #[tracing::instrument(skip_all, fields(model = %target.public_model))]
    pub async fn images(
        &self,
        target: &Target,
        body: Value,
    ) -> Result<ImagesResponse, UpstreamError> {
        let mut answer = self
            .post_for_model(target, domain::ModelKind::Image, "images/generations", body)
            .await?;
        let images = answer
            .get("data")
            .and_then(Value::as_array)
            .map(Vec::len)
            .ok_or_else(|| {
                UpstreamError::Protocol("image response has no `data` array".to_owned())
            })?;
        if answer.contains_key("model") {
            answer.insert(
                "model".to_owned(),
                Value::String(target.public_model.clone()),
            );
        }
        Ok(ImagesResponse {
            body: Value::Object(answer),
            images: u32::try_from(images).unwrap_or(u32::MAX),
        })
    }

    /// POSTs an OpenAI-shaped request for the upstream model to `path` and reads the JSON
    /// object answered; refused before anything is sent when the provider serves no `kind`.
    async fn post_for_model(
        &self,
        target: &Target,
        kind: domain::ModelKind,
        path: &str,
        body: Value,
    ) -> Result<Map<String, Value>, UpstreamError> {
        if !target.kind.serves(kind) {
            return Err(UpstreamError::BadRequest {
                status: 400,
                body: serde_json::json!({"error": {
                    "message": format!("a provider of kind {} serves no {kind} models", target.kind)
                }})
                .to_string(),
            });
        }
        let mut request = into_object(body)?;
        request.insert(
            "model".to_owned(),
            Value::String(target.upstream_model.clone()),
        );
        let bytes = self.post_json(target, path, &request).await?;
        parse_object(&bytes)
    }

    /// A POST of `request` to `path`, authenticated as the provider's kind expects.
    fn post(
        &self,
        target: &Target,
        path: &str,
        request: &Map<String, Value>,
    ) -> reqwest::RequestBuilder {
        let builder = match self.endpoints.of(target, path) {
            Ok(url) => self.http.post(url),
            Err(text) => self.http.post(text),
        };
        authenticated(builder, target).json(request)
    }

    /// Lists the provider's models with the target's key: the smallest request both kinds
    /// serve (`GET /models`; it costs no tokens), to learn whether the key works. Bounded by
    /// `timeout`; the body is read (at most 1 MiB) and must be a JSON object. Returns the
    /// provider's (2xx) status.
    pub async fn list_models(
        &self,
        target: &Target,
        timeout: Duration,
    ) -> Result<u16, UpstreamError> {
        let exchange = async {
            let response = authenticated(self.http.get(target.endpoint("models")), target)
                .send()
                .await
                .map_err(UpstreamError::from_reqwest)?;
            let response = ensure_success(response).await?;
            let status = response.status().as_u16();
            let body = read_capped(response, 1024 * 1024).await?;
            parse_object(&body).map(|_| status)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    /// POSTs a streaming request; returns its body's chunks once the upstream answered 2xx
    /// within the first-byte timeout.
    async fn open_stream(
        &self,
        target: &Target,
        path: &str,
        request: &Map<String, Value>,
    ) -> Result<
        impl futures_util::Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
        UpstreamError,
    > {
        let send = async {
            let response = self
                .post(target, path, request)
                .header(ACCEPT, "text/event-stream")
                .send()
                .await
                .map_err(UpstreamError::from_reqwest)?;
            ensure_success(response).await
        };
        let response = tokio::time::timeout(self.first_byte_timeout, send)
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        Ok(response
            .bytes_stream()
            .map(|chunk| chunk.map_err(UpstreamError::from_reqwest)))
    }

    /// POSTs JSON and reads the whole 2xx body, all within the total timeout.
    async fn post_json(
        &self,
        target: &Target,
        path: &str,
        request: &Map<String, Value>,
    ) -> Result<Bytes, UpstreamError> {
        let exchange = async {
            let response = self
                .post(target, path, request)
                .send()
                .await
                .map_err(UpstreamError::from_reqwest)?;
            let response = ensure_success(response).await?;
            read_capped(response, RESPONSE_BODY_LIMIT).await
        };
        tokio::time::timeout(self.total_timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }
}

/// Authenticates a request as the provider's kind expects: `Authorization: Bearer` (OpenAI) or
/// `x-api-key` with `anthropic-version` (Anthropic).
fn authenticated(builder: reqwest::RequestBuilder, target: &Target) -> reqwest::RequestBuilder {
    match target.kind {
        ProviderKind::OpenAi => builder.bearer_auth(&target.api_key),
        ProviderKind::Anthropic => {
            // Marked sensitive like bearer_auth's header, so no debug output shows it; a key
            // that is no valid header value fails at send, as a configuration error.
            let builder = match HeaderValue::from_str(&target.api_key) {
                Ok(mut key) => {
                    key.set_sensitive(true);
                    builder.header("x-api-key", key)
                }
                Err(_) => builder.header("x-api-key", target.api_key.as_str()),
            };
            builder.header("anthropic-version", anthropic::API_VERSION)
        }
    }
}

/// The largest whole (not streamed) provider answer read: ten large images in base64 fit; a
/// provider that sends more is treated as broken, not buffered without end.
pub const RESPONSE_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Reads a whole body, refusing one larger than `limit` as a protocol error (as soon as the
/// limit is passed, without reading the rest).
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, UpstreamError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large(limit));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(UpstreamError::from_reqwest)?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn too_large(limit: usize) -> UpstreamError {
    UpstreamError::Protocol(format!(
        "the provider's answer is larger than {limit} bytes"
    ))
}

/// Passes a 2xx response on; turns any other into its classified error, keeping the start of its body.
async fn ensure_success(
    mut response: reqwest::Response,
) -> Result<reqwest::Response, UpstreamError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    let error =
        UpstreamError::from_status(status.as_u16(), String::from_utf8_lossy(&body).into_owned());
    tracing::debug!(status = status.as_u16(), error = %error, "upstream answered an error");
    Err(error)
}

/// A client's Anthropic request for an Anthropic provider, naming the upstream model.
fn native_request(target: &Target, body: Value) -> Result<Map<String, Value>, UpstreamError> {
    if target.kind != ProviderKind::Anthropic {
        return Err(UpstreamError::Config(format!(
            "a provider of kind {} takes no Anthropic request",
            target.kind
        )));
    }
    let mut request = into_object(body)?;
    request.insert(
        "model".to_owned(),
        Value::String(target.upstream_model.clone()),
    );
    Ok(request)
}

fn into_object(body: Value) -> Result<Map<String, Value>, UpstreamError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(UpstreamError::BadRequest {
            status: 400,
            body: "the request body must be a JSON object".to_owned(),
        }),
    }
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, UpstreamError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(UpstreamError::Protocol(
            "response body is not a JSON object".to_owned(),
        )),
        Err(error) => Err(UpstreamError::Protocol(format!(
            "response body is not JSON: {error}"
        ))),
    }
}

/// Reads an OpenAI `usage` object; `None` when it is null or carries no token counts.
///
/// Cached prompt tokens come from `prompt_tokens_details.cached_tokens` (OpenAI), else from
/// `prompt_cache_hit_tokens` (DeepSeek), and never exceed the prompt tokens; prompt tokens
/// written to the cache from `prompt_tokens_details.cache_write_tokens`, at most the rest.
pub(crate) fn parse_usage(usage: &Value) -> Option<Usage> {
    let usage = usage.as_object()?;
    let count = |name: &str| usage.get(name).and_then(Value::as_u64);
    let prompt_tokens = count("prompt_tokens");
    let completion_tokens = count("completion_tokens");
    if prompt_tokens.is_none() && completion_tokens.is_none() {
        return None;
    }
    let prompt_tokens = prompt_tokens.unwrap_or(0);
    let cached = usage
        .get("prompt_tokens_details")
        .and_then(|details| details.get("cached_tokens"))
        .and_then(Value::as_u64)
        .or_else(|| count("prompt_cache_hit_tokens"))
        .unwrap_or(0);
    let cached = cached.min(prompt_tokens);
    let written = usage
        .get("prompt_tokens_details")
        .and_then(|details| details.get("cache_write_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Some(Usage {
        prompt_tokens,
        completion_tokens: completion_tokens.unwrap_or(0),
        cached_prompt_tokens: cached,
        images: 0,
        cache_write_prompt_tokens: written.min(prompt_tokens - cached),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(base_url: &str) -> Target {
        Target {
            kind: ProviderKind::OpenAi,
            base_url: base_url.to_owned(),
            api_key: "sk-secret".to_owned(),
            upstream_model: "up".to_owned(),
            public_model: "pub".to_owned(),
        }
    }

    #[test]
    fn endpoints_join_with_or_without_trailing_slash() {
        assert_eq!(
            target("http://h:1/v1").endpoint("chat/completions"),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            target("http://h:1/v1/").endpoint("/chat/completions"),
            "http://h:1/v1/chat/completions"
        );
    }

    #[test]
    fn parsed_endpoints_are_the_joined_urls_kept_once_and_bounded() {
        let endpoints = Endpoints::default();
        let a = target("http://h:1/v1/");
        let first = endpoints.of(&a, "chat/completions").unwrap();
        assert_eq!(first.as_str(), "http://h:1/v1/chat/completions");
        assert_eq!(endpoints.of(&a, "/chat/completions").unwrap(), first);
        assert_eq!(
            endpoints.of(&a, "embeddings").unwrap().as_str(),
            "http://h:1/v1/embeddings"
        );
        assert_eq!(endpoints.0.lock().unwrap().len(), 2);
        // Not a URL: the text is handed back for reqwest to refuse at send; nothing is kept.
        assert_eq!(
            endpoints.of(&target("not a url"), "x"),
            Err("not a url/x".to_owned())
        );
        assert_eq!(endpoints.0.lock().unwrap().len(), 2);
        for i in 0..Endpoints::MAX + 5 {
            endpoints
                .of(&target(&format!("http://h{i}:1")), "x")
                .unwrap();
        }
        assert!(endpoints.0.lock().unwrap().len() <= Endpoints::MAX);
    }

    #[test]
    fn debug_hides_the_key() {
        assert!(!format!("{:?}", target("http://h")).contains("sk-secret"));
    }

    #[test]
    fn usage_variants() {
        let openai = json!({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}});
        assert_eq!(
            parse_usage(&openai),
            Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                cached_prompt_tokens: 4,
                images: 0,
                cache_write_prompt_tokens: 0,
            })
        );
        let written = json!({"prompt_tokens": 10, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 9}});
        assert_eq!(
            parse_usage(&written).map(|u| u.cache_write_prompt_tokens),
            Some(6),
            "at most the prompt tokens not read from the cache"
        );
        let deepseek =
            json!({"prompt_tokens": 10, "completion_tokens": 5, "prompt_cache_hit_tokens": 3});
        assert_eq!(
            parse_usage(&deepseek).map(|u| u.cached_prompt_tokens),
            Some(3)
        );
        let inconsistent = json!({"prompt_tokens": 2, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}});
        assert_eq!(
            parse_usage(&inconsistent).map(|u| u.cached_prompt_tokens),
            Some(2)
        );
        assert_eq!(parse_usage(&Value::Null), None);
        assert_eq!(parse_usage(&json!({})), None);
    }
}
