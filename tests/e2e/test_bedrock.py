"""AWS Bedrock Runtime through sluice with boto3's `bedrock-runtime` client, unmodified: only
`endpoint_url` points at sluice (README "AWS Bedrock").

The upstream (upstreams/bedrock.py) checks every request's SigV4 signature with botocore's own
signer against the pool's credentials, so a request that reached it signed by sluice proves
the client's signature was dropped and each attempt re-signed. The app signs with placeholder
credentials whose access key id is its virtual key (or sends the virtual key as a bearer
token, botocore's `AWS_BEARER_TOKEN_BEDROCK`).

botocore retries throttling and 5xx by default (its "legacy" mode: 4 retries); every client
here is built with `total_max_attempts: 1` so that each call is one request."""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from conftest import (
    SDK_TIMEOUT_S,
    UNKNOWN_KEY,
    VIRTUAL_KEY,
    Meter,
    SluiceFactory,
    default_tenants,
)
from harness import free_port, pool, route
from upstreams.bedrock import Upstream

pytestmark = pytest.mark.sluice

REGION = "us-west-2"
POOL_AKID = "AKIAE2EPOOLCREDENTIAL"
POOL_SECRET = "e2e/pool+secret/0123456789abcdefghijklmnop"
KEY_ENV = "SLUICE_E2E_BEDROCK_KEY"
API_KEY = "bedrock-api-key-e2e-4b7f"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "Name five things found near a river"}]}]
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=SDK_TIMEOUT_S, read_timeout=SDK_TIMEOUT_S)


def client(endpoint: str, akid: str, secret: str = "x") -> Any:
    return boto3.client("bedrock-runtime", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=akid, aws_secret_access_key=secret,
                        config=NO_RETRIES)


def bedrock_pool(name: str, url: str, **extra: Any) -> dict[str, Any]:
    p = pool(name, "bedrock", url, KEY_ENV)
    p["region"] = REGION
    p.update(extra)
    return p


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream(access_key=POOL_AKID, secret_key=POOL_SECRET, region=REGION)
    try:
        yield up
    finally:
        up.stop()


def start(factory: SluiceFactory, pools: list[dict[str, Any]], key: str,
          **sections: Any) -> Any:
    names = [p["name"] for p in pools]
    return factory.start(pools=pools, routes=[route("bedrock", "/model", names)],
                         env={KEY_ENV: key}, **sections)


def text_of(resp: dict[str, Any]) -> str:
    return "".join(b.get("text", "") for b in resp["output"]["message"]["content"])


def read_stream(resp: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    text, usage, names = "", {}, []
    for event in resp["stream"]:
        (name, body), = event.items()
        names.append(name)
        if name == "contentBlockDelta":
            text += body["delta"].get("text", "")
        if name == "metadata":
            usage = body["usage"]
    return text, usage, names


def test_converse_and_stream_equal_direct_and_are_counted(sluice_factory: SluiceFactory,
                                                          upstream: Upstream) -> None:
    sluice = start(sluice_factory, [bedrock_pool("bedrock", upstream.url)],
                   f"{POOL_AKID}:{POOL_SECRET}")
    direct = client(upstream.url, POOL_AKID, POOL_SECRET)
    via = client(f"http://{sluice.proxy}", VIRTUAL_KEY)

    want = direct.converse(modelId=MODEL, messages=MESSAGES)
    meter = Meter(sluice)
    got = via.converse(modelId=MODEL, messages=MESSAGES)
    assert text_of(got) == text_of(want) != ""
    assert got["usage"] == want["usage"]
    meter.assert_counted(model=MODEL, prompt=got["usage"]["inputTokens"],
                         completion=got["usage"]["outputTokens"], route="bedrock",
                         pool="bedrock")

    want_text, want_usage, want_names = read_stream(
        direct.converse_stream(modelId=MODEL, messages=MESSAGES))
    meter = Meter(sluice)
    got_text, got_usage, got_names = read_stream(
        via.converse_stream(modelId=MODEL, messages=MESSAGES))
    assert (got_text, got_names) == (want_text, want_names)
    assert got_names[-1] == "metadata"
    assert got_usage == want_usage and got_usage["outputTokens"] > 0
    meter.assert_counted(model=MODEL, prompt=got_usage["inputTokens"],
                         completion=got_usage["outputTokens"], route="bedrock", pool="bedrock")

    # Every request the upstream saw was signed by sluice with the pool's credentials (the
    # direct ones with the same): the client's signature, made with its virtual key, is gone.
    via_sluice = upstream.requests[1::2]
    assert len(upstream.requests) == 4
    assert all(r["auth_ok"] and r["akid"] == POOL_AKID for r in upstream.requests)
    assert all(VIRTUAL_KEY not in str(r["headers"]) for r in via_sluice)
    assert all(r["model"] == MODEL for r in via_sluice)


def test_invoke_model_passes_through(sluice_factory: SluiceFactory, upstream: Upstream) -> None:
    sluice = start(sluice_factory, [bedrock_pool("bedrock", upstream.url)],
                   f"{POOL_AKID}:{POOL_SECRET}")
    body = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":50,' \
           b'"messages":[{"role":"user","content":"Name five things found near a river"}]}'
    direct = client(upstream.url, POOL_AKID, POOL_SECRET).invoke_model(modelId=MODEL, body=body)
    meter = Meter(sluice)
    via = client(f"http://{sluice.proxy}", VIRTUAL_KEY).invoke_model(modelId=MODEL, body=body)
    assert via["body"].read() == direct["body"].read()
    assert upstream.requests[-1]["auth_ok"]
    usage = upstream.requests[-1]["usage"]
    meter.assert_counted(model=MODEL, prompt=usage["inputTokens"],
                         completion=usage["outputTokens"], route="bedrock", pool="bedrock")

    def chunks(resp: dict[str, Any]) -> list[bytes]:
        return [e["chunk"]["bytes"] for e in resp["body"]]

    direct_stream = client(upstream.url, POOL_AKID, POOL_SECRET)
    want = chunks(direct_stream.invoke_model_with_response_stream(modelId=MODEL, body=body))
    meter = Meter(sluice)
    got = chunks(client(f"http://{sluice.proxy}", VIRTUAL_KEY).invoke_model_with_response_stream(
        modelId=MODEL, body=body))
    assert got == want and len(got) == 6
    metrics = json.loads(got[-1])["amazon-bedrock-invocationMetrics"]
    meter.assert_counted(model=MODEL, prompt=metrics["inputTokenCount"],
                         completion=metrics["outputTokenCount"], route="bedrock",
                         pool="bedrock")


def test_bearer_virtual_key_and_pool_api_key(sluice_factory: SluiceFactory) -> None:
    """The pool holds a Bedrock API key, forwarded upstream as the bearer token. The app may
    send its virtual key as a bearer token too; botocore sends one (`AWS_BEARER_TOKEN_BEDROCK`)
    only over HTTPS (botocore.auth.BearerAuth refuses a plain-HTTP endpoint), so that form is
    sent here with httpx, as an app behind a TLS-terminating hop would reach sluice."""
    up = Upstream(api_key=API_KEY)
    try:
        sluice = start(sluice_factory, [bedrock_pool("bedrock", up.url)], API_KEY)
        got = client(f"http://{sluice.proxy}", VIRTUAL_KEY).converse(modelId=MODEL,
                                                                     messages=MESSAGES)
        assert text_of(got)
        sent = up.requests[-1]
        assert sent["auth_ok"] and sent["headers"]["authorization"] == f"Bearer {API_KEY}"
        assert "x-amz-date" not in sent["headers"]
        path = f"http://{sluice.proxy}/model/{MODEL.replace(':', '%3A')}/converse"
        resp = httpx.post(path, json={"messages": MESSAGES}, timeout=SDK_TIMEOUT_S,
                          headers={"authorization": f"Bearer {VIRTUAL_KEY}"})
        assert resp.status_code == 200 and resp.json()["output"] == got["output"]
        resp = httpx.post(path, json={"messages": MESSAGES}, timeout=SDK_TIMEOUT_S,
                          headers={"authorization": f"Bearer {UNKNOWN_KEY}"})
        assert resp.status_code == 401
        assert resp.headers["x-amzn-errortype"] == "UnrecognizedClientException"
        assert resp.json()["message"].startswith("sluice:")
        assert len(up.requests) == 2
    finally:
        up.stop()


def test_unknown_virtual_key_is_native(sluice_factory: SluiceFactory,
                                       upstream: Upstream) -> None:
    sluice = start(sluice_factory, [bedrock_pool("bedrock", upstream.url)],
                   f"{POOL_AKID}:{POOL_SECRET}")
    with pytest.raises(ClientError) as caught:
        client(f"http://{sluice.proxy}", UNKNOWN_KEY).converse(modelId=MODEL, messages=MESSAGES)
    err = caught.value.response
    assert err["Error"]["Code"] == "UnrecognizedClientException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert err["Error"]["Message"].startswith("sluice:")
    assert err["ResponseMetadata"]["RequestId"]
    assert upstream.requests == []


def test_dead_upstream_raises_promptly(sluice_factory: SluiceFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sluice = start(sluice_factory, [bedrock_pool("bedrock", dead)],
                   f"{POOL_AKID}:{POOL_SECRET}")
    via = client(f"http://{sluice.proxy}", VIRTUAL_KEY)
    for call in (via.converse, via.converse_stream):
        started = time.monotonic()
        with pytest.raises(ClientError) as caught:
            call(modelId=MODEL, messages=MESSAGES)
        elapsed = time.monotonic() - started
        print(f"dead upstream: {call.__name__} raised after {elapsed * 1000:.0f} ms")
        status = caught.value.response["ResponseMetadata"]["HTTPStatusCode"]
        assert status >= 500, caught.value.response
        assert caught.value.response["Error"]["Code"] in (
            "InternalServerException", "ServiceUnavailableException")
        assert elapsed < 5.0, f"took {elapsed:.2f} s"


def test_failover_on_503_before_content(sluice_factory: SluiceFactory,
                                        upstream: Upstream) -> None:
    primary = Upstream(access_key=POOL_AKID, secret_key=POOL_SECRET, region=REGION)
    try:
        primary.configure(fail_status=503, fail_count=1)
        p = bedrock_pool("bedrock", primary.url)
        p["endpoints"].append({"url": upstream.url, "keys": [{"env": KEY_ENV}]})
        sluice = start(sluice_factory, [p], f"{POOL_AKID}:{POOL_SECRET}")
        text, usage, _ = read_stream(
            client(f"http://{sluice.proxy}", VIRTUAL_KEY).converse_stream(modelId=MODEL,
                                                                 messages=MESSAGES))
        assert text and usage["outputTokens"] == 5
        tried = primary.requests + upstream.requests
        # Both attempts were signed anew and checked by botocore's signer.
        assert len(tried) == 2 and all(r["auth_ok"] for r in tried)
        assert tried[0]["headers"]["x-amz-date"] <= tried[1]["headers"]["x-amz-date"]
    finally:
        primary.stop()


@pytest.mark.parametrize("fault", ["cut_after", "bad_crc_after"])
def test_broken_stream_ends_with_native_exception(sluice_factory: SluiceFactory,
                                                  upstream: Upstream, fault: str) -> None:
    """A stream cut after two deltas, or with a corrupt message, reaches the client as the
    deltas before it and then an exception message botocore raises as EventStreamError."""
    upstream.configure(**{fault: 2})
    sluice = start(sluice_factory, [bedrock_pool("bedrock", upstream.url)],
                   f"{POOL_AKID}:{POOL_SECRET}")
    resp = client(f"http://{sluice.proxy}", VIRTUAL_KEY).converse_stream(modelId=MODEL,
                                                                messages=MESSAGES)
    names = []
    with pytest.raises(EventStreamError) as caught:
        for event in resp["stream"]:
            names.extend(event)
    assert names == ["messageStart", "contentBlockDelta", "contentBlockDelta"]
    assert caught.value.response["Error"]["Code"] == "internalServerException"
    assert caught.value.response["Error"]["Message"].startswith("sluice:")


def test_token_limit_and_budget_are_throttling(sluice_factory: SluiceFactory,
                                               upstream: Upstream) -> None:
    """tokens_per_minute, then a daily budget: each refusal is botocore's ClientError code
    ThrottlingException (429), and the refused call never reaches the upstream."""
    for limits, models in (
        ({"tokens_per_minute": 60}, []),
        ({"budget": {"usd_per_day": 0.00005}},
         [{"match": "anthropic.*", "price": {"input_per_1m": 1.0, "output_per_1m": 1.0}}]),
    ):
        sluice = start(sluice_factory, [bedrock_pool("bedrock", upstream.url)],
                       f"{POOL_AKID}:{POOL_SECRET}", tenants=default_tenants(limits),
                       limits={"default_max_output_tokens": 10}, models=models)
        via = client(f"http://{sluice.proxy}", VIRTUAL_KEY)
        served = 0
        seen = len(upstream.requests)
        for _ in range(20):
            try:
                resp = via.converse(modelId=MODEL, messages=MESSAGES)
            except ClientError as exc:
                err = exc.response
                break
            served += 1
            # Settled when sluice logs the request, just after the body: wait for it.
            sluice.access_entry(resp["ResponseMetadata"]["HTTPHeaders"]["x-sluice-request-id"])
        else:
            pytest.fail(f"no call refused under {limits}")
        assert served >= 1, f"the first call was refused under {limits}"
        assert err["Error"]["Code"] == "ThrottlingException", err
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert len(upstream.requests) - seen == served
