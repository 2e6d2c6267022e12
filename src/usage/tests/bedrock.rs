//! Bedrock (AWS event stream framing, Converse wire format): the golden fixtures of
//! `tests/fixtures/bedrock/` replayed whole, split at every byte boundary and byte by byte; and
//! property tests: arbitrary bytes split anywhere never panic, never hold more than the cap and
//! give the same result however split; generated well-formed streams give their exact usage
//! and text and are forwarded byte for byte however split.

use bytes::Bytes;
use proptest::prelude::*;

use super::{fixture, replay, replay_whole, u, Case, Outcome};
use crate::usage::{encode_eventstream_message, ApiKind, JsonAccountant, SseAccountant};

fn cases() -> [Case; 3] {
    [
        Case {
            api: ApiKind::BedrockConverse,
            file: "bedrock/converse_stream.bin",
            usage: Some(u(37, 19, 1024, 256, 0)),
            text: "Grüße aus Köln 🌧 — 日本語",
            completed: true,
            saw_error: false,
            events: 6,
        },
        Case {
            api: ApiKind::BedrockConverse,
            file: "bedrock/converse_stream_reasoning_tool.bin",
            usage: Some(u(412, 58, 0, 0, 0)),
            text: "Need the weather.{\"city\":\"Zürich\"}",
            completed: true,
            saw_error: false,
            events: 10,
        },
        Case {
            api: ApiKind::BedrockConverse,
            file: "bedrock/throttling_exception.bin",
            usage: None,
            text: "Hello",
            completed: false,
            saw_error: true,
            events: 3,
        },
    ]
}

#[test]
fn fixtures_whole_split_everywhere_and_byte_by_byte() {
    for case in cases() {
        let raw = fixture(case.file);
        let want = case.clean(&raw);
        assert_eq!(
            replay_whole(ApiKind::BedrockConverse, false, &raw),
            want,
            "{}",
            case.file
        );
        for cut in 0..=raw.len() {
            let got = replay(ApiKind::BedrockConverse, false, [&raw[..cut], &raw[cut..]]);
            assert_eq!(got, want, "{} cut at {cut}", case.file);
        }
        let bytes = replay(ApiKind::BedrockConverse, false, raw.chunks(1));
        assert_eq!(bytes, want, "{} byte by byte", case.file);
    }
}

#[test]
fn converse_body_usage_and_text() {
    let raw = fixture("bedrock/converse.json");
    for cut in 0..=raw.len() {
        let mut acc = JsonAccountant::new(ApiKind::BedrockConverse, 1 << 20);
        acc.push(&raw[..cut]);
        acc.push(&raw[cut..]);
        assert_eq!(acc.finish(), Some(u(120, 33, 0, 0, 0)));
        let text = acc.output_text();
        assert!(text.starts_with("Bonjour — ça va?{"), "{text}");
        assert!(text.contains("\"city\":\"Paris\""), "{text}");
    }
}

#[test]
fn a_cut_stream_forwards_whole_messages_only() {
    let raw = fixture("bedrock/converse_stream.bin");
    // Offsets where a message ends: a cut there forwards exactly those messages.
    let mut ends = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let total = u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        at += total as usize;
        ends.push(at);
    }
    for cut in 0..raw.len() {
        let got = replay(ApiKind::BedrockConverse, false, [&raw[..cut]]);
        let whole = ends
            .iter()
            .copied()
            .filter(|e| *e <= cut)
            .max()
            .unwrap_or(0);
        assert_eq!(got.forwarded, &raw[..whole], "cut at {cut}");
        assert!(!got.completed || whole == raw.len());
    }
}

fn event(name: &str, payload: &str) -> Vec<u8> {
    encode_eventstream_message(
        &[
            (":event-type", name),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

/// A well-formed ConverseStream body with `texts` as deltas and `usage` in its metadata.
fn converse_stream(texts: &[String], usage: (u64, u64, u64)) -> Vec<u8> {
    let mut out = event("messageStart", r#"{"role":"assistant"}"#);
    for t in texts {
        let delta = serde_json::json!({"contentBlockIndex": 0, "delta": {"text": t}});
        out.extend(event("contentBlockDelta", &delta.to_string()));
    }
    out.extend(event("contentBlockStop", r#"{"contentBlockIndex":0}"#));
    out.extend(event("messageStop", r#"{"stopReason":"end_turn"}"#));
    let meta = serde_json::json!({"usage": {"inputTokens": usage.0, "outputTokens": usage.1,
        "cacheReadInputTokens": usage.2, "totalTokens": usage.0 + usage.1}});
    out.extend(event("metadata", &meta.to_string()));
    out
}

/// Cut `raw` at the given points (modulo its length, sorted).
fn split<'a>(raw: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (raw.len() + 1)).collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for cut in cuts {
        pieces.push(&raw[from..cut]);
        from = cut;
    }
    pieces.push(&raw[from..]);
    pieces
}

/// Replays `pieces` with a cap, checking the memory bound and the prefix rule after each push.
fn run(cap: usize, pieces: &[&[u8]]) -> Result<Outcome, TestCaseError> {
    let mut acc = SseAccountant::new(ApiKind::BedrockConverse, false, cap);
    let (mut fed, mut forwarded) = (Vec::new(), Vec::new());
    for piece in pieces {
        let out = acc.push(&Bytes::copy_from_slice(piece));
        prop_assert!(
            acc.held_bytes() <= cap,
            "held {} > cap {cap}",
            acc.held_bytes()
        );
        fed.extend_from_slice(piece);
        forwarded.extend_from_slice(&out);
        prop_assert!(fed.starts_with(&forwarded));
    }
    forwarded.extend_from_slice(&acc.finish());
    prop_assert_eq!(acc.held_bytes(), 0);
    Ok(Outcome::of(&acc, forwarded))
}

/// Whole messages, damaged messages and random runs, so that random streams hit real framing.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    let good = prop_oneof![
        Just(event("messageStart", r#"{"role":"assistant"}"#)),
        Just(event("contentBlockDelta", r#"{"delta":{"text":"hi"}}"#)),
        Just(event(
            "metadata",
            r#"{"usage":{"inputTokens":3,"outputTokens":4}}"#
        )),
        Just(event("messageStop", "not json")),
    ];
    let piece = prop_oneof![
        6 => good.clone(),
        1 => (good, any::<usize>(), any::<u8>()).prop_map(|(mut m, at, x)| {
            let i = at % m.len();
            m[i] ^= x | 1;
            m
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..24),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_split_anywhere_give_one_result_within_the_cap(
        raw in soup(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        cap in prop_oneof![Just(64usize), Just(200), Just(1 << 20)],
    ) {
        let whole = run(cap, &[&raw])?;
        let split = run(cap, &split(&raw, &cuts))?;
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn converse_streams_give_their_usage_and_text_however_split(
        texts in proptest::collection::vec("\\PC{0,12}", 0..8),
        usage in (0u64..1_000_000, 0u64..100_000, 0u64..100_000),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let raw = converse_stream(&texts, usage);
        let got = run(1 << 20, &split(&raw, &cuts))?;
        prop_assert_eq!(got.usage, Some(u(usage.0, usage.1, usage.2, 0, 0)));
        prop_assert_eq!(got.text, texts.concat());
        prop_assert!(got.completed && !got.saw_error);
        prop_assert_eq!(got.malformed, 0);
        prop_assert_eq!(got.forwarded, raw);
    }
}
