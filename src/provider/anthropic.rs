//! Anthropic Messages API: `x-api-key` (the client's `anthropic-version` and beta headers pass
//! through), paths as sent, errors as `{"type":"error","error":{"type","message"}}`.

use super::{join, ErrorStyle, Provider};
use bytes::Bytes;
use pingora_http::RequestHeader;

/// The Anthropic provider.
pub struct Anthropic;

impl Provider for Anthropic {
    fn set_auth(&self, req: &mut RequestHeader, key: &str) -> pingora_error::Result<()> {
        req.insert_header("x-api-key", key)
    }

    fn upstream_path(&self, base: &str, pq: &str, _: Option<&str>, _: Option<&str>) -> String {
        join(base, pq)
    }

    fn error_style(&self) -> ErrorStyle {
        ErrorStyle::Anthropic
    }
}

/// Anthropic error body (source: Anthropic API reference, "Errors": `{"type":"error","error":{"type","message"}}`).
pub(super) fn error_body(kind: &str, message: &str) -> Bytes {
    let v = serde_json::json!({
        "type": "error",
        "error": { "type": kind, "message": message }
    });
    Bytes::from(v.to_string())
}
