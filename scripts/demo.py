#!/usr/bin/env python3
"""The sluice demo's Python half (scripts/demo.sh starts and stops the processes).

    demo.py ports N                          print N free loopback ports
    demo.py config FILE PROXY ADMIN MOCK      write a sluice config for the demo
    demo.py wait NAME URL LOG [PID]           poll URL until 200 (20 s), else print LOG and fail
                                              (at once if process PID exits first)
    demo.py run PROXY ADMIN                   drive both SDKs through sluice and compare
                                              the tokens sluice counted with the upstream's usage
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

import httpx  # noqa: E402
import yaml  # noqa: E402

from harness import (  # noqa: E402
    Metrics, free_port, pool, route, scrape, sha256_hex, wait_listening,
)

TENANT = "demo-app"
VIRTUAL_KEY = "sk-sluice-demo-app"
OPENAI_KEY_ENV = "SLUICE_DEMO_OPENAI_KEY"
ANTHROPIC_KEY_ENV = "SLUICE_DEMO_ANTHROPIC_KEY"


def write_config(path: str, proxy: str, admin: str, mock: str) -> None:
    config = {
        "listeners": {"proxy": proxy, "admin": admin},
        "server": {"threads": 1},
        "pools": [
            pool("openai", "openai", mock, OPENAI_KEY_ENV),
            pool("anthropic", "anthropic", f"{mock}/anthropic", ANTHROPIC_KEY_ENV),
        ],
        "routes": [
            route("anthropic-messages", "/v1/messages", ["anthropic"]),
            route("openai", "/v1", ["openai"]),
        ],
        "tenants": {
            "reject_unknown_keys": True,
            "list": [{"name": TENANT, "virtual_keys": [{"sha256": sha256_hex(VIRTUAL_KEY)}]}],
        },
    }
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))


def alive(pid: int) -> bool:
    """Whether process `pid` is running (an exited child not yet reaped is a zombie: gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_ready(name: str, url: str, log: str, pid: int | None = None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            sys.exit(f"{name} exited before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    tail = Path(log).read_text(errors="replace")[-3000:] if Path(log).exists() else ""
    sys.exit(f"{name} not ready at {url} after 20 s\n--- {log} ---\n{tail}")


def counted(before: Metrics, after: Metrics, model: str) -> tuple[float, float, str]:
    def delta(kind: str, source: str) -> float:
        labels = {"tenant": TENANT, "model": model, "kind": kind, "source": source}
        name = "sluice_tokens_total"
        return after.sum(name, **labels) - before.sum(name, **labels)

    exact = (delta("prompt", "exact"), delta("completion", "exact"))
    estimated = (delta("prompt", "estimated"), delta("completion", "estimated"))
    if any(estimated):
        return estimated[0] + exact[0], estimated[1] + exact[1], "estimated"
    return exact[0], exact[1], "exact"


def settle(admin: str, before: Metrics, model: str, want: tuple[int, int]) -> Metrics:
    """Counters land when sluice logs the request, just after the stream ends."""
    deadline = time.monotonic() + 3
    while True:
        after = scrape(admin)
        prompt, completion, _ = counted(before, after, model)
        if (prompt >= want[0] and completion >= want[1]) or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


def run(proxy: str, admin: str) -> int:
    # The SDKs are imported here only: `ports` and `wait` (also used by scripts/run.sh) stay
    # quick to start.
    import anthropic
    import openai

    wait_listening(proxy)  # /readyz may answer just before the proxy port is bound
    rows = []

    model = "gpt-4o-mini"
    client = openai.OpenAI(base_url=f"http://{proxy}/v1", api_key=VIRTUAL_KEY, max_retries=0,
                           timeout=10)
    before = scrape(admin)
    print(f"openai SDK -> sluice -> llmock  ({model}, chat stream with include_usage)\n  ", end="")
    usage = None
    for chunk in client.chat.completions.create(
            model=model, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Why does a sidecar count tokens exactly?"}]):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            usage = chunk.usage
    print()
    want = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    after = settle(admin, before, model, want)
    rows.append(("openai chat stream", model, want, counted(before, after, model)))

    model = "claude-sonnet-4-6"
    claude = anthropic.Anthropic(base_url=f"http://{proxy}", api_key=VIRTUAL_KEY, max_retries=0,
                                 timeout=10)
    before = scrape(admin)
    print(f"anthropic SDK -> sluice -> llmock  ({model}, messages stream)\n  ", end="")
    prompt = "Describe a reverse proxy for model traffic"
    with claude.messages.stream(model=model, max_tokens=256,
                                messages=[{"role": "user", "content": prompt}]) as stream:
        for text in stream.text_stream:
            print(text, end="", flush=True)
        final = stream.get_final_message()
    print()
    want = (final.usage.input_tokens, final.usage.output_tokens)
    after = settle(admin, before, model, want)
    rows.append(("anthropic messages stream", model, want, counted(before, after, model)))

    print(f"\n{'call':<27}{'model':<20}{'upstream usage':>18}{'sluice counted':>18}  source")
    ok = True
    for call, model, (up_p, up_c), (got_p, got_c, source) in rows:
        match = (up_p, up_c) == (got_p, got_c)
        ok &= match
        print(f"{call:<27}{model:<20}{f'{up_p} in / {up_c} out':>18}"
              f"{f'{got_p:g} in / {got_c:g} out':>18}  {source}{'' if match else '  <- MISMATCH'}")
    print(f"\n(sluice_tokens_total{{tenant=\"{TENANT}\"}} deltas from http://{admin}/metrics)")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "ports":
        print(" ".join(str(free_port()) for _ in range(int(argv[1]))))
        return 0
    if len(argv) == 5 and argv[0] == "config":
        write_config(*argv[1:])
        return 0
    if len(argv) in (4, 5) and argv[0] == "wait":
        wait_ready(argv[1], argv[2], argv[3], int(argv[4]) if len(argv) == 5 else None)
        return 0
    if len(argv) == 3 and argv[0] == "run":
        return run(*argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
