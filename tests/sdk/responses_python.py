"""The official OpenAI Python SDK's Responses API (plain and streamed) and embeddings against
the gateway, unchanged.

Driven by tests/api/sdk.rs with OPENAI_BASE_URL, OPENAI_API_KEY, MODEL (a chat model) and
EMBED_MODEL (empty: no embedding call) set; the mock LLM counts a word as a token. Exits non-zero on any mismatch.
"""
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"])
model = os.environ["MODEL"]

# Plain: 2 instruction words + 3 input words; the mock's 16 words fit the limit.
reply = client.responses.create(
    model=model, instructions="be brief", input="one two three", max_output_tokens=32
)
assert reply.object == "response" and reply.status == "completed", reply
assert reply.model == model, reply.model
assert len(reply.output_text.split()) == 16, reply.output_text
assert reply.usage.input_tokens == 5 and reply.usage.output_tokens == 16, reply.usage
assert reply.usage.total_tokens == 21, reply.usage

# Streamed, with items: 2 + 1 input words, cut at 6 words: incomplete.
events = list(
    client.responses.create(
        model=model,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "four five"}]},
            {"role": "user", "content": "six"},
        ],
        max_output_tokens=6,
        stream=True,
    )
)
types = [event.type for event in events]
assert types[0] == "response.created" and types[-1] == "response.incomplete", types
text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
assert len(text.split()) == 6, text
done = [e for e in events if e.type == "response.output_text.done"]
assert done and done[0].text == text, done
final = events[-1].response
assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens", final
assert final.output_text == text, final.output_text
assert final.usage.input_tokens == 3 and final.usage.output_tokens == 6, final.usage

# Embeddings (the SDK asks for base64 and decodes it): 4 words; only OpenAI-kind providers
# serve embeddings (EMBED_MODEL is empty otherwise).
if os.environ.get("EMBED_MODEL"):
    embedded = client.embeddings.create(model=os.environ["EMBED_MODEL"], input="seven eight nine ten")
    assert embedded.model == os.environ["EMBED_MODEL"], embedded.model
    assert len(embedded.data) == 1 and len(embedded.data[0].embedding) == 8, embedded.data
    assert embedded.usage.prompt_tokens == 4, embedded.usage

# What cannot be translated: 400, nothing billed.
try:
    client.responses.create(model=model, input="x", previous_response_id="resp_1")
    raise SystemExit("previous_response_id must be refused")
except Exception as error:  # the SDK's BadRequestError
    assert getattr(error, "status_code", None) == 400, error

print("python responses and embeddings ok")
