//! The relay's recorder on a cache miss: one more consumer of the served attempt's header and
//! chunks. It keeps the response as received from the upstream (bounded by
//! `cache.max_entry_bytes`; past it, recording stops) and, when the relay ends, stores it only
//! if it is a complete answer:
//! - status 200, not `cache-control: no-store` or `private` from the upstream (RFC 9111
//!   sections 5.2.2.5 and 5.2.2.7), no `content-encoding` other than `identity`;
//! - delivered whole: no error, no client that left mid-way, no resumed stream (a spliced
//!   answer is not what one upstream said);
//! - a stream: its final event seen (`[DONE]`, `message_stop`, `response.completed` /
//!   `response.incomplete`), no error event, every choice's finish reason seen and the usage
//!   chunk (OpenAI chat), a `stop_reason` (Anthropic), no malformed or oversized event: the
//!   relay's own accountant says so ([`Delivered::stream_whole`]), so a stored stream is
//!   parsed once, as it is relayed;
//! - a JSON body: valid JSON, an object without `error`, and (Responses) a `status` that is
//!   `completed` or `incomplete` when present.

use super::entry::{unix_ms, Entry};
use super::key::Key;
use super::store::Store;
use crate::config::cache::CacheStoreKind;
use crate::config::Accounting;
use crate::metrics;
use crate::proxy::ctx::Delivered;
use crate::usage::{ApiKind, JsonAccountant, Usage};
use bytes::Bytes;
use pingora_http::ResponseHeader;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod top;

/// Where and how a miss's answer is stored, and what was received so far.
pub struct Recorder {
    store: Arc<Store>,
    key: Key,
    ttl: Duration,
    route_store: CacheStoreKind,
    /// Route name (metric label).
    route: Arc<str>,
    api: ApiKind,
    bounds: Accounting,
    sse: bool,
    content_type: String,
    buf: Vec<u8>,
    /// The response outgrew `max_entry_bytes`: nothing is kept.
    over: bool,
}

impl Recorder {
    /// A recorder that will store under `key` in `store` for `ttl` (`route_store`: the
    /// route's tiers). `bounds`: the accounting caps the stored stream is checked with.
    pub fn new(
        store: Arc<Store>,
        key: Key,
        ttl: Duration,
        route_store: CacheStoreKind,
        route: Arc<str>,
        api: ApiKind,
        bounds: Accounting,
    ) -> Recorder {
        Recorder {
            store,
            key,
            ttl,
            route_store,
            route,
            api,
            bounds,
            sse: false,
            content_type: String::new(),
            buf: Vec::new(),
            over: false,
        }
    }

    /// Start on the served attempt's `header`; `None` when the answer cannot be stored
    /// (not 200, `no-store` / `private`, encoded). `opening`: the bytes a stream held by
    /// `commit` already read, as received.
    pub fn begin(mut self, header: &ResponseHeader, opening: Option<&[u8]>) -> Option<Recorder> {
        if header.status.as_u16() != 200 {
            return None;
        }
        // One pass over the response's few headers (four lookups hash a name each: about 800
        // instructions per miss, callgrind, 2026-12-01). The first `content-type` and
        // `content-length` count, as `HeaderMap::get` reads them.
        let (mut content_type, mut sized) = (None, None);
        for (name, value) in &header.headers {
            if name == http::header::CONTENT_TYPE {
                content_type = content_type.or(Some(value));
            } else if name == http::header::CONTENT_LENGTH {
                sized = sized.or(Some(value));
            } else if !storable(name, value) {
                return None;
            }
        }
        let content_type = content_type
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        self.sse = content_type.starts_with("text/event-stream");
        self.content_type = content_type.to_owned();
        // A sized body is kept in one allocation of its size (no regrowth, no slack stored).
        let sized = sized.and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
        if let Some(n) = sized.filter(|n| *n <= self.store.max_entry_bytes()) {
            self.buf.reserve_exact(n);
        }
        self.push(opening.unwrap_or_default());
        Some(self)
    }

    /// Append body bytes as received from the upstream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.over || chunk.is_empty() {
            return;
        }
        if self.buf.len() + chunk.len() > self.store.max_entry_bytes() {
            self.over = true;
            self.buf = Vec::new();
            return;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The relay ended with `d`: store the answer if it is complete (see the module doc).
    pub fn finish(self, d: &Delivered) {
        let whole = !self.over
            && d.error.is_none()
            && d.completed
            && !d.client_disconnected
            && d.resumes == 0
            && d.legs.is_empty();
        if !whole {
            return;
        }
        let Recorder {
            store,
            key,
            ttl,
            route_store,
            route,
            api,
            bounds,
            sse,
            content_type,
            buf,
            ..
        } = self;
        let checked = if sse {
            d.stream_whole
                .then(|| whole_events(buf))
                .map(|body| (response_id(&body), body, d.usage.unwrap_or_default()))
        } else {
            check_json(api, buf, bounds.max_json_body_bytes, d.usage)
        };
        let Some((id, body, usage)) = checked else {
            return;
        };
        store.put(
            key,
            Entry {
                sse,
                content_type,
                body,
                id,
                usage,
                stored_at_ms: unix_ms(SystemTime::now()),
            },
            ttl,
            route_store,
        );
        metrics::CACHE_STORED.with_label_values(&[&route]).inc();
    }
}

/// Whether a response header allows storing the answer: not `cache-control: no-store` or
/// `private` (RFC 9111 section 5.2.2), and not a `content-encoding` other than `identity`.
fn storable(name: &http::HeaderName, value: &http::HeaderValue) -> bool {
    if name == http::header::CACHE_CONTROL {
        !value.to_str().unwrap_or("").split(',').any(|d| {
            let name = d.trim().split('=').next().unwrap_or("").trim();
            name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("private")
        })
    } else if name == http::header::CONTENT_ENCODING {
        value.as_bytes().eq_ignore_ascii_case(b"identity")
    } else {
        true
    }
}

/// A whole stream as received, ending on an event boundary: a final event the upstream left
/// without its blank line (the relay's accountant took it as whole) gets one. Kept in an
/// allocation of its size.
fn whole_events(mut raw: Vec<u8>) -> Bytes {
    let ended = raw.ends_with(b"\n\n") || raw.ends_with(b"\r\n\r\n") || raw.ends_with(b"\r\r");
    if !ended {
        // The last line's own end, if it has one, is repeated as the blank line.
        let blank: &[u8] = if raw.ends_with(b"\r\n") {
            b"\r\n"
        } else if raw.ends_with(b"\n") {
            b"\n"
        } else if raw.ends_with(b"\r") {
            b"\r"
        } else {
            b"\n\n"
        };
        raw.extend_from_slice(blank);
    }
    raw.shrink_to_fit();
    Bytes::from(raw)
}

/// A complete stream, framed into whole events, and its usage; `None` if incomplete. (The
/// relay's accountant makes the same check as it relays; this one, over a stream at rest,
/// is what tests and benches hold the relay's to.)
#[cfg(test)]
fn check_stream(api: ApiKind, raw: &[u8], max_event_bytes: usize) -> Option<(Bytes, Usage)> {
    use crate::usage::SseAccountant;
    let mut acc = SseAccountant::new(api, false, max_event_bytes);
    let mut out = acc.push(&Bytes::copy_from_slice(raw)).to_vec();
    out.extend_from_slice(&acc.finish());
    let finished = match api {
        ApiKind::OpenAiResponses => true,
        _ => acc.ended_after_final_content(true),
    };
    // A Gemini stream has no terminal event: its last chunk's finishReason and usage are it.
    let terminal = acc.completed() || api == ApiKind::GeminiGenerateContent;
    let ok = terminal
        && !acc.saw_error()
        && finished
        && acc.malformed_events() == 0
        && acc.oversized_events() == 0;
    ok.then(|| (Bytes::from(out), acc.usage().unwrap_or_default()))
}

/// The members of a JSON answer the check reads, borrowed (one pass, no tree built):
/// serde_json's reading, for a body no one parsed yet.
#[derive(serde::Deserialize)]
struct JsonPeek<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    /// `null` reads as `None` (serde's `Option`); anything else is an error answer.
    #[serde(default)]
    error: Option<Value>,
    #[serde(borrow, default)]
    status: Option<std::borrow::Cow<'a, str>>,
}

/// A complete JSON answer: its response id, the body and its usage; `None` if not one.
/// `relayed`: the usage the relay's accountant read from these same bytes. When it read one
/// (every API but Bedrock `InvokeModel`, whose usage is in the header), serde_json parsed the
/// body whole as one JSON document, so its top level is only searched and skimmed ([`top`]);
/// otherwise serde_json reads it here (and the usage is counted from it).
fn check_json(
    api: ApiKind,
    raw: Vec<u8>,
    max_json_bytes: usize,
    relayed: Option<Usage>,
) -> Option<(Option<String>, Bytes, Usage)> {
    let parsed = relayed.filter(|_| api != ApiKind::BedrockInvoke);
    let (id, error, status) = match parsed {
        Some(_) => {
            let t = top::read(&raw)?;
            (t.id.map(std::borrow::Cow::into_owned), t.error, t.status)
        }
        None => {
            let peek: JsonPeek<'_> = serde_json::from_slice(&raw).ok()?;
            (
                peek.id.map(std::borrow::Cow::into_owned),
                peek.error.is_some(),
                peek.status,
            )
        }
    };
    if error
        || status
            .as_deref()
            .is_some_and(|s| !matches!(s, "completed" | "incomplete"))
    {
        return None;
    }
    let mut raw = raw;
    raw.shrink_to_fit();
    let usage = match relayed {
        Some(u) => u,
        None => {
            let mut acc = JsonAccountant::new(api, max_json_bytes);
            acc.push(&raw);
            acc.finish().unwrap_or_default()
        }
    };
    Some((id, Bytes::from(raw), usage))
}

/// A stream's response id, to replace on a hit: top-level `id` (OpenAI chat chunks),
/// `message.id` (Anthropic `message_start`) or `response.id` (Responses), from the first
/// events that carry one. (A JSON answer's id comes from [`check_json`]'s pass.)
fn response_id(body: &[u8]) -> Option<String> {
    crate::usage::response_model::first_str(
        body,
        &[&["id"], &["message", "id"], &["response", "id"]],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = "data: {\"id\":\"chatcmpl-1\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}],\"usage\":null}\n\n\
        data: {\"id\":\"chatcmpl-1\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
        data: {\"id\":\"chatcmpl-1\",\"created\":1,\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n\
        data: [DONE]\n\n";

    #[test]
    fn a_complete_chat_stream_is_kept_with_its_usage() {
        let (body, usage) = check_stream(ApiKind::OpenAiChat, CHAT.as_bytes(), 1 << 20).unwrap();
        assert_eq!(&body[..], CHAT.as_bytes());
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (5, 2));
        assert_eq!(response_id(&body).as_deref(), Some("chatcmpl-1"));
    }

    #[test]
    fn incomplete_or_failed_streams_are_not() {
        let cut = &CHAT[..CHAT.find("data: [DONE]").unwrap()];
        // Without `[DONE]` the stream did not reach its final event.
        assert!(check_stream(ApiKind::OpenAiChat, cut.as_bytes(), 1 << 20).is_none());
        let no_usage = CHAT.replace(
            "data: {\"id\":\"chatcmpl-1\",\"created\":1,\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "",
        );
        assert!(check_stream(ApiKind::OpenAiChat, no_usage.as_bytes(), 1 << 20).is_none());
        let error = format!(
            "{}data: {{\"error\":{{\"message\":\"x\",\"type\":\"server_error\"}}}}\n\ndata: [DONE]\n\n",
            &CHAT[..CHAT.find("data: {\"id\":\"chatcmpl-1\",\"created\":1,\"choices\":[]").unwrap()]
        );
        assert!(check_stream(ApiKind::OpenAiChat, error.as_bytes(), 1 << 20).is_none());
    }

    #[test]
    fn a_gemini_stream_is_kept_only_when_its_last_chunk_finished() {
        let done = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":1}}\r\n\r\n";
        let (_, usage) =
            check_stream(ApiKind::GeminiGenerateContent, done.as_bytes(), 1 << 20).unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 1));
        let open = done.replace(",\"finishReason\":\"STOP\"", "");
        assert!(check_stream(ApiKind::GeminiGenerateContent, open.as_bytes(), 1 << 20).is_none());
    }

    #[test]
    fn a_whole_stream_is_stored_as_received_ending_on_an_event_boundary() {
        // As received: unchanged, and the same bytes the check at rest frames.
        let (framed, _) = check_stream(ApiKind::OpenAiChat, CHAT.as_bytes(), 1 << 20).unwrap();
        assert_eq!(whole_events(CHAT.as_bytes().to_vec()), framed);
        // A final event left without its blank line gets one, in the stream's own line end.
        for (raw, want) in [
            ("data: [DONE]", "data: [DONE]\n\n"),
            ("data: [DONE]\n", "data: [DONE]\n\n"),
            ("data: [DONE]\r\n", "data: [DONE]\r\n\r\n"),
            ("data: [DONE]\r", "data: [DONE]\r\r"),
        ] {
            assert_eq!(&whole_events(raw.as_bytes().to_vec())[..], want.as_bytes());
        }
    }

    #[test]
    fn json_bodies() {
        let ok = br#"{"id":"msg_1","type":"message","content":[],"usage":{"input_tokens":3,"output_tokens":4}}"#;
        let (id, body, usage) =
            check_json(ApiKind::AnthropicMessages, ok.to_vec(), 1 << 20, None).unwrap();
        assert_eq!(usage.completion_tokens, 4);
        assert_eq!(&body[..], &ok[..]);
        assert_eq!(id.as_deref(), Some("msg_1"));
        // The relay's usage is taken as is when it read one.
        let relayed = Usage {
            completion_tokens: 9,
            ..Usage::default()
        };
        let (_, _, usage) = check_json(
            ApiKind::AnthropicMessages,
            ok.to_vec(),
            1 << 20,
            Some(relayed),
        )
        .unwrap();
        assert_eq!(usage.completion_tokens, 9);
        assert!(check_json(ApiKind::OpenAiChat, b"{\"id\":".to_vec(), 1 << 20, None).is_none());
        let err = br#"{"error":{"message":"x"}}"#;
        assert!(check_json(ApiKind::OpenAiChat, err.to_vec(), 1 << 20, None).is_none());
        let null_error = br#"{"id":"x","error":null}"#;
        assert!(check_json(ApiKind::OpenAiChat, null_error.to_vec(), 1 << 20, None).is_some());
        let failed = br#"{"id":"resp_1","status":"failed"}"#;
        assert!(check_json(ApiKind::OpenAiResponses, failed.to_vec(), 1 << 20, None).is_none());
    }

    #[test]
    fn upstream_cache_control_and_encoding_are_obeyed() {
        let all = |h: &http::HeaderMap| h.iter().all(|(n, v)| storable(n, v));
        let mut h = http::HeaderMap::new();
        assert!(all(&h));
        h.insert(
            http::header::CACHE_CONTROL,
            "max-age=0, Private".parse().unwrap(),
        );
        assert!(!all(&h));
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert!(!all(&h));
        h.insert(http::header::CACHE_CONTROL, "no-cache".parse().unwrap());
        assert!(all(&h));
        // A second `cache-control` line counts too.
        h.append(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert!(!all(&h));
        h.remove(http::header::CACHE_CONTROL);
        h.insert(http::header::CONTENT_ENCODING, "Identity".parse().unwrap());
        assert!(all(&h));
        h.insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(!all(&h));
    }

    /// `begin` reads the response header in one pass: what it keeps and refuses.
    #[test]
    fn begin_keeps_a_storable_200_and_refuses_the_rest() {
        let store = Arc::new(Store::new(&super::super::store::test_settings(
            1 << 20,
            1 << 16,
        )));
        let rec = || {
            Recorder::new(
                store.clone(),
                Key([7; 32]),
                Duration::from_secs(60),
                CacheStoreKind::Memory,
                Arc::from("r"),
                ApiKind::OpenAiChat,
                Accounting::default(),
            )
        };
        let header = |status: u16, headers: &[(&str, &str)]| {
            let mut h = ResponseHeader::build(status, None).unwrap();
            for (n, v) in headers {
                h.append_header(n.to_string(), *v).unwrap();
            }
            h
        };
        let sse = header(
            200,
            &[
                ("content-type", "text/event-stream; charset=utf-8"),
                ("x-other", "1"),
            ],
        );
        let r = rec().begin(&sse, Some(b"data: {}\n\n")).unwrap();
        assert!(r.sse);
        assert_eq!(r.content_type, "text/event-stream; charset=utf-8");
        assert_eq!(r.buf, b"data: {}\n\n");
        let json = header(200, &[("content-length", "12")]);
        let r = rec().begin(&json, None).unwrap();
        assert!(!r.sse);
        assert_eq!(r.content_type, "application/json");
        assert!(r.buf.capacity() >= 12);
        assert!(rec().begin(&header(500, &[]), None).is_none());
        assert!(rec()
            .begin(&header(200, &[("cache-control", "private")]), None)
            .is_none());
        assert!(rec()
            .begin(&header(200, &[("content-encoding", "br")]), None)
            .is_none());
    }
}
