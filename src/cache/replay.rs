//! A stored response made fresh for a hit: the response id replaced by a new one of the same
//! kind, and the creation time set to now, in the same bytes (same event shapes, same JSON).
//!
//! What is rewritten, per API:
//! - OpenAI chat completions (JSON and every `chat.completion.chunk`): `id` (`chatcmpl-…`) and
//!   `created` (Unix seconds) (OpenAI API reference, "The chat completion object" / "chunk
//!   object");
//! - OpenAI Responses: `response.id` (`resp_…`) wherever it appears, and `created_at`
//!   (OpenAI API reference, "The response object"; streamed in `response.created`,
//!   `response.in_progress`, `response.completed`);
//! - Anthropic Messages: the message `id` (`msg_…`; streamed in `message_start.message`)
//!   (Anthropic API reference, "Messages" and "Streaming Messages"); it has no creation time.
//!
//! The rewrite is textual, without re-serializing: every occurrence of the old id as a whole
//! JSON string (`"chatcmpl-…"`), and the number after a `"created"` or `"created_at"` key. A
//! JSON string's content cannot hold an unescaped `"`, so neither pattern can match inside a
//! content string.

use super::entry::Entry;
use crate::usage::{ApiKind, SseAccountant};
use bytes::Bytes;
use memchr::memmem;

/// The body a hit sends: [`fresh_body`] with a [`fresh_id`] and the time now; for a stream
/// whose client did not ask for usage (`hide_usage`: sluice added
/// `stream_options.include_usage`), passed through the [`SseAccountant`] in hide mode, so the
/// usage chunk is hidden exactly as on a live stream. `max_event_bytes`:
/// `accounting.max_sse_event_bytes`.
pub fn for_client(entry: &Entry, api: ApiKind, hide_usage: bool, max_event_bytes: usize) -> Bytes {
    let new_id = entry.id.as_deref().map(fresh_id).unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fresh = Bytes::from(fresh_body(entry, &new_id, now));
    if !(entry.sse && hide_usage) {
        return fresh;
    }
    let mut acc = SseAccountant::new(api, true, max_event_bytes);
    let mut out = acc.push(&fresh).to_vec();
    out.extend_from_slice(&acc.finish());
    Bytes::from(out)
}

/// The entry's body with a fresh id (`new_id`, from [`fresh_id`]) and creation time
/// (`now_secs`, Unix seconds).
pub fn fresh_body(entry: &Entry, new_id: &str, now_secs: u64) -> Vec<u8> {
    let body: &[u8] = &entry.body;
    let with_id = match entry.id.as_deref().filter(|id| !id.is_empty()) {
        Some(old) => replace_string(body, old, new_id),
        None => body.to_vec(),
    };
    replace_created(&with_id, now_secs)
}

/// A new id shaped like `old`: its prefix up to and including the first `-` or `_`
/// (`chatcmpl-`, `resp_`, `msg_`), then 32 random hex digits.
pub fn fresh_id(old: &str) -> String {
    let prefix = old.find(['-', '_']).map_or("", |i| &old[..=i]);
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// `body` with every `"old"` JSON string replaced by `"new"`.
fn replace_string(body: &[u8], old: &str, new: &str) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(old.len() + 2);
    pattern.push(b'"');
    pattern.extend_from_slice(old.as_bytes());
    pattern.push(b'"');
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut from = 0;
    for at in memmem::find_iter(body, &pattern) {
        out.extend_from_slice(&body[from..at]);
        out.push(b'"');
        out.extend_from_slice(new.as_bytes());
        out.push(b'"');
        from = at + pattern.len();
    }
    out.extend_from_slice(&body[from..]);
    out
}

/// `body` with the integer after each `"created"` / `"created_at"` key set to `now`.
fn replace_created(body: &[u8], now: u64) -> Vec<u8> {
    const KEY: &[u8] = b"\"created";
    let now = now.to_string();
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut from = 0;
    for at in memmem::find_iter(body, KEY) {
        if at < from {
            continue;
        }
        let mut j = at + KEY.len();
        if body[j..].starts_with(b"_at") {
            j += 3;
        }
        if body.get(j) != Some(&b'"') {
            continue;
        }
        j += 1;
        let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
        while body.get(j).is_some_and(blank) {
            j += 1;
        }
        if body.get(j) != Some(&b':') {
            continue;
        }
        j += 1;
        while body.get(j).is_some_and(blank) {
            j += 1;
        }
        let digits = body[j..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            continue;
        }
        out.extend_from_slice(&body[from..j]);
        out.extend_from_slice(now.as_bytes());
        from = j + digits;
    }
    out.extend_from_slice(&body[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;
    use bytes::Bytes;

    fn entry(body: &'static str, id: &str) -> Entry {
        Entry {
            sse: true,
            content_type: "text/event-stream".to_owned(),
            body: Bytes::from_static(body.as_bytes()),
            id: Some(id.to_owned()),
            usage: Usage::default(),
            stored_at_ms: 0,
        }
    }

    #[test]
    fn chat_chunks_get_a_new_id_and_time() {
        let e = entry(
            "data: {\"id\":\"chatcmpl-abc\",\"created\":1700000000,\"choices\":[{\"delta\":{\"content\":\"say \\\"chatcmpl-abc\\\" created\"}}]}\n\n\
             data: {\"id\": \"chatcmpl-abc\", \"created\": 1700000000}\n\ndata: [DONE]\n\n",
            "chatcmpl-abc",
        );
        let id = fresh_id("chatcmpl-abc");
        assert!(id.starts_with("chatcmpl-") && id.len() == 9 + 32);
        let out = String::from_utf8(fresh_body(&e, &id, 1800000000)).unwrap();
        assert_eq!(out.matches(&format!("\"{id}\"")).count(), 2);
        assert!(!out.contains("1700000000"));
        assert_eq!(out.matches("1800000000").count(), 2);
        // Content strings are untouched (their quotes are escaped).
        assert!(out.contains("say \\\"chatcmpl-abc\\\" created"));
    }

    #[test]
    fn responses_and_anthropic_ids() {
        let e = entry(
            "event: response.created\ndata: {\"response\":{\"id\":\"resp_1\",\"created_at\":17}}\n\n",
            "resp_1",
        );
        let out = String::from_utf8(fresh_body(&e, "resp_new", 99)).unwrap();
        assert_eq!(
            out,
            "event: response.created\ndata: {\"response\":{\"id\":\"resp_new\",\"created_at\":99}}\n\n"
        );
        assert!(fresh_id("msg_01XYZ").starts_with("msg_"));
        assert_eq!(fresh_id("plain").len(), 32);
    }

    proptest::proptest! {
        /// Any stored bytes (a corrupt entry from another tier) are rewritten without a panic,
        /// and bytes without an id or a `"created` key come out unchanged.
        #[test]
        fn any_body_is_rewritten_without_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            id in "[a-z_-]{0,12}",
        ) {
            let e = Entry {
                body: Bytes::from(body.clone()),
                id: Some(id),
                ..entry("", "x")
            };
            let out = fresh_body(&e, "new", 5);
            let untouched = memmem::find(&body, b"\"created").is_none()
                && e.id.as_deref().is_none_or(|id| {
                    id.is_empty() || memmem::find(&body, format!("\"{id}\"").as_bytes()).is_none()
                });
            if untouched {
                proptest::prop_assert_eq!(out, body);
            }
        }
    }
}
