"""An OpenAI chat completions and Anthropic messages upstream whose streamed answer is too
large for any client's socket buffers, sent as fast as the proxy reads it once the test releases
it: the shape of a long answer that a client which stops reading falls behind on.

A streamed request gets the header and the first chunk (the role and the first token) at once,
then waits (at most 30 s) for `release()`; then the other content chunks, `events` in all,
chunk `i` carrying the token `t{i} ` followed by `pad` spaces (so the text is checkable and
each event weighs about `pad` bytes; a proxy that holds the header until content has it), then the
finish chunk, the `stream_options.include_usage` chunk (prompt 7 tokens, completion `events`
tokens) and `[DONE]`. Anthropic (a path ending in `/messages`): `message_start` (7 input
tokens), `content_block_start`, a `text_delta` per token, `content_block_stop`,
`message_delta` (`end_turn`, `events` output tokens), `message_stop`. A client that leaves
ends the answer early. Every request is journalled (`requests`)."""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator

from upstreams import base

PROMPT_TOKENS = 7


def token(i: int, pad: int) -> str:
    """Chunk `i`'s content."""
    return f"t{i} " + " " * pad


class Upstream(base.Upstream):
    """One instance on 127.0.0.1, port bound to 0; `stop()` ends it."""

    def __init__(self, events: int, pad: int) -> None:
        self.events, self.pad = events, pad
        self.released = threading.Event()
        super().__init__(_Handler)

    def answer(self) -> str:
        """The whole streamed text."""
        return "".join(token(i, self.pad) for i in range(self.events))

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.released.set()
        super().stop()


class _Handler(base.Handler):
    owner: Upstream

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        with self.owner.lock:
            self.owner.requests.append({"path": self.path, "body": body})
        events = self.anthropic if self.path.split("?")[0].endswith("/messages") else self.openai
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for i, raw in enumerate(events(body.get("model"))):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                if i == 0:
                    # Up to the first token, then the gate.
                    self.wfile.flush()
                    self.owner.released.wait(30)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def openai(self, model: Any) -> Iterator[bytes]:
        """The chat stream's events; the first one carries the first token."""
        chunk = {"id": "chatcmpl-burst", "object": "chat.completion.chunk", "created": 1,
                 "model": model}

        def event(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
            return b"data: " + json.dumps({**chunk, "choices": choices,
                                           "usage": usage}).encode() + b"\n\n"

        pad, n = self.owner.pad, self.owner.events
        yield event([{"index": 0, "delta": {"role": "assistant", "content": token(0, pad)},
                      "finish_reason": None}])
        for i in range(1, n):
            yield event([{"index": 0, "delta": {"content": token(i, pad)},
                          "finish_reason": None}])
        yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        yield event([], {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n,
                         "total_tokens": PROMPT_TOKENS + n})
        yield b"data: [DONE]\n\n"

    def anthropic(self, model: Any) -> Iterator[bytes]:
        """The messages stream's events; the first one (all before the gate) carries the
        first token."""

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: ".encode() + json.dumps(
                {"type": name, **data}).encode() + b"\n\n"

        pad, n = self.owner.pad, self.owner.events

        def delta(i: int) -> bytes:
            return event("content_block_delta", {
                "index": 0, "delta": {"type": "text_delta", "text": token(i, pad)}})

        yield event("message_start", {"message": {
            "id": "msg_burst", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}) + event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        ) + delta(0)
        for i in range(1, n):
            yield delta(i)
        yield event("content_block_stop", {"index": 0})
        yield event("message_delta", {"delta": {"stop_reason": "end_turn",
                                                "stop_sequence": None},
                                      "usage": {"output_tokens": n}})
        yield event("message_stop", {})
