"""A deterministic Ollama server speaking Ollama's native API, behind a bearer-key check, for
the `ollama` Python package through sluice (tests/e2e/test_ollama.py).

Faithful to Ollama's docs/api.md (https://github.com/ollama/ollama/blob/main/docs/api.md):
- `POST /api/chat` and `POST /api/generate`: `stream` defaults to TRUE when absent. Streamed:
  `content-type: application/x-ndjson`, HTTP/1.1 chunked, one JSON object per line
  (`{"model","created_at","message":{"role":"assistant","content"},"done":false}` for chat,
  `"response"` for generate), then a final object with `"done":true`, `"done_reason"`
  (`stop`, or `length` when `options.num_predict` cut the answer), `total_duration`,
  `load_duration`, `prompt_eval_count`, `prompt_eval_duration`, `eval_count`,
  `eval_duration` (ns). Not streamed: one `application/json` object, the final object with
  the whole text.
- `POST /api/embed`: `{"model","embeddings":[[..] per input],"total_duration",
  "load_duration","prompt_eval_count"}`.
- `GET /api/tags`, `POST /api/show`, `GET /api/version`: small fixed answers (sluice passes
  them through).
- Errors as `{"error":"..."}`: 401 when the `Authorization: Bearer` is not the pool key this
  server was given (Ollama behind an authenticating proxy, or ollama.com's API), 400 on a
  body that is not JSON, 404 on an unknown model or path.

The answer to a prompt is deterministic: ANSWER_WORDS words picked from the prompt's hash,
one per token (a leading space after the first). `prompt_eval_count` is the prompt's words
plus 4, `eval_count` the tokens generated. Timestamps and durations are fixed, so an answer
read directly equals one read through sluice.

Faults, per request: header `x-mock-cut-after: N` sends N lines of a stream then ends the body
cleanly without the final object (`x-mock-cut-mode: reset` resets the connection instead).
Per instance: `fail_status=503` answers every chat/generate call with that status and
`{"error":"server busy, please try again"}`; `fail_cut_after=N` cuts every stream after N
lines.
Every request is journalled (`OllamaUpstream.requests`: method, path, authorization, body).
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VOCAB = """apple river stone cloud maple amber falcon harbor meadow copper lantern orchid
pepper quartz saddle timber velvet walnut yonder zephyr anchor bramble cedar dune ember
fable garnet heron island jasper kettle lilac marble nectar oyster pebble quill raven
""".split()
ANSWER_WORDS = 12
MODELS = ("llama3.2", "all-minilm")
CREATED_AT = "2026-11-30T00:00:00.000000Z"


def compact(obj: Any) -> bytes:
    """JSON as Ollama's Go server writes it: no spaces, UTF-8 as is."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def prompt_text(api: str, body: dict[str, Any]) -> str:
    if api == "chat":
        return " ".join(str(m.get("content", "")) for m in body.get("messages") or [])
    return " ".join(str(body.get(k, "")) for k in ("system", "prompt") if body.get(k))


def answer_tokens(prompt: str, limit: int | None) -> tuple[list[str], str]:
    """The tokens of the answer to `prompt`, at most `limit`, and the done_reason."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    words = random.Random(seed).sample(VOCAB, ANSWER_WORDS)
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    if limit is not None and 0 < limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def final_fields(prompt: str, generated: int, reason: str) -> dict[str, Any]:
    return {"done": True, "done_reason": reason, "total_duration": 5_043_500_667,
            "load_duration": 5_025_959, "prompt_eval_count": len(prompt.split()) + 4,
            "prompt_eval_duration": 325_953_000, "eval_count": generated,
            "eval_duration": 4_709_213_000}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    # -- plumbing ---------------------------------------------------------------------
    def _send_json(self, status: int, obj: Any) -> None:
        raw = compact(obj)
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _journal(self, body: Any) -> None:
        with self.server.lock:
            self.server.journal.append({"method": self.command, "path": self.path,
                                        "authorization": self.headers.get("authorization"),
                                        "body": body})

    def _authorized(self) -> bool:
        if self.headers.get("authorization") == f"Bearer {self.server.key}":
            return True
        self._send_json(401, {"error": "unauthorized"})
        return False

    def log_message(self, *_: Any) -> None:
        pass

    # -- routes -----------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._journal(None)
        if not self._authorized():
            return
        path = self.path.split("?")[0]
        if path == "/api/tags":
            self._send_json(200, {"models": [
                {"name": f"{m}:latest", "model": f"{m}:latest", "size": 1000 + i,
                 "digest": f"{i:064x}", "modified_at": CREATED_AT,
                 "details": {"format": "gguf", "family": "llama"}}
                for i, m in enumerate(MODELS)]})
        elif path == "/api/version":
            self._send_json(200, {"version": "0.12.6"})
        else:
            self._send_json(404, {"error": f"path {path} not found"})

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._journal(None)
            self._send_json(400, {"error": "invalid character in request body"})
            return
        self._journal(body)
        if not self._authorized():
            return
        path = self.path.split("?")[0]
        model = str(body.get("model", ""))
        if path in ("/api/chat", "/api/generate", "/api/embed", "/api/show") and \
                model.split(":")[0] not in MODELS:
            self._send_json(404, {"error": f"model '{model}' not found"})
            return
        if path in ("/api/chat", "/api/generate") and self.server.fail_status:
            self._send_json(self.server.fail_status,
                            {"error": "server busy, please try again"})
        elif path in ("/api/chat", "/api/generate"):
            self._generate("chat" if path == "/api/chat" else "generate", model, body)
        elif path == "/api/embed":
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
            count = sum(len(str(i).split()) for i in inputs) + 2 * len(inputs)
            self._send_json(200, {"model": model,
                                  "embeddings": [[round(0.01 * (len(str(i)) % 7 + k), 4)
                                                  for k in range(4)] for i in inputs],
                                  "total_duration": 14_143_917, "load_duration": 1_019_500,
                                  "prompt_eval_count": count})
        elif path == "/api/show":
            self._send_json(200, {"modelfile": f"FROM {model}", "parameters": "",
                                  "template": "{{ .Prompt }}",
                                  "details": {"format": "gguf", "family": "llama"},
                                  "model_info": {"general.architecture": "llama",
                                                 "general.parameter_count": 3212749888},
                                  "capabilities": ["completion"]})
        else:
            self._send_json(404, {"error": f"path {path} not found"})

    def _generate(self, api: str, model: str, body: dict[str, Any]) -> None:
        prompt = prompt_text(api, body)
        limit = (body.get("options") or {}).get("num_predict")
        tokens, reason = answer_tokens(prompt, limit if isinstance(limit, int) else None)

        def piece(text: str) -> dict[str, Any]:
            if api == "chat":
                return {"model": model, "created_at": CREATED_AT,
                        "message": {"role": "assistant", "content": text}}
            return {"model": model, "created_at": CREATED_AT, "response": text}

        final = {**piece(""), **final_fields(prompt, len(tokens), reason)}
        if body.get("stream", True) is False:
            self._send_json(200, {**final, **piece("".join(tokens)),
                                  **final_fields(prompt, len(tokens), reason)})
            return
        lines = [{**piece(t), "done": False} for t in tokens] + [final]
        cut = self.headers.get("x-mock-cut-after", self.server.fail_cut_after)
        self.send_response(200)
        self.send_header("content-type", "application/x-ndjson")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i, line in enumerate(lines):
            if cut is not None and i == int(cut):
                if self.headers.get("x-mock-cut-mode") == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                break
            data = compact(line) + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    key: str
    journal: list[dict[str, Any]]
    lock: threading.Lock
    fail_status: int | None
    fail_cut_after: int | None


class OllamaUpstream:
    """The mock on a free loopback port, serving in a thread until `stop`."""

    def __init__(self, key: str, *, fail_status: int | None = None,
                 fail_cut_after: int | None = None) -> None:
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.key = key
        self.server.fail_status = fail_status
        self.server.fail_cut_after = fail_cut_after
        self.server.journal = []
        self.server.lock = threading.Lock()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests(self) -> list[dict[str, Any]]:
        with self.server.lock:
            return list(self.server.journal)

    def clear(self) -> None:
        with self.server.lock:
            self.server.journal.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
