//! Anthropic Messages wire format: one streamed event (`message_start`, `content_block_delta`,
//! `message_delta`, `message_stop`, `error`, ...) -> usage, generated text, terminal and error
//! flags.

use serde::Deserialize;

use super::stream::StreamState;
use super::wire::Text;
use super::Usage;

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
