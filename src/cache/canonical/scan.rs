//! The canonical form's fast path: one pass of a byte scanner over the body. It takes the
//! bodies SDKs send (objects, arrays, strings with or without escapes, integers, decimals) and
//! declines (`None`) anything it is not sure of, invalid JSON included; [`super::of`] then
//! hands the body to serde_json's deserializer.
//!
//! Its text is the serde path's byte for byte (a property test holds the two together):
//! - a string without escapes is kept as sent: JSON text holds no unescaped `"`, `\` or
//!   control character in a string (RFC 8259 section 7), the only characters serde_json's
//!   printer escapes, so it prints that string as sent; the body is checked for UTF-8 first,
//!   as serde_json checks every string it reads;
//! - a string with escapes is read and printed by serde_json;
//! - an integer that fits an `i64` or a `u64` (and is not `-0`) is kept as sent: serde_json
//!   reads it as that integer and prints it back unchanged; any other number is read and
//!   printed by serde_json as the `f64` it reads (`1e2` is `100.0`, `-0` is `-0.0`).
//!
//! So most of a body is its own canonical text. The scanner copies it in runs: the bytes read
//! since the last change are pending (`copied..i`), and are copied out in one piece only where
//! the text differs from the body (whitespace dropped, a string or number printed anew, an
//! ignored member left out, an object put in key order). A compact body whose objects are in
//! key order is one copy.

use super::{in_key_order, is_zero, reorder, text_capacity, Canonical, Facts};
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

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
/// `0x80` in every byte of a word.
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit of each byte of `w` that is below `n` (`n` at most 0x80), and possibly of
/// bytes after the first such one: exact for the lowest (the "has less" test of Sean
/// Anderson's Bit Twiddling Hacks, <https://graphics.stanford.edu/~seander/bithacks.html>).
const fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * n as u64) & !w & HIGHS
}

/// The first index at or after `j` that is not plain string content (see [`STRING_STOP`]),
/// or `b.len()`. Eight bytes at a time (a word's stop bytes found with [`below`]) while eight
/// are left (a string's closing quote is followed by more of the body, so this is nearly
/// always), then one at a time.
pub(crate) fn skip_plain(b: &[u8], mut j: usize) -> usize {
    while let Some(word) = b.get(j..).and_then(|rest| rest.first_chunk::<8>()) {
        let w = u64::from_le_bytes(*word);
        let stops = below(w, 0x20)
            | below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1);
        if stops != 0 {
            // Little-endian: the lowest flagged byte is the first in the body.
            return j + (stops.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
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
    // An ASCII body (the usual one) is UTF-8; the ASCII check is the cheaper pass.
    if !body.is_ascii() {
        std::str::from_utf8(body).ok()?;
    }
    let mut s = Scan {
        b: body,
        i: 0,
        copied: 0,
        out: Vec::with_capacity(text_capacity(body.len())),
        // Room for the members of a request body's usual objects without regrowing.
        members: Vec::with_capacity(8),
    };
    let mut facts = Facts::default();
    s.ws();
    s.value(0, Some(&mut facts))?;
    s.ws();
    if s.i != body.len() {
        return None;
    }
    s.flush(s.i);
    Some(Canonical {
        text: s.out,
        deterministic: facts.zero_temperature || facts.seeded,
    })
}

/// A cursor over the body (`b[i..]` not read yet) and the text written so far: `out`, then
/// the pending run `b[copied..i]`, which is canonical text as it stands.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    /// Where the pending run starts (at most `i`).
    copied: usize,
    out: Vec<u8>,
    /// The members of the objects being written, innermost last (each: its key's text, and
    /// where `"key":value` starts and ends in the text, as [`Scan::at`] gives): one
    /// allocation for every object of the body. Keys are compared as bytes (the canonical
    /// order is byte order).
    members: Vec<(Cow<'a, [u8]>, usize, usize)>,
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
    /// Copies the pending run up to body index `to` to `out`.
    fn flush(&mut self, to: usize) {
        self.out.extend_from_slice(&self.b[self.copied..to]);
        self.copied = to;
    }

    /// Leaves `b[from..to]` out of the text (the pending run before it is copied).
    fn drop_span(&mut self, from: usize, to: usize) {
        self.flush(from);
        self.copied = to;
    }

    /// Where the byte at body index `j` (pending, at or after `copied`) lands in the text.
    fn at(&self, j: usize) -> usize {
        self.out.len() + (j - self.copied)
    }

    /// Skips JSON whitespace (RFC 8259 section 2), leaving it out of the text. Inline: it is
    /// called before and after every token, and a compact body (what SDKs send) has none.
    #[inline(always)]
    fn ws(&mut self) {
        if let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.drop_ws();
        }
    }

    /// The whitespace at the cursor, left out of the text.
    #[cold]
    fn drop_ws(&mut self) {
        let j = skip_ws(self.b, self.i);
        self.drop_span(self.i, j);
        self.i = j;
    }

    /// Consumes `c` after whitespace.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// One value at the cursor; `top`: the body itself (its members' facts).
    fn value(&mut self, depth: usize, top: Option<&mut Facts>) -> Option<()> {
        match *self.b.get(self.i)? {
            b'{' if depth < MAX_DEPTH => self.object(depth, top),
            b'[' if depth < MAX_DEPTH => self.array(depth),
            b'"' => {
                let s = self.string()?;
                if s.escaped {
                    self.reprint_string(s)?;
                }
                Some(())
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
        // What follows is checked by the caller (a separator, or the end).
        self.i = end;
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

    /// The escaped string `s` (just consumed), read and printed by serde_json in its place.
    fn reprint_string(&mut self, s: Str) -> Option<()> {
        let text: String = serde_json::from_slice(self.quoted(s)).ok()?;
        self.drop_span(s.start - 1, s.end + 1);
        serde_json::to_writer(&mut self.out, &text).ok()
    }

    /// A number (RFC 8259 section 6 grammar), as serde_json prints what it reads.
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
        if !as_sent {
            let v: f64 = serde_json::from_str(text).ok()?;
            self.drop_span(start, j);
            serde_json::to_writer(&mut self.out, &v).ok()?;
        }
        Some(())
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            self.value(depth + 1, None)?;
            self.ws();
            match *self.b.get(self.i)? {
                b',' => self.i += 1,
                b']' => break,
                _ => return None,
            }
        }
        self.i += 1;
        Some(())
    }

    fn object(&mut self, depth: usize, mut top: Option<&mut Facts>) -> Option<()> {
        let b = self.b;
        self.i += 1;
        // Where the members' text starts (after the `{`).
        let body = self.at(self.i);
        self.ws();
        if b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Some(());
        }
        let first = self.members.len();
        // Where the `,` before this member is in the text (`None` before the first).
        let mut comma: Option<usize> = None;
        // A left-out member had no kept member before it: the `,` after it goes too.
        let mut drop_comma = false;
        loop {
            self.ws();
            if b.get(self.i) != Some(&b'"') {
                return None;
            }
            // Where the member's text starts.
            let start = self.at(self.i);
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
                // Read (it must be valid) and left out, with one `,` next to it.
                self.flush(self.i);
                let mark = match comma {
                    Some(c) if self.members.len() > first => c,
                    _ => {
                        drop_comma = true;
                        start
                    }
                };
                self.out.truncate(mark);
                self.value(depth + 1, None)?;
                self.out.truncate(mark);
                self.copied = self.i;
            } else {
                if k.escaped {
                    // The key printed anew, then its `:` (whitespace around it was left out).
                    let text = std::str::from_utf8(&key).ok()?;
                    self.flush(self.i);
                    self.out.truncate(start);
                    serde_json::to_writer(&mut self.out, text).ok()?;
                    self.out.push(b':');
                }
                let value_at = self.at(self.i);
                self.value(depth + 1, None)?;
                if let Some(facts) = top.as_deref_mut() {
                    if let b"temperature" | b"seed" = key.as_ref() {
                        self.flush(self.i);
                        let value = &self.out[value_at..];
                        if key.as_ref() == b"seed" {
                            facts.seeded = value != b"null";
                        } else {
                            facts.zero_temperature = is_zero(value);
                        }
                    }
                }
                let end = self.at(self.i);
                self.members.push((key, start, end));
            }
            self.ws();
            match *b.get(self.i)? {
                b',' => {
                    if drop_comma {
                        self.drop_span(self.i, self.i + 1);
                        drop_comma = false;
                    } else {
                        comma = Some(self.at(self.i));
                    }
                    self.i += 1;
                }
                b'}' => break,
                _ => return None,
            }
        }
        if !in_key_order(&self.members[first..]) {
            self.flush(self.i);
            reorder(&mut self.out, body, &mut self.members[first..]);
        }
        self.members.truncate(first);
        self.i += 1;
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
    fn leaves_out_ignored_members_wherever_they_are() {
        for body in [
            r#"{"stream":true,"model":"m"}"#,
            r#"{"model":"m","stream":true}"#,
            r#"{"a":1,"stream":true,"user":"u","b":2}"#,
            r#"{"stream":true,"user":"u"}"#,
            r#"{"stream":true,"user":"u","a":[1,{"user":"kept"}]}"#,
            r#"{ "user" : "\u0041" , "b" : 1 , "metadata" : {"x":"\n"} }"#,
            r#"{"b":1,"metadata":{"x":"\n"},"a":0}"#,
        ] {
            let fast = of(body.as_bytes()).expect(body);
            assert_eq!(
                fast,
                super::super::by_serde(body.as_bytes()).unwrap(),
                "{body}"
            );
        }
        assert_eq!(
            of(br#"{"b":1,"stream":true,"a":2,"user":"u"}"#)
                .unwrap()
                .text,
            br#"{"a":2,"b":1}"#
        );
    }

    #[test]
    fn a_compact_body_in_key_order_is_its_own_text() {
        let body = br#"{"a":[1,"x",{"b":null,"c":true}],"d":-2}"#;
        assert_eq!(of(body).unwrap().text, body);
    }

    #[test]
    fn plain_runs_stop_at_the_first_stop_byte_at_every_offset() {
        for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
            for at in 0..24 {
                // Bytes that are plain content around it: printable ASCII, DEL, UTF-8 bytes.
                let mut b: Vec<u8> = (0..24)
                    .map(|i| [b'a', b' ', 0x7f, 0xc3, 0xa9, b'~'][i % 6])
                    .collect();
                b[at] = stop;
                for from in 0..=at {
                    assert_eq!(
                        skip_plain(&b, from),
                        at,
                        "stop {stop:#x} at {at} from {from}"
                    );
                }
            }
        }
        assert_eq!(skip_plain(b"abcdefghijklmnopq", 3), 17);
        assert_eq!(skip_plain(b"", 0), 0);
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
