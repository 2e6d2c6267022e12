"""The official `ollama` Python package through sluice to an Ollama server that checks a bearer
key (upstreams/ollama.py): the same answers as direct, streamed (NDJSON) and not, the pool key
injected in place of the virtual key, `prompt_eval_count` / `eval_count` counted exactly,
other `/api/*` paths passed through, and sluice's own errors raised as `ollama.ResponseError`
with Ollama's `{"error":"..."}` shape (unknown virtual key 401, dead upstream, token limit 429,
a stream cut mid-answer).

Facts from the installed package (ollama 0.6.3, `ollama/_client.py`): `Client(host=,
headers=)` sends the given headers on every request (lower-cased, merged with its own
`content-type` / `accept: application/json`); `chat` / `generate` always send `stream`
explicitly; a non-2xx status raises `ResponseError(response.text, status_code)`, whose
`.error` is the body's `error` string when the body is JSON; a stream line whose JSON has an
`error` raises `ResponseError(error)` (status_code -1); a refused connection raises the
builtin `ConnectionError`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import httpx
import ollama
import pytest

from conftest import SDK_TIMEOUT_S, TENANT, UNKNOWN_KEY, VIRTUAL_KEY, Sluice, SluiceFactory, \
    default_tenants
from harness import free_port, pool, route
from upstreams.ollama import OllamaUpstream

pytestmark = pytest.mark.sluice

OLLAMA_KEY_ENV = "SLUICE_E2E_OLLAMA_KEY"
OLLAMA_UPSTREAM_KEY = "e2e-ollama-pool-key-3b9a"
MODEL = "llama3.2"
MESSAGES = [{"role": "user", "content": "Why does a sidecar count tokens from NDJSON?"}]
PROMPT = "Why is the sky blue?"


@pytest.fixture
def upstream() -> Iterator[OllamaUpstream]:
    mock = OllamaUpstream(OLLAMA_UPSTREAM_KEY)
    try:
        yield mock
    finally:
        mock.stop()


def start(factory: SluiceFactory, url: str, **sections: Any) -> Sluice:
    return factory.start(pools=[pool("ollama", "ollama", url, OLLAMA_KEY_ENV)],
                         routes=[route("ollama", "/api", ["ollama"])],
                         env={OLLAMA_KEY_ENV: OLLAMA_UPSTREAM_KEY}, **sections)


@pytest.fixture
def sluice(sluice_factory: SluiceFactory, upstream: OllamaUpstream) -> Sluice:
    return start(sluice_factory, upstream.url)


def via(sluice: Sluice, key: str = VIRTUAL_KEY) -> ollama.Client:
    return ollama.Client(host=f"http://{sluice.proxy}", timeout=SDK_TIMEOUT_S,
                         headers={"Authorization": f"Bearer {key}"})


def direct(upstream: OllamaUpstream) -> ollama.Client:
    return ollama.Client(host=upstream.url, timeout=SDK_TIMEOUT_S,
                         headers={"Authorization": f"Bearer {OLLAMA_UPSTREAM_KEY}"})


def call(client: ollama.Client, api: str, stream: bool) -> list[dict[str, Any]]:
    """The answer as the SDK returns it, as plain dicts (one per streamed part)."""
    if api == "chat":
        out = client.chat(model=MODEL, messages=MESSAGES, stream=stream)
    else:
        out = client.generate(model=MODEL, prompt=PROMPT, stream=stream)
    parts = list(out) if stream else [out]
    return [p.model_dump() for p in parts]


def last_access(sluice: Sluice, wait_s: float = 5.0) -> dict[str, str]:
    """The newest access-log line; sluice writes it just after the client saw the end of the
    body, so poll (bounded) until there is one."""
    deadline = time.monotonic() + wait_s
    while not (entries := sluice.access_log()):
        assert time.monotonic() < deadline, f"no access-log line after {wait_s}s"
        time.sleep(0.05)
    return entries[-1]


def text(parts: list[dict[str, Any]]) -> str:
    return "".join((p.get("message") or {}).get("content") or p.get("response") or ""
                   for p in parts)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
@pytest.mark.parametrize("api", ["chat", "generate"])
def test_answers_equal_direct_and_usage_is_counted_exactly(
        sluice: Sluice, upstream: OllamaUpstream, api: str, stream: bool) -> None:
    want = call(direct(upstream), api, stream)
    upstream.clear()
    meter = sluice.meter()
    got = call(via(sluice), api, stream)

    assert got == want
    assert text(got) and text(got) == text(want)
    final = got[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert len(got) == (len(text(got).split()) + 1 if stream else 1)
    [seen] = upstream.requests()
    assert seen["path"] == f"/api/{api}"
    assert seen["authorization"] == f"Bearer {OLLAMA_UPSTREAM_KEY}", "pool key not injected"
    assert seen["body"]["stream"] is stream
    meter.assert_counted(model=MODEL, prompt=final["prompt_eval_count"],
                         completion=final["eval_count"], route="ollama", pool="ollama")
    entry = last_access(sluice)
    assert entry["route"] == "ollama", entry
    assert int(entry["prompt_tokens"]) == final["prompt_eval_count"], entry
    assert int(entry["completion_tokens"]) == final["eval_count"], entry
    assert OLLAMA_UPSTREAM_KEY not in sluice.proc.log_tail(200_000)
    assert VIRTUAL_KEY not in sluice.proc.log_tail(200_000)


def test_stream_defaults_to_true_when_absent(sluice: Sluice, upstream: OllamaUpstream) -> None:
    """A body without `stream` streams (Ollama's default), and is counted as a stream."""
    body = {"model": MODEL, "prompt": PROMPT, "options": {"num_predict": 5}}
    meter = sluice.meter()
    resp = httpx.post(f"http://{sluice.proxy}/api/generate", json=body, timeout=SDK_TIMEOUT_S,
                      headers={"authorization": f"Bearer {VIRTUAL_KEY}"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert [line["done"] for line in lines] == [False] * 5 + [True]
    assert lines[-1]["done_reason"] == "length"
    assert "stream" not in upstream.requests()[-1]["body"]
    meter.assert_counted(model=MODEL, prompt=lines[-1]["prompt_eval_count"], completion=5,
                         route="ollama", pool="ollama")
    entry = last_access(sluice)
    assert entry["stream"] == "true", entry


def test_embed_counts_prompt_eval_count(sluice: Sluice, upstream: OllamaUpstream) -> None:
    inputs = ["the sky is blue", "grass is green"]
    want = direct(upstream).embed(model="all-minilm", input=inputs).model_dump()
    meter = sluice.meter()
    got = via(sluice).embed(model="all-minilm", input=inputs).model_dump()
    assert got == want
    assert len(got["embeddings"]) == 2
    meter.assert_counted(model="all-minilm", prompt=got["prompt_eval_count"], completion=0,
                         route="ollama", pool="ollama")


def test_other_paths_pass_through_with_the_pool_key(sluice: Sluice,
                                                    upstream: OllamaUpstream) -> None:
    d, v = direct(upstream), via(sluice)
    tags, show = d.list().model_dump(), d.show(MODEL).model_dump()
    upstream.clear()
    assert v.list().model_dump() == tags
    assert v.show(MODEL).model_dump() == show
    version = httpx.get(f"http://{sluice.proxy}/api/version", timeout=SDK_TIMEOUT_S,
                        headers={"authorization": f"Bearer {VIRTUAL_KEY}"})
    assert version.json() == {"version": "0.12.6"}
    seen = upstream.requests()
    assert [r["path"] for r in seen] == ["/api/tags", "/api/show", "/api/version"]
    assert {r["authorization"] for r in seen} == {f"Bearer {OLLAMA_UPSTREAM_KEY}"}


def test_upstream_error_body_reaches_the_sdk(sluice: Sluice, upstream: OllamaUpstream) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        via(sluice).chat(model="no-such-model", messages=MESSAGES, stream=False)
    assert raised.value.status_code == 404
    assert raised.value.error == "model 'no-such-model' not found"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_unknown_virtual_key_raises_response_error_401(sluice: Sluice, upstream: OllamaUpstream,
                                                       stream: bool) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        call(via(sluice, UNKNOWN_KEY), "chat", stream)
    assert raised.value.status_code == 401
    assert isinstance(raised.value.error, str) and raised.value.error.startswith("sluice: ")
    assert upstream.requests() == [], "a request with an unknown key reached the upstream"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_dead_upstream_raises_response_error_promptly(sluice_factory: SluiceFactory,
                                                      stream: bool) -> None:
    dead = start(sluice_factory, f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ollama.ResponseError) as raised:
        call(via(dead), "generate", stream)
    elapsed = time.monotonic() - started
    assert raised.value.status_code in (502, 503), raised.value
    assert isinstance(raised.value.error, str) and raised.value.error.startswith("sluice: ")
    assert elapsed < SDK_TIMEOUT_S / 2, f"took {elapsed:.1f}s"


@pytest.mark.parametrize("mode", ["eof", "reset"])
@pytest.mark.parametrize("cut", [0, 3])
def test_a_cut_stream_raises_response_error(sluice: Sluice, upstream: OllamaUpstream,
                                            cut: int, mode: str) -> None:
    """`cut` lines (none: the stream breaks before content), then the upstream ends the body
    (or resets) without the `done` line: the SDK gets those lines whole, then sluice's
    `{"error":"..."}` line, and raises (a partial line would be a JSONDecodeError instead)."""
    client = ollama.Client(host=f"http://{sluice.proxy}", timeout=SDK_TIMEOUT_S,
                           headers={"Authorization": f"Bearer {VIRTUAL_KEY}",
                                    "x-mock-cut-after": str(cut), "x-mock-cut-mode": mode})
    got = []
    with pytest.raises(ollama.ResponseError) as raised:
        for part in client.chat(model=MODEL, messages=MESSAGES, stream=True):
            got.append(part.message.content)
    assert len(got) == cut
    assert raised.value.error.startswith("sluice: "), raised.value.error
    entry = last_access(sluice)
    assert entry["route"] == "ollama" and entry["status"] == "200", entry


def test_token_limit_gives_the_native_429(sluice_factory: SluiceFactory,
                                          upstream: OllamaUpstream) -> None:
    """tokens_per_minute 20: the first call (about 30 tokens) passes and spends the minute;
    the next is refused with 429 in Ollama's shape before reaching the upstream."""
    sluice = start(sluice_factory, upstream.url,
                   tenants=default_tenants({"tokens_per_minute": 20}))
    first = call(via(sluice), "generate", False)[-1]
    assert first["prompt_eval_count"] + first["eval_count"] > 20
    upstream.clear()
    with pytest.raises(ollama.ResponseError) as raised:
        call(via(sluice), "generate", True)
    assert raised.value.status_code == 429
    assert isinstance(raised.value.error, str) and raised.value.error.startswith("sluice: ")
    assert upstream.requests() == []
    assert sluice.scrape().sum("sluice_limit_decisions_total", tenant=TENANT,
                               decision="rejected") >= 1


@pytest.mark.parametrize("fault", ["503", "cut before content"])
def test_failover_between_ollama_pools_before_content(sluice_factory: SluiceFactory,
                                                      upstream: OllamaUpstream,
                                                      fault: str) -> None:
    """The first pool answers 503, or streams a 200 header then ends before any line: sluice
    moves to the second pool before the client sees anything, and the SDK gets the second
    pool's whole answer, counted exactly."""
    bad = OllamaUpstream(OLLAMA_UPSTREAM_KEY, fail_status=503) if fault == "503" else \
        OllamaUpstream(OLLAMA_UPSTREAM_KEY, fail_cut_after=0)
    try:
        sluice = sluice_factory.start(
            pools=[pool("bad", "ollama", bad.url, OLLAMA_KEY_ENV),
                   pool("good", "ollama", upstream.url, OLLAMA_KEY_ENV)],
            routes=[route("ollama", "/api", ["bad", "good"])],
            env={OLLAMA_KEY_ENV: OLLAMA_UPSTREAM_KEY})
        want = call(direct(upstream), "chat", True)
        upstream.clear()
        meter = sluice.meter()
        got = call(via(sluice), "chat", True)
        assert got == want
        assert len(bad.requests()) == 1 and len(upstream.requests()) == 1
        meter.assert_counted(model=MODEL, prompt=got[-1]["prompt_eval_count"],
                             completion=got[-1]["eval_count"], route="ollama", pool="good")
    finally:
        bad.stop()
