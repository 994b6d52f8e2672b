"""The official OpenAI Python SDK against the gateway, unchanged: list models, chat, stream.

Driven by tests/api/sdk.rs with OPENAI_BASE_URL, OPENAI_API_KEY and MODEL set; exits non-zero
on any mismatch.
"""
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"])
model = os.environ["MODEL"]

ids = [m.id for m in client.models.list()]
assert model in ids, ids

reply = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "one two three"}], max_tokens=8
)
assert reply.model == model, reply.model
assert reply.choices[0].message.content.split() and len(reply.choices[0].message.content.split()) == 8
assert reply.usage.prompt_tokens == 3 and reply.usage.completion_tokens == 8, reply.usage

text = ""
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "four five"}], max_tokens=8, stream=True
):
    assert chunk.usage is None, "usage chunk not asked for"
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
assert len(text.split()) == 8, text

usage = None
for chunk in client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "six"}],
    max_tokens=8,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage
assert usage is not None and usage.prompt_tokens == 1 and usage.completion_tokens == 8, usage

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("an unknown model must fail")
except Exception as error:  # the SDK's NotFoundError
    assert getattr(error, "status_code", None) == 404, error

print("python sdk ok")
