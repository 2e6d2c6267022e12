//! The circuit breaker of one endpoint: failsafe's state machine (closed → open after N
//! consecutive failures or a failure ratio over a window → half-open after `open_ms` → closed
//! on a success), instrumented into `sluice_breaker_state`.
//!
//! Only the upstream's own behaviour feeds it ([`Outcome`]): a connect failure, a timeout, a
//! reset or garbage from the upstream, or one of [`FAILURE_STATUSES`]. A client that leaves or
//! sends garbage, and a request sluice refuses before sending, are neutral.

use crate::config::schema::BreakerConf;
use crate::error::SluiceError;
use crate::metrics;
use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{
    consecutive_failures, success_rate_over_time_window, ConsecutiveFailures, FailurePolicy,
    OrElse, SuccessRateOverTimeWindow,
};
use failsafe::{Instrument, StateMachine};
use std::time::Duration;

type Policy = OrElse<ConsecutiveFailures<Constant>, SuccessRateOverTimeWindow<Constant>>;

/// `sluice_breaker_state` values.
const CLOSED: f64 = 0.0;
const HALF_OPEN: f64 = 1.0;
const OPEN: f64 = 2.0;

/// Exports state changes of one endpoint's breaker.
pub struct Gauge {
    pool: String,
    endpoint: String,
}

impl Gauge {
    fn set(&self, v: f64) {
        metrics::BREAKER_STATE
            .with_label_values(&[&self.pool, &self.endpoint])
            .set(v);
    }
}

impl Instrument for Gauge {
    fn on_call_rejected(&self) {
        metrics::ENDPOINT_SKIPS
            .with_label_values(&[&self.pool, &self.endpoint, "breaker_open"])
            .inc();
    }
    fn on_open(&self) {
        tracing::warn!(pool = %self.pool, endpoint = %self.endpoint, "circuit breaker open");
        self.set(OPEN);
    }
    fn on_half_open(&self) {
        self.set(HALF_OPEN);
    }
    fn on_closed(&self) {
        tracing::info!(pool = %self.pool, endpoint = %self.endpoint, "circuit breaker closed");
        self.set(CLOSED);
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

/// One endpoint's breaker.
pub struct Breaker {
    sm: StateMachine<Policy, Gauge>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Breaker")
    }
}

impl Breaker {
    /// A closed breaker for `endpoint` of `pool`.
    pub fn new(conf: &BreakerConf, pool: &str, endpoint: &str) -> Self {
        let open = backoff::constant(Duration::from_millis(conf.open_ms));
        let ratio = success_rate_over_time_window(
            // failsafe counts the success rate: a failure ratio r trips below 1 - r. Without
            // a ratio the threshold is 0: never trips.
            conf.failure_ratio.map_or(0.0, |r| 1.0 - r),
            conf.min_requests,
            Duration::from_millis(conf.window_ms),
            open.clone(),
        );
        let policy = consecutive_failures(conf.consecutive_failures, open).or_else(ratio);
        let gauge = Gauge {
            pool: pool.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        gauge.set(CLOSED);
        Self {
            sm: StateMachine::new(policy, gauge),
        }
    }

    /// Whether a call may go to the endpoint now (false while open: no connect attempt).
    pub fn permits(&self) -> bool {
        self.sm.is_call_permitted()
    }

    /// Record a success.
    pub fn success(&self) {
        self.sm.on_success();
    }

    /// Record a failure.
    pub fn failure(&self) {
        self.sm.on_error();
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
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_and_closes_after_a_half_open_success() {
        let conf = BreakerConf {
            consecutive_failures: 3,
            open_ms: 50,
            ..BreakerConf::default()
        };
        let b = Breaker::new(&conf, "p", "unit-test:1");
        for _ in 0..3 {
            assert!(b.permits());
            b.failure();
        }
        assert!(!b.permits(), "open after 3 failures");
        std::thread::sleep(Duration::from_millis(80));
        assert!(b.permits(), "half-open probe allowed");
        b.success();
        assert!(b.permits());
        b.failure();
        assert!(b.permits(), "closed again: one failure does not reopen");
    }

    #[test]
    fn only_upstream_outcomes_count() {
        assert_eq!(Outcome::of_status(0), Outcome::Neutral);
        assert_eq!(Outcome::of_status(200), Outcome::Success);
        assert_eq!(Outcome::of_status(404), Outcome::Success);
        for s in FAILURE_STATUSES {
            assert_eq!(Outcome::of_status(s), Outcome::Failure);
        }
        assert_eq!(
            Outcome::of_error(&SluiceError::UpstreamUnreachable("h:1".into())),
            Outcome::Failure
        );
        for neutral in [
            SluiceError::ClientGone,
            SluiceError::BadRequestFraming,
            SluiceError::Internal,
            SluiceError::UnknownTenant,
        ] {
            assert_eq!(Outcome::of_error(&neutral), Outcome::Neutral);
        }
        let conf = BreakerConf {
            consecutive_failures: 2,
            ..BreakerConf::default()
        };
        let b = Breaker::new(&conf, "p", "unit-test:2");
        for _ in 0..50 {
            b.record(Outcome::Neutral);
        }
        b.record(Outcome::Failure);
        assert!(
            b.permits(),
            "neutral outcomes neither open nor reset the count"
        );
        b.record(Outcome::Neutral);
        b.record(Outcome::Failure);
        assert!(!b.permits(), "two consecutive upstream failures open it");
    }
}
