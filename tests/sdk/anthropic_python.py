"""The official Anthropic Python SDK against the gateway, unchanged (base_url = the gateway):
messages.create, messages.stream, and an error in Anthropic's shape.

Driven by tests/api/sdk.rs with ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY (sent as x-api-key) and
MODEL set; the mock LLM counts a word as a token. Exits non-zero on any mismatch.
"""
import os

import anthropic

client = anthropic.Anthropic(
    base_url=os.environ["ANTHROPIC_BASE_URL"], api_key=os.environ["ANTHROPIC_API_KEY"]
)
model = os.environ["MODEL"]

# Plain: 2 system words + 3 message words; the mock's 16 words fit the limit.
message = client.messages.create(
    model=model,
    max_tokens=64,
    system="be brief",
    messages=[{"role": "user", "content": "one two three"}],
)
assert message.type == "message" and message.role == "assistant", message
assert message.model == model, message.model
assert message.stop_reason == "end_turn", message.stop_reason
assert len(message.content[0].text.split()) == 16, message.content
assert message.usage.input_tokens == 5 and message.usage.output_tokens == 16, message.usage

# Streamed with the helper: 2 + 1 words, cut at 6 words.
with client.messages.stream(
    model=model,
    max_tokens=6,
    messages=[
        {"role": "user", "content": [{"type": "text", "text": "four five"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "six"},
    ],
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert len(text.split()) == 6, text
assert final.content[0].text == text, final.content
assert final.stop_reason == "max_tokens", final.stop_reason
# 2 + 1 + 1 words (the assistant's turn counts too).
assert final.usage.input_tokens == 4 and final.usage.output_tokens == 6, final.usage

# Errors in Anthropic's shape: the SDK raises its typed errors.
try:
    client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    raise SystemExit("an unknown model must fail")
except anthropic.NotFoundError as error:
    assert error.body["error"]["type"] == "not_found_error", error.body
try:
    client.messages.create(
        model=model,
        max_tokens=5,
        messages=[{"role": "user", "content": "x"}],
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
    )
    raise SystemExit("a server tool must be refused")
except anthropic.BadRequestError as error:
    assert error.body["type"] == "error", error.body
    assert error.body["error"]["type"] == "invalid_request_error", error.body
bad_key = anthropic.Anthropic(base_url=os.environ["ANTHROPIC_BASE_URL"], api_key="sk-wrong")
try:
    bad_key.messages.create(model=model, max_tokens=5, messages=[{"role": "user", "content": "x"}])
    raise SystemExit("a wrong key must fail")
except anthropic.AuthenticationError as error:
    assert error.body["error"]["type"] == "authentication_error", error.body

print("anthropic python sdk ok")
