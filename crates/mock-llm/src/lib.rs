//! A local stand-in for an OpenAI-compatible provider: chat (plain and SSE), images and the model
//! list, with deterministic token counts and failure injection, so tests and benchmarks need no
//! internet.
//!
//! Token counting: `prompt_tokens` is the number of whitespace-separated words in all messages'
//! text; the answer is N words of lorem ipsum with N = `completion_tokens` (or `[[tokens:N]]`)
//! capped by `max_tokens`/`max_completion_tokens` (then `finish_reason` is `length`).
//!
//! Faults, chosen by the bearer key:
//! - `fail-<status>` (e.g. `fail-401`, `fail-429` with `retry-after: 1`, `fail-503`): that status;
//! - `slow-<ms>`: waits that long before answering.
//!
//! or by directives in the prompt (the last user message; an image request's `prompt`):
//! - `[[status:<code>]]`: that status (400..=599) with an OpenAI error body;
//! - `[[reject]]`: 400 `content_policy_violation`, a permanent failure;
//! - `[[sleep:<ms>]]`: waits that long before answering;
//! - `[[cut:<n>]]`: a stream closes the connection abruptly after n events (no `[DONE]`);
//! - `[[tokens:<n>]]`: an answer of n words (still capped by `max_tokens`).

mod chat;
mod config;
mod error;
mod faults;
mod images;
mod server;
mod stream;

pub use config::{CliArgs, CliError, MockConfig};
pub use server::{MockServer, start, start_with_workers};
