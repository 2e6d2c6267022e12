//! Streamed-response accountant (response body path, per chunk): frames SSE (or, for Ollama,
//! NDJSON: one line per event), hands each event to its API's parser, and in hide mode strips
//! the usage the proxy asked for on the client's behalf.

use bytes::Bytes;

use super::framing::Framer;
use super::sse::{Frame, SseEvent, KEEP_CAPACITY_BYTES};
use super::strip::strip_usage_null;
use super::wire::{
    anthropic_messages, bedrock_converse, gemini, ollama, openai_chat, openai_responses, Signal,
    TextBuf,
};
use super::{ApiKind, Usage};

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
    /// Reused buffer where a fast path decodes an escaped string before pushing it to `text`.
    pub(crate) scratch: String,
    pub(crate) completed: bool,
    pub(crate) saw_error: bool,
    /// OpenAI chat/completions: one bit per choice index seen (indices of 63 and more share
    /// the last bit), and one per choice that carried a non-null `finish_reason`.
    pub(crate) choices_seen: u64,
    pub(crate) choices_finished: u64,
    /// Anthropic: a `message_delta` carried a non-null `delta.stop_reason`. Gemini: the last
    /// event finished every candidate (`finishReason`) or reported a blocked prompt.
    pub(crate) stop_reason_seen: bool,
    /// Responses: the largest `sequence_number` seen.
    pub(crate) last_sequence_number: Option<u64>,
    /// An event carrying output went by (commit on content; decided per event only until then).
    pub(crate) content_seen: bool,
    /// The native code or type of the first error event seen before any content.
    pub(crate) error_code: Option<String>,
    /// The framer lost the stream's framing (see [`SseAccountant::broken`]).
    pub(crate) broken: bool,
    events: u64,
    malformed: u64,
    oversized: u64,
}

/// The raw bytes of the event in progress, withheld until its blank line arrives so that the
/// client only ever receives whole events.
#[derive(Debug, Default)]
struct Holder {
    /// Raw bytes of the event in progress (at most the framer's cap: past it the event is
    /// passed through instead).
    held: Vec<u8>,
    /// The event in progress is oversized: its bytes are forwarded as they arrive.
    passing: bool,
    /// The last event ended on a `\r` that was its chunk's last byte, so a `\n` opening the
    /// next chunk is the rest of its terminator: `Some(true)` forwards that `\n` (the event
    /// was forwarded), `Some(false)` drops it (the event was dropped by hide mode).
    pending_lf: Option<bool>,
}

impl Holder {
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
/// Whole events only: [`SseAccountant::push`] returns the bytes up to the last complete event
/// (its blank line included) and withholds the event in progress until its blank line
/// arrives, so a complete event is forwarded the moment it completes and a stream cut
/// anywhere leaves the client on an event boundary, where the caller can append a native
/// error event ([`SseAccountant::finish`] says what to add first).
///
/// Events larger than the cap (see [`SseAccountant::new`]) are not parsed and cannot be
/// withheld: their bytes are forwarded as they arrive, [`SseAccountant::oversized_events`]
/// counts them, and only their `event:` name (when it came first) is used, to see a terminal
/// or error event. The caller should then treat the usage as estimated.
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
/// Memory: the event in progress is held twice (parsed, and raw to forward it whole), each
/// copy at most half of `max_event_bytes`, so never more than `max_event_bytes` in all.
pub struct SseAccountant {
    api: ApiKind,
    hide: bool,
    framer: Framer,
    state: StreamState,
    holder: Holder,
}

impl SseAccountant {
    /// An accountant for a stream of `api`. `hide_usage_chunk`: true when the proxy added
    /// `stream_options.include_usage` to an OpenAI chat/completions request the client sent
    /// without it (see the type's doc for exactly what is removed). `max_event_bytes`: the
    /// most bytes held for the event in progress; it is held twice (parsed, and raw until its
    /// blank line), so events of up to half of it (raw bytes up to the blank line that ends
    /// them) are parsed and withheld until complete, larger ones are forwarded unparsed.
    pub fn new(api: ApiKind, hide_usage_chunk: bool, max_event_bytes: usize) -> Self {
        let hide =
            hide_usage_chunk && matches!(api, ApiKind::OpenAiChat | ApiKind::OpenAiCompletions);
        SseAccountant {
            api,
            hide,
            framer: Framer::for_api(api, (max_event_bytes / 2).max(1)),
            state: StreamState::default(),
            holder: Holder::default(),
        }
    }

    /// Feeds one body chunk as received (split anywhere: inside a line, a `\r\n`, a UTF-8
    /// character). Returns the bytes to forward to the client now: the complete events seen
    /// so far (minus the hidden parts in hide mode), a partial trailing event being held until
    /// it completes (or until it passes the cap, when it is forwarded as it arrives). Outside
    /// hide mode, when nothing was held from earlier chunks, the result is a slice of `chunk`
    /// (no copy).
    pub fn push(&mut self, chunk: &Bytes) -> Bytes {
        if self.hide {
            self.push_hiding(chunk)
        } else {
            self.push_whole_events(chunk)
        }
    }

    /// [`SseAccountant::push`] outside hide mode: every event is forwarded unchanged.
    fn push_whole_events(&mut self, chunk: &Bytes) -> Bytes {
        let SseAccountant {
            api,
            framer,
            state,
            holder,
            ..
        } = self;
        let api = *api;
        // Bytes of `chunk` up to the end of its last complete event.
        let mut end = 0;
        if !chunk.is_empty() && holder.pending_lf.take().is_some() && chunk[0] == b'\n' {
            end = 1;
        }
        framer.feed(chunk, |frame| {
            let at = match frame {
                Frame::Event(event, at) => {
                    account(api, state, &event);
                    at
                }
                Frame::Empty(at) => at,
                Frame::Oversized => {
                    state.oversized += 1;
                    holder.passing = true;
                    return;
                }
                Frame::Skipped { name, at } => {
                    account_unparsed(api, state, name);
                    holder.passing = false;
                    at
                }
            };
            end = at.end;
            holder.pending_lf = at.cr_pending.then_some(true);
        });
        if holder.passing {
            end = chunk.len();
        }
        let out = if holder.held.is_empty() {
            chunk.slice(..end)
        } else if end == 0 {
            Bytes::new()
        } else {
            // Exactly sized, so `Bytes::from` keeps it as is (one allocation per such chunk);
            // the holder keeps its capacity for the next partial event.
            let mut out = Vec::with_capacity(holder.held.len() + end);
            out.extend_from_slice(&holder.held);
            out.extend_from_slice(&chunk[..end]);
            holder.clear();
            Bytes::from(out)
        };
        if framer.broken() {
            // The framing is lost (an AWS event stream CRC did not check): nothing after the
            // last whole event is held or forwarded; the caller ends the stream.
            if !std::mem::replace(&mut state.broken, true) {
                state.malformed += 1;
            }
            holder.clear();
            return out;
        }
        holder.held.extend_from_slice(&chunk[end..]);
        out
    }

    /// [`SseAccountant::push`] in hide mode: events are rewritten or dropped per their verdict.
    fn push_hiding(&mut self, chunk: &Bytes) -> Bytes {
        let SseAccountant {
            api,
            framer,
            state,
            holder,
            ..
        } = self;
        let api = *api;
        let mut seg = 0;
        let mut out = Vec::new();
        if !chunk.is_empty() {
            if let Some(forward) = holder.pending_lf.take() {
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
                    out.extend_from_slice(&holder.held);
                    holder.clear();
                    holder.passing = true;
                    return;
                }
                Frame::Skipped { name, at } => {
                    account_unparsed(api, state, name);
                    holder.passing = false;
                    (Verdict::Keep, at)
                }
            };
            let tail = &chunk[seg..at.end];
            match verdict {
                Verdict::Keep => {
                    out.extend_from_slice(&holder.held);
                    out.extend_from_slice(tail);
                }
                Verdict::StripUsageNull => {
                    holder.held.extend_from_slice(tail);
                    strip_usage_null(&mut holder.held);
                    out.extend_from_slice(&holder.held);
                }
                Verdict::Drop => {}
            }
            if at.cr_pending {
                holder.pending_lf = Some(verdict != Verdict::Drop);
            }
            holder.clear();
            seg = at.end;
        });
        if holder.passing {
            out.extend_from_slice(&chunk[seg..]);
        } else {
            holder.held.extend_from_slice(&chunk[seg..]);
        }
        Bytes::from(out)
    }

    /// End of the upstream body (whether it ended cleanly or was cut): accounts a trailing
    /// event left without its blank line and returns the bytes to write before anything the
    /// caller appends, so that the client's stream ends on an event boundary:
    /// - a trailing event that is whole but for its blank line (its `data:` is the JSON its
    ///   API sends, or `[DONE]`) is forwarded, blank line added (hide mode rules apply);
    /// - any other partial event (cut inside a line, a JSON value, before its `data:` line,
    ///   a comment) is dropped, and does not count as the stream's terminal or error event;
    /// - an oversized event cut mid-way was already partly forwarded and cannot be taken back:
    ///   its line and event are ended (`\n\n`). This is the one case where the client's last
    ///   event before an appended error event is not the upstream's whole event (its data is
    ///   then not valid JSON).
    pub fn finish(&mut self) -> Bytes {
        let SseAccountant {
            api,
            hide,
            framer,
            state,
            holder,
        } = self;
        let (api, hide) = (*api, *hide);
        let (malformed_before, completed_before, error_before) =
            (state.malformed, state.completed, state.saw_error);
        let mut verdict = None;
        framer.finish(|frame| match frame {
            Frame::Event(event, _) => verdict = Some(account(api, state, &event)),
            Frame::Empty(_) | Frame::Oversized => {}
            Frame::Skipped { name, .. } => account_unparsed(api, state, name),
        });
        if std::mem::take(&mut holder.passing) {
            if !framer.is_text() {
                // A binary message cut mid-way cannot be ended by adding bytes.
                return Bytes::new();
            }
            let mut end = b"\n".to_vec();
            end.extend_from_slice(framer.event_terminator());
            return Bytes::from(end);
        }
        let mut held = std::mem::take(&mut holder.held);
        let whole = state.malformed == malformed_before;
        // Outside hide mode every whole event is forwarded unchanged, whatever its verdict.
        match verdict {
            Some(_) if whole && !hide => {}
            Some(Verdict::Keep) if whole => {}
            Some(Verdict::StripUsageNull) if whole => {
                strip_usage_null(&mut held);
            }
            _ => {
                // Dropped: the client never sees it, so it neither ends nor fails the stream
                // (its usage and text still count: the upstream produced them).
                state.completed = completed_before;
                state.saw_error = error_before;
                return Bytes::new();
            }
        }
        // End its last line if needed, then the event (SSE: a blank line; NDJSON: nothing).
        if held.last() != Some(&b'\n') {
            held.push(b'\n');
        }
        held.extend_from_slice(framer.event_terminator());
        Bytes::from(held)
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
    /// stream cleanly, the latter at a token limit), `message_stop` (Anthropic), a line with
    /// `"done": true` (Ollama). An oversized
    /// event counts by its `event:` name.
    pub fn completed(&self) -> bool {
        self.state.completed
    }

    /// True when a body that ended cleanly without its terminal event (see
    /// [`SseAccountant::completed`]) still delivered the whole answer, so it is a complete
    /// response rather than a truncated one:
    /// - OpenAI chat/completions: every choice seen carried a non-null `finish_reason` and,
    ///   when `usage_expected` (the request had `stream_options.include_usage`), the usage
    ///   chunk arrived: only `data: [DONE]` is missing;
    /// - Anthropic: a `message_delta` carried a non-null `delta.stop_reason` (it also carries
    ///   the final cumulative usage): only `message_stop` is missing;
    /// - Responses: never (the usage and the final status come with `response.completed`);
    /// - Ollama: never (the usage comes with the final `"done": true` line).
    /// - Gemini (which has no terminal event, so this is how its streams complete): the last
    ///   event carried a `finishReason` on every candidate (or a blocked prompt's
    ///   `promptFeedback.blockReason`; a later usage-only event keeps it) and `usageMetadata`
    ///   was reported.
    ///
    /// False after an in-stream error. Sources: OpenAI "Streaming" chat completion chunk
    /// object (`choices[].finish_reason`, `usage`); Anthropic Messages streaming (event flow
    /// `message_delta` then `message_stop`).
    pub fn ended_after_final_content(&self, usage_expected: bool) -> bool {
        let s = &self.state;
        if s.saw_error {
            return false;
        }
        match self.api {
            ApiKind::AnthropicMessages => s.stop_reason_seen,
            ApiKind::OpenAiResponses => false,
            // Ollama: the usage and the end come together in the `done: true` line.
            ApiKind::OllamaChat | ApiKind::OllamaGenerate | ApiKind::OllamaEmbed => false,
            // Bedrock Converse: `messageStop` came, only the `metadata` event is missing.
            ApiKind::BedrockConverse => s.stop_reason_seen,
            // InvokeModelWithResponseStream has no terminal event: a clean end is the end.
            ApiKind::BedrockInvoke => true,
            ApiKind::GeminiGenerateContent => s.stop_reason_seen && s.usage.is_some(),
            _ => {
                s.choices_seen != 0
                    && s.choices_finished & s.choices_seen == s.choices_seen
                    && (s.usage.is_some() || !usage_expected)
            }
        }
    }

    /// Responses: the `sequence_number` an event appended after the last one seen should
    /// carry (one more than the largest seen; 0 when none was seen).
    pub fn next_sequence_number(&self) -> u64 {
        self.state
            .last_sequence_number
            .map_or(0, |n| n.saturating_add(1))
    }

    /// True once an event carrying output went by (text, tool-call arguments, refusal, audio,
    /// a finish reason, usage, the terminal event, an unknown or oversized event). Events the
    /// APIs send before any output hold (see each wire module's `opening`): OpenAI chat
    /// chunks whose choices carry no output (role-only delta, empty content) or `choices: []`
    /// without usage; Responses `response.created`, `response.queued`, `response.in_progress`,
    /// `response.output_item.added`, `response.content_part.added`; Anthropic `message_start`,
    /// `ping`, `content_block_start`; comments and events without data. An error event is not
    /// content (see [`SseAccountant::saw_error`], [`SseAccountant::error_code`]).
    pub fn content_seen(&self) -> bool {
        self.state.content_seen
    }

    /// The native code or type of the first in-stream error event seen before any content
    /// (OpenAI `error.code`, else `error.type`; Responses `code` or `response.error.code`;
    /// Anthropic `error.type`), at most 64 bytes; `None` when none was seen or it named none.
    pub fn error_code(&self) -> Option<&str> {
        self.state.error_code.as_deref()
    }

    /// True if the upstream sent an in-stream error: any `event: error`; OpenAI chat a `data:`
    /// JSON with a non-null top-level `error`; Responses an `error` or `response.failed` event;
    /// Anthropic an `error` event.
    pub fn saw_error(&self) -> bool {
        self.state.saw_error
    }

    /// True once the stream's framing was lost for good (an AWS event stream prelude or
    /// message CRC, or a length, that did not check; SSE never): counted once in
    /// [`SseAccountant::malformed_events`], and nothing after the last whole event is
    /// forwarded, so the caller should end the stream with a native error.
    pub fn broken(&self) -> bool {
        self.state.broken
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

    /// Bytes of stream content held now (the parsed event in progress plus its raw bytes):
    /// at most `max_event_bytes`, whatever the upstream sends.
    pub fn held_bytes(&self) -> usize {
        self.framer.held_bytes() + self.holder.held.len()
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
    if !state.content_seen {
        opening(api, state, name, event.data, event.name == b"error");
    }
    let parsed = match api {
        ApiKind::OpenAiResponses => {
            openai_responses::on_event(state, name, event.data).map(|()| Verdict::Keep)
        }
        ApiKind::AnthropicMessages => {
            anthropic_messages::on_event(state, name, event.data).map(|()| Verdict::Keep)
        }
        ApiKind::OpenAiChat | ApiKind::OpenAiCompletions | ApiKind::Embeddings => {
            openai_chat::on_event(state, name, event.data)
        }
        ApiKind::OllamaChat | ApiKind::OllamaGenerate | ApiKind::OllamaEmbed => {
            ollama::on_event(state, event.data).map(|()| Verdict::Keep)
        }
        ApiKind::BedrockConverse => {
            bedrock_converse::on_event(state, name, event.data).map(|()| Verdict::Keep)
        }
        ApiKind::BedrockInvoke => {
            bedrock_converse::on_invoke_event(state, name, event.data).map(|()| Verdict::Keep)
        }
        ApiKind::GeminiGenerateContent => {
            gemini::on_event(state, event.data).map(|()| Verdict::Keep)
        }
    };
    parsed.unwrap_or_else(|_| {
        state.malformed += 1;
        Verdict::Keep
    })
}

/// Commit on content, for one event while no content was seen: records content, or the
/// first error's code (`named_error`: its SSE `event:` name is `error`, which is an error
/// whatever its data says).
fn opening(api: ApiKind, state: &mut StreamState, name: &str, data: &[u8], named_error: bool) {
    let signal = match api {
        ApiKind::OpenAiResponses => openai_responses::opening(name, data),
        ApiKind::AnthropicMessages => anthropic_messages::opening(name, data),
        ApiKind::OpenAiChat | ApiKind::OpenAiCompletions | ApiKind::Embeddings => {
            openai_chat::opening(data)
        }
        ApiKind::OllamaChat | ApiKind::OllamaGenerate | ApiKind::OllamaEmbed => {
            ollama::opening(data)
        }
        ApiKind::BedrockConverse | ApiKind::BedrockInvoke => bedrock_converse::opening(name),
        ApiKind::GeminiGenerateContent => gemini::opening(data),
    };
    match signal {
        Signal::Error(code) => {
            if state.error_code.is_none() {
                state.error_code = code;
            }
        }
        _ if named_error => {}
        Signal::Holds => {}
        Signal::Content => state.content_seen = true,
    }
}

/// Counts an oversized event, known only by its `event:` name (possibly empty): a terminal
/// or error name still ends or fails the stream, as its JSON `type` would have. Before any
/// content, an oversized event other than an error counts as content (never held).
fn account_unparsed(api: ApiKind, state: &mut StreamState, name: &[u8]) {
    state.events += 1;
    if !matches!(name, b"error" | b"response.failed") {
        state.content_seen = true;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
