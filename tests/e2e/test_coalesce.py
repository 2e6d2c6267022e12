"""Request coalescing (`coalesce: true`) as the official openai SDK sees it: 100 identical
streamed chat requests in flight at the same time make one upstream request; every client
receives the complete stream, those that join mid-stream included; when every client leaves,
the upstream request is abandoned."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from conftest import (OPENAI_KEY_ENV, SDK_TIMEOUT_S, VIRTUAL_KEY, Sluice, SluiceFactory,
                      Upstream, llmock_upstream)
from harness import pool, route

pytestmark = pytest.mark.sluice

CLIENTS = 100
# llmock's reply to it has about 15 words, one event each, 60 ms apart: the stream lasts
# about 0.5 s and the clients overlap.
PROMPT = ("Please summarise the coalescing design of the sidecar proxy in one long sentence "
          "that mentions leaders followers flights cursors bounds and cancellation")
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True,
                        "messages": [{"role": "user", "content": PROMPT}]}


@pytest.fixture(scope="module")
def paced_upstream(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-paced", ["--stream-chunk-delay-ms", "60"]) as u:
        yield u


@pytest.fixture
def coalescing(sluice_factory: SluiceFactory, paced_upstream: Upstream) -> Sluice:
    paced_upstream.reset()
    coalesce = route("openai", "/v1", ["paced"])
    coalesce["coalesce"] = True
    return sluice_factory.start(
        pools=[pool("paced", "openai", paced_upstream.base, OPENAI_KEY_ENV)],
        routes=[coalesce])


def async_client(s: Sluice, http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=s.openai_url, api_key=VIRTUAL_KEY, max_retries=0,
                              timeout=SDK_TIMEOUT_S, http_client=http)


async def answer(client: openai.AsyncOpenAI, started: asyncio.Event | None = None
                 ) -> tuple[str, str | None]:
    """The streamed reply's text and finish reason; sets `started` at the first content."""
    stream = await client.chat.completions.create(**CHAT)
    text, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
                if started is not None:
                    started.set()
            finish = choice.finish_reason or finish
    return "".join(text), finish


async def first_half_then_second(s: Sluice) -> list[tuple[str, str | None]]:
    """50 clients at once, then 50 more once the first has content (mid-stream joiners)."""
    limits = httpx.Limits(max_connections=2 * CLIENTS, max_keepalive_connections=2 * CLIENTS)
    async with httpx.AsyncClient(limits=limits) as http:
        client = async_client(s, http)
        started = asyncio.Event()
        early = [asyncio.create_task(answer(client, started)) for _ in range(CLIENTS // 2)]
        await asyncio.wait_for(started.wait(), SDK_TIMEOUT_S)
        late = [asyncio.create_task(answer(client)) for _ in range(CLIENTS - CLIENTS // 2)]
        return list(await asyncio.gather(*early, *late))


def test_identical_concurrent_streams_make_one_upstream_request(
        coalescing: Sluice, paced_upstream: Upstream) -> None:
    before = coalescing.scrape()
    answers = asyncio.run(first_half_then_second(coalescing))
    records = paced_upstream.wait_for_requests(1)
    assert len(records) == 1, f"{len(records)} upstream requests for {CLIENTS} clients"
    assert records[0]["completed"] is True
    text, finish = answers[0]
    assert finish == "stop"
    # The complete stream: what llmock streams for this prompt to a client of its own.
    direct = openai.OpenAI(base_url=paced_upstream.openai_url, api_key="sk-direct",
                           max_retries=0, timeout=SDK_TIMEOUT_S)
    whole = "".join(c.delta.content or "" for chunk in direct.chat.completions.create(**CHAT)
                    for c in chunk.choices)
    assert text == whole and len(whole) > 40, (text, whole)
    assert all(a == (text, finish) for a in answers), (
        "every client (the 50 that joined mid-stream included) gets the complete stream")
    # The 99 followers are counted; the call itself is the leader's.
    deadline = time.monotonic() + 5
    while True:
        after = coalescing.scrape()
        followers = (after.sum("sluice_coalesced_requests_total", route="openai")
                     - before.sum("sluice_coalesced_requests_total", route="openai"))
        if followers >= CLIENTS - 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert followers == CLIENTS - 1


async def leave_after_first_content(s: Sluice, n: int) -> None:
    async with httpx.AsyncClient() as http:
        client = async_client(s, http)

        async def leave() -> None:
            stream = await client.chat.completions.create(**CHAT)
            async for chunk in stream:
                if any(c.delta.content for c in chunk.choices):
                    break
            await stream.close()

        await asyncio.gather(*(leave() for _ in range(n)))


def test_every_client_leaving_abandons_the_upstream_request(
        coalescing: Sluice, paced_upstream: Upstream) -> None:
    asyncio.run(leave_after_first_content(coalescing, 10))
    records = paced_upstream.wait_for_requests(1)
    assert len(records) == 1, records
    assert records[0]["completed"] is False, "the upstream stream was cut when all left"
