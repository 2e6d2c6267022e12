"""How streams end, as the official SDKs see them: a stream read to its end is a completed
request (the openai SDK closes right after `data: [DONE]`), a client that leaves mid-way is a
disconnect, and `stream_options: null` is the same as no stream_options."""

from __future__ import annotations

import time

import openai
import pytest

from conftest import Sluice, Upstream

pytestmark = pytest.mark.sluice

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "how streams end"}]
DISCONNECTS = "sluice_client_disconnects_total"
STREAMS = 100


def disconnects(sluice: Sluice) -> float:
    return sluice.scrape().sum(DISCONNECTS, route="openai")


def settle_requests(sluice: Sluice, before: float, count: int) -> None:
    """Wait (bounded) until sluice logged `count` more requests on route openai."""
    deadline = time.monotonic() + 10
    while sluice.scrape().sum("sluice_requests_total", route="openai") < before + count:
        assert time.monotonic() < deadline, "requests were not all logged within 10 s"
        time.sleep(0.05)


@pytest.mark.parametrize("include_usage", [False, True])
def test_streams_read_to_the_end_are_not_disconnects(sluice: Sluice,
                                                     openai_via: openai.OpenAI,
                                                     include_usage: bool) -> None:
    before = disconnects(sluice)
    requests_before = sluice.scrape().sum("sluice_requests_total", route="openai")
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    for _ in range(STREAMS):
        chunks = list(openai_via.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                         stream=True, **extra))
        assert chunks and chunks[-1].choices == [] if include_usage else chunks
    settle_requests(sluice, requests_before, STREAMS)
    assert disconnects(sluice) - before == 0, "a stream read to its end counted as a disconnect"


def test_streams_left_mid_way_are_disconnects(sluice: Sluice, upstream: Upstream,
                                              openai_via: openai.OpenAI) -> None:
    # Each stream stalls after two events, so the client's leave is seen mid-stream.
    upstream.scenario({"type": "stream_fault", "kind": "stall", "after_chunks": 2,
                       "stall_seconds": 30, "times": STREAMS,
                       "match": {"path": "/v1/chat/completions"}})
    before = disconnects(sluice)
    requests_before = sluice.scrape().sum("sluice_requests_total", route="openai")
    try:
        for _ in range(STREAMS):
            stream = openai_via.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                        stream=True)
            next(iter(stream))
            stream.close()
        deadline = time.monotonic() + 10
        while disconnects(sluice) - before < STREAMS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert disconnects(sluice) - before == STREAMS
        # Their tokens are estimated after the disconnect: let that finish before the next test.
        settle_requests(sluice, requests_before, STREAMS)
    finally:
        upstream.reset()


def test_stream_options_null_is_absent_and_counted_exactly(sluice: Sluice, upstream: Upstream,
                                                           openai_via: openai.OpenAI) -> None:
    upstream.clear_requests()
    meter = sluice.meter()
    chunks = list(openai_via.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, extra_body={"stream_options": None}))
    seen = upstream.only_request()
    assert seen["body"]["stream_options"] == {"include_usage": True}
    assert not [c for c in chunks if c.usage], "the client did not ask for usage"
    # What the upstream reported for this call (llmock is deterministic).
    reference = list(openai.OpenAI(base_url=upstream.openai_url, api_key="x", max_retries=0)
                     .chat.completions.create(model=MODEL, messages=MESSAGES, stream=True,
                                              stream_options={"include_usage": True}))
    usage = reference[-1].usage
    meter.assert_counted(model=MODEL, prompt=usage.prompt_tokens,
                         completion=usage.completion_tokens, route="openai", pool="openai")
