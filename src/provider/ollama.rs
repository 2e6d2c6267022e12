//! Ollama native API (`/api/chat`, `/api/generate`, `/api/embed`, and every other `/api/*`
//! path passed through): the pool key, when one is configured, as `Authorization: Bearer`
//! (how ollama.com's cloud API and an authenticating proxy in front of a local Ollama take
//! it; a plain local Ollama ignores it), paths as the client sent them, errors as
//! `{"error":"message"}`.
//!
//! Source: Ollama docs/api.md (<https://github.com/ollama/ollama/blob/main/docs/api.md>,
//! "Errors": a JSON object with an `error` string) and the `ollama` Python package, which
//! raises `ollama.ResponseError(error, status_code)` from such a body and from a stream line
//! carrying `error`.

use super::{join, ErrorStyle, Provider};
use bytes::Bytes;
use pingora_http::RequestHeader;

/// The Ollama provider.
pub struct Ollama;

impl Provider for Ollama {
    fn set_auth(&self, req: &mut RequestHeader, key: &str) -> pingora_error::Result<()> {
        req.insert_header("authorization", format!("Bearer {key}"))
    }

    fn upstream_path(&self, base: &str, pq: &str, _: Option<&str>, _: Option<&str>) -> String {
        join(base, pq)
    }

    fn error_style(&self) -> ErrorStyle {
        ErrorStyle::Ollama
    }
}

/// Ollama error body: `{"error":"<message>"}` (the one shape Ollama answers errors in).
pub(super) fn error_body(message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": message }).to_string())
}

/// An in-stream error line: the error body and its `\n` (Ollama sends mid-stream failures as
/// one `{"error":"..."}` line of the NDJSON stream).
pub(super) fn error_line(body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.extend_from_slice(body);
    out.push(b'\n');
    Bytes::from(out)
}
