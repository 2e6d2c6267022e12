//! OpenAI-compatible servers (vLLM, llama.cpp, Ollama...): OpenAI's wire format, auth and
//! errors (delegated to [`super::openai::OpenAi`]); they may never send usage, which the
//! accounting then estimates. Kept as its own kind so it can diverge without touching OpenAI.

use super::openai::OpenAi;
use super::{ErrorStyle, Provider};
use pingora_http::RequestHeader;

/// The OpenAI-compatible provider.
pub struct OpenAiCompatible;

impl Provider for OpenAiCompatible {
    fn set_auth(&self, req: &mut RequestHeader, key: &str) -> pingora_error::Result<()> {
        OpenAi.set_auth(req, key)
    }

    fn upstream_path(&self, base: &str, pq: &str, m: Option<&str>, v: Option<&str>) -> String {
        OpenAi.upstream_path(base, pq, m, v)
    }

    fn error_style(&self) -> ErrorStyle {
        OpenAi.error_style()
    }
}
