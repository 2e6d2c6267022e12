"""Retry policy per failure kind and error-aware failover (README "Failover, circuit breakers,
key rotation": `failover.retry`, `retry_on_error_codes`, `retry_on_error_messages`), as the
official SDKs see it through sluice:

- a transient 500 is retried on the same endpoint after a jittered backoff, and a persistent one
  is retried a bounded number of times before the fallback;
- a persistent 503 (not transient by default) goes to the fallback at once;
- a `400 context_length_exceeded` (OpenAI) or `prompt is too long` (Anthropic) from a pool with
  a small context window is served by the next, larger-context pool;
- a content-filter 400 reaches the client unchanged, after exactly one upstream request, even
  when its error type is listed.

The primary is an llmock that fails on cue (`POST /_llmock/scenario`) or has a small context
window (`--context-window`); the fallback is a plain llmock. Each test starts its own sluice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import anthropic
import openai
import pytest

from conftest import (VIRTUAL_KEY, Sluice, SluiceFactory, Upstream, anthropic_client,
                      llmock_upstream, openai_client, stable)
from harness import ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, pool, route
from test_failover import attempts

pytestmark = pytest.mark.sluice

MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
PROMPT = "Explain why a transient upstream error is worth one more try"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
MESSAGE = {"model": CLAUDE, "max_tokens": 256,
           "messages": [{"role": "user", "content": PROMPT}]}
RETRIES = "sluice_upstream_retries_total"
# Over the small pool's window (llmock counts len(text) // 4 tokens), under the large one's.
LONG_PROMPT = "Summarize this long document about upstream pools. " * 40
SMALL_WINDOW = 100


@pytest.fixture(scope="module")
def primary(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-retry-primary") as u:
        yield u


@pytest.fixture(scope="module")
def small(workdir: Path) -> Iterator[Upstream]:
    """An llmock whose context window is SMALL_WINDOW tokens."""
    with llmock_upstream(workdir, "llmock-small-context",
                         ["--context-window", str(SMALL_WINDOW)]) as u:
        yield u


@pytest.fixture(scope="module")
def fallback(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-retry-fallback") as u:
        yield u


def start(factory: SluiceFactory, first: Upstream, fallback: Upstream,
          **failover: Any) -> Sluice:
    """sluice with routes over [first, fallback] for both APIs and these failover rules;
    both upstreams start empty."""
    pools = [pool("first-openai", "openai", first.base, OPENAI_KEY_ENV),
             pool("first-anthropic", "anthropic", first.anthropic_url, ANTHROPIC_KEY_ENV),
             pool("fallback-openai", "openai", fallback.base, OPENAI_KEY_ENV),
             pool("fallback-anthropic", "anthropic", fallback.anthropic_url, ANTHROPIC_KEY_ENV)]
    routes = [route("anthropic", "/v1/messages", ["first-anthropic", "fallback-anthropic"]),
              route("openai", "/v1", ["first-openai", "fallback-openai"])]
    for r in routes:
        r["failover"] = dict(failover)
    instance = factory.start(pools=pools, routes=routes)
    first.reset()
    fallback.reset()
    return instance


def chat(sluice: Sluice, stream: bool, body: dict[str, Any] = CHAT) -> tuple[Any, str]:
    """`body` through sluice with the openai SDK (no SDK retries): the stable answer (chunks
    when streamed) and sluice's request id."""
    client = openai_client(sluice.openai_url, VIRTUAL_KEY)
    if stream:
        chunks = client.chat.completions.create(**body, stream=True)
        return [stable(c) for c in chunks], chunks.response.headers["x-sluice-request-id"]
    raw = client.chat.completions.with_raw_response.create(**body)
    return stable(raw.parse()), raw.headers["x-sluice-request-id"]


def direct_chat(upstream: Upstream, stream: bool, body: dict[str, Any] = CHAT) -> Any:
    client = openai_client(upstream.openai_url, "sk-direct")
    if stream:
        return [stable(c) for c in client.chat.completions.create(**body, stream=True)]
    return stable(client.chat.completions.create(**body))


def statuses(upstream: Upstream) -> list[int]:
    return [r["status"] for r in upstream.requests()]


# -- 1. a transient 500, then healthy: the same endpoint serves on the second try -------------

@pytest.mark.parametrize("stream", [False, True], ids=["non_stream", "stream"])
def test_transient_500_is_retried_on_the_same_endpoint(
        sluice_factory: SluiceFactory, primary: Upstream, fallback: Upstream,
        stream: bool) -> None:
    sluice = start(sluice_factory, primary, fallback)
    expected = direct_chat(primary, stream)
    primary.clear_requests()
    primary.scenario({"type": "fail", "status": 500, "times": 1})
    before = sluice.scrape()

    got, request_id = chat(sluice, stream)

    assert got == expected, "the client did not get the primary's answer"
    assert statuses(primary) == [500, 200]
    assert statuses(fallback) == []
    assert attempts(sluice.access_entry(request_id)) == [
        ("first-openai", "500", "retry"), ("first-openai", "200", "ok")]
    grew = sluice.scrape().sum(RETRIES, route="openai", pool="first-openai", reason="500") \
        - before.sum(RETRIES, route="openai", pool="first-openai", reason="500")
    assert grew == 1


# -- 2. persistent failures: bounded retries, then the fallback --------------------------------

def test_persistent_503_goes_to_the_fallback_without_a_same_endpoint_retry(
        sluice_factory: SluiceFactory, primary: Upstream, fallback: Upstream) -> None:
    sluice = start(sluice_factory, primary, fallback)
    expected = direct_chat(fallback, True)
    fallback.clear_requests()
    # No retry-after: the primary's endpoint is not cooled down, only failed over from.
    primary.scenario({"type": "fail", "status": 503, "times": None, "retry_after": 0})

    got, request_id = chat(sluice, True)

    assert got == expected
    assert statuses(primary) == [503]
    assert statuses(fallback) == [200]
    assert attempts(sluice.access_entry(request_id)) == [
        ("first-openai", "503", "failover"), ("fallback-openai", "200", "ok")]


@pytest.mark.parametrize("max_retries", [0, 2])
def test_persistent_500_is_retried_a_bounded_number_of_times(
        sluice_factory: SluiceFactory, primary: Upstream, fallback: Upstream,
        max_retries: int) -> None:
    sluice = start(sluice_factory, primary, fallback,
                   retry={"max_retries": max_retries, "backoff_ms": 20, "max_backoff_ms": 50})
    expected = direct_chat(fallback, False)
    fallback.clear_requests()
    primary.scenario({"type": "fail", "status": 500, "times": None})

    got, request_id = chat(sluice, False)

    assert got == expected
    assert statuses(primary) == [500] * (1 + max_retries)
    assert statuses(fallback) == [200]
    assert attempts(sluice.access_entry(request_id)) == (
        [("first-openai", "500", "retry")] * max_retries
        + [("first-openai", "500", "failover"), ("fallback-openai", "200", "ok")])


def test_the_attempt_budget_bounds_retries_too(
        sluice_factory: SluiceFactory, primary: Upstream, fallback: Upstream) -> None:
    """max_attempts counts every try: 5 retries allowed, 3 attempts in all, all on the
    primary; the client gets the primary's last 500 as is."""
    sluice = start(sluice_factory, primary, fallback, max_attempts=3,
                   retry={"max_retries": 5, "backoff_ms": 10, "max_backoff_ms": 20})
    primary.scenario({"type": "fail", "status": 500, "times": None})
    client = openai_client(sluice.openai_url, VIRTUAL_KEY)
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(**CHAT)
    assert raised.value.status_code == 500
    assert statuses(primary) == [500, 500, 500]
    assert statuses(fallback) == []


# -- 3. error-aware failover: a small-context pool, then a larger one --------------------------

LONG_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": LONG_PROMPT}]}
LONG_MESSAGE = {"model": CLAUDE, "max_tokens": 256,
                "messages": [{"role": "user", "content": LONG_PROMPT}]}
BY_CODE = {"retry_on_error_codes": ["context_length_exceeded"],
           "retry_on_error_messages": ["prompt is too long"]}


@pytest.mark.parametrize("stream", [False, True], ids=["non_stream", "stream"])
def test_context_length_exceeded_is_served_by_the_larger_context_pool(
        sluice_factory: SluiceFactory, small: Upstream, fallback: Upstream,
        stream: bool) -> None:
    sluice = start(sluice_factory, small, fallback, **BY_CODE)
    # Without the rule, the SDK would raise the small pool's native 400.
    with pytest.raises(openai.BadRequestError) as direct_error:
        openai_client(small.openai_url, "sk-direct").chat.completions.create(**LONG_CHAT)
    assert direct_error.value.code == "context_length_exceeded"
    expected = direct_chat(fallback, stream, LONG_CHAT)
    small.clear_requests()
    fallback.clear_requests()

    got, request_id = chat(sluice, stream, LONG_CHAT)

    assert got == expected
    assert statuses(small) == [400]
    assert statuses(fallback) == [200]
    assert attempts(sluice.access_entry(request_id)) == [
        ("first-openai", "400", "failover"), ("fallback-openai", "200", "ok")]


def test_anthropic_prompt_too_long_is_served_by_the_larger_context_pool(
        sluice_factory: SluiceFactory, small: Upstream, fallback: Upstream) -> None:
    sluice = start(sluice_factory, small, fallback, **BY_CODE)
    expected = stable(anthropic_client(fallback.anthropic_url, "sk-direct")
                      .messages.create(**LONG_MESSAGE))
    small.clear_requests()
    fallback.clear_requests()

    raw = anthropic_client(sluice.anthropic_url, VIRTUAL_KEY).messages.with_raw_response.create(
        **LONG_MESSAGE)

    assert stable(raw.parse()) == expected
    assert statuses(small) == [400]
    assert statuses(fallback) == [200]
    assert attempts(sluice.access_entry(raw.headers["x-sluice-request-id"])) == [
        ("first-anthropic", "400", "failover"), ("fallback-anthropic", "200", "ok")]


def test_an_unlisted_400_is_returned_unchanged(
        sluice_factory: SluiceFactory, small: Upstream, fallback: Upstream) -> None:
    """The same over-long prompt without the rule: the small pool's 400 reaches the SDK."""
    sluice = start(sluice_factory, small, fallback)
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(sluice.openai_url, VIRTUAL_KEY).chat.completions.create(**LONG_CHAT)
    assert raised.value.code == "context_length_exceeded"
    assert statuses(small) == [400]
    assert statuses(fallback) == []


# -- 4. a content filter is never retried ------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["non_stream", "stream"])
def test_content_filter_400_is_returned_unchanged_after_one_request(
        sluice_factory: SluiceFactory, primary: Upstream, fallback: Upstream,
        stream: bool) -> None:
    # Even with its error type listed, and a fallback ready.
    sluice = start(sluice_factory, primary, fallback,
                   retry_on_error_codes=["invalid_request_error", "context_length_exceeded"])
    filtered = {"type": "fail", "status": 400, "code": "content_filter",
                "message": "The response was filtered due to the prompt triggering the content "
                           "management policy."}
    primary.scenario(dict(filtered))
    with pytest.raises(openai.BadRequestError) as direct_error:
        openai_client(primary.openai_url, "sk-direct").chat.completions.create(
            **CHAT, stream=stream)
    primary.clear_requests()
    primary.scenario(dict(filtered))

    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(sluice.openai_url, VIRTUAL_KEY).chat.completions.create(
            **CHAT, stream=stream)

    assert raised.value.body == direct_error.value.body, "the 400 was not passed unchanged"
    assert raised.value.code == "content_filter"
    assert statuses(primary) == [400]
    assert statuses(fallback) == []
    request_id = raised.value.response.headers["x-sluice-request-id"]
    assert attempts(sluice.access_entry(request_id)) == [("first-openai", "400", "ok")]


def test_anthropic_errors_not_listed_are_not_retried(
        sluice_factory: SluiceFactory, primary: Upstream, fallback: Upstream) -> None:
    sluice = start(sluice_factory, primary, fallback, **BY_CODE)
    primary.scenario({"type": "fail", "status": 400, "message": "messages: field required"})
    with pytest.raises(anthropic.BadRequestError) as raised:
        anthropic_client(sluice.anthropic_url, VIRTUAL_KEY).messages.create(**MESSAGE)
    assert "field required" in str(raised.value)
    assert statuses(primary) == [400]
    assert statuses(fallback) == []
