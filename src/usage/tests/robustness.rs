//! Hostile and awkward streams: malformed events, split UTF-8, held partial events in hide
//! mode, and streams that end early.

use bytes::Bytes;

use super::{replay, replay_whole, u};
use crate::usage::{ApiKind, SseAccountant};

/// A chat stream with four malformed events between good ones, usage still at the end.
const CHAT_WITH_GARBAGE: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}],\"usage\":null}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"trunc\n\n\
data: this is not json\n\n\
data: \xff\xfe\x00\x01\x80garbage\n\n\
event: message\n\n\
: a comment is not an event\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" fine\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
data: [DONE]\n\n";

#[test]
fn malformed_chat_events_are_counted_forwarded_and_survived() {
    for cut in 0..=CHAT_WITH_GARBAGE.len() {
        let (a, b) = CHAT_WITH_GARBAGE.split_at(cut);
        let got = replay(ApiKind::OpenAiChat, false, [a, b]);
        assert_eq!(got.usage, Some(u(9, 2, 0, 0, 0)), "cut={cut}");
        assert_eq!(got.text, "ok fine");
        assert_eq!((got.events, got.malformed), (8, 4));
        assert!(got.completed && !got.saw_error);
        assert_eq!(got.forwarded, CHAT_WITH_GARBAGE);
    }
}

#[test]
fn hide_mode_forwards_malformed_events_untouched() {
    let want: Vec<u8> = [
        &b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n"[..],
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"trunc\n\n",
        b"data: this is not json\n\n",
        b"data: \xff\xfe\x00\x01\x80garbage\n\n",
        b"event: message\n\n",
        b": a comment is not an event\n\n",
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" fine\"}}]}\n\n",
        b"data: [DONE]\n\n",
    ]
    .concat();
    for cut in 0..=CHAT_WITH_GARBAGE.len() {
        let (a, b) = CHAT_WITH_GARBAGE.split_at(cut);
        let got = replay(ApiKind::OpenAiChat, true, [a, b]);
        assert_eq!(got.forwarded, want, "cut={cut}");
        assert_eq!(got.usage, Some(u(9, 2, 0, 0, 0)));
        assert_eq!(got.malformed, 4);
    }
}

#[test]
fn malformed_anthropic_and_responses_events_do_not_hide_later_usage() {
    let anthropic = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":\"many\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"a\"\n\n\
event: ping\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":12,\"input_tokens\":null}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let got = replay_whole(ApiKind::AnthropicMessages, false, anthropic);
    assert_eq!(
        got.usage,
        Some(u(30, 12, 0, 0, 0)),
        "null input_tokens keeps message_start's"
    );
    assert_eq!((got.events, got.malformed), (6, 3));
    assert!(got.completed);

    let responses = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1,\"input_tokens_details\":null}}}\n\n";
    let got = replay_whole(ApiKind::OpenAiResponses, false, responses);
    assert_eq!(got.usage, Some(u(3, 1, 0, 0, 0)));
    assert_eq!((got.events, got.malformed, got.text.as_str()), (4, 1, "hi"));
    assert!(got.completed);
}

#[test]
fn event_name_is_the_fallback_type_and_error_events_are_errors() {
    // No JSON `type`: the SSE event name decides.
    let stream = b"event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":4}}}\n\n\
event: error\ndata: {\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}\n\n";
    let got = replay_whole(ApiKind::AnthropicMessages, false, stream);
    assert_eq!(got.usage, Some(u(4, 0, 0, 0, 0)));
    assert!(got.saw_error && !got.completed);
    // `event: error` on an OpenAI stream, even with unparseable data.
    let got = replay_whole(ApiKind::OpenAiChat, false, b"event: error\ndata: oops\n\n");
    assert!(got.saw_error);
    assert_eq!(got.malformed, 1);
    // A chunk with "error": null is not an error.
    let got = replay_whole(
        ApiKind::OpenAiChat,
        false,
        b"data: {\"choices\":[],\"error\":null}\n\n",
    );
    assert!(!got.saw_error);
}

#[test]
fn utf8_character_split_across_chunks() {
    let stream =
        "data: {\"choices\":[{\"delta\":{\"content\":\"日本 🌧\"}}]}\n\ndata: [DONE]\n\n".as_bytes();
    let start = stream.iter().position(|&b| b >= 0x80).unwrap();
    for cut in start..start + 8 {
        let got = replay(ApiKind::OpenAiChat, false, [&stream[..cut], &stream[cut..]]);
        assert_eq!(got.text, "日本 🌧", "cut={cut}");
    }
}

#[test]
fn escaped_unicode_and_multiline_data_are_decoded() {
    let stream = b"data: {\"choices\":[{\"delta\":\ndata: {\"content\":\"caf\\u00e9 \\ud83c\\udf27\"}}]}\n\n";
    let got = replay_whole(ApiKind::OpenAiChat, false, stream);
    assert_eq!(got.text, "café 🌧");
    assert_eq!(got.malformed, 0);
}

#[test]
fn hide_mode_holds_a_partial_event_until_it_completes() {
    let mut acc = SseAccountant::new(ApiKind::OpenAiChat, true, 1 << 20);
    let first = Bytes::from_static(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: {\"choi",
    );
    assert_eq!(
        &acc.push(&first)[..],
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
    );
    let second = Bytes::from_static(b"ces\":[],\"usage\":{\"prompt_tokens\":1}}\n");
    assert!(acc.push(&second).is_empty());
    let third = Bytes::from_static(b"\ndata: [DON");
    assert!(
        acc.push(&third).is_empty(),
        "the usage-only chunk is dropped"
    );
    assert_eq!(acc.usage(), Some(u(1, 0, 0, 0, 0)));
    // The upstream stops mid-event: the partial event is accounted but not forwarded, so the
    // client's stream ends on an event boundary.
    assert!(acc.finish().is_empty());
    assert!(!acc.completed());
    assert_eq!(acc.events(), 3);
}

#[test]
fn unterminated_final_event_is_still_accounted() {
    let stream = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\ndata: [DONE]";
    let got = replay_whole(ApiKind::OpenAiChat, false, stream);
    assert_eq!(got.usage, Some(u(2, 3, 0, 0, 0)));
    assert!(got.completed);
    // Whole but for its blank line: forwarded, the blank line added.
    assert_eq!(got.forwarded, [&stream[..], b"\n\n"].concat());
    let got = replay_whole(ApiKind::OpenAiChat, true, stream);
    assert_eq!(got.forwarded, b"data: [DONE]\n\n");
}

#[test]
fn truncated_stream_reports_no_usage_and_not_completed() {
    let raw = super::fixture("openai_chat/llmock_include_usage.sse");
    let cut = raw.len() / 2;
    let got = replay_whole(ApiKind::OpenAiChat, false, &raw[..cut]);
    assert_eq!(got.usage, None);
    assert!(!got.completed);
    assert!(!got.text.is_empty());
}

#[test]
fn usage_on_a_content_chunk_is_kept_in_hide_mode() {
    // Servers that attach usage to the last content chunk: nothing can be removed safely.
    let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":5}}\n\n";
    let got = replay_whole(ApiKind::OpenAiChat, true, stream);
    assert_eq!(got.forwarded, stream);
    assert_eq!(got.usage, Some(u(5, 0, 0, 0, 0)));
}

#[test]
fn empty_pushes_and_repeated_finish_are_harmless() {
    let mut acc = SseAccountant::new(ApiKind::OpenAiChat, true, 1 << 20);
    assert!(acc.push(&Bytes::new()).is_empty());
    assert!(acc.finish().is_empty());
    assert!(acc.finish().is_empty());
    assert_eq!((acc.events(), acc.usage()), (0, None));
}

/// Found by `props::chat_streams_give_their_usage_text_and_hidden_form_however_split`: the
/// BOM was held with the first event and dropped with it when that was the usage-only chunk.
#[test]
fn hide_mode_keeps_a_leading_bom_when_the_first_event_is_dropped() {
    let stream =
        b"\xEF\xBB\xBFdata: {\"choices\":[],\"usage\":{\"prompt_tokens\":0}}\n\ndata: [DONE]\n\n";
    for cut in 0..=stream.len() {
        let got = replay(ApiKind::OpenAiChat, true, [&stream[..cut], &stream[cut..]]);
        assert_eq!(got.forwarded, b"\xEF\xBB\xBFdata: [DONE]\n\n", "cut={cut}");
    }
}

/// Found by `props::arbitrary_bytes_split_anywhere_give_one_result_within_the_cap`: an
/// `event:` line cut by the cap left a partial name when fed in small pieces, so whether an
/// oversized event counted as an error depended on the split.
#[test]
fn an_oversized_event_keeps_its_last_complete_name_however_split() {
    let stream = [
        &b"event: error\nevent: response.completed"[..],
        &[b'x'; 64][..],
        b"\n\n",
    ]
    .concat();
    for pieces in [vec![&stream[..]], stream.chunks(1).collect::<Vec<_>>()] {
        let mut acc = SseAccountant::new(ApiKind::OpenAiResponses, false, 48);
        for piece in pieces {
            acc.push(&Bytes::copy_from_slice(piece));
        }
        acc.finish();
        assert_eq!(acc.oversized_events(), 1);
        assert!(acc.saw_error() && !acc.completed());
    }
}

/// Found by `props::arbitrary_bytes_split_anywhere_give_one_result_within_the_cap`: when an
/// event reached the cap exactly at the `\n` of a `\r\n`, the line before it was parsed if the
/// `\r\n` was split across chunks and skipped if not.
#[test]
fn an_event_reaching_the_cap_inside_a_crlf_is_handled_the_same_however_split() {
    let stream = b"event: error\nevent: message_stop_padding_x\r\n\r\n";
    // Both lines up to their "\r" fit the cap exactly; the "\n" passes it.
    let cap = stream.iter().position(|&b| b == b'\r').unwrap() + 1;
    let outcomes: Vec<(bool, bool)> = (0..=stream.len())
        .map(|cut| {
            let mut acc = SseAccountant::new(ApiKind::AnthropicMessages, false, cap);
            acc.push(&Bytes::copy_from_slice(&stream[..cut]));
            acc.push(&Bytes::copy_from_slice(&stream[cut..]));
            acc.finish();
            assert_eq!(acc.oversized_events(), 1, "cut={cut}");
            (acc.saw_error(), acc.completed())
        })
        .collect();
    assert!(outcomes.iter().all(|o| *o == outcomes[0]), "{outcomes:?}");
}
