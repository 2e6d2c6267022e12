"""Streams cut by the upstream, as the official SDKs see them through sluice: a captured stream
of each API served cut at a chosen byte offset (inside a data line, inside a `\\r\\n`, inside
an Anthropic `ping`, between events), by a clean end of body or a TCP reset, makes the SDK raise
its native error class (never a JSON decode error, never a silent end); a chat stream that
only lacks `data: [DONE]` is complete, with exact usage; a plain answer cut mid-body is a
connection error the SDK retries (before, a truncated body framed as whole: a JSONDecodeError)."""

from __future__ import annotations

import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import anthropic
import openai
import pytest

from conftest import (ANTHROPIC_KEY_ENV, OPENAI_KEY_ENV, SDK_TIMEOUT_S, VIRTUAL_KEY, Sluice,
                      SluiceFactory, anthropic_client, openai_client)
from harness import pool, route
from test_js_sdk import js

pytestmark = pytest.mark.sluice

FIXTURES = Path(__file__).parent.parent / "fixtures"
FILES = {
    "/v1/chat/completions": "openai_chat/llmock_capture_include_usage.sse",
    "/v1/responses": "openai_responses/llmock_capture.sse",
    "/v1/messages": "anthropic/llmock_capture.sse",
}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cut"}]}
MESSAGE = {"model": "claude-sonnet-4-6", "max_tokens": 64,
           "messages": [{"role": "user", "content": "cut"}]}


def fixture(path: str, crlf: bool = False, drop_done: bool = False) -> bytes:
    raw = (FIXTURES / FILES[path]).read_bytes()
    if drop_done:
        raw = raw.replace(b"data: [DONE]\n\n", b"")
    return raw.replace(b"\n", b"\r\n") if crlf else raw


# Whole non-streamed answers (`x-plain: 1`), as the APIs send them.
PLAIN = {
    "/v1/chat/completions": {
        "id": "chatcmpl-plain", "object": "chat.completion", "created": 1700000000,
        "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "a plain answer its upstream cuts"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}},
    "/v1/messages": {
        "id": "msg_plain", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "a plain answer its upstream cuts"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 6}},
}


class CutHandler(BaseHTTPRequestHandler):
    """Serves the fixture of the request's path cut after `x-cut-at` bytes (whole without
    it), chunked, then ends the body (`x-cut-mode: eof`) or resets the connection (`reset`).
    `x-crlf: 1` serves it with `\\r\\n` line ends, `x-drop-done: 1` without `data: [DONE]`,
    `x-plain: 1` the path's whole non-streamed answer (`PLAIN`, `application/json`) instead.
    Counts the requests it served (`server.requests`)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.requests += 1  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        plain = self.headers.get("x-plain") == "1"
        raw = (json.dumps(PLAIN[path]).encode() if plain else
               fixture(path, crlf=self.headers.get("x-crlf") == "1",
                       drop_done=self.headers.get("x-drop-done") == "1"))
        cut = min(int(self.headers.get("x-cut-at", len(raw))), len(raw))
        self.send_response(200)
        self.send_header("content-type", "application/json" if plain else "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        body = raw[:cut]
        for piece in (body[: cut // 2], body[cut // 2:]):
            if piece:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
        if self.headers.get("x-cut-mode") == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def cut_upstream() -> Iterator[ThreadingHTTPServer]:
    """The `CutHandler` server; its URL is `http://127.0.0.1:{server_address[1]}`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CutHandler)
    server.requests = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cut_sluice(sluice_factory: SluiceFactory, cut_upstream: ThreadingHTTPServer) -> Sluice:
    url = f"http://127.0.0.1:{cut_upstream.server_address[1]}"
    return sluice_factory.start(
        pools=[pool("cut-openai", "openai", url, OPENAI_KEY_ENV),
               pool("cut-anthropic", "anthropic", url, ANTHROPIC_KEY_ENV)],
        routes=[route("anthropic-messages", "/v1/messages", ["cut-anthropic"]),
                route("openai", "/v1", ["cut-openai"])])


def offsets(path: str) -> dict[str, tuple[int, bool]]:
    """Representative cuts of the fixture of `path`: name -> (offset, crlf)."""
    raw = fixture(path)
    second = raw.index(b"\n\n") + 2            # start of the second event
    data = raw.index(b"data: ", second) + 20   # inside its data line
    crlf = fixture(path, crlf=True)
    cr = crlf.index(b"\r\n", crlf.index(b"data: ", crlf.index(b"\r\n\r\n") + 4)) + 1
    cuts = {"inside a data line": (data, False), "between events": (second, False),
            "inside a CRLF": (cr, True), "after the first byte": (1, False)}
    if path == "/v1/messages":
        cuts["inside a ping"] = (raw.index(b"event: ping") + len(b"event: ping\n") + 3, False)
    return cuts


def headers(cut: int, crlf: bool, mode: str) -> dict[str, str]:
    return {"x-cut-at": str(cut), "x-crlf": "1" if crlf else "0", "x-cut-mode": mode}


@pytest.mark.parametrize("mode", ["eof", "reset"])
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_openai_sdk_raises_apierror_on_a_cut_stream(cut_sluice: Sluice, api: str,
                                                    mode: str) -> None:
    client = openai_client(cut_sluice.openai_url, VIRTUAL_KEY)
    path = "/v1/chat/completions" if api == "chat" else "/v1/responses"
    for where, (cut, crlf) in offsets(path).items():
        with pytest.raises(openai.APIError) as raised:
            if api == "chat":
                stream = client.chat.completions.create(
                    **CHAT, stream=True, extra_headers=headers(cut, crlf, mode))
            else:
                stream = client.responses.create(model="gpt-4.1-mini", input="cut",
                                                 stream=True,
                                                 extra_headers=headers(cut, crlf, mode))
            for _ in stream:
                pass
        # The native class itself (not a status error, not a connection error).
        assert type(raised.value) is openai.APIError, (where, raised.value)
        assert "upstream" in str(raised.value.message), (where, raised.value)


@pytest.mark.parametrize("mode", ["eof", "reset"])
def test_anthropic_sdk_raises_its_api_error_on_a_cut_stream(cut_sluice: Sluice,
                                                            mode: str) -> None:
    client = anthropic_client(cut_sluice.anthropic_url, VIRTUAL_KEY)
    for where, (cut, crlf) in offsets("/v1/messages").items():
        with pytest.raises(anthropic.APIStatusError) as raised:
            stream = client.messages.create(**MESSAGE, stream=True,
                                            extra_headers=headers(cut, crlf, mode))
            for _ in stream:
                pass
        assert raised.value.body["error"]["type"] == "api_error", (where, raised.value.body)


def test_a_chat_stream_without_done_is_complete_and_counted_exactly(cut_sluice: Sluice) -> None:
    client = openai_client(cut_sluice.openai_url, VIRTUAL_KEY)
    before = cut_sluice.scrape()
    raw = fixture("/v1/chat/completions", drop_done=True)
    response = client.chat.completions.with_raw_response.create(
        **CHAT, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-drop-done": "1"})
    chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    want = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in raw.decode().splitlines()
                   if line.startswith("data: {") and json.loads(line[6:])["choices"])
    assert text == want and text, "the whole answer, no exception"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    entry = cut_sluice.access_entry(response.headers["x-sluice-request-id"])
    assert entry["completed"] == "true", entry
    after = cut_sluice.scrape()
    exact = (after.sum("sluice_tokens_total", source="exact", kind="completion")
             - before.sum("sluice_tokens_total", source="exact", kind="completion"))
    assert exact == usage.completion_tokens
    assert (after.sum("sluice_tokens_total", source="estimated")
            == before.sum("sluice_tokens_total", source="estimated"))


def test_openai_js_sdk_raises_apierror_on_a_stream_cut_inside_a_data_line(
        cut_sluice: Sluice) -> None:
    cut, _ = offsets("/v1/chat/completions")["inside a data line"]
    got = js("openai", "chat_stream", cut_sluice.openai_url, VIRTUAL_KEY, CHAT,
             headers=headers(cut, False, "eof"))
    assert not got["ok"]
    assert got["error"]["class"] == "APIError", got


def plain_cut(cut: int) -> dict[str, str]:
    """Headers asking `CutHandler` for its plain answer reset after `cut` bytes."""
    return {"x-plain": "1", "x-cut-at": str(cut), "x-cut-mode": "reset"}


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_plain_answer_cut_mid_body_is_a_connection_error_the_sdk_retries(
        cut_sluice: Sluice, cut_upstream: ThreadingHTTPServer, sdk: str) -> None:
    """A non-streamed answer cut after its header went out: no event can say so, so sluice
    breaks the transfer off; the SDK sees a connection error (its retryable class), never a
    truncated JSON body framed as whole (a decode error, or a half answer)."""
    if sdk == "openai":
        client: Any = openai.OpenAI(base_url=cut_sluice.openai_url, api_key=VIRTUAL_KEY,
                                    max_retries=1, timeout=SDK_TIMEOUT_S)
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(**CHAT, extra_headers=plain_cut(40))
    else:
        client = anthropic.Anthropic(base_url=cut_sluice.anthropic_url, api_key=VIRTUAL_KEY,
                                     max_retries=1, timeout=SDK_TIMEOUT_S)
        with pytest.raises(anthropic.APIConnectionError):
            client.messages.create(**MESSAGE, extra_headers=plain_cut(40))
    assert cut_upstream.requests == 2, "the SDK retried once, as on any connection error"  # type: ignore[attr-defined]
