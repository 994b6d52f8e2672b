// The official OpenAI Node SDK's Responses API (plain and streamed) and embeddings against the
// gateway, unchanged. Driven by tests/api/sdk.rs with OPENAI_BASE_URL, OPENAI_API_KEY, MODEL
// and EMBED_MODEL (empty: no embedding call) set; the mock LLM counts a word as a token.
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY });
const model = process.env.MODEL;

// Plain: 2 instruction words + 3 input words; the mock's 16 words fit the limit.
const reply = await client.responses.create({
  model, instructions: "be brief", input: "one two three", max_output_tokens: 32,
});
assert.equal(reply.status, "completed");
assert.equal(reply.model, model);
assert.equal(reply.output_text.split(/\s+/).length, 16);
assert.equal(reply.usage.input_tokens, 5);
assert.equal(reply.usage.output_tokens, 16);

// Streamed, with items: 2 + 1 input words, cut at 6 words: incomplete.
const stream = await client.responses.create({
  model,
  input: [
    { role: "user", content: [{ type: "input_text", text: "four five" }] },
    { role: "user", content: "six" },
  ],
  max_output_tokens: 6,
  stream: true,
});
const types = [];
let text = "";
let final;
for await (const event of stream) {
  types.push(event.type);
  if (event.type === "response.output_text.delta") text += event.delta;
  if (event.type === "response.incomplete") final = event.response;
}
assert.equal(types[0], "response.created");
assert.equal(types.at(-1), "response.incomplete");
assert.equal(final.incomplete_details.reason, "max_output_tokens");
assert.equal(text.trim().split(/\s+/).length, 6);
assert.equal(final.output[0].content[0].text, text);
assert.equal(final.usage.input_tokens, 3);
assert.equal(final.usage.output_tokens, 6);

// Embeddings (the SDK asks for base64 and decodes it): 4 words; only OpenAI-kind providers
// serve embeddings (EMBED_MODEL is empty otherwise).
if (process.env.EMBED_MODEL) {
  const embedded = await client.embeddings.create({ model: process.env.EMBED_MODEL, input: "seven eight nine ten" });
  assert.equal(embedded.data.length, 1);
  assert.equal(embedded.data[0].embedding.length, 8);
  assert.equal(embedded.usage.prompt_tokens, 4);
}

// What cannot be translated: 400, nothing billed.
await assert.rejects(
  client.responses.create({ model, input: "x", tools: [{ type: "web_search" }] }),
  (error) => error.status === 400,
);

console.log("node responses and embeddings ok");
