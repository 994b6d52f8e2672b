//! `POST /v1/messages`: Anthropic's Messages API (`anthropic-version: 2023-06-01`). The request is
//! checked strictly, so that a gateway translating badly from OpenAI's shape is caught; the answer
//! has the chat route's words, token counts and faults.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use actix_web::HttpResponse;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use crate::config::MockConfig;
use crate::error::{AnthropicError, MockError};
use crate::faults::{self, Directives};
use crate::messages_stream;
use crate::words::{self, Length, Lorem, PromptTokens};

/// The `anthropic-version` values Anthropic accepts.
const VERSIONS: [&str; 2] = ["2023-06-01", "2023-01-01"];
/// The block types a message's content may hold.
const BLOCK_TYPES: [&str; 7] = [
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
];
/// The block types a `tool_result`'s content may hold.
const TOOL_RESULT_BLOCK_TYPES: [&str; 4] = ["text", "image", "document", "search_result"];
/// Output tokens reported for a `tool_use` answer (at most `max_tokens`).
const TOOL_USE_TOKENS: u32 = 10;

/// The fields the mock reads or checks; everything else (temperature, metadata, ...) is accepted
/// and ignored. Strings borrow from the request body.
#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    max_tokens: u32,
    #[serde(borrow)]
    messages: Vec<Object<Message<'a>>>,
    /// A string or an array of text blocks.
    #[serde(borrow, default)]
    system: Option<Content<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    /// Only checked: no answer ever contains one.
    #[serde(default, rename = "stop_sequences")]
    _stop_sequences: Option<Vec<String>>,
    #[serde(borrow, default)]
    tools: Option<Vec<Object<Tool<'a>>>>,
    #[serde(borrow, default)]
    tool_choice: Option<Object<ToolChoice<'a>>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: Content<'a>,
}

/// One content block. The fields of every kind the mock reads are here; which ones a kind needs
/// is checked after parsing, for errors that say where the problem is.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Cow<'a, str>,
    /// `image` and `document`.
    #[serde(default)]
    source: Option<Object<IgnoredAny>>,
    /// `tool_use`.
    #[serde(borrow, default)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(default)]
    input: Option<Object<IgnoredAny>>,
    /// `tool_result`.
    #[serde(borrow, default)]
    tool_use_id: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(rename = "input_schema")]
    _input_schema: Object<IgnoredAny>,
}

#[derive(Deserialize)]
struct ToolChoice<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
}

/// A message's (or `system`'s, or a `tool_result`'s) content: a string or an array of blocks.
enum Content<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<Object<Block<'a>>>),
}

impl Content<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Self::Text(text) => text.is_empty(),
            Self::Blocks(blocks) => blocks.is_empty(),
        }
    }

    /// The texts that make the prompt: strings, text blocks and the texts of tool results.
    fn for_each_text<F: FnMut(&str)>(&self, visit: &mut F) {
        match self {
            Self::Text(text) => visit(text),
            Self::Blocks(blocks) => {
                for block in blocks {
                    match block.kind.as_ref() {
                        "text" => visit(&block.text),
                        "tool_result" => {
                            if let Some(content) = &block.content {
                                content.for_each_text(visit);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ContentVisitor(PhantomData))
    }
}

struct ContentVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ContentVisitor<'a> {
    type Value = Content<'a>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string or an array of content blocks")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        while let Some(block) = seq.next_element()? {
            blocks.push(block);
        }
        Ok(Content::Blocks(blocks))
    }
}

/// A `T` read only from a JSON object: serde's derive would also take an array of the fields in
/// order, which no client means to send. `Object<IgnoredAny>` is any object.
struct Object<T>(T);

impl<T> Deref for Object<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(MapOnly(deserializer)).map(Object)
    }
}

/// A deserializer that reads every value as a map.
struct MapOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

impl MessagesRequest<'_> {
    /// What serde's types cannot say, with the path of the offending field.
    fn check(&self) -> Result<(), String> {
        if self.max_tokens == 0 {
            return Err("max_tokens: must be greater than or equal to 1".to_owned());
        }
        if let Some(Content::Blocks(blocks)) = &self.system {
            for (index, block) in blocks.iter().enumerate() {
                check_block(block, &["text"], &[])
                    .map_err(|error| format!("system.{index}.{error}"))?;
            }
        }
        let last = self
            .messages
            .len()
            .checked_sub(1)
            .ok_or("messages: at least one message is required")?;
        let mut tool_use_ids: Vec<&str> = Vec::new();
        for (index, message) in self.messages.iter().enumerate() {
            let assistant = match message.role.as_ref() {
                "user" => false,
                "assistant" => true,
                "system" => {
                    return Err(format!(
                        "messages.{index}.role: \"system\" is not a valid role: roles are \"user\" \
                         and \"assistant\"; the system prompt goes in the top-level \"system\" \
                         field"
                    ));
                }
                other => {
                    return Err(format!(
                        "messages.{index}.role: {other:?} is not a valid role: expected \"user\" \
                         or \"assistant\""
                    ));
                }
            };
            if message.content.is_empty() && !(assistant && index == last) {
                return Err(format!(
                    "messages.{index}.content: all messages must have non-empty content except \
                     for the optional final assistant message"
                ));
            }
            let Content::Blocks(blocks) = &message.content else {
                continue;
            };
            for (at, block) in blocks.iter().enumerate() {
                check_block(block, &BLOCK_TYPES, &tool_use_ids)
                    .map_err(|error| format!("messages.{index}.content.{at}.{error}"))?;
            }
            if assistant {
                tool_use_ids.extend(
                    blocks
                        .iter()
                        .filter(|block| block.kind == "tool_use")
                        .map(|block| block.id.as_ref()),
                );
            }
        }
        let tools = self.tools.as_deref().unwrap_or_default();
        if let Some(index) = tools.iter().position(|tool| tool.name.is_empty()) {
            return Err(format!("tools.{index}.name: must be non-empty"));
        }
        if let Some(choice) = &self.tool_choice {
            match choice.kind.as_ref() {
                "auto" | "none" => {}
                "any" if !tools.is_empty() => {}
                "tool" if tools.iter().any(|tool| tool.name == choice.name) => {}
                "any" | "tool" => {
                    return Err(format!(
                        "tool_choice: no tool named {:?} in \"tools\"",
                        choice.name
                    ));
                }
                other => {
                    return Err(format!(
                        "tool_choice.type: {other:?} is not one of \"auto\", \"any\", \"tool\", \
                         \"none\""
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every text of the prompt: `system`, then the messages.
    fn for_each_text(&self, mut visit: impl FnMut(&str)) {
        if let Some(system) = &self.system {
            system.for_each_text(&mut visit);
        }
        for message in &self.messages {
            message.content.for_each_text(&mut visit);
        }
    }

    /// The tool the answer must call: `tool_choice` `{"type":"tool","name":X}` names it,
    /// `{"type":"any"}` takes the first.
    fn forced_tool(&self) -> Option<&str> {
        let choice = self.tool_choice.as_ref()?;
        match choice.kind.as_ref() {
            "tool" => Some(&choice.name),
            "any" => Some(&self.tools.as_ref()?.first()?.name),
            _ => None,
        }
    }
}

/// Checks one block whose type must be one of `allowed`; a `tool_result` must answer one of
/// `tool_use_ids`. The error starts with the path inside the block.
fn check_block(block: &Block, allowed: &[&str], tool_use_ids: &[&str]) -> Result<(), String> {
    if !allowed.contains(&block.kind.as_ref()) {
        return Err(format!(
            "type: {:?} is not a valid content block type here; expected one of: {}",
            block.kind,
            allowed.join(", ")
        ));
    }
    let required = |field: &str| Err(format!("{field}: Field required"));
    match block.kind.as_ref() {
        "text" if block.text.is_empty() => {
            Err("text: text content blocks must be non-empty".to_owned())
        }
        "image" | "document" if block.source.is_none() => required("source"),
        "tool_use" if block.id.is_empty() => required("id"),
        "tool_use" if block.name.is_empty() => required("name"),
        "tool_use" if block.input.is_none() => required("input"),
        "tool_result" if block.tool_use_id.is_empty() => required("tool_use_id"),
        "tool_result" if !tool_use_ids.contains(&block.tool_use_id.as_ref()) => Err(format!(
            "tool_use_id: unexpected `tool_use_id` found in `tool_result` blocks: {}. Each \
             `tool_result` block must have a corresponding `tool_use` block in an earlier \
             assistant message",
            block.tool_use_id
        )),
        "tool_result" => match &block.content {
            Some(Content::Blocks(blocks)) => {
                blocks.iter().enumerate().try_for_each(|(index, inner)| {
                    check_block(inner, &TOOL_RESULT_BLOCK_TYPES, &[])
                        .map_err(|error| format!("content.{index}.{error}"))
                })
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

fn check_version(version: Option<&str>) -> Result<(), MockError> {
    match version {
        Some(version) if VERSIONS.contains(&version) => Ok(()),
        Some(version) => Err(MockError::InvalidRequest(format!(
            "anthropic-version: {version:?} is not a valid version; use \"2023-06-01\""
        ))),
        None => Err(MockError::InvalidRequest(
            "anthropic-version header is required".to_owned(),
        )),
    }
}

pub(crate) async fn create(
    config: &MockConfig,
    key: &str,
    version: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse, AnthropicError> {
    check_version(version)?;
    faults::before_answer(config, key).await?;
    let request: Object<MessagesRequest> = serde_json::from_slice(body)
        .map_err(|error| MockError::InvalidRequest(format!("invalid request body: {error}")))?;
    request.check().map_err(MockError::InvalidRequest)?;

    let mut directives = Directives::default();
    let mut prompt_tokens = PromptTokens::default();
    request.for_each_text(|text| {
        directives.scan(text);
        prompt_tokens.add(text);
    });
    directives.apply().await?;

    let prompt_tokens = prompt_tokens.total();
    let cached = words::cached_tokens(&directives, prompt_tokens).unwrap_or(0);
    // `[[written:N]]`: N of the rest were written to the cache.
    let written = directives
        .written
        .map_or(0, |written| written.min(prompt_tokens - cached));
    let (output, output_tokens, stop_reason) = match request.forced_tool() {
        Some(name) => (
            Output::ToolUse {
                id: Uuid::new_v4(),
                name: Cow::Borrowed(name),
            },
            TOOL_USE_TOKENS.min(request.max_tokens),
            "tool_use",
        ),
        None => {
            let length = Length::new(config, &directives, Some(request.max_tokens));
            let stop_reason = if length.capped {
                "max_tokens"
            } else {
                "end_turn"
            };
            (Output::Text(length.tokens), length.tokens, stop_reason)
        }
    };
    let reply = Reply {
        id: Uuid::new_v4(),
        model: Cow::Borrowed(&request.model),
        usage: Usage {
            input_tokens: prompt_tokens.saturating_sub(cached).saturating_sub(written),
            output_tokens,
            cache_creation_input_tokens: written,
            cache_read_input_tokens: cached,
        },
        stop_reason,
        output,
    };

    if request.stream == Some(true) {
        return Ok(messages_stream::respond(
            config,
            reply.into_owned(),
            directives.cut_after,
        ));
    }
    Ok(HttpResponse::Ok().json(MessageBody {
        id: Id("msg_", reply.id),
        kind: "message",
        role: "assistant",
        model: &reply.model,
        content: &[reply.block(false)],
        stop_reason: Some(reply.stop_reason),
        stop_sequence: (),
        usage: reply.usage,
    }))
}

/// What the answer will be, decided before the first byte is sent.
pub(crate) struct Reply<'a> {
    pub id: Uuid,
    pub model: Cow<'a, str>,
    /// The final usage (a stream's `message_start` reports 1 output token).
    pub usage: Usage,
    pub stop_reason: &'static str,
    pub output: Output<'a>,
}

/// The answer's one content block.
pub(crate) enum Output<'a> {
    /// That many words of lorem ipsum.
    Text(u32),
    /// A call of that tool with the input [`TOOL_INPUT`].
    ToolUse { id: Uuid, name: Cow<'a, str> },
}

/// A tool call's input, in the pieces a stream sends it as.
pub(crate) const TOOL_INPUT: [&str; 2] = ["{\"mock\":", " true}"];

impl Reply<'_> {
    fn into_owned(self) -> Reply<'static> {
        Reply {
            id: self.id,
            model: Cow::Owned(self.model.into_owned()),
            usage: self.usage,
            stop_reason: self.stop_reason,
            output: match self.output {
                Output::Text(words) => Output::Text(words),
                Output::ToolUse { id, name } => Output::ToolUse {
                    id,
                    name: Cow::Owned(name.into_owned()),
                },
            },
        }
    }

    /// The content block, whole or (`opening`) as a stream's `content_block_start` has it: no
    /// text, empty input.
    pub(crate) fn block(&self, opening: bool) -> OutBlock<'_> {
        match &self.output {
            Output::Text(words) => OutBlock::Text {
                text: Lorem(if opening { 0 } else { *words }),
            },
            Output::ToolUse { id, name } => OutBlock::ToolUse {
                id: Id("toolu_", *id),
                name,
                input: ToolInput { whole: !opening },
            },
        }
    }
}

/// A message, as answered or as a stream's `message_start` has it.
#[derive(Serialize)]
pub(crate) struct MessageBody<'a> {
    pub id: Id,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: &'a str,
    pub content: &'a [OutBlock<'a>],
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: (),
    pub usage: Usage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum OutBlock<'a> {
    Text {
        text: Lorem,
    },
    ToolUse {
        id: Id,
        name: &'a str,
        input: ToolInput,
    },
}

/// `{"mock":true}`, or `{}` before the stream sends it.
pub(crate) struct ToolInput {
    whole: bool,
}

impl Serialize for ToolInput {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(usize::from(self.whole)))?;
        if self.whole {
            map.serialize_entry("mock", &true)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    /// Prompt tokens not read from the cache.
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cache_creation_input_tokens: u32,
    pub cache_read_input_tokens: u32,
}

/// `msg_<hex>`, `toolu_<hex>`, written without an intermediate `String`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Id(pub &'static str, pub Uuid);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}{}", self.0, self.1.simple()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn checked(body: &str) -> Result<(), String> {
        let request: Object<MessagesRequest> =
            serde_json::from_str(body).map_err(|error| error.to_string())?;
        request.check()
    }

    #[test]
    fn a_full_conversation_passes_and_counts_its_words() {
        let body = r#"{"model":"m","max_tokens":5,"temperature":1,
            "system":[{"type":"text","text":"be brief","cache_control":{"type":"ephemeral"}}],
            "tools":[{"name":"get_weather","input_schema":{"type":"object"}}],
            "stop_sequences":["END"],
            "messages":[
              {"role":"user","content":[{"type":"text","text":"weather in \"Paris\""},
                {"type":"image","source":{"type":"url","url":"https://x.invalid/a.png"}}]},
              {"role":"assistant","content":[{"type":"thinking","thinking":"hm","signature":"s"},
                {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1",
                "content":[{"type":"text","text":"sunny and warm"}]}]},
              {"role":"assistant","content":""}]}"#;
        checked(body).unwrap();
        let request: Object<MessagesRequest> = serde_json::from_str(body).unwrap();
        let mut tokens = PromptTokens::default();
        request.for_each_text(|text| tokens.add(text));
        assert_eq!(tokens.total(), 2 + 3 + 3);
        assert_eq!(request.forced_tool(), None);
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        for (body, expected) in [
            (r#"[]"#, "expected struct MessagesRequest"),
            (r#"{"model":"m","messages":[]}"#, "max_tokens"),
            (
                r#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[["user","x"]]}"#,
                "expected struct Message",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":null}]}"#,
                "a string or an array of content blocks",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[]}]}"#,
                "messages.0.content: all messages",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":""}]}]}"#,
                "messages.0.content.0.text",
            ),
            (
                r#"{"model":"m","max_tokens":1,"system":[{"type":"image","source":{}}],"messages":[{"role":"user","content":"x"}]}"#,
                "system.0.type: \"image\"",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_use","id":"a","name":"b"}]}]}"#,
                "messages.0.content.0.input: Field required",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_use","id":"a","name":"b","input":[]}]}]}"#,
                "invalid type: sequence",
            ),
            (
                r#"{"model":"m","max_tokens":1,"stop_sequences":[1],"messages":[{"role":"user","content":"x"}]}"#,
                "invalid type: integer",
            ),
            (
                r#"{"model":"m","max_tokens":1,"tools":[{"name":"t"}],"messages":[{"role":"user","content":"x"}]}"#,
                "input_schema",
            ),
            (
                r#"{"model":"m","max_tokens":1,"tools":[{"name":"t","input_schema":5}],"messages":[{"role":"user","content":"x"}]}"#,
                "invalid type: integer",
            ),
            (
                r#"{"model":"m","max_tokens":1,"tool_choice":{"type":"any"},"messages":[{"role":"user","content":"x"}]}"#,
                "tool_choice",
            ),
            (
                r#"{"model":"m","max_tokens":1,"tools":[{"name":"t","input_schema":{}}],"tool_choice":{"type":"tool","name":"u"},"messages":[{"role":"user","content":"x"}]}"#,
                "no tool named \"u\"",
            ),
            (
                r#"{"model":"m","max_tokens":1,"tools":[{"name":"t","input_schema":{}}],"tool_choice":{"type":"required"},"messages":[{"role":"user","content":"x"}]}"#,
                "tool_choice.type",
            ),
            (
                r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"a","content":[{"type":"tool_use"}]}]}]}"#,
                "tool_use_id: unexpected",
            ),
        ] {
            let error = checked(body).unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn a_tool_result_answers_an_earlier_assistant_tool_use() {
        let tool_use = r#"{"type":"tool_use","id":"toolu_1","name":"t","input":{}}"#;
        let tool_result = r#"{"type":"tool_result","tool_use_id":"toolu_1","content":"ok"}"#;
        let body = |first_role: &str| {
            format!(
                r#"{{"model":"m","max_tokens":1,"messages":[
                {{"role":"{first_role}","content":[{tool_use}]}},
                {{"role":"user","content":[{tool_result}]}}]}}"#
            )
        };
        checked(&body("assistant")).unwrap();
        let error = checked(&body("user")).unwrap_err();
        assert!(
            error.starts_with("messages.1.content.0.tool_use_id"),
            "{error}"
        );
    }

    #[test]
    fn a_tool_result_holds_only_result_blocks() {
        let body = r#"{"model":"m","max_tokens":1,"messages":[
            {"role":"assistant","content":[{"type":"tool_use","id":"x","name":"t","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"x",
              "content":[{"type":"thinking","thinking":"no"}]}]}]}"#;
        let error = checked(body).unwrap_err();
        assert!(
            error.starts_with("messages.1.content.0.content.0.type: \"thinking\""),
            "{error}"
        );
    }

    #[test]
    fn tool_choice_picks_the_tool() {
        let body = |choice: &str| {
            format!(
                r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":"x"}}],
                "tools":[{{"name":"a","input_schema":{{}}}},{{"name":"b","input_schema":{{}}}}],
                "tool_choice":{choice}}}"#
            )
        };
        for (choice, forced) in [
            (r#"{"type":"any"}"#, Some("a")),
            (r#"{"type":"tool","name":"b"}"#, Some("b")),
            (r#"{"type":"auto"}"#, None),
            (r#"{"type":"none"}"#, None),
        ] {
            let body = body(choice);
            checked(&body).unwrap();
            let request: Object<MessagesRequest> = serde_json::from_str(&body).unwrap();
            assert_eq!(request.forced_tool(), forced, "{choice}");
        }
    }

    #[test]
    fn tool_input_streams_in_pieces_that_make_the_whole() {
        let whole = serde_json::to_string(&ToolInput { whole: true }).unwrap();
        assert_eq!(whole, r#"{"mock":true}"#);
        let pieces: serde_json::Value = serde_json::from_str(&TOOL_INPUT.concat()).unwrap();
        assert_eq!(pieces, serde_json::json!({"mock": true}));
        let empty = serde_json::to_string(&ToolInput { whole: false }).unwrap();
        assert_eq!(empty, "{}");
    }
}
