//! Tests of the usage module against golden fixtures (`tests/fixtures/`) and hostile input.

mod agree;
mod bedrock;
mod bounds;
mod cut;
mod fixtures;
mod json_and_estimate;
mod ollama;
mod opening;
mod props;
mod robustness;

use std::path::PathBuf;

use bytes::Bytes;

use super::{ApiKind, SseAccountant, Usage};

/// A `Usage` from (prompt, completion, cached, cache_write, reasoning).
pub(super) fn u(prompt: u64, completion: u64, cached: u64, write: u64, reasoning: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: cached,
        cache_write_tokens: write,
        reasoning_tokens: reasoning,
    }
}

pub(super) fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub(super) fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A golden fixture of a stream and what replaying it must report (Ollama's and Bedrock's
/// fixture tests).
pub(super) struct Case {
    /// Under `tests/fixtures/`.
    pub file: &'static str,
    pub api: ApiKind,
    pub usage: Option<Usage>,
    pub text: &'static str,
    pub completed: bool,
    pub saw_error: bool,
    pub events: u64,
}

impl Case {
    /// What a clean replay of the fixture's bytes `raw` must report: the case's counts and
    /// text, nothing malformed or oversized, and `raw` forwarded byte for byte.
    pub(super) fn clean(&self, raw: &[u8]) -> Outcome {
        Outcome {
            usage: self.usage,
            text: self.text.to_owned(),
            completed: self.completed,
            saw_error: self.saw_error,
            events: self.events,
            malformed: 0,
            oversized: 0,
            forwarded: raw.to_vec(),
        }
    }
}

/// Everything an accountant reports after a whole stream, plus what it forwarded.
#[derive(PartialEq, Eq)]
pub(super) struct Outcome {
    pub usage: Option<Usage>,
    pub text: String,
    pub completed: bool,
    pub saw_error: bool,
    pub events: u64,
    pub malformed: u64,
    pub oversized: u64,
    pub forwarded: Vec<u8>,
}

impl Outcome {
    /// What the finished accountant `acc` reports, with the bytes it `forwarded`.
    pub(super) fn of(acc: &SseAccountant, forwarded: Vec<u8>) -> Self {
        Outcome {
            usage: acc.usage(),
            text: acc.output_text().to_owned(),
            completed: acc.completed(),
            saw_error: acc.saw_error(),
            events: acc.events(),
            malformed: acc.malformed_events(),
            oversized: acc.oversized_events(),
            forwarded,
        }
    }
}

/// Feeds `pieces` in order, then finishes. Outside hide mode it also checks that a push after
/// which nothing was held hands back a slice of the very chunk it was given (no copy).
pub(super) fn replay<'a>(
    api: ApiKind,
    hide: bool,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Outcome {
    let mut acc = SseAccountant::new(api, hide, 1 << 20);
    let mut forwarded = Vec::new();
    let mut fed = 0;
    for piece in pieces {
        let chunk = Bytes::copy_from_slice(piece);
        let caught_up = fed == forwarded.len();
        fed += chunk.len();
        let out = acc.push(&chunk);
        if !hide && caught_up && !out.is_empty() {
            assert_eq!(
                out.as_ptr(),
                chunk.as_ptr(),
                "push copied in pass-through mode"
            );
        }
        forwarded.extend_from_slice(&out);
    }
    forwarded.extend_from_slice(&acc.finish());
    Outcome::of(&acc, forwarded)
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outcome")
            .field("usage", &self.usage)
            .field("text", &self.text)
            .field("completed", &self.completed)
            .field("saw_error", &self.saw_error)
            .field("events", &self.events)
            .field("malformed", &self.malformed)
            .field("oversized", &self.oversized)
            .field("forwarded", &String::from_utf8_lossy(&self.forwarded))
            .finish()
    }
}

pub(super) fn replay_whole(api: ApiKind, hide: bool, raw: &[u8]) -> Outcome {
    replay(api, hide, [raw])
}

#[test]
fn api_kind_from_path() {
    let cases = [
        ("/v1/chat/completions", Some(ApiKind::OpenAiChat)),
        (
            "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
            Some(ApiKind::OpenAiChat),
        ),
        ("/v1/chat/completions/", Some(ApiKind::OpenAiChat)),
        ("/v1/completions", Some(ApiKind::OpenAiCompletions)),
        ("/v1/responses", Some(ApiKind::OpenAiResponses)),
        ("/v1/responses?stream=true", Some(ApiKind::OpenAiResponses)),
        ("/v1/messages", Some(ApiKind::AnthropicMessages)),
        ("/anthropic/v1/messages", Some(ApiKind::AnthropicMessages)),
        ("/v1/messages?beta=true", Some(ApiKind::AnthropicMessages)),
        ("/v1/embeddings", Some(ApiKind::Embeddings)),
        (
            "/openai/deployments/emb/embeddings?api-version=1",
            Some(ApiKind::Embeddings),
        ),
        (
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            Some(ApiKind::BedrockConverse),
        ),
        ("/model/m/converse-stream", Some(ApiKind::BedrockConverse)),
        ("/model/m/invoke", Some(ApiKind::BedrockInvoke)),
        (
            "/model/m/invoke-with-response-stream",
            Some(ApiKind::BedrockInvoke),
        ),
        ("/model//converse", None),
        ("/model/m/apply-guardrail", None),
        ("/v1/models", None),
        ("/v1/messages/count_tokens", None),
        ("/v1/messages/batches", None),
        ("/v1/responses/resp_123", None),
        ("/v1/threads/thread_1/messages", None),
        ("/v1/chat/completions/chatcmpl-1/messages", None),
        ("/v1/chat/completionsx", None),
        ("", None),
    ];
    for (path, want) in cases {
        assert_eq!(ApiKind::from_path(path), want, "{path}");
    }
}
