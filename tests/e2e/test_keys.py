"""Keys: the upstream gets the pool's key and never the app's virtual key; an unknown
virtual key is refused natively before reaching any upstream.

llmock's journal does not record headers, so the key sluice sent is read from llmock's
rate limiter: the keycheck upstream runs with --rpm 1, one bucket per exact credential
string (`Authorization`, else `x-api-key`). After one request through sluice, the
bucket of the credential sluice sent is empty (429) and every other one is full (200).
"""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from conftest import (
    ANTHROPIC_UPSTREAM_KEY,
    OPENAI_UPSTREAM_KEY,
    ROUTE_HEADER,
    UNKNOWN_KEY,
    VIRTUAL_KEY,
    Sluice,
    Upstream,
    anthropic_client,
    openai_client,
)

pytestmark = pytest.mark.sluice

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "key check prompt"}]}
MESSAGE = {"model": "claude-sonnet-4-6", "max_tokens": 64,
           "messages": [{"role": "user", "content": "key check prompt"}]}


def probe(url: str, body: dict, headers: dict[str, str]) -> int:
    """Status of one direct request to the keycheck upstream with exactly `headers`."""
    return httpx.post(url, json=body, headers=headers, timeout=10.0).status_code


def test_openai_upstream_gets_pool_key_not_virtual_key(sluice: Sluice,
                                                       keycheck_upstream: Upstream) -> None:
    keycheck_upstream.reset()
    via = openai_client(sluice.openai_url, VIRTUAL_KEY, default_headers={ROUTE_HEADER: "keycheck"})
    via.chat.completions.create(**CHAT)
    assert keycheck_upstream.only_request()["status"] == 200

    url = f"{keycheck_upstream.openai_url}/chat/completions"
    assert probe(url, CHAT, {"authorization": f"Bearer {OPENAI_UPSTREAM_KEY}"}) == 429, (
        "the request through sluice was not charged to `Authorization: Bearer <pool key>`: "
        "sluice sent another credential (or the client's) upstream")
    assert probe(url, CHAT, {"authorization": f"Bearer {VIRTUAL_KEY}"}) == 200, (
        "the client's virtual key reached the upstream")


def test_anthropic_upstream_gets_pool_key_as_x_api_key(sluice: Sluice,
                                                       keycheck_upstream: Upstream) -> None:
    """The anthropic SDK 2.x sends `Authorization: Bearer <virtual key>`; the upstream
    must get `x-api-key: <pool key>` and no Authorization header at all (llmock picks
    Authorization first, so a leaked one would take the charge)."""
    keycheck_upstream.reset()
    via = anthropic_client(sluice.anthropic_url, VIRTUAL_KEY,
                           default_headers={ROUTE_HEADER: "keycheck"})
    via.messages.create(**MESSAGE)
    record = keycheck_upstream.only_request()
    assert record["status"] == 200 and record["path"] == "/anthropic/v1/messages"

    url = f"{keycheck_upstream.anthropic_url}/v1/messages"
    version = {"anthropic-version": "2023-06-01"}
    assert probe(url, MESSAGE, {"x-api-key": ANTHROPIC_UPSTREAM_KEY, **version}) == 429, (
        "the request through sluice was not charged to `x-api-key: <pool key>` alone")
    assert probe(url, MESSAGE, {"authorization": f"Bearer {VIRTUAL_KEY}", **version}) == 200, (
        "the client's virtual key reached the upstream as Authorization")
    assert probe(url, MESSAGE, {"x-api-key": VIRTUAL_KEY, **version}) == 200, (
        "the client's virtual key reached the upstream as x-api-key")


def test_unknown_virtual_key_openai(sluice: Sluice, upstream: Upstream) -> None:
    upstream.clear_requests()
    client = openai_client(sluice.openai_url, UNKNOWN_KEY)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(**CHAT)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key", caught.value.response.text
    assert upstream.requests() == [], "a request with an unknown key reached the upstream"


def test_unknown_virtual_key_anthropic(sluice: Sluice, upstream: Upstream) -> None:
    upstream.clear_requests()
    client = anthropic_client(sluice.anthropic_url, UNKNOWN_KEY)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(**MESSAGE)
    assert caught.value.status_code == 401
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
    assert upstream.requests() == [], "a request with an unknown key reached the upstream"
