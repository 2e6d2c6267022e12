//! Property tests (proptest) of the stream and JSON accountants: arbitrary bytes split
//! anywhere never panic, never hold more than the cap, and give the same result however they
//! are split; generated well-formed streams give their exact usage, text and (in hide mode)
//! the stream the client would have had without `include_usage`.

use bytes::Bytes;
use proptest::prelude::*;

use super::{u, Outcome};
use crate::usage::{ApiKind, JsonAccountant, SseAccountant, Usage};

const APIS: [ApiKind; 9] = [
    ApiKind::OpenAiChat,
    ApiKind::OpenAiCompletions,
    ApiKind::OpenAiResponses,
    ApiKind::AnthropicMessages,
    ApiKind::Embeddings,
    ApiKind::OllamaChat,
    ApiKind::OllamaGenerate,
    ApiKind::OllamaEmbed,
    ApiKind::GeminiGenerateContent,
];

/// Pieces SSE streams are made of, so that random concatenations hit real structure (field
/// names, line ends of every kind, BOM, JSON the parsers read, terminal and error events).
const VOCAB: &[&[u8]] = &[
    b"data: ",
    b"data:",
    b"data",
    b"event: ",
    b"event: error",
    b"event: message_stop",
    b"event: response.completed",
    b": keep-alive",
    b"id: 7",
    b"retry: 10",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\xEF\xBB\xBF",
    b"\xE6\x97",
    b"\xA5",
    b"[DONE]",
    b"{\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}",
    b"{\"choices\":[{\"text\":\"yo\"}],\"usage\": null, \"x\":1}",
    b"{\"usage\":null,\"choices\":[]}",
    b"{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
    b"{\"choices\":[],\"usage\":{\"prompt_tokens\":18446744073709551615}}",
    b"{\"error\":{\"message\":\"x\"}}",
    b"{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}",
    b"{\"type\":\"content_block_delta\",\"delta\":{\"text\":\"t\"}}",
    b"{\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}",
    b"{\"type\":\"response.output_text.delta\",\"delta\":\"d\"}",
    b"{\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5}}}",
    b"{\"message\":{\"role\":\"assistant\",\"content\":\"c\"},\"done\":false}",
    b"{\"response\":\"r\",\"done\":false}",
    b"{\"done\":true,\"prompt_eval_count\":9,\"eval_count\":18446744073709551615}",
    b"{\"error\":\"model runner stopped\"}",
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

/// Bytes made of vocabulary pieces and random runs.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => proptest::sample::select(VOCAB).prop_map(|p| p.to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..24),
    ];
    proptest::collection::vec(piece, 0..48).prop_map(|pieces| pieces.concat())
}

/// Cut `raw` at the given points (taken modulo its length, sorted).
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

/// Replays `pieces`, checking the memory bound after every push.
fn run(api: ApiKind, hide: bool, cap: usize, pieces: &[&[u8]]) -> Result<Outcome, TestCaseError> {
    let mut acc = SseAccountant::new(api, hide, cap);
    let mut forwarded = Vec::new();
    let mut fed = Vec::new();
    for piece in pieces {
        let chunk = Bytes::copy_from_slice(piece);
        let out = acc.push(&chunk);
        prop_assert!(
            acc.held_bytes() <= cap,
            "held {} > cap {cap}",
            acc.held_bytes()
        );
        fed.extend_from_slice(&chunk);
        forwarded.extend_from_slice(&out);
        if !hide {
            // Pass-through forwards the upstream's bytes, whole events only: a prefix.
            prop_assert!(fed.starts_with(&forwarded));
        }
    }
    forwarded.extend_from_slice(&acc.finish());
    prop_assert_eq!(acc.held_bytes(), 0);
    Ok(Outcome::of(&acc, forwarded))
}

/// A well-formed OpenAI chat stream: its bytes with and without include_usage, its text and
/// usage. `eol` is the line end; `bom` a leading BOM; `comment` a keep-alive after each chunk.
fn chat_stream(
    contents: &[String],
    usage: (u64, u64),
    eol: &str,
    bom: bool,
    comment: bool,
) -> (Vec<u8>, Vec<u8>, String) {
    let mut with = String::new();
    let mut without = String::new();
    if bom {
        with.push('\u{feff}');
        without.push('\u{feff}');
    }
    for content in contents {
        let delta = serde_json::json!({"content": content}).to_string();
        let base = format!("{{\"choices\":[{{\"index\":0,\"delta\":{delta}}}]");
        with.push_str(&format!("data: {base},\"usage\":null}}{eol}{eol}"));
        without.push_str(&format!("data: {base}}}{eol}{eol}"));
        if comment {
            with.push_str(&format!(": ka{eol}{eol}"));
            without.push_str(&format!(": ka{eol}{eol}"));
        }
    }
    with.push_str(&format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{}}}}}{eol}{eol}",
        usage.0, usage.1
    ));
    for s in [&mut with, &mut without] {
        s.push_str(&format!("data: [DONE]{eol}{eol}"));
    }
    (with.into_bytes(), without.into_bytes(), contents.concat())
}

/// A well-formed Anthropic Messages stream, its text and usage.
fn anthropic_stream(texts: &[String], input: u64, output: u64, cache_read: u64) -> Vec<u8> {
    let mut s = format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{input},\"cache_read_input_tokens\":{cache_read},\"output_tokens\":1}}}}}}\n\n"
    );
    for t in texts {
        let delta = serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}});
        s.push_str(&format!("event: content_block_delta\ndata: {delta}\n\n"));
        s.push_str("event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }
    s.push_str(&format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{output}}}}}\n\n"));
    s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

/// A well-formed Ollama chat (or generate) NDJSON stream: one line per piece, then the
/// final `done: true` line with the counts; `crlf` for `\r\n` line ends.
fn ollama_stream(texts: &[String], prompt: u64, output: u64, chat: bool, crlf: bool) -> Vec<u8> {
    let eol = if crlf { "\r\n" } else { "\n" };
    let mut out = String::new();
    let piece = |t: &str| {
        if chat {
            serde_json::json!({"model": "m", "message": {"role": "assistant", "content": t}})
        } else {
            serde_json::json!({"model": "m", "response": t})
        }
    };
    for t in texts {
        let mut line = piece(t);
        line["done"] = false.into();
        out.push_str(&line.to_string());
        out.push_str(eol);
    }
    let mut last = piece("");
    last["done"] = true.into();
    last["done_reason"] = "stop".into();
    last["prompt_eval_count"] = prompt.into();
    last["eval_count"] = output.into();
    out.push_str(&last.to_string());
    out.push_str(eol);
    out.into_bytes()
}

/// A well-formed Gemini `alt=sse` stream (one `GenerateContentResponse` per event, cumulative
/// `usageMetadata` on each, `finishReason` on the last) with `eol` line ends.
fn gemini_stream(texts: &[String], counts: (u64, u64, u64, u64), eol: &str) -> Vec<u8> {
    let (prompt, candidates, thoughts, cached) = counts;
    let mut s = String::new();
    let n = texts.len().max(1);
    for i in 0..n {
        let last = i + 1 == n;
        let text = texts.get(i).map_or("", String::as_str);
        let mut candidate = serde_json::json!({
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        });
        if last {
            candidate["finishReason"] = "STOP".into();
        }
        let seen = if last { candidates } else { candidates / 2 };
        let event = serde_json::json!({
            "candidates": [candidate],
            "usageMetadata": {
                "promptTokenCount": prompt,
                "candidatesTokenCount": seen,
                "thoughtsTokenCount": thoughts,
                "cachedContentTokenCount": cached,
            },
        });
        s.push_str(&format!("data: {event}{eol}{eol}"));
    }
    s.into_bytes()
}

fn eol() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&["\n", "\r\n", "\r"][..])
}

proptest! {
    #![proptest_config(crate::proptest_config())]

    #[test]
    fn arbitrary_bytes_split_anywhere_give_one_result_within_the_cap(
        raw in soup(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        api in proptest::sample::select(&APIS[..]),
        hide in any::<bool>(),
        cap in prop_oneof![16usize..160, Just(1usize << 20)],
    ) {
        let whole = run(api, hide, cap, &[&raw])?;
        let pieces = split(&raw, &cuts);
        prop_assert_eq!(run(api, hide, cap, &pieces)?, whole);
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        prop_assert_eq!(run(api, hide, cap, &bytes)?, run(api, hide, cap, &[&raw])?);
    }

    #[test]
    fn chat_streams_give_their_usage_text_and_hidden_form_however_split(
        contents in proptest::collection::vec(any::<String>(), 0..6),
        usage in (any::<u64>(), any::<u64>()),
        eol in eol(),
        bom in any::<bool>(),
        comment in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let (with, without, text) = chat_stream(&contents, usage, eol, bom, comment);
        for hide in [false, true] {
            let got = run(ApiKind::OpenAiChat, hide, 1 << 20, &split(&with, &cuts))?;
            prop_assert_eq!(got.usage, Some(u(usage.0, usage.1, 0, 0, 0)));
            prop_assert_eq!(&got.text, &text);
            prop_assert!(got.completed && !got.saw_error);
            prop_assert_eq!(got.malformed, 0);
            let want = if hide { &without } else { &with };
            prop_assert_eq!(
                String::from_utf8_lossy(&got.forwarded),
                String::from_utf8_lossy(want)
            );
        }
    }

    #[test]
    fn anthropic_streams_give_their_usage_and_text_however_split(
        texts in proptest::collection::vec(any::<String>(), 0..6),
        counts in (any::<u64>(), any::<u64>(), any::<u64>()),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let raw = anthropic_stream(&texts, counts.0, counts.1, counts.2);
        let got = run(ApiKind::AnthropicMessages, true, 1 << 20, &split(&raw, &cuts))?;
        prop_assert_eq!(got.usage, Some(u(counts.0, counts.1, counts.2, 0, 0)));
        prop_assert_eq!(got.text, texts.concat());
        prop_assert!(got.completed);
        prop_assert_eq!(got.forwarded, raw);
    }

    #[test]
    fn ollama_streams_give_their_usage_and_text_however_split(
        texts in proptest::collection::vec(any::<String>(), 0..6),
        counts in (any::<u64>(), any::<u64>()),
        chat in any::<bool>(),
        crlf in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let raw = ollama_stream(&texts, counts.0, counts.1, chat, crlf);
        let api = if chat { ApiKind::OllamaChat } else { ApiKind::OllamaGenerate };
        let got = run(api, false, 1 << 20, &split(&raw, &cuts))?;
        prop_assert_eq!(got.usage, Some(u(counts.0, counts.1, 0, 0, 0)));
        prop_assert_eq!(got.text, texts.concat());
        prop_assert!(got.completed && !got.saw_error);
        prop_assert_eq!(got.events, texts.len() as u64 + 1);
        prop_assert_eq!(got.forwarded, raw);
    }

    #[test]
    fn gemini_streams_give_their_usage_and_text_however_split(
        texts in proptest::collection::vec(any::<String>(), 0..6),
        counts in (0..u64::from(u32::MAX), 0..u64::from(u32::MAX), 0..u64::from(u32::MAX), 0..u64::from(u32::MAX)),
        eol in eol(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let raw = gemini_stream(&texts, counts, eol);
        let pieces = split(&raw, &cuts);
        let got = run(ApiKind::GeminiGenerateContent, false, 1 << 20, &pieces)?;
        let (prompt, candidates, thoughts, cached) = counts;
        prop_assert_eq!(got.usage, Some(u(prompt, candidates + thoughts, cached, 0, thoughts)));
        prop_assert_eq!(got.text, texts.concat());
        prop_assert!(!got.completed && !got.saw_error);
        prop_assert_eq!(got.malformed, 0);
        prop_assert_eq!(got.forwarded, raw.clone());
        let mut acc = SseAccountant::new(ApiKind::GeminiGenerateContent, false, 1 << 20);
        for piece in &pieces {
            acc.push(&Bytes::copy_from_slice(piece));
        }
        acc.finish();
        prop_assert!(acc.ended_after_final_content(true));
    }

    #[test]
    fn json_accountant_never_panics_and_holds_at_most_its_cap(
        raw in prop_oneof![soup(), proptest::collection::vec(any::<u8>(), 0..256)],
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        api in proptest::sample::select(&APIS[..]),
        cap in 1usize..512,
    ) {
        let mut acc = JsonAccountant::new(api, cap);
        for piece in split(&raw, &cuts) {
            acc.push(piece);
            prop_assert!(acc.held_bytes() <= cap);
        }
        let usage = acc.finish();
        if raw.len() > cap {
            prop_assert_eq!(usage, None);
        }
        let _ = acc.output_text();
    }

    #[test]
    fn json_bodies_give_their_usage_however_split(
        content in any::<String>(),
        counts in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let (p, c, cached, reasoning) = counts;
        let body = serde_json::json!({
            "id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": p, "completion_tokens": c,
                      "prompt_tokens_details": {"cached_tokens": cached},
                      "completion_tokens_details": {"reasoning_tokens": reasoning}},
        })
        .to_string();
        let mut acc = JsonAccountant::new(ApiKind::OpenAiChat, 1 << 20);
        for piece in split(body.as_bytes(), &cuts) {
            acc.push(piece);
        }
        let want: Usage = u(p, c, cached, 0, reasoning);
        prop_assert_eq!(acc.finish(), Some(want));
        prop_assert_eq!(acc.output_text(), content);
    }
}
