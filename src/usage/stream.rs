//! Streamed-response accountant (response body path, per chunk): frames SSE, hands each event
//! to its API's parser, and in hide mode strips the usage the proxy asked for on the client's
//! behalf.

use bytes::Bytes;

use super::sse::{Frame, SseEvent, SseFramer, KEEP_CAPACITY_BYTES};
use super::wire::TextBuf;
use super::{anthropic, openai_chat, openai_responses, ApiKind, Usage};

/// What hide mode does with one complete event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Forward unchanged.
    Keep,
    /// Forward without its top-level `"usage":null` member.
    StripUsageNull,
    /// Do not forward (the usage-only chunk).
    Drop,
}

/// What the stream has told so far; the per-API parsers update it.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(crate) usage: Option<Usage>,
    pub(crate) text: TextBuf,
    pub(crate) completed: bool,
    pub(crate) saw_error: bool,
    events: u64,
    malformed: u64,
    oversized: u64,
}

/// Hide-mode bookkeeping: raw bytes of the event in progress.
#[derive(Debug, Default)]
struct Hider {
    /// Raw bytes of the event in progress (at most the framer's cap: past it the event is
    /// passed through instead).
    held: Vec<u8>,
    /// The event in progress is oversized: its bytes are forwarded as they arrive.
    passing: bool,
    /// The last event ended on a `\r` that was its chunk's last byte, so a `\n` opening the
    /// next chunk is the rest of its terminator: `Some(true)` forwards that `\n` (the event
    /// was forwarded), `Some(false)` drops it (the event was dropped).
    pending_lf: Option<bool>,
}

impl Hider {
    /// Forgets the event just handled, giving back the memory of a big one.
    fn clear(&mut self) {
        self.held.clear();
        if self.held.capacity() > KEEP_CAPACITY_BYTES {
            self.held.shrink_to(KEEP_CAPACITY_BYTES);
        }
    }
}

/// Incremental accountant for one streamed (`text/event-stream`) response body, fed the body
/// chunks exactly as the upstream sent them.
///
/// Events larger than the cap (see [`SseAccountant::new`]) are not parsed: their
/// bytes are forwarded as they arrive, [`SseAccountant::oversized_events`] counts them, and
/// only their `event:` name (when it came first) is used, to see a terminal or error event.
/// The caller should then treat the usage as estimated.
///
/// Hide mode (`hide_usage_chunk`, OpenAI chat/completions and legacy completions only; ignored
/// for other APIs) is for a request the proxy itself gave `stream_options.include_usage`. The
/// client then receives the stream it would have had without that option:
/// - the usage-only chunk (a `data:` JSON whose `usage` is non-null and whose `choices` is
///   empty, null or absent) is removed whole, blank line included;
/// - every other chunk whose top-level `usage` is `null` loses that member, textually: the
///   first `,"usage":null` is cut (the form real OpenAI and llmock send, compact JSON with
///   `usage` after `choices`, before OpenAI's `obfuscation`); failing that `"usage":null,`
///   (member first); spaces or tabs around `:` and `,` are tolerated. A `,"` cannot occur
///   inside a JSON string (quotes there are escaped), so the match is never in content.
/// - everything else (comments, `[DONE]`, malformed and oversized events, a chunk that carries
///   usage next to choices) is forwarded byte-for-byte.
///
/// Hide mode holds at most the event in progress, and with the parsed copy never more than
/// `max_event_bytes` in all.
pub struct SseAccountant {
    api: ApiKind,
    framer: SseFramer,
    state: StreamState,
    hider: Option<Hider>,
}

impl SseAccountant {
    /// An accountant for a stream of `api`. `hide_usage_chunk`: true when the proxy added
    /// `stream_options.include_usage` to an OpenAI chat/completions request the client sent
    /// without it (see the type's doc for exactly what is removed). `max_event_bytes`: the
    /// most bytes held for the event in progress: the largest event parsed (its raw bytes up
    /// to the blank line that ends it), or in hide mode, which holds an event twice (parsed,
    /// and raw for rewriting), twice the largest event parsed.
    pub fn new(api: ApiKind, hide_usage_chunk: bool, max_event_bytes: usize) -> Self {
        let hide =
            hide_usage_chunk && matches!(api, ApiKind::OpenAiChat | ApiKind::OpenAiCompletions);
        // Hide mode holds each event twice (parsed, and raw for rewriting): each copy gets
        // half of the cap, so the stream never holds more than the cap in all.
        let parse_cap = if hide {
            (max_event_bytes / 2).max(1)
        } else {
            max_event_bytes
        };
        SseAccountant {
            api,
            framer: SseFramer::new(parse_cap),
            state: StreamState::default(),
            hider: hide.then(Hider::default),
        }
    }

    /// Feeds one body chunk as received (split anywhere: inside a line, a `\r\n`, a UTF-8
    /// character). Returns the bytes to forward to the client now: outside hide mode, `chunk`
    /// itself (a `Bytes` clone, no copy); in hide mode, the complete events seen so far minus
    /// the hidden parts, a partial trailing event being held until it completes (or until it
    /// passes the cap, when it is forwarded as it arrives).
    pub fn push(&mut self, chunk: &Bytes) -> Bytes {
        let SseAccountant {
            api,
            framer,
            state,
            hider,
        } = self;
        let api = *api;
        let Some(hider) = hider.as_mut() else {
            framer.feed(chunk, |frame| match frame {
                Frame::Event(event, _) => {
                    account(api, state, &event);
                }
                Frame::Empty(_) => {}
                Frame::Oversized => state.oversized += 1,
                Frame::Skipped { name, .. } => account_unparsed(api, state, name),
            });
            return chunk.clone();
        };
        let mut seg = 0;
        let mut out = Vec::new();
        if !chunk.is_empty() {
            if let Some(forward) = hider.pending_lf.take() {
                if chunk[0] == b'\n' {
                    seg = 1;
                    if forward {
                        out.push(b'\n');
                    }
                }
            }
        }
        framer.feed(chunk, |frame| {
            let (verdict, at) = match frame {
                Frame::Event(event, at) => (account(api, state, &event), at),
                Frame::Empty(at) => (Verdict::Keep, at),
                Frame::Oversized => {
                    // Forward what was held of it and, from now on, its bytes as they come.
                    state.oversized += 1;
                    out.extend_from_slice(&hider.held);
                    hider.clear();
                    hider.passing = true;
                    return;
                }
                Frame::Skipped { name, at } => {
                    account_unparsed(api, state, name);
                    hider.passing = false;
                    (Verdict::Keep, at)
                }
            };
            let tail = &chunk[seg..at.end];
            match verdict {
                Verdict::Keep => {
                    out.extend_from_slice(&hider.held);
                    out.extend_from_slice(tail);
                }
                Verdict::StripUsageNull => {
                    hider.held.extend_from_slice(tail);
                    strip_usage_null(&mut hider.held);
                    out.extend_from_slice(&hider.held);
                }
                Verdict::Drop => {}
            }
            if at.cr_pending {
                hider.pending_lf = Some(verdict != Verdict::Drop);
            }
            hider.clear();
            seg = at.end;
        });
        if hider.passing {
            out.extend_from_slice(&chunk[seg..]);
        } else {
            hider.held.extend_from_slice(&chunk[seg..]);
        }
        Bytes::from(out)
    }

    /// End of the upstream body: accounts a trailing event left without its blank line and
    /// returns the bytes still held (hide mode only: the trailing incomplete event, forwarded
    /// as-is rather than lost; otherwise empty).
    pub fn finish(&mut self) -> Bytes {
        let SseAccountant {
            api,
            framer,
            state,
            hider,
        } = self;
        let api = *api;
        framer.finish(|frame| match frame {
            Frame::Event(event, _) => {
                account(api, state, &event);
            }
            Frame::Empty(_) | Frame::Oversized => {}
            Frame::Skipped { name, .. } => account_unparsed(api, state, name),
        });
        match hider {
            Some(hider) => {
                hider.passing = false;
                Bytes::from(std::mem::take(&mut hider.held))
            }
            None => Bytes::new(),
        }
    }

    /// Exact usage the upstream reported so far, `None` if none was seen. OpenAI chat and
    /// completions: the (last) chunk with a non-null `usage`. Responses: `response.usage` of
    /// `response.completed`, `response.incomplete` or `response.failed`. Anthropic: input and
    /// cache fields from `message_start.message.usage`, `output_tokens` from the last
    /// (cumulative) `message_delta.usage`, whose repeated input/cache fields override
    /// `message_start`'s. Values are as the upstream sent them (up to `u64::MAX`): the caller
    /// judges plausibility.
    pub fn usage(&self) -> Option<Usage> {
        self.state.usage
    }

    /// Generated text delivered so far (UTF-8, capped at 4 MiB), to estimate completion tokens
    /// when usage never arrives. Chat: `choices[].delta.content`, `.refusal`,
    /// `.reasoning_content`, `.tool_calls[].function.arguments` (legacy completions:
    /// `choices[].text`). Responses: `delta` of `response.output_text.delta`,
    /// `response.refusal.delta`, `response.function_call_arguments.delta`. Anthropic:
    /// `content_block_delta` `delta.text`, `delta.partial_json`, `delta.thinking`.
    pub fn output_text(&self) -> &str {
        self.state.text.as_str()
    }

    /// True once the stream's normal terminal event was seen: `data: [DONE]` (OpenAI chat and
    /// completions), `response.completed` or `response.incomplete` (Responses: both end the
    /// stream cleanly, the latter at a token limit), `message_stop` (Anthropic). An oversized
    /// event counts by its `event:` name.
    pub fn completed(&self) -> bool {
        self.state.completed
    }

    /// True if the upstream sent an in-stream error: any `event: error`; OpenAI chat a `data:`
    /// JSON with a non-null top-level `error`; Responses an `error` or `response.failed` event;
    /// Anthropic an `error` event.
    pub fn saw_error(&self) -> bool {
        self.state.saw_error
    }

    /// Number of SSE events seen (each blank-line-terminated block with a `data:` or `event:`
    /// line, `data: [DONE]` included, oversized ones too; comments excluded).
    pub fn events(&self) -> u64 {
        self.state.events
    }

    /// Number of events whose data is not the JSON their API sends (invalid or truncated JSON,
    /// binary, a block without `data:`). They are forwarded untouched and parsing goes on.
    pub fn malformed_events(&self) -> u64 {
        self.state.malformed
    }

    /// Number of events larger than the cap, forwarded without being parsed. When non-zero,
    /// the usage and output text may miss what those events carried.
    pub fn oversized_events(&self) -> u64 {
        self.state.oversized
    }

    /// Bytes of stream content held now (the parsed event in progress plus, in hide mode, its
    /// raw bytes): at most `max_event_bytes`, whatever the upstream sends.
    pub fn held_bytes(&self) -> usize {
        self.framer.held_bytes() + self.hider.as_ref().map_or(0, |h| h.held.len())
    }
}

/// Counts one event and hands it to its API's parser.
fn account(api: ApiKind, state: &mut StreamState, event: &SseEvent<'_>) -> Verdict {
    state.events += 1;
    if event.name == b"error" {
        state.saw_error = true;
    }
    if !event.has_data {
        state.malformed += 1;
        return Verdict::Keep;
    }
    let name = std::str::from_utf8(event.name).unwrap_or("");
    let parsed = match api {
        ApiKind::OpenAiResponses => {
            openai_responses::on_event(state, name, event.data).map(|()| Verdict::Keep)
        }
        ApiKind::AnthropicMessages => {
            anthropic::on_event(state, name, event.data).map(|()| Verdict::Keep)
        }
        _ if api.is_openai_chunked() => openai_chat::on_event(state, event.data),
        _ => Ok(Verdict::Keep),
    };
    parsed.unwrap_or_else(|_| {
        state.malformed += 1;
        Verdict::Keep
    })
}

/// Counts an oversized event, known only by its `event:` name (possibly empty): a terminal
/// or error name still ends or fails the stream, as its JSON `type` would have.
fn account_unparsed(api: ApiKind, state: &mut StreamState, name: &[u8]) {
    state.events += 1;
    match (api, name) {
        (_, b"error") => state.saw_error = true,
        (ApiKind::OpenAiResponses, b"response.completed" | b"response.incomplete") => {
            state.completed = true;
        }
        (ApiKind::OpenAiResponses, b"response.failed") => state.saw_error = true,
        (ApiKind::AnthropicMessages, b"message_stop") => state.completed = true,
        _ => {}
    }
}

/// Removes the first top-level-looking `"usage":null` member from raw event bytes (see
/// [`SseAccountant`]'s doc for the rule). Returns whether something was removed.
pub(crate) fn strip_usage_null(raw: &mut Vec<u8>) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    let is_blank = |b: u8| b == b' ' || b == b'\t';
    let mut from = 0;
    while let Some(rel) = find(&raw[from..], KEY) {
        let key = from + rel;
        from = key + KEY.len();
        // After the key: blanks, ':', blanks, "null", then a delimiter.
        let mut j = skip(raw, key + KEY.len(), is_blank);
        if raw.get(j) != Some(&b':') {
            continue;
        }
        j = skip(raw, j + 1, is_blank);
        if !raw[j..].starts_with(b"null") {
            continue;
        }
        let end = j + 4;
        if raw.get(end).is_some_and(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        // Preferred: cut the separator before it (`,"usage":null`).
        let mut k = key;
        while k > 0 && is_blank(raw[k - 1]) {
            k -= 1;
        }
        if k > 0 && raw[k - 1] == b',' {
            raw.drain(k - 1..end);
            return true;
        }
        if k == 0 || raw[k - 1] != b'{' {
            continue; // not a plain object member (e.g. data split over lines): leave it
        }
        // First member: cut the separator after it (`"usage":null,`), or only member.
        let after = skip(raw, end, is_blank);
        match raw.get(after) {
            Some(b',') => {
                let after = skip(raw, after + 1, is_blank);
                raw.drain(key..after);
                return true;
            }
            Some(b'}') => {
                raw.drain(key..end);
                return true;
            }
            _ => continue,
        }
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn skip(raw: &[u8], mut i: usize, pred: impl Fn(u8) -> bool) -> usize {
    while i < raw.len() && pred(raw[i]) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(s: &str) -> String {
        let mut raw = s.as_bytes().to_vec();
        strip_usage_null(&mut raw);
        String::from_utf8(raw).unwrap()
    }

    #[test]
    fn strip_rule_covers_the_shapes_seen_on_the_wire() {
        // llmock (usage last) and real OpenAI (usage before obfuscation).
        assert_eq!(
            strip(r#"data: {"choices":[],"usage":null}"#),
            r#"data: {"choices":[]}"#
        );
        assert_eq!(
            strip(r#"data: {"choices":[],"usage":null,"obfuscation":"x"}"#),
            r#"data: {"choices":[],"obfuscation":"x"}"#
        );
        // Python json.dumps default separators.
        assert_eq!(strip(r#"{"a": 1, "usage": null}"#), r#"{"a": 1}"#);
        assert_eq!(strip(r#"{"usage": null, "a": 1}"#), r#"{"a": 1}"#);
        assert_eq!(strip(r#"{"usage":null}"#), r#"{}"#);
        // Content that mentions usage is not touched: quotes inside strings are escaped.
        let content = r#"{"c":"say \"usage\":null","usage":null}"#;
        assert_eq!(strip(content), r#"{"c":"say \"usage\":null"}"#);
        assert_eq!(strip(r#"{"usage":nullx}"#), r#"{"usage":nullx}"#);
        // JSON split over two data lines: no separator next to it, left alone (still valid).
        let split = "data: {\"choices\":[],\ndata: \"usage\":null}";
        assert_eq!(strip(split), split);
        assert_eq!(strip(r#"{"usage":{"a":1}}"#), r#"{"usage":{"a":1}}"#);
    }

    #[test]
    fn hide_is_ignored_outside_chat_apis() {
        let mut acc = SseAccountant::new(ApiKind::AnthropicMessages, true, 1 << 20);
        let chunk =
            Bytes::from_static(b"event: ping\ndata: {\"type\":\"ping\",\"usage\":null}\n\n");
        let out = acc.push(&chunk);
        assert_eq!(out, chunk);
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }
}
