//! The circuit breaker of one endpoint: closed → open after `consecutive_failures` failures in a
//! row, or when the failure ratio over `window_ms` reaches `failure_ratio` once `min_requests`
//! were seen → half-open after `open_ms` → closed on a success, open again on a failure.
//!
//! Half-open admits exactly one probe at a time: [`Breaker::admit`] hands out a [`Pass`], and
//! while the probe's pass lives every other caller is told to skip the endpoint as when open.
//! A pass dropped without an outcome (the client left, sluice refused the request) frees the
//! probe slot without counting a success or a failure. State changes are exported as
//! `sluice_breaker_state`. The clock is tokio's, so tests drive it with a paused clock.
//!
//! Only the upstream's own behaviour feeds it ([`Outcome`]): a connect failure, a timeout, a
//! reset or garbage from the upstream, or one of [`FAILURE_STATUSES`]. A client that leaves or
//! sends garbage, and a request sluice refuses before sending, are neutral.

use crate::config::schema::BreakerConf;
use crate::error::SluiceError;
use crate::metrics;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::time::{Duration, Instant};

/// `sluice_breaker_state` values.
const CLOSED: f64 = 0.0;
const HALF_OPEN: f64 = 1.0;
const OPEN: f64 = 2.0;

/// Slices of the failure-ratio window: the ratio covers the last `window_ms`, give or take
/// one slice.
const SLICES: u64 = 10;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// `probe`: the id of the pass whose call is probing the endpoint, if one is out.
    HalfOpen {
        probe: Option<u64>,
    },
}

/// Why [`Breaker::admit`] refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Open: the endpoint is skipped until `open_ms` is over.
    Open,
    /// Half-open with its one probe in flight.
    ProbeInFlight,
}

impl Skip {
    /// `sluice_endpoint_skips_total` reason.
    pub fn label(self) -> &'static str {
        match self {
            Skip::Open => "breaker_open",
            Skip::ProbeInFlight => "half_open_probe_in_flight",
        }
    }
}

/// Success/failure counts of one slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    index: u64,
    ok: u32,
    failed: u32,
}

#[derive(Debug)]
struct Inner {
    state: State,
    conf: BreakerConf,
    consecutive: u32,
    slices: [Slice; SLICES as usize],
    next_probe: u64,
}

impl Inner {
    /// Index of the window slice `now` falls in.
    fn slice_index(&self, origin: Instant, now: Instant) -> u64 {
        let slice_ms = (self.conf.window_ms / SLICES).max(1);
        (now.duration_since(origin).as_millis() as u64) / slice_ms
    }

    fn record(&mut self, origin: Instant, now: Instant, ok: bool) {
        let index = self.slice_index(origin, now);
        let slice = &mut self.slices[(index % SLICES) as usize];
        if slice.index != index {
            *slice = Slice {
                index,
                ..Slice::default()
            };
        }
        if ok {
            slice.ok = slice.ok.saturating_add(1);
        } else {
            slice.failed = slice.failed.saturating_add(1);
        }
    }

    /// (requests, failures) in the window ending at `now`.
    fn window(&self, origin: Instant, now: Instant) -> (u64, u64) {
        let index = self.slice_index(origin, now);
        self.slices
            .iter()
            .filter(|s| s.index + SLICES > index && s.index <= index)
            .fold((0, 0), |(n, f), s| {
                (
                    n + u64::from(s.ok) + u64::from(s.failed),
                    f + u64::from(s.failed),
                )
            })
    }

    fn trips(&self, origin: Instant, now: Instant) -> bool {
        if self.consecutive >= self.conf.consecutive_failures {
            return true;
        }
        let Some(ratio) = self.conf.failure_ratio else {
            return false;
        };
        let (n, failed) = self.window(origin, now);
        n > 0 && n >= u64::from(self.conf.min_requests) && failed as f64 >= ratio * n as f64
    }

    fn reset_counts(&mut self) {
        self.consecutive = 0;
        self.slices = [Slice::default(); SLICES as usize];
    }
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// Start of the window slices' clock.
    origin: Instant,
    pool: String,
    endpoint: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn export(&self, v: f64) {
        metrics::BREAKER_STATE
            .with_label_values(&[&self.pool, &self.endpoint])
            .set(v);
    }

    fn opened(&self, inner: &mut Inner, now: Instant) {
        inner.state = State::Open {
            until: now + Duration::from_millis(inner.conf.open_ms),
        };
        inner.reset_counts();
        tracing::warn!(pool = %self.pool, endpoint = %self.endpoint, "circuit breaker open");
        self.export(OPEN);
    }

    fn closed(&self, inner: &mut Inner) {
        inner.state = State::Closed;
        inner.reset_counts();
        tracing::info!(pool = %self.pool, endpoint = %self.endpoint, "circuit breaker closed");
        self.export(CLOSED);
    }
}

/// Upstream statuses that count as an endpoint failure, for breakers, passive health (traffic
/// streamed through) and active health checks alike: 500, 502, 503, 504 (RFC 9110 §15.6) and
/// Anthropic's 529 `overloaded_error`.
pub const FAILURE_STATUSES: [u16; 5] = [500, 502, 503, 504, 529];

/// What one exchange with an endpoint says about the endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with a status outside [`FAILURE_STATUSES`] (a 4xx is an answer:
    /// the endpoint is up).
    Success,
    /// Upstream-caused: connect failure, timeout, reset or invalid response, or a status in
    /// [`FAILURE_STATUSES`].
    Failure,
    /// Says nothing about the upstream: the client left or sent garbage, sluice refused the
    /// request itself, or no upstream answer was seen.
    Neutral,
}

impl Outcome {
    /// The outcome of an upstream response with HTTP status `status` (0: no response seen,
    /// neutral).
    pub fn of_status(status: u16) -> Self {
        match status {
            0 => Outcome::Neutral,
            s if FAILURE_STATUSES.contains(&s) => Outcome::Failure,
            _ => Outcome::Success,
        }
    }

    /// The outcome of a request that ended with `err` instead of an upstream answer.
    pub fn of_error(err: &SluiceError) -> Self {
        if err.is_upstream_fault() {
            Outcome::Failure
        } else {
            Outcome::Neutral
        }
    }
}

/// One endpoint's breaker. Shared by every config snapshot that has the endpoint (see
/// [`crate::balance::Registry`]).
#[derive(Debug)]
pub struct Breaker {
    shared: Arc<Shared>,
}

/// Leave to call the endpoint, from [`Breaker::admit`]. The probe's pass (half-open) holds the
/// probe slot for as long as it lives; dropping it without an outcome frees the slot. Closed
/// passes hold nothing.
#[derive(Debug)]
#[must_use = "a probe's pass holds the probe slot only while it lives"]
pub struct Pass {
    probe: Option<(Arc<Shared>, u64)>,
}

impl Pass {
    /// Whether this call is the half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if let Some((shared, id)) = self.probe.take() {
            let mut inner = shared.lock();
            if inner.state == (State::HalfOpen { probe: Some(id) }) {
                // No outcome was recorded: let the next caller probe.
                inner.state = State::HalfOpen { probe: None };
            }
        }
    }
}

impl Breaker {
    /// A closed breaker for `endpoint` (`host:port`) of `pool`.
    pub fn new(conf: &BreakerConf, pool: &str, endpoint: &str) -> Self {
        let shared = Shared {
            inner: Mutex::new(Inner {
                state: State::Closed,
                conf: conf.clone(),
                consecutive: 0,
                slices: [Slice::default(); SLICES as usize],
                next_probe: 0,
            }),
            origin: Instant::now(),
            pool: pool.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        shared.export(CLOSED);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Apply settings changed by a reload. The state (open until when, counts) is kept: the
    /// new thresholds apply from the next outcome, the new `open_ms` from the next opening.
    pub fn configure(&self, conf: &BreakerConf) {
        self.shared.lock().conf = conf.clone();
    }

    /// Leave to call the endpoint now: always when closed; when half-open, only for the one
    /// probe (the first caller once `open_ms` is over, then the next one after the probe's
    /// pass is dropped without an outcome). Errors: why the endpoint must be skipped.
    pub fn admit(&self) -> Result<Pass, Skip> {
        let now = Instant::now();
        let mut inner = self.shared.lock();
        match inner.state {
            State::Closed => Ok(Pass { probe: None }),
            State::Open { until } if now < until => Err(Skip::Open),
            State::HalfOpen { probe: Some(_) } => Err(Skip::ProbeInFlight),
            State::Open { .. } | State::HalfOpen { probe: None } => {
                let was_open = matches!(inner.state, State::Open { .. });
                inner.next_probe += 1;
                let id = inner.next_probe;
                inner.state = State::HalfOpen { probe: Some(id) };
                drop(inner);
                if was_open {
                    self.shared.export(HALF_OPEN);
                }
                Ok(Pass {
                    probe: Some((self.shared.clone(), id)),
                })
            }
        }
    }

    /// Whether [`Breaker::admit`] would let a call through now, without taking the probe slot
    /// (an open breaker whose `open_ms` is over turns half-open). For callers that only
    /// report outcomes (the active health check); a caller about to use the endpoint must
    /// hold a [`Pass`].
    pub fn permits(&self) -> bool {
        let now = Instant::now();
        let mut inner = self.shared.lock();
        match inner.state {
            State::Closed | State::HalfOpen { probe: None } => true,
            State::HalfOpen { probe: Some(_) } => false,
            State::Open { until } if now < until => false,
            State::Open { .. } => {
                inner.state = State::HalfOpen { probe: None };
                drop(inner);
                self.shared.export(HALF_OPEN);
                true
            }
        }
    }

    /// Record a success: closes a half-open breaker (or an open one whose `open_ms` is over:
    /// the success answers the question a probe would ask). A success reported while the
    /// breaker is still open (a call admitted before it opened) changes nothing.
    pub fn success(&self) {
        let now = Instant::now();
        let mut inner = self.shared.lock();
        match inner.state {
            State::Closed => {
                inner.consecutive = 0;
                inner.record(self.shared.origin, now, true);
            }
            State::Open { until } if now < until => {}
            State::Open { .. } | State::HalfOpen { .. } => self.shared.closed(&mut inner),
        }
    }

    /// Record a failure: may open a closed breaker; reopens a half-open one (or an open one
    /// whose `open_ms` is over) for another `open_ms`.
    pub fn failure(&self) {
        let now = Instant::now();
        let mut inner = self.shared.lock();
        match inner.state {
            State::Closed => {
                inner.consecutive = inner.consecutive.saturating_add(1);
                inner.record(self.shared.origin, now, false);
                if inner.trips(self.shared.origin, now) {
                    self.shared.opened(&mut inner, now);
                }
            }
            State::Open { until } if now < until => {}
            State::Open { .. } | State::HalfOpen { .. } => self.shared.opened(&mut inner, now),
        }
    }

    /// Stop exporting this breaker's state (its endpoint left the config).
    pub(crate) fn unexport(&self) {
        let _ =
            metrics::BREAKER_STATE.remove_label_values(&[&self.shared.pool, &self.shared.endpoint]);
    }

    /// Record `outcome` (a neutral one changes nothing).
    pub fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => self.success(),
            Outcome::Failure => self.failure(),
            Outcome::Neutral => {}
        }
    }
}

#[cfg(test)]
mod tests;
