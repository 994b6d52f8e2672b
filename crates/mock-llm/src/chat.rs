//! `POST /v1/chat/completions`: reading the request, counting its words and writing the answer.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use actix_web::HttpResponse;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use crate::config::MockConfig;
use crate::error::MockError;
use crate::faults::{self, Directives};
use crate::stream;
use crate::words::{self, Length, Lorem, PromptTokens};

/// The fields the mock reads; everything else (temperature, tools, ...) is accepted and ignored.
/// Strings borrow from the request body.
#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    messages: Vec<Message<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Content<'a>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// A message's `content`: a string, an array of parts (`{"type":"text","text":..}` carry words,
/// other kinds none), or null.
#[derive(Default)]
enum Content<'a> {
    #[default]
    Empty,
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Cow<'a, str>,
}

impl Content<'_> {
    fn for_each_text(&self, mut visit: impl FnMut(&str)) {
        match self {
            Self::Empty => {}
            Self::Text(text) => visit(text),
            Self::Parts(parts) => parts.iter().for_each(|part| visit(&part.text)),
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
        formatter.write_str("a string, an array of content parts or null")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Content::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Content::Empty)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        while let Some(part) = seq.next_element()? {
            parts.push(part);
        }
        Ok(Content::Parts(parts))
    }
}

/// What the answer will be, decided before the first byte is sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    pub id: Uuid,
    pub created: u64,
    pub prompt_tokens: u32,
    /// Of the prompt tokens, those `[[cached:K]]` says were read from a cache.
    pub cached_tokens: Option<u32>,
    pub completion_tokens: u32,
    pub finish_reason: &'static str,
}

impl Answer {
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens.saturating_add(self.completion_tokens),
            prompt_tokens_details: self
                .cached_tokens
                .map(|cached_tokens| PromptTokensDetails { cached_tokens }),
        }
    }
}

pub(crate) async fn complete(
    config: &MockConfig,
    key: &str,
    body: &[u8],
) -> Result<HttpResponse, MockError> {
    faults::before_answer(config, key).await?;
    let request: ChatRequest = serde_json::from_slice(body)
        .map_err(|error| MockError::InvalidRequest(format!("invalid request body: {error}")))?;
    if request.messages.is_empty() {
        return Err(MockError::InvalidRequest(
            "'messages' must be a non-empty array".to_owned(),
        ));
    }

    let mut directives = Directives::default();
    if let Some(last_user) = request.messages.iter().rev().find(|m| m.role == "user") {
        last_user
            .content
            .for_each_text(|text| directives.scan(text));
    }
    directives.apply().await?;

    let mut prompt_tokens = PromptTokens::default();
    for message in &request.messages {
        message
            .content
            .for_each_text(|text| prompt_tokens.add(text));
    }
    let prompt_tokens = prompt_tokens.total();
    let length = Length::new(
        config,
        &directives,
        request.max_completion_tokens.or(request.max_tokens),
    );
    let answer = Answer {
        id: Uuid::new_v4(),
        created: unix_now(),
        prompt_tokens,
        cached_tokens: words::cached_tokens(&directives, prompt_tokens),
        completion_tokens: length.tokens,
        finish_reason: if length.capped { "length" } else { "stop" },
    };

    if request.stream == Some(true) {
        let include_usage = request
            .stream_options
            .and_then(|options| options.include_usage)
            .unwrap_or(false);
        return Ok(stream::respond(
            config,
            answer,
            &request.model,
            include_usage,
            directives.cut_after,
        ));
    }
    Ok(HttpResponse::Ok().json(ChatCompletion {
        id: CompletionId(answer.id),
        object: "chat.completion",
        created: answer.created,
        model: &request.model,
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: Lorem(answer.completion_tokens),
                refusal: (),
            },
            logprobs: (),
            finish_reason: answer.finish_reason,
        }],
        usage: answer.usage(),
        system_fingerprint: (),
    }))
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: CompletionId,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice; 1],
    usage: Usage,
    system_fingerprint: (),
}

#[derive(Serialize)]
struct Choice {
    index: u32,
    message: AssistantMessage,
    logprobs: (),
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: Lorem,
    refusal: (),
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// Only when `[[cached:K]]` asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct PromptTokensDetails {
    pub cached_tokens: u32,
}

/// `chatcmpl-<uuid>`, written without an intermediate `String`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompletionId(pub Uuid);

impl Serialize for CompletionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("chatcmpl-{}", self.0.simple()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn content_may_be_text_parts_or_null() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"two words"},{"type":"image_url","image_url":{"url":"x"}}]},
            {"role":"assistant","content":null,"tool_calls":[]},
            {"role":"user","content":"escaped \"quote\" here"}]}"#;
        let request: ChatRequest = serde_json::from_slice(body).unwrap();
        let mut words = PromptTokens::default();
        for message in &request.messages {
            message.content.for_each_text(|text| words.add(text));
        }
        assert_eq!(words.total(), 2 + 2 + 3);
    }
}
