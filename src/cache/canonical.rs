//! A request body in canonical JSON, written in one pass over its bytes: no JSON tree is
//! built (the key of every request on a caching or coalescing route is computed on the
//! request's path, so its cost is paid by every miss too).
//!
//! The form (RFC 8259 JSON):
//! - object members sorted by key (byte order of the key as a string, escapes resolved) at
//!   every depth; a key given twice keeps its last value (as serde_json's own `Value` does);
//! - no insignificant whitespace (RFC 8259 section 2);
//! - strings re-escaped by serde_json (the same text for the same string), numbers as
//!   serde_json reads and prints them (`1.0` stays `1.0`, `1e2` becomes `100.0`);
//! - at the top level, the members in [`super::key::IGNORED_FIELDS`] are left out.
//!
//! The text is exactly what serializing serde_json's `Value` of the body with sorted keys gives
//! (a property test holds the two together), so keys do not change with this implementation.
//!
//! It is driven by serde_json's streaming deserializer (a `Visitor` that writes as it reads):
//! the parsing, validation, escapes and nesting limit are serde_json's
//! (<https://docs.rs/serde_json/latest/serde_json/struct.Deserializer.html>).

use super::key::IGNORED_FIELDS;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A body in canonical form, and what its top level says about determinism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// The canonical JSON text (module doc).
    pub text: Vec<u8>,
    /// The body asks for a repeatable answer: a top-level `temperature` that is a number equal
    /// to 0, or a top-level `seed` that is not `null` (OpenAI chat completions `seed`).
    pub deterministic: bool,
}

mod scan;
pub(crate) use scan::{skip_plain, skip_ws};

/// The room given to the canonical text of a body of `len` bytes: the text (at most the
/// body's length, but for the rare string or number printed longer than sent) and, after it,
/// the ordered copy of an object that [`reorder`] builds before moving it back (at most the
/// text again). With it, the text never regrows (a regrowth is a `realloc`: about 850
/// instructions on the bench body, callgrind 2026-12-02).
fn text_capacity(len: usize) -> usize {
    len.saturating_mul(2).saturating_add(64)
}

/// `body` (JSON, any value) in canonical form. Errors: not JSON (serde_json's error, which
/// says where).
///
/// The common body is written by a byte scanner (module `scan`); whatever it does not take (an
/// invalid body included) goes through serde_json's deserializer, which has the last word.
pub fn of(body: &[u8]) -> Result<Canonical, serde_json::Error> {
    match scan::of(body) {
        Some(canonical) => Ok(canonical),
        None => by_serde(body),
    }
}

/// [`of`] through serde_json's streaming deserializer.
fn by_serde(body: &[u8]) -> Result<Canonical, serde_json::Error> {
    let mut text = Vec::with_capacity(text_capacity(body.len()));
    let mut facts = Facts::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    Canon {
        out: &mut text,
        top: Some(&mut facts),
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(Canonical {
        text,
        deterministic: facts.zero_temperature || facts.seeded,
    })
}

/// The top-level members that make a request deterministic (the last one given counts).
#[derive(Default)]
struct Facts {
    zero_temperature: bool,
    seeded: bool,
}

/// Writes one JSON value in canonical form to `out`; `top` is set for the body itself.
struct Canon<'a> {
    out: &'a mut Vec<u8>,
    top: Option<&'a mut Facts>,
}

impl<'de> DeserializeSeed<'de> for Canon<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Writes a scalar with serde_json's own printer (the text `Value` would print).
fn scalar<T: serde::Serialize + ?Sized, E: de::Error>(out: &mut Vec<u8>, v: &T) -> Result<(), E> {
    serde_json::to_writer(out, v).map_err(E::custom)
}

impl<'de> Visitor<'de> for Canon<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        scalar(self.out, &v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        scalar(self.out, &v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        scalar(self.out, &v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        scalar(self.out, &v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        scalar(self.out, v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        string(self.out, v, true);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let out = self.out;
        out.push(b'[');
        let mut first = true;
        loop {
            // The comma goes before an element, taken back when there is none.
            let comma = !first;
            if comma {
                out.push(b',');
            }
            let seed = Canon {
                out: &mut *out,
                top: None,
            };
            if seq.next_element_seed(seed)?.is_none() {
                if comma {
                    out.pop();
                }
                break;
            }
            first = false;
        }
        out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Canon { out, mut top } = self;
        out.push(b'{');
        let body = out.len();
        // Each member as written: its key, and where `"key":value` starts and ends in `out`.
        let mut members: Vec<(Cow<'de, [u8]>, usize, usize)> = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if top.is_some() && IGNORED_FIELDS.contains(&key.as_ref()) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if !members.is_empty() {
                out.push(b',');
            }
            let start = out.len();
            string(out, key.as_ref(), matches!(key, Cow::Borrowed(_)));
            out.push(b':');
            let value_at = out.len();
            map.next_value_seed(Canon {
                out: &mut *out,
                top: None,
            })?;
            if let Some(facts) = top.as_deref_mut() {
                let value = &out[value_at..];
                match key.as_ref() {
                    "temperature" => facts.zero_temperature = is_zero(value),
                    "seed" => facts.seeded = value != b"null",
                    _ => {}
                }
            }
            let key: Cow<'de, [u8]> = match key {
                Cow::Borrowed(k) => Cow::Borrowed(k.as_bytes()),
                Cow::Owned(k) => Cow::Owned(k.into_bytes()),
            };
            members.push((key, start, out.len()));
        }
        if !in_key_order(&members) {
            reorder(out, body, &mut members);
        }
        out.push(b'}');
        Ok(())
    }
}

/// Whether an object's members (each: its key, and where `"key":value` starts and ends in the
/// text) are in key order with no key twice, as written: then the object's text is canonical
/// as it stands.
fn in_key_order<K: AsRef<[u8]>>(members: &[(K, usize, usize)]) -> bool {
    members
        .windows(2)
        .all(|w| w[0].0.as_ref() < w[1].0.as_ref())
}

/// Puts the members of an object written to `out` from `body` on (each: its key, and where
/// `"key":value` starts and ends in `out`, in the order given; `out[body..]` is exactly those
/// members joined by `,`; not [`in_key_order`]) in key order: sorted by key (stable: of a key
/// given twice, the later stays later) and the last of each key kept (as serde_json's `Value`
/// does). The ordered text is built after the end of `out` and moved back over the original
/// (no buffer of its own).
fn reorder<K: AsRef<[u8]>>(out: &mut Vec<u8>, body: usize, members: &mut [(K, usize, usize)]) {
    members.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    let end = out.len();
    let mut first = true;
    for (i, (key, start, stop)) in members.iter().enumerate() {
        if members
            .get(i + 1)
            .is_some_and(|next| next.0.as_ref() == key.as_ref())
        {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_within(*start..*stop);
    }
    let ordered = out.len() - end;
    out.copy_within(end.., body);
    out.truncate(body + ordered);
}

/// Writes a JSON string. `verbatim`: `v` is the text between the quotes of the body itself,
/// with no escape in it (serde_json hands out a borrowed `&str` only then: its
/// `Deserializer::deserialize_str` docs); such a text is already what serde_json prints,
/// since JSON text cannot hold an unescaped `"`, `\` or control character in a string
/// (RFC 8259 section 7), the only characters serde_json's printer escapes. Otherwise it is
/// printed by serde_json.
fn string(out: &mut Vec<u8>, v: &str, verbatim: bool) {
    if verbatim {
        out.reserve(v.len() + 2);
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a `Vec` cannot fail, and a `&str` always serializes.
        let _ = serde_json::to_writer(&mut *out, v);
    }
}

/// A canonical number's text equals zero (`0`, `-0`, `0.0`, `-0.0`); a string, `null` or
/// anything else is not.
fn is_zero(text: &[u8]) -> bool {
    std::str::from_utf8(text)
        .ok()
        .filter(|t| t.starts_with(|c: char| c == '-' || c.is_ascii_digit()))
        .and_then(|t| t.parse::<f64>().ok())
        .is_some_and(|n| n == 0.0)
}

/// An object key, borrowed from the body when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_json::json_text;
    use proptest::prelude::*;
    use serde_json::Value;

    /// The reference: serde_json's `Value` of the body, printed with sorted keys and the
    /// top-level ignored fields left out; and the determinism rule read from that `Value`.
    fn oracle(body: &[u8]) -> Option<Canonical> {
        fn write(v: &Value, top: bool, out: &mut Vec<u8>) {
            match v {
                Value::Object(map) => {
                    let mut entries: Vec<(&String, &Value)> = map
                        .iter()
                        .filter(|(k, _)| !(top && IGNORED_FIELDS.contains(&k.as_str())))
                        .collect();
                    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                    out.push(b'{');
                    for (i, (k, v)) in entries.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        serde_json::to_writer(&mut *out, k).unwrap();
                        out.push(b':');
                        write(v, false, out);
                    }
                    out.push(b'}');
                }
                Value::Array(items) => {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write(item, false, out);
                    }
                    out.push(b']');
                }
                other => serde_json::to_writer(&mut *out, other).unwrap(),
            }
        }
        let v: Value = serde_json::from_slice(body).ok()?;
        let mut text = Vec::new();
        write(&v, true, &mut text);
        let deterministic = v
            .get("temperature")
            .and_then(Value::as_f64)
            .is_some_and(|t| t == 0.0)
            || v.get("seed").is_some_and(|s| !s.is_null());
        Some(Canonical {
            text,
            deterministic,
        })
    }

    fn canon(s: &str) -> String {
        String::from_utf8(of(s.as_bytes()).unwrap().text).unwrap()
    }

    #[test]
    fn sorts_drops_whitespace_and_ignored_fields() {
        assert_eq!(
            canon(
                r#"{ "stream": true, "model": "m", "user": "u",
                    "messages": [ {"role": "user", "content": "hi", "user": "x"} ] }"#
            ),
            r#"{"messages":[{"content":"hi","role":"user","user":"x"}],"model":"m"}"#
        );
        assert_eq!(
            canon("[1, 2.0, 1e2, -0, null, true]"),
            "[1,2.0,100.0,-0.0,null,true]"
        );
        assert_eq!(canon("[]"), "[]");
        assert_eq!(canon("{}"), "{}");
        assert_eq!(canon(r#"{"a":[],"b":{}}"#), r#"{"a":[],"b":{}}"#);
    }

    #[test]
    fn a_key_given_twice_keeps_its_last_value() {
        assert_eq!(canon(r#"{"b":1,"a":2,"b":3}"#), r#"{"a":2,"b":3}"#);
        // A last `temperature` of 0 makes the request deterministic, an earlier one does not.
        assert!(
            of(br#"{"temperature":1,"temperature":0}"#)
                .unwrap()
                .deterministic
        );
        assert!(
            !of(br#"{"temperature":0,"temperature":1}"#)
                .unwrap()
                .deterministic
        );
    }

    #[test]
    fn escaped_keys_sort_by_their_string() {
        // `\u0041` is "A", which sorts before "B"; the escape is resolved in the text.
        assert_eq!(canon(r#"{"B":1,"\u0041":2}"#), r#"{"A":2,"B":1}"#);
    }

    #[test]
    fn determinism_is_read_from_the_top_level_only() {
        for (body, want) in [
            (r#"{"temperature":0}"#, true),
            (r#"{"temperature":0.0}"#, true),
            (r#"{"temperature":-0}"#, true),
            (r#"{"seed":7,"temperature":1}"#, true),
            (r#"{"temperature":0.2}"#, false),
            (r#"{"temperature":"0"}"#, false),
            (r#"{"seed":null}"#, false),
            (r#"{"nested":{"temperature":0,"seed":1}}"#, false),
            ("[0]", false),
        ] {
            assert_eq!(of(body.as_bytes()).unwrap().deterministic, want, "{body}");
            assert_eq!(
                oracle(body.as_bytes()).unwrap().deterministic,
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn bad_json_is_an_error() {
        for bad in ["", "{", r#"{"a":}"#, "[1,]", "{} {}", "nul"] {
            assert!(of(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    /// The members the canonical form reads or leaves out.
    const REQUEST_KEYS: &[&str] = &[
        "\"temperature\"",
        "\"seed\"",
        "\"stream\"",
        "\"user\"",
        "\"metadata\"",
        "\"stream_options\"",
    ];

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// The one-pass text and determinism equal the `Value`-based reference, byte for byte.
        #[test]
        fn equals_the_value_based_form(text in json_text(REQUEST_KEYS)) {
            let want = oracle(text.as_bytes());
            let got = of(text.as_bytes()).ok();
            prop_assert_eq!(got, want, "{}", text);
        }

        /// The scanner writes the serde path's text whenever it answers, and it answers for
        /// every text here but those over its depth.
        #[test]
        fn the_scanner_equals_the_serde_path(text in json_text(REQUEST_KEYS)) {
            let fast = scan::of(text.as_bytes());
            prop_assert!(fast.is_some(), "declined: {}", text);
            prop_assert_eq!(fast, by_serde(text.as_bytes()).ok(), "{}", text);
        }

        /// The text is written in the room it is given from the start ([`text_capacity`]):
        /// no regrowth, by either path, for a body whose text is no longer than itself.
        #[test]
        fn the_text_never_regrows(text in json_text(REQUEST_KEYS)) {
            let room = text_capacity(text.len());
            for got in [scan::of(text.as_bytes()), by_serde(text.as_bytes()).ok()].into_iter().flatten() {
                if got.text.len() <= text.len() {
                    prop_assert_eq!(got.text.capacity(), room, "{}", text);
                }
            }
        }

        /// Whatever the bytes, an answer or an error, never a panic; where the scanner
        /// answers, serde_json reads the same.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Some(fast) = scan::of(&bytes) {
                prop_assert_eq!(Some(fast), by_serde(&bytes).ok());
            }
            let _ = of(&bytes);
        }
    }
}
