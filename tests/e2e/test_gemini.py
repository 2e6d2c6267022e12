"""Google Gemini through sluice with the official `google-genai` SDK, unmodified but for its
base URL (`http_options.base_url`): content equal to going direct (streamed and not), token
metrics equal to the `usage_metadata` the SDK saw, the pool's key injected as
`x-goog-api-key` (a client `?key=` stripped), countTokens and embeddings passed through,
sluice's own errors raised as the SDK's `ClientError` / `ServerError` (unknown virtual key,
dead upstream, a stream cut short, token limit and budget as 429 `RESOURCE_EXHAUSTED`), and
failover between two Gemini endpoints on a 503 before content.

The upstream is tests/e2e/upstreams/gemini.py (it checks the key)."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from google import genai
from google.genai import errors, types

from conftest import VIRTUAL_KEY, UNKNOWN_KEY, Sluice, SluiceFactory, default_tenants
from harness import free_port, pool, route

# As a package path: putting `upstreams/` itself on sys.path would let its modules shadow
# the SDKs they mock (`import ollama` finding `upstreams/ollama.py`).
from upstreams.gemini import GeminiUpstream

pytestmark = pytest.mark.sluice

GEMINI_KEY_ENV = "SLUICE_E2E_GEMINI_KEY"
GEMINI_UPSTREAM_KEY = "AIza-e2e-upstream-gemini-3b9c"
MODEL = "gemini-2.5-flash"
PROMPT = "Which header carries the Gemini API key?"
TIMEOUT_MS = 10_000
ROUTE = "gemini"


def client(base_url: str, key: str) -> genai.Client:
    """The SDK as an app builds it: only the base URL points at sluice. No retries (the
    default), a timeout so that a hang fails the test."""
    return genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=base_url, timeout=TIMEOUT_MS))


def gemini_pool(name: str, upstream_base: str) -> dict[str, Any]:
    return pool(name, "gemini", upstream_base, GEMINI_KEY_ENV)


def start(factory: SluiceFactory, pools: list[dict[str, Any]], route_pools: list[str],
          **sections: Any) -> Sluice:
    """sluice with one Gemini route (`/v1/models`, where google-genai sends its calls) over
    `route_pools`."""
    return factory.start(pools=pools, routes=[route(ROUTE, "/v1/models", route_pools)],
                         env={GEMINI_KEY_ENV: GEMINI_UPSTREAM_KEY}, **sections)


def via(sluice: Sluice, key: str = VIRTUAL_KEY) -> genai.Client:
    return client(f"http://{sluice.proxy}", key)


def stable(response: Any) -> Any:
    """A response as JSON, without the SDK's record of the HTTP response (headers differ)."""
    d = response.to_json_dict() if hasattr(response, "to_json_dict") else response
    d.pop("sdk_http_response", None)
    return d


def generate(c: genai.Client, stream: bool) -> tuple[Any, types.GenerateContentResponseUsageMetadata]:
    """One call; returns what the SDK gave (the chunks, streamed) and the usage it saw (the
    last chunk's, streamed)."""
    config = types.GenerateContentConfig(max_output_tokens=64)
    if stream:
        chunks = list(c.models.generate_content_stream(model=MODEL, contents=PROMPT,
                                                       config=config))
        return [stable(ch) for ch in chunks], chunks[-1].usage_metadata
    r = c.models.generate_content(model=MODEL, contents=PROMPT, config=config)
    return stable(r), r.usage_metadata


@pytest.fixture
def mock() -> Iterator[GeminiUpstream]:
    with GeminiUpstream(GEMINI_UPSTREAM_KEY) as u:
        yield u


@pytest.fixture
def gemini_sluice(sluice_factory: SluiceFactory, mock: GeminiUpstream) -> Sluice:
    return start(sluice_factory, [gemini_pool("gemini", mock.base)], ["gemini"])


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_content_equals_direct_and_tokens_equal_usage_metadata(
        gemini_sluice: Sluice, mock: GeminiUpstream, stream: bool) -> None:
    direct, _ = generate(client(mock.base, GEMINI_UPSTREAM_KEY), stream)
    mock.journal.clear()
    meter = gemini_sluice.meter()
    got, usage = generate(via(gemini_sluice), stream)

    assert got == direct, "the SDK did not get the upstream's answer unchanged"
    assert usage.thoughts_token_count and usage.cached_content_token_count, usage
    # Thinking tokens are output that candidates_token_count leaves out: sluice counts both.
    meter.assert_counted(model=MODEL, prompt=usage.prompt_token_count,
                         completion=usage.candidates_token_count + usage.thoughts_token_count,
                         route=ROUTE, pool="gemini")
    method = "streamGenerateContent" if stream else "generateContent"
    assert [(r["path"], r["key"]) for r in mock.journal] == [
        (f"/v1/models/{MODEL}:{method}", GEMINI_UPSTREAM_KEY)], mock.journal


def test_count_tokens_and_embeddings_pass_through(gemini_sluice: Sluice,
                                                  mock: GeminiUpstream) -> None:
    direct, through = client(mock.base, GEMINI_UPSTREAM_KEY), via(gemini_sluice)
    want = direct.models.count_tokens(model=MODEL, contents=PROMPT).total_tokens
    want_emb = stable(direct.models.embed_content(model="text-embedding-004",
                                                  contents=["a", "b"]))
    mock.journal.clear()
    assert through.models.count_tokens(model=MODEL, contents=PROMPT).total_tokens == want
    got_emb = stable(through.models.embed_content(model="text-embedding-004",
                                                  contents=["a", "b"]))
    assert got_emb == want_emb
    assert [(r["path"], r["key"]) for r in mock.journal] == [
        (f"/v1/models/{MODEL}:countTokens", GEMINI_UPSTREAM_KEY),
        ("/v1/models/text-embedding-004:batchEmbedContents", GEMINI_UPSTREAM_KEY)], mock.journal


def test_a_key_query_parameter_is_stripped(gemini_sluice: Sluice, mock: GeminiUpstream) -> None:
    """A REST client sending the virtual key as `?key=`: identified by it, and the upstream sees
    the pool's key in `x-goog-api-key`, never the client's key in the URL."""
    body = {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}
    r = httpx.post(f"http://{gemini_sluice.proxy}/v1beta/models/{MODEL}:streamGenerateContent",
                   params={"alt": "sse", "key": VIRTUAL_KEY}, json=body, timeout=10.0)
    # /v1beta is not routed in this config: a native 404, in Gemini's shape.
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND", r.text
    r = httpx.post(f"http://{gemini_sluice.proxy}/v1/models/{MODEL}:streamGenerateContent",
                   params={"alt": "sse", "key": VIRTUAL_KEY}, json=body, timeout=10.0)
    assert r.status_code == 200, r.text
    assert b"finishReason" in r.content
    (seen,) = mock.journal
    assert seen["query"] == {"alt": ["sse"]}, seen
    assert seen["key"] == GEMINI_UPSTREAM_KEY


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_unknown_virtual_key_is_the_sdks_client_error(gemini_sluice: Sluice,
                                                      mock: GeminiUpstream,
                                                      stream: bool) -> None:
    with pytest.raises(errors.ClientError) as caught:
        generate(via(gemini_sluice, UNKNOWN_KEY), stream)
    assert caught.value.code == 401 and caught.value.status == "UNAUTHENTICATED", caught.value
    assert mock.journal == [], "a request with an unknown key reached the upstream"


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_dead_upstream_is_the_sdks_server_error_promptly(sluice_factory: SluiceFactory,
                                                         stream: bool) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sluice = start(sluice_factory, [gemini_pool("gemini-down", dead)], ["gemini-down"])
    began = time.monotonic()
    with pytest.raises(errors.ServerError) as caught:
        generate(via(sluice), stream)
    took = time.monotonic() - began
    assert caught.value.code == 502, caught.value
    print(f"dead upstream ({'stream' if stream else 'generate'}): ServerError after {took:.3f} s")
    assert took < 5.0, f"the SDK waited {took:.1f} s for a dead upstream"


def cut_fixture() -> bytes:
    """tests/fixtures/gemini/sdk_stream_parts.sse with \r\n line ends (as the API sends)
    and without its `continuationToken`s (on a failed stream that carries one, google-genai
    re-sends the call to continue it: not what this test is about)."""
    raw = (Path(__file__).parent.parent / "fixtures" / "gemini" / "sdk_stream_parts.sse"
           ).read_bytes()
    events = []
    for event in raw.split(b"\n\n")[:-1]:
        chunk = json.loads(event[len(b"data: "):])
        for candidate in chunk["candidates"]:
            candidate.pop("continuationToken", None)
        events.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode())
    return b"".join(e + b"\r\n\r\n" for e in events)


FIXTURE = cut_fixture()


class CutHandler(BaseHTTPRequestHandler):
    """Serves the Gemini fixture stream cut after `x-cut-at` bytes (whole without it), then
    closes the connection (a clean end of a close-delimited body)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", "0")))
        cut = int(self.headers.get("x-cut-at", len(FIXTURE)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(FIXTURE[:cut])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *_: Any) -> None:
        pass


def events_before(cut: int) -> list[str]:
    """The text of each whole event in the fixture's first `cut` bytes: events ended by their
    blank line, and a last one whose data line is ended and whole JSON (sluice forwards it
    with its blank line added; a partial one is dropped)."""
    *whole, rest = FIXTURE[:cut].split(b"\r\n\r\n")
    if rest.endswith((b"\r", b"\n")):
        whole.append(rest)
    texts = []
    for event in whole:
        try:
            chunk = json.loads(event[len(b"data: "):])
        except ValueError:
            continue
        texts.append(chunk["candidates"][0]["content"]["parts"][0]["text"])
    return texts


@pytest.fixture(scope="module")
def cut_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), CutHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_cut_stream_raises_the_sdks_server_error(sluice_factory: SluiceFactory,
                                                   cut_upstream: str) -> None:
    """No terminal event in Gemini streams: a body that ends before its chunk with
    finishReason is cut, wherever it ends (inside a data line, inside a \r\n, between
    events). The SDK gets every whole chunk, then a native error chunk it raises on; the
    whole stream ends without error."""
    sluice = start(sluice_factory, [gemini_pool("gemini-cut", cut_upstream)], ["gemini-cut"])
    c = via(sluice)  # held: the SDK closes its HTTP client when the Client is collected
    first_end = FIXTURE.index(b"\r\n\r\n") + 4
    for cut in (20, first_end - 3, first_end - 1, first_end, first_end + 9, len(FIXTURE) - 5):
        got: list[str] = []
        with pytest.raises(errors.ServerError) as caught:
            for ch in c.models.generate_content_stream(
                    model=MODEL, contents=PROMPT,
                    config=types.GenerateContentConfig(
                        http_options=types.HttpOptions(headers={"x-cut-at": str(cut)}))):
                got.append(ch.text)
        assert got == events_before(cut), f"cut at {cut}: got {got}"
        assert caught.value.code == 502 and caught.value.status == "INTERNAL", caught.value
        assert "before its final event" in caught.value.message
    whole = [ch.text for ch in c.models.generate_content_stream(model=MODEL, contents=PROMPT)]
    assert whole == ["Part A ", "Part B ", "Part C!"]


def route_entry(sluice: Sluice, wait_s: float = 5.0) -> dict[str, str]:
    """The last access-log line of the Gemini route (written when the request ends, which
    may be just after the client saw the end of the body: polled, bounded)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = [e for e in sluice.access_log() if e.get("route") == ROUTE]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no access-log line for route {ROUTE}"
        time.sleep(0.05)


def assert_resource_exhausted(exc: errors.ClientError) -> None:
    assert exc.code == 429 and exc.status == "RESOURCE_EXHAUSTED", exc
    assert exc.response is not None and exc.response.status_code == 429


def test_token_limit_is_resource_exhausted(sluice_factory: SluiceFactory,
                                           mock: GeminiUpstream) -> None:
    """tokens_per_minute 60: the first call (about 35 tokens with its thoughts) passes; the
    next one, reserving its prompt and maxOutputTokens 64, does not fit what is left."""
    sluice = start(sluice_factory, [gemini_pool("gemini", mock.base)], ["gemini"],
                   tenants=default_tenants({"tokens_per_minute": 60}))
    c = via(sluice)
    _, usage = generate(c, False)
    assert usage.total_token_count < 60, usage
    route_entry(sluice)  # the first call is settled (and charged) when sluice logs it
    for stream in (False, True):
        with pytest.raises(errors.ClientError) as caught:
            generate(c, stream)
        assert_resource_exhausted(caught.value)
        assert "tokens" in caught.value.message
    assert len(mock.journal) == 1, "a refused call reached the upstream"


def test_budget_is_resource_exhausted(sluice_factory: SluiceFactory,
                                      mock: GeminiUpstream) -> None:
    """usd_per_day 0.0001, priced so that one call costs more: the next is refused."""
    sluice = start(sluice_factory, [gemini_pool("gemini", mock.base)], ["gemini"],
                   tenants=default_tenants({"budget": {"usd_per_day": 0.0001}}),
                   models=[{"match": "gemini-*",
                            "price": {"input_per_1m": 10.0, "output_per_1m": 10.0}}])
    c = via(sluice)
    generate(c, True)
    route_entry(sluice)  # charged when sluice logs it
    with pytest.raises(errors.ClientError) as caught:
        generate(c, False)
    assert_resource_exhausted(caught.value)
    assert caught.value.response.headers.get("x-should-retry") == "false"
    assert len(mock.journal) == 1, "a refused call reached the upstream"


@pytest.mark.parametrize("stream,in_stream", [(False, False), (True, False), (True, True)],
                         ids=["generate", "stream", "stream-error-event"])
def test_failover_between_two_gemini_endpoints_on_503(sluice_factory: SluiceFactory,
                                                      mock: GeminiUpstream,
                                                      stream: bool, in_stream: bool) -> None:
    """The primary answers 503 UNAVAILABLE (as a status, or as the first event of a 200
    stream: nothing reached the client yet); the client gets the fallback's answer whole."""
    with GeminiUpstream(GEMINI_UPSTREAM_KEY, fail_status=503,
                        fail_in_stream=in_stream) as primary:
        sluice = start(sluice_factory,
                       [gemini_pool("primary-gemini", primary.base),
                        gemini_pool("fallback-gemini", mock.base)],
                       ["primary-gemini", "fallback-gemini"])
        direct, _ = generate(client(mock.base, GEMINI_UPSTREAM_KEY), stream)
        mock.journal.clear()
        meter = sluice.meter()
        got, usage = generate(via(sluice), stream)
        assert got == direct
        assert len(primary.journal) == 1 and len(mock.journal) == 1
        assert primary.journal[0]["key"] == GEMINI_UPSTREAM_KEY
        entry = route_entry(sluice)
        assert entry["attempts"].startswith("primary-gemini/"), entry
        assert "fallback-gemini/" in entry["attempts"], entry
        meter.assert_counted(model=MODEL, prompt=usage.prompt_token_count,
                             completion=usage.candidates_token_count + usage.thoughts_token_count,
                             route=ROUTE, pool="fallback-gemini")
