//! Token arithmetic of the call path: an upper bound of prompt tokens for the hold, and an
//! offline tokenizer count when a provider reports no usage.

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Per-message and per-request framing tokens that chat formats add around the text.
const PER_MESSAGE_OVERHEAD: u64 = 8;
const PER_REQUEST_OVERHEAD: u64 = 16;
/// The system prompt a provider adds, unseen, when tools are offered (Anthropic documents up to
/// 346 tokens for it), so a tiny prompt with a tool is still held for in full.
const TOOLS_OVERHEAD: u64 = 512;
/// The text a chat request sends: every string `content`, text part, name and tool payload.
pub fn prompt_text(body: &Value) -> String {
    let mut text = String::new();
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for message in messages {
            collect_text(message.get("content"), &mut text);
            for field in ["name", "tool_calls", "function_call"] {
                if let Some(value) = message.get(field) {
                    text.push_str(&value.to_string());
                }
            }
        }
    }
    for field in ["tools", "functions", "response_format"] {
        if let Some(value) = body.get(field) {
            text.push_str(&value.to_string());
        }
    }
    text
}

fn collect_text(content: Option<&Value>, out: &mut String) {
    match content {
        Some(Value::String(s)) => {
            out.push_str(s);
            out.push('\n');
        }
        Some(Value::Array(parts)) => {
            for part in parts {
                // A text part's text, or an assistant's refusal part quoted back.
                for field in ["text", "refusal"] {
                    if let Some(s) = part.get(field).and_then(Value::as_str) {
                        out.push_str(s);
                        out.push('\n');
                    }
                }
            }
        }
        _ => {}
    }
}

/// The first input of a chat request that the hold cannot count and the model's pricing cannot
/// price, named by its field: audio and file parts, audio output, predicted outputs, paid service
/// tiers, built-in web search and non-function tools. The provider would bill them, so such a
/// request is refused before anything is held, rather than served for less than it costs.
pub fn unpriced_input(body: &Value) -> Option<String> {
    for field in ["audio", "prediction", "web_search_options"] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Some(format!("{field}: not priced by this platform"));
        }
    }
    if let Some(modalities) = body.get("modalities").filter(|v| !v.is_null()) {
        let text_only = modalities
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m.as_str() == Some("text")));
        if !text_only {
            return Some("modalities: only [\"text\"] is priced by this platform".to_owned());
        }
    }
    if let Some(tier) = body.get("service_tier").filter(|v| !v.is_null())
        && !matches!(tier.as_str(), Some("auto" | "default"))
    {
        return Some(
            "service_tier: only \"auto\" and \"default\" are priced by this platform".to_owned(),
        );
    }
    for (i, tool) in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let kind = tool
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        if kind != "function" {
            return Some(format!(
                "tools[{i}].type: {kind:?} tools are not priced by this platform"
            ));
        }
    }
    let messages = body.get("messages").and_then(Value::as_array);
    for (i, message) in messages.into_iter().flatten().enumerate() {
        if message.get("audio").is_some_and(|v| !v.is_null()) {
            return Some(format!("messages[{i}].audio: not priced by this platform"));
        }
        let parts = message.get("content").and_then(Value::as_array);
        for (j, part) in parts.into_iter().flatten().enumerate() {
            let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
            if !matches!(kind, "text" | "image_url" | "refusal") {
                return Some(format!(
                    "messages[{i}].content[{j}].type: {kind:?} parts are not priced by this platform"
                ));
            }
        }
    }
    None
}

/// An upper bound of the prompt's tokens without tokenizing: byte-level BPE never makes more
/// tokens than bytes, plus the framing overhead (and the tools' hidden prompt), plus
/// `image_tokens` per image part (the model's `image_input_tokens`: an image URL's bytes say
/// nothing of its tokens). Used only to size the hold.
pub fn prompt_upper_bound(body: &Value, text: &str, image_tokens: u64) -> u64 {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    let tools = body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| !tools.is_empty());
    text.len() as u64
        + messages * PER_MESSAGE_OVERHEAD
        + PER_REQUEST_OVERHEAD
        + if tools { TOOLS_OVERHEAD } else { 0 }
        + image_parts(body) * image_tokens
}

/// The image parts of a chat request's messages (their bytes are no measure of their tokens).
fn image_parts(body: &Value) -> u64 {
    let messages = body.get("messages").and_then(Value::as_array);
    messages
        .into_iter()
        .flatten()
        .filter_map(|message| message.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|part| part.get("type").and_then(Value::as_str) == Some("image_url"))
        .count() as u64
}

fn tokenizer() -> Option<&'static CoreBPE> {
    static TOKENIZER: OnceLock<Option<CoreBPE>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| match tiktoken_rs::o200k_base() {
            Ok(bpe) => Some(bpe),
            Err(error) => {
                tracing::error!(%error, "tokenizer unavailable; counting bytes / 4");
                None
            }
        })
        .as_ref()
}

/// Tokens of `text` by the o200k tokenizer (embedded, no download); bytes / 4 if unavailable.
pub fn count(text: &str) -> u64 {
    match tokenizer() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Prompt tokens as a provider would have counted them, for calls without reported usage.
pub fn count_prompt(text: &str, messages: u64) -> u64 {
    count(text) + prompt_framing(messages)
}

/// The tokens a chat format adds around `messages` messages' text.
pub fn prompt_framing(messages: u64) -> u64 {
    messages * 3 + 3
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_input_the_hold_cannot_count_is_named() {
        let text = json!({"role": "user", "content": "hi"});
        let refused = [
            (
                json!({"messages": [text], "audio": {"voice": "alloy", "format": "wav"}}),
                "audio",
            ),
            (
                json!({"messages": [text], "modalities": ["text", "audio"]}),
                "modalities",
            ),
            (
                json!({"messages": [text], "prediction": {"type": "content", "content": "x"}}),
                "prediction",
            ),
            (
                json!({"messages": [text], "service_tier": "priority"}),
                "service_tier",
            ),
            (
                json!({"messages": [text], "service_tier": "flex"}),
                "service_tier",
            ),
            (
                json!({"messages": [text], "web_search_options": {}}),
                "web_search_options",
            ),
            (
                json!({"messages": [text], "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "web_search"}]}),
                "tools[1].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                {"type": "file", "file": {"file_data": "JVBERi0="}}]}]}),
                "messages[0].content[1].type",
            ),
            (
                json!({"messages": [text, {"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
                "messages[1].content[0].type",
            ),
            (
                json!({"messages": [{"role": "assistant", "audio": {"id": "a"}}]}),
                "messages[0].audio",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "mystery"}]}]}),
                "messages[0].content[0].type",
            ),
        ];
        for (body, field) in refused {
            let named = unpriced_input(&body).unwrap_or_else(|| panic!("not refused: {body}"));
            assert!(
                named.starts_with(&format!("{field}:")),
                "{named} should name {field}"
            );
        }
        for body in [
            json!({"messages": [text]}),
            json!({"messages": [text], "modalities": ["text"], "service_tier": "auto", "audio": null}),
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}],
                "tools": [{"type": "function", "function": {"name": "f"}}]}),
        ] {
            assert_eq!(unpriced_input(&body), None, "{body}");
        }
    }

    #[test]
    fn a_refusal_part_is_counted() {
        let body = json!({"messages": [{"role": "assistant", "content": [{"type": "refusal", "refusal": "I will not"}]}]});
        assert!(prompt_text(&body).contains("I will not"));
    }

    #[test]
    fn the_upper_bound_is_at_least_the_tokenizer_count() {
        for content in [
            "hello world",
            "你好，世界！这是一个测试。",
            "🙂🙂🙂 emoji",
            &"long ".repeat(500),
        ] {
            let body = json!({"messages": [{"role": "user", "content": content}]});
            let text = prompt_text(&body);
            assert!(
                prompt_upper_bound(&body, &text, 1_600) >= count_prompt(&text, 1),
                "{content}"
            );
        }
    }

    #[test]
    fn offered_tools_raise_the_bound_by_their_hidden_prompt() {
        let plain = json!({"messages": [{"role": "user", "content": "hi"}]});
        let mut with_tools = plain.clone();
        with_tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        let text = prompt_text(&plain);
        assert_eq!(
            prompt_upper_bound(&with_tools, &text, 1_600)
                - prompt_upper_bound(&plain, &text, 1_600),
            TOOLS_OVERHEAD
        );
        const { assert!(TOOLS_OVERHEAD >= 346) };
        with_tools["tools"] = json!([]);
        assert_eq!(
            prompt_upper_bound(&with_tools, &text, 1_600),
            prompt_upper_bound(&plain, &text, 1_600)
        );
    }

    #[test]
    fn each_image_part_is_held_for_the_models_image_allowance() {
        let text_only = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}]}]});
        let mut with_images = text_only.clone();
        let image = json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}});
        with_images["messages"][0]["content"]
            .as_array_mut()
            .unwrap()
            .extend([image.clone(), image]);
        let text = prompt_text(&text_only);
        assert_eq!(prompt_text(&with_images), text);
        for per_image in [1_600, 36_835] {
            assert_eq!(
                prompt_upper_bound(&with_images, &text, per_image)
                    - prompt_upper_bound(&text_only, &text, per_image),
                2 * per_image
            );
        }
    }

    #[test]
    fn prompt_text_reads_strings_parts_and_tools() {
        let body = json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "x"}}]}
            ],
            "tools": [{"type": "function", "function": {"name": "lookup"}}]
        });
        let text = prompt_text(&body);
        assert!(text.contains("be brief") && text.contains("describe") && text.contains("lookup"));
    }

    #[test]
    fn the_tokenizer_counts_offline() {
        assert_eq!(count(""), 0);
        let n = count("The quick brown fox jumps over the lazy dog.");
        assert!((8..=12).contains(&n), "{n}");
    }
}
