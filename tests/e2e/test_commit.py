"""Commit on content (README "Failover"): a streamed answer is held until its first event that
carries output, so a primary that answers 200 and its SSE header and then stalls, errs or
resets before any output fails over to the fallback, and the SDK sees one clean stream.

The primary is a small scripted upstream (below) whose behaviour the request picks with the
`x-script` header; the fallback is llmock. Each case asserts that no byte of the primary
reached the SDK (the primary's ids and text carry the marker `PRIMARY`), that the tokens
counted are the fallback's, that the access log lists both attempts, and that the fallback's
time to first token through sluice, minus the primary's share (its first-token deadline, or
its own time to fail), is within 5 ms of reaching the fallback through sluice without a failing
primary, after the same idle time (medians of interleaved runs; the suite runs a debug build,
whose own per-request cost is not failover's: the release build's is in `make bench-load`).
The figure over calling the fallback directly is printed too."""

from __future__ import annotations

import http.client
import json
import multiprocessing
import select
import socket
import statistics
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import anthropic
import openai
import pytest

from conftest import (VIRTUAL_KEY, Sluice, SluiceFactory, Upstream, anthropic_client,
                      llmock_upstream, openai_client)
from harness import ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, pool, route
from test_failover import attempts

pytestmark = pytest.mark.sluice

MARK = "PRIMARY"
FIRST_TOKEN_MS = 500
RUNS = 9
TTFT_TOLERANCE_S = 0.005
PROMPT = "Explain commit on content for streamed answers"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
RESPONSES = {"model": "gpt-4.1-mini", "input": PROMPT}
MESSAGE = {"model": "claude-sonnet-4-6", "max_tokens": 256,
           "messages": [{"role": "user", "content": PROMPT}]}


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


ROLE_ONLY = sse({"id": f"chatcmpl-{MARK}-1", "object": "chat.completion.chunk", "created": 1,
                 "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {
                     "role": "assistant", "content": ""}, "finish_reason": None}],
                 "usage": None})
CREATED = sse({"type": "response.created", "sequence_number": 0, "response": {
    "id": f"resp_{MARK}_1", "object": "response", "status": "in_progress", "output": [],
    "model": "gpt-4.1-mini", "usage": None}}, "response.created")
FAILED = sse({"type": "response.failed", "sequence_number": 1, "response": {
    "id": f"resp_{MARK}_1", "object": "response", "status": "failed", "output": [],
    "error": {"code": "server_error", "message": f"{MARK} failed"}, "usage": None}},
    "response.failed")
MESSAGE_START = sse({"type": "message_start", "message": {
    "id": f"msg_{MARK}_1", "type": "message", "role": "assistant", "content": [],
    "model": "claude-sonnet-4-6", "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 9, "output_tokens": 1}}}, "message_start")
PING = sse({"type": "ping"}, "ping")


def anthropic_error(kind: str) -> bytes:
    return sse({"type": "error", "error": {"type": kind, "message": f"{MARK} {kind}"}}, "error")


# What each script sends after the 200 and its SSE header, then how it ends ("eof": end of
# body, "reset": TCP reset, "stall": nothing more until the client leaves).
SCRIPTS: dict[str, tuple[list[bytes], str]] = {
    "stall": ([], "stall"),
    "created_then_failed": ([CREATED, FAILED], "eof"),
    "created_then_error": ([CREATED, sse({"type": "error", "code": "server_error",
                                          "message": f"{MARK} error", "sequence_number": 1},
                                         "error")], "eof"),
    "message_start_then_overloaded": ([MESSAGE_START, PING, anthropic_error("overloaded_error")],
                                      "eof"),
    "message_start_then_invalid": ([MESSAGE_START, anthropic_error("invalid_request_error")],
                                   "eof"),
    "role_then_reset": ([ROLE_ONLY], "reset"),
}


class ScriptedHandler(BaseHTTPRequestHandler):
    """Answers 200 `text/event-stream` (chunked) and plays the script the `x-script` header
    names; `a|b` plays `a` for the first request with that header value, `b` after.
    `GET /_count` answers how many scripted requests it served, `GET /_closed` the times
    (`time.time()`) at which the client closed a stalled stream."""

    protocol_version = "HTTP/1.1"
    seen: dict[str, int] = {}
    closed_at: list[float] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", "0")))
        # Each event leaves at once (no Nagle delay between the small writes).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        names = self.headers.get("x-script", "stall").split("|")
        with self.lock:
            n = self.seen.get("|".join(names), 0)
            self.seen["|".join(names)] = n + 1
            self.seen["total"] = self.seen.get("total", 0) + 1
        events, end = SCRIPTS[names[min(n, len(names) - 1)]]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        for event in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        if end == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
        elif end == "stall":
            # Until sluice drops the attempt (bounded); when it did, the time is kept.
            readable, _, _ = select.select([self.connection], [], [], 10.0)
            if readable:
                with self.lock:
                    self.closed_at.append(time.time())
            self.close_connection = True
        else:
            self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/_closed":
            body = json.dumps(self.closed_at).encode()
        else:
            body = str(self.seen.get("total", 0)).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def serve_scripted(ports: Any) -> None:
    """The scripted upstream's process: serves until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    ports.put(server.server_address[1])
    server.serve_forever()


class Scripted:
    """The scripted upstream in a process of its own, so that its threads never hold the
    test's interpreter (and its GIL) while the test measures time to first token."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        ports = ctx.Queue()
        self.proc = ctx.Process(target=serve_scripted, args=(ports,), daemon=True)
        self.proc.start()
        self.port = ports.get(timeout=10)
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
        try:
            conn.request("GET", "/_count")
            return int(conn.getresponse().read())
        finally:
            conn.close()

    def closed_at(self) -> list[float]:
        """When the client (sluice) closed each stalled stream, as `time.time()`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5.0)
        try:
            conn.request("GET", "/_closed")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join(5)
@pytest.fixture
def scripted() -> Iterator[Scripted]:
    s = Scripted()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def fallback(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-commit-fallback") as u:
        yield u


def with_first_token(r: dict[str, Any]) -> dict[str, Any]:
    r["failover"] = {"first_token_ms": FIRST_TOKEN_MS}
    return r


@pytest.fixture
def sluice_commit(sluice_factory: SluiceFactory, scripted: Scripted,
                  fallback: Upstream) -> Sluice:
    """Routes over [scripted primary, llmock fallback], first-token deadline 500 ms; the
    primary's breaker does not open within one test's failures."""
    primaries = [pool("primary-openai", "openai", scripted.url, OPENAI_KEY_ENV),
                 pool("primary-anthropic", "anthropic", scripted.url, ANTHROPIC_KEY_ENV)]
    for p in primaries:
        p["breaker"] = {"consecutive_failures": 100}
    instance = sluice_factory.start(
        pools=[*primaries,
               pool("fallback-openai", "openai", fallback.base, OPENAI_KEY_ENV),
               pool("fallback-anthropic", "anthropic", fallback.anthropic_url,
                    ANTHROPIC_KEY_ENV)],
        routes=[route("plain-anthropic", "/v1/messages", ["fallback-anthropic"],
                      header=("x-plain", "1")),
                route("plain-openai", "/v1", ["fallback-openai"], header=("x-plain", "1")),
                with_first_token(route("anthropic", "/v1/messages",
                                       ["primary-anthropic", "fallback-anthropic"])),
                with_first_token(route("openai", "/v1", ["primary-openai",
                                                          "fallback-openai"]))])
    fallback.reset()
    return instance


def primary_failure_s(scripted: Scripted, path: str, script: str) -> float:
    """How long the scripted primary takes, asked directly, from the request to the end of
    its failed answer (its body's end or its reset): the time sluice must spend on it before
    moving on."""
    conn = http.client.HTTPConnection("127.0.0.1", scripted.port, timeout=5.0)
    start = time.perf_counter()
    try:
        conn.request("POST", path, body=b"{}", headers={"x-script": script,
                                                       "content-type": "application/json"})
        conn.getresponse().read()
    except (http.client.HTTPException, OSError):
        pass  # the reset
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


# -- one streamed call per API: (ttft_s, text, usage (prompt, completion), dumps, request id) --

Call = tuple[float, str, tuple[int, int], list[str], str]


def chat_call(client: openai.OpenAI, headers: dict[str, str]) -> Call:
    start = time.perf_counter()
    stream = client.chat.completions.create(**CHAT, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_headers=headers)
    ttft, text, dumps, usage = None, "", [], (0, 0)
    for chunk in stream:
        dumps.append(chunk.model_dump_json())
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece and ttft is None:
            ttft = time.perf_counter() - start
        text += piece or ""
        if chunk.usage:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    assert ttft is not None
    return ttft, text, usage, dumps, stream.response.headers.get("x-sluice-request-id", "")


def responses_call(client: openai.OpenAI, headers: dict[str, str]) -> Call:
    start = time.perf_counter()
    stream = client.responses.create(**RESPONSES, stream=True, extra_headers=headers)
    ttft, text, dumps, usage = None, "", [], (0, 0)
    for event in stream:
        dumps.append(event.model_dump_json())
        if event.type == "response.output_text.delta":
            if ttft is None:
                ttft = time.perf_counter() - start
            text += event.delta
        if event.type == "response.completed" and event.response.usage:
            usage = (event.response.usage.input_tokens, event.response.usage.output_tokens)
    assert ttft is not None
    return ttft, text, usage, dumps, stream.response.headers.get("x-sluice-request-id", "")


def messages_call(client: anthropic.Anthropic, headers: dict[str, str]) -> Call:
    start = time.perf_counter()
    stream = client.messages.create(**MESSAGE, stream=True, extra_headers=headers)
    ttft, text, dumps, prompt, completion = None, "", [], 0, 0
    for event in stream:
        dumps.append(event.model_dump_json())
        if event.type == "message_start":
            prompt = event.message.usage.input_tokens
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            if ttft is None:
                ttft = time.perf_counter() - start
            text += event.delta.text
        if event.type == "message_delta":
            completion = event.usage.output_tokens
    assert ttft is not None
    return ttft, text, (prompt, completion), dumps, stream.response.headers.get(
        "x-sluice-request-id", "")


CASES = {
    # name: (call, path, script, primary outcome, sdk)
    "chat_stall": (chat_call, "/v1/chat/completions", "stall", "no_content_timeout", "openai"),
    "responses_failed": (responses_call, "/v1/responses", "created_then_failed",
                         "error_before_content", "openai"),
    "responses_error": (responses_call, "/v1/responses", "created_then_error",
                        "error_before_content", "openai"),
    "messages_overloaded": (messages_call, "/v1/messages", "message_start_then_overloaded",
                            "error_before_content", "anthropic"),
    "chat_role_then_reset": (chat_call, "/v1/chat/completions", "role_then_reset",
                             "cut_before_content", "openai"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_primary_that_fails_before_content_fails_over_cleanly(
        case: str, sluice_commit: Sluice, scripted: Scripted, fallback: Upstream) -> None:
    call, path, script, outcome, sdk = CASES[case]
    if sdk == "openai":
        via = openai_client(sluice_commit.openai_url, VIRTUAL_KEY)
        direct = openai_client(fallback.openai_url, "sk-direct")
        primary_pool, fallback_pool = "primary-openai", "fallback-openai"
    else:
        via = anthropic_client(sluice_commit.anthropic_url, VIRTUAL_KEY)
        direct = anthropic_client(fallback.anthropic_url, "sk-direct")
        primary_pool, fallback_pool = "primary-anthropic", "fallback-anthropic"
    headers = {"x-script": script}
    # Interleaved rounds (the machine's load drifts): the fallback directly; the primary's
    # share, that is its first-token deadline when it stalls, else its own time to fail
    # measured directly; the call through sluice; and, for the record, through sluice
    # straight to the fallback (sluice's own cost, without failover).
    ttft_via, ttft_direct, ttft_plain, primary_s = [], [], [], []
    meter = sluice_commit.meter()
    last: Call | None = None
    want: Call | None = None
    for _ in range(RUNS):
        if script == "stall":
            # Directly after the same idle time, so that both arms start from the same
            # (cold) machine state.
            time.sleep(FIRST_TOKEN_MS / 1000)
            primary_s.append(FIRST_TOKEN_MS / 1000)
        else:
            primary_s.append(primary_failure_s(scripted, path, script))
        want = call(direct, {})
        ttft_direct.append(want[0])
        last = call(via, headers)
        ttft_via.append(last[0])
        if script == "stall":
            # After the same idle time as the other two arms.
            time.sleep(FIRST_TOKEN_MS / 1000)
        ttft_plain.append(call(via, {"x-plain": "1"})[0])
    assert last is not None and want is not None
    _, text, usage, dumps, request_id = last

    # The fallback's complete answer, and nothing of the primary.
    assert text and text == want[1], (text, want[1])
    assert usage == want[2] and usage[1] > 0, (usage, want[2])
    assert not any(MARK in d for d in dumps), [d for d in dumps if MARK in d][:1]
    assert scripted.requests() == RUNS + (0 if script == "stall" else RUNS)

    # Both attempts in the log; the tokens counted are the fallback's.
    entry = sluice_commit.access_entry(request_id)
    assert attempts(entry) == [(primary_pool, "200", outcome), (fallback_pool, "200", "ok")]
    assert entry["completed"] == "true", entry
    assert (int(entry["prompt_tokens"]), int(entry["completion_tokens"])) == usage, entry
    assert entry["held_ms"] != "-", entry
    after = sluice_commit.scrape()
    # (The calls straight to the fallback, below, count the same usage.)
    assert (after.sum("sluice_tokens_total", source="exact", kind="completion")
            - meter.before.sum("sluice_tokens_total", source="exact", kind="completion")
            == 2 * RUNS * usage[1])
    grew = (after.sum("sluice_failovers_total", reason=outcome)
            - meter.before.sum("sluice_failovers_total", reason=outcome))
    assert grew == RUNS, grew
    commits = (after.sum("sluice_stream_commits_total", on="content")
               - meter.before.sum("sluice_stream_commits_total", on="content"))
    assert commits == 2 * RUNS, commits

    # Time to first token: the fallback's, after the primary's share, nothing more.
    via_ms, direct_ms, primary_ms, plain_ms = (
        statistics.median(v) * 1000 for v in (ttft_via, ttft_direct, primary_s, ttft_plain))
    # Per round (paired), then the median. The baseline is the fallback reached through
    # sluice without a failing primary: the suite runs a debug build, whose own per-request
    # cost (a few ms, against 0.15 ms for the release build in `make bench-load`) would
    # otherwise be counted as failover's; the time added by the failover itself (the
    # deadline's timer, leaving the primary, connecting to the fallback) is what is bounded.
    added_ms = statistics.median(
        (v - p - d) * 1000 for v, p, d in zip(ttft_via, primary_s, ttft_plain))
    direct_added_ms = statistics.median(
        (v - p - d) * 1000 for v, p, d in zip(ttft_via, primary_s, ttft_direct))
    print(f"\n{case}: median TTFT via sluice {via_ms:.2f} ms, primary's share "
          f"{primary_ms:.2f} ms, fallback through sluice without failover {plain_ms:.2f} ms, "
          f"added by failover {added_ms:.2f} ms (fallback direct {direct_ms:.2f} ms, added "
          f"over direct {direct_added_ms:.2f} ms)")
    assert added_ms < TTFT_TOLERANCE_S * 1000, (ttft_via, primary_s, ttft_plain)


def sluice_all_scripted(sluice_factory: SluiceFactory, scripted: Scripted) -> Sluice:
    """Routes over two pools that are both the scripted upstream."""
    return sluice_factory.start(
        pools=[pool("first-openai", "openai", scripted.url, OPENAI_KEY_ENV),
               pool("second-openai", "openai", scripted.url, OPENAI_KEY_ENV),
               pool("only-anthropic", "anthropic", scripted.url, ANTHROPIC_KEY_ENV)],
        routes=[with_first_token(route("anthropic", "/v1/messages", ["only-anthropic"])),
                with_first_token(route("openai", "/v1", ["first-openai", "second-openai"]))])


@pytest.mark.parametrize("scripts,outcomes", [
    ("stall", ["no_content_timeout", "no_content_timeout"]),
    ("stall|role_then_reset", ["no_content_timeout", "cut_before_content"]),
])
def test_when_every_candidate_fails_before_content_the_sdk_raises_its_native_error(
        sluice_factory: SluiceFactory, scripted: Scripted, scripts: str,
        outcomes: list[str]) -> None:
    sluice = sluice_all_scripted(sluice_factory, scripted)
    client = openai_client(sluice.openai_url, VIRTUAL_KEY)
    received: list[Any] = []
    stream = client.chat.completions.create(**CHAT, stream=True,
                                            extra_headers={"x-script": scripts})
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk)
    # The native in-stream error (a well-formed stream: no decode error, no connection error).
    assert type(raised.value) is openai.APIError, raised.value
    assert "upstream" in raised.value.message, raised.value
    # What the last candidate sent before it failed (at most its role-only chunk), no text.
    assert all(not (c.choices and c.choices[0].delta.content) for c in received), received
    entry = sluice.access_entry(stream.response.headers["x-sluice-request-id"])
    assert [o for _, _, o in attempts(entry)] == outcomes, entry
    assert scripted.requests() == 2
    assert entry["completed"] == "false", entry


def test_a_non_retryable_error_before_content_is_served_as_sent(
        sluice_commit: Sluice, scripted: Scripted, fallback: Upstream) -> None:
    client = anthropic_client(sluice_commit.anthropic_url, VIRTUAL_KEY)
    stream = client.messages.create(**MESSAGE, stream=True,
                                    extra_headers={"x-script": "message_start_then_invalid"})
    with pytest.raises(anthropic.APIStatusError) as raised:
        for _ in stream:
            pass
    body: Any = raised.value.body
    assert body["error"] == {"type": "invalid_request_error",
                             "message": f"{MARK} invalid_request_error"}, body
    assert scripted.requests() == 1
    assert fallback.requests() == []
    entry = sluice_commit.access_entry(stream.response.headers["x-sluice-request-id"])
    assert attempts(entry) == [("primary-anthropic", "200", "ok")], entry
    after = sluice_commit.scrape()
    assert after.sum("sluice_stream_commits_total", on="error") == 1
