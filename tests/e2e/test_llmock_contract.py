"""What the sluice tests assume of llmock, checked against llmock alone.

If llmock changes under a new pin, these fail first and say which assumption broke,
instead of a sluice test failing for a reason that is not sluice's.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import OPENAI_UPSTREAM_KEY, Upstream, anthropic_client, openai_client, stable

pytestmark = pytest.mark.upstream_contract

PROMPT = [{"role": "user", "content": "Deterministic contract prompt for llmock"}]


def test_same_request_same_answer_and_usage(upstream: Upstream) -> None:
    client = openai_client(upstream.openai_url, OPENAI_UPSTREAM_KEY)
    first = client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    second = client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    assert stable(first) == stable(second)
    assert first.id != second.id  # ids vary: the suite compares with `stable()`
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0


def test_stream_has_usage_only_when_asked(upstream: Upstream) -> None:
    client = openai_client(upstream.openai_url, OPENAI_UPSTREAM_KEY)
    plain = [c.to_dict() for c in client.chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, stream=True)]
    assert all("usage" not in c for c in plain)
    assert all(c["choices"] for c in plain)

    asked = [c.to_dict() for c in client.chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, stream=True, stream_options={"include_usage": True})]
    assert all(c["usage"] is None for c in asked[:-1])  # "usage": null on every other chunk
    assert asked[-1]["choices"] == [] and asked[-1]["usage"]["completion_tokens"] > 0


def test_anthropic_stream_output_tokens_are_cumulative(upstream: Upstream) -> None:
    client = anthropic_client(upstream.anthropic_url, "k")
    events = list(client.messages.create(model="claude-sonnet-4-6", max_tokens=100,
                                         messages=PROMPT, stream=True))
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    final = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=PROMPT)
    # message_start says output_tokens=1; message_delta carries the final total.
    assert start.message.usage.output_tokens == 1
    assert delta.usage.output_tokens == final.usage.output_tokens
    assert start.message.usage.input_tokens == final.usage.input_tokens


def test_journal_records_path_body_and_retry_count_but_no_headers(upstream: Upstream) -> None:
    upstream.clear_requests()
    client = openai_client(upstream.openai_url, OPENAI_UPSTREAM_KEY)
    client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT)
    record = upstream.only_request()
    assert record["path"] == "/v1/chat/completions"
    assert record["body"] == {"model": "gpt-4o-mini", "messages": PROMPT}
    assert record["sdk_retry_count"] == 0  # from the x-stainless-retry-count header
    assert "headers" not in record


def test_rate_limit_buckets_are_per_exact_credential(keycheck_upstream: Upstream) -> None:
    """The keycheck upstream (--rpm 1) refuses a credential's second request within a
    minute, and only that credential's: this is how the suite sees which key sluice sent."""
    keycheck_upstream.reset()
    url = f"{keycheck_upstream.openai_url}/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": PROMPT}

    def post(headers: dict[str, str]) -> int:
        return httpx.post(url, json=body, headers=headers, timeout=10.0).status_code

    assert post({"authorization": "Bearer key-a"}) == 200
    assert post({"authorization": "Bearer key-a"}) == 429
    assert post({"authorization": "Bearer key-b"}) == 200
    assert post({"x-api-key": "key-a"}) == 200  # another credential string, another bucket
    keycheck_upstream.reset()
    assert post({"authorization": "Bearer key-a"}) == 200


def test_errors_are_provider_shaped(upstream: Upstream) -> None:
    client = openai_client(upstream.openai_url, OPENAI_UPSTREAM_KEY)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT,
                                       extra_headers={"x-llmock-force-status": "401"})
