//! A strict, allocation-free reader of a narrow subset of JSON (RFC 8259), for the per-event
//! fast paths: it accepts only what serde_json accepts too, and gives up (`None`) on anything
//! outside its subset (an escape in a string it must read or skip, nesting deeper than 32, a
//! number it cannot read as `u64`...), so the caller falls back to the full typed parse.
//!
//! Being stricter than serde_json is what keeps a fast path exact: an event it accepts is
//! well-formed JSON that the typed parse would read the same way, and everything else takes
//! the typed parse, malformed-event counting included.

/// Deepest nesting skipped before giving up.
const MAX_DEPTH: usize = 32;

/// A cursor over one JSON text.
pub(crate) struct Skim<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Skim<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Skim { s, i: 0 }
    }

    /// Skips JSON whitespace (space, tab, LF, CR) and returns the next byte, if any.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.s.get(self.i) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.i += 1;
        }
        None
    }

    /// Consumes `b` (after whitespace).
    pub(crate) fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// True at the end of the text (only whitespace left).
    pub(crate) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// Consumes `null` if it comes next; true if it did.
    pub(crate) fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.s.get(self.i..end)? == word).then(|| self.i = end)?;
        // A literal must be followed by a delimiter, or `nullx` would pass.
        match self.s.get(self.i) {
            Some(b) if b.is_ascii_alphanumeric() => None,
            _ => Some(()),
        }
    }

    /// A string without escapes: its bytes, and whether they are all ASCII. Control
    /// characters are refused, as serde_json refuses them; UTF-8 is not checked here.
    fn scan_str(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let rest = &self.s[self.i..];
        let mut ascii = true;
        // A plain byte loop: most strings here are keys and short values, where a SIMD
        // search's setup and an 8-byte word loop both measured slower.
        for (n, &b) in rest.iter().enumerate() {
            match b {
                b'"' => {
                    self.i += n + 1;
                    return Some((&rest[..n], ascii));
                }
                b'\\' | 0..=0x1f => return None,
                0x80.. => ascii = false,
                _ => {}
            }
        }
        None
    }

    /// A string read as text: checked for UTF-8 (as serde_json checks a string it reads), with
    /// its escapes left for [`JsonText::decode_into`]. A `\u` escape of a UTF-16 surrogate
    /// (half of a character above U+FFFF) is declined: its pairing rules stay with serde_json.
    pub(crate) fn text(&mut self) -> Option<JsonText<'a>> {
        self.eat(b'"')?;
        let rest = &self.s[self.i..];
        let mut escaped = false;
        let mut n = 0;
        while let Some(&b) = rest.get(n) {
            match b {
                b'"' => {
                    let raw = std::str::from_utf8(&rest[..n]).ok()?;
                    self.i += n + 1;
                    return Some(JsonText { raw, escaped });
                }
                b'\\' => {
                    escaped = true;
                    match rest.get(n + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => n += 2,
                        b'u' => {
                            hex4(rest.get(n + 2..n + 6)?)?;
                            n += 6;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => n += 1,
            }
        }
        None
    }

    /// A non-negative integer that fits a `u64` (no sign, fraction or exponent).
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.peek()?;
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = &self.s[start..self.i];
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        if matches!(self.s.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    /// The separator after a member or element: `Some(true)` after `,` (another follows),
    /// `Some(false)` after `close` (the container ended).
    pub(crate) fn next(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Some(true)
            }
            b if b == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// Opens an object and reads its first key: `Some(None)` for `{}`.
    pub(crate) fn first_key(&mut self) -> Option<Option<&'a [u8]>> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(None);
        }
        self.key().map(Some)
    }

    /// A member's key (bytes, checked for UTF-8 as serde_json checks keys) and its colon.
    pub(crate) fn key(&mut self) -> Option<&'a [u8]> {
        let (key, ascii) = self.scan_str()?;
        if !ascii {
            std::str::from_utf8(key).ok()?;
        }
        self.eat(b':')?;
        Some(key)
    }

    /// Skips one value, checking it as strictly as serde_json would.
    pub(crate) fn skip(&mut self) -> Option<()> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            // serde_json does not check the UTF-8 of a string it skips either.
            b'"' => self.scan_str().map(drop),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' | b'0'..=b'9' => self.number(),
            b'[' if depth < MAX_DEPTH => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip_at(depth + 1)?;
                    if !self.next(b']')? {
                        return Some(());
                    }
                }
            }
            b'{' if depth < MAX_DEPTH => {
                let mut key = self.first_key()?;
                while key.is_some() {
                    self.skip_at(depth + 1)?;
                    key = if self.next(b'}')? {
                        Some(self.key()?)
                    } else {
                        None
                    };
                }
                Some(())
            }
            _ => None,
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` (RFC 8259 section 6).
    fn number(&mut self) -> Option<()> {
        if self.s.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let digits = |skim: &mut Self| {
            let start = skim.i;
            while skim.s.get(skim.i).is_some_and(u8::is_ascii_digit) {
                skim.i += 1;
            }
            skim.i - start
        };
        let first = self.s.get(self.i).copied();
        let n = digits(self);
        if n == 0 || (n > 1 && first == Some(b'0')) {
            return None;
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }
}

/// A JSON string's content as sent (valid UTF-8), possibly holding simple escapes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JsonText<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> JsonText<'a> {
    /// The text itself when it has no escapes (no copy), else `None`.
    pub(crate) fn plain(&self) -> Option<&'a str> {
        (!self.escaped).then_some(self.raw)
    }

    /// Appends the decoded text to `out` (RFC 8259 section 7: `\b` is U+0008, `\f` U+000C).
    pub(crate) fn decode_into(&self, out: &mut String) {
        let mut chars = self.raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('u') => {
                    let mut digits = [0u8; 4];
                    for d in &mut digits {
                        *d = chars.next().and_then(|c| u8::try_from(c).ok()).unwrap_or(0);
                    }
                    // Checked by `Skim::text`: four hex digits, not a surrogate.
                    if let Some(c) = hex4(&digits).and_then(char::from_u32) {
                        out.push(c);
                    }
                }
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(c) => out.push(c), // `"`, `\\`, `/`: the character itself
                None => {}
            }
        }
    }
}

/// Four hex digits as a code point, `None` if they are not hex or name a UTF-16 surrogate
/// (U+D800 to U+DFFF).
fn hex4(digits: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for &d in digits.get(..4)? {
        value = value * 16 + char::from(d).to_digit(16)?;
    }
    (!(0xD800..=0xDFFF).contains(&value)).then_some(value)
}
