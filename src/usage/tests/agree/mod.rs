//! The per-event parsers (targeted, borrowed: most of an event is skipped unread) against a
//! reference that fully parses the event into a `serde_json::Value` and reads the same fields:
//! on arbitrary well-formed events, written with odd whitespace, any key order, escaped
//! strings (`\"usage\":null` inside content, `\u` escapes, surrogate pairs) and noise members,
//! both give the same usage, text, flags and hide-mode verdict.

use proptest::prelude::*;
use serde_json::Value;

use crate::usage::stream::{StreamState, Verdict};
use crate::usage::wire::{anthropic_messages, openai_chat, openai_responses};
use crate::usage::Usage;

mod gen;
use gen::*;

/// What one event told, compared field by field.
#[derive(Debug, PartialEq, Eq)]
struct Told {
    usage: Option<Usage>,
    text: String,
    completed: bool,
    saw_error: bool,
    choices: (u64, u64),
    stop_reason_seen: bool,
    sequence: Option<u64>,
    verdict: Option<Verdict>,
}

impl Told {
    fn of(state: &StreamState, verdict: Option<Verdict>) -> Self {
        Told {
            usage: state.usage,
            text: state.text.as_str().to_owned(),
            completed: state.completed,
            saw_error: state.saw_error,
            choices: (state.choices_seen, state.choices_finished),
            stop_reason_seen: state.stop_reason_seen,
            sequence: state.last_sequence_number,
            verdict,
        }
    }
}

fn num(v: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_u64()
}

fn string<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)?.as_str()
}

/// The reference for chat chunks, over a fully parsed `Value`.
fn chat_reference(v: &Value) -> Told {
    let mut s = StreamState::default();
    if v.get("error").is_some_and(|e| !e.is_null()) {
        s.saw_error = true;
    }
    let choices = v.get("choices").and_then(Value::as_array);
    for c in choices.into_iter().flatten() {
        let bit = 1u64 << num(c, &["index"]).unwrap_or(0).min(63);
        s.choices_seen |= bit;
        if string(c, "finish_reason").is_some() {
            s.choices_finished |= bit;
        }
        s.text.push(string(c, "text").unwrap_or(""));
        let Some(d) = c.get("delta").filter(|d| !d.is_null()) else {
            continue;
        };
        for key in ["reasoning_content", "content", "refusal"] {
            s.text.push(string(d, key).unwrap_or(""));
        }
        let calls = d.get("tool_calls").and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            if let Some(f) = call.get("function") {
                s.text.push(string(f, "arguments").unwrap_or(""));
            }
        }
        if let Some(f) = d.get("function_call") {
            s.text.push(string(f, "arguments").unwrap_or(""));
        }
    }
    let verdict = match v.get("usage") {
        None => Verdict::Keep,
        Some(Value::Null) => Verdict::StripUsageNull,
        Some(u) => {
            s.usage = Some(Usage {
                prompt_tokens: num(u, &["prompt_tokens"]).unwrap_or(0),
                completion_tokens: num(u, &["completion_tokens"]).unwrap_or(0),
                cached_tokens: num(u, &["prompt_tokens_details", "cached_tokens"]).unwrap_or(0),
                cache_write_tokens: 0,
                reasoning_tokens: num(u, &["completion_tokens_details", "reasoning_tokens"])
                    .unwrap_or(0),
            });
            if choices.is_none_or(|c| c.is_empty()) {
                Verdict::Drop
            } else {
                Verdict::Keep
            }
        }
    };
    Told::of(&s, Some(verdict))
}

/// The reference for Anthropic events, over a fully parsed `Value`.
fn anthropic_reference(v: &Value, name: &str) -> Told {
    let mut s = StreamState::default();
    let apply = |u: &Value, usage: &mut Usage| {
        let fields = [
            ("input_tokens", &mut usage.prompt_tokens),
            ("output_tokens", &mut usage.completion_tokens),
            ("cache_creation_input_tokens", &mut usage.cache_write_tokens),
            ("cache_read_input_tokens", &mut usage.cached_tokens),
        ];
        for (key, slot) in fields {
            if let Some(n) = num(u, &[key]) {
                *slot = n;
            }
        }
    };
    let delta = v.get("delta").filter(|d| !d.is_null());
    match string(v, "type").unwrap_or(name) {
        "message_start" => {
            let usage = v.get("message").and_then(|m| m.get("usage"));
            if let Some(u) = usage.filter(|u| !u.is_null()) {
                apply(u, s.usage.get_or_insert_with(Usage::default));
            }
        }
        "message_delta" => {
            s.stop_reason_seen = delta.is_some_and(|d| string(d, "stop_reason").is_some());
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                apply(u, s.usage.get_or_insert_with(Usage::default));
            }
        }
        "content_block_delta" => {
            for key in ["thinking", "text", "partial_json"] {
                s.text
                    .push(delta.and_then(|d| string(d, key)).unwrap_or(""));
            }
        }
        "message_stop" => s.completed = true,
        "error" => s.saw_error = true,
        _ => {}
    }
    Told::of(&s, None)
}

/// The reference for Responses events, over a fully parsed `Value`.
fn responses_reference(v: &Value, name: &str) -> Told {
    let mut s = StreamState::default();
    let kind = string(v, "type").unwrap_or(name);
    s.last_sequence_number = num(v, &["sequence_number"]);
    match kind {
        "response.output_text.delta"
        | "response.refusal.delta"
        | "response.function_call_arguments.delta" => {
            s.text.push(string(v, "delta").unwrap_or(""));
        }
        "response.completed" | "response.incomplete" => s.completed = true,
        "response.failed" | "error" => s.saw_error = true,
        _ => {}
    }
    let terminal = matches!(
        kind,
        "response.completed" | "response.incomplete" | "response.failed"
    );
    let usage = v.get("response").and_then(|r| r.get("usage"));
    if let Some(u) = usage.filter(|u| terminal && !u.is_null()) {
        s.usage = Some(Usage {
            prompt_tokens: num(u, &["input_tokens"]).unwrap_or(0),
            completion_tokens: num(u, &["output_tokens"]).unwrap_or(0),
            cached_tokens: num(u, &["input_tokens_details", "cached_tokens"]).unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: num(u, &["output_tokens_details", "reasoning_tokens"]).unwrap_or(0),
        });
    }
    Told::of(&s, None)
}

fn written(event: &J, mut style: Style) -> Vec<u8> {
    let mut out = String::new();
    style.write(event, &mut out);
    out.into_bytes()
}

const NAMES: [&str; 4] = ["", "message_stop", "error", "response.completed"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chat_parser_agrees_with_a_full_parse(event in chat_event(), style in style()) {
        let data = written(&event, style);
        let full: Value = serde_json::from_slice(&data).unwrap();
        let mut state = StreamState::default();
        let verdict = openai_chat::on_event(&mut state, "", &data);
        prop_assert!(verdict.is_ok(), "{}", String::from_utf8_lossy(&data));
        prop_assert_eq!(Told::of(&state, verdict.ok()), chat_reference(&full));
    }

    #[test]
    fn anthropic_parser_agrees_with_a_full_parse(
        event in anthropic_event(),
        style in style(),
        name in proptest::sample::select(NAMES.to_vec()),
    ) {
        let data = written(&event, style);
        let full: Value = serde_json::from_slice(&data).unwrap();
        let mut state = StreamState::default();
        let parsed = anthropic_messages::on_event(&mut state, name, &data);
        prop_assert!(parsed.is_ok(), "{}", String::from_utf8_lossy(&data));
        prop_assert_eq!(Told::of(&state, None), anthropic_reference(&full, name));
    }

    #[test]
    fn responses_parser_agrees_with_a_full_parse(
        event in responses_event(),
        style in style(),
        name in proptest::sample::select(NAMES.to_vec()),
    ) {
        let data = written(&event, style);
        let full: Value = serde_json::from_slice(&data).unwrap();
        let mut state = StreamState::default();
        let parsed = openai_responses::on_event(&mut state, name, &data);
        prop_assert!(parsed.is_ok(), "{}", String::from_utf8_lossy(&data));
        prop_assert_eq!(Told::of(&state, None), responses_reference(&full, name));
    }
}

/// JSON-ish pieces for chunks that are almost right: bad literals and numbers, escapes,
/// control characters, repeated members, wrong types, deep nesting, trailing bytes.
const CHUNK_VOCAB: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    " ",
    "\n",
    "\"choices\"",
    "\"usage\"",
    "\"error\"",
    "\"index\"",
    "\"delta\"",
    "\"content\"",
    "\"refusal\"",
    "\"reasoning_content\"",
    "\"finish_reason\"",
    "\"text\"",
    "\"tool_calls\"",
    "\"id\"",
    "\"hi\"",
    "\"a\\\"b\"",
    "\"\u{1}\"",
    "\"caf\u{e9}\"",
    "null",
    "nul",
    "nullx",
    "true",
    "0",
    "01",
    "7",
    "-1",
    "1.5",
    "1e3",
    "18446744073709551616",
    "\"stop\"",
    "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}],\"usage\":null}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

/// Values for the structured chunks: valid, almost valid, and of the wrong type.
const VALUE_VOCAB: &[&str] = &[
    "null",
    "nul",
    "nullx",
    "true",
    "0",
    "01",
    "7",
    "-1",
    "1.5",
    "1e3",
    "1.",
    "-",
    "18446744073709551616",
    "\"hi\"",
    "\"a\\\"b\"",
    "\"\u{1}\"",
    "\"caf\u{e9}\"",
    "\"\\u00e9\"",
    "\"stop\"",
    "\"\\u00g9\"",
    "\"\\ud800\"",
    "\"\\uDC00x\"",
    "\"\\u00\"",
    "\"\\u0000\"",
    "{}",
    "[]",
    "[1,]",
    "{\"a\":1}",
    "[{\"function\":{}}]",
    "\"unterminated",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
];

/// Keys the chat parsers read, and some they skip.
const KEY_VOCAB: &[&str] = &[
    "choices",
    "usage",
    "error",
    "index",
    "delta",
    "content",
    "refusal",
    "reasoning_content",
    "finish_reason",
    "text",
    "tool_calls",
    "function_call",
    "id",
    "us\\u0061ge",
];

/// A chunk made of vocabulary pieces, or of members with random keys and values placed at
/// the top level, in a choice, or in a delta (so that near-valid chunks are common).
fn rough_chunk() -> impl Strategy<Value = Vec<u8>> {
    let soup = proptest::collection::vec(proptest::sample::select(CHUNK_VOCAB), 0..24)
        .prop_map(|pieces| pieces.concat());
    let member = (
        proptest::sample::select(KEY_VOCAB),
        proptest::sample::select(VALUE_VOCAB),
    )
        .prop_map(|(k, v)| format!("\"{k}\":{v}"));
    let structured = (
        proptest::collection::vec(member, 0..5),
        0..3u8,
        any::<bool>(),
    )
        .prop_map(|(members, depth, dup)| {
            let mut inner = members.join(",");
            if dup {
                inner = format!("{inner},{inner}");
            }
            match depth {
                0 => format!("{{{inner}}}"),
                1 => format!("{{\"choices\":[{{{inner}}}],\"usage\":null}}"),
                _ => format!("{{\"choices\":[{{\"delta\":{{{inner}}}}}],\"usage\":null}}"),
            }
        });
    prop_oneof![soup, structured].prop_map(String::into_bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The chat fast path only accepts what the typed parse accepts, and reads it the same.
    #[test]
    fn chat_fast_path_accepts_only_what_the_typed_parse_reads_the_same(data in rough_chunk()) {
        let mut fast = StreamState::default();
        if let Some(verdict) = openai_chat::on_event_fast(&mut fast, &data) {
            let mut typed = StreamState::default();
            let parsed = openai_chat::on_event_typed(&mut typed, &data);
            prop_assert!(parsed.is_ok(), "fast path accepted {}", String::from_utf8_lossy(&data));
            prop_assert_eq!(Told::of(&fast, Some(verdict)), Told::of(&typed, parsed.ok()));
        }
    }
}

#[test]
fn chat_content_chunks_take_the_fast_path() {
    let captured = [
        // llmock, and OpenAI (usage before `obfuscation`, `refusal: null` on the first chunk).
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1767225600,"model":"gpt-4o-mini","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":"Hello! "},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-C","object":"chat.completion.chunk","created":1767225600,"model":"gpt-5-mini","service_tier":"default","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}],"usage":null,"obfuscation":"RmYFV8ad65HP9F"}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
    ];
    for data in captured {
        let mut state = StreamState::default();
        let verdict = openai_chat::on_event_fast(&mut state, data.as_bytes());
        assert_eq!(verdict, Some(Verdict::StripUsageNull), "{data}");
    }
    // Simple escapes are decoded by the fast path itself.
    let mut state = StreamState::default();
    let data = r#"{"choices":[{"delta":{"content":"a\n\"b\"\\ \/\t"}}],"usage":null}"#;
    let verdict = openai_chat::on_event_fast(&mut state, data.as_bytes());
    assert_eq!(verdict, Some(Verdict::StripUsageNull));
    assert_eq!(state.text.as_str(), "a\n\"b\"\\ /\t");
    let mut state = StreamState::default();
    let data = r#"{"choices":[{"delta":{"content":"caf\u00e9 \u65E5"}}]}"#;
    let verdict = openai_chat::on_event_fast(&mut state, data.as_bytes());
    assert_eq!(verdict, Some(Verdict::Keep));
    assert_eq!(state.text.as_str(), "caf\u{e9} \u{65e5}");
    // Declined: the usage chunk, tool calls, surrogate escapes (the typed parse reads them).
    for data in [
        r#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
        r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}"#,
        r#"{"choices":[{"delta":{"content":"\ud83d\ude00"}}]}"#,
    ] {
        let mut state = StreamState::default();
        assert_eq!(
            openai_chat::on_event_fast(&mut state, data.as_bytes()),
            None,
            "{data}"
        );
        assert_eq!(state.text.as_str(), "");
    }
}
