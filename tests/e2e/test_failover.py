"""Failover between pools (README "Failover, circuit breakers, key rotation") as the real
SDKs see it: a primary llmock that misbehaves on cue (`POST /_llmock/scenario`), a second
llmock as the fallback pool.

Each test starts its own sluice (`sluice_factory`): a 429 cools the primary's key down and a
529 with retry-after cools its endpoint down, so a sluice shared between tests would skip the
primary in the next one. Every test asserts what each llmock's journal saw.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

from conftest import (
    REQUESTS,
    TENANT,
    TOKENS,
    VIRTUAL_KEY,
    Sluice,
    SluiceFactory,
    Upstream,
    anthropic_client,
    llmock_upstream,
    openai_client,
    stable,
)
from harness import ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, diff, pool, route

pytestmark = pytest.mark.sluice

MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Explain failover between two upstream pools"}]
CHAT = {"model": MODEL, "messages": MESSAGES}
MESSAGE = {"model": CLAUDE, "max_tokens": 256, "messages": MESSAGES}
PRIMARY_TTFB_MS = 1000


@pytest.fixture(scope="module")
def primary(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-primary") as u:
        yield u


@pytest.fixture(scope="module")
def fallback(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-fallback") as u:
        yield u


@pytest.fixture
def sluice_ha(sluice_factory: SluiceFactory, primary: Upstream,
              fallback: Upstream) -> Iterator[Sluice]:
    """sluice with routes over pools [primary, fallback]; the primary answers its header
    within 1 s or is abandoned. Both llmocks start each test empty (journal, scenarios)."""
    primary_openai = pool("primary-openai", "openai", primary.base, OPENAI_KEY_ENV)
    primary_anthropic = pool("primary-anthropic", "anthropic", primary.anthropic_url,
                             ANTHROPIC_KEY_ENV)
    for p in (primary_openai, primary_anthropic):
        p["timeouts"]["ttfb_ms"] = PRIMARY_TTFB_MS
    instance = sluice_factory.start(
        pools=[primary_openai, primary_anthropic,
               pool("fallback-openai", "openai", fallback.base, OPENAI_KEY_ENV),
               pool("fallback-anthropic", "anthropic", fallback.anthropic_url,
                    ANTHROPIC_KEY_ENV)],
        routes=[route("anthropic", "/v1/messages", ["primary-anthropic", "fallback-anthropic"]),
                route("openai", "/v1", ["primary-openai", "fallback-openai"])],
    )
    primary.reset()
    fallback.reset()
    try:
        yield instance
    finally:
        primary.reset()
        fallback.reset()


def requests_delta(sluice: Sluice, before: Any) -> float:
    """How much sluice_requests_total grew, all labels together."""
    return sluice.scrape().sum(REQUESTS) - before.sum(REQUESTS)


def call_chat(client: openai.OpenAI, stream: bool) -> tuple[Any, str]:
    """CHAT through `client`: the stable answer (chunks when streamed) and sluice's request id."""
    if stream:
        chunks = client.chat.completions.create(**CHAT, stream=True)
        return [stable(c) for c in chunks], chunks.response.headers["x-sluice-request-id"]
    raw = client.chat.completions.with_raw_response.create(**CHAT)
    return stable(raw.parse()), raw.headers["x-sluice-request-id"]


def attempts(entry: dict[str, str]) -> list[tuple[str, str, str]]:
    """The access log's `attempts=pool/host:port:status:outcome,...` as (pool, status, outcome)."""
    out = []
    for attempt in entry["attempts"].split(","):
        pool_name, _, rest = attempt.partition("/")
        _host, _port, status, outcome = rest.rsplit(":", 3)
        out.append((pool_name, status, outcome))
    return out


def chat_usage_from(upstream: Upstream) -> Any:
    """The usage `upstream` reports for CHAT (llmock is deterministic), asked directly."""
    client = openai_client(upstream.openai_url, "sk-direct")
    chunks = list(client.chat.completions.create(**CHAT, stream=True,
                                                 stream_options={"include_usage": True}))
    return chunks[-1].usage


# -- 1. primary answers 429 with retry-after -------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["non_stream", "stream"])
def test_primary_429_fails_over(sluice_ha: Sluice, primary: Upstream, fallback: Upstream,
                                stream: bool) -> None:
    direct_client = openai_client(fallback.openai_url, "sk-direct")
    if stream:
        direct = [stable(c) for c in direct_client.chat.completions.create(**CHAT, stream=True)]
        usage = chat_usage_from(fallback)
    else:
        answer = direct_client.chat.completions.create(**CHAT)
        direct, usage = stable(answer), answer.usage
    fallback.clear_requests()
    primary.scenario({"type": "fail", "status": 429, "retry_after": 0.5})

    client = openai_client(sluice_ha.openai_url, VIRTUAL_KEY)  # max_retries=0
    meter = sluice_ha.meter()
    via, request_id = call_chat(client, stream)

    assert via == direct, "the client did not get exactly the fallback's answer"
    seen_primary, seen_fallback = primary.requests(), fallback.requests()
    assert [r["status"] for r in seen_primary] == [429], seen_primary
    assert [r["status"] for r in seen_fallback] == [200], seen_fallback
    assert seen_fallback[0]["completed"] is True
    assert attempts(sluice_ha.access_entry(request_id)) == [
        ("primary-openai", "429", "failover"), ("fallback-openai", "200", "ok")]
    meter.assert_counted(model=MODEL, prompt=usage.prompt_tokens,
                         completion=usage.completion_tokens, route="openai",
                         pool="fallback-openai")
    grew = requests_delta(sluice_ha, meter.before)
    assert grew == 1, (f"{REQUESTS} grew by {grew} for one call: "
                       f"{diff(meter.before, sluice_ha.scrape(), REQUESTS)}")


# -- 2. primary drops the connection mid-stream ------------------------------------------------

def test_primary_disconnect_after_chunks_is_an_error_not_a_failover(
        sluice_ha: Sluice, primary: Upstream, fallback: Upstream) -> None:
    """After 3 events went to the client, failover is no longer possible: the client gets
    those 3 events, then an error the SDK raises; nothing comes from the fallback."""
    direct = [stable(c) for c in openai_client(fallback.openai_url, "sk-direct")
              .chat.completions.create(**CHAT, stream=True)]
    fallback.clear_requests()
    primary.scenario({"type": "stream_fault", "kind": "disconnect", "after_chunks": 3})

    client = openai_client(sluice_ha.openai_url, VIRTUAL_KEY)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(**CHAT, stream=True):
            received.append(stable(chunk))
    assert not isinstance(caught.value, (openai.APIConnectionError, openai.APIStatusError)), (
        f"expected an in-stream error event (README: never a silent cut), got {caught.value!r}")
    assert received == direct[:3], "the client should get exactly the 3 events sent"

    seen_primary = primary.requests()
    assert len(seen_primary) == 1 and seen_primary[0]["completed"] is False, seen_primary
    assert seen_primary[0]["fault"] == "stream:disconnect@3", seen_primary
    assert fallback.requests() == [], "a stream was glued on from the fallback"


def test_primary_disconnect_before_first_event(sluice_ha: Sluice, primary: Upstream,
                                               fallback: Upstream) -> None:
    """The closest llmock comes to dropping before any byte: it cannot drop a connection
    before its status line, so `after_chunks: 0` sends the 200 header, then closes before any
    body byte. sluice holds a streamed answer's header until its first content event (README:
    commit on content), so nothing reached the client yet: it fails over, and the client gets
    the fallback's whole stream."""
    direct = [stable(c) for c in openai_client(fallback.openai_url, "sk-direct")
              .chat.completions.create(**CHAT, stream=True)]
    fallback.clear_requests()
    primary.scenario({"type": "stream_fault", "kind": "disconnect", "after_chunks": 0})

    client = openai_client(sluice_ha.openai_url, VIRTUAL_KEY)
    stream = client.chat.completions.create(**CHAT, stream=True)
    received = [stable(c) for c in stream]
    assert received == direct, "the client did not get exactly the fallback's stream"

    seen_primary = primary.requests()
    assert len(seen_primary) == 1 and seen_primary[0]["fault"] == "stream:disconnect@0"
    assert [r["status"] for r in fallback.requests()] == [200]
    entry = sluice_ha.access_entry(stream.response.headers["x-sluice-request-id"])
    assert attempts(entry) == [("primary-openai", "200", "cut_before_content"),
                               ("fallback-openai", "200", "ok")]


# -- 3. primary truncates the stream ------------------------------------------------------------

def test_primary_truncated_stream_ends_with_a_native_error_and_is_estimated(
        sluice_ha: Sluice, primary: Upstream, fallback: Upstream) -> None:
    """llmock ends the body cleanly after 3 events, with no finish_reason and no [DONE]
    (nor the usage chunk sluice asked for). Direct, the SDK ends such a short stream without
    raising (LLMOCK_NOTES.md); through sluice the 3 events arrive, then a native in-stream
    error (`upstream_truncated`) that the SDK raises: never a silent cut. The access log marks
    the request completed=false and its tokens, with no usage from the upstream, estimated."""
    direct = [stable(c) for c in openai_client(fallback.openai_url, "sk-direct")
              .chat.completions.create(**CHAT, stream=True)]
    fallback.clear_requests()
    primary.scenario({"type": "stream_fault", "kind": "truncate", "after_chunks": 3})

    client = openai_client(sluice_ha.openai_url, VIRTUAL_KEY)
    meter = sluice_ha.meter()
    stream = client.chat.completions.create(**CHAT, stream=True)
    request_id = stream.response.headers["x-sluice-request-id"]
    received = []
    with pytest.raises(openai.APIError) as raised:
        for c in stream:
            received.append(stable(c))
    assert "upstream_truncated" in str(raised.value.body) or raised.value.code == "upstream_truncated", raised.value

    assert received == direct[:3]
    assert all(c["choices"][0]["finish_reason"] is None for c in received)
    entry = sluice_ha.access_entry(request_id)
    assert entry["completed"] == "false", entry
    assert entry["token_source"] == "estimated", entry
    assert entry["pool"] == "primary-openai", entry
    after = sluice_ha.scrape()
    estimated = (after.sum(TOKENS, tenant=TENANT, source="estimated")
                 - meter.before.sum(TOKENS, tenant=TENANT, source="estimated"))
    exact = (after.sum(TOKENS, tenant=TENANT, source="exact")
             - meter.before.sum(TOKENS, tenant=TENANT, source="exact"))
    assert estimated > 0 and exact == 0, diff(meter.before, after, TOKENS)
    assert requests_delta(sluice_ha, meter.before) == 1

    seen_primary = primary.requests()
    assert len(seen_primary) == 1 and seen_primary[0]["fault"] == "stream:truncate@3"
    assert fallback.requests() == []


# -- 4. primary stalls past its time-to-first-byte timeout --------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["non_stream", "stream"])
def test_primary_stall_past_ttfb_fails_over(sluice_ha: Sluice, primary: Upstream,
                                            fallback: Upstream, stream: bool) -> None:
    """The primary holds its response (no status line) for 2.5 s, past its 1 s TTFB timeout:
    sluice abandons it and the client gets the fallback's 200 (within the SDK's 10 s).

    The primary's connect_ms is 2000 (the `pool()` helper): a TTFB clock started with the
    attempt and bounded by connect_ms + ttfb_ms (3 s) instead of ttfb_ms from the request
    being sent lets this 2.5 s stall through."""
    direct_client = openai_client(fallback.openai_url, "sk-direct")
    if stream:
        direct: Any = [stable(c) for c in direct_client.chat.completions.create(**CHAT,
                                                                                stream=True)]
        usage = chat_usage_from(fallback)
    else:
        answer = direct_client.chat.completions.create(**CHAT)
        direct, usage = stable(answer), answer.usage
    fallback.clear_requests()
    primary.scenario({"type": "delay", "seconds": 2.5})

    client = openai_client(sluice_ha.openai_url, VIRTUAL_KEY)
    meter = sluice_ha.meter()
    started = time.monotonic()
    via, request_id = call_chat(client, stream)
    took = time.monotonic() - started

    entry = sluice_ha.access_entry(request_id)
    seen_fallback = fallback.requests()
    assert [r["status"] for r in seen_fallback] == [200], (
        f"no failover: the call took {took:.2f} s and was served by {entry['pool']} "
        f"(attempts={entry['attempts']}) although the primary held its header for 2.5 s "
        f"with ttfb_ms {PRIMARY_TTFB_MS}")
    assert attempts(entry) == [("primary-openai", "0", "upstream_timeout"),
                               ("fallback-openai", "200", "ok")], entry
    assert via == direct
    meter.assert_counted(model=MODEL, prompt=usage.prompt_tokens,
                         completion=usage.completion_tokens, route="openai",
                         pool="fallback-openai")
    assert requests_delta(sluice_ha, meter.before) == 1
    # The abandoned primary request is journaled once llmock finishes its delay.
    seen_primary = primary.wait_for_requests(1)
    assert len(seen_primary) == 1, seen_primary


# -- 5. anthropic: primary overloaded (529) -------------------------------------------------------

def test_anthropic_primary_529_fails_over_stream(sluice_ha: Sluice, primary: Upstream,
                                                 fallback: Upstream) -> None:
    direct_events = list(anthropic_client(fallback.anthropic_url, "sk-ant-direct")
                         .messages.create(**MESSAGE, stream=True))
    direct = [stable(e) for e in direct_events]
    prompt = direct_events[0].message.usage.input_tokens
    completion = [e for e in direct_events if e.type == "message_delta"][-1].usage.output_tokens
    fallback.clear_requests()
    primary.scenario({"type": "fail", "status": 529, "match": {"provider": "anthropic"}})

    client = anthropic_client(sluice_ha.anthropic_url, VIRTUAL_KEY)  # max_retries=0
    meter = sluice_ha.meter()
    events = client.messages.create(**MESSAGE, stream=True)
    via = [stable(e) for e in events]

    assert via == direct
    seen_primary, seen_fallback = primary.requests(), fallback.requests()
    assert [r["status"] for r in seen_primary] == [529], seen_primary
    assert [(r["status"], r["path"]) for r in seen_fallback] == [(200, "/anthropic/v1/messages")]
    entry = sluice_ha.access_entry(events.response.headers["x-sluice-request-id"])
    assert attempts(entry) == [("primary-anthropic", "529", "failover"),
                               ("fallback-anthropic", "200", "ok")], entry
    meter.assert_counted(model=CLAUDE, prompt=prompt, completion=completion,
                         route="anthropic", pool="fallback-anthropic")
    assert requests_delta(sluice_ha, meter.before) == 1
