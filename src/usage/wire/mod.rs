//! Wire formats of the APIs whose usage sluice accounts: one module per API holding both its
//! stream event parsing and its non-streamed body parsing, plus the serde helpers they share
//! (lenient borrowed strings, absent-vs-null fields, arrays read without allocating for their
//! first element) and the capped buffer that collects generated text.
//!
//! Every parser does no I/O and borrows from the bytes it is given: an event or body whose
//! strings have no escapes costs no allocation beyond the text it appends.

pub(crate) mod anthropic_messages;
pub(crate) mod bedrock_converse;
pub(crate) mod gemini;
pub(crate) mod ollama;
pub(crate) mod openai_chat;
pub(crate) mod openai_embeddings;
pub(crate) mod openai_responses;
mod skim;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Most generated text kept per response (bytes): 4 MiB. Enough to estimate any real
/// completion; beyond it the text is dropped, never the stream.
pub(crate) const MAX_OUTPUT_TEXT_BYTES: usize = 4 * 1024 * 1024;

/// A JSON value kept only when it is a string; any other JSON type (object, array, number,
/// bool, null) is skipped as `None` instead of failing the whole event. Borrows from the input
/// when the string has no escapes, so a typical delta costs no allocation.
#[derive(Debug, Default)]
pub(crate) struct Text<'a>(pub(crate) Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    /// The string, or "" when absent or not a string.
    pub(crate) fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor(PhantomData))
    }
}

struct TextVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
    type Value = Text<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(v.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(v))))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Text(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Text(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Text(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text(None))
    }
}

/// Deserializer for `Option<Option<T>>` fields that must tell an absent member (outer `None`,
/// via `#[serde(default)]`) from an explicit `null` (`Some(None)`).
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A JSON array read without allocating for its first element: chat chunks carry one choice
/// (and a delta one tool call) almost always, so a `Vec` per event would be an allocation per
/// event. Accepts exactly what `Vec<T>` accepts (an array, else an error).
#[derive(Debug)]
pub(crate) struct Few<T> {
    first: Option<T>,
    rest: Vec<T>,
}

impl<T> Few<T> {
    /// The elements in array order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.first.iter().chain(self.rest.iter())
    }

    /// True for an empty array.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Few<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(FewVisitor(PhantomData))
    }
}

struct FewVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for FewVisitor<T> {
    type Value = Few<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let first = seq.next_element()?;
        let mut rest = Vec::new();
        if first.is_some() {
            while let Some(item) = seq.next_element()? {
                rest.push(item);
            }
        }
        Ok(Few { first, rest })
    }
}

/// Generated text collected from a response, capped at [`MAX_OUTPUT_TEXT_BYTES`] (cut on a
/// UTF-8 character boundary).
#[derive(Debug, Default)]
pub(crate) struct TextBuf {
    text: String,
}

impl TextBuf {
    /// Appends as much of `piece` as fits under the cap.
    pub(crate) fn push(&mut self, piece: &str) {
        let room = MAX_OUTPUT_TEXT_BYTES.saturating_sub(self.text.len());
        if piece.len() <= room {
            self.text.push_str(piece);
            return;
        }
        let mut cut = room;
        while cut > 0 && !piece.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&piece[..cut]);
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

/// What one stream event says about the start of the answer, for commit on content: whether
/// it is one of the events an API sends before any output (held), carries output (commits the
/// stream), or is an in-stream error before any output. Unknown events count as content, so
/// content is never held by mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signal {
    /// A known event that carries no output (role-only delta, `response.created`,
    /// `message_start`, `ping`...).
    Holds,
    /// Output (text, tool-call arguments, refusal, audio...), a finish reason, usage, the
    /// terminal event, or anything not known to be empty.
    Content,
    /// An error event; its native code or type when it names one (at most
    /// [`MAX_ERROR_CODE_BYTES`], cut on a character boundary).
    Error(Option<String>),
}

/// Most bytes of an error event's code kept (a code is a short identifier).
pub(crate) const MAX_ERROR_CODE_BYTES: usize = 64;

/// The first string among `values`, capped at [`MAX_ERROR_CODE_BYTES`].
pub(crate) fn error_code<'a>(
    values: impl IntoIterator<Item = Option<&'a serde_json::Value>>,
) -> Option<String> {
    let code = values
        .into_iter()
        .flatten()
        .find_map(serde_json::Value::as_str)?;
    let mut cut = code.len().min(MAX_ERROR_CODE_BYTES);
    while !code.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(code[..cut].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        a: Text<'a>,
        #[serde(default, deserialize_with = "present")]
        b: Option<Option<u64>>,
    }

    #[test]
    fn text_borrows_plain_strings_and_skips_other_types() {
        let p: Probe = serde_json::from_str(r#"{"a":"plain","b":null}"#).unwrap();
        assert!(matches!(p.a.0, Some(Cow::Borrowed("plain"))));
        assert_eq!(p.b, Some(None));
        let p: Probe = serde_json::from_str(r#"{"a":"caf\u00e9"}"#).unwrap();
        assert_eq!(p.a.as_str(), "café");
        assert_eq!(p.b, None);
        let p: Probe = serde_json::from_str(r#"{"a":{"x":[1,{"y":2}]},"b":7}"#).unwrap();
        assert!(p.a.0.is_none());
        assert_eq!(p.b, Some(Some(7)));
    }

    #[test]
    fn text_buf_caps_on_a_char_boundary() {
        let mut buf = TextBuf::default();
        buf.push(&"a".repeat(MAX_OUTPUT_TEXT_BYTES - 1));
        buf.push("é and more");
        assert_eq!(buf.as_str().len(), MAX_OUTPUT_TEXT_BYTES - 1);
        buf.push("b");
        assert_eq!(buf.as_str().len(), MAX_OUTPUT_TEXT_BYTES);
        buf.push("c");
        assert_eq!(buf.as_str().len(), MAX_OUTPUT_TEXT_BYTES);
    }
}
