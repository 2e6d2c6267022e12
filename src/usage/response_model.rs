//! The model that answered, as each API's response names it: the trace's
//! `gen_ai.response.model` (OpenTelemetry GenAI spans,
//! <https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/>). Read only when tracing
//! is on, from the JSON body or the first events of a stream. [`first_str`], the reader of a
//! stream's first events, also gives the response cache a stored stream's response id.
//!
//! Where each API names it:
//! - OpenAI chat and legacy completions, embeddings: `model` of the body and of every stream
//!   chunk (API reference, "The chat completion object" / "chunk object");
//! - OpenAI Responses: `model` of the response object; in a stream, `response.model` of
//!   `response.created` (API reference, "Streaming events");
//! - Anthropic Messages: `model` of the message; in a stream, `message.model` of
//!   `message_start` (Messages streaming docs);
//! - Gemini: `modelVersion` of `GenerateContentResponse`, body and every chunk (Gemini API
//!   reference, `GenerateContentResponse`);
//! - Ollama: `model` of the body and of every NDJSON line (Ollama `docs/api.md`);
//! - Bedrock Converse and InvokeModel: not in the answer (`None`).

use super::ApiKind;
use serde_json::Value;

/// JSON documents of a stream's head read at most.
const MAX_EVENTS: usize = 16;

/// The model named by a whole JSON answer `body`; `None` when the API does not name one or the
/// body is not that JSON.
pub fn of_body(api: ApiKind, body: &[u8]) -> Option<String> {
    let key = body_key(api)?;
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get(key)?.as_str().map(str::to_owned)
}

/// The model named by the first events of a stream: `head` is the stream's first bytes as
/// received (SSE `data:` lines or NDJSON lines; a line cut at the end of `head` is skipped).
pub fn of_stream(api: ApiKind, head: &[u8]) -> Option<String> {
    let path: &[&str] = match api {
        ApiKind::OpenAiChat
        | ApiKind::OpenAiCompletions
        | ApiKind::Embeddings
        | ApiKind::OllamaChat
        | ApiKind::OllamaGenerate
        | ApiKind::OllamaEmbed => &["model"],
        ApiKind::OpenAiResponses => &["response", "model"],
        ApiKind::AnthropicMessages => &["message", "model"],
        ApiKind::GeminiGenerateContent => &["modelVersion"],
        ApiKind::BedrockConverse | ApiKind::BedrockInvoke => return None,
    };
    first_str(head, &[path])
}

/// The first string found at one of `paths` (each a chain of object keys; tried in order per
/// event) in the first JSON events of a stream head: SSE `data:` lines or NDJSON lines, at most
/// `MAX_EVENTS` (16) of them; a line that is not a whole JSON object (`[DONE]`, a line cut at the
/// end of `head`) is skipped.
pub fn first_str(head: &[u8], paths: &[&[&str]]) -> Option<String> {
    head.split(|b| *b == b'\n')
        .map(|line| {
            let line = line.trim_ascii();
            line.strip_prefix(b"data:").unwrap_or(line).trim_ascii()
        })
        .filter(|json| json.first() == Some(&b'{'))
        .take(MAX_EVENTS)
        .filter_map(|json| serde_json::from_slice::<Value>(json).ok())
        .find_map(|v| {
            paths.iter().find_map(|path| {
                path.iter()
                    .try_fold(&v, |at, key| at.get(key))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
        })
}

/// The top-level member naming the model in a JSON answer of `api`.
fn body_key(api: ApiKind) -> Option<&'static str> {
    match api {
        ApiKind::OpenAiChat
        | ApiKind::OpenAiCompletions
        | ApiKind::Embeddings
        | ApiKind::OpenAiResponses
        | ApiKind::AnthropicMessages
        | ApiKind::OllamaChat
        | ApiKind::OllamaGenerate
        | ApiKind::OllamaEmbed => Some("model"),
        ApiKind::GeminiGenerateContent => Some("modelVersion"),
        ApiKind::BedrockConverse | ApiKind::BedrockInvoke => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers() {
        let chat = br#"{"id":"c","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[]}"#;
        assert_eq!(
            of_body(ApiKind::OpenAiChat, chat).as_deref(),
            Some("gpt-4o-mini-2024-07-18")
        );
        let gemini = br#"{"candidates":[],"modelVersion":"gemini-2.0-flash"}"#;
        assert_eq!(
            of_body(ApiKind::GeminiGenerateContent, gemini).as_deref(),
            Some("gemini-2.0-flash")
        );
        assert_eq!(of_body(ApiKind::BedrockConverse, chat), None);
        assert_eq!(of_body(ApiKind::OpenAiChat, b"{\"model\":"), None);
        assert_eq!(of_body(ApiKind::OpenAiChat, br#"{"model":7}"#), None);
    }

    #[test]
    fn stream_heads() {
        let chat =
            b"data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[]}\r\n\r\ndata: [DONE]\n\n";
        assert_eq!(
            of_stream(ApiKind::OpenAiChat, chat).as_deref(),
            Some("gpt-4o")
        );
        let anthropic = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-x\"}}\n\n";
        assert_eq!(
            of_stream(ApiKind::AnthropicMessages, anthropic).as_deref(),
            Some("claude-x")
        );
        let responses = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"model\":\"gpt-4.1\"}}\n\n";
        assert_eq!(
            of_stream(ApiKind::OpenAiResponses, responses).as_deref(),
            Some("gpt-4.1")
        );
        let ollama = b"{\"model\":\"llama3.2\",\"message\":{\"content\":\"Hi\"},\"done\":false}\n";
        assert_eq!(
            of_stream(ApiKind::OllamaChat, ollama).as_deref(),
            Some("llama3.2")
        );
        // A line cut at the end of the head is skipped; the model stays unknown.
        let cut = b"data: {\"id\":\"c\",\"model\":\"gpt";
        assert_eq!(of_stream(ApiKind::OpenAiChat, cut), None);
        assert_eq!(of_stream(ApiKind::BedrockConverse, chat), None);
    }
}
