"""A small Gemini API upstream for the e2e tests (llmock's Gemini router checks no key and has
no countTokens, embeddings, thoughts or cached-content counts).

Faithful to the Gemini API reference (https://ai.google.dev/api): `POST
{version}/models/{model}:generateContent` (a `GenerateContentResponse`),
`:streamGenerateContent?alt=sse` (`data: <GenerateContentResponse>` events separated by
`\\r\\n\\r\\n`, `usageMetadata` on every chunk, `finishReason` on the last, no terminal
event), `:countTokens` (`{"totalTokens"}`), `:embedContent` / `:batchEmbedContents`
(`{"embedding":{"values"}}` / `{"embeddings":[...]}`); errors as
`{"error":{"code","message","status"}}`.

The key is checked as the API checks it: `x-goog-api-key` must be the configured key, else a
400 `INVALID_ARGUMENT` ("API key not valid", what the real API answers). `fail_status` makes
every call answer that status instead (a 503 `UNAVAILABLE` primary for failover tests);
with `fail_in_stream` a streamed call gets it as the first event of a 200 stream.
Answers are deterministic functions of the request, so a call through sluice can be compared
with one made directly. Every request is journaled (`journal`: path, query, key header).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

# Usage the mock reports besides the prompt count: thinking and cached-content tokens are
# non-zero so that tests see how sluice maps them.
THOUGHTS = 7
CACHED = 2


def error_body(code: int, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message,
                                 "status": STATUS_NAMES.get(code, "UNKNOWN")}}).encode()


def prompt_words(body: dict[str, Any]) -> list[str]:
    words: list[str] = []
    for content in [body.get("systemInstruction") or {}, *body.get("contents", [])]:
        for part in content.get("parts", []):
            words.extend(str(part.get("text", "")).split())
    return words


def answer_pieces(words: list[str]) -> list[str]:
    """The answer, in stream pieces: an echo of the prompt in three chunks."""
    text = "Echo: " + " ".join(words)
    third = max(1, len(text) // 3)
    return [text[:third], text[third:2 * third], text[2 * third:]]


def usage(words: list[str], pieces_sent: int, pieces: list[str]) -> dict[str, int]:
    prompt = len(words) + 3
    candidates = sum(len(p.split()) + 1 for p in pieces[:pieces_sent])
    thoughts = THOUGHTS if pieces_sent else 0
    return {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
            "cachedContentTokenCount": CACHED, "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt + candidates + thoughts}


@dataclass
class GeminiUpstream:
    """The server and what it saw. Use as a context manager (starts/stops the thread)."""

    key: str
    fail_status: int | None = None
    # With fail_status: streamed calls get a 200 SSE stream whose first event is the error
    # (the API reports some failures that way), instead of the error status.
    fail_in_stream: bool = False
    journal: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> "GeminiUpstream":
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                upstream.handle(self, raw)

            def do_GET(self) -> None:  # noqa: N802
                upstream.handle(self, b"")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- request handling ------------------------------------------------------------------

    def send(self, h: BaseHTTPRequestHandler, status: int, body: bytes,
             content_type: str = "application/json") -> None:
        h.send_response(status)
        h.send_header("content-type", content_type)
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        url = urlsplit(h.path)
        self.journal.append({"path": url.path, "query": parse_qs(url.query),
                             "key": h.headers.get("x-goog-api-key"),
                             "authorization": h.headers.get("authorization")})
        if h.headers.get("x-goog-api-key") != self.key:
            return self.send(h, 400, error_body(
                400, "API key not valid. Please pass a valid API key."))
        if self.fail_status is not None and self.fail_in_stream and "alt=sse" in url.query:
            return self.send(h, 200, b"data: " + error_body(
                self.fail_status, "The model is overloaded.") + b"\r\n\r\n",
                "text/event-stream")
        if self.fail_status is not None:
            return self.send(h, self.fail_status, error_body(
                self.fail_status, "The model is overloaded. Please try again later."))
        method = url.path.rsplit(":", 1)[-1]
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self.send(h, 400, error_body(400, "Invalid JSON payload received."))
        words = prompt_words(body)
        pieces = answer_pieces(words)
        if method == "generateContent":
            return self.send(h, 200, json.dumps(self.response(
                "".join(pieces), usage(words, len(pieces), pieces), True)).encode())
        if method == "streamGenerateContent":
            if parse_qs(url.query).get("alt") != ["sse"]:
                return self.send(h, 400, error_body(400, "this mock streams with alt=sse only"))
            events = b"".join(
                b"data: " + json.dumps(self.response(
                    piece, usage(words, i + 1, pieces), i == len(pieces) - 1)).encode()
                + b"\r\n\r\n"
                for i, piece in enumerate(pieces))
            return self.send(h, 200, events, "text/event-stream")
        if method == "countTokens":
            return self.send(h, 200, json.dumps({"totalTokens": len(words) + 3}).encode())
        if method == "embedContent":
            return self.send(h, 200, json.dumps({"embedding": {"values": [0.5, float(len(words))]}}).encode())
        if method == "batchEmbedContents":
            n = len(body.get("requests", []))
            return self.send(h, 200, json.dumps(
                {"embeddings": [{"values": [0.5, float(i)]} for i in range(n)]}).encode())
        return self.send(h, 404, error_body(404, f"method {method} not found"))

    @staticmethod
    def response(text: str, usage_metadata: dict[str, int], last: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"},
                                     "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        return {"candidates": [candidate], "usageMetadata": usage_metadata,
                "modelVersion": "gemini-2.5-flash", "responseId": "mock-response-1"}
