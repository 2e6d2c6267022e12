//! Exact token accounting from LLM API responses (response path): usage read from streamed and
//! non-streamed bodies, generated text for estimates, and prompt-token estimates with tiktoken.
//!
//! The proxy picks an [`ApiKind`] from the request path, then feeds the upstream body to a
//! [`SseAccountant`] (text/event-stream) or a [`JsonAccountant`] (application/json). Both are
//! generic: the stream framers (`framing`: `sse`, ...) and the two accountants (`stream`, `json_body`) dispatch per
//! [`ApiKind`] to one wire module per API (`wire::openai_chat`, `wire::openai_responses`,
//! `wire::anthropic_messages`, `wire::openai_embeddings`), each holding both its stream event
//! and its body parsing. When the
//! upstream reports no usage, [`estimate::count_tokens`] over the accountant's output text and
//! [`estimate::estimate_prompt_tokens`] over the request body give an estimate instead.

pub mod counter;
pub mod estimate;

mod framing;
mod json_body;
mod sse;
mod stream;
mod strip;
mod wire;

#[cfg(test)]
mod tests;

pub use estimate::{count_tokens, estimate_prompt_tokens};
pub use json_body::JsonAccountant;
pub use stream::SseAccountant;

/// Token counts of one response, as the upstream reported them. All counts are tokens (u64);
/// a field the upstream did not send (absent or `null`) is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens. OpenAI chat/completions/embeddings `usage.prompt_tokens`; Responses
    /// `usage.input_tokens`; Gemini `usageMetadata.promptTokenCount` (INCLUDES its cached
    /// part) plus `toolUsePromptTokenCount`; Anthropic `usage.input_tokens` as given, which EXCLUDES the
    /// cache reads and writes counted in `cached_tokens` / `cache_write_tokens`. OpenAI's
    /// `prompt_tokens` / `input_tokens` INCLUDE their cached part.
    pub prompt_tokens: u64,
    /// Output tokens. OpenAI `usage.completion_tokens`; Responses and Anthropic
    /// `usage.output_tokens` (Anthropic: the last, cumulative `message_delta` value); Gemini
    /// `usageMetadata.candidatesTokenCount` PLUS `thoughtsTokenCount` (Gemini's candidates
    /// count excludes the thinking tokens, which are billed as output: added so that, as for
    /// OpenAI, the output count includes reasoning).
    pub completion_tokens: u64,
    /// Input tokens read from the prompt cache. OpenAI `usage.prompt_tokens_details.cached_tokens`;
    /// Responses `usage.input_tokens_details.cached_tokens`; Anthropic
    /// `usage.cache_read_input_tokens`; Gemini `usageMetadata.cachedContentTokenCount`.
    pub cached_tokens: u64,
    /// Input tokens written to the prompt cache: Anthropic `usage.cache_creation_input_tokens`
    /// (OpenAI does not report cache writes: always 0 there).
    pub cache_write_tokens: u64,
    /// Reasoning tokens, already included in `completion_tokens`. OpenAI
    /// `usage.completion_tokens_details.reasoning_tokens`; Responses
    /// `usage.output_tokens_details.reasoning_tokens`; Gemini `usageMetadata.thoughtsTokenCount`;
    /// Anthropic reports none (0).
    pub reasoning_tokens: u64,
}

impl Usage {
    /// The largest of its counts (tokens), to judge whether the report is plausible.
    pub fn largest(&self) -> u64 {
        [
            self.prompt_tokens,
            self.completion_tokens,
            self.cached_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// Which API a response belongs to, decided by the proxy from the request path
/// (see [`ApiKind::from_path`]). It selects the wire format the accountants parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// OpenAI chat completions, `POST /v1/chat/completions` (also Azure
    /// `/openai/deployments/{d}/chat/completions`).
    OpenAiChat,
    /// OpenAI legacy completions, `POST /v1/completions`: the same usage shape as chat,
    /// text in `choices[].text`.
    OpenAiCompletions,
    /// OpenAI Responses API, `POST /v1/responses`.
    OpenAiResponses,
    /// Anthropic Messages API, `POST /v1/messages`.
    AnthropicMessages,
    /// OpenAI embeddings, `POST /v1/embeddings`: usage `prompt_tokens` only.
    Embeddings,
    /// Google Gemini `POST /v1beta/models/{model}:generateContent` (a JSON
    /// `GenerateContentResponse`) and `:streamGenerateContent?alt=sse` (SSE, one
    /// `GenerateContentResponse` per `data:` event, no terminal event); usage from
    /// `usageMetadata`.
    GeminiGenerateContent,
}

impl ApiKind {
    /// The API of a request path, matched on how the path ends after dropping any query string
    /// (`?...`), fragment and trailing `/`, so prefixes are free: `/v1/chat/completions`,
    /// `/openai/deployments/x/chat/completions?api-version=..` and `/anthropic/v1/messages` all
    /// match. Endings: `/chat/completions` -> chat, `/completions` -> legacy completions,
    /// `/responses` -> Responses, `/v1/messages` (or exactly `/messages`) -> Anthropic,
    /// `/embeddings` -> embeddings, `:generateContent` or `:streamGenerateContent` (the Gemini
    /// method after the model, `/v1beta/models/{model}:{method}`) -> Gemini. Anything else is
    /// `None` (Gemini `:countTokens`, `:embedContent`: passed through), e.g. `/v1/models`,
    /// `/v1/messages/count_tokens`, `/v1/responses/{id}`, or OpenAI Assistants'
    /// `/v1/threads/{id}/messages` (hence the `/v1` required before `/messages`).
    pub fn from_path(path: &str) -> Option<ApiKind> {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        let path = path[..end].trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(ApiKind::OpenAiChat)
        } else if path.ends_with("/completions") {
            Some(ApiKind::OpenAiCompletions)
        } else if path.ends_with("/responses") {
            Some(ApiKind::OpenAiResponses)
        } else if path.ends_with("/v1/messages") || path == "/messages" {
            Some(ApiKind::AnthropicMessages)
        } else if path.ends_with("/embeddings") {
            Some(ApiKind::Embeddings)
        } else if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") {
            Some(ApiKind::GeminiGenerateContent)
        } else {
            None
        }
    }
}
