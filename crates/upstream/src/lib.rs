//! Calls to model providers: one pooled HTTP client, the OpenAI-compatible adapter (chat, streaming
//! chat over SSE, image generation), the Anthropic Messages adapter (chat and streaming chat,
//! translated to and from OpenAI's shapes), error classification, and weighted provider-key failover.
//!
//! A typical call:
//! ```ignore
//! let answer = with_failover(&pool, provider_id, settings.max_failover_attempts, |key| {
//!     let target = Target { api_key: key.secret().to_owned(), ..base.clone() };
//!     let client = client.clone();
//!     let body = body.clone();
//!     async move { client.chat(&target, body).await }
//! })
//! .await?;
//! ```

pub mod anthropic;
mod client;
pub mod egress;
mod error;
mod pool;
mod settings;
mod sse;

pub use client::{ChatResponse, ImagesResponse, RESPONSE_BODY_LIMIT, Target, UpstreamClient};
pub use error::UpstreamError;
pub use pool::{KeyPool, PickedKey, ProviderKey, with_failover};
pub use settings::UpstreamSettings;
pub use sse::{ChatStream, StreamUsage, StreamUsageSnapshot, chat_chunks, sse_events};
