//! The error an upstream reported, read from its native error body or in-stream error event,
//! for failover rules that match on it (`routes[].failover.retry_on_error_codes` /
//! `retry_on_error_messages`) and for the content-filter rule (never retried).
//!
//! Shapes read (the first that fits):
//! - OpenAI and Azure OpenAI, `{"error":{"message","type","param","code"}}` (OpenAI API
//!   reference, "Error codes"; Azure adds `error.innererror.code`, e.g.
//!   `ResponsibleAIPolicyViolation`, Azure OpenAI "Content filtering");
//! - Anthropic, `{"type":"error","error":{"type","message"}}` (Anthropic API reference,
//!   "Errors"), in a body and in the `event: error` of a stream;
//! - OpenAI Responses stream events: `{"type":"error","code","message"}` and
//!   `{"type":"response.failed","response":{"error":{"code","message"}}}` (OpenAI API
//!   reference, "Streaming events");
//! - Ollama, `{"error":"message"}` in a body or a stream line (Ollama docs/api.md): the
//!   message only.
//! - Gemini, `{"error":{"code":503,"message","status":"UNAVAILABLE"}}` (Google API error
//!   model, <https://cloud.google.com/apis/design/errors>): `status` reads as the type, the
//!   numeric `code` as the code.

use serde::Deserialize;

/// An upstream's error as it reported it. Fields absent from the body are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NativeError {
    /// OpenAI `error.type` / Anthropic `error.type` (`invalid_request_error`, `overloaded_error`)
    /// / Gemini `error.status` (`UNAVAILABLE`).
    pub kind: Option<String>,
    /// OpenAI `error.code` (`context_length_exceeded`, `content_filter`), Azure's
    /// `error.innererror.code` when `error.code` is absent.
    pub code: Option<String>,
    /// Azure `error.innererror.code` (`ResponsibleAIPolicyViolation`).
    pub inner_code: Option<String>,
    /// The human-readable message.
    pub message: Option<String>,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    error: Option<ErrorField>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    response: Option<ResponseObject>,
}

/// `error` as an object (OpenAI, Anthropic) or a string (Ollama).
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Object(ErrorObject),
    Text(String),
}

#[derive(Deserialize)]
struct ResponseObject {
    #[serde(default)]
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// A string, or a number on some OpenAI-compatible servers.
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    innererror: Option<InnerError>,
    /// Gemini's canonical code name (`RESOURCE_EXHAUSTED`, `UNAVAILABLE`); Azure sends the
    /// HTTP status there as a number, which is ignored.
    #[serde(default)]
    status: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct InnerError {
    #[serde(default)]
    code: Option<String>,
}

fn code_text(v: Option<serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl NativeError {
    /// The error in `raw` (a whole error body or one stream event's `data`), `None` when it is
    /// not JSON in one of the shapes above (a body cut at the read bound included).
    pub fn parse(raw: &[u8]) -> Option<NativeError> {
        let body: Body = serde_json::from_slice(raw).ok()?;
        let inner = match body.error {
            Some(ErrorField::Text(message)) => {
                return Some(NativeError {
                    message: Some(message),
                    ..NativeError::default()
                })
            }
            Some(ErrorField::Object(e)) => Some(e),
            None => None,
        };
        let inner = inner.or(body.response.and_then(|r| r.error));
        match inner {
            Some(e) => Some(NativeError {
                kind: e.kind.or(match e.status {
                    Some(serde_json::Value::String(s)) => Some(s),
                    _ => None,
                }),
                code: code_text(e.code),
                inner_code: e.innererror.and_then(|i| i.code),
                message: e.message,
            }),
            // The Responses `error` event: the code and message at the top level.
            None if body.kind.as_deref() == Some("error") => Some(NativeError {
                kind: None,
                code: code_text(body.code),
                inner_code: None,
                message: body.message,
            }),
            None => None,
        }
    }

    /// A content-filter rejection (its code or inner code is one, see
    /// [`is_content_filter_code`]): passed to the client unchanged, never retried.
    pub fn is_content_filter(&self) -> bool {
        [&self.code, &self.inner_code, &self.kind]
            .into_iter()
            .flatten()
            .any(|c| is_content_filter_code(c))
    }

    /// Whether `codes` lists this error's code or type (exactly), or one of `messages`
    /// (lower-cased) is in its message (case-insensitive). Never for a content filter.
    pub fn matches(&self, codes: &[String], messages: &[String]) -> bool {
        if self.is_content_filter() {
            return false;
        }
        let listed = |v: &Option<String>| v.as_ref().is_some_and(|v| codes.contains(v));
        if listed(&self.code) || listed(&self.kind) {
            return true;
        }
        let Some(message) = &self.message else {
            return false;
        };
        let message = message.to_lowercase();
        messages.iter().any(|m| message.contains(m.as_str()))
    }
}

/// Codes of content-filter rejections (case-insensitive): Azure OpenAI `content_filter` and
/// its inner `ResponsibleAIPolicyViolation` ("Content filtering"), OpenAI
/// `content_policy_violation` (images) and `invalid_prompt` (a prompt flagged by its usage
/// policies, "Error codes").
pub fn is_content_filter_code(code: &str) -> bool {
    [
        "content_filter",
        "content_policy_violation",
        "responsibleaipolicyviolation",
        "invalid_prompt",
    ]
    .iter()
    .any(|c| code.eq_ignore_ascii_case(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn openai_context_length_matches_by_code() {
        let raw = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let e = NativeError::parse(raw).unwrap();
        assert_eq!(e.code.as_deref(), Some("context_length_exceeded"));
        assert!(e.matches(&codes(&["context_length_exceeded"]), &[]));
        assert!(!e.matches(&codes(&["rate_limit_exceeded"]), &[]));
        assert!(!e.is_content_filter());
    }

    #[test]
    fn ollama_string_errors_match_by_message() {
        let e = NativeError::parse(br#"{"error":"model 'x' not found"}"#).unwrap();
        assert_eq!(e.message.as_deref(), Some("model 'x' not found"));
        assert_eq!((&e.code, &e.kind), (&None, &None));
        assert!(e.matches(&[], &codes(&["not found"])));
        assert!(NativeError::parse(br#"{"error":null}"#).is_none());
    }

    #[test]
    fn anthropic_matches_by_type_or_message() {
        let raw = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        let e = NativeError::parse(raw).unwrap();
        assert_eq!(e.kind.as_deref(), Some("invalid_request_error"));
        assert!(e.matches(&[], &codes(&["prompt is too long"])));
        assert!(e.matches(&codes(&["invalid_request_error"]), &[]));
        assert!(!e.matches(&[], &codes(&["overloaded"])));
    }

    #[test]
    fn content_filters_never_match() {
        let azure = br#"{"error":{"message":"filtered","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#;
        let e = NativeError::parse(azure).unwrap();
        assert!(e.is_content_filter());
        assert!(!e.matches(&codes(&["content_filter"]), &codes(&["filtered"])));
        let inner_only = br#"{"error":{"message":"x","type":"invalid_request_error","innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#;
        let e = NativeError::parse(inner_only).unwrap();
        assert!(e.is_content_filter());
        assert!(!e.matches(&codes(&["invalid_request_error"]), &[]));
    }

    #[test]
    fn responses_stream_errors_parse() {
        let event = br#"{"type":"error","code":"server_error","message":"boom","param":null,"sequence_number":3}"#;
        let e = NativeError::parse(event).unwrap();
        assert_eq!(e.code.as_deref(), Some("server_error"));
        let failed = br#"{"type":"response.failed","sequence_number":4,"response":{"id":"resp_1","error":{"code":"server_error","message":"boom"}}}"#;
        assert_eq!(
            NativeError::parse(failed).unwrap().code.as_deref(),
            Some("server_error")
        );
    }

    #[test]
    fn gemini_matches_by_status() {
        let raw = br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;
        let e = NativeError::parse(raw).unwrap();
        assert_eq!(e.kind.as_deref(), Some("UNAVAILABLE"));
        assert_eq!(e.code.as_deref(), Some("503"));
        assert!(e.matches(&codes(&["UNAVAILABLE"]), &[]));
        assert!(!e.matches(&codes(&["RESOURCE_EXHAUSTED"]), &[]));
    }

    #[test]
    fn not_an_error_body_is_none() {
        assert_eq!(NativeError::parse(b"{\"error\":{\"message\":\"cut"), None);
        assert_eq!(NativeError::parse(b"<html>502</html>"), None);
        assert_eq!(NativeError::parse(br#"{"id":"chatcmpl-1"}"#), None);
        // A numeric code (some compatible servers) reads as text.
        let e = NativeError::parse(br#"{"error":{"code":400,"message":"m"}}"#).unwrap();
        assert_eq!(e.code.as_deref(), Some("400"));
    }
}
