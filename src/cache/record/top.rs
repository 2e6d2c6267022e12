//! The top-level members of a JSON answer the recorder checks (`id`, `error`, `status`), read
//! from a body the relay's accountant already parsed whole with serde_json: a skim that finds
//! member boundaries (strings by their closing quote, containers by their brackets) and checks
//! no syntax, since that parse did. On any other input it answers something or `None`, never
//! panics; the recorder uses it only on bodies that parsed.

use crate::cache::canonical::skip_plain;
use std::borrow::Cow;

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

/// The first index at or after `i` that is not JSON whitespace (RFC 8259 section 2).
fn ws(raw: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = raw.get(i) {
        i += 1;
    }
    i
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

    proptest! {
        #![proptest_config(crate::proptest_config())]

        /// On valid JSON it reads what serde_json reads.
        #[test]
        fn equals_serde_on_valid_json(text in json_text(&["\"id\"", "\"error\"", "\"status\""])) {
            prop_assert_eq!(of(text.as_bytes()), by_serde(text.as_bytes()), "{}", text);
        }

        /// Whatever the bytes, an answer or `None`, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = of(&bytes);
        }
    }
}
