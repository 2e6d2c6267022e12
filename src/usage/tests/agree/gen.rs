//! Generators of arbitrary well-formed stream events for the agreement tests: a JSON value
//! type that keeps member order, a writer with odd whitespace and escapes, and proptest
//! strategies for chat chunks, Anthropic events and Responses events.

use proptest::prelude::*;

/// A JSON value whose members keep the order they were generated in.
#[derive(Debug, Clone)]
pub(super) enum J {
    Null,
    Num(u64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// How to write a value: whitespace pieces to draw from (cycled) and whether to escape
/// every non-ASCII character as `\u` (surrogate pairs above U+FFFF) and `/` as `\/`.
#[derive(Debug, Clone)]
pub(super) struct Style {
    spaces: Vec<&'static str>,
    next: usize,
    escape_all: bool,
}

impl Style {
    pub(super) fn ws(&mut self, out: &mut String) {
        if !self.spaces.is_empty() {
            out.push_str(self.spaces[self.next % self.spaces.len()]);
            self.next += 1;
        }
    }

    pub(super) fn write(&mut self, j: &J, out: &mut String) {
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

    pub(super) fn string(&self, s: &str, out: &mut String) {
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
pub(super) fn style() -> impl Strategy<Value = Style> {
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
pub(super) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z ]{0,8}",
        1 => Just("\"usage\":null,\"usage\":{\"prompt_tokens\":9}".to_owned()),
        1 => Just("caf\u{e9} \u{65e5}\u{672c} \u{1F600} a/b \\ \" }]".to_owned()),
        1 => Just("{\"type\":\"message_stop\"}\n\ndata: [DONE]".to_owned()),
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

/// Members that no parser reads (ids, model names, timestamps, logprobs, obfuscation).
pub(super) fn noise() -> impl Strategy<Value = Vec<(String, J)>> {
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
pub(super) fn object(members: Vec<(&str, Option<J>)>, noise: Vec<(String, J)>, order: u64) -> J {
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

pub(super) fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.6, s)
}

pub(super) fn null_or_str() -> impl Strategy<Value = J> {
    prop_oneof![Just(J::Null), text().prop_map(J::Str)]
}

pub(super) fn counts(keys: &'static [&'static str]) -> impl Strategy<Value = J> {
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

pub(super) fn chat_usage() -> impl Strategy<Value = J> {
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

pub(super) fn function() -> impl Strategy<Value = J> {
    (opt(text()), opt(text()), any::<u64>()).prop_map(|(name, args, order)| {
        object(
            vec![("name", name.map(J::Str)), ("arguments", args.map(J::Str))],
            vec![],
            order,
        )
    })
}

pub(super) fn chat_choice() -> impl Strategy<Value = J> {
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

pub(super) fn chat_event() -> impl Strategy<Value = J> {
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

pub(super) fn anthropic_event() -> impl Strategy<Value = J> {
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

pub(super) fn responses_event() -> impl Strategy<Value = J> {
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
