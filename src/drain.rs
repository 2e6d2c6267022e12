//! Graceful shutdown (SIGTERM): the drain's stages, shared by the reload service that sees the
//! signal and by the relays of open streams.
//!
//! `Serving` -> `Draining` (SIGTERM: `/readyz` 503, no new connections, in-flight requests go
//! on) -> `Deadline` (`server.drain_timeout_seconds` later: streams still open end with a native
//! error event instead of a bare EOF, so the SDK raises; the process exits once nothing is in
//! flight). Pingora's own grace period is set a little past the deadline, as a backstop.

use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::watch;

/// Where the process stands in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Normal operation.
    Serving,
    /// SIGTERM seen: finishing what is in flight.
    Draining,
    /// The drain deadline passed: what is still open is ended now.
    Deadline,
}

fn stage() -> &'static watch::Sender<Stage> {
    static STAGE: OnceLock<watch::Sender<Stage>> = OnceLock::new();
    STAGE.get_or_init(|| watch::channel(Stage::Serving).0)
}

/// Start the drain; after `timeout`, move to [`Stage::Deadline`]. Idempotent.
pub fn begin(timeout: Duration) {
    if stage().send_if_modified(|s| {
        let was = *s;
        *s = (*s).max(Stage::Draining);
        was == Stage::Serving
    }) {
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            stage().send_replace(Stage::Deadline);
        });
    }
}

/// The current stage.
pub fn current() -> Stage {
    *stage().borrow()
}

/// Completes once the drain deadline has passed (at once if it already has); never before.
/// Cancel-safe: use it as a `select!` branch.
pub async fn deadline() {
    let mut rx = stage().subscribe();
    // `wait_for` only fails when the sender is dropped, which a static never is.
    let _ = rx.wait_for(|s| *s == Stage::Deadline).await;
}

/// Pingora's grace period for a drain of `timeout`: one second past sluice's own deadline, so
/// the relays end their streams with an error event before Pingora stops the runtimes.
pub fn pingora_grace_seconds(timeout: Duration) -> u64 {
    timeout.as_secs() + 1
}
