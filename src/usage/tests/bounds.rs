//! The per-event cap: oversized events pass through unparsed (and, in hide mode, as they
//! arrive), buffers stay under the cap, and parsing resumes at the next event.

use bytes::Bytes;

use super::{fixture, replay, u};
use crate::usage::{ApiKind, SseAccountant};

const CAP: usize = 256;

fn chunk(content: &str, usage_null: bool) -> String {
    let null = if usage_null { r#","usage":null"# } else { "" };
    format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}]{null}}}\n\n"
    )
}

/// A chat stream (include_usage form) whose second chunk is over `CAP`.
fn chat_with_big_chunk() -> (Vec<u8>, String) {
    let big = "x".repeat(2 * CAP);
    let stream = [
        chunk("a", true),
        chunk(&big, true),
        chunk("b", true),
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":600}}\n\n"
            .to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    (stream.into_bytes(), big)
}

fn feed(acc: &mut SseAccountant, pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&acc.push(&Bytes::copy_from_slice(piece)));
        assert!(acc.held_bytes() <= CAP, "held {}", acc.held_bytes());
    }
    out.extend_from_slice(&acc.finish());
    out
}

#[test]
fn an_oversized_chunk_is_forwarded_unparsed_and_later_usage_still_read() {
    let (stream, _) = chat_with_big_chunk();
    for cut in 0..=stream.len() {
        let mut acc = SseAccountant::new(ApiKind::OpenAiChat, false, CAP);
        let out = feed(&mut acc, &[&stream[..cut], &stream[cut..]]);
        assert_eq!(out, stream, "cut={cut}");
        assert_eq!(acc.oversized_events(), 1);
        assert_eq!(acc.events(), 5);
        assert_eq!(
            acc.output_text(),
            "ab",
            "the oversized chunk's text is not read"
        );
        assert_eq!(acc.usage(), Some(u(3, 600, 0, 0, 0)));
        assert!(acc.completed());
    }
}

#[test]
fn hide_mode_forwards_an_oversized_chunk_as_it_arrives() {
    let (stream, big) = chat_with_big_chunk();
    let want = [
        chunk("a", false),
        chunk(&big, true), // passed through as is: its usage:null stays
        chunk("b", false),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    for cut in 0..=stream.len() {
        let mut acc = SseAccountant::new(ApiKind::OpenAiChat, true, CAP);
        let out = feed(&mut acc, &[&stream[..cut], &stream[cut..]]);
        assert_eq!(String::from_utf8_lossy(&out), want, "cut={cut}");
        assert_eq!(acc.oversized_events(), 1);
        assert_eq!(acc.usage(), Some(u(3, 600, 0, 0, 0)));
    }
    // Fed in small pieces, the big chunk's bytes come out as they arrive, not at its end.
    let mut acc = SseAccountant::new(ApiKind::OpenAiChat, true, CAP);
    let start = stream.windows(3).position(|w| w == b"xxx").unwrap();
    let mut out = Vec::new();
    for piece in stream[..start + CAP].chunks(16) {
        out.extend_from_slice(&acc.push(&Bytes::copy_from_slice(piece)));
        assert!(acc.held_bytes() <= CAP);
    }
    assert!(
        out.len() > start,
        "only {} bytes out of {} forwarded before the big chunk ended",
        out.len(),
        start + CAP
    );
}

#[test]
fn an_oversized_terminal_event_still_ends_the_stream() {
    // Responses: `response.completed` echoes the whole output, here over the cap.
    let big = "y".repeat(2 * CAP);
    let stream = format!(
        "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}}\n\n\
event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"output\":\"{big}\",\"usage\":{{\"input_tokens\":5,\"output_tokens\":1}}}}}}\n\n"
    );
    let mut acc = SseAccountant::new(ApiKind::OpenAiResponses, false, CAP);
    feed(&mut acc, &[stream.as_bytes()]);
    assert!(acc.completed(), "known by its event name");
    assert_eq!((acc.usage(), acc.oversized_events()), (None, 1));
    assert_eq!(acc.output_text(), "hi");
    // An oversized error event is still an error.
    let stream = format!("event: error\ndata: {{\"message\":\"{big}\"}}\n\n");
    let mut acc = SseAccountant::new(ApiKind::AnthropicMessages, false, CAP);
    feed(&mut acc, &[stream.as_bytes()]);
    assert!(acc.saw_error() && !acc.completed());
}

#[test]
fn a_line_that_never_ends_is_held_only_up_to_the_cap() {
    let mut acc = SseAccountant::new(ApiKind::OpenAiChat, true, CAP);
    let mut forwarded = 0;
    let piece = Bytes::from(vec![b'z'; 100]);
    forwarded += acc.push(&Bytes::from_static(b"data: ")).len();
    for _ in 0..1000 {
        forwarded += acc.push(&piece).len();
        assert!(acc.held_bytes() <= CAP);
    }
    assert!(forwarded >= 6 + 1000 * 100 - CAP, "forwarded {forwarded}");
    forwarded += acc.push(&Bytes::from_static(b"\n\ndata: [DONE]\n\n")).len();
    forwarded += acc.finish().len();
    assert_eq!(forwarded, 6 + 1000 * 100 + 16);
    assert!(acc.completed());
    assert_eq!(acc.oversized_events(), 1);
}

#[test]
fn real_fixtures_are_unaffected_by_the_default_cap() {
    let raw = fixture("openai_responses/reasoning_cached_tools.sse");
    let got = replay(ApiKind::OpenAiResponses, false, [&raw[..]]);
    let mut acc = SseAccountant::new(ApiKind::OpenAiResponses, false, 4 << 20);
    acc.push(&Bytes::from(raw.clone()));
    acc.finish();
    assert_eq!(acc.oversized_events(), 0);
    assert_eq!((acc.usage(), acc.completed()), (got.usage, got.completed));
}
