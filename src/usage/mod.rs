//! Exact token accounting from LLM API responses (response path): usage read from streamed and
//! non-streamed bodies, generated text for estimates, and prompt-token estimates with tiktoken.
//!
//! The proxy picks an [`ApiKind`] from the request path, then feeds the upstream body to a
//! [`SseAccountant`] (text/event-stream, or application/x-ndjson for Ollama) or a
//! [`JsonAccountant`] (application/json). Both are generic: the stream framers (`framing`:
//! `sse`, `ndjson`) and the two accountants (`stream`, `json_body`) dispatch per
//! [`ApiKind`] to one wire module per API (`wire::openai_chat`, `wire::openai_responses`,
//! `wire::anthropic_messages`, `wire::openai_embeddings`, `wire::ollama`), each holding both its stream event
//! and its body parsing. When the
//! upstream reports no usage, [`estimate::count_tokens`] over the accountant's output text and
//! [`estimate::estimate_prompt_tokens`] over the request body give an estimate instead.

pub mod counter;
pub mod estimate;

mod eventstream;
mod framing;
mod json_body;
mod ndjson;
pub mod response_model;
mod sse;
mod stream;
mod strip;
mod wire;

#[cfg(test)]
mod tests;

pub use estimate::{count_tokens, estimate_prompt_tokens};
pub use eventstream::encode_message as encode_eventstream_message;
pub use json_body::JsonAccountant;
pub use stream::SseAccountant;
pub use wire::bedrock_converse::invoke_header_usage;
pub(crate) use wire::openai_responses::last_sequence_number;

/// Token counts of one response, as the upstream reported them. All counts are tokens (u64);
/// a field the upstream did not send (absent or `null`) is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens. OpenAI chat/completions/embeddings `usage.prompt_tokens`; Responses
    /// `usage.input_tokens`; Gemini `usageMetadata.promptTokenCount` (INCLUDES its cached
    /// part) plus `toolUsePromptTokenCount`; Anthropic `usage.input_tokens` as given, which EXCLUDES the
    /// cache reads and writes counted in `cached_tokens` / `cache_write_tokens`. OpenAI's
    /// `prompt_tokens` / `input_tokens` INCLUDE their cached part. Ollama `prompt_eval_count`.
    pub prompt_tokens: u64,
    /// Output tokens. OpenAI `usage.completion_tokens`; Responses and Anthropic
    /// `usage.output_tokens` (Anthropic: the last, cumulative `message_delta` value); Ollama
    /// `eval_count`; Gemini `usageMetadata.candidatesTokenCount` PLUS `thoughtsTokenCount`
    /// (Gemini's candidates count excludes the thinking tokens, which are billed as output:
    /// added so that, as for OpenAI, the output count includes reasoning).
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
    /// Ollama chat, `POST /api/chat`: NDJSON stream (or one JSON object with `stream: false`),
    /// usage `prompt_eval_count` / `eval_count` in the final (`done: true`) object.
    OllamaChat,
    /// Ollama generate, `POST /api/generate`: as chat, text in `response`.
    OllamaGenerate,
    /// Ollama embeddings, `POST /api/embed` (and the older `/api/embeddings`): usage
    /// `prompt_eval_count` only (the older endpoint reports none).
    OllamaEmbed,
    /// AWS Bedrock Runtime `Converse` and `ConverseStream`, `POST /model/{modelId}/converse`
    /// and `/model/{modelId}/converse-stream` (the stream in AWS event stream framing).
    BedrockConverse,
    /// AWS Bedrock Runtime `InvokeModel` and `InvokeModelWithResponseStream`,
    /// `POST /model/{modelId}/invoke` and `/model/{modelId}/invoke-with-response-stream`:
    /// model-native bodies, passed through; usage from the `x-amzn-bedrock-*-token-count`
    /// response headers or the stream's `amazon-bedrock-invocationMetrics`.
    BedrockInvoke,
}

/// The Bedrock Runtime API of `path` (`/model/{modelId}/{operation}`), if it is one.
fn bedrock_api(path: &str) -> Option<ApiKind> {
    let rest = path.strip_prefix("/model/")?;
    let (model, op) = rest.split_once('/')?;
    if model.is_empty() {
        return None;
    }
    match op {
        "converse" | "converse-stream" => Some(ApiKind::BedrockConverse),
        "invoke" | "invoke-with-response-stream" => Some(ApiKind::BedrockInvoke),
        _ => None,
    }
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
    /// Ollama's `/api/chat`, `/api/generate`, `/api/embed` and `/api/embeddings` are checked
    /// first (see [`ApiKind::OllamaChat`]).
    /// Bedrock: `/model/{modelId}/converse` or `/converse-stream` -> Converse,
    /// `/model/{modelId}/invoke` or `/invoke-with-response-stream` -> InvokeModel (exactly
    /// three segments, the model id one segment, as the AWS SDKs encode it).
    pub fn from_path(path: &str) -> Option<ApiKind> {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        let path = path[..end].trim_end_matches('/');
        if let Some(api) = ApiKind::ollama(path) {
            return Some(api);
        }
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
            bedrock_api(path)
        }
    }
}

impl ApiKind {
    /// Ollama's native API by how `path` (no query, no trailing `/`) ends: `/api/chat`,
    /// `/api/generate`, `/api/embed`, `/api/embeddings`. Source:
    /// <https://github.com/ollama/ollama/blob/main/docs/api.md>.
    fn ollama(path: &str) -> Option<ApiKind> {
        if path.ends_with("/api/chat") {
            Some(ApiKind::OllamaChat)
        } else if path.ends_with("/api/generate") {
            Some(ApiKind::OllamaGenerate)
        } else if path.ends_with("/api/embed") || path.ends_with("/api/embeddings") {
            Some(ApiKind::OllamaEmbed)
        } else {
            None
        }
    }

    /// Whether a request of this API streams when its body has no `stream` member: Ollama's
    /// chat and generate do ("stream: if false the response will be returned as a single
    /// response object", default true, per Ollama's docs/api.md); the others do not.
    pub fn streams_by_default(self) -> bool {
        matches!(self, ApiKind::OllamaChat | ApiKind::OllamaGenerate)
    }
}

/// Whether a response `content-type` is a stream sluice frames event by event:
/// `text/event-stream` (SSE), `application/x-ndjson` (Ollama's NDJSON streams) or
/// `application/vnd.amazon.eventstream` (AWS event stream, Bedrock).
pub fn is_stream_content_type(content_type: &str) -> bool {
    let ct = content_type.trim_start();
    ct.starts_with("text/event-stream")
        || ct.starts_with("application/x-ndjson")
        || ct.starts_with("application/vnd.amazon.eventstream")
}
