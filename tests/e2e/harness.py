"""Process and metrics plumbing shared by the e2e suite (conftest.py) and the demo.

Nothing here knows about pytest: it starts llmock and sluice on free loopback ports,
writes sluice's config, waits for readiness, stops processes, and reads Prometheus text.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

# What the e2e config calls its upstream keys: sluice reads them from these variables.
OPENAI_KEY_ENV = "SLUICE_E2E_OPENAI_KEY"
ANTHROPIC_KEY_ENV = "SLUICE_E2E_ANTHROPIC_KEY"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on right now (bind :0, read it, close), never one this
    process was already given (the kernel may hand the same free port out twice in a row)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def llmock_command() -> list[str]:
    """`llmock` from the running interpreter's environment (the .venv), else PATH."""
    beside = Path(sys.executable).parent / "llmock"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("llmock")
    if found:
        return [found]
    raise RuntimeError("llmock is not installed: run `make setup`")


def sluice_binary() -> Path:
    """$SLUICE_BIN, else target/debug/sluice; relative paths are from the repo root."""
    path = Path(os.environ.get("SLUICE_BIN", "target/debug/sluice"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


class ProcessFailed(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test runner dies, even by SIGKILL,
    so no llmock or sluice outlives a killed CI run (Linux; a no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Proc:
    """A child process whose stdout+stderr go to `log_path`."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, name: str, argv: list[str], log_path: Path,
              env: dict[str, str] | None = None) -> "Proc":
        log = open(log_path, "wb")  # noqa: SIM115 (owned by the child; closed in stop())
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=REPO_ROOT, preexec_fn=_die_with_parent,
        )
        log.close()  # the child holds its own descriptor
        return cls(name, popen, log_path)

    def log_tail(self, limit: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return text[-limit:]

    def wait_ready(self, url: str, timeout_s: float = 20.0) -> None:
        """Poll `url` until it answers 200. Raises ProcessFailed with the process log
        when the process exits first or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.popen.poll()
            if code is not None:
                raise ProcessFailed(
                    f"{self.name} exited with {code} before {url} answered.\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}")
            try:
                resp = httpx.get(url, timeout=1.0)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise ProcessFailed(
            f"{self.name}: {url} not ready after {timeout_s:.0f}s (last: {last}).\n"
            f"--- {self.log_path} ---\n{self.log_tail()}")

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, wait, then SIGKILL. Safe to call twice."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(grace_s)


def start_llmock(workdir: Path, name: str = "llmock",
                 extra_args: tuple[str, ...] | list[str] = ()) -> tuple[Proc, str]:
    """Start `llmock serve` on a free port; returns the process and its base URL."""
    port = free_port()
    argv = [*llmock_command(), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", *extra_args]
    proc = Proc.start(name, argv, workdir / f"{name}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        proc.wait_ready(f"{base}/health")
    except BaseException:
        proc.stop()
        raise
    return proc, base


def start_sluice(workdir: Path, config: dict[str, Any], env: dict[str, str],
                 name: str = "sluice") -> Proc:
    """Write `config` to workdir/<name>.yaml and run `sluice run -c` on it until /readyz is 200."""
    binary = sluice_binary()
    if not binary.exists():
        raise ProcessFailed(f"sluice binary not found at {binary}: run `cargo build --locked` "
                            "or set SLUICE_BIN")
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = Proc.start(name, [str(binary), "run", "-c", str(config_path)],
                      workdir / f"{name}.log", env=env)
    admin = config["listeners"]["admin"]
    try:
        proc.wait_ready(f"http://{admin}/readyz")
        # /readyz can say 200 a moment before the proxy listener is bound (seen in about
        # 1 start in 15): wait for the proxy port too, so the suite does not flake on it.
        wait_listening(config["listeners"]["proxy"], proc)
    except BaseException:
        proc.stop()
        raise
    return proc


def wait_listening(addr: str, proc: Proc | None = None, timeout_s: float = 10.0) -> None:
    """Poll until `host:port` accepts a TCP connection."""
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                log = f"\n{proc.log_tail()}" if proc else ""
                raise ProcessFailed(f"{addr} refuses connections after {timeout_s:.0f}s "
                                    f"({exc}).{log}") from exc
            time.sleep(0.02)


def pool(name: str, provider: str, url: str, key_env: str) -> dict[str, Any]:
    """A one-endpoint pool with short timeouts (a hang must fail a test, not stall CI)."""
    return {
        "name": name,
        "provider": provider,
        "endpoints": [{"url": url, "keys": [{"env": key_env}]}],
        "timeouts": {"connect_ms": 2000, "ttfb_ms": 10000, "idle_ms": 10000},
    }


def route(name: str, prefix: str, pools: list[str],
          header: tuple[str, str] | None = None) -> dict[str, Any]:
    match: dict[str, Any] = {"path_prefix": prefix}
    if header is not None:
        match["header"] = {"name": header[0], "value": header[1]}
    return {"name": name, "match": match, "pools": pools}


# -- Prometheus text ------------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


@dataclass
class Metrics:
    """One scrape of /metrics."""

    samples: list[Sample] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> "Metrics":
        samples = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE_RE.match(line)
            if not m:
                continue
            labels = tuple(sorted(
                (k, _unescape(v)) for k, v in _LABEL_RE.findall(m.group(2) or "")
            ))
            samples.append(Sample(m.group(1), labels, float(m.group(3))))
        return cls(samples)

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples
                if s.name == name and all(s.label(k) == v for k, v in labels.items())]

    def sum(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.select(name, **labels))

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {s.labels: s.value for s in self.select(name)}


def diff(before: Metrics, after: Metrics, name: str) -> dict[str, float]:
    """Series of `name` whose value changed, as `{labels...} -> delta` (for messages)."""
    old = before.series(name)
    out = {}
    for labels, value in after.series(name).items():
        delta = value - old.get(labels, 0.0)
        if delta:
            out["{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"] = delta
    return out


def scrape(admin_addr: str) -> Metrics:
    resp = httpx.get(f"http://{admin_addr}/metrics", timeout=5.0)
    resp.raise_for_status()
    return Metrics.parse(resp.text)


# -- helpers for the limits and failover suites -----------------------------------------

def sluice_config_from(proxy: str, admin: str, *, pools: list[dict[str, Any]],
                       routes: list[dict[str, Any]], tenants: dict[str, Any],
                       **sections: Any) -> dict[str, Any]:
    """A whole sluice config: listeners, a one-thread text-logging server that drains at
    once on SIGTERM, then `pools`, `routes`, `tenants` and any other top-level section
    (`models`, `limits`, ...) passed by keyword."""
    config: dict[str, Any] = {
        "listeners": {"proxy": proxy, "admin": admin},
        "server": {"threads": 1, "log_format": "text", "drain_timeout_seconds": 1},
        "pools": pools,
        "routes": routes,
        "tenants": tenants,
    }
    config.update(sections)
    return config


def post_scenario(base: str, *behaviors: dict[str, Any]) -> None:
    """Queue llmock behaviours (`POST /_llmock/scenario`, LLMOCK_NOTES.md)."""
    resp = httpx.post(f"{base}/_llmock/scenario", json={"behaviors": list(behaviors)},
                      timeout=10.0)
    resp.raise_for_status()


# One `sluice::access` line (text log format): `request key=value key="quoted value" ...`.
_ACCESS_FIELD_RE = re.compile(r'([a-z_]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_access_log(text: str) -> list[dict[str, str]]:
    """Every access-log line in `text` (sluice's log, text format) as a dict of its fields,
    quotes removed, oldest first."""
    entries = []
    for line in text.splitlines():
        if "sluice::access" not in line:
            continue
        _, _, fields = line.partition("sluice::access:")
        entry = {}
        for key, value in _ACCESS_FIELD_RE.findall(fields):
            if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
                value = _unescape(value[1:-1])
            entry[key] = value
        entries.append(entry)
    return entries
