//! The stream framings the accountant reads, one enum over the framers: each turns body
//! chunks split anywhere into whole events reported as [`Frame`]s (an event's name and
//! payload, and where it ended in the chunk), so the accountant, hide mode and the per-API
//! wire modules are the same whatever the framing.
//!
//! - [`Framer::Sse`]: `text/event-stream` (WHATWG server-sent events; OpenAI, Anthropic,
//!   Gemini `alt=sse`).

use super::sse::{Frame, SseFramer};
use super::ApiKind;

/// One framer per streamed body, chosen by the API ([`Framer::for_api`]).
#[derive(Debug)]
pub(crate) enum Framer {
    /// Server-sent events ([`SseFramer`]).
    Sse(SseFramer),
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
            ApiKind::GeminiGenerateContent => Framer::Sse(SseFramer::new(max_event_bytes)),
        }
    }

    /// Feeds one chunk, calling `emit` for each frame found inside it.
    pub(crate) fn feed<F: FnMut(Frame<'_>)>(&mut self, chunk: &[u8], emit: F) {
        match self {
            Framer::Sse(f) => f.feed(chunk, emit),
        }
    }

    /// End of the body: reports a trailing event left without its terminator, if any.
    pub(crate) fn finish<F: FnMut(Frame<'_>)>(&mut self, emit: F) {
        match self {
            Framer::Sse(f) => f.finish(emit),
        }
    }

    /// Bytes of stream content held now.
    pub(crate) fn held_bytes(&self) -> usize {
        match self {
            Framer::Sse(f) => f.held_bytes(),
        }
    }
}
