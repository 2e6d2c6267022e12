"""The official `openai` SDK through sluice: same answers as llmock direct, the pool key
injected, and the upstream's usage counted exactly."""

from __future__ import annotations

import openai
import pytest

from conftest import Sluice, Upstream, stable

pytestmark = pytest.mark.sluice

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Summarise why a sidecar proxy counts tokens"}]


def test_chat_non_stream(sluice: Sluice, upstream: Upstream, openai_direct: openai.OpenAI,
                         openai_via: openai.OpenAI) -> None:
    upstream.clear_requests()
    direct = openai_direct.chat.completions.create(model=MODEL, messages=MESSAGES)
    direct_seen = upstream.only_request()

    upstream.clear_requests()
    meter = sluice.meter()
    via = openai_via.chat.completions.create(model=MODEL, messages=MESSAGES)
    seen = upstream.only_request()

    assert stable(via) == stable(direct)
    assert seen["path"] == "/v1/chat/completions"
    assert seen["body"] == direct_seen["body"], "sluice changed a non-streamed request body"
    assert seen["sdk_retry_count"] == 0, "x-stainless-retry-count did not reach the upstream"
    meter.assert_counted(model=MODEL, prompt=via.usage.prompt_tokens,
                         completion=via.usage.completion_tokens, route="openai", pool="openai")


def test_chat_stream_without_include_usage(sluice: Sluice, upstream: Upstream,
                                           openai_direct: openai.OpenAI,
                                           openai_via: openai.OpenAI) -> None:
    """The client did not ask for usage: it must get no usage chunk (sluice may ask the
    upstream for one to count exactly, but then strips it), and still be counted."""
    direct = [stable(c) for c in openai_direct.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True)]
    # What the upstream reports for this exact call (llmock is deterministic).
    reference = list(openai_direct.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
    usage = reference[-1].usage

    upstream.clear_requests()
    meter = sluice.meter()
    via = [stable(c) for c in openai_via.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True)]
    seen = upstream.only_request()

    assert not [c for c in via if not c["choices"]], "client got a chunk with empty choices"
    assert not [c for c in via if c.get("usage")], "client got a usage chunk it did not ask for"
    assert not [c for c in via if "usage" in c], (
        'client got chunks with "usage": null, which the upstream sends only when asked for '
        f"usage (upstream request body: {seen['body']})")
    assert via == direct
    body = {k: v for k, v in seen["body"].items() if k != "stream_options"}
    assert body == {"model": MODEL, "messages": MESSAGES, "stream": True}
    meter.assert_counted(model=MODEL, prompt=usage.prompt_tokens,
                         completion=usage.completion_tokens, route="openai", pool="openai")


def test_chat_stream_with_include_usage(sluice: Sluice, upstream: Upstream,
                                        openai_direct: openai.OpenAI,
                                        openai_via: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": MESSAGES, "stream": True,
              "stream_options": {"include_usage": True}}
    direct = [stable(c) for c in openai_direct.chat.completions.create(**kwargs)]

    meter = sluice.meter()
    chunks = list(openai_via.chat.completions.create(**kwargs))

    assert [stable(c) for c in chunks] == direct
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, "the usage chunk did not reach the client"
    meter.assert_counted(model=MODEL, prompt=last.usage.prompt_tokens,
                         completion=last.usage.completion_tokens, route="openai", pool="openai")


def test_responses_stream(sluice: Sluice, upstream: Upstream, openai_direct: openai.OpenAI,
                          openai_via: openai.OpenAI) -> None:
    prompt = "Explain exact streamed token accounting in one line"

    def run(client: openai.OpenAI) -> tuple[list, openai.types.responses.Response]:
        with client.responses.stream(model=MODEL, input=prompt) as stream:
            events = [stable(e) for e in stream]
            return events, stream.get_final_response()

    direct_events, direct_final = run(openai_direct)
    upstream.clear_requests()
    meter = sluice.meter()
    events, final = run(openai_via)
    seen = upstream.only_request()

    assert events == direct_events
    assert final.output_text == direct_final.output_text
    assert seen["path"] == "/v1/responses"
    meter.assert_counted(model=MODEL, prompt=final.usage.input_tokens,
                         completion=final.usage.output_tokens, route="openai", pool="openai")


def test_embeddings_default_base64(sluice: Sluice, upstream: Upstream,
                                   openai_direct: openai.OpenAI,
                                   openai_via: openai.OpenAI) -> None:
    """The SDK asks for base64 by default (llmock answers floats either way)."""
    model = "text-embedding-3-small"
    text = "Sidecars see every request an application makes"
    upstream.clear_requests()
    direct = openai_direct.embeddings.create(model=model, input=text)
    direct_seen = upstream.only_request()

    upstream.clear_requests()
    meter = sluice.meter()
    via = openai_via.embeddings.create(model=model, input=text)
    seen = upstream.only_request()

    assert stable(via) == stable(direct)
    assert seen["body"]["encoding_format"] == "base64"
    assert seen["body"] == direct_seen["body"]
    meter.assert_counted(model=model, prompt=via.usage.prompt_tokens, completion=0,
                         route="openai", pool="openai")
