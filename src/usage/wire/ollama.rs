//! Ollama native API wire format (`/api/chat`, `/api/generate`, `/api/embed`), streamed and
//! not: a stream line (one JSON object) -> usage, generated text, terminal and error flags; a
//! whole body (the same object with `done: true`, or an embed response) -> usage and text.
//!
//! Shapes (Ollama docs/api.md, <https://github.com/ollama/ollama/blob/main/docs/api.md>):
//! - chat line: `{"model","created_at","message":{"role","content","thinking","tool_calls":
//!   [{"function":{"name","arguments":{..}}}]},"done":false}`;
//! - generate line: `{"model","created_at","response","thinking","done":false}`;
//! - final line (and the non-streamed body): `"done":true`, `"done_reason"` (`stop`,
//!   `length`, ...), `"total_duration"`, `"load_duration"`, `"prompt_eval_count"`,
//!   `"prompt_eval_duration"`, `"eval_count"`, `"eval_duration"` (durations in ns);
//! - embed body: `{"model","embeddings":[[..]],"total_duration","load_duration",
//!   "prompt_eval_count"}`;
//! - an error, as a body or as a stream line: `{"error":"message"}`.
//!
//! Usage: `prompt_eval_count` is the input, `eval_count` the output; Ollama reports no cache
//! or reasoning counts (0 here).

use serde::Deserialize;

use super::{Signal, Text, TextBuf};
use crate::usage::stream::StreamState;
use crate::usage::Usage;

/// The fields of one Ollama line or body that accounting reads.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
    /// Generate: the generated piece.
    #[serde(default, borrow)]
    response: Text<'a>,
    /// Generate: the thinking piece (thinking models).
    #[serde(default, borrow)]
    thinking: Text<'a>,
    #[serde(default)]
    done: Option<bool>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    /// `{"error":"..."}`: a string (anything else non-null counts too).
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: Text<'a>,
    #[serde(default, borrow)]
    thinking: Text<'a>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Deserialize)]
struct ToolCall {
    #[serde(default)]
    function: Option<Function>,
}

#[derive(Deserialize)]
struct Function {
    /// An object in Ollama (not a JSON string as in OpenAI): re-serialized for the estimate.
    #[serde(default)]
    arguments: Option<serde_json::Value>,
}

impl Line<'_> {
    /// Appends the generated text this line carries.
    fn text_into(&self, text: &mut TextBuf) {
        if let Some(m) = &self.message {
            text.push(m.thinking.as_str());
            text.push(m.content.as_str());
            for call in m.tool_calls.iter().flatten() {
                if let Some(args) = call.function.as_ref().and_then(|f| f.arguments.as_ref()) {
                    text.push(&args.to_string());
                }
            }
        }
        text.push(self.thinking.as_str());
        text.push(self.response.as_str());
    }

    /// The usage this line reports, when it has either count.
    fn usage(&self) -> Option<Usage> {
        if self.prompt_eval_count.is_none() && self.eval_count.is_none() {
            return None;
        }
        Some(Usage {
            prompt_tokens: self.prompt_eval_count.unwrap_or(0),
            completion_tokens: self.eval_count.unwrap_or(0),
            ..Usage::default()
        })
    }

    fn is_error(&self) -> bool {
        self.error.as_ref().is_some_and(|e| !e.is_null())
    }
}

/// Accounts one stream line: its text; `done: true` ends the stream and carries the usage;
/// a non-null `error` is an in-stream error.
pub(crate) fn on_event(state: &mut StreamState, data: &[u8]) -> Result<(), serde_json::Error> {
    let line: Line = serde_json::from_slice(data)?;
    if line.is_error() {
        state.saw_error = true;
    }
    line.text_into(&mut state.text);
    if let Some(usage) = line.usage() {
        state.usage = Some(usage);
    }
    if line.done == Some(true) {
        state.completed = true;
    }
    Ok(())
}

/// Commit on content: what one Ollama line says (see [`super::Signal`]). An `error` line is
/// an error (Ollama's errors carry no code: `None`); a line with no text, no tool call and
/// not `done` holds (the empty first chunk some models send); every other line commits.
pub(crate) fn opening(data: &[u8]) -> Signal {
    let Ok(line) = serde_json::from_slice::<Line>(data) else {
        return Signal::Content;
    };
    if line.is_error() {
        return Signal::Error(None);
    }
    let mut text = TextBuf::default();
    line.text_into(&mut text);
    if text.as_str().is_empty() && line.done != Some(true) {
        Signal::Holds
    } else {
        Signal::Content
    }
}

/// Reads a whole non-streamed body (chat, generate or embed): its usage (`None` when the body
/// has neither count or is not this JSON) and its generated text appended to `text`.
pub(crate) fn body(raw: &[u8], text: &mut TextBuf) -> Option<Usage> {
    let line: Line = serde_json::from_slice(raw).ok()?;
    line.text_into(text);
    line.usage()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_line_carries_usage_and_ends_the_stream() {
        let mut state = StreamState::default();
        on_event(
            &mut state,
            br#"{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}"#,
        )
        .unwrap();
        assert!(!state.completed && state.usage.is_none());
        on_event(
            &mut state,
            br#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":298}"#,
        )
        .unwrap();
        assert!(state.completed && !state.saw_error);
        let u = state.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (26, 298));
        assert_eq!(state.text.as_str(), "Hi");
    }

    #[test]
    fn error_lines_and_openings() {
        let mut state = StreamState::default();
        on_event(&mut state, br#"{"error":"model runner stopped"}"#).unwrap();
        assert!(state.saw_error && !state.completed);
        assert_eq!(opening(br#"{"error":"x"}"#), Signal::Error(None));
        assert_eq!(
            opening(br#"{"message":{"role":"assistant","content":""},"done":false}"#),
            Signal::Holds
        );
        assert_eq!(
            opening(br#"{"response":"a","done":false}"#),
            Signal::Content
        );
        assert_eq!(opening(br#"{"response":"","done":true}"#), Signal::Content);
        assert_eq!(opening(b"not json"), Signal::Content);
    }

    #[test]
    fn bodies_of_generate_chat_tools_and_embed() {
        let mut text = TextBuf::default();
        let u = body(
            br#"{"response":"The sky","done":true,"prompt_eval_count":5,"eval_count":7}"#,
            &mut text,
        )
        .unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (5, 7));
        assert_eq!(text.as_str(), "The sky");
        let mut text = TextBuf::default();
        body(
            br#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{"city":"Paris"}}}]},"done":true,"eval_count":3}"#,
            &mut text,
        )
        .unwrap();
        assert_eq!(text.as_str(), r#"{"city":"Paris"}"#);
        let u = body(
            br#"{"model":"all-minilm","embeddings":[[0.01,-0.02]],"prompt_eval_count":8}"#,
            &mut TextBuf::default(),
        )
        .unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (8, 0));
        assert!(body(br#"{"embedding":[0.5]}"#, &mut TextBuf::default()).is_none());
    }
}
