"""Request coalescing (`coalesce: true`) as the official SDKs see it: 100 identical
streamed chat requests in flight at the same time make one upstream request; every client
receives the complete stream, those that join mid-stream included; when every client leaves,
the upstream request is abandoned; a client that stops reading a long answer is cut (its SDK
raises the native error when it reads again: openai's code `fell_behind`, anthropic's type
`api_error`) while the others get all of it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import openai
import pytest

from conftest import (ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, SDK_TIMEOUT_S, VIRTUAL_KEY, Sluice, SluiceFactory,
                      Upstream, llmock_upstream)
from harness import pool, route
from upstreams import burst

pytestmark = pytest.mark.sluice

CLIENTS = 100
# llmock's reply to it has about 15 words, one event each, 150 ms apart: the stream lasts
# over 2 s, so the 50 clients started at its first content all join it even on a slow,
# loaded machine (with 60 ms, about 1.4 s through a debug build, one CI run saw a late
# client arrive after the stream had ended and make a call of its own).
PROMPT = ("Please summarise the coalescing design of the sidecar proxy in one long sentence "
          "that mentions leaders followers flights cursors bounds and cancellation")
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True,
                        "messages": [{"role": "user", "content": PROMPT}]}


@pytest.fixture(scope="module")
def paced_upstream(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-paced", ["--stream-chunk-delay-ms", "150"]) as u:
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


# A long answer: 16,000 events of about 1 KB, far more than a client's socket buffers hold.
BURST_EVENTS, BURST_PAD = 16_000, 1000
LONG_PROMPT = [{"role": "user", "content": "a very long answer"}]


@pytest.fixture
def burst_upstream() -> Iterator[burst.Upstream]:
    upstream = burst.Upstream(BURST_EVENTS, BURST_PAD)
    yield upstream
    upstream.stop()


def wait_sum(s: Sluice, name: str, route_name: str, at_least: float,
             timeout_s: float = 10.0) -> float:
    """`name`'s sum over the route's series once it reaches `at_least` (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = s.scrape().sum(name, route=route_name)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


class LongStream:
    """One API's long streamed request through the official SDK: start it, read a part of
    it or the rest of it as (text, finish reason, completion tokens)."""

    def __init__(self, api: str, s: Sluice) -> None:
        self.api = api
        if api == "openai":
            self.client: Any = openai.OpenAI(base_url=s.openai_url, api_key=VIRTUAL_KEY,
                                             max_retries=0, timeout=SDK_TIMEOUT_S)
        else:
            self.client = anthropic.Anthropic(base_url=s.anthropic_url, api_key=VIRTUAL_KEY,
                                              max_retries=0, timeout=SDK_TIMEOUT_S)

    def start(self) -> tuple[Iterator[Any], str]:
        """The SDK's stream and the request id sluice answered with."""
        if self.api == "openai":
            raw = self.client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
                messages=LONG_PROMPT)
        else:
            raw = self.client.messages.with_raw_response.create(
                model="claude-sonnet-4-6", max_tokens=64, stream=True,
                messages=LONG_PROMPT)
        return iter(raw.parse()), raw.headers["x-sluice-request-id"]

    def read(self, stream: Iterator[Any], first_only: bool = False
             ) -> tuple[str, str | None, int | None]:
        """What `stream` yields up to its first text (`first_only`) or its end."""
        text: list[str] = []
        finish, completion = None, None
        for item in stream:
            if self.api == "openai":
                for choice in item.choices:
                    text.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
                completion = item.usage.completion_tokens if item.usage else completion
            elif item.type == "content_block_delta":
                text.append(item.delta.text)
            elif item.type == "message_delta":
                finish, completion = item.delta.stop_reason, item.usage.output_tokens
            if first_only and "".join(text):
                break
        return "".join(text), finish, completion

    def cut_error(self, exc: Exception) -> str:
        """The error code (OpenAI) or type (Anthropic) of the native error event the SDK
        raised."""
        body = getattr(exc, "body", None)
        if self.api == "openai":
            return str(getattr(exc, "code", None))
        return str(body["error"]["type"]) if isinstance(body, dict) else repr(body)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_follower_that_stops_reading_is_cut_with_a_native_error_and_the_others_get_it_all(
        sluice_factory: SluiceFactory, burst_upstream: burst.Upstream, api: str) -> None:
    key_env = OPENAI_KEY_ENV if api == "openai" else ANTHROPIC_KEY_ENV
    coalesce = route(api, "/v1/messages" if api == "anthropic" else "/v1", ["burst"])
    coalesce["coalesce"] = True
    s = sluice_factory.start(
        pools=[pool("burst", api, burst_upstream.url, key_env)], routes=[coalesce],
        cache={"max_flight_bytes": 65536, "max_flight_lag_ms": 300})
    sdk = LongStream(api, s)
    leader, _ = sdk.start()
    first, _, _ = sdk.read(leader, first_only=True)
    # The follower reads its first text, then nothing while the answer is sent.
    follower, follower_id = sdk.start()
    got, _, _ = sdk.read(follower, first_only=True)
    assert got == first == burst.token(0, BURST_PAD)
    assert wait_sum(s, "sluice_coalesced_requests_total", api, 1) == 1
    burst_upstream.release()

    # The leader's client gets the whole answer and its usage, never held back for long.
    rest, finish, completion = sdk.read(leader)
    assert first + rest == burst_upstream.answer()
    assert finish == ("stop" if api == "openai" else "end_turn")
    assert completion == BURST_EVENTS
    assert len(burst_upstream.requests) == 1, "one shared upstream call"
    # Counted when it is cut, while it still reads nothing.
    assert wait_sum(s, "sluice_coalesce_clients_cut_total", api, 1) == 1

    # The follower, reading at last, gets more of the answer, then its SDK raises the native
    # error event sluice ended its stream with.
    with pytest.raises((openai.APIError, anthropic.APIError)) as cut:
        sdk.read(follower)
    assert sdk.cut_error(cut.value) == ("fell_behind" if api == "openai" else "api_error")
    assert "fell more than 65536 bytes behind" in str(cut.value)
    entry = s.access_entry(follower_id)
    assert entry["error"] == "fell_behind", entry
    assert entry["client_disconnected"] == "false", entry
