"""Tenant limits and budgets (README "Limits and budgets") as the real SDKs see them.

Each test starts its own sluice (`sluice_factory`): the limiter's windows start with the
process, so a fresh one makes `retry-after` predictable (pingora-limits' `Rate` windows are
measured from the limiter's creation, then from the first request after each window ends)
and no test inherits another's counters. The session llmock is the upstream; its request
journal says what got past sluice.

Retry facts used below, read from the installed openai-python (3.54,
`openai/_base_client.py`): `_parse_retry_after_header` prefers `retry-after-ms`, then
`retry-after` (seconds, float), then an HTTP date; `_should_retry` refuses when that delay is
over MAX_RETRY_AFTER_DELAY (120 s), then obeys `x-should-retry: true|false`, then retries 408,
409, 429 and >= 500; `_sleep_for_retry` then `time.sleep`s exactly the server's delay when
0 < delay <= 120 s (else an exponential backoff with jitter). That sleep is outside the
request's `timeout=`, which therefore cannot cut it short.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import (
    SDK_TIMEOUT_S,
    TENANT,
    VIRTUAL_KEY,
    Sluice,
    SluiceFactory,
    Upstream,
    anthropic_client,
    default_tenants,
    openai_client,
)
from harness import ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, Metrics, Proc, pool, route

pytestmark = pytest.mark.sluice

MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "How many requests may this tenant send per minute?"}]
DECISIONS = "sluice_limit_decisions_total"


def start_limited(factory: SluiceFactory, upstream: Upstream, limits: dict[str, Any],
                  **sections: Any) -> Sluice:
    """sluice with team-a under `limits`, OpenAI and Anthropic routes to the session llmock."""
    return factory.start(
        pools=[pool("openai", "openai", upstream.base, OPENAI_KEY_ENV),
               pool("anthropic", "anthropic", upstream.anthropic_url, ANTHROPIC_KEY_ENV)],
        routes=[route("anthropic-messages", "/v1/messages", ["anthropic"]),
                route("openai", "/v1", ["openai"])],
        tenants=default_tenants(limits),
        **sections,
    )


def decisions(metrics: Metrics, decision: str, reason: str | None = None) -> float:
    labels = {"tenant": TENANT, "decision": decision}
    if reason is not None:
        labels["reason"] = reason
    return metrics.sum(DECISIONS, **labels)


class Wire:
    """httpx event hooks on the SDK's own HTTP client: what each attempt sent and got, and
    when (time.monotonic)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def on_request(self, request: httpx.Request) -> None:
        self.events.append({"kind": "request", "t": time.monotonic(),
                            "retry_count": request.headers.get("x-stainless-retry-count")})

    def on_response(self, response: httpx.Response) -> None:
        self.events.append({"kind": "response", "t": time.monotonic(),
                            "status": response.status_code,
                            "headers": dict(response.headers)})

    def http_client(self) -> openai.DefaultHttpxClient:
        return openai.DefaultHttpxClient(event_hooks={"request": [self.on_request],
                                                      "response": [self.on_response]})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


def assert_requests_429(exc: openai.RateLimitError, limit: int) -> int:
    """The headers and body of a requests-limit refusal; returns its `retry-after-ms`."""
    headers = exc.response.headers
    assert exc.status_code == 429
    assert "retry-after-ms" in headers and "retry-after" in headers, dict(headers)
    retry_ms = int(headers["retry-after-ms"])
    assert 0 < retry_ms <= 60_000, dict(headers)
    # retry-after is whole seconds, rounded up from the same delay.
    assert int(headers["retry-after"]) == math.ceil(retry_ms / 1000), dict(headers)
    assert headers.get("x-ratelimit-limit-requests") == str(limit), dict(headers)
    assert headers.get("x-ratelimit-remaining-requests") == "0", dict(headers)
    error = exc.response.json()["error"]
    assert error["code"] == "rate_limit_exceeded", error
    assert error["type"] == "requests", error
    assert exc.code == "rate_limit_exceeded" and exc.type == "requests"
    return retry_ms


# -- 1. requests per minute ---------------------------------------------------------------

def test_requests_per_minute_openai(sluice_factory: SluiceFactory, upstream: Upstream) -> None:
    """10 calls pass, the 11th is an `openai.RateLimitError` with the retry headers the SDK
    reads, and llmock never sees it."""
    sluice = start_limited(sluice_factory, upstream, {"requests_per_minute": 10})
    client = openai_client(sluice.openai_url, VIRTUAL_KEY)  # max_retries=0
    upstream.reset()
    before = sluice.scrape()

    for _ in range(10):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)

    assert_requests_429(caught.value, limit=10)
    assert caught.value.response.headers.get("x-sluice-request-id") or \
        caught.value.response.headers.get("x-request-id")
    assert len(upstream.requests()) == 10, "a refused request reached the upstream"
    after = sluice.scrape()
    assert decisions(after, "admitted") - decisions(before, "admitted") == 10
    assert decisions(after, "rejected", "requests") - decisions(before, "rejected") == 1


# -- 2. the SDK honours retry-after-ms ------------------------------------------------------

def test_sdk_waits_retry_after_ms_then_succeeds(sluice_factory: SluiceFactory,
                                                upstream: Upstream) -> None:
    """requests_per_second: 1, max_retries=1. A call refused with retry-after-ms R (< 1 s):
    the SDK sleeps R, retries once, the new window admits it: the call succeeds, took at
    least R, and the limiter decided twice for it (1 rejected, 1 admitted)."""
    sluice = start_limited(sluice_factory, upstream, {"requests_per_second": 1})
    upstream.reset()
    # Each call consumes the window's one request: the first call of a window is admitted
    # straight away, the next one (right after) is refused and retried. Should a window
    # boundary fall between two calls, the next call just plays the first one's part.
    for _ in range(4):
        wire = Wire()
        client = openai.OpenAI(base_url=sluice.openai_url, api_key=VIRTUAL_KEY, max_retries=1,
                               timeout=SDK_TIMEOUT_S, http_client=wire.http_client())
        before = sluice.scrape()
        started = time.monotonic()
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        elapsed = time.monotonic() - started
        if wire.of("response")[0]["status"] == 429:
            break
    else:
        pytest.fail("no call was refused under requests_per_second: 1")

    after = sluice.scrape()
    assert completion.choices[0].message.content
    requests, responses = wire.of("request"), wire.of("response")
    assert [r["status"] for r in responses] == [429, 200], wire.events
    assert [r["retry_count"] for r in requests] == ["0", "1"], wire.events
    refused = responses[0]["headers"]
    retry_ms = int(refused["retry-after-ms"])
    assert 0 < retry_ms < 1000, refused
    assert refused["retry-after"] == "1", refused
    # The SDK slept at least retry-after-ms between the refusal and its retry.
    gap = requests[1]["t"] - responses[0]["t"]
    assert gap >= retry_ms / 1000, f"retried {gap * 1000:.1f} ms after a {retry_ms} ms retry-after"
    assert elapsed >= retry_ms / 1000
    # Exactly two decisions for this call: the refusal and the admission of the retry.
    assert decisions(after, "rejected", "requests") - decisions(before, "rejected") == 1
    assert decisions(after, "admitted") - decisions(before, "admitted") == 1
    # The retry reached llmock (once) and says so.
    last = upstream.requests()[-1]
    assert last["sdk_retry_count"] == 1, last


# Run in a child process: the real SDK with max_retries=1 against a refusal whose
# retry-after is tens of seconds. Prints one JSON line per HTTP event and per SDK log record.
_RETRY_CHILD = r"""
import json, logging, sys, time
import openai

def emit(**fields):
    print(json.dumps({**fields, "t": time.monotonic()}), flush=True)

class ToStdout(logging.Handler):
    def emit(self, record):
        emit(kind="log", message=record.getMessage())

sdk_log = logging.getLogger("openai")
sdk_log.setLevel(logging.INFO)
sdk_log.addHandler(ToStdout())
hooks = {
    "request": [lambda r: emit(kind="request",
                               retry_count=r.headers.get("x-stainless-retry-count"))],
    "response": [lambda r: emit(kind="response", status=r.status_code,
                                retry_after_ms=r.headers.get("retry-after-ms"),
                                retry_after=r.headers.get("retry-after"))],
}
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=1, timeout=2.0,
                       http_client=openai.DefaultHttpxClient(event_hooks=hooks))
try:
    client.chat.completions.create(model="gpt-4o-mini",
                                   messages=[{"role": "user", "content": sys.argv[3]}])
    emit(kind="result", outcome="ok")
except Exception as exc:
    emit(kind="result", outcome=type(exc).__name__)
"""


def _child_events(proc: Proc) -> list[dict[str, Any]]:
    events = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def test_sdk_does_not_retry_a_minute_limit_at_once(sluice_factory: SluiceFactory,
                                                   upstream: Upstream, workdir: Path) -> None:
    """requests_per_minute: 10 and max_retries=1: the SDK must wait the whole retry-after
    (tens of seconds) before its one retry, not hammer sluice.

    Waiting it out would make the test take up to a minute, and `timeout=` cannot bound it:
    openai-python sleeps between attempts with `time.sleep(retry_after)`, outside the request
    timeout (here 2 s). So the call runs in a child process; we check that the SDK planned a
    sleep of exactly retry-after-ms ("Retrying request in X seconds"), that no second attempt
    reached sluice within the next 2 s, and then stop the child."""
    sluice = start_limited(sluice_factory, upstream, {"requests_per_minute": 10})
    client = openai_client(sluice.openai_url, VIRTUAL_KEY)
    upstream.reset()
    for _ in range(10):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    before = sluice.scrape()

    child = Proc.start("sdk-retry-child",
                       [sys.executable, "-c", _RETRY_CHILD, sluice.openai_url, VIRTUAL_KEY,
                        MESSAGES[0]["content"]],
                       workdir / f"sdk-retry-child-{sluice.proc.name}.log")
    try:
        deadline = time.monotonic() + 15
        while not [e for e in _child_events(child) if e["kind"] == "response"]:
            assert child.popen.poll() is None, child.log_tail()
            assert time.monotonic() < deadline, child.log_tail()
            time.sleep(0.05)
        time.sleep(2.0)
        events = _child_events(child)
        still_sleeping = child.popen.poll() is None
    finally:
        child.stop()

    after = sluice.scrape()
    responses = [e for e in events if e["kind"] == "response"]
    requests = [e for e in events if e["kind"] == "request"]
    assert [r["status"] for r in responses] == [429], events
    retry_ms = int(responses[0]["retry_after_ms"])
    assert retry_ms > 5000, (
        f"retry-after-ms {retry_ms}: the minute window was about to end, nothing to show")
    assert len(requests) == 1, (
        f"the SDK retried within 2 s of a {retry_ms} ms retry-after: {events}")
    assert still_sleeping, f"the SDK gave up instead of waiting: {events}"
    plans = [e["message"] for e in events
             if e["kind"] == "log" and e["message"].startswith("Retrying request in")]
    assert len(plans) == 1, events
    planned_s = float(plans[0].split()[3])
    assert planned_s == pytest.approx(retry_ms / 1000, abs=1e-6), plans[0]
    assert decisions(after, "rejected", "requests") - decisions(before, "rejected") == 1
    assert decisions(after, "admitted") - decisions(before, "admitted") == 0
    assert len(upstream.requests()) == 10


# -- 3. budget ----------------------------------------------------------------------------

def test_budget_spent_is_final(sluice_factory: SluiceFactory, upstream: Upstream) -> None:
    """usd_per_day 0.0005 at 0.0002 per call: calls pass while the budget is not spent (3:
    0.0002, 0.0004, then 0.0006 spent), then a RateLimitError with `x-should-retry: false`,
    which the SDK obeys even with its default max_retries=2."""
    direct = openai.OpenAI(base_url=upstream.openai_url, api_key="sk-direct", max_retries=0,
                           timeout=SDK_TIMEOUT_S)
    usage = direct.chat.completions.create(model=MODEL, messages=MESSAGES).usage
    tokens = usage.prompt_tokens + usage.completion_tokens
    assert tokens > 0
    per_1m = 200.0 / tokens  # each call costs tokens * per_1m / 1e6 = 0.0002 USD
    sluice = start_limited(
        sluice_factory, upstream, {"budget": {"usd_per_day": 0.0005}},
        models=[{"match": "gpt-4o-mini*",
                 "price": {"input_per_1m": per_1m, "output_per_1m": per_1m}}])
    client = openai.OpenAI(base_url=sluice.openai_url, api_key=VIRTUAL_KEY,
                           timeout=SDK_TIMEOUT_S)  # default max_retries=2
    assert client.max_retries == 2
    upstream.reset()

    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        raw.parse()
        # The cost is charged when sluice logs the request (just after the client got the
        # body): wait for the line so the next call sees the spend.
        entry = sluice.access_entry(raw.headers["x-sluice-request-id"])
        assert float(entry["cost_usd"]) == pytest.approx(0.0002, rel=1e-6), entry
    assert len(upstream.requests()) == 3

    before = sluice.scrape()
    log_lines = len(sluice.access_log())
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    exc = caught.value
    assert exc.response.headers.get("x-should-retry") == "false", dict(exc.response.headers)
    assert exc.code == "insufficient_quota", exc.response.text
    assert len(upstream.requests()) == 3, "a request past the budget reached the upstream"
    after = sluice.scrape()
    assert decisions(after, "rejected", "budget") - decisions(before, "rejected") == 1
    assert decisions(after, "admitted") - decisions(before, "admitted") == 0
    time.sleep(0.2)
    refused = sluice.access_log()[log_lines:]
    assert [e["status"] for e in refused] == ["429"], f"the SDK retried: {refused}"


# -- 4. anthropic ---------------------------------------------------------------------------

def test_requests_per_minute_anthropic(sluice_factory: SluiceFactory,
                                       upstream: Upstream) -> None:
    sluice = start_limited(sluice_factory, upstream, {"requests_per_minute": 10})
    client = anthropic_client(sluice.anthropic_url, VIRTUAL_KEY)  # max_retries=0
    upstream.reset()
    message = {"model": CLAUDE, "max_tokens": 64, "messages": MESSAGES}
    for _ in range(10):
        client.messages.create(**message)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(**message)

    exc = caught.value
    assert exc.status_code == 429
    body = exc.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error", body
    assert "retry-after" in exc.response.headers and "retry-after-ms" in exc.response.headers
    assert exc.response.headers.get("request-id"), "anthropic SDK reads request-id"
    assert len(upstream.requests()) == 10
