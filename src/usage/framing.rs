//! The stream framings the accountant reads, one enum over the framers: each turns body
//! chunks split anywhere into whole events reported as [`Frame`]s (an event's name and
//! payload, and where it ended in the chunk), so the accountant, hide mode and the per-API
//! wire modules are the same whatever the framing.
//!
//! - [`Framer::Sse`]: `text/event-stream` (WHATWG server-sent events; OpenAI, Anthropic,
//!   Gemini `alt=sse`).
//! - [`Framer::Ndjson`]: `application/x-ndjson` (one JSON object per line; Ollama).
//! - [`Framer::EventStream`]: `application/vnd.amazon.eventstream` (AWS event stream; Bedrock).

use super::eventstream::EventStreamFramer;
use super::ndjson::NdjsonFramer;
use super::sse::{Frame, SseFramer};
use super::ApiKind;

/// One framer per streamed body, chosen by the API ([`Framer::for_api`]).
#[derive(Debug)]
pub(crate) enum Framer {
    /// Server-sent events ([`SseFramer`]).
    Sse(SseFramer),
    /// Newline-delimited JSON ([`NdjsonFramer`]).
    Ndjson(NdjsonFramer),
    /// AWS event stream messages ([`EventStreamFramer`]).
    EventStream(EventStreamFramer),
}

impl Framer {
    /// The framer of `api`'s streams, holding at most `max_event_bytes` of an event.
    pub(crate) fn for_api(api: ApiKind, max_event_bytes: usize) -> Framer {
        match api {
            ApiKind::OpenAiChat
            | ApiKind::OpenAiCompletions
            | ApiKind::OpenAiResponses
            | ApiKind::AnthropicMessages
            | ApiKind::Embeddings => Framer::Sse(SseFramer::new(max_event_bytes)),
            ApiKind::OllamaChat | ApiKind::OllamaGenerate | ApiKind::OllamaEmbed => {
                Framer::Ndjson(NdjsonFramer::new(max_event_bytes))
            }
            ApiKind::BedrockConverse | ApiKind::BedrockInvoke => {
                Framer::EventStream(EventStreamFramer::new(max_event_bytes))
            }
            ApiKind::GeminiGenerateContent => Framer::Sse(SseFramer::new(max_event_bytes)),
        }
    }

    /// Feeds one chunk, calling `emit` for each frame found inside it.
    pub(crate) fn feed<F: FnMut(Frame<'_>)>(&mut self, chunk: &[u8], emit: F) {
        match self {
            Framer::Sse(f) => f.feed(chunk, emit),
            Framer::Ndjson(f) => f.feed(chunk, emit),
            Framer::EventStream(f) => f.feed(chunk, emit),
        }
    }

    /// End of the body: reports a trailing event left without its terminator, if any.
    pub(crate) fn finish<F: FnMut(Frame<'_>)>(&mut self, emit: F) {
        match self {
            Framer::Sse(f) => f.finish(emit),
            Framer::Ndjson(f) => f.finish(emit),
            Framer::EventStream(f) => f.finish(emit),
        }
    }

    /// Bytes of stream content held now.
    pub(crate) fn held_bytes(&self) -> usize {
        match self {
            Framer::Sse(f) => f.held_bytes(),
            Framer::Ndjson(f) => f.held_bytes(),
            Framer::EventStream(f) => f.held_bytes(),
        }
    }
}

impl Framer {
    /// The bytes that end one event of this framing after its last line: a blank line for
    /// SSE (`\n` after the line's own), nothing more for NDJSON (the line's `\n` ends it) or
    /// an AWS event stream (binary, no lines).
    pub(crate) fn event_terminator(&self) -> &'static [u8] {
        match self {
            Framer::Sse(_) => b"\n",
            Framer::Ndjson(_) => b"",
            Framer::EventStream(_) => b"",
        }
    }

    /// Whether events are lines of text (SSE, NDJSON): false for the binary AWS event stream.
    pub(crate) fn is_text(&self) -> bool {
        !matches!(self, Framer::EventStream(_))
    }

    /// True once the stream's framing is lost for good (an AWS event stream CRC or length that
    /// did not check): nothing more is framed, nothing more should be forwarded.
    pub(crate) fn broken(&self) -> bool {
        match self {
            Framer::Sse(_) | Framer::Ndjson(_) => false,
            Framer::EventStream(f) => f.broken(),
        }
    }
}
