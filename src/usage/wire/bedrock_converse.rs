//! AWS Bedrock Runtime `Converse` / `ConverseStream` wire format: a stream event (the payload
//! of one event stream message, named by its `:event-type`: `messageStart`,
//! `contentBlockStart`, `contentBlockDelta`, `contentBlockStop`, `messageStop`, `metadata`, or
//! an exception such as `throttlingException`) -> usage, generated text, terminal and error
//! flags; a `Converse` response body -> usage and generated text.
//!
//! Sources: AWS Bedrock Runtime API reference, "Converse" and "ConverseStream"
//! (<https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html>),
//! and botocore's service model `bedrock-runtime/2023-09-30` (`ConverseStreamOutput`,
//! `TokenUsage`, `ContentBlockDelta`, `ConverseOutput`).

use serde::Deserialize;

use super::{Signal, Text, TextBuf};
use crate::usage::stream::StreamState;
use crate::usage::Usage;

/// Bedrock `TokenUsage`: `inputTokens`, `outputTokens`, `totalTokens`,
/// `cacheReadInputTokens`, `cacheWriteInputTokens` (absent or null is 0).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_write_input_tokens: Option<u64>,
}

impl WireUsage {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens.unwrap_or(0),
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: self.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: self.cache_write_input_tokens.unwrap_or(0),
            reasoning_tokens: 0,
        }
    }
}

/// The members of a stream event payload that accounting reads.
#[derive(Deserialize)]
struct Event<'a> {
    /// `contentBlockDelta`: the generated piece.
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    /// `metadata`: the usage of the whole call.
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// `ContentBlockDelta`: `text`, `toolUse.input` (a JSON fragment), `reasoningContent.text`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delta<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    tool_use: Option<Piece<'a>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Piece<'a>>,
}

/// `toolUse` (`input`) or `reasoningContent` (`text`) of a delta.
#[derive(Deserialize)]
struct Piece<'a> {
    #[serde(default, borrow)]
    input: Text<'a>,
    #[serde(default, borrow)]
    text: Text<'a>,
}

/// Whether `name` (an event stream message's `:event-type`, or the `:exception-type` of an
/// exception message) is an exception: Bedrock names them `<camelCase>Exception`
/// (`throttlingException`, `modelStreamErrorException`, ...).
pub(crate) fn is_exception(name: &str) -> bool {
    name.ends_with("Exception")
}

/// Accounts one event: `contentBlockDelta` appends its text, tool input and reasoning text;
/// `messageStop` records the stop reason; `metadata` carries the usage and ends the stream;
/// an exception marks it failed. Other events (`messageStart`, `contentBlockStart`,
/// `contentBlockStop`, future ones) carry nothing to count.
pub(crate) fn on_event(
    state: &mut StreamState,
    name: &str,
    data: &[u8],
) -> Result<(), serde_json::Error> {
    if is_exception(name) {
        state.saw_error = true;
        return Ok(());
    }
    let event: Event = serde_json::from_slice(data)?;
    match name {
        "contentBlockDelta" => {
            if let Some(delta) = &event.delta {
                state.text.push(delta.text.as_str());
                if let Some(t) = &delta.tool_use {
                    state.text.push(t.input.as_str());
                }
                if let Some(r) = &delta.reasoning_content {
                    state.text.push(r.text.as_str());
                }
            }
        }
        "messageStop" => state.stop_reason_seen = true,
        "metadata" => {
            if let Some(wire) = &event.usage {
                state.usage = Some(wire.usage());
            }
            state.completed = true;
        }
        _ => {}
    }
    Ok(())
}

/// Accounts one `InvokeModelWithResponseStream` event: a `chunk` carries a model-native JSON
/// payload, base64 in `bytes`; Bedrock adds `amazon-bedrock-invocationMetrics`
/// (`inputTokenCount`, `outputTokenCount`, `cacheReadInputTokenCount`,
/// `cacheWriteInputTokenCount`) to the last one, which gives the usage and ends the stream. Text
/// is read from the payload shapes of the main model families: Anthropic `delta.text`, Amazon
/// Titan/Nova `outputText`, Meta `generation`, legacy Claude `completion`. An exception marks
/// the stream failed. Source: Bedrock user guide, "Invoke a model with response streaming"
/// (<https://docs.aws.amazon.com/bedrock/latest/userguide/inference-invoke.html>).
pub(crate) fn on_invoke_event(
    state: &mut StreamState,
    name: &str,
    data: &[u8],
) -> Result<(), serde_json::Error> {
    use base64::Engine as _;
    if is_exception(name) {
        state.saw_error = true;
        return Ok(());
    }
    if name != "chunk" {
        return Ok(());
    }
    let part: PayloadPart = serde_json::from_slice(data)?;
    let Ok(inner) = base64::engine::general_purpose::STANDARD.decode(part.bytes.as_str()) else {
        return Err(serde::de::Error::custom("chunk.bytes is not base64"));
    };
    let chunk: InvokeChunk = serde_json::from_slice(&inner)?;
    if let Some(delta) = &chunk.delta {
        state.text.push(delta.text.as_str());
    }
    for piece in [&chunk.output_text, &chunk.generation, &chunk.completion] {
        state.text.push(piece.as_str());
    }
    if let Some(m) = chunk.metrics {
        state.usage = Some(Usage {
            prompt_tokens: m.input_token_count.unwrap_or(0),
            completion_tokens: m.output_token_count.unwrap_or(0),
            cached_tokens: m.cache_read_input_token_count.unwrap_or(0),
            cache_write_tokens: m.cache_write_input_token_count.unwrap_or(0),
            reasoning_tokens: 0,
        });
        state.completed = true;
    }
    Ok(())
}

/// `PayloadPart`: `{"bytes": "<base64>"}`.
#[derive(Deserialize)]
struct PayloadPart<'a> {
    #[serde(default, borrow)]
    bytes: Text<'a>,
}

/// The members of a model-native stream chunk that accounting reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvokeChunk<'a> {
    #[serde(default, borrow)]
    delta: Option<InvokeDelta<'a>>,
    #[serde(default, borrow)]
    output_text: Text<'a>,
    #[serde(default, borrow)]
    generation: Text<'a>,
    #[serde(default, borrow)]
    completion: Text<'a>,
    #[serde(default, rename = "amazon-bedrock-invocationMetrics")]
    metrics: Option<InvocationMetrics>,
}

#[derive(Deserialize)]
struct InvokeDelta<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvocationMetrics {
    #[serde(default)]
    input_token_count: Option<u64>,
    #[serde(default)]
    output_token_count: Option<u64>,
    #[serde(default)]
    cache_read_input_token_count: Option<u64>,
    #[serde(default)]
    cache_write_input_token_count: Option<u64>,
}

/// The usage of a non-streamed `InvokeModel` answer, from the headers Bedrock sets on it
/// (`x-amzn-bedrock-input-token-count`, `x-amzn-bedrock-output-token-count`); `None` when
/// either is missing or not a number. `header` looks a header up by its lower-case name.
pub fn invoke_header_usage<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Option<Usage> {
    let count = |name: &str| header(name)?.trim().parse::<u64>().ok();
    Some(Usage {
        prompt_tokens: count("x-amzn-bedrock-input-token-count")?,
        completion_tokens: count("x-amzn-bedrock-output-token-count")?,
        ..Usage::default()
    })
}

/// Commit on content: `messageStart` and `contentBlockStop` hold; an exception is an error
/// (its type as the code, e.g. `throttlingException`); every other event commits
/// (`contentBlockStart` opens a tool call, which is output).
pub(crate) fn opening(name: &str) -> Signal {
    match name {
        "messageStart" | "contentBlockStop" => Signal::Holds,
        _ if is_exception(name) => Signal::Error(super::error_code([Some(
            &serde_json::Value::String(name.to_owned()),
        )])),
        _ => Signal::Content,
    }
}

/// A `Converse` response body: `output.message.content[]` and `usage`.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default, borrow)]
    output: Option<Output<'a>>,
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: Option<Vec<Block<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Block<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    /// `toolUse` blocks: re-serialized for the estimate.
    #[serde(default)]
    tool_use: Option<serde_json::Value>,
}

/// Reads a whole `Converse` body: its `usage` (`None` when absent, null or when the body is
/// not this JSON), and its generated text appended to `text` (`text` blocks, `toolUse` blocks
/// as compact JSON).
pub(crate) fn body(raw: &[u8], text: &mut TextBuf) -> Option<Usage> {
    let body: Body = serde_json::from_slice(raw).ok()?;
    let blocks = body
        .output
        .and_then(|o| o.message)
        .and_then(|m| m.content)
        .unwrap_or_default();
    for block in &blocks {
        text.push(block.text.as_str());
        if let Some(tool) = &block.tool_use {
            text.push(&tool.to_string());
        }
    }
    body.usage.map(|w| w.usage())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_and_body() {
        let mut state = StreamState::default();
        on_event(&mut state, "messageStart", br#"{"role":"assistant"}"#).unwrap();
        on_event(
            &mut state,
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"text":"Hel"}}"#,
        )
        .unwrap();
        on_event(
            &mut state,
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"text":"lo"},"p":"abc"}"#,
        )
        .unwrap();
        on_event(&mut state, "messageStop", br#"{"stopReason":"end_turn"}"#).unwrap();
        assert!(!state.completed);
        on_event(
            &mut state,
            "metadata",
            br#"{"usage":{"inputTokens":12,"outputTokens":3,"totalTokens":15,"cacheReadInputTokens":4},"metrics":{"latencyMs":9}}"#,
        )
        .unwrap();
        assert!(state.completed && !state.saw_error);
        assert_eq!(state.text.as_str(), "Hello");
        let u = state.usage.unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (12, 3, 4)
        );
        on_event(&mut state, "throttlingException", b"{}").unwrap();
        assert!(state.saw_error);
        assert!(on_event(&mut state, "contentBlockDelta", b"{nope").is_err());

        let mut text = TextBuf::default();
        let u = body(
            br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":5,"outputTokens":1,"totalTokens":6,"cacheWriteInputTokens":2}}"#,
            &mut text,
        )
        .unwrap();
        assert_eq!(text.as_str(), "Hi");
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cache_write_tokens),
            (5, 1, 2)
        );
    }

    #[test]
    fn invoke_stream_chunks_and_metrics() {
        use base64::Engine as _;
        let chunk = |inner: &str| {
            let b = base64::engine::general_purpose::STANDARD.encode(inner);
            format!(r#"{{"bytes":"{b}"}}"#)
        };
        let mut state = StreamState::default();
        let delta = r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi"}}"#;
        on_invoke_event(&mut state, "chunk", chunk(delta).as_bytes()).unwrap();
        assert!(!state.completed && state.usage.is_none());
        let stop = r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":3,"invocationLatency":90,"firstByteLatency":40}}"#;
        on_invoke_event(&mut state, "chunk", chunk(stop).as_bytes()).unwrap();
        assert!(state.completed);
        assert_eq!(state.text.as_str(), "Hi");
        let u = state.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (12, 3));
        assert!(on_invoke_event(&mut state, "chunk", br#"{"bytes":"!!"}"#).is_err());
        let headers = [
            ("x-amzn-bedrock-input-token-count", "7"),
            ("x-amzn-bedrock-output-token-count", "2"),
        ];
        let find = |n: &str| headers.iter().find(|h| h.0 == n).map(|h| h.1);
        let u = invoke_header_usage(find).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (7, 2));
        assert!(invoke_header_usage(|_| None).is_none());
    }

    #[test]
    fn opening_signals() {
        assert_eq!(opening("messageStart"), Signal::Holds);
        assert_eq!(opening("contentBlockDelta"), Signal::Content);
        assert_eq!(
            opening("serviceUnavailableException"),
            Signal::Error(Some("serviceUnavailableException".into()))
        );
    }
}
