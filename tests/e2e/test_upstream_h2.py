"""The upstream leg speaks HTTP/2 to a TLS upstream that offers it (ALPN `h2`), as OpenAI's
and Anthropic's APIs do: the official SDK through sluice gets the same answer, streamed and
not, the upstream sees HTTP/2 with the pool's key, and the tokens are counted exactly.

The upstream is hypercorn serving `upstreams/h2_chat.py` with a certificate from a throwaway
CA (trustme); sluice trusts that CA through `SSL_CERT_FILE`, which rustls-native-certs reads
(https://docs.rs/rustls-native-certs: "SSL_CERT_FILE" overrides the platform store)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trustme

from conftest import OPENAI_UPSTREAM_KEY, TOKENS, VIRTUAL_KEY, openai_client
from harness import OPENAI_KEY_ENV, Proc, free_port, pool, route, wait_listening

pytestmark = pytest.mark.sluice

UPSTREAMS = Path(__file__).parent / "upstreams"


@pytest.fixture
def h2_upstream(workdir: Path):
    """hypercorn on TLS (h2 and http/1.1 offered) with a fresh CA; yields (url, ca path,
    journal path)."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    ca_path, cert_path, key_path = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    journal = workdir / "h2-journal.jsonl"
    journal.write_text("")
    port = free_port()
    argv = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}",
            "--certfile", str(cert_path), "--keyfile", str(key_path),
            "--log-level", "warning", "h2_chat:app"]
    proc = Proc.start("hypercorn", argv, workdir / "hypercorn.log",
                      env={"H2_JOURNAL": str(journal), "PYTHONPATH": str(UPSTREAMS)})
    try:
        wait_listening(f"127.0.0.1:{port}", proc)
        yield f"https://localhost:{port}", ca_path, journal
    finally:
        proc.stop()


def test_openai_sdk_through_sluice_to_an_http2_upstream(sluice_factory, h2_upstream) -> None:
    url, ca_path, journal = h2_upstream
    s = sluice_factory.start(pools=[pool("h2", "openai", url, OPENAI_KEY_ENV)],
                             routes=[route("main", "/v1", ["h2"])],
                             env={"SSL_CERT_FILE": str(ca_path)})
    client = openai_client(s.openai_url, VIRTUAL_KEY)
    messages = [{"role": "user", "content": "say hello over h2"}]
    before = s.scrape()

    plain = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert plain.choices[0].message.content == "Hello over HTTP/2!"

    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello over HTTP/2!"

    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [r["http_version"] for r in records] == ["2", "2"], records
    assert all(r["authorization"] == f"Bearer {OPENAI_UPSTREAM_KEY}" for r in records)
    assert all(r["path"] == "/v1/chat/completions" for r in records), records

    after = s.scrape()
    exact = after.sum(TOKENS, kind="completion", source="exact") - before.sum(
        TOKENS, kind="completion", source="exact")
    assert exact == 8, "4 completion tokens per answer, counted exactly from both"
