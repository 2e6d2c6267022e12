//! The access log line of the logging stage: one line per request (target `sluice::access`,
//! level INFO), written straight to stderr in the configured format instead of through
//! tracing-subscriber's formatter.
//!
//! Why: the formatter records every field through `dyn Visit` (each `%` field formatted into
//! a `String` of its own, the JSON one through `tracing-serde`'s map visitor) into a fresh
//! buffer per event. Here the fields are a struct of borrowed values written into one reused
//! per-thread buffer (JSON with `serde_json`, text with `fmt`), byte for byte the lines the
//! formatter writes (its `Full` text format and its JSON format with `flatten_event(true)`,
//! tracing-subscriber 0.3; a unit test compares both).
//!
//! What stays the same:
//! - filtering: the line is written only when `tracing::enabled!` says the installed
//!   subscriber (its `RUST_LOG` filter) takes INFO events of target `sluice::access`;
//! - redaction: the line passes through [`crate::logging::redact`] like every other line.
//!   Its fields are config names (tenant, route, pool, endpoint `host:port`), sluice's own
//!   request id and labels, numbers, and the model label (a client-supplied name, bounded by
//!   [`crate::metrics::model_label`]): the redaction covers the model field;
//! - without [`init`] (sluice used as a library, or ANSI colours on a terminal) the line goes
//!   through `tracing::info!` as before.

use crate::config::schema::LogFormat;
use crate::proxy::ctx::{AttemptRecord, Leg};
use serde::{Serialize, Serializer};
use std::cell::RefCell;
use std::fmt::{self, Display};
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// The log target of access lines (what `RUST_LOG=sluice::access=info` selects).
pub const TARGET: &str = "sluice::access";

/// A per-thread buffer that grew past this is dropped after its line (a request with many
/// attempts must not keep a large buffer alive per worker thread).
const MAX_KEPT_BUFFER_BYTES: usize = 16 * 1024;

/// The format lines are written in, once [`init`] ran.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Write access lines directly in `format` from now on (called by
/// [`crate::logging::init`]; `ansi`: the subscriber colours its lines, then access lines keep
/// going through it). A second call is ignored.
pub fn init(format: LogFormat, ansi: bool) {
    if !ansi {
        let _ = FORMAT.set(format);
    }
}

/// The fields of one access line, borrowed from the request's context. Field names, order
/// and value forms are those of the line sluice always wrote (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    /// sluice's request id (UUID v4).
    pub request_id: &'a str,
    /// Tenant name, or `none`.
    pub tenant: &'a str,
    /// Route name, or `none`.
    pub route: &'a str,
    /// Pool name of the last attempt, or `none`.
    pub pool: &'a str,
    /// Endpoint `host:port` of the last attempt, or `none`.
    pub endpoint: &'a str,
    /// Model label ([`crate::metrics::model_label`]).
    pub model: &'a str,
    /// Status sent to the client (0: none).
    pub status: u16,
    /// `stream: true` in the request body.
    pub stream: bool,
    /// Settled prompt tokens.
    pub prompt_tokens: u64,
    /// Settled completion tokens.
    pub completion_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// `exact`, `estimated` or `none`.
    pub token_source: &'a str,
    /// USD cost (0 when unpriced).
    pub cost_usd: f64,
    /// Time to first token; written in ms with 3 decimals, `-` when none.
    pub ttft: Option<Duration>,
    /// Streamed inspected requests: time the header and the no-content events were held
    /// before the first content event (commit on content); written in ms with 3 decimals,
    /// `-` when none.
    pub held: Option<Duration>,
    /// Request duration; written in ms with 3 decimals.
    pub duration: Duration,
    /// The response reached its normal end.
    pub completed: bool,
    /// Upstream attempts, written `pool/endpoint:status:outcome`, comma-separated.
    pub attempts: &'a [AttemptRecord],
    /// The client left before the end of the response.
    pub client_disconnected: bool,
    /// Error label, empty when none.
    pub error: &'a str,
    /// Continuations spliced into a stream cut after content (`resume_on_cut`).
    pub resumes: u32,
    /// Legs of a cut stream, written `pool/endpoint:status:outcome:prompt+completion`,
    /// comma-separated (empty when no stream was cut with `resume_on_cut`).
    pub legs: &'a [Leg],
    /// Response cache outcome (`hit`, `miss`, `bypass`), empty on routes without `cache`.
    pub cache: &'a str,
    /// The request's cache / coalescing key (SHA-256, 64 hex digits), empty when it has none.
    pub input_hash: &'a str,
}

/// Write `line` (when the subscriber's filter takes `sluice::access` INFO events).
pub fn write(line: &AccessLine<'_>) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let Some(format) = FORMAT.get().copied() else {
        line.emit_through_tracing();
        return;
    };
    let written = BUFFER.try_with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => {
            write_to_stderr(&mut buf, format, line);
            if buf.capacity() > MAX_KEPT_BUFFER_BYTES {
                *buf = Vec::new();
            }
        }
        Err(_) => write_to_stderr(&mut Vec::new(), format, line),
    });
    if written.is_err() {
        // The thread is exiting (its buffer is gone): a buffer of its own.
        write_to_stderr(&mut Vec::new(), format, line);
    }
}

fn write_to_stderr(buf: &mut Vec<u8>, format: LogFormat, line: &AccessLine<'_>) {
    let _ = render(buf, format, line, &mut std::io::stderr().lock());
}

/// Write `line` as of now in `format` to `out`, after [`crate::logging::redact`], using
/// `buf` (cleared first) to format it. Errors: `out`'s.
pub fn render(
    buf: &mut Vec<u8>,
    format: LogFormat,
    line: &AccessLine<'_>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    buf.clear();
    format_line(buf, format, SystemTime::now(), line)?;
    // Only `str`s and numbers were written: the bytes are UTF-8.
    let text = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
    out.write_all(crate::logging::redact(text).as_bytes())
}

/// Format `line` as the subscriber would at time `now`, newline included.
fn format_line(
    buf: &mut Vec<u8>,
    format: LogFormat,
    now: SystemTime,
    line: &AccessLine<'_>,
) -> std::io::Result<()> {
    match format {
        LogFormat::Json => {
            serde_json::to_writer(&mut *buf, &JsonLine::new(Timestamp(now), line))?;
            buf.push(b'\n');
            Ok(())
        }
        LogFormat::Text => write_text(buf, Timestamp(now), line),
    }
}

/// tracing-subscriber's `Full` text format: `{timestamp}  INFO sluice::access: request`
/// then ` name=value` per field, `&str` values in Rust's `Debug` form (quoted, escaped),
/// `%` values (`Display`) and numbers bare.
fn write_text(buf: &mut Vec<u8>, ts: Timestamp, l: &AccessLine<'_>) -> std::io::Result<()> {
    write!(
        buf,
        "{ts}  INFO {TARGET}: request request_id={}",
        l.request_id
    )?;
    write!(
        buf,
        " tenant={:?} route={:?} pool={:?} endpoint={:?} model={}",
        l.tenant, l.route, l.pool, l.endpoint, l.model
    )?;
    write!(
        buf,
        " status={} stream={} prompt_tokens={} completion_tokens={} cached_tokens={} reasoning_tokens={}",
        l.status, l.stream, l.prompt_tokens, l.completion_tokens, l.cached_tokens, l.reasoning_tokens
    )?;
    writeln!(
        buf,
        " token_source={:?} cost_usd={:?} ttft_ms={} held_ms={} duration_ms={} completed={} attempts={} client_disconnected={} error={:?} resumes={} legs={} cache={:?} input_hash={:?}",
        l.token_source,
        l.cost_usd,
        Ttft(l.ttft),
        Ttft(l.held),
        Millis(l.duration),
        l.completed,
        Attempts(l.attempts),
        l.client_disconnected,
        l.error,
        l.resumes,
        Legs(l.legs),
        l.cache,
        l.input_hash
    )
}

/// tracing-subscriber's JSON format with `flatten_event(true)`: timestamp, level, the event's
/// fields in order (`message` first), target.
#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(serialize_with = "display")]
    timestamp: Timestamp,
    level: &'static str,
    message: &'static str,
    request_id: &'a str,
    tenant: &'a str,
    route: &'a str,
    pool: &'a str,
    endpoint: &'a str,
    model: &'a str,
    status: u16,
    stream: bool,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
    token_source: &'a str,
    cost_usd: f64,
    #[serde(serialize_with = "display")]
    ttft_ms: Ttft,
    #[serde(serialize_with = "display")]
    held_ms: Ttft,
    #[serde(serialize_with = "display")]
    duration_ms: Millis,
    completed: bool,
    #[serde(serialize_with = "display")]
    attempts: Attempts<'a>,
    client_disconnected: bool,
    error: &'a str,
    resumes: u32,
    #[serde(serialize_with = "display")]
    legs: Legs<'a>,
    cache: &'a str,
    input_hash: &'a str,
    target: &'static str,
}

impl<'a> JsonLine<'a> {
    fn new(timestamp: Timestamp, l: &AccessLine<'a>) -> Self {
        Self {
            timestamp,
            level: "INFO",
            message: "request",
            request_id: l.request_id,
            tenant: l.tenant,
            route: l.route,
            pool: l.pool,
            endpoint: l.endpoint,
            model: l.model,
            status: l.status,
            stream: l.stream,
            prompt_tokens: l.prompt_tokens,
            completion_tokens: l.completion_tokens,
            cached_tokens: l.cached_tokens,
            reasoning_tokens: l.reasoning_tokens,
            token_source: l.token_source,
            cost_usd: l.cost_usd,
            ttft_ms: Ttft(l.ttft),
            held_ms: Ttft(l.held),
            duration_ms: Millis(l.duration),
            completed: l.completed,
            attempts: Attempts(l.attempts),
            client_disconnected: l.client_disconnected,
            error: l.error,
            resumes: l.resumes,
            legs: Legs(l.legs),
            cache: l.cache,
            input_hash: l.input_hash,
            target: TARGET,
        }
    }
}

/// A JSON string of `v`'s `Display` form, written without an intermediate `String`.
fn display<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// UTC time as tracing-subscriber's `SystemTime` timer writes it (RFC 3339, microseconds).
#[derive(Clone, Copy)]
struct Timestamp(SystemTime);

impl Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use chrono::{Datelike, Timelike};
        let t = chrono::DateTime::<chrono::Utc>::from(self.0);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 1_000
        )
    }
}

/// A duration in ms with 3 decimals.
#[derive(Clone, Copy)]
struct Millis(Duration);

impl Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}", self.0.as_secs_f64() * 1e3)
    }
}

/// [`Millis`], or `-` when there is none.
#[derive(Clone, Copy)]
struct Ttft(Option<Duration>);

impl Display for Ttft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => Millis(d).fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// `pool/endpoint:status:outcome` per attempt, comma-separated.
#[derive(Clone, Copy)]
struct Attempts<'a>(&'a [AttemptRecord]);

impl Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(
                f,
                "{sep}{}/{}:{}:{}",
                a.pool, a.endpoint, a.status, a.outcome
            )?;
        }
        Ok(())
    }
}

struct Legs<'a>(&'a [Leg]);

impl Display for Legs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(
                f,
                "{sep}{}/{}:{}:{}:{}+{}",
                l.pool, l.endpoint, l.status, l.outcome, l.prompt_tokens, l.completion_tokens
            )?;
        }
        Ok(())
    }
}

impl AccessLine<'_> {
    /// The line as a tracing event (the installed subscriber formats and writes it).
    fn emit_through_tracing(&self) {
        tracing::info!(
            target: TARGET,
            request_id = %self.request_id,
            tenant = self.tenant,
            route = self.route,
            pool = self.pool,
            endpoint = self.endpoint,
            model = %self.model,
            status = self.status,
            stream = self.stream,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            cached_tokens = self.cached_tokens,
            reasoning_tokens = self.reasoning_tokens,
            token_source = self.token_source,
            cost_usd = self.cost_usd,
            ttft_ms = %Ttft(self.ttft),
            held_ms = %Ttft(self.held),
            duration_ms = %Millis(self.duration),
            completed = self.completed,
            attempts = %Attempts(self.attempts),
            client_disconnected = self.client_disconnected,
            error = self.error,
            resumes = self.resumes,
            legs = %Legs(self.legs),
            cache = self.cache,
            input_hash = self.input_hash,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn attempts() -> Vec<AttemptRecord> {
        vec![
            AttemptRecord {
                pool: Arc::from("openai"),
                endpoint: "api.openai.com:443".to_owned(),
                status: 503,
                outcome: "status",
            },
            AttemptRecord {
                pool: Arc::from("azure"),
                endpoint: "x.openai.azure.com:443".to_owned(),
                status: 200,
                outcome: "ok",
            },
        ]
    }

    fn line<'a>(attempts: &'a [AttemptRecord], tenant: &'a str, cost: f64) -> AccessLine<'a> {
        AccessLine {
            request_id: "5f0c6d2e-8c1b-4d8e-9a57-2f1f2b0c9d11",
            tenant,
            route: "chat",
            pool: "azure",
            endpoint: "x.openai.azure.com:443",
            model: "gpt-4o-mini",
            status: 200,
            stream: true,
            prompt_tokens: 1200,
            completion_tokens: 350,
            cached_tokens: 0,
            reasoning_tokens: 7,
            token_source: "exact",
            cost_usd: cost,
            ttft: Some(Duration::from_micros(412_310)),
            held: Some(Duration::from_micros(1_250)),
            duration: Duration::from_nanos(2_210_004_321),
            completed: true,
            attempts,
            client_disconnected: false,
            error: "",
            resumes: 0,
            legs: &[],
            cache: "",
            input_hash: "",
        }
    }

    /// What tracing-subscriber writes for `l` in `format`, with the timestamp cut off.
    fn through_subscriber(format: LogFormat, l: &AccessLine<'_>) -> String {
        let out = Capture::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false);
        let emit = || l.emit_through_tracing();
        match format {
            LogFormat::Json => {
                tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), emit)
            }
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), emit),
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        without_timestamp(&text)
    }

    fn direct(format: LogFormat, l: &AccessLine<'_>) -> String {
        let mut buf = Vec::new();
        format_line(&mut buf, format, SystemTime::now(), l).unwrap();
        without_timestamp(&String::from_utf8(buf).unwrap())
    }

    /// The line with its 27-character timestamp replaced by `T`, checking its shape.
    fn without_timestamp(line: &str) -> String {
        let at = line.find("20").unwrap();
        let ts = &line[at..at + 27];
        assert!(
            ts.len() == 27 && &ts[4..5] == "-" && &ts[10..11] == "T" && ts.ends_with('Z'),
            "{line}"
        );
        format!("{}T{}", &line[..at], &line[at + 27..])
    }

    #[test]
    fn lines_are_those_of_the_tracing_formatter_in_both_formats() {
        let attempts = attempts();
        let legs = [
            Leg {
                pool: Arc::from("openai"),
                endpoint: "api.openai.com:443".into(),
                status: 200,
                outcome: "upstream_truncated",
                prompt_tokens: 12,
                completion_tokens: 40,
            },
            Leg {
                pool: Arc::from("azure"),
                endpoint: "x.openai.azure.com:443".into(),
                status: 200,
                outcome: "ok",
                prompt_tokens: 55,
                completion_tokens: 20,
            },
        ];
        let cases = [
            line(&attempts, "team-a", 0.00039),
            AccessLine {
                resumes: 1,
                legs: &legs,
                cache: "miss",
                input_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                ..line(&attempts, "team-a", 0.0)
            },
            // Values that need escaping, an empty attempt list, tiny and zero costs.
            AccessLine {
                ttft: None,
                held: None,
                error: "upstream_timeout",
                ..line(&[], "te\"am\\b\tc", 1e-7)
            },
            line(&attempts[..1], "ü-tenant", 0.0),
        ];
        for l in &cases {
            for format in [LogFormat::Text, LogFormat::Json] {
                assert_eq!(direct(format, l), through_subscriber(format, l));
            }
        }
        let json = direct(LogFormat::Json, &cases[0]);
        let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(
            v["attempts"],
            "openai/api.openai.com:443:503:status,azure/x.openai.azure.com:443:200:ok"
        );
        assert_eq!(v["ttft_ms"], "412.310");
        assert_eq!(v["held_ms"], "1.250");
        assert_eq!(v["duration_ms"], "2210.004");
        assert_eq!(v["target"], TARGET);
        let json = direct(LogFormat::Json, &cases[1]);
        let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(v["resumes"], 1);
        assert_eq!(
            v["legs"],
            "openai/api.openai.com:443:200:upstream_truncated:12+40,azure/x.openai.azure.com:443:200:ok:55+20"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_968_000, 123_456_789);
        assert_eq!(Timestamp(t).to_string(), "2026-11-29T16:00:00.123456Z");
    }

    #[test]
    fn the_filter_decides_whether_a_line_is_written() {
        let with = |filter: &str| {
            let sub = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::sink)
                .finish();
            tracing::subscriber::with_default(
                sub,
                || tracing::enabled!(target: TARGET, tracing::Level::INFO),
            )
        };
        assert!(with("warn,sluice::access=info"));
        assert!(with("info"));
        assert!(!with("warn"));
        assert!(!with("info,sluice::access=off"));
    }
}
