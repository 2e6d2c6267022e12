"""The response cache's Redis tier (README "Response cache: the Redis tier") with the official
SDKs: two sluice processes (replicas) sharing one redis-server (Debian package, on a free
port, stopped after each test) in front of the session llmock.

- An answer given by one replica is a hit on the other, one upstream request in all: OpenAI
  chat plain and streamed, Anthropic messages; the hit's content equals the first answer's.
- Redis killed: both replicas keep serving (what they hold in memory as hits, the rest
  upstream); no request fails or waits much past the tier's `timeout_ms`.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import anthropic
import openai
import pytest

from conftest import (
    VIRTUAL_KEY,
    Sluice,
    SluiceFactory,
    Upstream,
    anthropic_client,
    openai_client,
)
from harness import (
    ANTHROPIC_KEY_ENV,
    OPENAI_KEY_ENV,
    Proc,
    free_port,
    pool,
    route,
    wait_listening,
)

pytestmark = pytest.mark.sluice

MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
TIMEOUT_MS = 50
CACHE_HEADER = "x-sluice-cache"


@contextlib.contextmanager
def redis_server(workdir: Path, name: str) -> Iterator[tuple[Proc, str]]:
    """A redis-server without persistence on a free loopback port, for the `with` block."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (Debian package redis-server)")
    port = free_port()
    proc = Proc.start(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], workdir / f"{name}.log")
    try:
        wait_listening(f"127.0.0.1:{port}", proc)
        yield proc, f"redis://127.0.0.1:{port}"
    finally:
        proc.stop()


def wait_entries(url: str, n: int, timeout_s: float = 10.0) -> None:
    """Wait (bounded) until the Redis at `url` holds `n` cache entries (`redis-cli --scan`)."""
    port = url.rsplit(":", 1)[1]
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(["redis-cli", "-p", port, "--scan", "--pattern",
                              "sluice:cache:v1:*"], capture_output=True, text=True, check=True)
        got = len(out.stdout.split())
        if got >= n:
            return
        assert time.monotonic() < deadline, f"Redis holds {got} cache entries, want {n}"
        time.sleep(0.02)


def replicas(factory: SluiceFactory, upstream: Upstream, redis_url: str) -> tuple[Sluice, Sluice]:
    """Two sluices with the same config: OpenAI and Anthropic routes caching in Redis."""
    cached = {"store": "redis", "ttl_ms": 60000}

    def start() -> Sluice:
        return factory.start(
            pools=[pool("openai", "openai", upstream.base, OPENAI_KEY_ENV),
                   pool("anthropic", "anthropic", upstream.anthropic_url, ANTHROPIC_KEY_ENV)],
            routes=[{**route("anthropic-messages", "/v1/messages", ["anthropic"]),
                     "cache": cached},
                    {**route("openai", "/v1", ["openai"]), "cache": cached}],
            cache={"redis": {"url": redis_url, "timeout_ms": TIMEOUT_MS}},
        )

    a, b = start(), start()
    # A subscription to the purge channel empties the memory tier (what it held while no purge
    # could be heard may have been purged): wait for it before anything is kept there.
    for s in (a, b):
        deadline = time.monotonic() + 10
        while s.scrape().sum("sluice_cache_purge_channel_subscribed") != 1:
            assert time.monotonic() < deadline, "not subscribed to the purge channel"
            time.sleep(0.02)
    return a, b


def chat(client: openai.OpenAI, prompt: str) -> tuple[str, str, float]:
    """A deterministic (temperature 0) chat call: cache header, answer, seconds taken."""
    t0 = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, temperature=0, messages=[{"role": "user", "content": prompt}])
    took = time.monotonic() - t0
    return raw.headers.get(CACHE_HEADER, ""), raw.parse().choices[0].message.content, took


def chat_stream(client: openai.OpenAI, prompt: str) -> tuple[str, str]:
    """The same, streamed: cache header and the concatenated content deltas."""
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, temperature=0, stream=True,
            messages=[{"role": "user", "content": prompt}]) as raw:
        header = raw.headers.get(CACHE_HEADER, "")
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return header, text


def message(client: anthropic.Anthropic, prompt: str) -> tuple[str, str]:
    """An Anthropic call, cacheable by the client's opt-in header (this SDK's
    `messages.create` takes no `temperature`)."""
    raw = client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": prompt}],
        extra_headers={CACHE_HEADER: "on"})
    return raw.headers.get(CACHE_HEADER, ""), raw.parse().content[0].text


def upstream_count(upstream: Upstream) -> int:
    return len(upstream.requests())


def test_an_answer_from_one_replica_is_a_hit_on_the_other(
        workdir: Path, upstream: Upstream, sluice_factory: SluiceFactory) -> None:
    with redis_server(workdir, "redis-shared") as (_, url):
        a, b = replicas(sluice_factory, upstream, url)
        oa, ob = (openai_client(s.openai_url, VIRTUAL_KEY) for s in (a, b))
        aa, ab = (anthropic_client(s.anthropic_url, VIRTUAL_KEY) for s in (a, b))
        upstream.clear_requests()

        prompt = "Which replica answered this deterministic question first?"
        header, first, _ = chat(oa, prompt)
        assert header == "miss"
        # The write to Redis is spawned after the answer: wait for it (bounded).
        wait_entries(url, 1)
        header, second, _ = chat(ob, prompt)
        assert (header, second) == ("hit", first)
        assert upstream_count(upstream) == 1

        prompt = "Stream the shared answer back to me, replica"
        header, first = chat_stream(ob, prompt)
        assert header == "miss" and first
        wait_entries(url, 2)
        header, second = chat_stream(oa, prompt)
        assert (header, second) == ("hit", first)
        assert upstream_count(upstream) == 2

        prompt = "Is an Anthropic answer shared between replicas too?"
        header, first = message(aa, prompt)
        assert header == "miss"
        wait_entries(url, 3)
        header, second = message(ab, prompt)
        assert (header, second) == ("hit", first)
        assert upstream_count(upstream) == 3


def test_with_redis_killed_both_replicas_keep_serving(
        workdir: Path, upstream: Upstream, sluice_factory: SluiceFactory) -> None:
    with redis_server(workdir, "redis-killed") as (redis, url):
        a, b = replicas(sluice_factory, upstream, url)
        oa, ob = (openai_client(s.openai_url, VIRTUAL_KEY) for s in (a, b))
        warm = "A question both replicas answered before Redis went away"
        assert chat(oa, warm)[0] == "miss"
        wait_entries(url, 1)
        assert chat(ob, warm)[0] == "hit"
        healthy = [chat(c, f"healthy question number {i}")[2]
                   for i, c in enumerate([oa, ob] * 5)]

        redis.stop()
        upstream.clear_requests()
        outcomes: list[tuple[str, float]] = []
        for i, c in enumerate([oa, ob] * 10):
            header, answer, took = chat(c, f"question number {i} while Redis is down")
            assert answer
            outcomes.append((header, took))
        assert [h for h, _ in outcomes] == ["miss"] * 20
        assert upstream_count(upstream) == 20
        # What each replica holds in memory is still served, without the upstream.
        assert chat(oa, warm)[0] == "hit" and chat(ob, warm)[0] == "hit"
        assert upstream_count(upstream) == 20
        killed = [t for _, t in outcomes]
        print(f"\nmisses, slowest: Redis healthy {max(healthy) * 1000:.1f} ms, "
              f"Redis killed {max(killed) * 1000:.1f} ms (timeout_ms {TIMEOUT_MS})")
        assert max(killed) < max(healthy) + (TIMEOUT_MS + 500) / 1000, killed
        errors = sum(s.scrape().sum("sluice_cache_redis_errors_total") for s in (a, b))
        assert errors > 0
