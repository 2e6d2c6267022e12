//! OpenAI chat completions (and legacy completions) wire format, streamed and not: a
//! `chat.completion.chunk` event -> usage, generated text, terminal and error flags, and the
//! verdict hide mode applies to it; a `chat.completion` (or `text_completion`) body -> usage
//! and generated text.
//!
//! Sources: OpenAI API reference, "Chat Completions" (the chat completion object and the
//! streamed chat completion chunk object: `choices[].delta`, `choices[].finish_reason`,
//! `usage`, `stream_options.include_usage`) and "Completions" (legacy, `choices[].text`).

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{present, Few, Text, TextBuf};
use crate::usage::stream::{StreamState, Verdict};
use crate::usage::Usage;

/// OpenAI `usage` object (chat/completions, legacy completions, embeddings): `prompt_tokens`,
/// `completion_tokens`, `prompt_tokens_details.cached_tokens`,
/// `completion_tokens_details.reasoning_tokens`. Missing or null numbers read as 0.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    /// The counts as a [`Usage`] (cache writes: always 0, OpenAI reports none).
    pub(crate) fn to_usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: self
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// The fields of a `chat.completion.chunk` that accounting reads; the rest is skipped.
/// Borrowed: a chunk with one choice and unescaped strings costs no allocation.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Few<Choice<'a>>>,
    /// Absent (`None`), `null` (`Some(None)`, every chunk when include_usage is on), or the
    /// totals (`Some(Some(..))`, the extra chunk before `[DONE]`).
    #[serde(default, deserialize_with = "present")]
    usage: Option<Option<WireUsage>>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    /// The choice's index (`n` > 1 streams interleave choices); absent reads as 0.
    #[serde(default)]
    index: Option<u64>,
    /// Non-null on the choice's last content chunk (`stop`, `length`, `tool_calls`...).
    #[serde(default, borrow)]
    finish_reason: Text<'a>,
    #[serde(default, borrow)]
    delta: Option<Message<'a>>,
    /// Legacy completions put the text here instead of in `delta`.
    #[serde(default, borrow)]
    text: Text<'a>,
}

/// A streamed `delta`, or a body's `message`: the same text-bearing fields.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: Text<'a>,
    #[serde(default, borrow)]
    refusal: Text<'a>,
    /// Reasoning text of OpenAI-compatible servers (DeepSeek, vLLM): billed as output.
    #[serde(default, borrow)]
    reasoning_content: Text<'a>,
    #[serde(default, borrow)]
    tool_calls: Option<Few<ToolCall<'a>>>,
    /// Pre-tools function calling, still sent by some compatible servers.
    #[serde(default, borrow)]
    function_call: Option<Function<'a>>,
}

impl Message<'_> {
    /// Appends the text this delta or message generated, in a fixed order.
    fn push_text(&self, text: &mut TextBuf) {
        text.push(self.reasoning_content.as_str());
        text.push(self.content.as_str());
        text.push(self.refusal.as_str());
        for call in self.tool_calls.iter().flat_map(Few::iter) {
            if let Some(function) = &call.function {
                text.push(function.arguments.as_str());
            }
        }
        if let Some(function) = &self.function_call {
            text.push(function.arguments.as_str());
        }
    }
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(default, borrow)]
    arguments: Text<'a>,
}

/// Accounts one streamed event's `data` payload (the SSE `event:` name is not used: chat
/// streams have none). `Err` means the payload is not a JSON chunk (malformed); the caller
/// counts it and forwards it untouched.
pub(crate) fn on_event(
    state: &mut StreamState,
    _name: &str,
    data: &[u8],
) -> Result<Verdict, serde_json::Error> {
    if data.trim_ascii() == b"[DONE]" {
        state.completed = true;
        return Ok(Verdict::Keep);
    }
    let chunk: Chunk = serde_json::from_slice(data)?;
    if chunk.error.is_some() {
        state.saw_error = true;
    }
    for choice in chunk.choices.iter().flat_map(Few::iter) {
        let bit = 1u64 << choice.index.unwrap_or(0).min(63);
        state.choices_seen |= bit;
        if choice.finish_reason.0.is_some() {
            state.choices_finished |= bit;
        }
        state.text.push(choice.text.as_str());
        if let Some(delta) = &choice.delta {
            delta.push_text(&mut state.text);
        }
    }
    Ok(match chunk.usage {
        None => Verdict::Keep,
        Some(None) => Verdict::StripUsageNull,
        Some(Some(usage)) => {
            // Servers that send usage on every chunk: the last one is the total.
            state.usage = Some(usage.to_usage());
            if chunk.choices.as_ref().is_none_or(Few::is_empty) {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        }
    })
}

/// A non-streamed chat completion (or legacy text completion) body.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default, borrow)]
    choices: Option<Vec<BodyChoice<'a>>>,
}

#[derive(Deserialize)]
struct BodyChoice<'a> {
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
    /// Legacy completions.
    #[serde(default, borrow)]
    text: Text<'a>,
}

/// Reads a whole non-streamed body: its `usage` (`None` when absent, null or when the body is
/// not this JSON), and its generated text appended to `text`: `choices[].text` (legacy), then
/// `choices[].message` `reasoning_content`, `content`, `refusal`, `tool_calls[].function
/// .arguments`.
pub(crate) fn body(raw: &[u8], text: &mut TextBuf) -> Option<Usage> {
    let body: Body = serde_json::from_slice(raw).ok()?;
    for choice in body.choices.iter().flatten() {
        text.push(choice.text.as_str());
        if let Some(message) = &choice.message {
            message.push_text(text);
        }
    }
    body.usage.map(|u| u.to_usage())
}
