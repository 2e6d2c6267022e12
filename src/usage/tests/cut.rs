//! Golden streams of each API cut at every byte offset: what the client receives (the
//! accountant's output, then the native error event the relay appends) is a well-formed
//! stream of whole original events ending in the native error event.

use bytes::Bytes;

use super::{fixture, ApiKind, SseAccountant};
use crate::error::SluiceError;
use crate::provider::{stream_error_event, ErrorStyle};

/// One event as a client's SSE parser sees it: (`event:` name, `data:` lines joined by `\n`).
type Parsed = (String, String);

/// A strict WHATWG-style parse of a complete stream: events (blocks with a `data:` or
/// `event:` line), or `Err` when the bytes do not end on an event boundary (a last line or
/// event left open), which is what makes an SDK glue the next bytes onto it.
fn parse_strict(raw: &[u8]) -> Result<Vec<Parsed>, String> {
    let text = String::from_utf8_lossy(raw)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let raw = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    if !raw.ends_with("\n\n") && raw != "\n" {
        return Err(format!("does not end on a blank line: {raw:?}"));
    }
    let mut events = Vec::new();
    for block in raw.split("\n\n") {
        let (mut name, mut data, mut any) = (String::new(), Vec::new(), false);
        for line in block
            .split('\n')
            .filter(|l| !l.is_empty() && !l.starts_with(':'))
        {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => (name, any) = (value.to_owned(), true),
                "data" => (data.push(value.to_owned()), any = true).1,
                _ => {}
            }
        }
        if any {
            events.push((name, data.join("\n")));
        }
    }
    Ok(events)
}

/// What the client receives when the upstream body ends after `prefix`, fed as `pieces`.
fn client_bytes(api: ApiKind, hide: bool, pieces: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut acc = SseAccountant::new(api, hide, 1 << 20);
    let mut out = Vec::new();
    for piece in pieces {
        out.extend_from_slice(&acc.push(&Bytes::copy_from_slice(piece)));
    }
    out.extend_from_slice(&acc.finish());
    let complete = acc.completed() || acc.ended_after_final_content(true);
    if !complete && !acc.saw_error() {
        let err = SluiceError::UpstreamTruncated("http://up".to_owned());
        out.extend_from_slice(&stream_error_event(
            Some(api),
            ErrorStyle::OpenAi,
            &err,
            acc.next_sequence_number(),
        ));
    }
    (out, complete)
}

/// True for the event each SDK raises its native error on.
fn is_native_error(api: ApiKind, (name, data): &Parsed) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
        return false;
    };
    match api {
        ApiKind::AnthropicMessages => {
            name == "error" && v["type"] == "error" && v["error"].is_object()
        }
        ApiKind::OpenAiResponses => {
            name == "error"
                && v["type"] == "error"
                && v["error"]["message"].is_string()
                && v["message"].is_string()
        }
        _ => v["error"]["message"].is_string(),
    }
}

/// The client's events carry the final content (chat: a `finish_reason` and the usage chunk;
/// Anthropic: a `message_delta` with a `stop_reason`).
fn final_content_seen(api: ApiKind, events: &[Parsed]) -> bool {
    let json = |d: &str| serde_json::from_str::<serde_json::Value>(d).unwrap_or_default();
    match api {
        ApiKind::AnthropicMessages => events
            .iter()
            .any(|(n, d)| n == "message_delta" && json(d)["delta"]["stop_reason"].is_string()),
        ApiKind::OpenAiResponses => false,
        _ => {
            events
                .iter()
                .any(|(_, d)| json(d)["choices"][0]["finish_reason"].is_string())
                && events.iter().any(|(_, d)| json(d)["usage"].is_object())
        }
    }
}

fn sweep(api: ApiKind, name: &str) {
    sweep_raw(api, name, &fixture(name));
}

fn sweep_raw(api: ApiKind, name: &str, raw: &[u8]) {
    let original = parse_strict(raw).unwrap();
    for hide in [false, true] {
        if hide && !matches!(api, ApiKind::OpenAiChat) {
            continue;
        }
        for cut in 0..=raw.len() {
            let prefix = &raw[..cut];
            // Whole, halved, and split just before its last byte (inside a `\r\n` for CRLF).
            let (half, last) = (cut / 2, cut.saturating_sub(1));
            let splits = [
                vec![prefix],
                vec![&prefix[..half], &prefix[half..]],
                vec![&prefix[..last], &prefix[last..]],
            ];
            for pieces in splits {
                let (got, complete) = client_bytes(api, hide, &pieces);
                let events = parse_strict(&got)
                    .unwrap_or_else(|e| panic!("{name} cut at {cut} (hide {hide}): {e}"));
                let (last, before) = match complete {
                    true => (None, &events[..]),
                    false => {
                        let (last, before) = events.split_last().unwrap();
                        (Some(last), before)
                    }
                };
                if let Some(last) = last {
                    // The native error event, unless the upstream's own error came through.
                    assert!(
                        is_native_error(api, last) || upstream_error_seen(&events),
                        "{name} cut at {cut}: last event {last:?}"
                    );
                }
                // Every earlier event is a whole event of the original, in order (hide mode:
                // each one's data is still whole JSON or [DONE]).
                if hide {
                    for (_, data) in before {
                        assert!(
                            data == "[DONE]"
                                || serde_json::from_str::<serde_json::Value>(data).is_ok(),
                            "{name} cut at {cut}: {data:?}"
                        );
                    }
                } else {
                    assert_eq!(before, &original[..before.len()], "{name} cut at {cut}");
                }
                if cut == raw.len() {
                    assert!(
                        complete || upstream_error_seen(&events),
                        "{name} whole is complete"
                    );
                }
                if complete && !hide {
                    // Complete: the client has the whole stream, or all of its final content.
                    assert!(
                        events == original || final_content_seen(api, &events),
                        "{name} cut at {cut}: complete without its final content"
                    );
                }
            }
        }
    }
}

#[test]
fn chat_stream_cut_at_every_offset_ends_in_its_native_error_event() {
    sweep(
        ApiKind::OpenAiChat,
        "openai_chat/llmock_capture_include_usage.sse",
    );
    sweep(ApiKind::OpenAiChat, "openai_chat/openai_include_usage.sse");
}

#[test]
fn responses_stream_cut_at_every_offset_ends_in_its_native_error_event() {
    sweep(
        ApiKind::OpenAiResponses,
        "openai_responses/llmock_capture.sse",
    );
}

#[test]
fn anthropic_stream_cut_at_every_offset_ends_in_its_native_error_event() {
    sweep(ApiKind::AnthropicMessages, "anthropic/llmock_capture.sse");
    sweep(ApiKind::AnthropicMessages, "anthropic/thinking_cache.sse");
    sweep(ApiKind::AnthropicMessages, "anthropic/overloaded_error.sse");
}

#[test]
fn crlf_streams_cut_at_every_offset_end_on_a_boundary() {
    // The same streams with `\r\n` line ends, cut inside every `\r\n` among others.
    for (api, name) in [
        (ApiKind::AnthropicMessages, "anthropic/llmock_capture.sse"),
        (ApiKind::OpenAiChat, "openai_chat/openai_include_usage.sse"),
    ] {
        let crlf = String::from_utf8(fixture(name))
            .unwrap()
            .replace('\n', "\r\n");
        sweep_raw(api, name, crlf.as_bytes());
    }
}

#[test]
fn a_clean_end_after_the_final_content_is_complete() {
    // Chat: finish_reason and usage seen, `data: [DONE]` missing.
    let raw = fixture("openai_chat/llmock_capture_include_usage.sse");
    let text = String::from_utf8(raw).unwrap();
    let without_done = text.replace("data: [DONE]\n\n", "");
    assert_ne!(without_done, text);
    let mut acc = SseAccountant::new(ApiKind::OpenAiChat, false, 1 << 20);
    let out = acc.push(&Bytes::from(without_done.clone()));
    assert_eq!(&out[..], without_done.as_bytes());
    assert!(acc.finish().is_empty());
    assert!(!acc.completed());
    assert!(acc.ended_after_final_content(true));
    assert!(acc.usage().is_some());
    // Without the usage chunk: complete only when usage was not asked for.
    let no_usage: String = without_done
        .split_inclusive("\n\n")
        .filter(|e| !e.contains("\"choices\":[]"))
        .collect();
    let mut acc = SseAccountant::new(ApiKind::OpenAiChat, false, 1 << 20);
    acc.push(&Bytes::from(no_usage));
    acc.finish();
    assert!(!acc.ended_after_final_content(true));
    assert!(acc.ended_after_final_content(false));
    // Cut before the finish_reason chunk: truncated.
    let cut = &text[..text.find("\"finish_reason\":\"stop\"").unwrap()];
    let cut = &cut[..cut.rfind("\n\n").unwrap() + 2];
    let mut acc = SseAccountant::new(ApiKind::OpenAiChat, false, 1 << 20);
    acc.push(&Bytes::copy_from_slice(cut.as_bytes()));
    acc.finish();
    assert!(!acc.ended_after_final_content(false));

    // Anthropic: message_delta with stop_reason seen, message_stop missing.
    let raw = String::from_utf8(fixture("anthropic/llmock_capture.sse")).unwrap();
    let stop = raw.find("event: message_stop").unwrap();
    let mut acc = SseAccountant::new(ApiKind::AnthropicMessages, false, 1 << 20);
    acc.push(&Bytes::copy_from_slice(&raw.as_bytes()[..stop]));
    acc.finish();
    assert!(!acc.completed() && acc.ended_after_final_content(true));
    let delta = raw.find("event: message_delta").unwrap();
    let mut acc = SseAccountant::new(ApiKind::AnthropicMessages, false, 1 << 20);
    acc.push(&Bytes::copy_from_slice(&raw.as_bytes()[..delta]));
    acc.finish();
    assert!(!acc.ended_after_final_content(true));

    // Responses: nothing but response.completed completes.
    let raw = String::from_utf8(fixture("openai_responses/llmock_capture.sse")).unwrap();
    let done = raw.find("event: response.completed").unwrap();
    let mut acc = SseAccountant::new(ApiKind::OpenAiResponses, false, 1 << 20);
    acc.push(&Bytes::copy_from_slice(&raw.as_bytes()[..done]));
    acc.finish();
    assert!(!acc.ended_after_final_content(false));
    assert!(acc.next_sequence_number() > 0);
}

#[test]
fn an_oversized_event_cut_midway_is_closed_before_the_error_event() {
    // Cap 64: the second event is forwarded as it arrives, then the body ends inside it.
    let stream = [
        &b"data: {\"choices\":[]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\""[..],
        &[b'x'; 200][..],
    ]
    .concat();
    let mut acc = SseAccountant::new(ApiKind::OpenAiChat, false, 64);
    let mut out = acc.push(&Bytes::from(stream.clone())).to_vec();
    assert_eq!(out, stream, "an oversized event cannot be withheld");
    out.extend_from_slice(&acc.finish());
    assert!(out.ends_with(b"xx\n\n"));
    let err = SluiceError::UpstreamTruncated("http://up".to_owned());
    out.extend_from_slice(&stream_error_event(
        Some(ApiKind::OpenAiChat),
        ErrorStyle::OpenAi,
        &err,
        0,
    ));
    let events = parse_strict(&out).unwrap();
    assert_eq!(events.len(), 3);
    assert!(is_native_error(ApiKind::OpenAiChat, &events[2]));
}

/// The upstream's own in-stream error reached the client (`event: error`, a Responses
/// `response.failed`, or a `data:` JSON with an `error` object).
fn upstream_error_seen(events: &[(String, String)]) -> bool {
    events.iter().any(|(name, data)| {
        let v = serde_json::from_str::<serde_json::Value>(data).unwrap_or_default();
        name == "error" || v["type"] == "response.failed" || v["error"].is_object()
    })
}

#[test]
fn a_complete_event_is_forwarded_the_moment_its_blank_line_arrives() {
    // Fed up to any event's blank line (in one piece or split anywhere before it), the
    // accountant has forwarded every byte: nothing complete is held back.
    for (api, name) in [
        (
            ApiKind::OpenAiChat,
            "openai_chat/llmock_capture_include_usage.sse",
        ),
        (
            ApiKind::OpenAiResponses,
            "openai_responses/llmock_capture.sse",
        ),
        (ApiKind::AnthropicMessages, "anthropic/llmock_capture.sse"),
    ] {
        let raw = fixture(name);
        let ends = raw.windows(2).enumerate().filter(|(_, w)| w == b"\n\n");
        for (at, _) in ends {
            let end = at + 2;
            for split in [0, end / 2, end - 1] {
                let mut acc = SseAccountant::new(api, false, 1 << 20);
                let mut out = acc.push(&Bytes::copy_from_slice(&raw[..split])).to_vec();
                out.extend_from_slice(&acc.push(&Bytes::copy_from_slice(&raw[split..end])));
                assert_eq!(
                    out,
                    &raw[..end],
                    "{name}: event ending at {end}, split at {split}"
                );
            }
        }
    }
}
