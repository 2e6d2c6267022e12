//! Why the limiter refused a request ([`Rejection`]); mapped to the native 429/503 by
//! [`crate::error::SluiceError`].

use super::budget::Period;
use std::time::Duration;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// A requests-per-second/minute limit.
    Requests {
        /// The limit hit.
        limit: u64,
        /// When a request would fit again.
        retry_after: Duration,
    },
    /// A tokens-per-minute limit.
    Tokens {
        /// The limit hit.
        limit: u64,
        /// Tokens left in the window.
        remaining: u64,
        /// When the window resets.
        retry_after: Duration,
    },
    /// `max_concurrent`.
    Concurrency {
        /// The limit hit.
        limit: u64,
    },
    /// A USD budget is spent.
    Budget {
        /// Which cap.
        period: Period,
    },
    /// The shared store (Redis) is unreachable and the tenant's failure policy is `closed`.
    StoreUnavailable,
}

impl Rejection {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Requests { .. } => "requests",
            Rejection::Tokens { .. } => "tokens",
            Rejection::Concurrency { .. } => "concurrency",
            Rejection::Budget { .. } => "budget",
            Rejection::StoreUnavailable => "store_unavailable",
        }
    }
}
