//! Upstream selection state: per-endpoint circuit breaker, key rotation, requests in flight
//! and retry-after cooldown, and the order in which a pool's endpoints are tried under its
//! policy (round robin, least in flight, smooth weighted round robin).

pub mod breaker;
pub mod keys;

use crate::config::schema::{BreakerConf, Policy};
use breaker::Breaker;
use keys::Keys;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall clock in ms (cooldowns come from `retry-after`, a wall-clock notion).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runtime state of one endpoint (lives in the config snapshot: a reload starts it afresh).
#[derive(Debug)]
pub struct EndpointState {
    /// Circuit breaker.
    pub breaker: Breaker,
    /// Key rotation.
    pub keys: Keys,
    /// Attempts in flight.
    pub in_flight: AtomicU64,
    /// Not before this time (a 503/529 `retry-after`), ms since the epoch.
    pub cooldown_until_ms: AtomicU64,
}

impl EndpointState {
    /// Fresh state.
    pub fn new(conf: &BreakerConf, pool: &str, endpoint: &str, keys: usize) -> Self {
        Self {
            breaker: Breaker::new(conf, pool, endpoint),
            keys: Keys::new(keys),
            in_flight: AtomicU64::new(0),
            cooldown_until_ms: AtomicU64::new(0),
        }
    }
}

/// Counts an attempt in flight on an endpoint for as long as it lives.
pub struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    /// Start counting.
    pub fn new(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Selection state of a pool.
#[derive(Debug, Default)]
pub struct Selector {
    next: AtomicUsize,
    /// Smooth weighted round robin current weights.
    weights: Mutex<Vec<i64>>,
}

impl Selector {
    /// Endpoint indices in the order to try them: the policy's pick first, then the others.
    /// `in_flight[i]` and `weight[i]` describe endpoint i.
    pub fn order(&self, policy: Policy, in_flight: &[u64], weight: &[u32]) -> Vec<usize> {
        let n = in_flight.len();
        if n == 0 {
            return Vec::new();
        }
        let first = match policy {
            Policy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Policy::LeastInFlight => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
                (0..n)
                    .map(|k| (start + k) % n)
                    .min_by_key(|&i| in_flight[i])
                    .unwrap_or(0)
            }
            Policy::Weighted => self.smooth_weighted(weight),
        };
        let mut order = Vec::with_capacity(n);
        order.push(first);
        order.extend((1..n).map(|k| (first + k) % n));
        order
    }

    /// nginx's smooth weighted round robin: add each weight, pick the largest, subtract the
    /// total from it.
    fn smooth_weighted(&self, weight: &[u32]) -> usize {
        let Ok(mut cur) = self.weights.lock() else {
            return 0;
        };
        cur.resize(weight.len(), 0);
        let total: i64 = weight.iter().map(|w| i64::from(*w)).sum();
        let mut best = 0;
        for (i, w) in weight.iter().enumerate() {
            cur[i] += i64::from(*w);
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= total;
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        let s = Selector::default();
        assert_eq!(
            s.order(Policy::RoundRobin, &[0, 0, 0], &[1, 1, 1]),
            vec![0, 1, 2]
        );
        assert_eq!(
            s.order(Policy::RoundRobin, &[0, 0, 0], &[1, 1, 1]),
            vec![1, 2, 0]
        );
        assert_eq!(s.order(Policy::LeastInFlight, &[5, 1, 3], &[1, 1, 1])[0], 1);
        let w = Selector::default();
        let picks: Vec<usize> = (0..6)
            .map(|_| w.order(Policy::Weighted, &[0, 0], &[2, 1])[0])
            .collect();
        assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 4);
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 2);
    }
}
