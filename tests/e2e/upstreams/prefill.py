"""A deterministic LLM upstream that honours an assistant prefill, speaking OpenAI chat
completions and Anthropic messages, streamed (SSE, HTTP/1.1 chunked) and not.

Its answer to a conversation is a fixed text of 60 distinct words chosen from the first user
message (a seeded sample): one word per token, OpenAI-style with a leading space (`w0`, ` w1`,
...), Anthropic-style with a trailing one (`w0 `, `w1 `, ..., `w59`), so a cut Anthropic answer
ends in whitespace. When the conversation ends with an assistant message whose text is a prefix
of the answer (a prefill), or with an assistant message and then a user message asking to
continue, it streams the rest of the answer only. Usage is reported as the APIs do (chat: the
`stream_options.include_usage` chunk; Anthropic: `message_start` and `message_delta`): prompt
tokens are the words of every message plus 5, completion tokens the tokens streamed.

Faults, per instance (`Upstream.configure`), applied to requests without a prefill:
`cut_after=N` then `cut_mode="reset"` (TCP reset) or `"eof"` (a clean end of the body without
the final event); `stall_after=N` (then silence for `stall_s`). `reject_prefill=True` answers a
prefilled request with the provider's native 400; `prefill_cut_after=N` cuts a prefilled
answer after N tokens (clean end without the final event). Anthropic's own rule is enforced: a final
assistant message ending in whitespace is a 400. Every request is journalled
(`Upstream.requests`)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import struct
import time
from typing import Any

from upstreams import base

VOCAB = """apple river stone cloud maple amber falcon harbor meadow copper lantern orchid
pepper quartz saddle timber velvet walnut yonder zephyr anchor bramble cedar dune ember
fable garnet heron island jasper kettle lilac marble nectar oyster pebble quill raven
sable thistle umber violet willow yarrow acorn beacon cobalt dahlia eagle fern glacier
hazel indigo juniper kelp lotus mango nutmeg olive prairie quince rose sparrow tulip
""".split()
ANSWER_WORDS = 60
PREFILL_REJECTED = "this model does not accept an assistant prefill"


def answer_words(prompt: str) -> list[str]:
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return random.Random(seed).sample(VOCAB, ANSWER_WORDS)


def answer(prompt: str, api: str) -> str:
    """The whole answer to a conversation whose first user message is `prompt`."""
    del api  # the same text for both APIs; only its cut into tokens differs
    return " ".join(answer_words(prompt))


def tokens(text: str, api: str) -> list[str]:
    """`text` cut into tokens: a word with its leading (OpenAI) or trailing (Anthropic)
    whitespace."""
    return re.findall(r"\s*\S+", text) if api == "openai" else re.findall(r"\s*\S+\s*", text)


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


class Upstream(base.Upstream):
    """One instance on 127.0.0.1, port bound to 0; `stop()` ends it."""

    def __init__(self) -> None:
        super().__init__(_Handler)


class _Handler(base.Handler):
    owner: Upstream
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        api = "anthropic" if self.path.split("?")[0].endswith("/messages") else "openai"
        messages = body.get("messages", [])
        prompt = next((text_of(m.get("content")) for m in messages if m.get("role") == "user"),
                      "")
        whole = answer(prompt, api)
        prefill = None
        if messages and messages[-1].get("role") == "assistant":
            prefill = text_of(messages[-1].get("content"))
        elif len(messages) >= 2 and messages[-2].get("role") == "assistant":
            prefill = text_of(messages[-2].get("content"))
        with self.owner.lock:
            faults = dict(self.owner.faults)
            seq = len(self.owner.requests)
            record = {"path": self.path, "body": body, "prefill": prefill, "usage": None}
            self.owner.requests.append(record)
        if prefill is not None:
            if faults.get("reject_prefill"):
                return self.error(api, PREFILL_REJECTED)
            if api == "anthropic" and messages[-1].get("role") == "assistant" \
                    and prefill != prefill.rstrip():
                return self.error(api, "final assistant content cannot end with trailing "
                                       "whitespace")
            if not whole.startswith(prefill):
                return self.error(api, "the prefill is not a prefix of the answer")
            rest = whole[len(prefill):]
            faults = ({"cut_after": faults["prefill_cut_after"], "cut_mode": "eof"}
                      if "prefill_cut_after" in faults else {})
        else:
            rest = whole
        pieces = tokens(rest, api)
        prompt_tokens = sum(len(text_of(m.get("content")).split()) for m in messages) + 5
        usage = (prompt_tokens, len(pieces))
        record["usage"] = usage
        port = self.server.server_address[1]
        if not body.get("stream"):
            return self.whole(api, body, rest, usage, f"{port}-{seq}")
        self.stream(api, body, pieces, usage, f"{port}-{seq}", faults)

    def error(self, api: str, message: str) -> None:
        if api == "openai":
            payload = {"error": {"message": message, "type": "invalid_request_error",
                                 "param": "messages", "code": "invalid_prefill"}}
        else:
            payload = {"type": "error",
                       "error": {"type": "invalid_request_error", "message": message}}
        raw = json.dumps(payload).encode()
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def whole(self, api: str, body: dict, text: str, usage: tuple[int, int], rid: str) -> None:
        if api == "openai":
            payload = {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": 1,
                       "model": body.get("model"), "choices": [{
                           "index": 0, "message": {"role": "assistant", "content": text},
                           "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                 "total_tokens": sum(usage)}}
        else:
            payload = {"id": f"msg_{rid}", "type": "message", "role": "assistant",
                       "model": body.get("model"), "content": [{"type": "text", "text": text}],
                       "stop_reason": "end_turn", "stop_sequence": None,
                       "usage": {"input_tokens": usage[0], "output_tokens": usage[1]}}
        raw = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def send_event(self, data: dict | str, name: str | None = None) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        event = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
        raw = event.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
        self.wfile.flush()

    def stream(self, api: str, body: dict, pieces: list[str], usage: tuple[int, int],
               rid: str, faults: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        events = (self.openai_events if api == "openai" else self.anthropic_events)(
            body, pieces, usage, rid)
        content_sent = 0
        for is_content, data, name in events:
            if is_content:
                if content_sent == faults.get("cut_after"):
                    return self.cut(faults.get("cut_mode", "reset"))
                if content_sent == faults.get("stall_after"):
                    time.sleep(float(faults.get("stall_s", 3.0)))
                    return self.cut("reset")
                content_sent += 1
            self.send_event(data, name)
        self.wfile.write(b"0\r\n\r\n")

    def cut(self, mode: str) -> None:
        if mode == "reset":
            # Let the proxy read what was sent first: a reset discards the peer's unread data,
            # and the cut must come after exactly the tokens sent.
            time.sleep(0.05)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        else:
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    @staticmethod
    def openai_events(body: dict, pieces: list[str], usage: tuple[int, int], rid: str):
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        head = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk",
                "created": 1700000000 + len(rid), "model": body.get("model"),
                "system_fingerprint": f"fp_{rid}"}

        def chunk(delta: dict, finish: str | None = None) -> dict:
            c = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish}]}
            if include:
                c["usage"] = None
            return c

        yield False, chunk({"role": "assistant", "content": ""}), None
        for piece in pieces:
            yield True, chunk({"content": piece}), None
        yield False, chunk({}, "stop"), None
        if include:
            yield False, {**head, "choices": [], "usage": {
                "prompt_tokens": usage[0], "completion_tokens": usage[1],
                "total_tokens": sum(usage)}}, None
        yield False, "[DONE]", None

    @staticmethod
    def anthropic_events(body: dict, pieces: list[str], usage: tuple[int, int], rid: str):
        yield False, {"type": "message_start", "message": {
            "id": f"msg_{rid}", "type": "message", "role": "assistant",
            "model": body.get("model"), "content": [], "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": 1}}}, "message_start"
        yield False, {"type": "content_block_start", "index": 0,
                      "content_block": {"type": "text", "text": ""}}, "content_block_start"
        yield False, {"type": "ping"}, "ping"
        for piece in pieces:
            yield True, {"type": "content_block_delta", "index": 0,
                         "delta": {"type": "text_delta", "text": piece}}, "content_block_delta"
        yield False, {"type": "content_block_stop", "index": 0}, "content_block_stop"
        yield False, {"type": "message_delta",
                      "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                      "usage": {"output_tokens": usage[1]}}, "message_delta"
        yield False, {"type": "message_stop"}, "message_stop"
