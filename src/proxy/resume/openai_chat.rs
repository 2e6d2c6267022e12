//! Resuming an OpenAI chat/completions stream: what the client saw (the tracker), the
//! continuation's request body, and the splice of its chunks into the client's stream.
//!
//! Source: OpenAI API reference, "Chat Completions" (request `messages`, `n`, `max_tokens`,
//! `max_completion_tokens`) and "The chat completion chunk object" (`id`, `created`, `model`,
//! `system_fingerprint`, `choices[].index`, `choices[].delta`, `choices[].finish_reason`,
//! `usage`). The API has no prefill: [`Prefill::Assistant`] is for OpenAI-compatible servers
//! that continue a final assistant message; [`Prefill::ContinuePrompt`] asks in a user
//! message.

use super::{Ev, Splice, Step, MAX_TRACKED_TEXT_BYTES};
use crate::config::schema::Prefill;
use crate::usage::Usage;
use bytes::Bytes;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// The user message of [`Prefill::ContinuePrompt`].
pub(crate) const CONTINUE_PROMPT: &str = "Your previous answer was cut off. Continue it \
    exactly where it stopped, without repeating any of it and without any preamble.";

/// The members every chunk of one stream repeats: the first leg's are kept on every
/// continuation chunk.
const HEAD: [&str; 4] = ["id", "created", "model", "system_fingerprint"];

/// What the client has seen of a chat stream.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// The first chunk's `id`, `created`, `model`, `system_fingerprint` (absent ones absent).
    head: Map<String, Value>,
    text: String,
    /// Something other than one choice's plain text went by (tool calls, refusal, reasoning,
    /// audio, a second choice, an error, unparsable data).
    other: bool,
    /// A `finish_reason` or `[DONE]` went by: the answer is whole.
    finished: bool,
}

impl Tracker {
    /// Reads one event forwarded to the client: a typed, borrowing parse (no map per chunk);
    /// the first chunk's identity is taken whole.
    pub(crate) fn on_event(&mut self, ev: &Ev) {
        if ev.data.trim() == "[DONE]" {
            self.finished = true;
            return;
        }
        if self.head.is_empty() {
            if let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(&ev.data) {
                for k in HEAD {
                    if let Some(v) = chunk.get(k) {
                        self.head.insert(k.to_owned(), v.clone());
                    }
                }
            }
        }
        let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(&ev.data) else {
            self.other = true;
            return;
        };
        self.other |= chunk.error.is_some();
        for choice in chunk.choices.iter().flatten() {
            self.other |= choice.index.unwrap_or(0) != 0;
            self.finished |= choice.finish_reason.is_some();
            let Some(delta) = &choice.delta else {
                continue;
            };
            self.other |= delta.other;
            if let Some(s) = &delta.content {
                if self.text.len() + s.len() > MAX_TRACKED_TEXT_BYTES {
                    self.other = true;
                } else {
                    self.text.push_str(s);
                }
            }
        }
    }

    /// Nothing that comes next can make the stream resumable again (the answer is finished or
    /// carried something other than plain text): later events need no parse.
    pub(crate) fn given_up(&self) -> bool {
        self.other || self.finished
    }

    /// Text delivered, plain text only, not finished.
    pub(crate) fn resumable(&self) -> bool {
        !self.other && !self.finished && !self.text.is_empty()
    }

    /// The text delivered.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }
}

/// The fields of a chunk the tracker reads (unknown members skipped).
#[derive(Deserialize)]
struct Chunk<'a> {
    /// A non-null `error`.
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u64>,
    /// A non-null `finish_reason`.
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

/// A `delta`: its `content` string, and whether any other member than `role` carries
/// something (a tool call, a refusal, reasoning, audio, or a member this code does not know).
#[derive(Default)]
struct Delta<'a> {
    content: Option<Cow<'a, str>>,
    other: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for Delta<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DeltaVisitor(PhantomData))
    }
}

struct DeltaVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for DeltaVisitor<'a> {
    type Value = Delta<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a delta object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Delta<'a>, A::Error> {
        let mut delta = Delta::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match (key.as_ref(), map.next_value::<Piece<'a>>()?) {
                ("role", _) | (_, Piece::Empty) => {}
                ("content", Piece::Text(t)) => delta.content = Some(t),
                _ => delta.other = true,
            }
        }
        Ok(delta)
    }
}

/// A member's value: null or an empty string (nothing), a string, or anything else.
enum Piece<'a> {
    Empty,
    Text(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Piece<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PieceVisitor(PhantomData))
    }
}

struct PieceVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for PieceVisitor<'a> {
    type Value = Piece<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Piece<'a>, E> {
        Ok(if v.is_empty() {
            Piece::Empty
        } else {
            Piece::Text(Cow::Borrowed(v))
        })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Piece<'a>, E> {
        Ok(if v.is_empty() {
            Piece::Empty
        } else {
            Piece::Text(Cow::Owned(v.to_owned()))
        })
    }
    fn visit_unit<E: de::Error>(self) -> Result<Piece<'a>, E> {
        Ok(Piece::Empty)
    }
    fn visit_none<E: de::Error>(self) -> Result<Piece<'a>, E> {
        Ok(Piece::Empty)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Piece<'a>, E> {
        Ok(Piece::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Piece<'a>, E> {
        Ok(Piece::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Piece<'a>, E> {
        Ok(Piece::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Piece<'a>, E> {
        Ok(Piece::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Piece<'a>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Piece::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Piece<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Piece::Other)
    }
}

/// The continuation's body: the request as sent to the pool (`model` replaced by `model`
/// when the pool renames it) with `text` appended as an assistant message (then, for
/// [`Prefill::ContinuePrompt`], the [`CONTINUE_PROMPT`] user message), and `max_tokens` /
/// `max_completion_tokens` lowered by the `delivered_tokens` (never below 1). `None` when the
/// body cannot be continued: not a JSON object with `messages`, `n` over 1, or no prefill.
pub(crate) fn prefill_body(
    body: &[u8],
    model: Option<&str>,
    text: &str,
    mode: Prefill,
    delivered_tokens: u64,
) -> Option<Bytes> {
    if mode == Prefill::None {
        return None;
    }
    let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return None;
    }
    if let Some(m) = model {
        req.insert("model".into(), Value::from(m));
    }
    for k in ["max_tokens", "max_completion_tokens"] {
        if let Some(n) = req.get(k).and_then(Value::as_u64) {
            req.insert(
                k.into(),
                Value::from(n.saturating_sub(delivered_tokens).max(1)),
            );
        }
    }
    let messages = req.get_mut("messages")?.as_array_mut()?;
    messages.push(serde_json::json!({"role": "assistant", "content": text}));
    if mode == Prefill::ContinuePrompt {
        messages.push(serde_json::json!({"role": "user", "content": CONTINUE_PROMPT}));
    }
    serde_json::to_vec(&req).ok().map(Bytes::from)
}

/// Rewrites a continuation's chunks into the client's stream: the first leg's `id`,
/// `created`, `model`, `system_fingerprint` on every chunk, `delta.role` removed (a chunk
/// left with nothing is dropped: the continuation's role-only first chunk), the usage chunk's
/// counts the sum of every leg (or the chunk hidden, with `"usage":null` members, when sluice
/// asked for usage on the client's behalf).
pub(crate) struct Splicer {
    head: Map<String, Value>,
    s: Splice,
}

impl Splicer {
    /// A splicer continuing what `tracker` saw.
    pub(crate) fn new(tracker: &Tracker, s: Splice) -> Splicer {
        Splicer {
            head: tracker.head.clone(),
            s,
        }
    }

    /// One continuation event.
    pub(crate) fn splice(&mut self, ev: &Ev) -> Step {
        if ev.data.trim() == "[DONE]" {
            return write(b"data: [DONE]\n\n".to_vec(), true);
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_str::<Value>(&ev.data) else {
            return Step::Failed;
        };
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            return Step::Failed;
        }
        for k in HEAD {
            match self.head.get(k) {
                Some(v) => chunk.insert(k.to_owned(), v.clone()),
                None => chunk.remove(k),
            };
        }
        let mut content = false;
        let mut empty = true;
        for choice in chunk
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            empty = false;
            let Some(choice) = choice.as_object_mut() else {
                continue;
            };
            if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                content = true;
            }
            if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                delta.remove("role");
                content |= delta.values().any(|v| match v {
                    Value::String(s) => !s.is_empty(),
                    Value::Null => false,
                    _ => true,
                });
            }
        }
        match chunk.get("usage") {
            Some(Value::Null) if self.s.hide_usage => {
                chunk.remove("usage");
            }
            Some(Value::Object(_)) if self.s.hide_usage && empty => return Step::Skip,
            Some(Value::Object(u)) => {
                let summed = self.sum(u);
                chunk.insert("usage".into(), summed);
                content = true;
            }
            _ => {}
        }
        if !content {
            return Step::Skip;
        }
        let mut out = b"data: ".to_vec();
        if serde_json::to_writer(&mut out, &chunk).is_err() {
            return Step::Failed;
        }
        out.extend_from_slice(b"\n\n");
        write(out, true)
    }

    /// The continuation's `usage` with the earlier legs' tokens added.
    fn sum(&self, u: &Map<String, Value>) -> Value {
        let Usage {
            prompt_tokens,
            completion_tokens,
            ..
        } = self.s.prev;
        let mut u = u.clone();
        let get = |u: &Map<String, Value>, k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        let p = get(&u, "prompt_tokens").saturating_add(prompt_tokens);
        let c = get(&u, "completion_tokens").saturating_add(completion_tokens);
        u.insert("prompt_tokens".into(), Value::from(p));
        u.insert("completion_tokens".into(), Value::from(c));
        u.insert("total_tokens".into(), Value::from(p.saturating_add(c)));
        Value::Object(u)
    }
}

fn write(bytes: Vec<u8>, content: bool) -> Step {
    Step::Write {
        bytes: Bytes::from(bytes),
        content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> Ev {
        Ev {
            name: String::new(),
            data: data.to_owned(),
        }
    }

    fn tracked() -> Tracker {
        let mut t = Tracker::default();
        t.on_event(&ev(
            r#"{"id":"c1","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        ));
        t.on_event(&ev(
            r#"{"id":"c1","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"Hello wor"},"finish_reason":null}]}"#,
        ));
        t
    }

    fn data(step: Step) -> Value {
        let Step::Write { bytes, .. } = step else {
            panic!("not written: {step:?}");
        };
        let s = std::str::from_utf8(&bytes).unwrap();
        serde_json::from_str(s.strip_prefix("data: ").unwrap().trim_end()).unwrap()
    }

    #[test]
    fn tracker_keeps_plain_text_and_refuses_the_rest() {
        let t = tracked();
        assert!(t.resumable());
        assert_eq!(t.text(), "Hello wor");
        let mut tools = tracked();
        tools.on_event(&ev(
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}"#,
        ));
        assert!(!tools.resumable());
        let mut two = tracked();
        two.on_event(&ev(r#"{"choices":[{"index":1,"delta":{"content":"x"}}]}"#));
        assert!(!two.resumable());
        let mut done = tracked();
        done.on_event(&ev(
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ));
        assert!(!done.resumable());
        assert!(!Tracker::default().resumable());
        // Null or empty members carry nothing; an unknown one that carries something counts.
        let mut nulls = tracked();
        nulls.on_event(&ev(
            r#"{"choices":[{"index":0,"delta":{"content":"ld","refusal":null,"reasoning":""}}]}"#,
        ));
        assert!(nulls.resumable());
        assert_eq!(nulls.text(), "Hello world");
        let mut audio = tracked();
        audio.on_event(&ev(
            r#"{"choices":[{"index":0,"delta":{"audio":{"id":"a"}}}]}"#,
        ));
        assert!(!audio.resumable());
        let mut garbage = tracked();
        garbage.on_event(&ev(
            r#"{"choices":[{"index":0,"delta":{"content":["x"]}}]}"#,
        ));
        assert!(!garbage.resumable());
    }

    #[test]
    fn prefill_appends_the_partial_answer_and_lowers_the_limit() {
        let body = br#"{"model":"a","max_tokens":100,"messages":[{"role":"user","content":"q"}]}"#;
        let b = prefill_body(body, Some("b"), "Hello wor", Prefill::Assistant, 30).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "b");
        assert_eq!(v["max_tokens"], 70);
        assert_eq!(
            v["messages"][1],
            serde_json::json!({"role":"assistant","content":"Hello wor"})
        );
        assert_eq!(v["messages"].as_array().unwrap().len(), 2);
        let b = prefill_body(body, None, "Hi", Prefill::ContinuePrompt, 500).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "a");
        assert_eq!(v["max_tokens"], 1);
        assert_eq!(v["messages"][2]["role"], "user");
        assert_eq!(v["messages"][2]["content"], CONTINUE_PROMPT);
        assert!(prefill_body(body, None, "Hi", Prefill::None, 0).is_none());
        let n2 = br#"{"n":2,"messages":[]}"#;
        assert!(prefill_body(n2, None, "Hi", Prefill::Assistant, 0).is_none());
    }

    #[test]
    fn splice_keeps_the_first_legs_identity_and_sums_usage() {
        let prev = Usage {
            prompt_tokens: 10,
            completion_tokens: 4,
            ..Usage::default()
        };
        let mut s = Splicer::new(
            &tracked(),
            Splice {
                prev,
                ..Splice::default()
            },
        );
        // The continuation's role-only first chunk is dropped.
        let role = r#"{"id":"c2","created":9,"model":"m2","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}"#;
        assert_eq!(s.splice(&ev(role)), Step::Skip);
        let text = r#"{"id":"c2","created":9,"model":"m2","choices":[{"index":0,"delta":{"content":"ld"}}],"usage":null}"#;
        let v = data(s.splice(&ev(text)));
        assert_eq!(v["id"], "c1");
        assert_eq!(v["created"], 7);
        assert_eq!(v["model"], "m");
        assert_eq!(v["system_fingerprint"], "fp");
        assert_eq!(v["choices"][0]["delta"]["content"], "ld");
        assert!(v["usage"].is_null() && v.get("usage").is_some());
        let usage = r#"{"id":"c2","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3,"total_tokens":23}}"#;
        let v = data(s.splice(&ev(usage)));
        assert_eq!(v["usage"]["prompt_tokens"], 30);
        assert_eq!(v["usage"]["completion_tokens"], 7);
        assert_eq!(v["usage"]["total_tokens"], 37);
        assert_eq!(
            s.splice(&ev("[DONE]")),
            write(b"data: [DONE]\n\n".to_vec(), true)
        );
        assert_eq!(s.splice(&ev(r#"{"error":{"message":"x"}}"#)), Step::Failed);
    }

    #[test]
    fn splice_hides_what_sluice_asked_for() {
        let mut s = Splicer::new(
            &tracked(),
            Splice {
                hide_usage: true,
                ..Splice::default()
            },
        );
        let text = r#"{"id":"c2","choices":[{"index":0,"delta":{"content":"ld"}}],"usage":null}"#;
        let v = data(s.splice(&ev(text)));
        assert!(v.get("usage").is_none());
        let usage =
            r#"{"id":"c2","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":3}}"#;
        assert_eq!(s.splice(&ev(usage)), Step::Skip);
    }
}
