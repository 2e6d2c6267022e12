"""A test OTLP/HTTP trace receiver: accepts `POST /v1/traces` (protobuf), decodes each
`ExportTraceServiceRequest` with the published OpenTelemetry proto definitions (PyPI
`opentelemetry-proto`), and keeps every span and every raw body for the test to read."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KIND = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client",
        Span.SPAN_KIND_INTERNAL: "internal"}


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class ReceivedSpan:
    """One exported span, ids as lower-case hex (parent "" for a root span)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attrs: dict[str, Any]
    error: bool
    events: list[str]
    resource: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver:
    """The receiver on 127.0.0.1 (port bound to 0) in a thread; `close()` stops it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[ReceivedSpan] = []
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.add(body)
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def add(self, body: bytes) -> None:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        spans = []
        for rs in req.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(ReceivedSpan(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), name=s.name,
                        kind=KIND.get(s.kind, str(s.kind)),
                        attrs={a.key: value(a.value) for a in s.attributes},
                        error=s.status.code == Status.STATUS_CODE_ERROR,
                        events=[e.name for e in s.events], resource=resource))
        with self.lock:
            self.bodies.append(body)
            self.spans.extend(spans)

    def wait_for(self, ready: Callable[[list[ReceivedSpan]], bool],
                 timeout_s: float = 10.0) -> list[ReceivedSpan]:
        """The spans received so far, once `ready(spans)` holds (raises after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                spans = list(self.spans)
            if ready(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans not received in {timeout_s} s: {spans}")
            time.sleep(0.05)

    def trace(self, trace_id: str, count: int, timeout_s: float = 10.0) -> list[ReceivedSpan]:
        """The `count` spans of trace `trace_id` (waits for them; more is a failure later)."""
        spans = self.wait_for(
            lambda ss: sum(s.trace_id == trace_id for s in ss) >= count, timeout_s)
        return [s for s in spans if s.trace_id == trace_id]

    def raw(self) -> bytes:
        with self.lock:
            return b"".join(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
