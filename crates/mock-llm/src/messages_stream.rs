//! The SSE form of a Messages answer, in Anthropic's order: `message_start`, `ping`,
//! `content_block_start`, one `content_block_delta` per word (or per piece of a tool's input),
//! `content_block_stop`, `message_delta`, `message_stop`; each written as produced.

use std::io;

use actix_web::HttpResponse;
use actix_web::web::Bytes;
use serde::Serialize;

use crate::config::MockConfig;
use crate::messages::{Id, MessageBody, OutBlock, Output, Reply, TOOL_INPUT, Usage};
use crate::stream::{self, Events};
use crate::words;

/// Events besides the deltas.
const FRAME_EVENTS: u32 = 6;

pub(crate) fn respond(
    config: &MockConfig,
    reply: Reply<'static>,
    cut_after: Option<u32>,
) -> HttpResponse {
    let deltas = match reply.output {
        Output::Text(words) => words,
        Output::ToolUse { .. } => TOOL_INPUT.len() as u32,
    };
    stream::paced(config, MessageEvents { reply, deltas }, cut_after)
}

struct MessageEvents {
    reply: Reply<'static>,
    deltas: u32,
}

impl Events for MessageEvents {
    fn total(&self) -> u32 {
        self.deltas + FRAME_EVENTS
    }

    fn render(&self, index: u32) -> io::Result<Bytes> {
        let opening;
        let event = match index.checked_sub(3) {
            None if index == 0 => Event::MessageStart {
                message: MessageBody {
                    id: Id("msg_", self.reply.id),
                    kind: "message",
                    role: "assistant",
                    model: &self.reply.model,
                    content: &[],
                    stop_reason: None,
                    stop_sequence: (),
                    usage: Usage {
                        output_tokens: 1,
                        ..self.reply.usage
                    },
                },
            },
            None if index == 1 => Event::Ping,
            None => {
                opening = self.reply.block(true);
                Event::ContentBlockStart {
                    index: 0,
                    content_block: &opening,
                }
            }
            Some(delta) if delta < self.deltas => Event::ContentBlockDelta {
                index: 0,
                delta: match self.reply.output {
                    Output::Text(_) => Delta::TextDelta {
                        text: words::word(delta),
                    },
                    Output::ToolUse { .. } => Delta::InputJsonDelta {
                        partial_json: TOOL_INPUT[delta as usize % TOOL_INPUT.len()],
                    },
                },
            },
            Some(delta) if delta == self.deltas => Event::ContentBlockStop { index: 0 },
            Some(delta) if delta == self.deltas + 1 => Event::MessageDelta {
                delta: StopDelta {
                    stop_reason: self.reply.stop_reason,
                    stop_sequence: (),
                },
                usage: OutputUsage {
                    output_tokens: self.reply.usage.output_tokens,
                },
            },
            Some(_) => Event::MessageStop,
        };
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(b"event: ");
        bytes.extend_from_slice(event.name().as_bytes());
        bytes.extend_from_slice(b"\ndata: ");
        serde_json::to_writer(&mut bytes, &event).map_err(io::Error::other)?;
        bytes.extend_from_slice(b"\n\n");
        Ok(Bytes::from(bytes))
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: MessageBody<'a>,
    },
    Ping,
    ContentBlockStart {
        index: u32,
        content_block: &'a OutBlock<'a>,
    },
    ContentBlockDelta {
        index: u32,
        delta: Delta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopDelta,
        usage: OutputUsage,
    },
    MessageStop,
}

impl Event<'_> {
    /// The SSE `event:` name, the same as the data's `type`.
    fn name(&self) -> &'static str {
        match self {
            Self::MessageStart { .. } => "message_start",
            Self::Ping => "ping",
            Self::ContentBlockStart { .. } => "content_block_start",
            Self::ContentBlockDelta { .. } => "content_block_delta",
            Self::ContentBlockStop { .. } => "content_block_stop",
            Self::MessageDelta { .. } => "message_delta",
            Self::MessageStop => "message_stop",
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta {
    TextDelta { text: &'static str },
    InputJsonDelta { partial_json: &'static str },
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: (),
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u32,
}
