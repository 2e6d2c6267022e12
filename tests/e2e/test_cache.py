"""Response cache (README "Response cache") with the official SDKs against llmock: the same
deterministic request sent twice, stream and non-stream, OpenAI (chat and Responses) and
Anthropic, costs one upstream call; the second answer's content equals the first's; the
`x-sluice-cache` header says `miss` then `hit` (read through the SDKs' raw responses); a hit
says its `age` and the client's `cache-control: max-age` refuses an older one; an entry purged
through the admin listener is a miss again.

The added latency of a hit is measured, not asserted (timing belongs in benches): the p50 of
hits through this (debug) build is printed beside the p50 of the same request answered by
llmock directly, and `make bench` has the hit path's own cost."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conftest import (VIRTUAL_KEY, Sluice, SluiceFactory, Upstream, anthropic_client,
                      llmock_upstream, openai_client)
from harness import ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, pool, route

pytestmark = pytest.mark.sluice

PROMPT = "Tell me something worth caching about exact-match response caches"
CHAT = {"model": "gpt-4o-mini", "temperature": 0,
        "messages": [{"role": "user", "content": PROMPT}]}
# This anthropic SDK's `create` takes no `temperature` argument: sent as an extra body field.
MESSAGE = {"model": "claude-sonnet-4-6", "max_tokens": 256, "extra_body": {"temperature": 0},
           "messages": [{"role": "user", "content": PROMPT}]}
RESPONSES = {"model": "gpt-4.1-mini", "temperature": 0, "input": PROMPT}
HIT_RUNS = 200


@pytest.fixture
def cache_upstream(workdir: Path) -> Iterator[Upstream]:
    """An llmock of this test's own, so its journal counts only this test's requests."""
    with llmock_upstream(workdir, "llmock-cache") as u:
        yield u


def start(factory: SluiceFactory, upstream: Upstream) -> Sluice:
    cache = {"ttl_ms": 60000}
    return factory.start(
        pools=[pool("openai", "openai", upstream.base, OPENAI_KEY_ENV),
               pool("anthropic", "anthropic", upstream.anthropic_url, ANTHROPIC_KEY_ENV)],
        routes=[{**route("anthropic-messages", "/v1/messages", ["anthropic"]), "cache": cache},
                {**route("openai", "/v1", ["openai"]), "cache": cache}],
    )


def upstream_calls(upstream: Upstream, path_end: str) -> int:
    return sum(1 for r in upstream.requests() if r["path"].endswith(path_end))


def openai_answer(client: Any, stream: bool) -> tuple[str, str, str]:
    """(x-sluice-cache, content, response id) of one chat completion."""
    raw = client.chat.completions.with_raw_response.create(**CHAT, stream=stream)
    header = raw.headers.get("x-sluice-cache", "")
    parsed = raw.parse()
    if not stream:
        return header, parsed.choices[0].message.content, parsed.id
    parts, ids, finish = [], set(), None
    for chunk in parsed:
        ids.add(chunk.id)
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert finish == "stop", "the replayed stream carries its finish reason"
    assert len(ids) == 1, f"one id per stream: {ids}"
    return header, "".join(parts), ids.pop()


def responses_answer(client: Any, stream: bool) -> tuple[str, str, str]:
    """(x-sluice-cache, output text, response id) of one Responses call."""
    raw = client.responses.with_raw_response.create(**RESPONSES, stream=stream)
    header = raw.headers.get("x-sluice-cache", "")
    parsed = raw.parse()
    if not stream:
        return header, parsed.output_text, parsed.id
    text, resp_id, completed = [], "", False
    for event in parsed:
        if event.type == "response.created":
            resp_id = event.response.id
        elif event.type == "response.output_text.delta":
            text.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response.id == resp_id
    assert completed, "the replayed stream ends with response.completed, under one id"
    return header, "".join(text), resp_id


def anthropic_answer(client: Any, stream: bool) -> tuple[str, str, str]:
    """(x-sluice-cache, text, message id) of one Messages call."""
    raw = client.messages.with_raw_response.create(**MESSAGE, stream=stream)
    header = raw.headers.get("x-sluice-cache", "")
    parsed = raw.parse()
    if not stream:
        return header, "".join(b.text for b in parsed.content if b.type == "text"), parsed.id
    text, msg_id, stopped = [], "", False
    for event in parsed:
        if event.type == "message_start":
            msg_id = event.message.id
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            text.append(event.delta.text)
        elif event.type == "message_stop":
            stopped = True
    assert stopped, "the replayed stream ends with message_stop"
    return header, "".join(text), msg_id


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", ["openai", "responses", "anthropic"])
def test_the_same_deterministic_request_twice_costs_one_upstream_call(
        sluice_factory: SluiceFactory, cache_upstream: Upstream, api: str, stream: bool) -> None:
    s = start(sluice_factory, cache_upstream)
    if api == "openai":
        client = openai_client(s.openai_url, VIRTUAL_KEY)
        answer, path_end = openai_answer, "/chat/completions"
    elif api == "responses":
        client = openai_client(s.openai_url, VIRTUAL_KEY)
        answer, path_end = responses_answer, "/responses"
    else:
        client = anthropic_client(s.anthropic_url, VIRTUAL_KEY)
        answer, path_end = anthropic_answer, "/messages"
    first = answer(client, stream)
    second = answer(client, stream)
    assert first[0] == "miss" and second[0] == "hit", (first[0], second[0])
    assert second[1] == first[1] and first[1], "the hit's content equals the first answer's"
    assert second[2] != first[2], "a hit gets a fresh response id"
    assert upstream_calls(cache_upstream, path_end) == 1
    # Tokens are the upstream's only; the hit's are counted as saved.
    metrics = s.scrape()
    saved = metrics.sum("sluice_cache_saved_tokens_total", route=route_name(api),
                        kind="completion")
    assert saved > 0, "the hit saved the upstream's completion tokens"
    # The log lines carry the outcome and the same input hash.
    deadline = time.monotonic() + 5
    while len(lines := [e for e in s.access_log() if e.get("cache")]) < 2 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e["cache"] for e in lines] == ["miss", "hit"], lines
    assert lines[0]["input_hash"] == lines[1]["input_hash"]
    assert len(lines[0]["input_hash"]) == 64


def test_a_purged_entry_is_asked_again(sluice_factory: SluiceFactory,
                                       cache_upstream: Upstream) -> None:
    """`cache.admin_purge`: the entry named by the access log's input_hash is removed through
    the admin listener, and the SDK's next identical request is a miss again (README
    "Purging entries")."""
    cache = {"ttl_ms": 60000}
    s = sluice_factory.start(
        pools=[pool("openai", "openai", cache_upstream.base, OPENAI_KEY_ENV)],
        routes=[{**route("openai", "/v1", ["openai"]), "cache": cache}],
        cache={"admin_purge": True},
    )
    client = openai_client(s.openai_url, VIRTUAL_KEY)
    assert [openai_answer(client, True)[0] for _ in range(2)] == ["miss", "hit"]
    deadline = time.monotonic() + 5
    while not (lines := [e for e in s.access_log() if e.get("cache") == "miss"]) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    input_hash = lines[0]["input_hash"]
    purged = httpx.delete(f"http://{s.admin}/cache/entries/{input_hash}", timeout=5.0)
    assert purged.status_code == 200, purged.text
    assert purged.json() == {"input_hash": input_hash, "memory": "removed", "redis": "off"}
    third = openai_answer(client, True)
    assert third[0] == "miss" and third[1], third
    assert upstream_calls(cache_upstream, "/chat/completions") == 2
    assert openai_answer(client, True)[0] == "hit", "stored again after the purge"


def test_a_hit_says_its_age_and_max_age_asks_for_a_younger_answer(
        sluice_factory: SluiceFactory, cache_upstream: Upstream) -> None:
    """A hit carries `age` (whole seconds since the answer was stored, RFC 9111 section
    5.1); the client's `cache-control: max-age=N`, sent through the SDK's `extra_headers`,
    refuses an older answer: a miss, whose fresh answer replaces the entry."""
    s = start(sluice_factory, cache_upstream)
    client = openai_client(s.openai_url, VIRTUAL_KEY)

    def ask(headers: dict[str, str]) -> tuple[str, str | None, str]:
        raw = client.chat.completions.with_raw_response.create(**CHAT, extra_headers=headers)
        content = raw.parse().choices[0].message.content or ""
        return raw.headers.get("x-sluice-cache", ""), raw.headers.get("age"), content

    miss = ask({})
    assert miss[:2] == ("miss", None) and miss[2], miss
    assert ask({})[:2] == ("hit", "0")
    time.sleep(1.1)
    old = ask({"cache-control": "max-age=60"})
    assert old[0] == "hit" and old[1] in ("1", "2"), old
    assert old[2] == miss[2]
    assert upstream_calls(cache_upstream, "/chat/completions") == 1
    fresh = ask({"cache-control": "max-age=0"})
    assert fresh[:2] == ("miss", None) and fresh[2], fresh
    assert upstream_calls(cache_upstream, "/chat/completions") == 2
    assert ask({"cache-control": "max-age=0"})[:2] == ("hit", "0"), "the replaced entry"
    assert upstream_calls(cache_upstream, "/chat/completions") == 2


def route_name(api: str) -> str:
    return "anthropic-messages" if api == "anthropic" else "openai"


def p50_ms(url: str, headers: dict[str, str], body: dict[str, Any], runs: int) -> float:
    times = []
    with httpx.Client(timeout=10.0) as c:
        for _ in range(runs):
            t = time.perf_counter()
            r = c.post(url, headers=headers, json=body)
            times.append(time.perf_counter() - t)
            assert r.status_code == 200
    return statistics.median(times) * 1e3


def test_hit_latency_is_printed(sluice_factory: SluiceFactory, cache_upstream: Upstream) -> None:
    """p50 of a hit through sluice (the build `SLUICE_BIN` names; `make test` runs the debug
    build) vs the same answer from llmock directly, both timed with the same httpx client."""
    s = start(sluice_factory, cache_upstream)
    auth = {"authorization": f"Bearer {VIRTUAL_KEY}"}
    url = f"{s.openai_url}/chat/completions"
    assert httpx.post(url, headers=auth, json=CHAT, timeout=10.0).headers[
        "x-sluice-cache"] == "miss"
    hit = p50_ms(url, auth, CHAT, HIT_RUNS)
    direct = p50_ms(f"{cache_upstream.openai_url}/chat/completions", auth, CHAT, HIT_RUNS)
    assert upstream_calls(cache_upstream, "/chat/completions") == 1 + HIT_RUNS
    build = "release" if "release" in os.environ.get("SLUICE_BIN", "") else "debug"
    print(f"\ncache hit through sluice ({build} build): p50 {hit:.3f} ms over {HIT_RUNS}; "
          f"llmock answering directly: p50 {direct:.3f} ms")
