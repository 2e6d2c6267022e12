"""Traces (README "Traces") as the official SDKs' apps would produce them: sluice exports one
request span (SERVER) and one span per upstream attempt (CLIENT) over OTLP/HTTP to a test
receiver of our own (`upstreams/otlp.py`, decoding with the published OpenTelemetry protos),
continues the app's `traceparent`, and sends upstream a `traceparent` naming the attempt's
span (seen by a header-recording tap in front of llmock, which does not record headers).
With the collector down, answers are unchanged and the dropped spans are counted."""

from __future__ import annotations

import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conftest import (ANTHROPIC_UPSTREAM_KEY, OPENAI_UPSTREAM_KEY, VIRTUAL_KEY, Sluice,
                      SluiceFactory, Upstream, anthropic_client, openai_client, stable)
from harness import ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, free_port, pool, route
from test_commit import Scripted, chat_call, scripted  # noqa: F401 - a fixture
from upstreams.otlp import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.sluice

MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
PROMPT = "Describe the tracing of a sidecar proxy in one paragraph"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
MESSAGE = {"model": CLAUDE, "max_tokens": 128, "messages": [{"role": "user", "content": PROMPT}]}
DROPPED = "sluice_trace_spans_dropped_total"
# Spans are exported in batches at most this long after they end.
EXPORT_DELAY_MS = 100


class Tap:
    """An HTTP server in front of llmock recording each request's headers, forwarding the
    request and answering with llmock's whole response."""

    def __init__(self, target: str) -> None:
        self.seen: list[dict[str, str]] = []
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                tap.seen.append(headers)
                fwd = {k: v for k, v in headers.items()
                       if k not in ("host", "content-length", "connection")}
                r = httpx.request(self.command, target + self.path, content=body or None,
                                  headers=fwd, timeout=10.0)
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", "text/plain"))
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST  # noqa: N815 - http.server's naming

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def tap(upstream: Upstream) -> Iterator[Tap]:
    t = Tap(upstream.base)
    try:
        yield t
    finally:
        t.close()


def traced_sluice(factory: SluiceFactory, tap: Tap, endpoint: str,
                  first: list[str] | None = None) -> Sluice:
    """sluice over the tap (OpenAI and Anthropic), exporting spans to `endpoint`; `first`:
    pools tried before the tap's (a dead port, for failover)."""
    dead = f"http://127.0.0.1:{free_port()}"
    return factory.start(
        pools=[pool("openai", "openai", tap.base, OPENAI_KEY_ENV),
               pool("anthropic", "anthropic", f"{tap.base}/anthropic", ANTHROPIC_KEY_ENV),
               pool("openai-down", "openai", dead, OPENAI_KEY_ENV)],
        routes=[route("anthropic", "/v1/messages", ["anthropic"]),
                route("openai", "/v1", [*(first or []), "openai"])],
        tracing={"otlp_endpoint": endpoint, "export_delay_ms": EXPORT_DELAY_MS,
                 "export_timeout_ms": 2000, "service_name": "sluice-e2e"},
    )


def app_traceparent() -> tuple[str, str, str]:
    """A fresh sampled W3C traceparent of the app: (header, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def parse_traceparent(value: str) -> tuple[str, str, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16, value
    return trace_id, span_id, flags


def by_kind(spans: list[ReceivedSpan], kind: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == kind]


def assert_nothing_secret(receiver: OtlpReceiver, *texts: str) -> None:
    raw = receiver.raw()
    for secret in (VIRTUAL_KEY, OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY, PROMPT, *texts):
        assert secret.encode() not in raw, f"{secret[:12]}... exported in a span"


def test_openai_chat_continues_the_app_trace(sluice_factory: SluiceFactory, tap: Tap,
                                             receiver: OtlpReceiver) -> None:
    sluice = traced_sluice(sluice_factory, tap, receiver.url)
    header, trace_id, app_span = app_traceparent()
    client = openai_client(sluice.openai_url, VIRTUAL_KEY,
                           default_headers={"traceparent": header, "tracestate": "app=1"})
    answer = client.chat.completions.create(**CHAT)

    spans = receiver.trace(trace_id, 2)
    assert len(spans) == 2, spans
    [server] = by_kind(spans, "server")
    [client_span] = by_kind(spans, "client")
    assert server.parent_span_id == app_span, "the request span is not a child of the app's"
    assert client_span.parent_span_id == server.span_id
    assert server.resource["service.name"] == "sluice-e2e"
    a = server.attrs
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    # The model the answer names, as the SDK read it from the body.
    assert answer.model and a["gen_ai.response.model"] == answer.model
    assert a["http.response.status_code"] == 200
    assert (a["sluice.tenant"], a["sluice.route"], a["sluice.pool"]) == ("team-a", "openai",
                                                                         "openai")
    assert a["sluice.attempts"] == 1 and not server.error
    assert server.name == f"chat {MODEL}"
    c = client_span.attrs
    assert c["sluice.outcome"] == "ok" and c["http.response.status_code"] == 200
    assert c["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert c["gen_ai.response.model"] == answer.model
    assert c["server.address"] == "127.0.0.1" and not client_span.error

    [seen] = tap.seen
    up_trace, up_parent, flags = parse_traceparent(seen["traceparent"])
    assert (up_trace, up_parent, flags) == (trace_id, client_span.span_id, "01")
    assert seen["tracestate"] == "app=1"
    assert_nothing_secret(receiver, answer.choices[0].message.content or PROMPT)


def test_anthropic_stream_spans_carry_the_streamed_usage(
        sluice_factory: SluiceFactory, tap: Tap, receiver: OtlpReceiver) -> None:
    sluice = traced_sluice(sluice_factory, tap, receiver.url)
    header, trace_id, app_span = app_traceparent()
    client = anthropic_client(sluice.anthropic_url, VIRTUAL_KEY)
    with client.messages.stream(**MESSAGE, extra_headers={"traceparent": header}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    spans = receiver.trace(trace_id, 2)
    [server] = by_kind(spans, "server")
    [attempt] = by_kind(spans, "client")
    assert server.parent_span_id == app_span and attempt.parent_span_id == server.span_id
    for s in (server, attempt):
        assert s.attrs["gen_ai.usage.input_tokens"] == final.usage.input_tokens
        assert s.attrs["gen_ai.usage.output_tokens"] == final.usage.output_tokens
        assert s.attrs["gen_ai.provider.name"] == "anthropic"
        assert s.attrs["gen_ai.request.model"] == CLAUDE
        # From the stream's `message_start`, as the SDK assembled it.
        assert final.model and s.attrs["gen_ai.response.model"] == final.model
    assert server.attrs["sluice.stream"] is True
    assert "gen_ai.first_token" in server.events and server.attrs["sluice.ttft_ms"] >= 0
    assert parse_traceparent(tap.seen[0]["traceparent"])[:2] == (trace_id, attempt.span_id)
    assert_nothing_secret(receiver, text)


def test_failover_exports_one_span_per_attempt(sluice_factory: SluiceFactory, tap: Tap,
                                               receiver: OtlpReceiver) -> None:
    sluice = traced_sluice(sluice_factory, tap, receiver.url, first=["openai-down"])
    # No traceparent from the app: sluice starts a new trace.
    raw = openai_client(sluice.openai_url, VIRTUAL_KEY).chat.completions.with_raw_response
    answer = raw.create(**CHAT)
    request_id = answer.headers["x-sluice-request-id"]

    spans = receiver.wait_for(lambda ss: any(
        s.attrs.get("sluice.request_id") == request_id for s in ss)
        and len(ss) >= 3)
    [server] = [s for s in spans if s.attrs.get("sluice.request_id") == request_id]
    assert server.parent_span_id == "", "a request without traceparent starts a new trace"
    attempts = [s for s in by_kind(spans, "client") if s.trace_id == server.trace_id]
    assert len(attempts) == 2, attempts
    assert all(s.parent_span_id == server.span_id for s in attempts)
    down = next(s for s in attempts if s.attrs["sluice.pool"] == "openai-down")
    served = next(s for s in attempts if s.attrs["sluice.pool"] == "openai")
    assert down.error and down.attrs["error.type"] == down.attrs["sluice.outcome"] != "ok"
    assert "http.response.status_code" not in down.attrs
    assert served.attrs["sluice.outcome"] == "ok" and not served.error
    assert server.attrs["sluice.attempts"] == 2
    usage = answer.parse().usage
    assert server.attrs["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    [seen] = tap.seen
    assert parse_traceparent(seen["traceparent"])[:2] == (server.trace_id, served.span_id)


def test_collector_down_changes_nothing_and_counts_the_drops(
        sluice_factory: SluiceFactory, tap: Tap, upstream: Upstream) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1/traces"
    sluice = traced_sluice(sluice_factory, tap, closed)
    before = sluice.scrape().sum(DROPPED, reason="export_failed")
    direct = openai_client(upstream.openai_url, "sk-direct").chat.completions.create(**CHAT)
    client = openai_client(sluice.openai_url, VIRTUAL_KEY,
                           default_headers={"traceparent": app_traceparent()[0]})
    n = 5
    for _ in range(n):
        started = time.monotonic()
        answer = client.chat.completions.create(**CHAT)
        # Coarse: an export to a closed port must never hold a request.
        assert time.monotonic() - started < 2.0
        assert stable(answer) == stable(direct)

    deadline = time.monotonic() + 10.0
    while True:
        dropped = sluice.scrape().sum(DROPPED, reason="export_failed") - before
        if dropped >= 2 * n or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert dropped >= 2 * n, f"{dropped} spans counted as dropped, expected {2 * n}"
    assert sluice.scrape().sum("sluice_trace_spans_exported_total") == 0


def test_passthrough_request_has_its_attempt_span(sluice_factory: SluiceFactory, tap: Tap,
                                                  receiver: OtlpReceiver) -> None:
    sluice = traced_sluice(sluice_factory, tap, receiver.url)
    header, trace_id, app_span = app_traceparent()
    client = openai_client(sluice.openai_url, VIRTUAL_KEY,
                           default_headers={"traceparent": header})
    models = client.models.list()
    assert models.data, "llmock lists models"

    spans = receiver.trace(trace_id, 2)
    [server] = by_kind(spans, "server")
    [attempt] = by_kind(spans, "client")
    assert server.parent_span_id == app_span and attempt.parent_span_id == server.span_id
    assert server.attrs["http.request.method"] == "GET"
    assert server.attrs["url.path"] == "/v1/models"
    assert "gen_ai.operation.name" not in server.attrs
    assert attempt.attrs["http.response.status_code"] == 200
    [seen] = tap.seen
    assert parse_traceparent(seen["traceparent"])[:2] == (trace_id, attempt.span_id)


def test_a_hedged_request_exports_both_lanes(sluice_factory: SluiceFactory, tap: Tap,
                                             receiver: OtlpReceiver, scripted: Scripted) -> None:
    primary = pool("primary-openai", "openai", scripted.url, OPENAI_KEY_ENV)
    primary["breaker"] = {"consecutive_failures": 100}
    hedged = route("hedged", "/v1", ["primary-openai", "openai"])
    hedged["failover"] = {"first_token_ms": 20000}
    hedged["hedge"] = {"after_ms": 200}
    sluice = sluice_factory.start(
        pools=[primary, pool("openai", "openai", tap.base, OPENAI_KEY_ENV)], routes=[hedged],
        tracing={"otlp_endpoint": receiver.url, "export_delay_ms": EXPORT_DELAY_MS})
    header, trace_id, _ = app_traceparent()
    client = openai_client(sluice.openai_url, VIRTUAL_KEY, default_headers={"traceparent": header})
    _, text, usage, _, _ = chat_call(client, {"x-script": "stall"})
    assert text, "the fallback's answer was served"

    spans = receiver.trace(trace_id, 3)
    [server] = by_kind(spans, "server")
    lost = [s for s in by_kind(spans, "client") if s.attrs["sluice.pool"] == "primary-openai"]
    won = [s for s in by_kind(spans, "client") if s.attrs["sluice.pool"] == "openai"]
    assert len(lost) == 1 and len(won) == 1, spans
    assert lost[0].attrs["sluice.outcome"] == "hedge_lost" and lost[0].error
    assert "sluice.hedge" not in lost[0].attrs
    assert won[0].attrs["sluice.hedge"] is True and won[0].attrs["sluice.outcome"] == "ok"
    assert won[0].attrs["gen_ai.usage.output_tokens"] == usage[1]
    assert server.attrs["gen_ai.usage.input_tokens"] == usage[0]
    assert parse_traceparent(tap.seen[0]["traceparent"])[:2] == (trace_id, won[0].span_id)
