//! Google Gemini `generateContent` wire format, streamed and not: one `GenerateContentResponse`
//! per SSE `data:` event of `:streamGenerateContent?alt=sse`, or the whole body of
//! `:generateContent` -> usage (`usageMetadata`), generated text, finish and error flags.
//!
//! A Gemini stream has no terminal event: it is complete when its last event carried a
//! `finishReason` on every candidate (or a `promptFeedback.blockReason`), usage was reported,
//! and the body ended cleanly (see `SseAccountant::ended_after_final_content`).
//!
//! Sources: Gemini API reference, "Generating content" <https://ai.google.dev/api/generate-content>
//! (`GenerateContentResponse`: `candidates[].content.parts[]`, `candidates[].finishReason`,
//! `promptFeedback.blockReason`, `usageMetadata` with `promptTokenCount`,
//! `cachedContentTokenCount`, `candidatesTokenCount`, `toolUsePromptTokenCount`,
//! `thoughtsTokenCount`, `totalTokenCount`), and the Google API error model
//! <https://cloud.google.com/apis/design/errors> (`{"error":{"code","message","status"}}`, also
//! what a stream carries when it fails).

use serde::Deserialize;

use super::{Few, Signal, Text, TextBuf};
use crate::usage::stream::StreamState;
use crate::usage::Usage;

/// `usageMetadata`. Every count is cumulative for the response so far: in a stream the last
/// event's object is the whole response's.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
    #[serde(default)]
    tool_use_prompt_token_count: Option<u64>,
}

impl WireUsage {
    /// sluice's [`Usage`]: prompt = `promptTokenCount` (cached part included) +
    /// `toolUsePromptTokenCount`; completion = `candidatesTokenCount` + `thoughtsTokenCount`
    /// (candidates exclude thoughts; both are output); cached = `cachedContentTokenCount`;
    /// reasoning = `thoughtsTokenCount`. Absent counts are 0.
    fn usage(&self) -> Usage {
        let n = |v: Option<u64>| v.unwrap_or(0);
        Usage {
            prompt_tokens: n(self.prompt_token_count)
                .saturating_add(n(self.tool_use_prompt_token_count)),
            completion_tokens: n(self.candidates_token_count)
                .saturating_add(n(self.thoughts_token_count)),
            cached_tokens: n(self.cached_content_token_count),
            cache_write_tokens: 0,
            reasoning_tokens: n(self.thoughts_token_count),
        }
    }
}

/// The fields of a `GenerateContentResponse` (or of an error object in its place) that
/// accounting reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    #[serde(default, borrow)]
    candidates: Option<Few<Candidate<'a>>>,
    #[serde(default)]
    usage_metadata: Option<WireUsage>,
    #[serde(default, borrow)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    /// A stream that failed: `{"error":{"code","message","status"}}` (null: no error).
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(default, borrow)]
    content: Option<Content<'a>>,
    /// `STOP`, `MAX_TOKENS`, `SAFETY`...: set on the candidate's last chunk only.
    #[serde(default, borrow)]
    finish_reason: Text<'a>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(default, borrow)]
    parts: Option<Few<Part<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    /// Text, or a thought summary when the part has `thought: true`.
    #[serde(default, borrow)]
    text: Text<'a>,
    /// `{"name","args"}`: counted as its compact JSON.
    #[serde(default)]
    function_call: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    /// Set when the prompt was blocked: the response then has no candidates.
    #[serde(default, borrow)]
    block_reason: Text<'a>,
}

impl Response<'_> {
    fn candidates(&self) -> impl Iterator<Item = &Candidate<'_>> + '_ {
        self.candidates.iter().flat_map(Few::iter)
    }

    fn parts(&self) -> impl Iterator<Item = &Part<'_>> + '_ {
        self.candidates()
            .filter_map(|c| c.content.as_ref()?.parts.as_ref())
            .flat_map(Few::iter)
    }

    /// Every candidate finished (at least one present), or the prompt was blocked.
    fn finished(&self) -> bool {
        let blocked = self
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| !f.block_reason.as_str().is_empty());
        let has_candidates = self.candidates.as_ref().is_some_and(|c| !c.is_empty());
        blocked
            || (has_candidates
                && self
                    .candidates()
                    .all(|c| !c.finish_reason.as_str().is_empty()))
    }

    fn has_candidates(&self) -> bool {
        self.candidates.as_ref().is_some_and(|c| !c.is_empty())
    }

    fn is_error(&self) -> bool {
        self.error.as_ref().is_some_and(|e| !e.is_null())
    }

    fn push_text(&self, text: &mut TextBuf) {
        for part in self.parts() {
            text.push(part.text.as_str());
            if let Some(call) = &part.function_call {
                text.push(&call.to_string());
            }
        }
    }
}

/// Accounts one stream event (its `data:`, one `GenerateContentResponse`). Usage: the event's
/// `usageMetadata` replaces what earlier events said (cumulative counts). Finish: whether
/// this event finished every candidate; an event without candidates (usage only) after a
/// finishing one keeps it finished. An `error` object marks the stream failed.
pub(crate) fn on_event(state: &mut StreamState, data: &[u8]) -> Result<(), serde_json::Error> {
    let event: Response = serde_json::from_slice(data)?;
    if event.is_error() {
        state.saw_error = true;
        return Ok(());
    }
    event.push_text(&mut state.text);
    if let Some(wire) = &event.usage_metadata {
        state.usage = Some(wire.usage());
    }
    state.stop_reason_seen =
        event.finished() || (state.stop_reason_seen && !event.has_candidates());
    Ok(())
}

/// Commit on content: what one Gemini stream event says (see [`super::Signal`]). An `error`
/// object is an error (its `status`, such as `UNAVAILABLE`, else the name its numeric `code`
/// stands for); an
/// event with text, a function call, a finish reason or a blocked prompt is content; one whose
/// candidates carry only empty parts holds. Unparseable data counts as content.
pub(crate) fn opening(data: &[u8]) -> Signal {
    let Ok(event) = serde_json::from_slice::<Response>(data) else {
        return Signal::Content;
    };
    if let Some(error) = event.error.as_ref().filter(|e| !e.is_null()) {
        // Its canonical name, else the name its numeric code stands for.
        let code = super::error_code([error.pointer("/status")]).or_else(|| {
            let code = error.pointer("/code")?.as_u64()?;
            let name = crate::provider::gemini_status_name(u16::try_from(code).ok()?);
            Some(name.to_owned())
        });
        return Signal::Error(code);
    }
    let output = event
        .parts()
        .any(|p| !p.text.as_str().is_empty() || p.function_call.is_some());
    if output || event.finished() || !event.has_candidates() {
        Signal::Content
    } else {
        Signal::Holds
    }
}

/// Reads a whole non-streamed `GenerateContentResponse`: its usage (`None` when
/// `usageMetadata` is absent or the body is not this JSON), and its generated text appended
/// to `text` (`candidates[].content.parts[].text`, function calls as compact JSON). Also
/// reads `:streamGenerateContent` without `alt=sse`, which the API answers with a JSON array
/// of `GenerateContentResponse`s: the text of each, the usage of the last that has one.
pub(crate) fn body(raw: &[u8], text: &mut TextBuf) -> Option<Usage> {
    if raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let chunks: Vec<Response> = serde_json::from_slice(raw).ok()?;
        chunks.iter().for_each(|c| c.push_text(text));
        let last = chunks.iter().rev().find_map(|c| c.usage_metadata.as_ref());
        return last.map(WireUsage::usage);
    }
    let body: Response = serde_json::from_slice(raw).ok()?;
    body.push_text(text);
    body.usage_metadata.as_ref().map(WireUsage::usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thoughts_count_as_output_and_reasoning() {
        let raw = br#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":3,"cachedContentTokenCount":4,"thoughtsTokenCount":7,"toolUsePromptTokenCount":2,"totalTokenCount":22}}"#;
        let mut text = TextBuf::default();
        let u = body(raw, &mut text).unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (12, 10, 4, 7)
        );
        assert_eq!(text.as_str(), "Hi");
    }

    #[test]
    fn an_error_without_status_is_named_by_its_code() {
        assert_eq!(
            opening(br#"{"error":{"code":429,"message":"m"}}"#),
            Signal::Error(Some("RESOURCE_EXHAUSTED".into()))
        );
    }

    #[test]
    fn a_json_array_stream_reads_every_text_and_the_last_usage() {
        let raw = br#"[{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":1}},
 {"candidates":[{"content":{"parts":[{"text":"b"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":4}}]"#;
        let mut text = TextBuf::default();
        let u = body(raw, &mut text).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (2, 4));
        assert_eq!(text.as_str(), "ab");
    }

    #[test]
    fn openings() {
        assert_eq!(
            opening(br#"{"error":{"code":503,"message":"m","status":"UNAVAILABLE"}}"#),
            Signal::Error(Some("UNAVAILABLE".into()))
        );
        assert_eq!(
            opening(br#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"}}]}"#),
            Signal::Holds
        );
        assert_eq!(
            opening(br#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}]}"#),
            Signal::Content
        );
        assert_eq!(
            opening(br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}}]}}]}"#),
            Signal::Content
        );
    }
}
