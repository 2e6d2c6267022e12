"""The official `anthropic` SDK through sluice (base_url without /v1; the pool's base path
/anthropic is prepended upstream)."""

from __future__ import annotations

import anthropic
import pytest

from conftest import Sluice, Upstream, stable

pytestmark = pytest.mark.sluice

MODEL = "claude-sonnet-4-6"
MESSAGES = [{"role": "user", "content": "Describe a reverse proxy for model traffic"}]


def test_messages_non_stream(sluice: Sluice, upstream: Upstream,
                             anthropic_direct: anthropic.Anthropic,
                             anthropic_via: anthropic.Anthropic) -> None:
    upstream.clear_requests()
    direct = anthropic_direct.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)
    direct_seen = upstream.only_request()

    upstream.clear_requests()
    meter = sluice.meter()
    via = anthropic_via.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)
    seen = upstream.only_request()

    assert stable(via) == stable(direct)
    assert seen["path"] == "/anthropic/v1/messages"
    assert seen["body"] == direct_seen["body"], "sluice changed a non-streamed request body"
    assert seen["sdk_retry_count"] == 0, "x-stainless-retry-count did not reach the upstream"
    meter.assert_counted(model=MODEL, prompt=via.usage.input_tokens,
                         completion=via.usage.output_tokens,
                         route="anthropic-messages", pool="anthropic")


def test_messages_stream(sluice: Sluice, upstream: Upstream,
                         anthropic_direct: anthropic.Anthropic,
                         anthropic_via: anthropic.Anthropic) -> None:
    """message_start says output_tokens=1, message_delta the cumulative total: sluice must
    count the total once, not add the two."""

    def run(client: anthropic.Anthropic) -> tuple[list, anthropic.types.Message]:
        with client.messages.stream(model=MODEL, max_tokens=256, messages=MESSAGES) as stream:
            events = [stable(e) for e in stream]
            return events, stream.get_final_message()

    direct_events, direct_final = run(anthropic_direct)
    upstream.clear_requests()
    meter = sluice.meter()
    events, final = run(anthropic_via)
    seen = upstream.only_request()

    assert events == direct_events
    assert stable(final) == stable(direct_final)
    assert seen["path"] == "/anthropic/v1/messages"
    assert seen["stream"] is True
    meter.assert_counted(model=MODEL, prompt=final.usage.input_tokens,
                         completion=final.usage.output_tokens,
                         route="anthropic-messages", pool="anthropic")
