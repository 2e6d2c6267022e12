//! Pipeline stage 0 (request_filter, before routing): the request path, normalized once so
//! that the route match, the API detection and the upstream all see the same path.
//!
//! What is done to the path (the query string is never touched):
//! - dot-segments are removed as in RFC 3986 section 5.2.4 (`remove_dot_segments`), where a
//!   segment counts as `.` or `..` also when its dots are percent-encoded (`%2e`, `%2E`:
//!   encoded unreserved characters are equivalent to the characters, RFC 3986 section
//!   6.2.2.2). A `..` that would climb above the root is refused, not clamped: no client of
//!   an LLM API sends one, and clamping would hide an attack as a valid request;
//! - for the same reason every percent-encoded unreserved character (letters, digits, `-`,
//!   `.`, `_`, `~`) is decoded, so `/v1/%63hat/completions` is routed, accounted and sent as
//!   the `/v1/chat/completions` the upstream will read it as; reserved ones (`%2F`, `%3F`...)
//!   stay encoded;
//! - empty segments are merged (`//v1//models` is `/v1/models`), like nginx's default
//!   `merge_slashes on`: many upstream servers merge them too, and a path routed one way must
//!   not be read another way upstream;
//! - a trailing slash is kept (`/v1/models/` stays as it is).
//!
//! What is refused ([`PathError`], answered as a native 400 `invalid_path`):
//! - a raw backslash (the WHATWG URL Standard and several servers read it as `/`);
//! - a percent-encoded `/` or `\` (`%2F`, `%5C`) that delimits a `.` or `..` (an upstream
//!   that decodes it before removing dot-segments would climb); other encoded slashes are
//!   kept as they are and never split a segment, like Envoy's
//!   `path_with_escaped_slashes_action: KEEP_UNCHANGED` (a model id such as `org%2Fmodel` is
//!   legitimate);
//! - a dot-segment followed by `;` (`..;/`, read as `..` by servlet containers);
//! - NUL and other control characters, raw or percent-encoded, any byte outside printable
//!   ASCII, and malformed percent-encoding (`%zz`, a trailing `%`);
//! - a request-target that is neither origin-form (`/path`) nor absolute-form
//!   (`http://host/path`), RFC 9112 section 3.2.
//!
//! Hand-written rather than taken from a URL crate: the rules above (refusing a climb,
//! merging slashes, the encoded-slash policy) are sluice's routing policy, which general URL
//! normalizers (RFC 3986 section 6) do not implement.

use crate::error::SluiceError;
use pingora_http::RequestHeader;
use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `..` segment climbs above `/`.
    AboveRoot,
    /// A raw `\`.
    Backslash,
    /// An encoded `/` or `\` delimits a dot-segment, or a dot-segment is followed by `;`.
    AmbiguousSegment,
    /// A control character (raw or `%00`-`%1F`, `%7F`) or a byte outside printable ASCII.
    ControlOrNonAscii,
    /// `%` not followed by two hex digits.
    BadPercentEncoding,
    /// The request-target is not origin-form or absolute-form, or is not valid UTF-8.
    NotOriginForm,
}

impl PathError {
    /// Human-readable reason, for the error message.
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::AboveRoot => "'..' climbs above the root",
            PathError::Backslash => "backslash in path",
            PathError::AmbiguousSegment => "encoded slash or ';' next to a dot-segment",
            PathError::ControlOrNonAscii => "control or non-ASCII character in path",
            PathError::BadPercentEncoding => "malformed percent-encoding in path",
            PathError::NotOriginForm => "request-target is not a path",
        }
    }
}

/// The value of a hex digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Segment text with percent-encoded octets decoded (the segment was checked: every `%` is
/// followed by two hex digits, no decoded octet is a control character).
fn decode(seg: &str) -> Vec<u8> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let byte = match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                i += 3;
                h * 16 + l
            }
            (c, _, _) => {
                i += 1;
                c
            }
        };
        out.push(byte);
    }
    out
}

/// Check the bytes of one segment: printable ASCII, no backslash, well-formed percent-encoding
/// of no control character.
fn check_bytes(seg: &str) -> Result<(), PathError> {
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let v = h * 16 + l;
                if v < 0x20 || v == 0x7f {
                    return Err(PathError::ControlOrNonAscii);
                }
                i += 3;
            }
            0x21..=0x7e => i += 1,
            _ => return Err(PathError::ControlOrNonAscii),
        }
    }
    Ok(())
}

fn is_dots(s: &[u8]) -> bool {
    s == b"." || s == b".."
}

/// Whether `b` is an RFC 3986 section 2.3 unreserved character.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `seg` with its percent-encoded unreserved characters decoded (RFC 3986 section 6.2.2.2);
/// other escapes kept as sent. Borrowed when there is nothing to decode.
fn decode_unreserved(seg: &str) -> Cow<'_, str> {
    if !seg.contains('%') {
        return Cow::Borrowed(seg);
    }
    let b = seg.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => Some(h * 16 + l),
            _ => None,
        };
        match escaped {
            Some(v) if is_unreserved(v) => {
                out.push(char::from(v));
                i += 3;
            }
            _ => {
                // Checked printable ASCII: one byte is one char.
                out.push(char::from(b[i]));
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// What one (non-empty) segment is, once checked.
#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Dot,
    DotDot,
    Name,
}

fn classify(seg: &str) -> Result<Segment, PathError> {
    check_bytes(seg)?;
    if !seg.contains('%') && !seg.contains('.') {
        return Ok(Segment::Name);
    }
    let decoded = decode(seg);
    match decoded.as_slice() {
        b"." => return Ok(Segment::Dot),
        b".." => return Ok(Segment::DotDot),
        _ => {}
    }
    // An upstream that decodes `%2F`/`%5C` into separators, or treats `;` as the end of the
    // segment, must not find a dot-segment either.
    let decoded_has_separator = decoded.iter().any(|c| *c == b'/' || *c == b'\\');
    let pieces_dotted = decoded_has_separator
        && decoded
            .split(|c| *c == b'/' || *c == b'\\')
            .any(|p| is_dots(p) || p.split(|c| *c == b';').next().is_some_and(is_dots));
    let dotted_param =
        decoded.split(|c| *c == b';').next().is_some_and(is_dots) && decoded.contains(&b';');
    if pieces_dotted || dotted_param {
        return Err(PathError::AmbiguousSegment);
    }
    Ok(Segment::Name)
}

/// Normalize an absolute path (no query): dot-segments removed (percent-encoded dots
/// included), empty segments merged, trailing slash kept. Borrowed when nothing changed.
///
/// Errors: see [`PathError`]; a path not starting with `/` is [`PathError::NotOriginForm`].
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotOriginForm);
    };
    // The common case (`/v1/chat/completions`) is decided by one scan, without allocating.
    let plain = |b: &u8| matches!(b, 0x21..=0x7e) && !matches!(b, b'.' | b'%' | b'\\');
    if rest.bytes().all(|b| plain(&b)) && !path.contains("//") {
        return Ok(Cow::Borrowed(path));
    }
    let mut kept: Vec<Cow<'_, str>> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.is_empty() {
            trailing_slash = last;
            continue;
        }
        match classify(seg)? {
            Segment::Dot => trailing_slash = last,
            Segment::DotDot => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            Segment::Name => {
                kept.push(decode_unreserved(seg));
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// Normalize the client's request-target in place (see the module doc) before anything reads
/// it. The header is only rewritten when something changes, or when the target was not in
/// origin-form (absolute-form becomes origin-form), so an ordinary request goes upstream
/// byte for byte as sent.
pub fn normalize_request(req: &mut RequestHeader) -> Result<(), SluiceError> {
    let invalid = |e: PathError| SluiceError::InvalidPath(e.as_str());
    if !req.raw_path_is_utf8() {
        return Err(invalid(PathError::ControlOrNonAscii));
    }
    let raw = req.raw_path();
    let origin_form = raw.first() == Some(&b'/');
    let scheme = |s: &[u8]| {
        raw.get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    };
    let absolute_form = scheme(b"http://") || scheme(b"https://");
    if !origin_form && !absolute_form {
        return Err(invalid(PathError::NotOriginForm));
    }
    let path = normalize(req.uri.path()).map_err(invalid)?;
    let unchanged = matches!(path, Cow::Borrowed(_))
        && req.uri.path_and_query().map(|pq| pq.as_str().as_bytes()) == Some(raw);
    if unchanged {
        return Ok(());
    }
    let mut pq = path.into_owned();
    if let Some(q) = req.uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let uri = http::Uri::try_from(pq).map_err(|_| invalid(PathError::ControlOrNonAscii))?;
    req.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests;
