//! Non-streamed JSON bodies (every `.json` fixture) and tiktoken estimates.

use serde_json::json;

use super::{fixture, fixture_dir, u};
use crate::usage::estimate::{encoding_for, Encoding};
use crate::usage::{count_tokens, estimate_prompt_tokens, ApiKind, JsonAccountant, Usage};

fn json_cases() -> Vec<(&'static str, ApiKind, Option<Usage>, &'static str)> {
    use ApiKind::*;
    vec![
        (
            "openai_chat/llmock_chat.json",
            OpenAiChat,
            Some(u(2, 12, 0, 0, 0)),
            "Hello! LLMock handled this request for gpt-4o-mini.",
        ),
        (
            "openai_chat/chat_reasoning_cached.json",
            OpenAiChat,
            Some(u(2150, 310, 2048, 0, 256)),
            "The answer is 42.{\"q\":\"life\"}",
        ),
        (
            "openai_chat/completions.json",
            OpenAiCompletions,
            Some(u(5, 7, 0, 0, 0)),
            "\n\nThis is a test.",
        ),
        (
            "openai_chat/llmock_embeddings.json",
            Embeddings,
            Some(u(5, 0, 0, 0, 0)),
            "",
        ),
        (
            "openai_chat/embeddings_base64.json",
            Embeddings,
            Some(u(8, 0, 0, 0, 0)),
            "",
        ),
        (
            "openai_responses/llmock_response.json",
            OpenAiResponses,
            Some(u(2, 9, 0, 0, 0)),
            "LLMock says hello from gpt-4.1-mini.",
        ),
        (
            "openai_responses/reasoning_cached_tools.json",
            OpenAiResponses,
            Some(u(2150, 310, 2048, 0, 256)),
            "Checking the weather in Zürich — one moment.{\"city\":\"Zürich\"}",
        ),
        (
            "anthropic/llmock_message.json",
            AnthropicMessages,
            Some(u(1, 14, 0, 0, 0)),
            "Hi there. This is a simulated reply from claude-sonnet-4-5.",
        ),
        (
            "anthropic/message_tool_use.json",
            AnthropicMessages,
            Some(u(472, 95, 8192, 1024, 0)),
            "Need the weather tool.I'll check.{\"city\":\"Paris\"}",
        ),
        (
            "gemini/sdk_unary_thoughts.json",
            GeminiGenerateContent,
            Some(u(130, 80, 40, 0, 30)),
            "Thinking step 1...Hello ",
        ),
    ]
}

fn account(api: ApiKind, max_bytes: usize, pieces: &[&[u8]]) -> (Option<Usage>, String) {
    let mut acc = JsonAccountant::new(api, max_bytes);
    for piece in pieces {
        acc.push(piece);
    }
    let usage = acc.finish();
    (usage, acc.output_text())
}

#[test]
fn every_json_fixture_has_a_case() {
    let listed: Vec<&str> = json_cases().iter().map(|c| c.0).collect();
    for dir in ["openai_chat", "openai_responses", "anthropic", "gemini"] {
        for entry in std::fs::read_dir(fixture_dir().join(dir)).unwrap() {
            let name = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
            if name.ends_with(".json") {
                assert!(
                    listed.contains(&name.as_str()),
                    "{name} has no expected usage"
                );
            }
        }
    }
}

#[test]
fn json_fixtures_usage_and_text_in_any_chunking() {
    for (file, api, usage, text) in json_cases() {
        let body = fixture(file);
        assert_eq!(
            account(api, 1 << 20, &[&body]),
            (usage, text.to_owned()),
            "{file}"
        );
        let step = (body.len() / 97).max(1);
        for cut in (0..=body.len()).step_by(step) {
            let (a, b) = body.split_at(cut);
            assert_eq!(account(api, 1 << 20, &[a, b]).0, usage, "{file} cut={cut}");
        }
        // output_text before finish parses on demand.
        let mut acc = JsonAccountant::new(api, 1 << 20);
        acc.push(&body);
        assert_eq!(acc.output_text(), text, "{file}");
    }
}

#[test]
fn json_over_cap_or_unparseable_or_without_usage_is_none() {
    let body = fixture("openai_chat/llmock_chat.json");
    assert_eq!(
        account(ApiKind::OpenAiChat, body.len(), &[&body]).0,
        Some(u(2, 12, 0, 0, 0))
    );
    let (a, b) = body.split_at(10);
    assert_eq!(
        account(ApiKind::OpenAiChat, body.len() - 1, &[a, b]),
        (None, String::new())
    );
    let cases: [&[u8]; 5] = [
        b"",
        b"{\"usage\":{\"prompt_tokens\":1",
        b"\xff\xfe not json",
        b"{\"choices\":[],\"usage\":null}",
        b"{\"error\":{\"message\":\"nope\",\"type\":\"invalid_request_error\"}}",
    ];
    for body in cases {
        for api in [
            ApiKind::OpenAiChat,
            ApiKind::OpenAiResponses,
            ApiKind::AnthropicMessages,
        ] {
            assert_eq!(account(api, 1 << 20, &[body]).0, None, "{api:?} {body:?}");
        }
    }
    // Missing numbers read as 0; a present usage object is still usage.
    let partial = b"{\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":null}}";
    assert_eq!(
        account(ApiKind::OpenAiChat, 1 << 20, &[partial]).0,
        Some(u(7, 0, 0, 0, 0))
    );
}

#[test]
fn count_tokens_matches_tiktoken_for_the_model_family() {
    let text = "hello world";
    let o200k = tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64;
    let cl100k = tiktoken_rs::cl100k_base_singleton()
        .encode_ordinary(text)
        .len() as u64;
    assert_eq!(count_tokens("gpt-4o", text), o200k);
    assert_eq!(count_tokens("gpt-4", text), cl100k);
    // A text where the two encodings disagree proves the model picks the table.
    let text = "Die Straßenbahn fährt um 07:45 — 日本語のテキスト — ¿Qué tal?";
    let o200k = tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64;
    let cl100k = tiktoken_rs::cl100k_base_singleton()
        .encode_ordinary(text)
        .len() as u64;
    assert_ne!(o200k, cl100k);
    assert_eq!(count_tokens("gpt-4o-mini-2024-07-18", text), o200k);
    assert_eq!(count_tokens("gpt-3.5-turbo", text), cl100k);
    assert_eq!(count_tokens("claude-sonnet-4-5", text), o200k);
    assert_eq!(count_tokens("gpt-4o", ""), 0);
    // Special-token look-alikes in user text are plain text.
    assert!(count_tokens("gpt-4o", "<|endoftext|>") > 1);
}

#[test]
fn encoding_per_model_name() {
    use Encoding::*;
    let cases = [
        ("gpt-4o", O200kBase),
        ("GPT-4o-2024-08-06", O200kBase),
        ("openai/gpt-4.1-mini", O200kBase),
        ("gpt-5-nano", O200kBase),
        ("o1-preview", O200kBase),
        ("o3-mini", O200kBase),
        ("o4-mini", O200kBase),
        ("chatgpt-4o-latest", O200kBase),
        ("ft:gpt-4o-mini:acme::abc", O200kBase),
        ("gpt-4", Cl100kBase),
        ("gpt-4-turbo-2024-04-09", Cl100kBase),
        ("gpt-35-turbo", Cl100kBase),
        ("gpt-3.5-turbo", Cl100kBase),
        ("ft:gpt-3.5-turbo:acme::x", Cl100kBase),
        ("text-embedding-3-small", Cl100kBase),
        ("claude-3-5-haiku", O200kBase),
        ("llama-3.1-8b", O200kBase),
        ("", O200kBase),
    ];
    for (model, want) in cases {
        assert_eq!(encoding_for(model), want, "{model}");
    }
}

#[test]
fn chat_estimate_is_text_plus_framing() {
    let body = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi there"}, {"type": "image_url", "image_url": {"url": "data:x"}}]}
    ]});
    let text = "system\nBe brief.\nuser\nHi there";
    let want = count_tokens("gpt-4o", text) + 2 * 3 + 3;
    assert_eq!(
        estimate_prompt_tokens(ApiKind::OpenAiChat, "gpt-4o", &body),
        want
    );
}

/// The estimate of a body built by `make(repeat)` must be positive and grow with `repeat`.
fn grows(api: ApiKind, model: &str, make: impl Fn(&str) -> serde_json::Value) {
    let small = estimate_prompt_tokens(api, model, &make("tell me a story"));
    let large = estimate_prompt_tokens(api, model, &make(&"tell me a long story ".repeat(50)));
    assert!(small > 0, "{api:?}");
    assert!(large > small + 100, "{api:?}: {small} -> {large}");
}

#[test]
fn estimates_are_positive_and_grow_with_the_text() {
    grows(ApiKind::OpenAiChat, "gpt-4o", |t| {
        json!({"messages": [{"role": "user", "content": t}, {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})
    });
    grows(ApiKind::AnthropicMessages, "claude-sonnet-4-5", |t| {
        json!({"system": [{"type": "text", "text": "sys"}], "messages": [
            {"role": "user", "content": [{"type": "text", "text": t}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "42"}]}]})
    });
    grows(
        ApiKind::OpenAiResponses,
        "gpt-4.1",
        |t| json!({"instructions": "x", "input": t}),
    );
    grows(ApiKind::OpenAiResponses, "gpt-4.1", |t| {
        json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": t}]},
            {"type": "function_call_output", "call_id": "c", "output": "sunny"}]})
    });
    grows(
        ApiKind::Embeddings,
        "text-embedding-3-small",
        |t| json!({"input": t}),
    );
    grows(
        ApiKind::Embeddings,
        "text-embedding-3-small",
        |t| json!({"input": [t, "b"]}),
    );
    grows(
        ApiKind::OpenAiCompletions,
        "gpt-3.5-turbo-instruct",
        |t| json!({"prompt": t}),
    );
}

#[test]
fn embeddings_token_id_inputs_count_their_length() {
    let ids = json!({"input": [[1, 2, 3], [4, 5]]});
    assert_eq!(
        estimate_prompt_tokens(ApiKind::Embeddings, "text-embedding-3-small", &ids),
        5
    );
    let flat = json!({"input": [10, 11, 12, 13]});
    assert_eq!(
        estimate_prompt_tokens(ApiKind::Embeddings, "text-embedding-3-small", &flat),
        4
    );
    assert_eq!(
        estimate_prompt_tokens(ApiKind::OpenAiChat, "gpt-4o", &json!({})),
        0
    );
}
