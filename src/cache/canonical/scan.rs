//! The canonical form's fast path: one pass of a byte scanner over the body, writing the
//! canonical text as it goes. It takes the bodies SDKs send (objects, arrays, strings with or
//! without escapes, integers, decimals) and declines (`None`) anything it is not sure of,
//! invalid JSON included; [`super::of`] then hands the body to serde_json's deserializer.
//!
//! Its text is the serde path's byte for byte (a property test holds the two together):
//! - a string without escapes is copied as sent: JSON text holds no unescaped `"`, `\` or
//!   control character in a string (RFC 8259 section 7), the only characters serde_json's
//!   printer escapes, so it prints that string as sent; the body is checked for UTF-8 first,
//!   as serde_json checks every string it reads;
//! - a string with escapes is read and printed by serde_json;
//! - an integer that fits an `i64` or a `u64` (and is not `-0`) is copied as sent: serde_json
//!   reads it as that integer and prints it back unchanged; any other number is read and
//!   printed by serde_json as the `f64` it reads (`1e2` is `100.0`, `-0` is `-0.0`).

use super::{in_key_order, is_zero, Canonical, Facts};
use crate::cache::key::IGNORED_FIELDS;
use std::borrow::Cow;

/// Bytes that end a run of plain string content: `"`, `\\` and the control characters
/// (RFC 8259 section 7).
const STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The first index at or after `j` that is not plain string content (see [`STRING_STOP`]),
/// or `b.len()`. A table lookup per byte: request strings are short, and a vector search's
/// setup per call costs more than it saves on them.
pub(crate) fn skip_plain(b: &[u8], mut j: usize) -> usize {
    while let Some(&c) = b.get(j) {
        if STRING_STOP[usize::from(c)] {
            break;
        }
        j += 1;
    }
    j
}

/// The first index at or after `i` that is not JSON whitespace (RFC 8259 section 2), or
/// `b.len()`.
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Deepest nesting taken here; deeper bodies go to serde_json (whose own limit is 128).
const MAX_DEPTH: usize = 64;

/// `body` in canonical form, or `None` to leave it to serde_json.
pub(super) fn of(body: &[u8]) -> Option<Canonical> {
    std::str::from_utf8(body).ok()?;
    let mut s = Scan {
        b: body,
        i: 0,
        out: Vec::with_capacity(body.len()),
        // Room for the members of a request body's usual objects without regrowing.
        members: Vec::with_capacity(8),
        // Room for the largest object's text (the canonical text is about as long as the
        // body), so reordering seldom regrows it.
        scratch: Vec::with_capacity(body.len()),
    };
    let mut facts = Facts::default();
    s.ws();
    s.value(0, Some(&mut facts))?;
    s.ws();
    (s.i == body.len()).then_some(Canonical {
        text: s.out,
        deterministic: facts.zero_temperature || facts.seeded,
    })
}

/// A cursor over the body (`b[i..]` not read yet) and the text written so far.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    out: Vec<u8>,
    /// The members of the objects being written, innermost last (each: its key's text, and
    /// where `"key":value` starts and ends in `out`): one allocation for every object of the
    /// body. Keys are compared as bytes (the canonical order is byte order).
    members: Vec<(Cow<'a, [u8]>, usize, usize)>,
    /// Room for reordering an object's members ([`in_key_order`]), reused.
    scratch: Vec<u8>,
}

/// Where a string's content lies in the body (between its quotes), and whether it holds an
/// escape.
#[derive(Clone, Copy)]
struct Str {
    start: usize,
    end: usize,
    escaped: bool,
}

impl<'a> Scan<'a> {
    /// Skips JSON whitespace (RFC 8259 section 2).
    fn ws(&mut self) {
        self.i = skip_ws(self.b, self.i);
    }

    /// Consumes `c` after whitespace.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// One value at the cursor, written; `top`: the body itself (its members' facts).
    fn value(&mut self, depth: usize, top: Option<&mut Facts>) -> Option<()> {
        match *self.b.get(self.i)? {
            b'{' if depth < MAX_DEPTH => self.object(depth, top),
            b'[' if depth < MAX_DEPTH => self.array(depth),
            b'"' => {
                let s = self.string()?;
                self.write_string(s)
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then_some(())?;
        self.i = end;
        self.out.extend_from_slice(word);
        // What follows is checked by the caller (a separator, or the end).
        Some(())
    }

    /// The string at the cursor (its opening quote), consumed. Declines a control character
    /// (serde_json refuses one) and an unterminated string.
    fn string(&mut self) -> Option<Str> {
        let start = self.i + 1;
        let mut j = start;
        let mut escaped = false;
        loop {
            j = skip_plain(self.b, j);
            match *self.b.get(j)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    // The escaped byte is skipped here and checked by serde_json below.
                    j += 2;
                }
                _ => return None,
            }
        }
        self.i = j + 1;
        Some(Str {
            start,
            end: j,
            escaped,
        })
    }

    /// The quoted text of `s` as in the body, quotes included.
    fn quoted(&self, s: Str) -> &'a [u8] {
        &self.b[s.start - 1..=s.end]
    }

    fn write_string(&mut self, s: Str) -> Option<()> {
        if s.escaped {
            let text: String = serde_json::from_slice(self.quoted(s)).ok()?;
            serde_json::to_writer(&mut self.out, &text).ok()
        } else {
            self.out.extend_from_slice(self.quoted(s));
            Some(())
        }
    }

    /// A number (RFC 8259 section 6 grammar), written as serde_json prints what it reads.
    fn number(&mut self) -> Option<()> {
        let b = self.b;
        let start = self.i;
        let negative = b[start] == b'-';
        let mut j = start + usize::from(negative);
        let digits = |j: &mut usize| {
            let from = *j;
            while b.get(*j).is_some_and(u8::is_ascii_digit) {
                *j += 1;
            }
            *j - from
        };
        let int_at = j;
        let n = digits(&mut j);
        if n == 0 || (n > 1 && b[int_at] == b'0') {
            return None;
        }
        let mut integer = true;
        if b.get(j) == Some(&b'.') {
            j += 1;
            integer = false;
            if digits(&mut j) == 0 {
                return None;
            }
        }
        if matches!(b.get(j), Some(b'e' | b'E')) {
            j += 1;
            integer = false;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if digits(&mut j) == 0 {
                return None;
            }
        }
        self.i = j;
        let text = std::str::from_utf8(&b[start..j]).ok()?;
        let as_sent = integer
            && if negative {
                text != "-0" && text.parse::<i64>().is_ok()
            } else {
                text.parse::<u64>().is_ok()
            };
        if as_sent {
            self.out.extend_from_slice(text.as_bytes());
            Some(())
        } else {
            let v: f64 = serde_json::from_str(text).ok()?;
            serde_json::to_writer(&mut self.out, &v).ok()
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.i += 1;
        self.out.push(b'[');
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            self.out.push(b']');
            return Some(());
        }
        loop {
            self.ws();
            self.value(depth + 1, None)?;
            self.ws();
            match *self.b.get(self.i)? {
                b',' => self.out.push(b','),
                b']' => break,
                _ => return None,
            }
            self.i += 1;
        }
        self.i += 1;
        self.out.push(b']');
        Some(())
    }

    fn object(&mut self, depth: usize, mut top: Option<&mut Facts>) -> Option<()> {
        let b = self.b;
        self.i += 1;
        self.out.push(b'{');
        let body = self.out.len();
        self.ws();
        if b.get(self.i) == Some(&b'}') {
            self.i += 1;
            self.out.push(b'}');
            return Some(());
        }
        let first = self.members.len();
        loop {
            self.ws();
            if b.get(self.i) != Some(&b'"') {
                return None;
            }
            let k = self.string()?;
            // The body is UTF-8 (checked first) and a key lies between two `"`: its bytes are
            // its text.
            let key: Cow<'a, [u8]> = if k.escaped {
                let text: String = serde_json::from_slice(self.quoted(k)).ok()?;
                Cow::Owned(text.into_bytes())
            } else {
                Cow::Borrowed(&b[k.start..k.end])
            };
            self.eat(b':')?;
            self.ws();
            if top.is_some() && IGNORED_FIELDS.iter().any(|f| f.as_bytes() == key.as_ref()) {
                // Read (it must be valid) and left out.
                let mark = self.out.len();
                self.value(depth + 1, None)?;
                self.out.truncate(mark);
            } else {
                if self.members.len() > first {
                    self.out.push(b',');
                }
                let start = self.out.len();
                if k.escaped {
                    let text = std::str::from_utf8(&key).ok()?;
                    serde_json::to_writer(&mut self.out, text).ok()?;
                } else {
                    self.out.extend_from_slice(self.quoted(k));
                }
                self.out.push(b':');
                let value_at = self.out.len();
                self.value(depth + 1, None)?;
                if let Some(facts) = top.as_deref_mut() {
                    let value = &self.out[value_at..];
                    match key.as_ref() {
                        b"temperature" => facts.zero_temperature = is_zero(value),
                        b"seed" => facts.seeded = value != b"null",
                        _ => {}
                    }
                }
                self.members.push((key, start, self.out.len()));
            }
            self.ws();
            match *b.get(self.i)? {
                b',' => self.i += 1,
                b'}' => break,
                _ => return None,
            }
        }
        self.i += 1;
        in_key_order(
            &mut self.out,
            body,
            &mut self.members[first..],
            &mut self.scratch,
        );
        self.members.truncate(first);
        self.out.push(b'}');
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_sdks_send() {
        for body in [
            r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello. #000000000042"}],"max_tokens":64}"#,
            "{\"messages\": [{\"role\": \"user\", \"content\": \"line one\\nline \\\"two\\\" \\u00e9\"}], \"model\": \"m\", \"temperature\": 0.7, \"top_p\": 1, \"seed\": -3}",
            r#"{"model":"claude","max_tokens":1024,"stream":true,"metadata":{"user_id":"u"},"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
            r#"{"a":{"b":[1,-2,3.5e1,null,true,false,[]]},"c":{}}"#,
        ] {
            let fast = of(body.as_bytes());
            assert!(fast.is_some(), "declined: {body}");
            assert_eq!(fast.unwrap(), super::super::by_serde(body.as_bytes()).unwrap(), "{body}");
        }
    }

    #[test]
    fn declines_what_it_is_not_sure_of() {
        for body in [
            &b"{\"a\":1,}"[..],
            b"[01]",
            b"{\"a\" 1}",
            b"\"\xff\"",
            b"\"a\x01\"",
            b"[1] [2]",
            b"{\"a\":\"\\x\"}",
            b"[1e400]",
        ] {
            assert!(of(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(of(deep.as_bytes()).is_none());
    }
}
