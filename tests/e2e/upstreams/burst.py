"""An OpenAI chat completions upstream whose streamed answer is too large for any client's
socket buffers, sent as fast as the proxy reads it once the test releases it: the shape of a
long answer that a client which stops reading falls behind on.

A streamed request gets the header and the first chunk (the role and the first token) at once,
then waits (at most 30 s) for `release()`; then the other content chunks, `events` in all,
chunk `i` carrying the token `t{i} ` followed by `pad` spaces (so the text is checkable and
each event weighs about `pad` bytes; a proxy that holds the header until content has it), then the
finish chunk, the `stream_options.include_usage` chunk (prompt 7 tokens, completion `events`
tokens) and `[DONE]`. A client that leaves ends the answer early. Every request is journalled
(`requests`)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROMPT_TOKENS = 7


def token(i: int, pad: int) -> str:
    """Chunk `i`'s content."""
    return f"t{i} " + " " * pad


class Upstream:
    """One instance on 127.0.0.1, port bound to 0; `stop()` ends it."""

    def __init__(self, events: int, pad: int) -> None:
        self.events, self.pad = events, pad
        self.requests: list[dict[str, Any]] = []
        self.released = threading.Event()
        self.lock = threading.Lock()
        upstream = self

        class Handler(_Handler):
            owner = upstream

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self) -> str:
        """The whole streamed text."""
        return "".join(token(i, self.pad) for i in range(self.events))

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    owner: Upstream

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        with self.owner.lock:
            self.owner.requests.append({"path": self.path, "body": body})
        chunk = {"id": "chatcmpl-burst", "object": "chat.completion.chunk", "created": 1,
                 "model": body.get("model")}

        def event(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
            raw = b"data: " + json.dumps({**chunk, "choices": choices,
                                          "usage": usage}).encode() + b"\n\n"
            return b"%x\r\n%s\r\n" % (len(raw), raw)

        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            self.wfile.write(event([{"index": 0, "delta": {
                "role": "assistant", "content": token(0, self.owner.pad)},
                "finish_reason": None}]))
            self.wfile.flush()
            self.owner.released.wait(30)
            for i in range(1, self.owner.events):
                self.wfile.write(event([{"index": 0, "delta": {
                    "content": token(i, self.owner.pad)}, "finish_reason": None}]))
            self.wfile.write(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            self.wfile.write(event([], {"prompt_tokens": PROMPT_TOKENS,
                                        "completion_tokens": self.owner.events,
                                        "total_tokens": PROMPT_TOKENS + self.owner.events}))
            raw = b"data: [DONE]\n\n"
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(raw), raw))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
