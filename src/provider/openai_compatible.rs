//! OpenAI-compatible servers (vLLM, llama.cpp, Ollama...): OpenAI's wire format and auth; they
//! may never send usage, which the accounting then estimates.

use super::{join, ErrorStyle, Provider};
use pingora_http::RequestHeader;

/// The OpenAI-compatible provider.
pub struct OpenAiCompatible;

impl Provider for OpenAiCompatible {
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
