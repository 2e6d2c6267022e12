//! Non-streamed response accountant (response body path): keeps a copy of a JSON body up to a
//! cap, then reads its usage and generated text.

use serde::Deserialize;

use super::openai_chat::Function;
use super::wire::{Text, TextBuf};
use super::{anthropic, openai_chat, openai_responses, ApiKind, Usage};

/// Accountant for one non-streamed JSON response body (chat/completions, completions,
/// responses, messages, embeddings). It keeps a copy of the (decoded, identity-encoded) body
/// up to `max_bytes`; the proxy forwards the original bytes itself and this never alters them.
pub struct JsonAccountant {
    api: ApiKind,
    max_bytes: usize,
    body: Vec<u8>,
    over_cap: bool,
    parsed: Option<Parsed>,
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
        }
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

    /// Bytes of the body copy held now: at most `max_bytes`.
    pub fn held_bytes(&self) -> usize {
        self.body.len()
    }

    /// Parses the collected body and returns its usage: `None` when absent, null, unparseable
    /// or over the cap. Embeddings `usage.prompt_tokens`; chat and completions `usage` with
    /// `prompt_tokens_details.cached_tokens` and `completion_tokens_details.reasoning_tokens`;
    /// Responses `usage.input_tokens` / `output_tokens` and their details; Anthropic `usage`
    /// `input_tokens`, `output_tokens`, `cache_creation_input_tokens`, `cache_read_input_tokens`.
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
            return Parsed::default();
        }
        let mut text = TextBuf::default();
        let usage = match self.api {
            ApiKind::OpenAiChat | ApiKind::OpenAiCompletions => parse_chat(&self.body, &mut text),
            ApiKind::Embeddings => serde_json::from_slice::<ChatBody>(&self.body)
                .ok()
                .and_then(|b| b.usage.map(|u| u.to_usage())),
            ApiKind::OpenAiResponses => parse_responses(&self.body, &mut text),
            ApiKind::AnthropicMessages => parse_anthropic(&self.body, &mut text),
        };
        Parsed {
            usage,
            text: text.as_str().to_owned(),
        }
    }
}

#[derive(Deserialize)]
struct ChatBody<'a> {
    #[serde(default)]
    usage: Option<openai_chat::WireUsage>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChatChoice<'a>>>,
}

#[derive(Deserialize)]
struct ChatChoice<'a> {
    #[serde(default, borrow)]
    message: Option<ChatMessage<'a>>,
    #[serde(default, borrow)]
    text: Text<'a>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(default, borrow)]
    content: Text<'a>,
    #[serde(default, borrow)]
    refusal: Text<'a>,
    #[serde(default, borrow)]
    reasoning_content: Text<'a>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ChatToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ChatToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
}

fn parse_chat(body: &[u8], text: &mut TextBuf) -> Option<Usage> {
    let body: ChatBody = serde_json::from_slice(body).ok()?;
    for choice in body.choices.iter().flatten() {
        text.push(choice.text.as_str());
        let Some(message) = &choice.message else {
            continue;
        };
        text.push(message.reasoning_content.as_str());
        text.push(message.content.as_str());
        text.push(message.refusal.as_str());
        for call in message.tool_calls.iter().flatten() {
            if let Some(function) = &call.function {
                text.push(function.arguments.as_str());
            }
        }
    }
    body.usage.map(|u| u.to_usage())
}

#[derive(Deserialize)]
struct ResponsesBody<'a> {
    #[serde(default)]
    usage: Option<openai_responses::WireUsage>,
    #[serde(default, borrow)]
    output: Option<Vec<OutputItem<'a>>>,
}

#[derive(Deserialize)]
struct OutputItem<'a> {
    #[serde(default, borrow)]
    content: Option<Vec<TextPart<'a>>>,
    /// `function_call` items.
    #[serde(default, borrow)]
    arguments: Text<'a>,
}

#[derive(Deserialize)]
struct TextPart<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    refusal: Text<'a>,
}

fn parse_responses(body: &[u8], text: &mut TextBuf) -> Option<Usage> {
    let body: ResponsesBody = serde_json::from_slice(body).ok()?;
    for item in body.output.iter().flatten() {
        for part in item.content.iter().flatten() {
            text.push(part.text.as_str());
            text.push(part.refusal.as_str());
        }
        text.push(item.arguments.as_str());
    }
    body.usage.map(|u| u.to_usage())
}

#[derive(Deserialize)]
struct AnthropicBody<'a> {
    #[serde(default)]
    usage: Option<anthropic::WireUsage>,
    #[serde(default, borrow)]
    content: Option<Vec<AnthropicBlock<'a>>>,
}

#[derive(Deserialize)]
struct AnthropicBlock<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    thinking: Text<'a>,
    /// `tool_use` blocks: the arguments object (re-serialized for the estimate).
    #[serde(default)]
    input: Option<serde_json::Value>,
}

fn parse_anthropic(body: &[u8], text: &mut TextBuf) -> Option<Usage> {
    let body: AnthropicBody = serde_json::from_slice(body).ok()?;
    for block in body.content.iter().flatten() {
        text.push(block.thinking.as_str());
        text.push(block.text.as_str());
        if let Some(input) = &block.input {
            text.push(&input.to_string());
        }
    }
    let wire = body.usage?;
    let mut usage = Usage::default();
    wire.apply(&mut usage);
    Some(usage)
}
