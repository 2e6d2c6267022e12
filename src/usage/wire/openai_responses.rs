//! OpenAI Responses API wire format, streamed and not: a `response.*` stream event -> usage,
//! generated text, terminal and error flags, sequence number; a response object body -> usage
//! and generated text.
//!
//! Sources: OpenAI API reference, "Responses" (the response object: `output[]`, `usage`) and
//! "Streaming events" (`response.output_text.delta`, `response.completed`,
//! `response.incomplete`, `response.failed`, `error`, `sequence_number`).

use serde::Deserialize;

use super::{Signal, Text, TextBuf};
use crate::usage::stream::StreamState;
use crate::usage::Usage;

/// Responses `usage` object: `input_tokens`, `input_tokens_details.cached_tokens`,
/// `output_tokens`, `output_tokens_details.reasoning_tokens`. Missing or null numbers read as 0.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    input_tokens_details: Option<InputDetails>,
    #[serde(default)]
    output_tokens_details: Option<OutputDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct InputDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct OutputDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    /// The counts as a [`Usage`] (cache writes: always 0, OpenAI reports none).
    pub(crate) fn to_usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens.unwrap_or(0),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: self
                .input_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: self
                .output_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// The fields of a Responses stream event that accounting reads.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Text<'a>,
    #[serde(default, borrow)]
    delta: Text<'a>,
    #[serde(default)]
    response: Option<ResponseObject>,
    /// Every Responses stream event's position in the stream.
    #[serde(default)]
    sequence_number: Option<u64>,
}

#[derive(Deserialize)]
struct ResponseObject {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Accounts one event. The JSON `type` names the event; the SSE `event:` name is the fallback.
/// `response.completed` and `response.incomplete` (a clean stop at `max_output_tokens` or a
/// content filter) end the stream normally; `error` and `response.failed` are errors. Usage
/// comes from `response.usage` of any of the three terminal events that carries it.
pub(crate) fn on_event(
    state: &mut StreamState,
    name: &str,
    data: &[u8],
) -> Result<(), serde_json::Error> {
    let event: Event = serde_json::from_slice(data)?;
    let kind = event.kind.0.as_deref().unwrap_or(name);
    if let Some(n) = event.sequence_number {
        state.last_sequence_number = Some(state.last_sequence_number.map_or(n, |m| m.max(n)));
    }
    match kind {
        "response.output_text.delta"
        | "response.refusal.delta"
        | "response.function_call_arguments.delta" => state.text.push(event.delta.as_str()),
        "response.completed" | "response.incomplete" => state.completed = true,
        "response.failed" | "error" => state.saw_error = true,
        _ => {}
    }
    if matches!(
        kind,
        "response.completed" | "response.incomplete" | "response.failed"
    ) {
        if let Some(usage) = event.response.as_ref().and_then(|r| r.usage.as_ref()) {
            state.usage = Some(usage.to_usage());
        }
    }
    Ok(())
}

/// Commit on content: what one Responses stream event says (see [`super::Signal`]). Holds on
/// the events sent before any output: `response.created`, `response.queued`,
/// `response.in_progress`, `response.output_item.added`, `response.content_part.added`; `error`
/// (its `code`, else `error.code`) and `response.failed` (`response.error.code`) are errors;
/// every other event commits. The JSON `type` names the event; the SSE `event:` name is the
/// fallback. Source: OpenAI API reference, "Responses streaming events".
pub(crate) fn opening(name: &str, data: &[u8]) -> Signal {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) else {
        return Signal::Content;
    };
    let kind = event.get("type").and_then(|t| t.as_str()).unwrap_or(name);
    match kind {
        "response.created"
        | "response.queued"
        | "response.in_progress"
        | "response.output_item.added"
        | "response.content_part.added" => Signal::Holds,
        "error" => Signal::Error(super::error_code([
            event.get("code"),
            event.pointer("/error/code"),
            event.pointer("/error/type"),
        ])),
        "response.failed" => {
            Signal::Error(super::error_code([event.pointer("/response/error/code")]))
        }
        _ => Signal::Content,
    }
}

/// A non-streamed response object body.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default, borrow)]
    output: Option<Vec<OutputItem<'a>>>,
}

#[derive(Deserialize)]
struct OutputItem<'a> {
    #[serde(default, borrow)]
    content: Option<Vec<ContentPart<'a>>>,
    /// `function_call` items.
    #[serde(default, borrow)]
    arguments: Text<'a>,
}

#[derive(Deserialize)]
struct ContentPart<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    refusal: Text<'a>,
}

/// Reads a whole non-streamed body: its `usage` (`None` when absent, null or when the body is
/// not this JSON), and its generated text appended to `text`: per `output[]` item, its
/// `content[].text` and `.refusal`, then a function call's `arguments`.
pub(crate) fn body(raw: &[u8], text: &mut TextBuf) -> Option<Usage> {
    let body: Body = serde_json::from_slice(raw).ok()?;
    for item in body.output.iter().flatten() {
        for part in item.content.iter().flatten() {
            text.push(part.text.as_str());
            text.push(part.refusal.as_str());
        }
        text.push(item.arguments.as_str());
    }
    body.usage.map(|u| u.to_usage())
}

/// The `sequence_number` of the last event in `events` (whole Responses stream events, as a
/// client received them), read from the last `"sequence_number"` key in the text, so that an
/// event appended after them can be numbered next. A key's quotes are bare while a quote
/// inside a JSON string is escaped (RFC 8259 section 7), so generated text cannot fake it.
/// `None` when no event carries one.
pub(crate) fn last_sequence_number(events: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sequence_number\"";
    let at = memchr::memmem::rfind(events, KEY)?;
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let rest = &events[at + KEY.len()..];
    let rest = rest.strip_prefix(b":".as_slice()).or_else(|| {
        let i = rest.iter().position(|b| !ws(b))?;
        rest[i..].strip_prefix(b":".as_slice())
    })?;
    let start = rest.iter().position(|b| !ws(b))?;
    let digits = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&rest[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod sequence_tests {
    use super::last_sequence_number;

    #[test]
    fn the_last_events_sequence_number_is_read_and_generated_text_cannot_fake_it() {
        let events = b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"\\\"sequence_number\\\":99\",\"sequence_number\":7}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\",\"sequence_number\" : 8}\n\n";
        assert_eq!(last_sequence_number(events), Some(8));
        let faked = b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"\\\"sequence_number\\\":99\",\"sequence_number\":12}\n\n";
        assert_eq!(last_sequence_number(faked), Some(12));
        assert_eq!(last_sequence_number(b"data: {\"type\":\"ping\"}\n\n"), None);
        assert_eq!(
            last_sequence_number(b"data: {\"sequence_number\":null}\n\n"),
            None,
            "not a number"
        );
    }
}
