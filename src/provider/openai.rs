//! OpenAI (api.openai.com): `Authorization: Bearer`, paths as the client sent them, errors as
//! `{"error":{"message","type","param","code"}}`.

use super::{join, ErrorStyle, Provider};
use bytes::Bytes;
use pingora_http::RequestHeader;

/// The OpenAI provider.
pub struct OpenAi;

impl Provider for OpenAi {
    fn set_auth(&self, req: &mut RequestHeader, key: &str) -> pingora_error::Result<()> {
        req.insert_header("authorization", format!("Bearer {key}"))
    }

    fn upstream_path(&self, base: &str, pq: &str, _: Option<&str>, _: Option<&str>) -> String {
        join(base, pq)
    }

    fn error_style(&self) -> ErrorStyle {
        ErrorStyle::OpenAi
    }
}

/// OpenAI error body (source: OpenAI API reference, "Error codes": `{"error":{"message","type","param","code"}}`).
pub(super) fn error_body(kind: &str, code: Option<&str>, message: &str) -> Bytes {
    let v = serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    Bytes::from(v.to_string())
}
