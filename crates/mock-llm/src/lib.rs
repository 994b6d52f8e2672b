//! A local stand-in for an OpenAI-compatible provider: chat (plain and SSE), images and the model
//! list, with deterministic token counts and failure injection, so tests and benchmarks need no
//! internet. It also speaks Anthropic's Messages API (`POST /v1/messages`, key in `x-api-key`,
//! `anthropic-version` required, Anthropic's error shape), strict about the request's shape.
//!
//! Token counting: `prompt_tokens` is the number of whitespace-separated words in all messages'
//! text; the answer is N words of lorem ipsum with N = `completion_tokens` (or `[[tokens:N]]`)
//! capped by `max_tokens`/`max_completion_tokens` (then `finish_reason` is `length`). On
//! `/v1/messages` the prompt is `system` plus every message's text (tool results included), the
//! cap is `max_tokens` (then `stop_reason` is `max_tokens`), and a request with `tools` and
//! `tool_choice` `{"type":"any"}` or `{"type":"tool","name":..}` is answered with one `tool_use`
//! block (input `{"mock":true}`, 10 output tokens).
//!
//! Faults, chosen by the key (bearer, or `x-api-key`):
//! - `fail-<status>` (e.g. `fail-401`, `fail-429` with `retry-after: 1`, `fail-503`): that status;
//! - `slow-<ms>`: waits that long before answering.
//!
//! or by directives in the prompt (the last user message; an image request's `prompt`; on
//! `/v1/messages`, `system` and every message):
//! - `[[status:<code>]]`: that status (400..=599) with an OpenAI (or Anthropic) error body;
//! - `[[reject]]`: 400 `content_policy_violation`, a permanent failure;
//! - `[[sleep:<ms>]]`: waits that long before answering;
//! - `[[cut:<n>]]`: a stream closes the connection abruptly after n events (no `[DONE]`, no
//!   `message_stop`);
//! - `[[tokens:<n>]]`: an answer of n words (still capped by `max_tokens`);
//! - `[[cached:<n>]]`: n prompt tokens (at most all) were read from a cache: OpenAI's
//!   `usage.prompt_tokens_details.cached_tokens`, Anthropic's `cache_read_input_tokens` (then
//!   `input_tokens` counts only the rest);
//! - `[[written:<n>]]` (`/v1/messages`): n of the other prompt tokens were written to the cache
//!   (`cache_creation_input_tokens`; `input_tokens` counts only the rest);
//! - `[[no-usage]]` (embeddings): the answer carries no `usage`.
//!
//! Embeddings (`POST /v1/embeddings`): `input` a string, strings, a token array or token
//! arrays; each input's prompt tokens are its words (or its array's length), `usage` their sum;
//! each vector has `dimensions` (default 8) deterministic floats, base64 little-endian f32 when
//! `encoding_format` is `base64`.

mod chat;
mod config;
mod embeddings;
mod error;
mod faults;
mod images;
mod messages;
mod messages_stream;
mod server;
mod stream;
mod words;

pub use config::{CliArgs, CliError, MockConfig};
pub use server::{MockServer, start, start_with_workers};
