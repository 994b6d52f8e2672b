// The official Anthropic Node SDK against the gateway, unchanged (baseURL = the gateway):
// messages.create, messages.stream, and an error in Anthropic's shape. Driven by
// tests/api/sdk.rs with ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY (sent as x-api-key) and MODEL
// set; the mock LLM counts a word as a token.
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic({ baseURL: process.env.ANTHROPIC_BASE_URL, apiKey: process.env.ANTHROPIC_API_KEY });
const model = process.env.MODEL;

// Plain: 2 system words + 3 message words; the mock's 16 words fit the limit.
const message = await client.messages.create({
  model, max_tokens: 64, system: "be brief", messages: [{ role: "user", content: "one two three" }],
});
assert.equal(message.type, "message");
assert.equal(message.model, model);
assert.equal(message.stop_reason, "end_turn");
assert.equal(message.content[0].text.split(/\s+/).length, 16);
assert.equal(message.usage.input_tokens, 5);
assert.equal(message.usage.output_tokens, 16);

// Streamed with the helper: 2 + 1 + 1 words, cut at 6 words.
const stream = client.messages.stream({
  model,
  max_tokens: 6,
  messages: [
    { role: "user", content: [{ type: "text", text: "four five" }] },
    { role: "assistant", content: "ok" },
    { role: "user", content: "six" },
  ],
});
let text = "";
stream.on("text", (delta) => { text += delta; });
const final = await stream.finalMessage();
assert.equal(text.trim().split(/\s+/).length, 6);
assert.equal(final.content[0].text, text);
assert.equal(final.stop_reason, "max_tokens");
assert.equal(final.usage.input_tokens, 4);
assert.equal(final.usage.output_tokens, 6);

// Errors in Anthropic's shape: the SDK raises its typed errors.
await assert.rejects(
  client.messages.create({ model: "no-such-model", max_tokens: 5, messages: [{ role: "user", content: "x" }] }),
  (error) => error instanceof Anthropic.NotFoundError && error.error.error.type === "not_found_error",
);
await assert.rejects(
  client.messages.create({
    model, max_tokens: 5, messages: [{ role: "user", content: "x" }],
    tools: [{ type: "web_search_20250305", name: "web_search" }],
  }),
  (error) => error instanceof Anthropic.BadRequestError && error.error.error.type === "invalid_request_error",
);

console.log("anthropic node sdk ok");
