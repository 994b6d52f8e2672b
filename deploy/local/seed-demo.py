#!/usr/bin/env python3
"""Registers the local mock LLM as the default provider with priced demo models (idempotent).

Used by `make run` so a newcomer can call a model with no internet. Standard library only.
"""
import json
import os
import sys
import urllib.error
import urllib.request

API = os.environ.get("API", "http://127.0.0.1:8080")
MOCK_URL = os.environ.get("MOCK_URL", "http://127.0.0.1:9200/v1")


def call(method, path, token=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(API + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def main():
    status, login = call("POST", "/v1/auth/login", body={
        "email": os.environ["ADMIN_EMAIL"], "password": os.environ["ADMIN_PASSWORD"]})
    if status != 200:
        print(f"seed-demo: admin login failed ({status}); demo provider not registered", file=sys.stderr)
        return 1
    token = login["access_token"]
    _, providers = call("GET", "/v1/admin/providers?limit=200", token)

    def provider_of(name, kind):
        found = next((p for p in providers["data"] if p["name"] == name), None)
        if found is None:
            _, found = call("POST", "/v1/admin/providers", token,
                            {"name": name, "kind": kind, "base_url": MOCK_URL})
            call("POST", f"/v1/admin/providers/{found['id']}/keys", token,
                 {"api_key": "sk-mock-local", "name": "local mock", "weight": 1})
        return found

    provider = provider_of("mock-llm", "openai")
    # The same mock, spoken to through Anthropic's Messages API (POST /v1/messages).
    anthropic = provider_of("mock-anthropic", "anthropic")
    _, models = call("GET", "/v1/admin/models?limit=200", token)
    names = {m["name"] for m in models["data"]}
    if "demo-chat" not in names:
        call("POST", "/v1/admin/models", token, {
            "name": "demo-chat", "provider_id": provider["id"], "upstream_model": "mock-gpt",
            "kind": "chat", "max_output_tokens": 1024,
            "pricing": {"input_per_million": "0.15", "output_per_million": "0.60"}})
    if "demo-image" not in names:
        call("POST", "/v1/admin/models", token, {
            "name": "demo-image", "provider_id": provider["id"], "upstream_model": "mock-image",
            "kind": "image", "pricing": {"per_image": "0.04"}})
    if "demo-claude" not in names:
        call("POST", "/v1/admin/models", token, {
            "name": "demo-claude", "provider_id": anthropic["id"], "upstream_model": "mock-claude",
            "kind": "chat", "max_output_tokens": 1024,
            "pricing": {"input_per_million": "3", "output_per_million": "15",
                        "cached_input_per_million": "0.3"}})
    print("  Demo:     providers mock-llm (demo-chat, demo-image) and mock-anthropic (demo-claude)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
