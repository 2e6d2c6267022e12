//! OpenAI chat/completions (and legacy completions) wire format: one streamed
//! `chat.completion.chunk` -> usage, generated text, terminal and error flags, and the verdict
//! hide mode applies to it.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::stream::{StreamState, Verdict};
use super::wire::{present, Text};
use super::Usage;

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
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
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
    delta: Option<Delta<'a>>,
    /// Legacy completions put the text here instead of in `delta`.
    #[serde(default, borrow)]
    text: Text<'a>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Text<'a>,
    #[serde(default, borrow)]
    refusal: Text<'a>,
    /// Reasoning text of OpenAI-compatible servers (DeepSeek, vLLM): billed as output.
    #[serde(default, borrow)]
    reasoning_content: Text<'a>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    /// Pre-tools function calling, still sent by some compatible servers.
    #[serde(default, borrow)]
    function_call: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct Function<'a> {
    #[serde(default, borrow)]
    pub(crate) arguments: Text<'a>,
}

/// Accounts one event's `data` payload. `Err` means the payload is not a JSON chunk
/// (malformed); the caller counts it and forwards it untouched.
pub(crate) fn on_event(state: &mut StreamState, data: &[u8]) -> Result<Verdict, serde_json::Error> {
    if data.trim_ascii() == b"[DONE]" {
        state.completed = true;
        return Ok(Verdict::Keep);
    }
    let chunk: Chunk = serde_json::from_slice(data)?;
    if chunk.error.is_some() {
        state.saw_error = true;
    }
    for choice in chunk.choices.iter().flatten() {
        let bit = 1u64 << choice.index.unwrap_or(0).min(63);
        state.choices_seen |= bit;
        if choice.finish_reason.0.is_some() {
            state.choices_finished |= bit;
        }
        state.text.push(choice.text.as_str());
        let Some(delta) = &choice.delta else { continue };
        state.text.push(delta.reasoning_content.as_str());
        state.text.push(delta.content.as_str());
        state.text.push(delta.refusal.as_str());
        for call in delta.tool_calls.iter().flatten() {
            if let Some(function) = &call.function {
                state.text.push(function.arguments.as_str());
            }
        }
        if let Some(function) = &delta.function_call {
            state.text.push(function.arguments.as_str());
        }
    }
    Ok(match chunk.usage {
        None => Verdict::Keep,
        Some(None) => Verdict::StripUsageNull,
        Some(Some(usage)) => {
            // Servers that send usage on every chunk: the last one is the total.
            state.usage = Some(usage.to_usage());
            if chunk.choices.as_ref().is_none_or(|c| c.is_empty()) {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        }
    })
}
