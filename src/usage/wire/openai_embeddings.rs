//! OpenAI embeddings wire format (never streamed): an embeddings body -> usage
//! (`usage.prompt_tokens`, `usage.total_tokens`); it generates no text.
//!
//! Source: OpenAI API reference, "Embeddings" (the create-embeddings response: `data[]`,
//! `model`, `usage`).

use serde::Deserialize;

use super::openai_chat::WireUsage;
use crate::usage::Usage;

/// The one field of an embeddings body that accounting reads; `data[]` (the vectors, often
/// base64) is skipped without being decoded.
#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Reads a whole non-streamed body's `usage` (`None` when absent, null or when the body is not
/// this JSON). `usage.prompt_tokens` is the input; there is no output.
pub(crate) fn body(raw: &[u8]) -> Option<Usage> {
    let body: Body = serde_json::from_slice(raw).ok()?;
    body.usage.map(|u| u.to_usage())
}
