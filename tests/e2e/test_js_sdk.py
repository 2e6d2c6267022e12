"""The official JS SDKs (`openai` and `@anthropic-ai/sdk` on node, pinned in
tests/e2e/js/package-lock.json) through sluice: the same answers as llmock direct, exact
usage counted, and sluice's own errors raised as the SDKs' native classes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import (ANTHROPIC_UPSTREAM_KEY, OPENAI_UPSTREAM_KEY, UNKNOWN_KEY, VIRTUAL_KEY,
                      Sluice, Upstream)

pytestmark = pytest.mark.sluice

JS_DIR = Path(__file__).parent / "js"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "js sdk prompt"}]}
MESSAGE = {"model": "claude-sonnet-4-6", "max_tokens": 64,
           "messages": [{"role": "user", "content": "js sdk prompt"}]}


def js(sdk: str, op: str, base_url: str, api_key: str, params: dict[str, Any],
       headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one SDK call in node (tests/e2e/js/run.mjs) and return what the app saw;
    `headers` are sent with it (the client's `defaultHeaders`)."""
    node = shutil.which("node")
    assert node, "node is not installed (make setup installs it)"
    assert (JS_DIR / "node_modules" / "openai").is_dir(), "run make setup (npm ci)"
    arg = json.dumps({"sdk": sdk, "op": op, "base_url": base_url, "api_key": api_key,
                      "params": params, "headers": headers or {}})
    done = subprocess.run([node, str(JS_DIR / "run.mjs"), arg], capture_output=True,
                          text=True, timeout=60, cwd=JS_DIR, check=False)
    assert done.returncode == 0, f"node failed: {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_openai_js_chat_stream_same_as_direct_and_counted(sluice: Sluice,
                                                          upstream: Upstream) -> None:
    params = {**CHAT, "stream_options": {"include_usage": True}}
    direct = js("openai", "chat_stream", upstream.openai_url, OPENAI_UPSTREAM_KEY, params)
    assert direct["ok"], direct
    meter = sluice.meter()
    via = js("openai", "chat_stream", sluice.openai_url, VIRTUAL_KEY, params)
    assert via["ok"], via
    assert via["text"] == direct["text"] and via["text"]
    assert via["usage"] == direct["usage"]
    meter.assert_counted(model=CHAT["model"], prompt=via["usage"]["prompt_tokens"],
                         completion=via["usage"]["completion_tokens"], route="openai",
                         pool="openai")


def test_anthropic_js_messages_stream_same_as_direct_and_counted(sluice: Sluice,
                                                                 upstream: Upstream) -> None:
    direct = js("anthropic", "messages_stream", upstream.anthropic_url, ANTHROPIC_UPSTREAM_KEY,
                MESSAGE)
    assert direct["ok"], direct
    meter = sluice.meter()
    via = js("anthropic", "messages_stream", sluice.anthropic_url, VIRTUAL_KEY, MESSAGE)
    assert via["ok"], via
    assert via["text"] == direct["text"] and via["text"]
    assert via["usage"] == direct["usage"]
    meter.assert_counted(model=MESSAGE["model"], prompt=via["usage"]["input_tokens"],
                         completion=via["usage"]["output_tokens"], route="anthropic-messages",
                         pool="anthropic")


@pytest.mark.parametrize("sdk,op,params", [("openai", "chat", CHAT),
                                           ("anthropic", "messages", MESSAGE)])
def test_unknown_virtual_key_is_native_authentication_error(sluice: Sluice, upstream: Upstream,
                                                            sdk: str, op: str,
                                                            params: dict[str, Any]) -> None:
    upstream.clear_requests()
    base = sluice.openai_url if sdk == "openai" else sluice.anthropic_url
    got = js(sdk, op, base, UNKNOWN_KEY, params)
    assert not got["ok"]
    assert got["error"]["class"] == "AuthenticationError", got
    assert got["error"]["status"] == 401
    assert upstream.requests() == [], "a refused request reached the upstream"
