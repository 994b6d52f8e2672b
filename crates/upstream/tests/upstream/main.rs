//! Tests of the upstream crate against mock providers (wiremock, or a hand-written slow SSE server).

mod anthropic;
mod failover;
mod openai;
mod slow_server;
mod streaming;

use std::time::Duration;

use domain::ProviderKind;
use upstream::{Target, UpstreamClient, UpstreamSettings};

pub const UPSTREAM_MODEL: &str = "gpt-upstream-2024";
pub const PUBLIC_MODEL: &str = "our-chat";

pub fn settings() -> UpstreamSettings {
    UpstreamSettings {
        connect_timeout_ms: 1_000,
        first_byte_timeout_ms: 2_000,
        total_timeout_ms: 5_000,
        ..UpstreamSettings::default()
    }
}

pub fn client_with(settings: &UpstreamSettings) -> UpstreamClient {
    UpstreamClient::new(settings).expect("client builds")
}

pub fn client() -> UpstreamClient {
    client_with(&settings())
}

/// `base` is the server's URI; the provider's API root is under `/v1`.
pub fn target(base: &str, api_key: &str) -> Target {
    Target {
        kind: ProviderKind::OpenAi,
        base_url: format!("{base}/v1"),
        api_key: api_key.to_owned(),
        upstream_model: UPSTREAM_MODEL.to_owned(),
        public_model: PUBLIC_MODEL.to_owned(),
    }
}

pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
