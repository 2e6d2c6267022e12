//! Structured logging setup (tracing): text or JSON lines on stderr, level from `RUST_LOG`
//! (default `info`). Pingora's own `log` records are bridged into the same subscriber.

use crate::config::schema::LogFormat;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Calling it twice is harmless (the second is ignored).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
