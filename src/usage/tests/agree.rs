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

/// A JSON value whose members keep the order they were generated in.
#[derive(Debug, Clone)]
enum J {
    Null,
    Num(u64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// How to write a value: whitespace pieces to draw from (cycled) and whether to escape
/// every non-ASCII character as `\u` (surrogate pairs above U+FFFF) and `/` as `\/`.
#[derive(Debug, Clone)]
struct Style {
    spaces: Vec<&'static str>,
    next: usize,
    escape_all: bool,
}

impl Style {
    fn ws(&mut self, out: &mut String) {
        if !self.spaces.is_empty() {
            out.push_str(self.spaces[self.next % self.spaces.len()]);
            self.next += 1;
        }
    }

    fn write(&mut self, j: &J, out: &mut String) {
        self.ws(out);
        match j {
            J::Null => out.push_str("null"),
            J::Num(n) => out.push_str(&n.to_string()),
            J::Str(s) => self.string(s, out),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.write(item, out);
                }
                self.ws(out);
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.ws(out);
                    self.string(k, out);
                    self.ws(out);
                    out.push(':');
                    self.write(v, out);
                }
                self.ws(out);
                out.push('}');
            }
        }
        self.ws(out);
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '/' if self.escape_all => out.push_str("\\/"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if self.escape_all && !c.is_ascii() => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Whitespace JSON allows between tokens (RFC 8259 section 2).
fn style() -> impl Strategy<Value = Style> {
    (
        proptest::collection::vec(
            proptest::sample::select(vec!["", "", "", " ", "  ", "\t", " \r\n ", "\n"]),
            0..6,
        ),
        any::<bool>(),
    )
        .prop_map(|(spaces, escape_all)| Style {
            spaces,
            next: 0,
            escape_all,
        })
}

/// Strings that try to fool a scanner: usage-looking text, quotes, backslashes, non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z ]{0,8}",
        1 => Just("\"usage\":null,\"usage\":{\"prompt_tokens\":9}".to_owned()),
        1 => Just("caf\u{e9} \u{65e5}\u{672c} \u{1F600} a/b \\ \" }]".to_owned()),
        1 => Just("{\"type\":\"message_stop\"}\n\ndata: [DONE]".to_owned()),
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

/// Members that no parser reads (ids, model names, timestamps, logprobs, obfuscation).
fn noise() -> impl Strategy<Value = Vec<(String, J)>> {
    let key = proptest::sample::select(vec![
        "id",
        "object",
        "model",
        "created",
        "system_fingerprint",
        "obfuscation",
        "logprobs",
        "x_usage",
        "Usage",
    ]);
    let value = prop_oneof![
        Just(J::Null),
        any::<u64>().prop_map(J::Num),
        text().prop_map(J::Str),
        text().prop_map(|t| J::Obj(vec![("usage".into(), J::Str(t))])),
        text().prop_map(|t| J::Arr(vec![J::Str(t), J::Null])),
    ];
    proptest::collection::vec((key.prop_map(str::to_owned), value), 0..3)
}

/// `Some(v)` becomes the member `(k, v)`; all members shuffled by `order` (a permutation seed).
fn object(members: Vec<(&str, Option<J>)>, noise: Vec<(String, J)>, order: u64) -> J {
    let mut all: Vec<(String, J)> = members
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect();
    // Noise keys may repeat a real one in another case or prefix, never exactly.
    for (k, v) in noise {
        if !all.iter().any(|(a, _)| *a == k) {
            all.push((k, v));
        }
    }
    let mut seed = order;
    for i in (1..all.len()).rev() {
        let j = (seed % (i as u64 + 1)) as usize;
        seed = seed.rotate_left(7) ^ 0x9e37_79b9_7f4a_7c15;
        all.swap(i, j);
    }
    J::Obj(all)
}

fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.6, s)
}

fn null_or_str() -> impl Strategy<Value = J> {
    prop_oneof![Just(J::Null), text().prop_map(J::Str)]
}

fn counts(keys: &'static [&'static str]) -> impl Strategy<Value = J> {
    (
        proptest::collection::vec(opt(any::<u64>()), keys.len()),
        any::<u64>(),
    )
        .prop_map(move |(values, order)| {
            let members = keys
                .iter()
                .zip(values)
                .map(|(k, v)| (*k, v.map(J::Num)))
                .collect();
            object(members, vec![], order)
        })
}

fn chat_usage() -> impl Strategy<Value = J> {
    (
        counts(&["prompt_tokens", "completion_tokens", "total_tokens"]),
        opt(counts(&["cached_tokens", "audio_tokens"])),
        opt(counts(&["reasoning_tokens"])),
    )
        .prop_map(|(base, prompt, completion)| {
            let J::Obj(mut members) = base else {
                unreachable!()
            };
            members.extend(prompt.map(|p| ("prompt_tokens_details".to_owned(), p)));
            members.extend(completion.map(|c| ("completion_tokens_details".to_owned(), c)));
            J::Obj(members)
        })
}

fn function() -> impl Strategy<Value = J> {
    (opt(text()), opt(text()), any::<u64>()).prop_map(|(name, args, order)| {
        object(
            vec![("name", name.map(J::Str)), ("arguments", args.map(J::Str))],
            vec![],
            order,
        )
    })
}

fn chat_choice() -> impl Strategy<Value = J> {
    let tool_call = (opt(0u64..3), opt(function()), any::<u64>()).prop_map(|(i, f, order)| {
        object(
            vec![("index", i.map(J::Num)), ("function", f)],
            vec![],
            order,
        )
    });
    let delta = (
        opt(text()),
        opt(null_or_str()),
        opt(text()),
        opt(proptest::collection::vec(tool_call, 0..3)),
        opt(function()),
        any::<u64>(),
    )
        .prop_map(
            |(content, refusal, reasoning, calls, function_call, order)| {
                object(
                    vec![
                        ("role", Some(J::Str("assistant".into()))),
                        ("content", content.map(J::Str)),
                        ("refusal", refusal),
                        ("reasoning_content", reasoning.map(J::Str)),
                        ("tool_calls", calls.map(J::Arr)),
                        ("function_call", function_call),
                    ],
                    vec![],
                    order,
                )
            },
        );
    (
        opt(0u64..70),
        opt(null_or_str()),
        opt(delta),
        opt(text()),
        noise(),
        any::<u64>(),
    )
        .prop_map(|(index, finish, delta, legacy, noise, order)| {
            object(
                vec![
                    ("index", index.map(J::Num)),
                    ("finish_reason", finish),
                    ("delta", delta),
                    ("text", legacy.map(J::Str)),
                ],
                noise,
                order,
            )
        })
}

fn chat_event() -> impl Strategy<Value = J> {
    let usage = prop_oneof![Just(None), Just(Some(J::Null)), chat_usage().prop_map(Some)];
    let error = prop_oneof![
        3 => Just(None),
        1 => Just(Some(J::Null)),
        1 => text().prop_map(|m| Some(J::Obj(vec![("message".into(), J::Str(m))]))),
    ];
    (
        opt(proptest::collection::vec(chat_choice(), 0..3)),
        usage,
        error,
        noise(),
        any::<u64>(),
    )
        .prop_map(|(choices, usage, error, noise, order)| {
            object(
                vec![
                    ("choices", choices.map(J::Arr)),
                    ("usage", usage),
                    ("error", error),
                ],
                noise,
                order,
            )
        })
}

fn anthropic_event() -> impl Strategy<Value = J> {
    let kind = proptest::sample::select(vec![
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    ]);
    let usage = counts(&[
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]);
    let delta = (
        opt(text()),
        opt(text()),
        opt(text()),
        opt(null_or_str()),
        any::<u64>(),
    )
        .prop_map(|(t, pj, th, stop, order)| {
            object(
                vec![
                    ("type", Some(J::Str("text_delta".into()))),
                    ("text", t.map(J::Str)),
                    ("partial_json", pj.map(J::Str)),
                    ("thinking", th.map(J::Str)),
                    ("stop_reason", stop),
                ],
                vec![],
                order,
            )
        });
    let inner = counts(&["input_tokens", "output_tokens", "cache_read_input_tokens"]);
    let message = (opt(inner), noise(), any::<u64>())
        .prop_map(|(u, noise, order)| object(vec![("usage", u)], noise, order));
    (
        opt(kind),
        opt(message),
        opt(usage),
        opt(delta),
        noise(),
        any::<u64>(),
    )
        .prop_map(|(kind, message, usage, delta, noise, order)| {
            object(
                vec![
                    ("type", kind.map(|k| J::Str(k.into()))),
                    ("message", message),
                    ("usage", usage),
                    ("delta", delta),
                ],
                noise,
                order,
            )
        })
}

fn responses_event() -> impl Strategy<Value = J> {
    let kind = proptest::sample::select(vec![
        "response.created",
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.output_text.done",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "error",
    ]);
    let usage = (
        counts(&["input_tokens", "output_tokens", "total_tokens"]),
        opt(counts(&["cached_tokens"])),
        opt(counts(&["reasoning_tokens"])),
    )
        .prop_map(|(base, input, output)| {
            let J::Obj(mut members) = base else {
                unreachable!()
            };
            members.extend(input.map(|d| ("input_tokens_details".to_owned(), d)));
            members.extend(output.map(|d| ("output_tokens_details".to_owned(), d)));
            J::Obj(members)
        });
    let usage = prop_oneof![Just(J::Null), usage];
    let response = (opt(usage), noise(), any::<u64>())
        .prop_map(|(u, noise, order)| object(vec![("usage", u)], noise, order));
    (
        opt(kind),
        opt(any::<u64>()),
        opt(text()),
        opt(response),
        noise(),
        any::<u64>(),
    )
        .prop_map(|(kind, seq, delta, response, noise, order)| {
            object(
                vec![
                    ("type", kind.map(|k| J::Str(k.into()))),
                    ("sequence_number", seq.map(J::Num)),
                    ("delta", delta.map(J::Str)),
                    ("response", response),
                ],
                noise,
                order,
            )
        })
}

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
