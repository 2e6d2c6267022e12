// Drives one call of the official JS SDKs (openai, @anthropic-ai/sdk) and prints what the
// app would see as one JSON line on stdout. Used by tests/e2e/test_js_sdk.py.
//
// Input (argv[2], JSON): {sdk: "openai"|"anthropic", op: "chat"|"chat_stream"|"messages"|
// "messages_stream", base_url, api_key, params: {...the SDK call's body}, headers: {...}}.
// Output: {ok: true, text, usage, chunks} or {ok: false, error: {class, status, message},
// text, chunks} where `class` is the SDK's exception class name (APIError, RateLimitError,
// AuthenticationError...), `text` what was streamed before the error.
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";

const req = JSON.parse(process.argv[2]);
const common = { baseURL: req.base_url, apiKey: req.api_key, maxRetries: 0, timeout: 10_000,
                 defaultHeaders: req.headers ?? {} };
let text = "";
let usage = null;
let chunks = 0;

async function run() {
  if (req.sdk === "openai") {
    const client = new OpenAI(common);
    if (req.op === "chat") {
      const r = await client.chat.completions.create(req.params);
      text = r.choices[0]?.message?.content ?? "";
      usage = r.usage;
      return;
    }
    const stream = await client.chat.completions.create({ ...req.params, stream: true });
    for await (const c of stream) {
      chunks += 1;
      text += c.choices[0]?.delta?.content ?? "";
      if (c.usage) usage = c.usage;
    }
    return;
  }
  const client = new Anthropic(common);
  if (req.op === "messages") {
    const r = await client.messages.create(req.params);
    text = r.content.map((b) => b.text ?? "").join("");
    usage = r.usage;
    return;
  }
  const stream = await client.messages.create({ ...req.params, stream: true });
  for await (const e of stream) {
    chunks += 1;
    if (e.type === "content_block_delta" && e.delta.type === "text_delta") text += e.delta.text;
    if (e.type === "message_start") usage = { ...e.message.usage };
    if (e.type === "message_delta") usage = { ...usage, output_tokens: e.usage.output_tokens };
  }
}

try {
  await run();
  console.log(JSON.stringify({ ok: true, text, usage, chunks }));
} catch (e) {
  const error = { class: e?.constructor?.name ?? "unknown", status: e?.status ?? null,
                  message: String(e?.message ?? e) };
  console.log(JSON.stringify({ ok: false, error, text, chunks }));
}
