"""Errors sluice makes itself reach the SDKs as their native exceptions, promptly.

Every client has max_retries=0 and a 10 s timeout: a hang fails as APITimeoutError,
which is not the APIStatusError these tests expect.
"""

from __future__ import annotations

from typing import Callable, Iterator

import anthropic
import httpx
import openai
import pytest

from conftest import ROUTE_HEADER, VIRTUAL_KEY, Sluice, Upstream, anthropic_client, openai_client

pytestmark = pytest.mark.sluice

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "error path prompt"}]}
MESSAGE = {"model": "claude-sonnet-4-6", "max_tokens": 64,
           "messages": [{"role": "user", "content": "error path prompt"}]}


def openai_error_body(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert isinstance(body.get("error"), dict) and body["error"].get("message"), (
        f"not an OpenAI-shaped error body: {exc.response.text}")
    return body["error"]


def anthropic_error_body(exc: anthropic.APIStatusError) -> dict:
    body = exc.response.json()
    assert body.get("type") == "error" and isinstance(body.get("error"), dict), (
        f"not an Anthropic-shaped error body: {exc.response.text}")
    return body["error"]


def test_path_without_route(sluice: Sluice, upstream: Upstream) -> None:
    """Routes cover /v1 only; an SDK pointed at /v2 gets a native 4xx, nothing goes upstream."""
    upstream.clear_requests()
    client = openai_client(f"http://{sluice.proxy}/v2", VIRTUAL_KEY)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**CHAT)
    assert 400 <= caught.value.status_code < 500, caught.value.response.text
    openai_error_body(caught.value)
    assert upstream.requests() == []


def test_openai_pool_down(sluice: Sluice) -> None:
    client = openai_client(sluice.openai_url, VIRTUAL_KEY, default_headers={ROUTE_HEADER: "down"})
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**CHAT)
    assert caught.value.status_code in (502, 503), caught.value.response.text
    assert isinstance(caught.value, openai.InternalServerError)
    openai_error_body(caught.value)


def test_anthropic_pool_down(sluice: Sluice) -> None:
    client = anthropic_client(sluice.anthropic_url, VIRTUAL_KEY,
                              default_headers={ROUTE_HEADER: "down"})
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(**MESSAGE)
    assert caught.value.status_code in (502, 503), caught.value.response.text
    anthropic_error_body(caught.value)


@pytest.fixture
def scenario(upstream: Upstream) -> Iterator[Callable[[dict], None]]:
    """Queue one llmock behaviour; whatever is left unconsumed is dropped afterwards."""

    def queue(behavior: dict) -> None:
        httpx.post(f"{upstream.base}/_llmock/scenario", json={"behaviors": [behavior]},
                   timeout=10.0).raise_for_status()

    upstream.reset()
    try:
        yield queue
    finally:
        upstream.reset()


def test_openai_upstream_drops_mid_stream(sluice: Sluice, scenario: Callable[[dict], None],
                                          openai_via: openai.OpenAI) -> None:
    """The upstream closes the connection after 3 events: the SDK must raise its own
    exception (an in-stream error event or a connection error), not end quietly."""
    scenario({"type": "stream_fault", "kind": "disconnect", "after_chunks": 3,
              "match": {"path": "/v1/chat/completions"}})
    received = []
    with pytest.raises(openai.APIError):
        for chunk in openai_via.chat.completions.create(**CHAT, stream=True):
            received.append(chunk)
    assert 1 <= len(received) <= 3, "the events sent before the drop should reach the client"


def test_anthropic_upstream_drops_mid_stream(sluice: Sluice, scenario: Callable[[dict], None],
                                             anthropic_via: anthropic.Anthropic) -> None:
    """Direct, the anthropic SDK surfaces a raw httpx error here; through sluice it should
    get `event: error` and raise anthropic.APIError."""
    scenario({"type": "stream_fault", "kind": "disconnect", "after_chunks": 3,
              "match": {"provider": "anthropic"}})
    with pytest.raises(anthropic.APIError):
        for _ in anthropic_via.messages.create(**MESSAGE, stream=True):
            pass
