//! Upstream selection state: per-endpoint circuit breaker, key rotation, requests in flight
//! and retry-after cooldown, and the order in which a pool's endpoints are tried under its
//! policy (round robin, least in flight, smooth weighted round robin).
//!
//! Endpoint health lives in a [`Registry`] keyed by pool name and endpoint URL (keys by a hash
//! of their value), not in the config snapshot: a reload keeps what is known about endpoints
//! that did not change (an open breaker, a cooldown, a disabled key).

pub mod breaker;
pub mod keys;

use crate::config::schema::{BreakerConf, Policy};
use breaker::Breaker;
use keys::{KeyState, Keys};
use once_cell::sync::Lazy;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall clock in ms (cooldowns come from `retry-after`, a wall-clock notion).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Health of one endpoint that outlives a config snapshot: shared by every snapshot that has
/// the endpoint (same pool name and URL), see [`Registry`].
#[derive(Debug)]
pub struct EndpointHealth {
    /// Circuit breaker.
    pub breaker: Breaker,
    /// Attempts in flight (every snapshot's).
    pub in_flight: AtomicU64,
    /// Not before this time (a 503/529 `retry-after`), ms since the epoch.
    pub cooldown_until_ms: AtomicU64,
    id: EndpointId,
    registry: Weak<Registry>,
}

impl Drop for EndpointHealth {
    /// The last snapshot with this endpoint is gone: forget it, unless a newer config already
    /// registered a successor under the same identity.
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            let mut map = lock(&registry.endpoints);
            if map
                .get(&self.id)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), self))
            {
                map.remove(&self.id);
                self.breaker.unexport();
            }
        }
    }
}

/// Runtime state of one endpoint as a snapshot sees it: the shared [`EndpointHealth`]
/// (dereferenced to: `state.breaker`, `state.in_flight`, `state.cooldown_until_ms`) and the
/// states of the snapshot's keys in its order.
#[derive(Debug)]
pub struct EndpointState {
    health: Arc<EndpointHealth>,
    /// Key rotation (per key and model).
    pub keys: Keys,
}

impl std::ops::Deref for EndpointState {
    type Target = EndpointHealth;
    fn deref(&self) -> &EndpointHealth {
        &self.health
    }
}

/// Stable identity of an endpoint across configs: pool name and endpoint URL (as configured,
/// without a trailing slash).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointId {
    /// Pool name.
    pub pool: String,
    /// Endpoint URL.
    pub url: String,
}

/// Identity of one key of an endpoint: SHA-256 of its value (never the value itself), so a
/// rotated value starts fresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct KeyId(EndpointId, [u8; 32]);

/// Endpoint health and key states that survive reloads, keyed by stable identity. Entries are
/// weak: an endpoint or key dropped from the config is forgotten once the last snapshot that
/// had it is gone (requests in flight finish on theirs), so the registry never outgrows the
/// configs in use.
#[derive(Debug, Default)]
pub struct Registry {
    endpoints: Mutex<HashMap<EndpointId, Weak<EndpointHealth>>>,
    keys: Mutex<HashMap<KeyId, Weak<KeyState>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps of weak pointers: usable even after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The process's registry, used by every config compiled in it.
pub fn registry() -> &'static Arc<Registry> {
    static GLOBAL: Lazy<Arc<Registry>> = Lazy::new(Arc::default);
    &GLOBAL
}

impl Registry {
    /// State for endpoint `id` (`addr` is its `host:port` metric label) with `keys` (their
    /// values, in config order): the live one if a snapshot still has it, else fresh state
    /// under `conf`. Breaker settings of a live endpoint are not changed here (a config that
    /// fails to compile must change nothing): see [`Breaker::configure`].
    pub fn endpoint(
        self: &Arc<Self>,
        id: &EndpointId,
        addr: &str,
        conf: &BreakerConf,
        keys: &[&str],
        max_models_per_key: usize,
    ) -> EndpointState {
        let health = {
            let mut map = lock(&self.endpoints);
            match map.get(id).and_then(Weak::upgrade) {
                Some(h) => h,
                None => {
                    let h = Arc::new(EndpointHealth {
                        breaker: Breaker::new(conf, &id.pool, addr),
                        in_flight: AtomicU64::new(0),
                        cooldown_until_ms: AtomicU64::new(0),
                        id: id.clone(),
                        registry: Arc::downgrade(self),
                    });
                    map.insert(id.clone(), Arc::downgrade(&h));
                    h
                }
            }
        };
        let mut map = lock(&self.keys);
        map.retain(|_, w| w.strong_count() > 0);
        let states = keys
            .iter()
            .map(|k| {
                let kid = KeyId(id.clone(), Sha256::digest(k.as_bytes()).into());
                match map.get(&kid).and_then(Weak::upgrade) {
                    Some(s) => s,
                    None => {
                        let s = Arc::<KeyState>::default();
                        map.insert(kid, Arc::downgrade(&s));
                        s
                    }
                }
            })
            .collect();
        EndpointState {
            health,
            keys: Keys::from_states(states, max_models_per_key),
        }
    }

    /// Entries held: (endpoints, keys), after forgetting keys no snapshot holds any more.
    pub fn entries(&self) -> (usize, usize) {
        let mut keys = lock(&self.keys);
        keys.retain(|_, w| w.strong_count() > 0);
        (lock(&self.endpoints).len(), keys.len())
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
