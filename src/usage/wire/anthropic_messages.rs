//! Anthropic Messages wire format, streamed and not: a stream event (`message_start`,
//! `content_block_delta`, `message_delta`, `message_stop`, `error`, ...) -> usage, generated
//! text, terminal and error flags; a message body -> usage and generated text.
//!
//! Sources: Anthropic API reference, "Messages" (the message object: `content[]` blocks,
//! `usage`) and "Streaming Messages" (event flow, `message_delta.usage` cumulative).

use serde::Deserialize;

use super::{Signal, Text, TextBuf};
use crate::usage::stream::StreamState;
use crate::usage::Usage;

/// Anthropic `usage` object: `input_tokens`, `output_tokens`, `cache_creation_input_tokens`,
/// `cache_read_input_tokens`. A field that is absent or null leaves the current value alone,
/// which is how `message_delta` updates what `message_start` said.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Overwrites the fields of `usage` that this object carries.
    pub(crate) fn apply(&self, usage: &mut Usage) {
        let fields = [
            (self.input_tokens, &mut usage.prompt_tokens),
            (self.output_tokens, &mut usage.completion_tokens),
            (
                self.cache_creation_input_tokens,
                &mut usage.cache_write_tokens,
            ),
            (self.cache_read_input_tokens, &mut usage.cached_tokens),
        ];
        for (value, slot) in fields {
            if let Some(value) = value {
                *slot = value;
            }
        }
    }
}

/// The fields of an Anthropic stream event that accounting reads.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Text<'a>,
    /// `message_start`: the message shell, with the input and cache counts.
    #[serde(default)]
    message: Option<Message>,
    /// `message_delta`: cumulative output tokens, possibly repeating input and cache counts.
    #[serde(default)]
    usage: Option<WireUsage>,
    /// `content_block_delta`: the generated piece.
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    partial_json: Text<'a>,
    #[serde(default, borrow)]
    thinking: Text<'a>,
    /// `message_delta`: why the message ended (`end_turn`, `max_tokens`, `tool_use`...).
    #[serde(default, borrow)]
    stop_reason: Text<'a>,
}

/// Accounts one event. The JSON `type` names the event; the SSE `event:` name is the fallback.
/// Usage: `message_start.message.usage` sets all fields it has; each `message_delta.usage`
/// then overrides the fields it repeats (its `output_tokens` is cumulative, so the last wins).
pub(crate) fn on_event(
    state: &mut StreamState,
    name: &str,
    data: &[u8],
) -> Result<(), serde_json::Error> {
    let event: Event = serde_json::from_slice(data)?;
    let kind = event.kind.0.as_deref().unwrap_or(name);
    match kind {
        "message_start" => {
            if let Some(wire) = event.message.as_ref().and_then(|m| m.usage.as_ref()) {
                wire.apply(state.usage.get_or_insert_with(Usage::default));
            }
        }
        "message_delta" => {
            if event
                .delta
                .as_ref()
                .is_some_and(|d| d.stop_reason.0.is_some())
            {
                state.stop_reason_seen = true;
            }
            if let Some(wire) = &event.usage {
                wire.apply(state.usage.get_or_insert_with(Usage::default));
            }
        }
        "content_block_delta" => {
            if let Some(delta) = &event.delta {
                state.text.push(delta.thinking.as_str());
                state.text.push(delta.text.as_str());
                state.text.push(delta.partial_json.as_str());
            }
        }
        "message_stop" => state.completed = true,
        "error" => state.saw_error = true,
        _ => {} // ping, content_block_start/stop, and future event types
    }
    Ok(())
}

/// Commit on content: what one Anthropic stream event says (see [`super::Signal`]). Holds on
/// `message_start`, `ping` and `content_block_start` (an empty block opened; its output comes
/// in `content_block_delta`); `error` is an error (its `error.type`, such as
/// `overloaded_error`); every other event commits. The JSON `type` names the event; the SSE
/// `event:` name is the fallback. Source: Anthropic API reference, "Streaming Messages"
/// (event flow, error events).
pub(crate) fn opening(name: &str, data: &[u8]) -> Signal {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) else {
        return Signal::Content;
    };
    match event.get("type").and_then(|t| t.as_str()).unwrap_or(name) {
        "message_start" | "ping" | "content_block_start" => Signal::Holds,
        "error" => Signal::Error(super::error_code([event.pointer("/error/type")])),
        _ => Signal::Content,
    }
}

/// A non-streamed message body.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default, borrow)]
    content: Option<Vec<Block<'a>>>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    thinking: Text<'a>,
    /// `tool_use` blocks: the arguments object (re-serialized for the estimate).
    #[serde(default)]
    input: Option<serde_json::Value>,
}

/// Reads a whole non-streamed body: its `usage` (`None` when absent, null or when the body is
/// not this JSON), and its generated text appended to `text`: per `content[]` block, its
/// `thinking`, `text`, and a `tool_use` block's `input` as compact JSON.
pub(crate) fn body(raw: &[u8], text: &mut TextBuf) -> Option<Usage> {
    let body: Body = serde_json::from_slice(raw).ok()?;
    for block in body.content.iter().flatten() {
        text.push(block.thinking.as_str());
        text.push(block.text.as_str());
        if let Some(input) = &block.input {
            text.push(&input.to_string());
        }
    }
    let wire = body.usage?;
    let mut usage = Usage::default();
    wire.apply(&mut usage);
    Some(usage)
}
