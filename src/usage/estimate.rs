//! Token estimates (used when the upstream reports no usage): the BPE each model family uses,
//! text counts, and a prompt estimate from a request body.
//!
//! The tokenizer is the `tiktoken` crate (goliajp/rust-tiktoken): OpenAI's o200k_base and
//! cl100k_base vocabularies and pre-tokenization patterns, counting the same tokens as OpenAI's
//! `tiktoken` (checked against `tiktoken-rs` in `src/usage/tests` and `benches/tokenizers.rs`)
//! with about half the memory of `tiktoken-rs`. Each encoding's tables are built on the first
//! use of that encoding only.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use tiktoken::CoreBpe;

use super::ApiKind;

/// OpenAI's per-message framing in chat prompts (`<|start|>role ... <|end|>`), from its
/// token-counting cookbook: about 3 tokens per message, plus 3 that prime the reply.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_REPLY_PRIMING: u64 = 3;

/// Deepest JSON nesting walked when collecting prompt text (serde_json already stops at 128).
const MAX_DEPTH: usize = 16;

/// The OpenAI (tiktoken) encoding [`count_tokens`] uses for a model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `o200k_base`: gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1/o3/o4, chatgpt-4o, gpt-oss, and the
    /// fallback for every other model.
    O200kBase,
    /// `cl100k_base`: gpt-4 (not 4o/4.1/4.5), gpt-3.5 (`gpt-35` on Azure), text-embedding-*.
    Cl100kBase,
}

/// The encoding for `model`, matched case-insensitively on its name after any provider prefix
/// (`openai/`, `azure/`) and fine-tune prefix (`ft:`). Models of other vendors (Claude, Llama,
/// Mistral, unknown names) get `o200k_base`: Anthropic publishes no tokenizer, so their counts
/// are an approximation only.
pub fn encoding_for(model: &str) -> Encoding {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let name = name.strip_prefix("ft:").unwrap_or(&name);
    const O200K: [&str; 9] = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
        "gpt-oss",
    ];
    const CL100K: [&str; 4] = ["gpt-4", "gpt-3.5", "gpt-35", "text-embedding-"];
    if O200K.iter().any(|p| name.starts_with(p)) {
        Encoding::O200kBase
    } else if CL100K.iter().any(|p| name.starts_with(p)) {
        Encoding::Cl100kBase
    } else {
        Encoding::O200kBase
    }
}

/// Per [`Encoding`] (its index): whether its tables are built.
static LOADED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
/// Per [`Encoding`]: whether a background build was started.
static LOADING: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// `encoding`'s tokenizer, its tables built on the first call for that encoding only (a
/// `OnceLock` in the crate, from its compressed vocabulary embedded in the binary).
fn tokenizer(encoding: Encoding) -> Option<&'static CoreBpe> {
    let name = match encoding {
        Encoding::O200kBase => "o200k_base",
        Encoding::Cl100kBase => "cl100k_base",
    };
    // `None` only if the crate were built without that vocabulary (its Cargo features).
    let t = tiktoken::get_encoding(name);
    LOADED[encoding as usize].store(true, Ordering::Release);
    t
}

/// Whether `model`'s tokenizer tables are built, so counting costs no start-up delay. Each
/// encoding's tables are built on its first need (see `benches/tokenizers.rs` for the time
/// and memory each takes).
pub fn is_loaded(model: &str) -> bool {
    LOADED[encoding_for(model) as usize].load(Ordering::Acquire)
}

/// Build `model`'s tokenizer tables on a background thread (once per encoding), so a later
/// [`count_tokens`] does not stall the request path.
pub fn load_in_background(model: &str) {
    let enc = encoding_for(model);
    if LOADING[enc as usize].swap(true, Ordering::AcqRel) {
        return;
    }
    std::thread::spawn(move || {
        tokenizer(enc);
    });
}

/// Builds both encodings' tables now rather than on first need; for benches and tools that
/// want the build out of their measurements (the server builds each on its first need).
pub fn preload() {
    tokenizer(Encoding::O200kBase);
    tokenizer(Encoding::Cl100kBase);
}

/// Number of tokens (u64) of `text` in `model`'s encoding (see [`encoding_for`]), counting
/// special-token look-alikes such as `<|endoftext|>` as ordinary text, as the APIs do for user
/// content. Empty text is 0. The first call for an encoding builds its tables (see
/// [`is_loaded`]).
pub fn count_tokens(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    tokenizer(encoding_for(model)).map_or(0, |t| t.count(text) as u64)
}

/// Estimated prompt tokens (u64) of a request body (already parsed JSON) for `api`:
/// [`count_tokens`] of the request's text joined with newlines, plus OpenAI's framing of
/// 3 tokens per message and 3 for the reply (none for embeddings). Text taken: chat
/// `messages[]` role, name and content (a string, or parts with `text`), tool calls, and
/// `tools` as JSON; legacy completions `prompt`; Responses `instructions`, `input` (a string or
/// items: message content, function call arguments and outputs) and `tools`; Anthropic `system`
/// and `messages[]` (text, thinking, tool_use input, tool_result content) and `tools`;
/// embeddings `input` (a string or strings; arrays of token ids count their length); Gemini
/// `systemInstruction` and `contents[]` (role, part text, function calls and responses) and
/// `tools`. Images, audio and files are not counted, so multimodal prompts are underestimated.
/// Ollama: chat as OpenAI chat; generate `system` and `prompt`; embed `input` (or `prompt`).
/// Ollama's models have their own tokenizers: tiktoken's count is only an estimate of theirs.
/// Bedrock: Converse `system` and `messages`; InvokeModel `system`, `messages`, `prompt`,
/// `inputText`.
pub fn estimate_prompt_tokens(api: ApiKind, model: &str, body: &Value) -> u64 {
    let mut text = String::new();
    let mut messages = 0u64;
    let mut token_ids = 0u64;
    match api {
        ApiKind::OpenAiChat | ApiKind::AnthropicMessages | ApiKind::OllamaChat => {
            if let Some(system) = body.get("system") {
                messages += 1;
                collect(system, &mut text, 0);
            }
            for message in array(body.get("messages")) {
                messages += 1;
                collect(message, &mut text, 0);
            }
        }
        ApiKind::OpenAiResponses => {
            if let Some(instructions) = body.get("instructions") {
                messages += 1;
                collect(instructions, &mut text, 0);
            }
            match body.get("input") {
                Some(Value::Array(items)) => {
                    messages += items.len() as u64;
                    items.iter().for_each(|item| collect(item, &mut text, 0));
                }
                Some(input) => {
                    messages += 1;
                    collect(input, &mut text, 0);
                }
                None => {}
            }
        }
        ApiKind::OpenAiCompletions => prompt_input(body.get("prompt"), &mut text, &mut token_ids),
        ApiKind::Embeddings => prompt_input(body.get("input"), &mut text, &mut token_ids),
        ApiKind::OllamaGenerate => {
            if let Some(system) = body.get("system") {
                messages += 1;
                collect(system, &mut text, 0);
            }
            messages += 1;
            prompt_input(body.get("prompt"), &mut text, &mut token_ids);
        }
        // `/api/embed` takes `input`; the older `/api/embeddings` takes `prompt`.
        ApiKind::OllamaEmbed => {
            prompt_input(body.get("input"), &mut text, &mut token_ids);
            prompt_input(body.get("prompt"), &mut text, &mut token_ids);
        }
        // Bedrock Converse: `system[]` blocks and `messages[]` (`content[].text`); InvokeModel
        // bodies are model-native: Anthropic-shaped (`system`, `messages`) or a `prompt` /
        // `inputText` string (Bedrock "Inference request parameters" per model family).
        ApiKind::BedrockConverse | ApiKind::BedrockInvoke => {
            if let Some(system) = body.get("system") {
                messages += 1;
                collect(system, &mut text, 0);
            }
            for message in array(body.get("messages")) {
                messages += 1;
                collect(message, &mut text, 0);
            }
            for key in ["prompt", "inputText"] {
                prompt_input(body.get(key), &mut text, &mut token_ids);
            }
        }
        ApiKind::GeminiGenerateContent => {
            let system = body.get("systemInstruction").into_iter();
            for content in system.chain(array(body.get("contents"))) {
                messages += 1;
                gemini_content(content, &mut text);
            }
        }
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        push(&mut text, &tools.to_string());
    }
    let framing = if messages > 0 {
        messages * TOKENS_PER_MESSAGE + TOKENS_REPLY_PRIMING
    } else {
        0
    };
    count_tokens(model, &text) + token_ids + framing
}

fn array(value: Option<&Value>) -> &[Value] {
    match value {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

fn push(text: &mut String, piece: &str) {
    if piece.is_empty() {
        return;
    }
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(piece);
}

/// A Gemini `Content` (`{"role","parts":[...]}`): its role, each part's `text`, and
/// `functionCall` / `functionResponse` parts as JSON (Gemini API reference, "Content").
fn gemini_content(content: &Value, text: &mut String) {
    if let Some(Value::String(role)) = content.get("role") {
        push(text, role);
    }
    for part in array(content.get("parts")) {
        if let Some(Value::String(s)) = part.get("text") {
            push(text, s);
        }
        for key in ["functionCall", "functionResponse"] {
            if let Some(v) = part.get(key) {
                push(text, &v.to_string());
            }
        }
    }
}

/// Embeddings `input` / completions `prompt`: a string, strings, token ids, or arrays of ids.
fn prompt_input(value: Option<&Value>, text: &mut String, token_ids: &mut u64) {
    match value {
        Some(Value::String(s)) => push(text, s),
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => push(text, s),
                    Value::Number(_) => *token_ids += 1,
                    Value::Array(ids) => *token_ids += ids.len() as u64,
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Collects the text of a message, content part, or input item. Keys read: `role`, `name`,
/// `content`, `text`, `thinking`, `arguments`, `output`, `input` (tool_use, as JSON),
/// `tool_calls` / `function` (chat tool calls); images, audio, ids and signatures are skipped.
fn collect(value: &Value, text: &mut String, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        Value::String(s) => push(text, s),
        Value::Array(items) => items.iter().for_each(|item| collect(item, text, depth + 1)),
        Value::Object(map) => {
            for key in ["role", "name", "text", "thinking", "arguments"] {
                if let Some(Value::String(s)) = map.get(key) {
                    push(text, s);
                }
            }
            for key in ["content", "output", "tool_calls", "function"] {
                if let Some(inner) = map.get(key) {
                    collect(inner, text, depth + 1);
                }
            }
            if let Some(input) = map.get("input").filter(|v| v.is_object()) {
                push(text, &input.to_string());
            }
        }
        _ => {}
    }
}
