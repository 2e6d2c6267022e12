//! Commit on content: which events hold and which commit, per API, and the commit point of
//! golden streams whatever the byte at which they are split.

use bytes::Bytes;

use super::{fixture, ApiKind, SseAccountant};

/// `(content_seen, error_code)` after feeding `events` (raw SSE) whole.
fn after(api: ApiKind, events: &str) -> (bool, Option<String>) {
    let mut acc = SseAccountant::new(api, false, 1 << 20);
    acc.push(&Bytes::copy_from_slice(events.as_bytes()));
    (acc.content_seen(), acc.error_code().map(str::to_owned))
}

fn holds(api: ApiKind, events: &str) -> bool {
    !after(api, events).0
}

fn chat(json: &str) -> String {
    format!("data: {json}\n\n")
}

#[test]
fn chat_holds_until_a_choice_carries_output() {
    let c = ApiKind::OpenAiChat;
    // The first chunk OpenAI sends: role, empty content, null refusal.
    let role_only = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}],"usage":null}"#;
    assert!(holds(c, &chat(role_only)));
    assert!(holds(
        c,
        &chat(r#"{"choices":[{"index":0,"delta":{"content":""}}]}"#)
    ));
    assert!(holds(c, &chat(r#"{"choices":[{"index":0,"delta":{}}]}"#)));
    // Azure's first chunk: no choices, prompt filter results, no usage.
    let azure = r#"{"choices":[],"created":0,"id":"","model":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#;
    assert!(holds(c, &chat(azure)));
    // Comments and events without data hold.
    assert!(holds(c, ": keep-alive\n\n"));
    assert!(holds(c, "id: 1\n\n"));
    assert!(holds(c, "event: x\n\n"));

    let commits = [
        r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"refusal":"no"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"audio":{"id":"a","data":"AAA"}}}]}"#,
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":0}}"#,
        // Legacy completions.
        r#"{"choices":[{"index":0,"text":"Hi"}]}"#,
        // The second of two choices carries output.
        r#"{"choices":[{"index":0,"delta":{"content":""}},{"index":1,"delta":{"content":"x"}}]}"#,
        // Not a chunk sluice knows: never hold content by mistake.
        r#"{"something":"else"}"#,
        "not json",
        "[DONE]",
    ];
    for json in commits {
        assert!(!holds(c, &chat(json)), "{json}");
    }
    assert!(!holds(ApiKind::OpenAiCompletions, &chat(commits[7])));
}

#[test]
fn chat_error_before_content_is_an_error_with_its_code() {
    let c = ApiKind::OpenAiChat;
    let (seen, code) = after(
        c,
        &chat(r#"{"error":{"message":"boom","type":"server_error","code":"internal"}}"#),
    );
    assert!(!seen);
    assert_eq!(code.as_deref(), Some("internal"));
    let (_, code) = after(
        c,
        &chat(r#"{"error":{"message":"boom","type":"server_error"}}"#),
    );
    assert_eq!(code.as_deref(), Some("server_error"));
    // An `event: error` is an error whatever its data says.
    assert_eq!(after(c, "event: error\ndata: {}\n\n"), (false, None));
    // After content, errors are not recorded as the opening's.
    let (seen, code) = after(
        c,
        &(chat(r#"{"choices":[{"delta":{"content":"a"}}]}"#) + &chat(r#"{"error":{"code":"x"}}"#)),
    );
    assert!(seen);
    assert_eq!(code, None);
}

fn named(name: &str, json: &str) -> String {
    format!("event: {name}\ndata: {json}\n\n")
}

#[test]
fn responses_hold_on_the_lifecycle_events() {
    let r = ApiKind::OpenAiResponses;
    for kind in [
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ] {
        let json = format!(r#"{{"type":"{kind}","sequence_number":0}}"#);
        assert!(holds(r, &named(kind, &json)), "{kind}");
    }
    let delta = r#"{"type":"response.output_text.delta","delta":"Hi","sequence_number":3}"#;
    assert!(!holds(r, &named("response.output_text.delta", delta)));
    // Unknown or future events commit.
    assert!(!holds(
        r,
        &named("response.new_thing", r#"{"type":"response.new_thing"}"#)
    ));
    let failed =
        r#"{"type":"response.failed","response":{"error":{"code":"server_error","message":"x"}}}"#;
    assert_eq!(
        after(r, &named("response.failed", failed)),
        (false, Some("server_error".into()))
    );
    let error = r#"{"type":"error","code":"rate_limit_exceeded","message":"slow"}"#;
    assert_eq!(
        after(r, &named("error", error)),
        (false, Some("rate_limit_exceeded".into()))
    );
}

#[test]
fn anthropic_holds_on_message_start_ping_and_block_start() {
    let a = ApiKind::AnthropicMessages;
    let start = r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":3,"output_tokens":1}}}"#;
    let block =
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
    let opening = named("message_start", start)
        + &named("content_block_start", block)
        + &named("ping", r#"{"type":"ping"}"#);
    assert!(holds(a, &opening));
    let text =
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#;
    assert!(!holds(
        a,
        &(opening.clone() + &named("content_block_delta", text))
    ));
    // An unknown event type commits.
    assert!(!holds(a, &named("brand_new", r#"{"type":"brand_new"}"#)));
    let overloaded =
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(
        after(a, &(opening + &named("error", overloaded))),
        (false, Some("overloaded_error".into()))
    );
}

/// Bytes forwarded when content was first seen, feeding `raw` one byte at a time: the end of
/// the first content event (`None`: the stream never carries content).
fn commit_point(api: ApiKind, raw: &[u8]) -> Option<usize> {
    let mut acc = SseAccountant::new(api, false, 1 << 20);
    let mut forwarded = 0;
    for b in raw {
        forwarded += acc.push(&Bytes::copy_from_slice(&[*b])).len();
        if acc.content_seen() {
            return Some(forwarded);
        }
    }
    None
}

#[test]
fn the_commit_point_does_not_depend_on_where_the_stream_is_split() {
    let cases = [
        (ApiKind::OpenAiChat, "openai_chat/openai_include_usage.sse"),
        (ApiKind::OpenAiChat, "openai_chat/llmock_capture_tools.sse"),
        (
            ApiKind::OpenAiResponses,
            "openai_responses/llmock_capture.sse",
        ),
        (ApiKind::AnthropicMessages, "anthropic/thinking_cache.sse"),
        (ApiKind::AnthropicMessages, "anthropic/overloaded_error.sse"),
    ];
    for (api, name) in cases {
        let raw = fixture(name);
        let point = commit_point(api, &raw).unwrap_or_else(|| panic!("{name}: no content"));
        // Not the first event: every fixture opens with events that hold.
        assert!(
            point > raw.iter().position(|b| *b == b'\n').unwrap_or(0),
            "{name}"
        );
        for split in 0..=raw.len() {
            let mut acc = SseAccountant::new(api, false, 1 << 20);
            let first = acc.push(&Bytes::copy_from_slice(&raw[..split]));
            // Content is seen after the first piece exactly when it holds the end of the
            // first content event, and what was forwarded by then is the same bytes.
            assert_eq!(
                acc.content_seen(),
                split >= point,
                "{name} split at {split}"
            );
            let mut out = first.to_vec();
            out.extend_from_slice(&acc.push(&Bytes::copy_from_slice(&raw[split..])));
            assert!(acc.content_seen(), "{name} split at {split}");
            assert_eq!(out[..point], raw[..point], "{name} split at {split}");
            assert_eq!(acc.error_code(), None, "{name}");
        }
    }
}
