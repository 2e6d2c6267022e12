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

use super::skim::{JsonText, Skim};
use super::{present, Few, Signal, Text, TextBuf};
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
/// counts it and forwards it untouched. Content chunks take an allocation-free fast path
/// (`on_event_fast`) that skims the chunk without the typed parse; everything it declines
/// (the usage chunk, tool calls, escaped text, anything unusual) takes the typed parse.
pub(crate) fn on_event(
    state: &mut StreamState,
    _name: &str,
    data: &[u8],
) -> Result<Verdict, serde_json::Error> {
    if data.trim_ascii() == b"[DONE]" {
        state.completed = true;
        return Ok(Verdict::Keep);
    }
    if let Some(verdict) = on_event_fast(state, data) {
        return Ok(verdict);
    }
    on_event_typed(state, data)
}

/// [`on_event`] by the typed parse of the whole chunk (every chunk the fast path declines).
pub(crate) fn on_event_typed(
    state: &mut StreamState,
    data: &[u8],
) -> Result<Verdict, serde_json::Error> {
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

/// Commit on content: what one streamed chat (or legacy completions) event says (see
/// [`super::Signal`]). A chunk holds when no choice carries output: every choice's `delta` has
/// no non-empty `content`, `refusal`, `reasoning_content`, no `tool_calls`, `function_call` or
/// `audio`, no non-empty legacy `text`, and no `finish_reason`; a chunk with `choices: []` and
/// no usage (Azure OpenAI's first chunk, with `prompt_filter_results`) holds too. A usage
/// chunk, `[DONE]`, a finish reason or anything unparsable commits; a chunk with a non-null
/// top-level `error` is an error (its `error.code`, else `error.type`). Source: OpenAI API
/// reference, "The chat completion chunk object" (`choices[].delta`, `finish_reason`, `usage`).
pub(crate) fn opening(data: &[u8]) -> Signal {
    use serde_json::Value;
    if data.trim_ascii() == b"[DONE]" {
        return Signal::Content;
    }
    let Ok(Value::Object(chunk)) = serde_json::from_slice::<Value>(data) else {
        return Signal::Content;
    };
    if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
        return Signal::Error(super::error_code([error.get("code"), error.get("type")]));
    }
    if chunk.get("usage").is_some_and(|u| !u.is_null()) {
        return Signal::Content;
    }
    let Some(Value::Array(choices)) = chunk.get("choices") else {
        return Signal::Content;
    };
    let filled = |v: Option<&Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    let output = choices.iter().any(|choice| {
        let delta = choice.get("delta");
        !choice.is_object()
            || filled(choice.get("finish_reason"))
            || filled(choice.get("text"))
            || delta.is_some_and(|d| !d.is_object() && !d.is_null())
            || [
                "content",
                "refusal",
                "reasoning_content",
                "tool_calls",
                "function_call",
                "audio",
            ]
            .iter()
            .any(|k| filled(delta.and_then(|d| d.get(k))))
    });
    if output {
        Signal::Content
    } else {
        Signal::Holds
    }
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

/// What the fast path read of one choice: its index, whether it finished, and its text pieces
/// in the typed path's order (`text`, `reasoning_content`, `content`, `refusal`).
#[derive(Default, Clone, Copy)]
struct FastChoice<'a> {
    index: u64,
    finished: bool,
    pieces: [JsonText<'a>; 4],
}

/// Most choices per chunk the fast path reads; more take the typed parse.
const FAST_CHOICES: usize = 4;

/// The fast path for the common chunk: a JSON object whose members the typed [`Chunk`] reads
/// are `choices` (null, or an array of up to 4 objects whose `index` is a `u64` or null,
/// `finish_reason`, `text` and `delta` members `content`, `refusal`, `reasoning_content` are
/// strings (no `\u` escapes) or null, and with no tool or function calls), `usage: null` (or
/// absent) and `error: null` (or absent); every other member is skipped after a strict check.
/// `None` (nothing changed) for anything else, which then takes the typed parse: the fast
/// path accepts only events that parse, and reads them as the typed parse would (a property
/// test checks both agree).
pub(crate) fn on_event_fast(state: &mut StreamState, data: &[u8]) -> Option<Verdict> {
    let mut skim = Skim::new(data);
    let mut choices = [FastChoice::default(); FAST_CHOICES];
    let (mut count, mut usage_null) = (0, false);
    let mut seen = [false; 3]; // choices, usage, error: a repeated one is an error for serde
    let mut key = skim.first_key()?;
    while let Some(name) = key {
        match name {
            b"choices" => {
                once(&mut seen[0])?;
                if !skim.null()? {
                    count = fast_choices(&mut skim, &mut choices)?;
                }
            }
            b"usage" => {
                once(&mut seen[1])?;
                usage_null = skim.null()?.then_some(true)?;
            }
            b"error" => {
                once(&mut seen[2])?;
                skim.null()?.then_some(())?;
            }
            _ => skim.skip()?,
        }
        key = if skim.next(b'}')? {
            Some(skim.key()?)
        } else {
            None
        };
    }
    if !skim.at_end() {
        return None;
    }
    for choice in &choices[..count] {
        let bit = 1u64 << choice.index.min(63);
        state.choices_seen |= bit;
        if choice.finished {
            state.choices_finished |= bit;
        }
        for piece in choice.pieces {
            match piece.plain() {
                Some(text) => state.text.push(text),
                None => {
                    // Escaped: decoded whole, then pushed whole, as the typed parse does.
                    state.scratch.clear();
                    piece.decode_into(&mut state.scratch);
                    state.text.push(&state.scratch);
                }
            }
        }
    }
    Some(if usage_null {
        Verdict::StripUsageNull
    } else {
        Verdict::Keep
    })
}

/// Marks a member as seen; `None` if it already was.
fn once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

/// A string (see [`Skim::text`]), or null (as "", which the typed path's text also gives).
fn str_or_null<'a>(skim: &mut Skim<'a>) -> Option<Option<JsonText<'a>>> {
    if skim.null()? {
        Some(None)
    } else {
        skim.text().map(Some)
    }
}

/// `choices`: an array of up to [`FAST_CHOICES`] choice objects; returns how many.
fn fast_choices<'a>(skim: &mut Skim<'a>, out: &mut [FastChoice<'a>]) -> Option<usize> {
    skim.eat(b'[')?;
    if skim.peek()? == b']' {
        skim.eat(b']')?;
        return Some(0);
    }
    let mut count = 0;
    loop {
        *out.get_mut(count)? = fast_choice(skim)?;
        count += 1;
        if !skim.next(b']')? {
            return Some(count);
        }
    }
}

fn fast_choice<'a>(skim: &mut Skim<'a>) -> Option<FastChoice<'a>> {
    let mut choice = FastChoice::default();
    let mut seen = [false; 4]; // index, finish_reason, delta, text
    let mut key = skim.first_key()?;
    while let Some(name) = key {
        match name {
            b"index" => {
                once(&mut seen[0])?;
                if !skim.null()? {
                    choice.index = skim.u64()?;
                }
            }
            b"finish_reason" => {
                once(&mut seen[1])?;
                choice.finished = str_or_null(skim)?.is_some();
            }
            b"text" => {
                once(&mut seen[3])?;
                choice.pieces[0] = str_or_null(skim)?.unwrap_or_default();
            }
            b"delta" => {
                once(&mut seen[2])?;
                if !skim.null()? {
                    fast_delta(skim, &mut choice.pieces)?;
                }
            }
            _ => skim.skip()?,
        }
        key = if skim.next(b'}')? {
            Some(skim.key()?)
        } else {
            None
        };
    }
    Some(choice)
}

/// A `delta` without tool or function calls: its text members into `pieces[1..]`.
fn fast_delta<'a>(skim: &mut Skim<'a>, pieces: &mut [JsonText<'a>; 4]) -> Option<()> {
    let mut seen = [false; 3];
    let mut key = skim.first_key()?;
    while let Some(name) = key {
        let slot = match name {
            b"reasoning_content" => 1,
            b"content" => 2,
            b"refusal" => 3,
            b"tool_calls" | b"function_call" => return None,
            _ => 0,
        };
        if slot == 0 {
            skim.skip()?;
        } else {
            once(&mut seen[slot - 1])?;
            pieces[slot] = str_or_null(skim)?.unwrap_or_default();
        }
        key = if skim.next(b'}')? {
            Some(skim.key()?)
        } else {
            None
        };
    }
    Some(())
}
