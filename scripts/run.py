#!/usr/bin/env python3
"""The Python half of `make run` (scripts/run.sh builds, starts and stops the processes).

    run.py plan CONF OUT   decide what to serve and write the banner to OUT.banner; print
                           shell assignments for run.sh: `proxy`, `admin` (host:port),
                           `mock_port` (empty when no pool needs llmock) and `config` (CONF
                           itself when nothing changes, else OUT: CONF rewritten as below)

The rule, one per pool of CONF: a pool whose keys come from environment variables that are
all set (and not empty) is served as configured, by the real provider; a pool with an unset
key variable is served by llmock (the offline OpenAI + Anthropic mock that `make demo` uses),
with the key of $SLUICE_OFFLINE_KEY_ENV, which run.sh sets to a dummy. SLUICE_RUN_OFFLINE=1
serves every pool by llmock. Listeners: $SLUICE_PROXY / $SLUICE_ADMIN (`host:port`; port 0 =
a free port picked here) override CONF's. sluice itself still refuses a config whose key
variable is unset: this script only decides which config to hand it.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

import yaml  # noqa: E402

from harness import free_port, sha256_hex  # noqa: E402

# The virtual key conf/sluice.yaml's tenant team-a is reached by (the config holds only its
# sha256); printed for the app when the served config still has it.
VIRTUAL_KEY = "sk-sluice-team-a-example"
# Where run.sh puts the dummy upstream key of the pools llmock serves (llmock checks none).
OFFLINE_KEY_ENV = "SLUICE_OFFLINE_KEY"
# llmock's base path per provider kind (OpenAI at the root, Anthropic under /anthropic).
LLMOCK_PATHS = {"openai": "", "anthropic": "/anthropic"}
DEFAULT_LISTENERS = {"proxy": "127.0.0.1:8080", "admin": "127.0.0.1:9090"}


def listener(conf: dict[str, Any], name: str, env: str) -> str:
    """`host:port` for listener `name`: $env, else the config's, else sluice's default; port 0
    is replaced by a free loopback port."""
    addr = os.environ.get(env) or (conf.get("listeners") or {}).get(name) \
        or DEFAULT_LISTENERS[name]
    host, _, port = addr.rpartition(":")
    if not host:
        sys.exit(f"run: {env}={addr!r}: want host:port")
    return f"{host}:{free_port()}" if port == "0" else addr


def check_free(addr: str, env: str) -> None:
    """Exit with a clear message when `addr` is taken: sluice would wait for it (Pingora retries
    a bind) while its /readyz already answers 200, so the script checks first."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError as exc:
            sys.exit(f"run: cannot listen on {addr} ({exc.strerror}): is another sluice or "
                     f"`make run` running? Set {env}=host:port (port 0 picks a free one)")


def why_offline(pool: dict[str, Any], offline_all: bool) -> str | None:
    """Why llmock stands in for `pool` (its unset or empty key variables), or None."""
    if offline_all:
        return "SLUICE_RUN_OFFLINE=1"
    unset = [key["env"] for endpoint in pool.get("endpoints", [])
             for key in endpoint.get("keys", []) if "env" in key and not os.environ.get(key["env"])]
    return f"{', '.join(unset)} not set" if unset else None


def plan(conf_path: str, out: str) -> int:
    conf = yaml.safe_load(Path(conf_path).read_text())
    offline_all = os.environ.get("SLUICE_RUN_OFFLINE", "") not in ("", "0")
    proxy = listener(conf, "proxy", "SLUICE_PROXY")
    admin = listener(conf, "admin", "SLUICE_ADMIN")
    check_free(proxy, "SLUICE_PROXY")
    check_free(admin, "SLUICE_ADMIN")
    changed = conf.get("listeners") != {"proxy": proxy, "admin": admin}
    conf["listeners"] = {**(conf.get("listeners") or {}), "proxy": proxy, "admin": admin}

    offline = {pool["name"]: why for pool in conf.get("pools", [])
               if (why := why_offline(pool, offline_all))}
    mock_port = free_port() if offline else None
    lines = []
    for pool in conf.get("pools", []):
        name, provider = pool["name"], pool["provider"]
        if name in offline:
            if provider not in LLMOCK_PATHS:
                sys.exit(f"run: pool {name!r} ({provider}): {offline[name]}, and llmock cannot "
                         f"stand in for {provider}: set its keys")
            url = f"http://127.0.0.1:{mock_port}{LLMOCK_PATHS[provider]}"
            pool["endpoints"] = [{"url": url, "keys": [{"env": OFFLINE_KEY_ENV}]}]
            lines.append(f"  pool {name} -> llmock {url} (offline: {offline[name]})")
        else:
            urls = ", ".join(e["url"] for e in pool.get("endpoints", []))
            lines.append(f"  pool {name} -> {urls} ({provider}, keys as configured)")

    config = conf_path
    if changed or offline:
        header = (f"# Generated by scripts/run.sh from {conf_path}: listeners "
                  f"{proxy} / {admin}; pools served by llmock: {', '.join(offline) or 'none'}.\n")
        Path(out).write_text(header + yaml.safe_dump(conf, sort_keys=False))
        config = out

    served = conf_path if config == conf_path else f"{conf_path} (generated copy: {config})"
    Path(f"{out}.banner").write_text(banner(conf, served, proxy, admin, lines))
    for var, value in (("proxy", proxy), ("admin", admin), ("config", config),
                       ("mock_port", str(mock_port or ""))):
        print(f"{var}={shlex.quote(value)}")
    return 0


def banner(conf: dict[str, Any], served: str, proxy: str, admin: str, lines: list[str]) -> str:
    """What an app needs, printed by run.sh once sluice is ready: the config served, each
    pool's upstream (`lines`), the base URLs, a virtual key, the metrics address."""
    tenants = (conf.get("tenants") or {}).get("list") or []
    digest = sha256_hex(VIRTUAL_KEY)
    tenant = next((t["name"] for t in tenants
                   if any(v.get("sha256") == digest for v in t.get("virtual_keys") or [])), None)
    if tenant:
        key, who = VIRTUAL_KEY, f"virtual key of tenant {tenant}, not a provider key"
    else:
        key, who = "<a virtual key of one of your tenants>", "no tenant of this config is "\
            f"keyed by {VIRTUAL_KEY}"
    return "\n".join([
        f"sluice is serving {served}",
        *lines,
        "",
        "Point an app at it:",
        f"export OPENAI_BASE_URL=http://{proxy}/v1",
        f"export ANTHROPIC_BASE_URL=http://{proxy}",
        f"export OPENAI_API_KEY={key}     # {who}",
        f"export ANTHROPIC_API_KEY={key}",
        "",
        f"Metrics: http://{admin}/metrics  (also /healthz, /readyz)",
        "Ctrl-C stops everything `make run` started.",
        "",
    ])


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "plan":
        return plan(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
