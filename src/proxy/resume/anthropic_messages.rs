//! Resuming an Anthropic Messages stream: what the client saw (the tracker), the
//! continuation's request body (a trailing assistant message, Anthropic's documented
//! prefill), and the splice of its events into the client's stream.
//!
//! Sources: Anthropic docs, "Prefill Claude's response" (the last message is the assistant's
//! partial answer; it may not end with whitespace), API reference "Messages" (`messages`,
//! `max_tokens`) and "Streaming Messages" (`message_start`, `content_block_start` /
//! `_delta` / `_stop` with `index`, `message_delta` with cumulative `usage.output_tokens`,
//! `message_stop`, `ping`, `error`).

use super::{Ev, Splice, Step, MAX_TRACKED_TEXT_BYTES};
use crate::config::schema::Prefill;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

/// The user message of [`Prefill::ContinuePrompt`].
const CONTINUE_PROMPT: &str = super::openai_chat::CONTINUE_PROMPT;

/// What the client has seen of a Messages stream.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Index of the text block still open (started, not stopped).
    open: Option<u64>,
    /// Largest block index seen.
    last: Option<u64>,
    text: String,
    /// A block other than text, a delta other than `text_delta`, an error, unparsable data.
    other: bool,
    /// `message_delta` or `message_stop` went by: the answer is whole.
    finished: bool,
}

impl Tracker {
    /// Reads one event forwarded to the client (a typed, borrowing parse).
    pub(crate) fn on_event(&mut self, ev: &Ev) {
        let Ok(e) = serde_json::from_str::<Event<'_>>(&ev.data) else {
            self.other = true;
            return;
        };
        let index = e.index;
        match e.kind.as_deref().unwrap_or(&ev.name) {
            "content_block_start" => {
                let block = e.content_block.unwrap_or_default();
                self.other |= block.kind.as_deref() != Some("text") || index.is_none();
                self.open = index;
                self.last = index.max(self.last);
                self.push(block.text.as_deref().unwrap_or(""));
            }
            "content_block_delta" => {
                // A delta is for an open block (its start may have gone by unobserved).
                self.open = index.or(self.open);
                self.last = index.max(self.last);
                let delta = e.delta.unwrap_or_default();
                if delta.kind.as_deref() == Some("text_delta") {
                    self.push(delta.text.as_deref().unwrap_or(""));
                } else {
                    self.other = true;
                }
            }
            "content_block_stop" => self.open = None,
            "message_delta" | "message_stop" => self.finished = true,
            "message_start" | "ping" => {}
            _ => self.other = true,
        }
    }

    fn push(&mut self, s: &str) {
        if self.text.len() + s.len() > MAX_TRACKED_TEXT_BYTES {
            self.other = true;
        } else {
            self.text.push_str(s);
        }
    }

    /// Nothing that comes next can make the stream resumable again (the answer is finished or
    /// carried something other than plain text): later events need no parse.
    pub(crate) fn given_up(&self) -> bool {
        self.other || self.finished
    }

    /// Text delivered, plain text only, not finished.
    pub(crate) fn resumable(&self) -> bool {
        !self.other && !self.finished && !self.text.trim_end().is_empty()
    }

    /// The text delivered.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}

/// The fields of a stream event the tracker reads (unknown members skipped).
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    content_block: Option<Part<'a>>,
    #[serde(default, borrow)]
    delta: Option<Part<'a>>,
}

/// A `content_block` or a `delta`: its `type` and `text`.
#[derive(Deserialize, Default)]
struct Part<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

/// The continuation's body: the request as sent to the pool (`model` replaced by `model`
/// when the pool renames it), `max_tokens` lowered by `delivered_tokens` (never below 1),
/// and the partial answer `text`:
/// - [`Prefill::Assistant`]: as the final assistant message, its trailing whitespace trimmed
///   (Anthropic refuses a final assistant content that ends with whitespace); when the
///   request already ends with an assistant message (the client's own prefill), the text is
///   appended to it;
/// - [`Prefill::ContinuePrompt`]: an assistant message, then the continue prompt as a user
///   message.
///
/// Returns the body and the whitespace trimmed (to drop from the continuation's start).
/// `None` when the body is not a JSON object with `messages`, or for [`Prefill::None`].
pub(crate) fn prefill_body(
    body: &[u8],
    model: Option<&str>,
    text: &str,
    mode: Prefill,
    delivered_tokens: u64,
) -> Option<(Bytes, String)> {
    if mode == Prefill::None {
        return None;
    }
    let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    if let Some(m) = model {
        req.insert("model".into(), Value::from(m));
    }
    if let Some(n) = req.get("max_tokens").and_then(Value::as_u64) {
        let left = n.saturating_sub(delivered_tokens).max(1);
        req.insert("max_tokens".into(), Value::from(left));
    }
    let messages = req.get_mut("messages")?.as_array_mut()?;
    let mut trimmed = String::new();
    if mode == Prefill::Assistant {
        let last_is_assistant = messages
            .last()
            .and_then(|m| m.get("role"))
            .and_then(Value::as_str)
            == Some("assistant");
        let own = match messages.last().and_then(|m| m.get("content")) {
            Some(Value::String(s)) if last_is_assistant => Some(s.clone()),
            _ => None,
        };
        let whole = format!("{}{text}", own.as_deref().unwrap_or(""));
        let kept = whole.trim_end();
        whole[kept.len()..].clone_into(&mut trimmed);
        let message = serde_json::json!({"role": "assistant", "content": kept});
        if own.is_some() {
            messages.pop();
        } else if last_is_assistant {
            // The client's prefill is a list of blocks: the partial answer follows it as a
            // block of its own.
            let last = messages.last_mut()?.get_mut("content")?.as_array_mut()?;
            let t = text.trim_end();
            text[t.len()..].clone_into(&mut trimmed);
            last.push(serde_json::json!({"type": "text", "text": t}));
            return serde_json::to_vec(&req)
                .ok()
                .map(|b| (Bytes::from(b), trimmed));
        }
        messages.push(message);
    } else {
        messages.push(serde_json::json!({"role": "assistant", "content": text.trim_end()}));
        messages.push(serde_json::json!({"role": "user", "content": CONTINUE_PROMPT}));
    }
    serde_json::to_vec(&req)
        .ok()
        .map(|b| (Bytes::from(b), trimmed))
}

/// Rewrites a continuation's events into the client's stream: its `message_start` dropped;
/// its block `i` becomes the client's block `base + i`, where `base` is the block still open
/// at the cut (whose `content_block_start` is then dropped: the continuation's text goes on
/// in it) or the one after the last; the whitespace trimmed off the prefill dropped from the
/// start of its text; `message_delta.usage` the sum of every leg (`output_tokens`, and
/// `input_tokens` with the continuation's own from its `message_start`).
pub(crate) struct Splicer {
    /// The cut block still open, continued by the continuation's block 0.
    open: Option<u64>,
    base: u64,
    /// Whitespace still to drop from the continuation's text.
    pending: String,
    /// The continuation's own `message_start.message.usage.input_tokens`.
    input_tokens: u64,
    /// The cut block still open was closed by the continuation (its block 0's
    /// `content_block_stop`); if not when its `message_delta` comes, sluice closes it.
    open_closed: bool,
    s: Splice,
}

impl Splicer {
    /// A splicer continuing what `tracker` saw.
    pub(crate) fn new(tracker: &Tracker, s: Splice) -> Splicer {
        let base = tracker
            .open
            .unwrap_or_else(|| tracker.last.map_or(0, |l| l.saturating_add(1)));
        Splicer {
            open: tracker.open,
            base,
            pending: s.trimmed.clone(),
            input_tokens: 0,
            open_closed: false,
            s,
        }
    }

    /// One continuation event.
    pub(crate) fn splice(&mut self, ev: &Ev) -> Step {
        let Ok(Value::Object(mut v)) = serde_json::from_str::<Value>(&ev.data) else {
            return Step::Failed;
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&ev.name)
            .to_owned();
        let index = v.get("index").and_then(Value::as_u64);
        let mut content = false;
        match kind.as_str() {
            "message_start" => {
                self.input_tokens = v
                    .get("message")
                    .and_then(|m| m.get("usage"))
                    .and_then(|u| u.get("input_tokens"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                return Step::Skip;
            }
            "content_block_start" if index == Some(0) && self.open.is_some() => {
                let block_type = v
                    .get("content_block")
                    .and_then(|b| b.get("type"))
                    .and_then(Value::as_str);
                // Only text can go on in the cut text block.
                return if block_type == Some("text") {
                    Step::Skip
                } else {
                    Step::Failed
                };
            }
            "content_block_stop" if index == Some(0) && self.open.is_some() => {
                self.open_closed = true;
            }
            "content_block_start" | "content_block_stop" => {}
            "content_block_delta" => {
                let text =
                    v.get_mut("delta")
                        .and_then(|d| d.get_mut("text"))
                        .and_then(|t| match t {
                            Value::String(s) => Some(s),
                            _ => None,
                        });
                match text {
                    Some(t) => {
                        let n = common_prefix(&self.pending, t);
                        self.pending.drain(..n);
                        t.drain(..n);
                        if n > 0 && t.is_empty() {
                            return Step::Skip;
                        }
                        if !t.is_empty() {
                            // Any text stops the dropping: only a leading run is the prefill's.
                            self.pending.clear();
                            content = true;
                        }
                    }
                    None => content = true,
                }
            }
            "message_delta" => {
                content = true;
                let prev = self.s.prev;
                if let Some(Value::Object(u)) = v.get_mut("usage") {
                    let out = u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0);
                    let out = out.saturating_add(prev.completion_tokens);
                    u.insert("output_tokens".into(), Value::from(out));
                    let input = u
                        .get("input_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(self.input_tokens)
                        .saturating_add(prev.prompt_tokens);
                    u.insert("input_tokens".into(), Value::from(input));
                }
            }
            "message_stop" => content = true,
            "error" => return Step::Failed,
            _ => {} // ping and future event types: passed on
        }
        if let Some(i) = index {
            v.insert("index".into(), Value::from(self.base.saturating_add(i)));
        }
        let mut out = Vec::new();
        if let (Some(open), "message_delta", false) = (self.open, kind.as_str(), self.open_closed) {
            // A continuation with nothing to add (`content: []`: the prefill already ended
            // the turn) never closes the block left open at the cut: close it, as every
            // started block is closed before `message_delta` (Anthropic, "Streaming Messages").
            self.open_closed = true;
            out.extend_from_slice(
                format!("event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{open}}}\n\n")
                    .as_bytes(),
            );
        }
        out.extend_from_slice(format!("event: {kind}\ndata: ").as_bytes());
        if serde_json::to_writer(&mut out, &v).is_err() {
            return Step::Failed;
        }
        out.extend_from_slice(b"\n\n");
        Step::Write {
            bytes: Bytes::from(out),
            content,
        }
    }
}

/// Length in bytes of the longest common prefix of `a` and `b` (on character boundaries).
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or_else(|| a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;

    fn ev(name: &str, data: &str) -> Ev {
        Ev {
            name: name.to_owned(),
            data: data.to_owned(),
        }
    }

    fn tracked(close: bool) -> Tracker {
        let mut t = Tracker::default();
        for (n, d) in [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":9,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"one two "}}"#,
            ),
        ] {
            t.on_event(&ev(n, d));
        }
        if close {
            t.on_event(&ev(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ));
        }
        t
    }

    fn json(step: Step) -> (String, Value) {
        let Step::Write { bytes, .. } = step else {
            panic!("not written: {step:?}");
        };
        let s = std::str::from_utf8(&bytes).unwrap();
        let (head, data) = s.split_once("\ndata: ").unwrap();
        (
            head.to_owned(),
            serde_json::from_str(data.trim_end()).unwrap(),
        )
    }

    #[test]
    fn tracker_keeps_text_blocks_only() {
        let t = tracked(false);
        assert!(t.resumable());
        assert_eq!(t.text(), "one two ");
        let mut tool = tracked(true);
        tool.on_event(&ev(
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use"}}"#,
        ));
        assert!(!tool.resumable());
        let mut done = tracked(true);
        done.on_event(&ev(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#,
        ));
        assert!(!done.resumable());
    }

    #[test]
    fn prefill_trims_trailing_whitespace_and_extends_a_client_prefill() {
        let body = br#"{"model":"c","max_tokens":50,"messages":[{"role":"user","content":"q"}]}"#;
        let (b, trimmed) =
            prefill_body(body, Some("d"), "one two ", Prefill::Assistant, 2).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(trimmed, " ");
        assert_eq!(v["model"], "d");
        assert_eq!(v["max_tokens"], 48);
        assert_eq!(
            v["messages"][1],
            serde_json::json!({"role":"assistant","content":"one two"})
        );
        let own = br#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"Sure: "}]}"#;
        let (b, trimmed) = prefill_body(own, None, "one\n", Prefill::Assistant, 0).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);
        assert_eq!(v["messages"][1]["content"], "Sure: one");
        assert_eq!(trimmed, "\n");
        let (b, trimmed) = prefill_body(body, None, "one ", Prefill::ContinuePrompt, 0).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(trimmed, "");
        assert_eq!(v["messages"][2]["role"], "user");
        assert!(prefill_body(body, None, "x", Prefill::None, 0).is_none());
    }

    #[test]
    fn splice_continues_the_open_block_and_sums_usage() {
        let prev = Usage {
            prompt_tokens: 9,
            completion_tokens: 2,
            ..Usage::default()
        };
        let mut s = Splicer::new(
            &tracked(false),
            Splice {
                prev,
                trimmed: " ".into(),
                ..Splice::default()
            },
        );
        let start = r#"{"type":"message_start","message":{"id":"msg_2","usage":{"input_tokens":12,"output_tokens":1}}}"#;
        assert_eq!(s.splice(&ev("message_start", start)), Step::Skip);
        let block =
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
        assert_eq!(s.splice(&ev("content_block_start", block)), Step::Skip);
        let (head, v) = json(s.splice(&ev("ping", r#"{"type":"ping"}"#)));
        assert_eq!(
            (head.as_str(), v["type"].as_str()),
            ("event: ping", Some("ping"))
        );
        // The trimmed space comes back first: dropped once.
        let d = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" three "}}"#;
        let (_, v) = json(s.splice(&ev("content_block_delta", d)));
        assert_eq!(v["delta"]["text"], "three ");
        let d = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" four"}}"#;
        let (_, v) = json(s.splice(&ev("content_block_delta", d)));
        assert_eq!(v["delta"]["text"], " four");
        let tool = r#"{"type":"content_block_start","index":1,"content_block":{"type":"text"}}"#;
        let (_, v) = json(s.splice(&ev("content_block_start", tool)));
        assert_eq!(v["index"], 1);
        let stop = r#"{"type":"content_block_stop","index":0}"#;
        let (head, v) = json(s.splice(&ev("content_block_stop", stop)));
        assert_eq!(
            (head.as_str(), v["index"].as_u64()),
            ("event: content_block_stop", Some(0))
        );
        let md = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"#;
        let (head, v) = json(s.splice(&ev("message_delta", md)));
        assert_eq!(head, "event: message_delta");
        assert_eq!(v["usage"]["output_tokens"], 7);
        assert_eq!(v["usage"]["input_tokens"], 21);
        let mut t = Splicer::new(&tracked(false), Splice::default());
        let tool =
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use"}}"#;
        assert_eq!(t.splice(&ev("content_block_start", tool)), Step::Failed);
        let err = r#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#;
        assert_eq!(s.splice(&ev("error", err)), Step::Failed);
    }

    #[test]
    fn an_empty_continuation_closes_the_block_left_open_at_the_cut() {
        // The prefill already ended the turn: the continuation has `content: []`.
        let mut s = Splicer::new(&tracked(false), Splice::default());
        let start = r#"{"type":"message_start","message":{"id":"msg_2","content":[],"usage":{"input_tokens":12,"output_tokens":1}}}"#;
        assert_eq!(s.splice(&ev("message_start", start)), Step::Skip);
        let md = r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}"#;
        let Step::Write { bytes, .. } = s.splice(&ev("message_delta", md)) else {
            panic!("message_delta not written");
        };
        let text = std::str::from_utf8(&bytes).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 2, "{text}");
        assert_eq!(
            events[0],
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}"
        );
        assert!(events[1].starts_with("event: message_delta\n"), "{text}");
        // Once only, and not when the block was closed (a cut after its stop).
        let mut t = Splicer::new(&tracked(true), Splice::default());
        let (head, _) = json(t.splice(&ev("message_delta", md)));
        assert_eq!(head, "event: message_delta");
    }

    #[test]
    fn a_delta_alone_shows_its_block_open() {
        let mut t = Tracker::default();
        let d =
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"x"}}"#;
        t.on_event(&ev("content_block_delta", d));
        let mut s = Splicer::new(&t, Splice::default());
        let block =
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
        assert_eq!(s.splice(&ev("content_block_start", block)), Step::Skip);
        let (_, v) = json(s.splice(&ev("content_block_delta", d.replace("2", "0").as_str())));
        assert_eq!(v["index"], 2);
    }

    #[test]
    fn splice_after_a_closed_block_numbers_blocks_after_it() {
        let mut s = Splicer::new(&tracked(true), Splice::default());
        let block =
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
        let (_, v) = json(s.splice(&ev("content_block_start", block)));
        assert_eq!(v["index"], 1);
        assert_eq!(common_prefix(" \n", " x"), 1);
        assert_eq!(common_prefix("", "abc"), 0);
        assert_eq!(common_prefix("  ", " "), 1);
    }
}
