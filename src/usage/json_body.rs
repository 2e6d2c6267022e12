//! Non-streamed response accountant (response body path): keeps a copy of a JSON body up to a
//! cap, then hands it to its API's body parser (in [`super::wire`]) for usage and generated
//! text.

use super::wire::{
    anthropic_messages, bedrock_converse, gemini, ollama, openai_chat, openai_embeddings,
    openai_responses, TextBuf,
};
use super::{ApiKind, Usage};

/// Accountant for one non-streamed JSON response body (chat/completions, completions,
/// responses, messages, embeddings). It keeps a copy of the (decoded, identity-encoded) body
/// up to `max_bytes`; the proxy forwards the original bytes itself and this never alters them.
pub struct JsonAccountant {
    api: ApiKind,
    max_bytes: usize,
    body: Vec<u8>,
    over_cap: bool,
    parsed: Option<Parsed>,
    /// Usage the response header reported (Bedrock `InvokeModel`), see
    /// [`JsonAccountant::with_header_usage`].
    header_usage: Option<Usage>,
}

#[derive(Debug, Default)]
struct Parsed {
    usage: Option<Usage>,
    text: String,
}

impl JsonAccountant {
    /// An accountant for a body of `api`, keeping at most `max_bytes` bytes of it.
    pub fn new(api: ApiKind, max_bytes: usize) -> Self {
        JsonAccountant {
            api,
            max_bytes,
            body: Vec::new(),
            over_cap: false,
            parsed: None,
            header_usage: None,
        }
    }

    /// The usage the response header reported, for an API whose body carries none (Bedrock
    /// `InvokeModel`: [`super::invoke_header_usage`]); it is what [`JsonAccountant::finish`]
    /// returns for that API.
    pub fn with_header_usage(mut self, usage: Option<Usage>) -> Self {
        self.header_usage = usage;
        self
    }

    /// Appends one body chunk. Past `max_bytes` in total the copy is dropped for good and
    /// [`JsonAccountant::finish`] returns `None`.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.over_cap {
            return;
        }
        if self.body.len() + chunk.len() > self.max_bytes {
            self.over_cap = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    /// The body copy held now (empty once it went over `max_bytes`).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Bytes of the body copy held now: at most `max_bytes`.
    pub fn held_bytes(&self) -> usize {
        self.body.len()
    }

    /// Parses the collected body and returns its usage: `None` when absent, null, unparseable
    /// or over the cap. Embeddings `usage.prompt_tokens`; chat and completions `usage` with
    /// `prompt_tokens_details.cached_tokens` and `completion_tokens_details.reasoning_tokens`;
    /// Responses `usage.input_tokens` / `output_tokens` and their details; Anthropic `usage`
    /// `input_tokens`, `output_tokens`, `cache_creation_input_tokens`, `cache_read_input_tokens`;
    /// Gemini `usageMetadata` (see [`Usage`] for how its counts map).
    pub fn finish(&mut self) -> Option<Usage> {
        if self.parsed.is_none() {
            self.parsed = Some(self.parse());
        }
        self.parsed.as_ref().and_then(|p| p.usage)
    }

    /// Generated text in the body, for estimating when usage is missing (capped at 4 MiB;
    /// empty when unparseable or over the cap, and for embeddings). Chat:
    /// `choices[].message.content` (+ `refusal`, `reasoning_content`, tool call
    /// `function.arguments`); completions `choices[].text`; Responses `output[].content[].text`
    /// (+ function call `arguments`); Anthropic `content[].text` (+ `thinking`, tool_use
    /// `input` as JSON).
    pub fn output_text(&self) -> String {
        match &self.parsed {
            Some(parsed) => parsed.text.clone(),
            None => self.parse().text,
        }
    }

    fn parse(&self) -> Parsed {
        if self.over_cap || self.body.is_empty() {
            return Parsed {
                usage: self
                    .header_usage
                    .filter(|_| self.api == ApiKind::BedrockInvoke),
                text: String::new(),
            };
        }
        let mut text = TextBuf::default();
        let usage = match self.api {
            ApiKind::OpenAiChat | ApiKind::OpenAiCompletions => {
                openai_chat::body(&self.body, &mut text)
            }
            ApiKind::Embeddings => openai_embeddings::body(&self.body),
            ApiKind::OpenAiResponses => openai_responses::body(&self.body, &mut text),
            ApiKind::AnthropicMessages => anthropic_messages::body(&self.body, &mut text),
            ApiKind::OllamaChat | ApiKind::OllamaGenerate | ApiKind::OllamaEmbed => {
                ollama::body(&self.body, &mut text)
            }
            ApiKind::BedrockConverse => bedrock_converse::body(&self.body, &mut text),
            // Model-native bodies: the usage comes from the response header, if any.
            ApiKind::BedrockInvoke => self.header_usage,
            ApiKind::GeminiGenerateContent => gemini::body(&self.body, &mut text),
        };
        Parsed {
            usage,
            text: text.as_str().to_owned(),
        }
    }
}
