"""What the in-process upstreams share: a threaded HTTP/1.1 server on 127.0.0.1 (port bound
to 0) whose request handler reaches the instance that owns it, with a request journal and
fault settings guarded by one lock."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Handler(BaseHTTPRequestHandler):
    """A handler bound to its `owner` (the `Upstream` serving it)."""

    protocol_version = "HTTP/1.1"
    # Each event goes out at once (no Nagle delay waiting for the proxy's ACK).
    disable_nagle_algorithm = True
    owner: Any

    def log_message(self, *_: Any) -> None:
        pass


class Upstream:
    """One server of `handler` (a `Handler` subclass) on 127.0.0.1, port bound to 0, at
    `url`; `configure(**faults)` sets its faults, `stop()` ends it."""

    def __init__(self, handler: type[Handler]) -> None:
        self.faults: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        bound = type("Bound" + handler.__name__, (handler,), {"owner": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), bound)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def configure(self, **faults: Any) -> None:
        with self.lock:
            self.faults = faults

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
