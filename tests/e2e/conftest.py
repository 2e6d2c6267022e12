"""Fixtures: llmock upstreams, a sluice in front of them, SDK clients, and metric checks.

Session layout (every port free-picked on 127.0.0.1):

    llmock "upstream"        the normal upstream: OpenAI under /v1, Anthropic under /anthropic
    llmock "keycheck" --rpm 1  one request per minute per exact credential: a spent bucket
                             answers 429, which tells which key sluice sent (llmock does not
                             record request headers; see LLMOCK_NOTES.md)
    sluice                   routes, first match wins:
        header x-e2e-pool: down     -> pools whose port has nothing listening
        header x-e2e-pool: keycheck -> the keycheck llmock
        /v1/messages                -> anthropic (llmock /anthropic)
        /v1                         -> openai    (llmock)
      tenant team-a with one virtual key (by sha256), reject_unknown_keys, no default.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import openai
import pytest

from harness import (
    ANTHROPIC_KEY_ENV,
    OPENAI_KEY_ENV,
    Metrics,
    Proc,
    diff,
    free_port,
    parse_access_log,
    pool,
    post_scenario,
    route,
    scrape,
    sha256_hex,
    sluice_config_from,
    start_llmock,
    start_sluice,
)

TENANT = "team-a"
VIRTUAL_KEY = "sk-sluice-e2e-team-a-0123456789"
UNKNOWN_KEY = "sk-sluice-e2e-not-a-tenant-9876543210"
OPENAI_UPSTREAM_KEY = "sk-e2e-upstream-openai-5f1c"
ANTHROPIC_UPSTREAM_KEY = "sk-ant-e2e-upstream-anthropic-7d2e"
ROUTE_HEADER = "x-e2e-pool"

# SDK settings for every client: no retries (an error must surface as is) and a timeout
# that turns a hang into a failure instead of a stalled CI run.
SDK_TIMEOUT_S = 10.0

TOKENS = "sluice_tokens_total"
REQUESTS = "sluice_requests_total"


@dataclass
class Upstream:
    """One llmock instance and its control API."""

    base: str
    proc: Proc

    @property
    def openai_url(self) -> str:
        return f"{self.base}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"{self.base}/anthropic"

    def requests(self) -> list[dict[str, Any]]:
        """The journal: every provider request served, oldest first (waits up to 2 s for
        requests still in flight)."""
        resp = httpx.get(f"{self.base}/_llmock/requests", timeout=10.0)
        resp.raise_for_status()
        return resp.json()["requests"]

    def clear_requests(self) -> None:
        httpx.delete(f"{self.base}/_llmock/requests", timeout=10.0).raise_for_status()

    def reset(self) -> None:
        """Forget requests, queued scenarios and spent rate-limit buckets."""
        httpx.post(f"{self.base}/_llmock/reset", timeout=10.0).raise_for_status()

    def scenario(self, *behaviors: dict[str, Any]) -> None:
        """Queue llmock behaviours (fail, delay, stream_fault, ...; LLMOCK_NOTES.md)."""
        post_scenario(self.base, *behaviors)

    def wait_for_requests(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The journal once it holds at least `count` requests (an abandoned delayed request
        is journaled only when llmock finishes it), or as it is at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.requests()
            if len(records) >= count or time.monotonic() > deadline:
                return records
            time.sleep(0.05)

    def only_request(self) -> dict[str, Any]:
        """The one request the journal holds (fails when there are none or several)."""
        records = self.requests()
        assert len(records) == 1, (
            f"expected exactly one upstream request, llmock saw {len(records)}: "
            f"{[(r['method'], r['path'], r['status']) for r in records]}")
        return records[0]


@dataclass
class Sluice:
    proxy: str
    admin: str
    proc: Proc

    @property
    def openai_url(self) -> str:
        return f"http://{self.proxy}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://{self.proxy}"

    def scrape(self) -> Metrics:
        return scrape(self.admin)

    def meter(self) -> "Meter":
        return Meter(self)

    def access_log(self) -> list[dict[str, str]]:
        """Every access-log line sluice wrote so far, parsed (oldest first)."""
        return parse_access_log(self.proc.log_path.read_text(errors="replace"))

    def access_entry(self, request_id: str, wait_s: float = 5.0) -> dict[str, str]:
        """The access-log line of `request_id` (the `x-sluice-request-id` response header).
        sluice writes it when the request ends, which may be just after the client saw the
        end of the body: poll (bounded)."""
        deadline = time.monotonic() + wait_s
        while True:
            found = [e for e in self.access_log() if e.get("request_id") == request_id]
            if found:
                return found[-1]
            assert time.monotonic() < deadline, (
                f"no access-log line with request_id={request_id} after {wait_s}s")
            time.sleep(0.05)


class Meter:
    """Snapshot of sluice's metrics before a call, checked against what the upstream
    reported after it."""

    def __init__(self, sluice: Sluice) -> None:
        self.sluice = sluice
        self.before = sluice.scrape()

    def _delta(self, after: Metrics, name: str, **labels: str) -> float:
        return after.sum(name, **labels) - self.before.sum(name, **labels)

    def assert_counted(self, *, model: str, prompt: int, completion: int, route: str,
                       pool: str, wait_s: float = 5.0) -> None:
        """sluice_tokens_total{tenant=team-a,source=exact} grew by exactly `prompt` and
        `completion`, all under `model`, nothing was counted as estimated, and
        sluice_requests_total{route,pool,model,status_class=2xx} grew by one.

        Counters may be updated when sluice logs the request, just after the client saw
        the end of the body: poll until they reach the expected values (bounded), then
        compare exactly."""
        exact = {"tenant": TENANT, "source": "exact"}
        deadline = time.monotonic() + wait_s
        while True:
            after = self.sluice.scrape()
            got_prompt = self._delta(after, TOKENS, kind="prompt", **exact)
            got_completion = self._delta(after, TOKENS, kind="completion", **exact)
            got_requests = self._delta(after, REQUESTS, route=route, pool=pool, status_class="2xx")
            reached = got_prompt >= prompt and got_completion >= completion and got_requests >= 1
            if reached or time.monotonic() > deadline:
                break
            time.sleep(0.05)

        context = (f"\nupstream usage: prompt={prompt} completion={completion}"
                   f"\n{TOKENS} changes: {diff(self.before, after, TOKENS)}"
                   f"\n{REQUESTS} changes: {diff(self.before, after, REQUESTS)}")
        assert got_prompt == prompt, f"prompt tokens counted {got_prompt}, want {prompt}{context}"
        assert got_completion == completion, (
            f"completion tokens counted {got_completion}, want {completion}{context}")
        estimated = self._delta(after, TOKENS, tenant=TENANT, source="estimated")
        assert estimated == 0, f"{estimated} tokens counted as estimated{context}"
        for kind, want in (("prompt", prompt), ("completion", completion)):
            under_model = self._delta(after, TOKENS, model=model, kind=kind, **exact)
            assert under_model == want, (
                f"{kind} tokens under model={model!r}: {under_model}, want {want}{context}")
        got_requests = self._delta(after, REQUESTS, route=route, pool=pool, model=model,
                                   status_class="2xx")
        assert got_requests == 1, (
            f"{REQUESTS}{{route={route!r},pool={pool!r},model={model!r},status_class='2xx'}} "
            f"grew by {got_requests}, want 1{context}")


# -- processes ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sluice-e2e")


@contextlib.contextmanager
def llmock_upstream(workdir: Path, name: str,
                    extra_args: tuple[str, ...] | list[str] = ()) -> Iterator[Upstream]:
    """An llmock named `name` (its log in `workdir`) for the duration of the `with` block."""
    proc, base = start_llmock(workdir, name, extra_args)
    try:
        yield Upstream(base, proc)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def upstream(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock") as u:
        yield u


@pytest.fixture(scope="session")
def keycheck_upstream(workdir: Path) -> Iterator[Upstream]:
    with llmock_upstream(workdir, "llmock-keycheck", ["--rpm", "1"]) as u:
        yield u


def sluice_config(proxy: str, admin: str, upstream: Upstream, keycheck: Upstream,
                  dead_port: int) -> dict[str, Any]:
    dead = f"http://127.0.0.1:{dead_port}"
    return {
        "listeners": {"proxy": proxy, "admin": admin},
        "server": {"threads": 1, "log_format": "text"},
        "pools": [
            pool("openai", "openai", upstream.base, OPENAI_KEY_ENV),
            pool("anthropic", "anthropic", upstream.anthropic_url, ANTHROPIC_KEY_ENV),
            pool("openai-keycheck", "openai", keycheck.base, OPENAI_KEY_ENV),
            pool("anthropic-keycheck", "anthropic", keycheck.anthropic_url, ANTHROPIC_KEY_ENV),
            pool("openai-down", "openai", dead, OPENAI_KEY_ENV),
            pool("anthropic-down", "anthropic", f"{dead}/anthropic", ANTHROPIC_KEY_ENV),
        ],
        "routes": [
            route("anthropic-down", "/v1/messages", ["anthropic-down"], (ROUTE_HEADER, "down")),
            route("openai-down", "/v1", ["openai-down"], (ROUTE_HEADER, "down")),
            route("anthropic-keycheck", "/v1/messages", ["anthropic-keycheck"],
                  (ROUTE_HEADER, "keycheck")),
            route("openai-keycheck", "/v1", ["openai-keycheck"], (ROUTE_HEADER, "keycheck")),
            route("anthropic-messages", "/v1/messages", ["anthropic"]),
            route("openai", "/v1", ["openai"]),
        ],
        "tenants": {
            "reject_unknown_keys": True,
            "list": [{"name": TENANT, "virtual_keys": [{"sha256": sha256_hex(VIRTUAL_KEY)}]}],
        },
    }


@pytest.fixture(scope="session")
def sluice(workdir: Path, upstream: Upstream, keycheck_upstream: Upstream) -> Iterator[Sluice]:
    proxy = f"127.0.0.1:{free_port()}"
    admin = f"127.0.0.1:{free_port()}"
    config = sluice_config(proxy, admin, upstream, keycheck_upstream, dead_port=free_port())
    env = {OPENAI_KEY_ENV: OPENAI_UPSTREAM_KEY, ANTHROPIC_KEY_ENV: ANTHROPIC_UPSTREAM_KEY,
           "RUST_LOG": "info"}
    try:
        proc = start_sluice(workdir, config, env)
    except Exception as exc:  # noqa: BLE001 - reported as one readable failure
        pytest.fail(str(exc), pytrace=False)
    try:
        yield Sluice(proxy, admin, proc)
    finally:
        proc.stop()
        print(f"\nsluice log: {proc.log_path}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Attach the tail of sluice's log to a failing test's report."""
    report = yield
    sluice_fixture = getattr(item, "funcargs", {}).get("sluice")
    if report.when == "call" and report.failed and isinstance(sluice_fixture, Sluice):
        report.sections.append(("sluice log (tail)", sluice_fixture.proc.log_tail(4000)))
    factory = getattr(item, "funcargs", {}).get("sluice_factory")
    if report.when == "call" and report.failed and isinstance(factory, SluiceFactory):
        for started in factory.started:
            report.sections.append((f"{started.proc.name} log (tail)",
                                    started.proc.log_tail(4000)))
    return report


class SluiceFactory:
    """Starts sluice instances of a test's own config (fresh limiter counters, breakers and
    key cooldowns per test); every one is stopped when the test ends."""

    def __init__(self, workdir: Path, test_name: str) -> None:
        self.workdir = workdir
        self.test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        self.started: list[Sluice] = []

    def start(self, *, pools: list[dict[str, Any]], routes: list[dict[str, Any]],
              tenants: dict[str, Any] | None = None, env: dict[str, str] | None = None,
              **sections: Any) -> Sluice:
        """Run sluice with these pools and routes (upstream keys from the usual env vars,
        plus `env`), `tenants` (default: team-a with VIRTUAL_KEY, unknown keys rejected) and
        any other top-level section (`models=`, `limits=`)."""
        proxy = f"127.0.0.1:{free_port()}"
        admin = f"127.0.0.1:{free_port()}"
        if tenants is None:
            tenants = default_tenants()
        config = sluice_config_from(proxy, admin, pools=pools, routes=routes, tenants=tenants,
                                    **sections)
        name = f"sluice-{self.test_name}-{len(self.started)}"
        proc_env = {OPENAI_KEY_ENV: OPENAI_UPSTREAM_KEY,
                    ANTHROPIC_KEY_ENV: ANTHROPIC_UPSTREAM_KEY, "RUST_LOG": "info", **(env or {})}
        try:
            proc = start_sluice(self.workdir, config, proc_env, name=name)
        except Exception as exc:  # noqa: BLE001 - reported as one readable failure
            pytest.fail(str(exc), pytrace=False)
        instance = Sluice(proxy, admin, proc)
        self.started.append(instance)
        return instance

    def stop_all(self) -> None:
        for instance in self.started:
            instance.proc.stop()


def default_tenants(limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """The suite's tenant team-a (VIRTUAL_KEY), with `limits` if given."""
    tenant: dict[str, Any] = {"name": TENANT, "virtual_keys": [{"sha256": sha256_hex(VIRTUAL_KEY)}]}
    if limits is not None:
        tenant["limits"] = limits
    return {"reject_unknown_keys": True, "list": [tenant]}


@pytest.fixture
def sluice_factory(workdir: Path, request: pytest.FixtureRequest) -> Iterator[SluiceFactory]:
    factory = SluiceFactory(workdir, request.node.name)
    try:
        yield factory
    finally:
        factory.stop_all()


# -- SDK clients ----------------------------------------------------------------------

def openai_client(base_url: str, api_key: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                         timeout=SDK_TIMEOUT_S, **kwargs)


def anthropic_client(base_url: str, api_key: str, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0,
                               timeout=SDK_TIMEOUT_S, **kwargs)


@pytest.fixture
def openai_direct(upstream: Upstream) -> openai.OpenAI:
    return openai_client(upstream.openai_url, OPENAI_UPSTREAM_KEY)


@pytest.fixture
def openai_via(sluice: Sluice) -> openai.OpenAI:
    return openai_client(sluice.openai_url, VIRTUAL_KEY)


@pytest.fixture
def anthropic_direct(upstream: Upstream) -> anthropic.Anthropic:
    return anthropic_client(upstream.anthropic_url, ANTHROPIC_UPSTREAM_KEY)


@pytest.fixture
def anthropic_via(sluice: Sluice) -> anthropic.Anthropic:
    return anthropic_client(sluice.anthropic_url, VIRTUAL_KEY)


# -- comparing responses ----------------------------------------------------------------

# Fields that differ between two identical calls (random ids, clocks).
VOLATILE = frozenset({"id", "item_id", "created", "created_at"})


def stable(value: Any) -> Any:
    """`value` (an SDK object, dict or list) with ids and timestamps replaced by '*'."""
    if hasattr(value, "to_dict"):
        value = value.to_dict(warnings=False)
    if isinstance(value, dict):
        return {k: "*" if k in VOLATILE else stable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value
