// The official OpenAI Node SDK against the gateway, unchanged: list models, chat, stream.
// Driven by tests/api/sdk.rs with OPENAI_BASE_URL, OPENAI_API_KEY and MODEL set.
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY });
const model = process.env.MODEL;

const ids = [];
for await (const m of client.models.list()) ids.push(m.id);
assert.ok(ids.includes(model), JSON.stringify(ids));

const reply = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "one two three" }], max_tokens: 8,
});
assert.equal(reply.model, model);
assert.equal(reply.choices[0].message.content.split(/\s+/).length, 8);
assert.equal(reply.usage.prompt_tokens, 3);
assert.equal(reply.usage.completion_tokens, 8);

let text = "";
const stream = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "four five" }], max_tokens: 8, stream: true,
});
for await (const chunk of stream) {
  assert.ok(!chunk.usage, "usage chunk not asked for");
  text += chunk.choices[0]?.delta?.content ?? "";
}
assert.equal(text.trim().split(/\s+/).length, 8);

let usage = null;
const withUsage = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "six" }], max_tokens: 8, stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of withUsage) if (chunk.usage) usage = chunk.usage;
assert.equal(usage?.prompt_tokens, 1);
assert.equal(usage?.completion_tokens, 8);

await assert.rejects(
  client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] }),
  (error) => error.status === 404,
);
console.log("node sdk ok");
