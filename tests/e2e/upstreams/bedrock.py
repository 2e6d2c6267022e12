"""A Bedrock Runtime mock upstream that checks credentials as AWS does: every request must carry
a SigV4 signature that botocore's own signer (`botocore.auth.SigV4Auth`) reproduces with the
credentials this instance was given (service `bedrock`, its region), or, when it was given an
API key, `Authorization: Bearer <key>`. Anything else gets the native 403
(`x-amzn-errortype: UnrecognizedClientException` / `InvalidSignatureException`).

Operations (AWS Bedrock Runtime API reference; botocore's `bedrock-runtime` service model):
`POST /model/{modelId}/converse` (JSON: `output.message.content[].text`, `stopReason`,
`usage`), `/converse-stream` (`application/vnd.amazon.eventstream`: `messageStart`,
`contentBlockDelta` per piece, `contentBlockStop`, `messageStop`, `metadata` with `usage`),
`/invoke` (an Anthropic-shaped JSON body, the token counts in `x-amzn-bedrock-input-token-count`
/ `-output-token-count`) and `/invoke-with-response-stream` (`chunk` events, `bytes` base64, the
last one with `amazon-bedrock-invocationMetrics`). The answer is deterministic: five words picked from the prompt's hash, one
piece per word. Usage: `inputTokens` = words of the user messages + 3, `outputTokens` = pieces,
`cacheReadInputTokens` = 2.

Faults (`configure`): `fail_status=N` answers the next `fail_count` requests with N and the
native error; `cut_after=N` ends a stream's body cleanly after N content deltas (no
`messageStop`/`metadata`); `bad_crc_after=N` sends a message with a wrong CRC after N deltas.
Every request is journalled (`requests`: path, whether the credentials checked, the access key
id, the usage sent)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import struct
import zlib
from typing import Any
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from upstreams import base

WORDS = """amber basalt cobalt delta ember fjord garnet harbor indigo jasper kestrel lagoon
meadow nectar onyx prism quartz rapids sierra tundra umbra valley willow xenon yarrow zephyr
""".split()

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request,\s*"
    r"SignedHeaders=([^,]+),\s*Signature=([0-9a-f]+)")


def answer_pieces(prompt: str) -> list[str]:
    digest = hashlib.sha256(prompt.encode()).digest()
    words = [WORDS[b % len(WORDS)] for b in digest[:5]]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def eventstream_message(headers: list[tuple[str, str]], payload: bytes,
                        corrupt: bool = False) -> bytes:
    """One AWS event stream message (string headers), CRCs computed (AWS "Event stream
    encoding"); `corrupt` flips the message CRC."""
    hb = b"".join(bytes([len(n)]) + n.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
                  for n, v in headers)
    total = 12 + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + hb + payload
    crc = zlib.crc32(msg) ^ (1 if corrupt else 0)
    return msg + struct.pack(">I", crc)


def event(name: str, body: dict[str, Any], corrupt: bool = False) -> bytes:
    return eventstream_message([(":event-type", name), (":content-type", "application/json"),
                                (":message-type", "event")], json.dumps(body).encode(), corrupt)


def verify_sigv4(method: str, path: str, headers: dict[str, str], body: bytes,
                 creds: Credentials, region: str) -> tuple[bool, str | None]:
    """Whether the request's SigV4 signature is the one botocore computes with `creds` over
    the headers it names; also the access key id it claims."""
    m = _AUTH_RE.fullmatch(headers.get("authorization", "").strip())
    if not m:
        return False, None
    akid, _date, reg, service, signed, signature = m.groups()
    if akid != creds.access_key or reg != region or service != "bedrock":
        return False, akid
    names = signed.split(";")
    if any(n not in headers for n in names) or "x-amz-date" not in headers:
        return False, akid
    request = AWSRequest(method=method, url=f"http://{headers['host']}{path}", data=body,
                         headers={n: headers[n] for n in names})
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(creds, "bedrock", region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)),
                                request)
    return hmac.compare_digest(expected, signature), akid


class Upstream(base.Upstream):
    """One instance on 127.0.0.1, port bound to 0; `stop()` ends it. Give it either AWS
    credentials (`access_key`, `secret_key`, `region`) or an `api_key`."""

    def __init__(self, *, access_key: str | None = None, secret_key: str | None = None,
                 region: str = "us-east-1", api_key: str | None = None) -> None:
        self.creds = Credentials(access_key, secret_key) if access_key else None
        self.region = region
        self.api_key = api_key
        super().__init__(_Handler)


class _Handler(base.Handler):
    owner: Upstream

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        owner = self.owner
        if owner.creds is not None:
            ok, akid = verify_sigv4("POST", self.path, headers, raw, owner.creds, owner.region)
        else:
            ok = headers.get("authorization") == f"Bearer {owner.api_key}"
            akid = None
        m = re.fullmatch(r"/model/([^/]+)/([a-z-]+)", self.path.split("?")[0])
        with owner.lock:
            record: dict[str, Any] = {"path": self.path, "auth_ok": ok, "akid": akid,
                                      "headers": headers, "usage": None}
            owner.requests.append(record)
            faults = dict(owner.faults)
            if faults.get("fail_count", 0) > 0:
                owner.faults["fail_count"] -= 1
        if not ok:
            return self.error(403, "InvalidSignatureException",
                              "The request signature we calculated does not match")
        if faults.get("fail_count", 0) > 0:
            status = int(faults.get("fail_status", 503))
            kind = {429: "ThrottlingException", 503: "ServiceUnavailableException"}.get(
                status, "InternalServerException")
            return self.error(status, kind, "scripted failure")
        if not m:
            return self.error(404, "UnknownOperationException", "unknown operation")
        model, op = unquote(m.group(1)), m.group(2)
        body = json.loads(raw or b"{}")
        record["model"] = model
        prompt = " ".join(block.get("text", "") for msg in body.get("messages", [])
                          if msg.get("role") == "user"
                          for block in (msg.get("content") if isinstance(msg.get("content"), list)
                                        else [{"text": msg.get("content", "")}]))
        pieces = answer_pieces(prompt)
        usage = {"inputTokens": len(prompt.split()) + 3, "outputTokens": len(pieces),
                 "cacheReadInputTokens": 2}
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
        record["usage"] = usage
        if op == "converse":
            return self.json(200, {
                "output": {"message": {"role": "assistant",
                                       "content": [{"text": "".join(pieces)}]}},
                "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 7}})
        if op == "invoke":
            return self.json(200, {
                "id": "msg_bedrock", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(pieces)}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": usage["inputTokens"],
                          "output_tokens": usage["outputTokens"]}},
                {"x-amzn-bedrock-input-token-count": str(usage["inputTokens"]),
                 "x-amzn-bedrock-output-token-count": str(usage["outputTokens"])})
        if op == "converse-stream":
            return self.stream(self.converse_events(pieces, usage), faults)
        if op == "invoke-with-response-stream":
            return self.stream(self.invoke_events(pieces, usage), faults)
        return self.error(404, "UnknownOperationException", "unknown operation")

    @staticmethod
    def converse_events(pieces: list[str], usage: dict[str, int]):
        yield False, "messageStart", {"role": "assistant"}
        for piece in pieces:
            yield True, "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}}
        yield False, "contentBlockStop", {"contentBlockIndex": 0}
        yield False, "messageStop", {"stopReason": "end_turn"}
        yield False, "metadata", {"usage": usage, "metrics": {"latencyMs": 7}}

    @staticmethod
    def invoke_events(pieces: list[str], usage: dict[str, int]):
        """Anthropic-shaped chunks; the last carries Bedrock's invocation metrics."""
        def chunk(inner: dict[str, Any]) -> dict[str, str]:
            return {"bytes": base64.b64encode(json.dumps(inner).encode()).decode()}

        for piece in pieces:
            yield True, "chunk", chunk({"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": piece}})
        yield False, "chunk", chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": usage["inputTokens"], "outputTokenCount": usage["outputTokens"],
            "invocationLatency": 9, "firstByteLatency": 4}})

    def stream(self, events, faults: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/vnd.amazon.eventstream")
        self.send_header("x-amzn-requestid", "mock-request")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            self.send_events(events, faults)
        except (BrokenPipeError, ConnectionResetError):
            # The proxy stopped reading (a corrupt message ends the stream there).
            self.close_connection = True

    def send_events(self, events, faults: dict[str, Any]) -> None:
        sent = 0
        for is_content, name, body in events:
            if is_content:
                if sent == faults.get("cut_after"):
                    break
                corrupt = sent == faults.get("bad_crc_after")
                sent += 1
                self.chunk(event(name, body, corrupt))
                continue
            self.chunk(event(name, body))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def chunk(self, raw: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
        self.wfile.flush()

    def json(self, status: int, payload: dict[str, Any],
             headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.send_header("x-amzn-requestid", "mock-request")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def error(self, status: int, kind: str, message: str) -> None:
        self.json(status, {"message": message}, {"x-amzn-errortype": kind})
