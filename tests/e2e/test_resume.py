"""`failover.resume_on_cut`, as the official SDKs see it: a stream cut (TCP reset, or a clean
end without the final event) after 40 of 60 tokens, or stalled after 20 past the pool's
`idle_ms`, arrives as one complete, well-formed stream whose text is the uncut answer of a
deterministic upstream (upstreams/prefill.py), with the first leg's id throughout and usage the
sum of the legs; when the continuation is refused, or no candidate accepts a prefill, the
client gets the native error of the original cut."""

from __future__ import annotations

from typing import Any, Iterator

import anthropic
import openai
import pytest

from conftest import (ANTHROPIC_KEY_ENV, ANTHROPIC_UPSTREAM_KEY, OPENAI_KEY_ENV,
                      OPENAI_UPSTREAM_KEY, VIRTUAL_KEY, Sluice, SluiceFactory,
                      anthropic_client, openai_client)
from harness import pool, route
from upstreams.prefill import ANSWER_WORDS, PREFILL_REJECTED, Upstream

pytestmark = pytest.mark.sluice

IDLE_MS = 400
RESUMES = "sluice_stream_resumes_total"
NO_PREFILL = ("x-e2e-resume", "no-prefill")


def prefill_pool(name: str, provider: str, url: str, key_env: str, prefill: str,
                 idle_ms: int | None = None) -> dict[str, Any]:
    p = pool(name, provider, url, key_env)
    p["prefill"] = prefill
    if idle_ms is not None:
        p["timeouts"]["idle_ms"] = idle_ms
    return p


def resuming(r: dict[str, Any]) -> dict[str, Any]:
    r["failover"] = {"resume_on_cut": True}
    return r


CHAIN = ("x-e2e-resume", "chain")


class Setup:
    def __init__(self, sluice: Sluice, primary: Upstream, fallback: Upstream,
                 other: Upstream, second: Upstream) -> None:
        self.sluice, self.primary, self.fallback = sluice, primary, fallback
        self.other, self.second = other, second


@pytest.fixture
def setup(sluice_factory: SluiceFactory) -> Iterator[Setup]:
    primary, fallback, other, second = Upstream(), Upstream(), Upstream(), Upstream()
    try:
        pools = []
        for provider, key in (("openai", OPENAI_KEY_ENV), ("anthropic", ANTHROPIC_KEY_ENV)):
            pools += [
                # The primary declares a prefill too: it is never its own continuation.
                prefill_pool(f"primary-{provider}", provider, primary.url, key, "assistant",
                             IDLE_MS),
                prefill_pool(f"fallback-{provider}", provider, fallback.url, key,
                             "assistant" if provider == "anthropic" else "continue_prompt"),
                prefill_pool(f"none-{provider}", provider, other.url, key, "none"),
            ]
        routes = [
            resuming(route("messages-none", "/v1/messages",
                           ["primary-anthropic", "none-anthropic"], header=NO_PREFILL)),
            resuming(route("messages", "/v1/messages",
                           ["primary-anthropic", "fallback-anthropic"])),
            resuming(route("chat-none", "/v1", ["primary-openai", "none-openai"],
                           header=NO_PREFILL)),
            resuming(route("chat", "/v1", ["primary-openai", "fallback-openai"])),
        ]
        pools.append(prefill_pool("second-openai", "openai", second.url, OPENAI_KEY_ENV,
                                  "assistant"))
        chain = resuming(route("chat-chain", "/v1",
                               ["primary-openai", "fallback-openai", "second-openai"],
                               header=CHAIN))
        chain["failover"]["max_resumes"] = 2
        routes.insert(2, chain)
        yield Setup(sluice_factory.start(pools=pools, routes=routes), primary, fallback, other,
                    second)
    finally:
        for u in (primary, fallback, other, second):
            u.stop()


def legs(entry: dict[str, str]) -> list[tuple[str, str, int, int]]:
    """The access line's legs: (pool, outcome, prompt tokens, completion tokens)."""
    out = []
    for leg in entry["legs"].split(","):
        where, _status, outcome, tokens = leg.rsplit(":", 3)
        prompt, completion = tokens.split("+")
        out.append((where.split("/")[0], outcome, int(prompt), int(completion)))
    return out


def resumes(sluice: Sluice, outcome: str, route_name: str) -> float:
    return sluice.scrape().sum(RESUMES, outcome=outcome, route=route_name)


# -- OpenAI chat ------------------------------------------------------------------------

CHAT_PROMPT = "Name sixty things, one word each."


def direct_chat(u: Upstream) -> str:
    client = openai_client(f"{u.url}/v1", OPENAI_UPSTREAM_KEY)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": CHAT_PROMPT}], stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def chat_via(s: Setup, include_usage: bool, headers: dict[str, str] | None = None):
    client = openai_client(s.sluice.openai_url, VIRTUAL_KEY)
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    response = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": CHAT_PROMPT}], stream=True,
        extra_headers=headers or {}, **extra)
    return response.headers["x-sluice-request-id"], response.parse()


@pytest.mark.parametrize("fault", [
    {"cut_after": 40, "cut_mode": "reset"},
    {"cut_after": 40, "cut_mode": "eof"},
    {"stall_after": 20},
])
@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_chat_cut_stream_arrives_whole(setup: Setup, fault: dict[str, Any],
                                              include_usage: bool) -> None:
    uncut = direct_chat(setup.other)
    assert len(uncut.split()) == ANSWER_WORDS
    setup.primary.configure(**fault)
    before = resumes(setup.sluice, "spliced", "chat")
    request_id, stream = chat_via(setup, include_usage)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == uncut
    # One stream: the primary's id, created and fingerprint on every chunk, one role.
    first = setup.primary.requests[-1]
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.created for c in chunks} == {chunks[0].created}
    assert {c.system_fingerprint for c in chunks} == {chunks[0].system_fingerprint}
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # The continuation got the delivered text as the assistant message, then the prompt.
    cont = setup.fallback.requests[-1]
    delivered = 40 if "cut_after" in fault else 20
    assert cont["prefill"] == " ".join(uncut.split()[:delivered])
    assert cont["body"]["messages"][-1]["role"] == "user"
    assert first["prefill"] is None
    # Usage: every leg counted; the client's usage chunk (when asked for) is the sum.
    entry = setup.sluice.access_entry(request_id)
    got = legs(entry)
    assert [(p, o) for p, o, _, _ in got][1:] == [("fallback-openai", "ok")]
    assert got[0][0] == "primary-openai" and got[0][1] != "ok"
    assert got[1][2:] == setup.fallback.requests[-1]["usage"]
    assert got[0][3] >= delivered  # estimated (tiktoken) from the delivered words
    assert entry["resumes"] == "1" and entry["completed"] == "true" and entry["error"] == ""
    total = (sum(g[2] for g in got), sum(g[3] for g in got))
    assert (int(entry["prompt_tokens"]), int(entry["completion_tokens"])) == total
    if include_usage:
        assert chunks[-1].usage is not None
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == total
        assert chunks[-1].usage.total_tokens == sum(total)
    else:
        assert all(c.usage is None for c in chunks)
    assert resumes(setup.sluice, "spliced", "chat") == before + 1


def test_openai_chat_refused_prefill_ends_with_the_cut_error(setup: Setup) -> None:
    setup.primary.configure(cut_after=40, cut_mode="eof")
    setup.fallback.configure(reject_prefill=True)
    before = resumes(setup.sluice, "failed", "chat")
    request_id, stream = chat_via(setup, include_usage=True)
    text = ""
    with pytest.raises(openai.APIError) as raised:
        for c in stream:
            text += "".join(ch.delta.content or "" for ch in c.choices)
    assert type(raised.value) is openai.APIError
    assert "before its final event" in raised.value.message
    assert "prefill" not in raised.value.message
    assert len(text.split()) == 40
    assert setup.fallback.requests[-1]["prefill"] is not None
    entry = setup.sluice.access_entry(request_id)
    assert [(p, o) for p, o, _, _ in legs(entry)] == [
        ("primary-openai", "upstream_truncated"), ("fallback-openai", "rejected")]
    assert entry["error"] == "upstream_truncated" and entry["resumes"] == "0"
    assert resumes(setup.sluice, "failed", "chat") == before + 1


def test_openai_chat_without_a_prefill_candidate_ends_with_the_cut_error(setup: Setup) -> None:
    setup.primary.configure(cut_after=40, cut_mode="reset")
    before = resumes(setup.sluice, "no_candidate", "chat-none")
    _, stream = chat_via(setup, include_usage=False, headers=dict([NO_PREFILL]))
    with pytest.raises(openai.APIError) as raised:
        for _ in stream:
            pass
    assert type(raised.value) is openai.APIError and "upstream" in raised.value.message
    assert setup.other.requests == []
    assert resumes(setup.sluice, "no_candidate", "chat-none") == before + 1


@pytest.mark.parametrize("fallback_fault", [{"reject_prefill": True},
                                            {"prefill_cut_after": 10}])
def test_openai_chat_continuation_failing_moves_on_to_the_next_candidate(
        setup: Setup, fallback_fault: dict[str, Any]) -> None:
    """A continuation refused (before content: no trace) or itself cut after 10 more tokens
    (resumed again, `max_resumes: 2`): the next candidate completes the answer."""
    uncut = direct_chat(setup.other)
    setup.primary.configure(cut_after=40, cut_mode="eof")
    setup.fallback.configure(**fallback_fault)
    request_id, stream = chat_via(setup, include_usage=True, headers=dict([CHAIN]))
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == uncut
    assert {c.id for c in chunks} == {chunks[0].id}
    cut_again = "prefill_cut_after" in fallback_fault
    assert setup.second.requests[-1]["prefill"] == " ".join(uncut.split()[:50 if cut_again
                                                                          else 40])
    entry = setup.sluice.access_entry(request_id)
    got = legs(entry)
    assert [(p, o) for p, o, _, _ in got] == [
        ("primary-openai", "upstream_truncated"),
        ("fallback-openai", "upstream_truncated" if cut_again else "rejected"),
        ("second-openai", "ok")]
    assert entry["resumes"] == ("2" if cut_again else "1")
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (sum(g[2] for g in got),
                                                              sum(g[3] for g in got))


def test_openai_chat_continuation_cut_again_without_resumes_left_is_billed_for_every_leg(
        setup: Setup) -> None:
    """`max_resumes: 1`: the continuation delivers 10 more tokens, then is cut too. The client
    gets the native error of the original cut after 50 words; every leg is counted (the
    continuation's prefilled prompt and its 10 tokens included), not only the first."""
    setup.primary.configure(cut_after=40, cut_mode="eof")
    setup.fallback.configure(prefill_cut_after=10)
    request_id, stream = chat_via(setup, include_usage=False)
    text = ""
    with pytest.raises(openai.APIError) as raised:
        for c in stream:
            text += "".join(ch.delta.content or "" for ch in c.choices)
    assert "before its final event" in raised.value.message
    assert len(text.split()) == 50
    entry = setup.sluice.access_entry(request_id)
    got = legs(entry)
    assert [(p, o) for p, o, _, _ in got] == [
        ("primary-openai", "upstream_truncated"), ("fallback-openai", "upstream_truncated")]
    assert entry["resumes"] == "1"
    assert got[1][2] > 0 and got[1][3] > 0, got
    assert (int(entry["prompt_tokens"]), int(entry["completion_tokens"])) == (
        sum(g[2] for g in got), sum(g[3] for g in got)), entry


# -- Anthropic messages -----------------------------------------------------------------

MESSAGE_PROMPT = "List sixty words for a poem."


def messages_kwargs() -> dict[str, Any]:
    return {"model": "claude-sonnet-4-6", "max_tokens": 1024,
            "messages": [{"role": "user", "content": MESSAGE_PROMPT}]}


@pytest.mark.parametrize("fault", [
    {"cut_after": 40, "cut_mode": "reset"},
    {"cut_after": 40, "cut_mode": "eof"},
    {"stall_after": 20},
])
def test_anthropic_cut_stream_arrives_whole(setup: Setup, fault: dict[str, Any]) -> None:
    direct = anthropic_client(setup.other.url, ANTHROPIC_UPSTREAM_KEY)
    with direct.messages.stream(**messages_kwargs()) as s:
        uncut = "".join(s.text_stream)
    assert len(uncut.split()) == ANSWER_WORDS
    setup.primary.configure(**fault)
    client = anthropic_client(setup.sluice.anthropic_url, VIRTUAL_KEY)
    with client.messages.stream(**messages_kwargs()) as s:
        pieces = list(s.text_stream)
        message = s.get_final_message()
        request_id = s.response.headers["x-sluice-request-id"]
    assert "".join(pieces) == uncut
    # One message: the primary's id, one text block, its normal end.
    port = setup.primary.url.rsplit(":", 1)[1]
    assert message.id.startswith(f"msg_{port}-")
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == uncut
    assert message.stop_reason == "end_turn"
    # The prefill had its trailing space trimmed; the continuation's leading one was dropped.
    delivered = 40 if "cut_after" in fault else 20
    cont = setup.fallback.requests[-1]
    assert cont["prefill"] == " ".join(uncut.split()[:delivered])
    got = legs(setup.sluice.access_entry(request_id))
    assert [(p, o) for p, o, _, _ in got][1:] == [("fallback-anthropic", "ok")]
    primary_usage = setup.primary.requests[-1]["usage"]
    assert got[0][2] == primary_usage[0]  # reported in message_start
    assert got[1][2:] == cont["usage"]
    assert message.usage.input_tokens == got[0][2] + got[1][2]
    assert message.usage.output_tokens == got[0][3] + got[1][3]


def test_anthropic_refused_prefill_ends_with_the_cut_error(setup: Setup) -> None:
    setup.primary.configure(cut_after=40, cut_mode="reset")
    setup.fallback.configure(reject_prefill=True)
    client = anthropic_client(setup.sluice.anthropic_url, VIRTUAL_KEY)
    text = ""
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(**messages_kwargs()) as s:
            for piece in s.text_stream:
                text += piece
    assert raised.value.body["error"]["type"] == "api_error"
    assert PREFILL_REJECTED not in str(raised.value.body)
    assert len(text.split()) == 40
    assert setup.fallback.requests[-1]["prefill"] is not None


def test_anthropic_without_a_prefill_candidate_ends_with_the_cut_error(setup: Setup) -> None:
    setup.primary.configure(stall_after=20)
    client = anthropic_client(setup.sluice.anthropic_url, VIRTUAL_KEY)
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(**messages_kwargs(),
                                    extra_headers=dict([NO_PREFILL])) as s:
            for _ in s.text_stream:
                pass
    assert raised.value.body["error"]["type"] in ("api_error", "timeout_error")
    assert setup.other.requests == []
