//! Server-sent events: pacing and cutting any streamed answer, and the SSE form of a chat answer
//! (one `chat.completion.chunk` per word, written as produced).

use std::io;
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::web::Bytes;
use futures_util::stream;
use serde::Serialize;

use crate::chat::{Answer, CompletionId, Usage};
use crate::config::MockConfig;
use crate::words;

/// The events of an SSE answer, each rendered only when the client is ready for it.
pub(crate) trait Events: 'static {
    fn total(&self) -> u32;
    fn render(&self, index: u32) -> io::Result<Bytes>;
}

/// Sends `events` lazily, pausing the configured delay between two, and closes the connection
/// abruptly after `cut_after` events (`[[cut:N]]`).
pub(crate) fn paced(
    config: &MockConfig,
    events: impl Events,
    cut_after: Option<u32>,
) -> HttpResponse {
    let pacer = Pacer {
        total: events.total(),
        events,
        cut_after,
        delay: Duration::from_millis(config.stream_chunk_delay_ms),
        next: 0,
    };
    let body = stream::unfold(pacer, |mut pacer| async move {
        if pacer.next == pacer.total {
            return None;
        }
        if pacer.cut_after == Some(pacer.next) {
            // Let the dispatcher flush what was sent, then fail the body: actix closes the
            // connection without the final chunk, like an upstream dying mid-stream.
            tokio::time::sleep(Duration::from_millis(10)).await;
            pacer.next = pacer.total;
            let cut = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock-llm [[cut]] fault: stream cut on purpose",
            );
            return Some((Err(cut), pacer));
        }
        if pacer.next > 0 && !pacer.delay.is_zero() {
            tokio::time::sleep(pacer.delay).await;
        }
        let event = pacer.events.render(pacer.next);
        pacer.next += 1;
        Some((event, pacer))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

struct Pacer<E> {
    events: E,
    total: u32,
    cut_after: Option<u32>,
    delay: Duration,
    next: u32,
}

/// Events: the words (at least one, carrying `role` first), the `finish_reason` chunk, the usage
/// chunk when asked, then `[DONE]`.
pub(crate) fn respond(
    config: &MockConfig,
    answer: Answer,
    model: &str,
    include_usage: bool,
    cut_after: Option<u32>,
) -> HttpResponse {
    let words = answer.completion_tokens.max(1);
    let chunks = Chunks {
        answer,
        model: model.into(),
        include_usage,
        words,
        total: words + 2 + u32::from(include_usage),
    };
    paced(config, chunks, cut_after)
}

struct Chunks {
    answer: Answer,
    model: Box<str>,
    include_usage: bool,
    words: u32,
    total: u32,
}

impl Events for Chunks {
    fn total(&self) -> u32 {
        self.total
    }

    fn render(&self, index: u32) -> io::Result<Bytes> {
        if index + 1 == self.total {
            return Ok(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        let word_choice;
        let finish_choice;
        let (choices, usage): (&[ChunkChoice], Option<Usage>) = if index < self.words {
            let content = if self.answer.completion_tokens == 0 {
                ""
            } else {
                words::word(index)
            };
            word_choice = [ChunkChoice::delta(Delta {
                role: (index == 0).then_some("assistant"),
                content: Some(content),
            })];
            (&word_choice, None)
        } else if index == self.words {
            finish_choice = [ChunkChoice {
                finish_reason: Some(self.answer.finish_reason),
                ..ChunkChoice::delta(Delta::default())
            }];
            (&finish_choice, None)
        } else {
            (&[], Some(self.answer.usage()))
        };
        let chunk = Chunk {
            id: CompletionId(self.answer.id),
            object: "chat.completion.chunk",
            created: self.answer.created,
            model: &self.model,
            system_fingerprint: (),
            choices,
            // OpenAI sends `"usage": null` on every chunk but the last once usage was asked for.
            usage: self.include_usage.then_some(usage),
        };
        let mut event = Vec::with_capacity(256);
        event.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut event, &chunk).map_err(io::Error::other)?;
        event.extend_from_slice(b"\n\n");
        Ok(Bytes::from(event))
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: CompletionId,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: (),
    choices: &'a [ChunkChoice],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

impl ChunkChoice {
    fn delta(delta: Delta) -> Self {
        Self {
            index: 0,
            delta,
            logprobs: (),
            finish_reason: None,
        }
    }
}

#[derive(Default, Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'static str>,
}
