"""Hedging (README "Hedging"): on a route with `hedge: {after_ms}`, a primary that has
delivered no content after `after_ms` is raced by the next candidate; the first to deliver
content is served and the other's connection is closed at once.

The primary is test_commit's scripted upstream playing `stall` (200, SSE header, then nothing
until sluice closes the connection, whose time it records); the fallback is llmock. The
official openai SDK streams through sluice: its time to first token is `after_ms` plus the
fallback's own time to first token (reached through sluice on a route without the primary, so
the debug build's own cost is not counted as hedging's), within a coarse bound; medians of
interleaved rounds are printed."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import VIRTUAL_KEY, Sluice, SluiceFactory, Upstream, llmock_upstream, openai_client
from harness import OPENAI_KEY_ENV, pool, route
from test_commit import MARK, Scripted, chat_call, scripted  # noqa: F401 - a fixture
from test_failover import attempts

pytestmark = pytest.mark.sluice

AFTER_MS = 300
RUNS = 5
# Coarse: hedging must serve the fallback's first content as it arrives, not at a later
# deadline (the precise figure is printed; performance targets live in the benchmarks).
TOLERANCE_S = 0.05


@pytest.fixture(scope="module")
def fallback(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-hedge-fallback") as u:
        yield u


@pytest.fixture
def sluice_hedge(sluice_factory: SluiceFactory, scripted: Scripted, fallback: Upstream) -> Sluice:
    primary = pool("primary-openai", "openai", scripted.url, OPENAI_KEY_ENV)
    primary["breaker"] = {"consecutive_failures": 100}
    hedged = route("hedged", "/v1", ["primary-openai", "fallback-openai"])
    hedged["failover"] = {"first_token_ms": 20000}
    hedged["hedge"] = {"after_ms": AFTER_MS}
    return sluice_factory.start(
        pools=[primary, pool("fallback-openai", "openai", fallback.base, OPENAI_KEY_ENV)],
        routes=[route("plain", "/v1", ["fallback-openai"], header=("x-plain", "1")), hedged])


def test_a_stalled_primary_is_hedged_and_the_fallback_wins(
        sluice_hedge: Sluice, scripted: Scripted, fallback: Upstream) -> None:
    via = openai_client(sluice_hedge.openai_url, VIRTUAL_KEY)
    direct = openai_client(fallback.openai_url, "sk-direct")
    meter = sluice_hedge.meter()
    ttft_via, ttft_plain, close_gaps = [], [], []
    last = want = None
    for _ in range(RUNS):
        want = chat_call(direct, {})
        ttft_plain.append(chat_call(via, {"x-plain": "1"})[0])
        closed_before = len(scripted.closed_at())
        started = time.time()
        last = chat_call(via, {"x-script": "stall"})
        ttft_via.append(last[0])
        first_content_at = started + last[0]
        # The primary's stalled connection was closed when the fallback won.
        deadline = time.time() + 5
        while len(closed := scripted.closed_at()) == closed_before:
            assert time.time() < deadline, "the primary's connection was never closed"
            time.sleep(0.01)
        close_gaps.append(closed[-1] - first_content_at)
    assert last is not None and want is not None
    _, text, usage, dumps, request_id = last
    added = statistics.median(v - p for v, p in zip(ttft_via, ttft_plain))
    print(f"\nhedged TTFT median {statistics.median(ttft_via) * 1000:.1f} ms = after_ms "
          f"{AFTER_MS} + fallback via sluice {statistics.median(ttft_plain) * 1000:.2f} ms "
          f"+ {(added - AFTER_MS / 1000) * 1000:.2f} ms; primary closed "
          f"{statistics.median(close_gaps) * 1000:.2f} ms after the first content")

    # The fallback's complete answer, nothing of the primary.
    assert text and text == want[1], (text, want[1])
    assert usage == want[2]
    assert not any(MARK in d for d in dumps)
    assert scripted.requests() == RUNS
    # TTFT = after_ms + the fallback's TTFT (coarse bound), never before after_ms.
    assert min(ttft_via) >= AFTER_MS / 1000
    assert added - AFTER_MS / 1000 < TOLERANCE_S, (ttft_via, ttft_plain)
    # Closed at once: within 100 ms of the winner's first content reaching the SDK (the
    # loser is dropped before that content is written).
    assert max(close_gaps) < 0.1, close_gaps

    entry = sluice_hedge.access_entry(request_id)
    assert attempts(entry) == [("primary-openai", "200", "hedge_lost"),
                               ("fallback-openai", "200", "ok")], entry
    after = sluice_hedge.scrape()
    assert (after.sum("sluice_hedges_total", route="hedged")
            - meter.before.sum("sluice_hedges_total", route="hedged")) == RUNS
    assert (after.sum("sluice_hedge_wins_total", route="hedged", lane="hedge")
            - meter.before.sum("sluice_hedge_wins_total", route="hedged", lane="hedge")) == RUNS
    assert after.sum("sluice_hedge_cost_tokens_total", pool="primary-openai") > 0
