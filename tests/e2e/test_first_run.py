"""`make run` on a machine without provider keys (README "Two commands").

Each test starts `make run` itself, as a user would, with the debug binary
(`SLUICE_BIN`, no release build) and `SLUICE_PROXY` / `SLUICE_ADMIN` set to port 0 (the
script picks free ports and prints them). The app side uses exactly what `make run`
printed: base URLs, virtual key, metrics address. Stopping `make` (SIGTERM to it, as a
process manager does, or SIGINT to its process group, as Ctrl-C does) must stop every process
it started and free every port. Nothing talks beyond 127.0.0.1: with keys set, the tests only
check which config sluice was given and that it is ready, never call a real provider.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from conftest import Meter, Sluice, anthropic_client, openai_client
from harness import REPO_ROOT, free_port, sluice_binary

pytestmark = pytest.mark.sluice

CONF = REPO_ROOT / "conf" / "sluice.yaml"
KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
# Set-up is quick when done (`make test` runs it first); allow a stale .venv's reinstall
# (under the suite's 120 s per-test timeout, pytest.ini).
READY_S = 90.0
STOP_S = 15.0


def descendants(root: int) -> set[int]:
    """Every live process below `root` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (an exited child not yet reaped is a zombie: gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def port_free(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


@dataclass
class MakeRun:
    """A running `make run`, its output read line by line on a thread (so a full pipe never
    blocks sluice's logging), and what its banner said."""

    popen: subprocess.Popen
    lines: "queue.Queue[str]" = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    printed: dict[str, str] = field(default_factory=dict)

    def read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)

    def wait_banner(self) -> None:
        """Read until the `Metrics:` line (the banner's last address) or fail with the output."""
        deadline = time.monotonic() + READY_S
        while "metrics" not in self.printed:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no banner after {READY_S:.0f}s:\n{self.text()}")
            self.output.append(line)
            if m := re.match(r"(?:export )?([A-Z_]+)=(\S+)", line):
                self.printed[m.group(1)] = m.group(2)
            elif m := re.match(r"Metrics: (http://\S+)/metrics", line):
                self.printed["metrics"] = m.group(1).removeprefix("http://")
            elif m := re.match(r"sluice is serving (\S+)(?: \(generated copy: (\S+)\))?", line):
                self.printed["config"] = m.group(2) or m.group(1)
            elif m := re.match(r"\s+pool (\S+) -> (.*)", line):
                self.printed[f"pool {m.group(1)}"] = m.group(2)

    def text(self) -> str:
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "".join(self.output)[-6000:]

    @property
    def proxy(self) -> str:
        return self.printed["OPENAI_BASE_URL"].removeprefix("http://").removesuffix("/v1")

    def llmock_addr(self) -> str | None:
        for key, value in self.printed.items():
            if key.startswith("pool ") and (m := re.match(r"llmock http://([\d.:]+)", value)):
                return m.group(1)
        return None


@pytest.fixture
def make_run() -> Iterator[Callable[..., MakeRun]]:
    """Start `make run` with the given variables (keys, overrides; the key variables and
    SLUICE_RUN_OFFLINE / SLUICE_CONF of the outer environment removed); whatever the
    test leaves running is killed at the end (its whole session)."""
    started: list[MakeRun] = []

    def start(**variables: str) -> MakeRun:
        env = {k: v for k, v in os.environ.items()
               if k not in (*KEY_VARS, "SLUICE_RUN_OFFLINE", "SLUICE_CONF", "MAKEFLAGS")}
        env.update(SLUICE_BIN=str(sluice_binary()), SLUICE_PROXY="127.0.0.1:0",
                   SLUICE_ADMIN="127.0.0.1:0")
        env.update(variables)
        popen = subprocess.Popen(
            ["make", "--no-print-directory", "run"], cwd=REPO_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", start_new_session=True)
        run = MakeRun(popen)
        started.append(run)
        threading.Thread(target=run.read, daemon=True).start()
        run.wait_banner()
        return run

    yield start
    for run in started:
        # The group outlives make when a test failed to stop it, or stopped it and found
        # orphans: kill whatever is left of it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.popen.pid, signal.SIGKILL)
        run.popen.wait(STOP_S)
        print(f"--- make run output ---\n{run.text()}")  # shown by pytest on failure only


def stop(run: MakeRun, how: str) -> None:
    """Stop `make run` like a process manager (SIGTERM to make) or like Ctrl-C (SIGINT to the
    foreground process group); assert every process it started is gone and its ports free."""
    started = descendants(run.popen.pid)
    names = {pid: cmdline(pid)[:120] for pid in started if alive(pid)}
    assert any(b"sluice" in n and b" run -c " in n for n in names.values()), names
    if how == "SIGTERM to make":
        run.popen.send_signal(signal.SIGTERM)
    else:
        os.killpg(run.popen.pid, signal.SIGINT)
    try:
        run.popen.wait(STOP_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"make run still running {STOP_S:.0f}s after {how}:\n{run.text()}")
    deadline = time.monotonic() + STOP_S
    while (left := [pid for pid in started if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"still running after {how}: {[names.get(p) for p in left]}"
    addrs = [run.proxy, run.printed["metrics"], run.llmock_addr()]
    busy = [a for a in addrs if a and not port_free(a)]
    assert not busy, f"ports still bound after {how}: {busy}"


@pytest.mark.parametrize("how", ["SIGTERM to make", "SIGINT to the process group"])
def test_without_keys_make_run_serves_both_sdks_offline(make_run, how: str) -> None:
    run = make_run()
    for pool in ("openai", "anthropic"):
        assert run.printed[f"pool {pool}"].startswith("llmock http://127.0.0.1:"), run.printed
    key = run.printed["OPENAI_API_KEY"]
    assert key == run.printed["ANTHROPIC_API_KEY"]
    assert run.printed["ANTHROPIC_BASE_URL"] == f"http://{run.proxy}"
    sluice = Sluice(run.proxy, run.printed["metrics"], proc=None)

    client = openai_client(run.printed["OPENAI_BASE_URL"], key)
    meter = Meter(sluice)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "first run, no stream"}])
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    meter.assert_counted(model="gpt-4o-mini", prompt=reply.usage.prompt_tokens,
                         completion=reply.usage.completion_tokens, route="openai", pool="openai")

    meter = Meter(sluice)
    text, usage = [], None
    for chunk in client.chat.completions.create(
            model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "first run, streamed"}]):
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert text and usage is not None and usage.completion_tokens > 0
    meter.assert_counted(model="gpt-4o-mini", prompt=usage.prompt_tokens,
                         completion=usage.completion_tokens, route="openai", pool="openai")

    claude = anthropic_client(run.printed["ANTHROPIC_BASE_URL"], key)
    meter = Meter(sluice)
    with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                                messages=[{"role": "user", "content": "first run"}]) as stream:
        assert "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.usage.output_tokens > 0
    meter.assert_counted(model="claude-sonnet-4-6", prompt=final.usage.input_tokens,
                         completion=final.usage.output_tokens, route="anthropic-messages",
                         pool="anthropic")

    stop(run, how)


def test_a_taken_port_is_refused_before_anything_starts() -> None:
    """sluice would wait for a taken proxy port with /readyz already 200: the script checks."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = "127.0.0.1:%d" % holder.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in (*KEY_VARS, "MAKEFLAGS")}
        env.update(SLUICE_BIN=str(sluice_binary()), SLUICE_PROXY=taken,
                   SLUICE_ADMIN="127.0.0.1:0")
        out = subprocess.run(["make", "--no-print-directory", "run"], cwd=REPO_ROOT, env=env,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=READY_S)
    assert out.returncode != 0
    assert f"cannot listen on {taken}" in out.stderr, out.stdout + out.stderr
    assert "sluice is serving" not in out.stdout


def test_real_config_without_keys_is_still_refused() -> None:
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    out = subprocess.run([str(sluice_binary()), "run", "-c", str(CONF)], env=env,
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    for var in KEY_VARS:
        assert f"environment variable {var} is not set" in out.stderr, out.stderr


def served_config(run: MakeRun) -> dict:
    path = Path(run.printed["config"])
    assert path.is_file(), run.printed
    return yaml.safe_load(path.read_text())


def test_with_both_keys_make_run_serves_conf_as_is(make_run) -> None:
    run = make_run(OPENAI_API_KEY="sk-first-run-test-openai",
                   ANTHROPIC_API_KEY="sk-ant-first-run-test")
    assert run.llmock_addr() is None, run.printed
    assert not any(b"llmock" in cmdline(pid) for pid in descendants(run.popen.pid))
    # The listeners are the test's free ports, so sluice runs a copy of conf/sluice.yaml
    # that differs in them only.
    conf = yaml.safe_load(CONF.read_text())
    served = served_config(run)
    assert served.pop("listeners") == {"proxy": run.proxy, "admin": run.printed["metrics"]}
    conf.pop("listeners")
    assert served == conf
    stop(run, "SIGTERM to make")


def test_with_both_keys_and_the_config_s_own_ports_sluice_runs_the_file_itself(
        make_run, tmp_path: Path) -> None:
    """No listener override (the variables empty) and every key set: sluice is handed the
    config file itself, no generated copy (a copy of conf/sluice.yaml on free ports stands in
    for it, as 8080 / 9090 may be taken on a test machine)."""
    conf = yaml.safe_load(CONF.read_text())
    conf["listeners"] = {"proxy": f"127.0.0.1:{free_port()}", "admin": f"127.0.0.1:{free_port()}"}
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    run = make_run(OPENAI_API_KEY="sk-first-run-test-openai",
                   ANTHROPIC_API_KEY="sk-ant-first-run-test", SLUICE_CONF=str(path),
                   SLUICE_PROXY="", SLUICE_ADMIN="")
    assert run.printed["config"] == str(path), run.output
    assert not any("generated copy" in line for line in run.output), run.output
    assert run.proxy == conf["listeners"]["proxy"]
    assert run.printed["metrics"] == conf["listeners"]["admin"]
    commands = [cmdline(pid) for pid in descendants(run.popen.pid)]
    assert any(c.endswith(f" run -c {path} ".encode()) for c in commands), commands
    assert not any(b"llmock" in c for c in commands), commands
    stop(run, "SIGTERM to make")


def test_with_one_key_that_provider_is_real_and_the_other_offline(make_run) -> None:
    run = make_run(OPENAI_API_KEY="sk-first-run-test-openai")
    assert run.printed["pool openai"].startswith("https://api.openai.com"), run.printed
    assert run.printed["pool anthropic"].startswith("llmock http://127.0.0.1:"), run.printed
    served = {p["name"]: p for p in served_config(run)["pools"]}
    real = {p["name"]: p for p in yaml.safe_load(CONF.read_text())["pools"]}
    assert served["openai"] == real["openai"]
    assert served["anthropic"] != real["anthropic"]

    # Only the offline provider is called: nothing leaves 127.0.0.1.
    claude = anthropic_client(run.printed["ANTHROPIC_BASE_URL"], run.printed["ANTHROPIC_API_KEY"])
    meter = Meter(Sluice(run.proxy, run.printed["metrics"], proc=None))
    reply = claude.messages.create(model="claude-sonnet-4-6", max_tokens=64,
                                   messages=[{"role": "user", "content": "one key"}])
    assert reply.content and reply.usage.output_tokens > 0
    meter.assert_counted(model="claude-sonnet-4-6", prompt=reply.usage.input_tokens,
                         completion=reply.usage.output_tokens, route="anthropic-messages",
                         pool="anthropic")
    stop(run, "SIGTERM to make")
