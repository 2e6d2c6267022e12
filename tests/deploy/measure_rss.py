#!/usr/bin/env python3
"""Measure sluice's resident memory as the sidecar runs it, to size its requests/limits.

Runs the base ConfigMap's sluice.yaml (pools re-pointed at a local llmock, placeholder key
files in a temp dir, listeners on free loopback ports), then reads /proc/PID/status:

  idle           VmRSS once /readyz answers 200 (plus a 2 s settle, so the tokenizer
                 tables sluice preloads in the background are in)
  after N        after N sequential requests (chat, chat streamed, anthropic streamed,
                 in turn)
  after burst    after C concurrent streamed requests on top

VmRSS is split into RssAnon (heap: what the workload costs) and RssFile (mapped binary
pages: large for a debug build, which carries ~180 MB of debug info; small for release).
VmHWM is the peak.

Usage:  SLUICE_BIN=target/release/sluice python3 tests/deploy/measure_rss.py [N] [C]
Needs `llmock` (the e2e .venv has it: run with .venv/bin/python, or put it on PATH).
Only loopback traffic, bounded in count; everything it starts is stopped on exit.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGMAP = ROOT / "deploy/k8s/base/configmap.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def post(url: str, body: dict, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
        return r.status


def one_request(base: str, i: int) -> int:
    prompt = f"Measure the sidecar's memory, request number {i}, with a longer prompt."
    kind = i % 3
    if kind == 2:
        return post(f"{base}/v1/messages",
                    {"model": "claude-sonnet-4-6", "max_tokens": 256, "stream": True,
                     "messages": [{"role": "user", "content": prompt}]},
                    {"x-api-key": "placeholder", "anthropic-version": "2023-06-01"})
    return post(f"{base}/v1/chat/completions",
                {"model": "gpt-4o-mini", "stream": kind == 1,
                 "messages": [{"role": "user", "content": prompt}]},
                {"authorization": "Bearer placeholder"})


def fmt(s: dict[str, int]) -> str:
    mib = {k: v / 1024 for k, v in s.items()}
    return (f"VmRSS {mib['VmRSS']:.1f} MiB (anon {mib['RssAnon']:.1f}, file {mib['RssFile']:.1f}), "
            f"VmHWM {mib['VmHWM']:.1f} MiB")


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    burst = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    sluice = os.environ.get("SLUICE_BIN", str(ROOT / "target/debug/sluice"))
    llmock = shutil.which("llmock") or str(Path(sys.executable).parent / "llmock")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="sluice-rss-") as tmp:
        tmpdir = Path(tmp)
        try:
            mock_port = free_port()
            procs.append(subprocess.Popen(
                [llmock, "serve", "--host", "127.0.0.1", "--port", str(mock_port),
                 "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            mock = f"http://127.0.0.1:{mock_port}"
            wait_http(f"{mock}/health")

            conf = yaml.safe_load(yaml.safe_load(CONFIGMAP.read_text())["data"]["sluice.yaml"])
            proxy_port, admin_port = free_port(), free_port()
            conf["listeners"] = {"proxy": f"127.0.0.1:{proxy_port}",
                                 "admin": f"127.0.0.1:{admin_port}"}
            for pool in conf["pools"]:
                suffix = "/anthropic" if pool["provider"] == "anthropic" else ""
                for ep in pool["endpoints"]:
                    ep["url"] = mock + suffix
                    for k in ep["keys"]:
                        key_file = tmpdir / Path(k["file"]).name
                        key_file.write_text("placeholder-not-a-key\n")
                        k["file"] = str(key_file)
            conf_file = tmpdir / "sluice.yaml"
            conf_file.write_text(yaml.safe_dump(conf))

            proc = subprocess.Popen([sluice, "run", "-c", str(conf_file)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            wait_http(f"http://127.0.0.1:{admin_port}/readyz")
            time.sleep(2)
            idle = status_kib(proc.pid)

            base = f"http://127.0.0.1:{proxy_port}"
            statuses = [one_request(base, i) for i in range(n)]
            after_n = status_kib(proc.pid)
            with concurrent.futures.ThreadPoolExecutor(burst) as pool_:
                statuses += list(pool_.map(lambda i: one_request(base, 3 * i + 1), range(burst)))
            after_burst = status_kib(proc.pid)
            bad = [s for s in statuses if s != 200]

            print(f"binary: {sluice}")
            print(f"idle:                     {fmt(idle)}")
            print(f"after {n} requests:       {fmt(after_n)}")
            print(f"after +{burst} concurrent:   {fmt(after_burst)}")
            print(f"non-200 answers: {len(bad)} of {len(statuses)}")
            return 1 if bad else 0
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()


if __name__ == "__main__":
    sys.exit(main())
