"""A minimal OpenAI chat-completions upstream as an ASGI app, served by hypercorn over TLS
(ALPN offers h2): answers non-streamed and streamed (SSE) calls and journals, per request,
the HTTP version the proxy spoke, the path and the credential it sent (to $H2_JOURNAL)."""

from __future__ import annotations

import json
import os

WORDS = ["Hello", " over", " HTTP/2", "!"]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    with open(os.environ["H2_JOURNAL"], "a", encoding="utf-8") as journal:
        journal.write(json.dumps({
            "http_version": scope["http_version"],
            "path": scope["path"],
            "authorization": headers.get("authorization"),
            "body_len": len(body),
        }) + "\n")
    request = json.loads(body)
    usage = {"prompt_tokens": 11, "completion_tokens": len(WORDS), "total_tokens": 11 + len(WORDS)}
    base = {"id": "chatcmpl-h2", "created": 1, "model": request["model"]}
    if not request.get("stream"):
        payload = json.dumps({**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
            "finish_reason": "stop"}], "usage": usage}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})

    async def event(obj) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj)
        await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(),
                    "more_body": True})

    chunk = {**base, "object": "chat.completion.chunk"}
    await event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None}]})
    for word in WORDS:
        await event({**chunk, "choices": [{"index": 0, "delta": {"content": word},
                                           "finish_reason": None}]})
    await event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if (request.get("stream_options") or {}).get("include_usage"):
        await event({**chunk, "choices": [], "usage": usage})
    await event("[DONE]")
    await send({"type": "http.response.body", "body": b""})
