//! Structured logging setup (tracing): text or JSON lines on stderr, level from `RUST_LOG`
//! (default `info`). Pingora's own `log` records are bridged into the same subscriber, and
//! every formatted line, Pingora's included, passes through [`redact`] before it is written.
//!
//! What is redacted (whatever the level, whoever logs):
//! - the value of every credential header (`authorization`, `proxy-authorization`,
//!   `x-api-key`, `api-key` and so Gemini's `x-goog-api-key`, `cookie`, `set-cookie`) in the
//!   forms Pingora prints headers:
//!   `Debug` of `http::HeaderMap` (`"authorization": "Bearer ..."`), raw header bytes
//!   (`authorization: Bearer ...\r\n`), and `name=value` fields. Virtual keys are only known
//!   as SHA-256 hashes, so this is what hides them;
//! - every provider key of the loaded config, wherever it appears (exact match), including
//!   keys of earlier configs (a rotated key can still be in flight);
//! - the query string of every path or URL (`/v1/models?...` becomes `/v1/models?[redacted]`):
//!   Pingora's error lines print the request's path and query.

use crate::config::schema::LogFormat;
use crate::config::Snapshot;
use aho_corasick::{AhoCorasick, MatchKind};
use arc_swap::ArcSwapOption;
use once_cell::sync::Lazy;
use regex::Regex;
use std::borrow::Cow;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Provider keys shorter than this are not matched verbatim (they would redact ordinary
/// words); real provider keys are far longer.
const MIN_KEY_CHARS: usize = 8;

/// Most distinct provider keys remembered for verbatim redaction (oldest forgotten first).
const MAX_REMEMBERED_KEYS: usize = 256;

/// Install the global subscriber. Calling it twice is harmless (the second is ignored).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Access lines are written in the same format and through the same redaction, without
    // the formatter (see `access_log`), once this subscriber is the one installed.
    if installed.is_ok() {
        crate::access_log::init(format, ansi);
    }
    // Compile the redaction patterns now, not on the first log line (which they would delay).
    Lazy::force(&CREDENTIAL_HEADER);
    Lazy::force(&QUERY);
}

/// Credential header values in the forms Pingora logs them: the name, an optional (possibly
/// JSON-escaped) quote, `:` or `=`, then the value: when quoted (`"` or JSON's `\"`), all of it
/// up to the closing quote (commas included: Digest and SigV4 values have them); unquoted, up
/// to a backslash (an escaped `\r\n`), line end, `,` or `}`.
static CREDENTIAL_HEADER: Lazy<Option<Regex>> = Lazy::new(|| {
    Regex::new(
        r#"(?i)((?:proxy-authorization|authorization|x-api-key|api-key|set-cookie|cookie)\\?"?\s*[:=]\s*)(?:(\\?")[^"\\\r\n]*|[^\\"\r\n,}]+)"#,
    )
    .ok()
});

/// A path (or URL) with a query: the query is everything after `?` up to a blank, a quote or
/// a backslash.
static QUERY: Lazy<Option<Regex>> = Lazy::new(|| Regex::new(r#"(/[^\s"?\\]*)\?[^\s"\\]+"#).ok());

/// Provider keys to redact verbatim: the remembered list and its compiled matcher.
struct KnownKeys {
    keys: Mutex<Vec<String>>,
    matcher: ArcSwapOption<AhoCorasick>,
}

static KNOWN_KEYS: Lazy<KnownKeys> = Lazy::new(|| KnownKeys {
    keys: Mutex::new(Vec::new()),
    matcher: ArcSwapOption::empty(),
});

/// Remember the provider keys of `snapshot` for verbatim redaction. Call it for every
/// snapshot put in service (start and each reload); keys of earlier snapshots stay
/// remembered (up to `MAX_REMEMBERED_KEYS`, 256).
pub fn remember_keys(snapshot: &Snapshot) {
    let new = snapshot
        .pools
        .values()
        .flat_map(|p| p.endpoints.iter())
        .flat_map(|e| e.keys.iter())
        .map(|k| k.expose());
    remember(new);
}

/// Remember `keys` (provider key values) for verbatim redaction.
pub fn remember<'a>(new: impl IntoIterator<Item = &'a str>) {
    let Ok(mut keys) = KNOWN_KEYS.keys.lock() else {
        return;
    };
    let mut changed = false;
    for k in new {
        if k.chars().count() >= MIN_KEY_CHARS && !keys.iter().any(|have| have == k) {
            keys.push(k.to_owned());
            changed = true;
        }
    }
    if !changed {
        return;
    }
    let excess = keys.len().saturating_sub(MAX_REMEMBERED_KEYS);
    keys.drain(..excess);
    // Building fails only on patterns too large for the automaton (not for 256 keys); then
    // the header and query rules still apply.
    KNOWN_KEYS.matcher.store(
        // Leftmost-longest: when one remembered key is a prefix of another, the longer one
        // is redacted whole (the standard semantics would stop at the shorter match).
        AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(keys.iter())
            .ok()
            .map(Arc::new),
    );
}

/// `line` with credential header values, known provider keys and query strings replaced by
/// [`REDACTED`]. Borrows `line` when there is nothing to redact.
pub fn redact(line: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(line);
    if let Some(m) = KNOWN_KEYS.matcher.load().as_deref() {
        if m.is_match(out.as_ref()) {
            out = Cow::Owned(m.replace_all(out.as_ref(), &vec![REDACTED; m.patterns_len()]));
        }
    }
    // The patterns are constants: one that failed to compile fails closed (the whole line).
    let (Some(credential), Some(query)) = (CREDENTIAL_HEADER.as_ref(), QUERY.as_ref()) else {
        return Cow::Borrowed("[redacted]\n");
    };
    if let Cow::Owned(s) = credential.replace_all(out.as_ref(), "${1}${2}[redacted]") {
        out = Cow::Owned(s);
    }
    if out.contains('?') {
        if let Cow::Owned(s) = query.replace_all(out.as_ref(), "${1}?[redacted]") {
            out = Cow::Owned(s);
        }
    }
    out
}

/// The subscriber's writer: stderr, through [`redact`].
#[derive(Clone, Copy)]
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter
    }
}

/// Writes each buffer it is given (tracing-subscriber's fmt layer hands over one whole
/// formatted event per `write_all`) to stderr after [`redact`].
struct RedactingWriter;

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr()
            .lock()
            .write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_are_redacted_in_pingoras_formats() {
        let cases = [
            // Debug of http::HeaderMap, as in Pingora's "Sending header to upstream".
            r#"headers: {"authorization": "Bearer sk-live-123", "x-api-key": "ak-9", "api-key": "az-1", "content-type": "application/json"}"#,
            // The same inside a JSON log line (quotes escaped).
            r#"{"message":"headers: {\"authorization\": \"Bearer sk-live-123\", \"x-api-key\": \"ak-9\", \"api-key\": \"az-1\"}"}"#,
            // Raw header bytes (Debug of Bytes).
            r#"b"POST / HTTP/1.1\r\nAuthorization: Bearer sk-live-123\r\nX-Api-Key: ak-9\r\nApi-Key: az-1\r\n\r\n""#,
            "authorization=Bearer sk-live-123 x-api-key=ak-9 api-key=az-1",
        ];
        for c in cases {
            let r = redact(c);
            for secret in ["sk-live-123", "ak-9", "az-1"] {
                assert!(!r.contains(secret), "{secret} left in {r}");
            }
            assert!(r.contains(REDACTED), "{r}");
        }
        // Gemini's `x-goog-api-key` (its name ends in `api-key`), in each form.
        for c in [
            r#"headers: {"x-goog-api-key": "AIza-g1", "content-type": "application/json"}"#,
            r#"{"message":"headers: {\"x-goog-api-key\": \"AIza-g1\"}"}"#,
            r#"b"POST / HTTP/1.1\r\nx-goog-api-key: AIza-g1\r\n\r\n""#,
            "x-goog-api-key=AIza-g1",
        ] {
            let r = redact(c);
            assert!(!r.contains("AIza-g1") && r.contains(REDACTED), "{r}");
        }
        // Quoted values are redacted whole, commas included (SigV4, Digest).
        let sigv4 = r#"headers: {"authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261129/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7", "host": "h"}"#;
        let r = redact(sigv4);
        for secret in ["AKIDEXAMPLE", "SignedHeaders", "5d672d79c15b"] {
            assert!(!r.contains(secret), "{secret} left in {r}");
        }
        assert!(r.contains(r#""host": "h""#), "{r}");
        let json = redact(cases[1]);
        assert!(
            serde_json::from_str::<serde_json::Value>(&json).is_ok(),
            "{json}"
        );
        assert!(redact(cases[0]).contains("application/json"));
    }

    #[test]
    fn query_strings_are_redacted_and_paths_kept() {
        let line =
            "Fail to proxy: Upstream ConnectRefused, GET /v1/models?api_key=s3cr3t&x=1, Host: a";
        let r = redact(line);
        assert!(!r.contains("s3cr3t"));
        assert!(r.contains("GET /v1/models?[redacted]"), "{r}");
        assert!(r.contains("Host: a"));
        let url = redact(r#"uri: "http://h:1/p/q?token=abc""#);
        assert_eq!(url, r#"uri: "http://h:1/p/q?[redacted]""#);
    }

    #[test]
    fn known_provider_keys_are_redacted_anywhere() {
        remember(["sk-known-provider-key-1", "short"]);
        let r = redact("peer said: invalid key sk-known-provider-key-1 (see docs)");
        assert!(!r.contains("sk-known-provider-key-1"));
        assert_eq!(redact("a short word"), "a short word");
    }

    #[test]
    fn plain_lines_are_borrowed() {
        let line = "request_id=1 tenant=a route=chat status=200";
        assert!(matches!(redact(line), Cow::Borrowed(_)));
    }
}
