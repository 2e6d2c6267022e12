//! The top-level members of a JSON answer the recorder checks (`id`, `error`, `status`), read
//! from a body the relay's accountant already parsed whole with serde_json, so no syntax is
//! checked here. On any other input it answers something or `None`, never panics; the
//! recorder uses it only on bodies that parsed.
//!
//! [`read`] first looks for the three names as JSON strings (`"error"`, `"status"`, `"id"`)
//! and for `\u`. A member named `error` shows the bytes `"error"` unless its name is written
//! with an escape, and the only escape that spells a letter is `\u` (RFC 8259 section 7). So
//! when the body holds no `\u`, no `"error"` and no `"status"`, it has neither member; and
//! when `"id"` then appears once, as the first member's key, the answer is that member's
//! string (the usual chat and Messages answer: `{"id":"chatcmpl-…",…}`). The bytes may also
//! appear where there is no such member (as a value, or after an escaped quote): then, as in
//! every other case, [`of`] skims the top level member by member (strings by their closing
//! quote, containers by their brackets).

use crate::cache::canonical::{skip_plain, skip_ws as ws};
use memchr::memmem;
use std::borrow::Cow;
use std::sync::LazyLock;

/// The searchers for the three names as JSON strings and for a `\u` escape, built once.
static NAMES: LazyLock<[memmem::Finder<'static>; 4]> = LazyLock::new(|| {
    [
        memmem::Finder::new(b"\"error\""),
        memmem::Finder::new(b"\"status\""),
        memmem::Finder::new(b"\"id\""),
        memmem::Finder::new(b"\\u"),
    ]
});

/// The members of the object `raw` (valid JSON text): [`of`]'s answer, found by a search for
/// the names first when that settles it (see the module docs).
pub(super) fn read(raw: &[u8]) -> Option<Top<'_>> {
    let [error, status, id, escape] = &*NAMES;
    let settled = |f: &memmem::Finder<'_>| f.find(raw).is_none();
    if settled(escape) && settled(error) && settled(status) {
        if let Some(top) = leading_id(raw, id) {
            return Some(top);
        }
    }
    of(raw)
}

/// When `raw`'s first member is `"id"` with a string value and `"id"` appears nowhere else,
/// the object's `id`; else `None` (undecided).
fn leading_id<'a>(raw: &'a [u8], id: &memmem::Finder<'_>) -> Option<Top<'a>> {
    let i = ws(raw, 0);
    if raw.get(i) != Some(&b'{') {
        return None;
    }
    let key = ws(raw, i + 1);
    if raw.get(key..key + 4)? != b"\"id\"" || id.find(&raw[key + 4..]).is_some() {
        return None;
    }
    let colon = ws(raw, key + 4);
    if raw.get(colon) != Some(&b':') {
        return None;
    }
    let start = ws(raw, colon + 1);
    if raw.get(start) != Some(&b'"') {
        return None;
    }
    let end = string_end(raw, start)?;
    Some(Top {
        id: Some(text(&raw[start..end])?),
        error: false,
        status: None,
    })
}

/// What the recorder reads of a JSON answer's top level.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Top<'a> {
    /// `id`, when a string.
    pub id: Option<Cow<'a, str>>,
    /// `error` is present and not `null`.
    pub error: bool,
    /// `status`, when a string.
    pub status: Option<Cow<'a, str>>,
}

/// The members of the object `raw` (valid JSON text, see the module docs). `None` when it is
/// not an object, when `id`, `error` or `status` appears twice (serde_json refuses a repeated
/// field), or when `id` or `status` is neither a string nor `null` (serde_json refuses that
/// too).
pub(super) fn of(raw: &[u8]) -> Option<Top<'_>> {
    let mut top = Top::default();
    let mut seen = [false; 3];
    let mut i = ws(raw, 0);
    if raw.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(raw, i + 1);
    if raw.get(i) == Some(&b'}') {
        return Some(top);
    }
    loop {
        if raw.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(raw, i)?;
        let quoted = &raw[i..key_end];
        // Compared as sent; decoded first only when it holds an escape.
        let slot = if quoted.contains(&b'\\') {
            slot_of(text(quoted)?.as_bytes())
        } else {
            slot_of(&quoted[1..quoted.len() - 1])
        };
        i = ws(raw, key_end);
        if raw.get(i) != Some(&b':') {
            return None;
        }
        let start = ws(raw, i + 1);
        let end = value_end(raw, start)?;
        let value = &raw[start..end];
        if let Some(n) = slot {
            if std::mem::replace(&mut seen[n], true) {
                return None;
            }
            match n {
                0 => top.id = optional_text(value)?,
                1 => top.error = value != b"null",
                _ => top.status = optional_text(value)?,
            }
        }
        i = ws(raw, end);
        match raw.get(i)? {
            b',' => i = ws(raw, i + 1),
            b'}' => return Some(top),
            _ => return None,
        }
    }
}

/// Which of the members read a key names: 0 `id`, 1 `error`, 2 `status`.
fn slot_of(name: &[u8]) -> Option<usize> {
    match name {
        b"id" => Some(0),
        b"error" => Some(1),
        b"status" => Some(2),
        _ => None,
    }
}

/// The index just past the string whose opening quote is at `i`.
fn string_end(raw: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j = skip_plain(raw, j);
        match *raw.get(j)? {
            b'"' => return Some(j + 1),
            // An escape: the escaped byte is never the closing quote.
            b'\\' => j += 2,
            // A control character (not in valid JSON text): skipped like content.
            _ => j += 1,
        }
    }
}

/// The index just past the value starting at `i`.
fn value_end(raw: &[u8], i: usize) -> Option<usize> {
    match *raw.get(i)? {
        b'"' => string_end(raw, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *raw.get(j)? {
                    b'"' => {
                        j = string_end(raw, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        // A number or a literal: up to the next separator or whitespace.
        _ => {
            let rest = &raw[i..];
            let n = rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            Some(i + n)
        }
    }
}

/// The text of the quoted string `quoted` (quotes included): borrowed when it holds no
/// escape, else decoded by serde_json.
fn text(quoted: &[u8]) -> Option<Cow<'_, str>> {
    let inner = quoted.get(1..quoted.len().checked_sub(1)?)?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(quoted)
        .ok()
        .map(Cow::Owned)
}

/// A string member's text; `Some(None)` for `null`; `None` for any other value.
fn optional_text(value: &[u8]) -> Option<Option<Cow<'_, str>>> {
    match value.first() {
        Some(b'"') => text(value).map(Some),
        _ if value == b"null" => Some(None),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::test_json::json_text;
    use proptest::prelude::*;

    /// serde_json's reading of the same members, as the recorder did before this skim.
    #[derive(serde::Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, default)]
        id: Option<Cow<'a, str>>,
        #[serde(default)]
        error: Option<serde_json::Value>,
        #[serde(borrow, default)]
        status: Option<Cow<'a, str>>,
    }

    /// `None` for a top level that is not an object (serde would read a struct from an
    /// array too; no API answers with one that has these members first).
    fn by_serde(raw: &[u8]) -> Option<Top<'_>> {
        raw.iter()
            .find(|b| !b.is_ascii_whitespace())
            .filter(|b| **b == b'{')?;
        let p: Peek<'_> = serde_json::from_slice(raw).ok()?;
        Some(Top {
            id: p.id,
            error: p.error.is_some(),
            status: p.status,
        })
    }

    #[test]
    fn reads_an_answer() {
        let raw = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"a \"}\" b"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5},"error":null}"#;
        let top = of(raw).unwrap();
        assert_eq!(top.id.as_deref(), Some("chatcmpl-1"));
        assert!(!top.error);
        assert_eq!(read(raw), Some(top));
        // The shortcut: the leading id, no `"error"` or `"status"` anywhere.
        let plain = br#"{"id":"chatcmpl-2","choices":[{"message":{"content":"say \"id\""}}]}"#;
        assert_eq!(
            leading_id(plain, &NAMES[2]).unwrap().id.as_deref(),
            Some("chatcmpl-2")
        );
        assert_eq!(read(plain).unwrap().id.as_deref(), Some("chatcmpl-2"));
        // `"id"` twice: undecided by the shortcut; the skim refuses the repeated member.
        let twice = br#"{"id":"a","id":"b"}"#;
        assert_eq!(leading_id(twice, &NAMES[2]), None);
        assert_eq!(read(twice), None);
        // A name spelled with an escape is still that member: the skim decides.
        let escaped = br#"{"id":"a","\u0065rror":{"message":"boom"}}"#;
        assert_eq!(read(escaped), by_serde(escaped));
        assert!(read(escaped).unwrap().error);
        assert_eq!(read(br#"{"id":"a","\u0069d":"b"}"#), None);
        assert_eq!(
            of(br#" { "error" : {"message":"x"} , "status":"failed"} "#).unwrap(),
            Top {
                id: None,
                error: true,
                status: Some("failed".into()),
            }
        );
        assert_eq!(
            of(br#"{"\u0069d":"x\u0041"}"#).unwrap().id.as_deref(),
            Some("xA")
        );
        for refused in [
            &b"[1]"[..],
            b"{\"id\":1}",
            b"{\"id\":\"a\",\"id\":\"b\"}",
            b"\"s\"",
        ] {
            assert_eq!(of(refused), None, "{}", String::from_utf8_lossy(refused));
        }
    }

    /// The names read, as sent and spelled with escapes.
    const NAMED: &[&str] = &[
        "\"id\"",
        "\"error\"",
        "\"status\"",
        r#""\u0069d""#,
        r#""\u0065rror""#,
        r#""st\u0061tus""#,
    ];

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// On valid JSON both reads give what serde_json reads.
        #[test]
        fn equals_serde_on_valid_json(text in json_text(NAMED)) {
            let want = by_serde(text.as_bytes());
            prop_assert_eq!(&of(text.as_bytes()), &want, "{}", text);
            prop_assert_eq!(&read(text.as_bytes()), &want, "{}", text);
        }

        /// The search's shortcut, on answers shaped like chat and Messages ones.
        #[test]
        fn the_shortcut_equals_serde(
            id in "[a-z_\"\\\\-]{0,12}",
            rest in json_text(NAMED),
        ) {
            let text = format!("{{ \"id\" : {}, \"x\": {rest} }}", serde_json::to_string(&id).unwrap());
            prop_assert_eq!(read(text.as_bytes()), by_serde(text.as_bytes()), "{}", text);
        }

        /// Whatever the bytes, an answer or `None`, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = of(&bytes);
        }
    }
}
