//! Fixed-window token counters with reservations: reserve the worst case before the call,
//! settle to the exact usage after it.
//!
//! Written here rather than on pingora-limits' `Rate`: `Rate` only adds (a count-min sketch
//! whose estimate never decreases within a window) and cannot release the unused part of a
//! reservation, nor tell which window a reservation was taken in. Tokens are money, so the
//! counts here are exact per key.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// A reservation taken by [`Windows::try_reserve`]: which window and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    window: u64,
    amount: u64,
}

/// What a key's window looks like after a decision (for `x-ratelimit-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// Units left in the window.
    pub remaining: u64,
    /// Time until the window resets.
    pub reset: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    window: u64,
    used: u64,
}

/// Counters per key `K` (a [`super::LimitKey`] in the limiter) in fixed windows of
/// `interval_ms`, aligned on the clock passed in.
#[derive(Debug)]
pub struct Windows<K> {
    interval_ms: u64,
    slots: Mutex<HashMap<K, Slot>>,
}

impl<K: Hash + Eq + Clone> Windows<K> {
    /// Windows of `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis().max(1) as u64,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn window_of(&self, now_ms: u64) -> (u64, Duration) {
        let w = now_ms / self.interval_ms;
        let reset = Duration::from_millis((w + 1) * self.interval_ms - now_ms);
        (w, reset)
    }

    /// Reserve `amount` on every `(key, limit)` pair, all or nothing. A pair is refused when
    /// `used + amount > limit`, except in an empty window (so a request larger than the limit
    /// is admitted alone instead of never): the overshoot of a window is thus at most one
    /// reservation. Returns the reservations, or the reset time of the first refusing key.
    pub fn try_reserve(
        &self,
        pairs: &[(K, u64, u64)],
        now_ms: u64,
    ) -> Result<Vec<(Reservation, WindowState)>, (usize, WindowState)> {
        let (w, reset) = self.window_of(now_ms);
        let Ok(mut slots) = self.slots.lock() else {
            return Err((
                0,
                WindowState {
                    remaining: 0,
                    reset,
                },
            ));
        };
        for (i, (key, amount, limit)) in pairs.iter().enumerate() {
            let used = slots
                .get(key)
                .filter(|s| s.window == w)
                .map_or(0, |s| s.used);
            if used > 0 && used.saturating_add(*amount) > *limit {
                return Err((
                    i,
                    WindowState {
                        remaining: limit.saturating_sub(used),
                        reset,
                    },
                ));
            }
        }
        let mut out = Vec::with_capacity(pairs.len());
        for (key, amount, limit) in pairs {
            // The key is cloned (a reference count) only for a counter's first window.
            let used = match slots.get_mut(key) {
                Some(slot) => {
                    if slot.window != w {
                        *slot = Slot { window: w, used: 0 };
                    }
                    slot.used = slot.used.saturating_add(*amount);
                    slot.used
                }
                None => {
                    let slot = Slot {
                        window: w,
                        used: *amount,
                    };
                    slots.insert(key.clone(), slot);
                    *amount
                }
            };
            out.push((
                Reservation {
                    window: w,
                    amount: *amount,
                },
                WindowState {
                    remaining: limit.saturating_sub(used),
                    reset,
                },
            ));
        }
        Ok(out)
    }

    /// Replace reservation `r` on `key` by `actual`. In the same window the difference is
    /// released (or added); in a later window the reservation stays counted where it was taken
    /// and only usage above it is added to the current window.
    pub fn settle(&self, key: &K, r: Reservation, actual: u64, now_ms: u64) {
        let (w, _) = self.window_of(now_ms);
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let slot = slots.entry(key.clone()).or_default();
        if slot.window == r.window && w == r.window {
            slot.used = slot.used.saturating_sub(r.amount).saturating_add(actual);
        } else if actual > r.amount {
            if slot.window != w {
                *slot = Slot { window: w, used: 0 };
            }
            slot.used = slot.used.saturating_add(actual - r.amount);
        }
    }

    /// Units used in the current window of `key`.
    pub fn used(&self, key: &K, now_ms: u64) -> u64 {
        let (w, _) = self.window_of(now_ms);
        self.slots
            .lock()
            .ok()
            .and_then(|s| s.get(key).filter(|s| s.window == w).map(|s| s.used))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_settle_release() {
        let w = Windows::new(Duration::from_secs(60));
        let t0 = 120_000;
        let r = w.try_reserve(&[("a", 1000, 1500)], t0).unwrap();
        assert_eq!(r[0].1.remaining, 500);
        assert_eq!(r[0].1.reset, Duration::from_secs(60));
        // A second 1000-token reservation does not fit...
        let (_, st) = w.try_reserve(&[("a", 1000, 1500)], t0 + 1).unwrap_err();
        assert_eq!(st.remaining, 500);
        // ...until the first settles at 300 actual tokens.
        w.settle(&"a", r[0].0, 300, t0 + 2);
        assert_eq!(w.used(&"a", t0 + 2), 300);
        assert!(w.try_reserve(&[("a", 1000, 1500)], t0 + 3).is_ok());
        assert_eq!(w.used(&"a", t0 + 3), 1300);
    }

    #[test]
    fn empty_window_admits_one_oversized_request_and_all_or_nothing() {
        let w = Windows::new(Duration::from_secs(60));
        assert!(w.try_reserve(&[("a", 9000, 5000)], 0).is_ok());
        assert!(w.try_reserve(&[("a", 1, 5000)], 1).is_err());
        // Pair b would fit, pair a does not: nothing is reserved on b.
        assert!(w.try_reserve(&[("b", 10, 100), ("a", 1, 5000)], 2).is_err());
        assert_eq!(w.used(&"b", 2), 0);
        // Next window: reset.
        assert!(w.try_reserve(&[("a", 4000, 5000)], 60_000).is_ok());
    }

    /// The acceptance comparison: 20 streams start together under 5,000 tokens/min, each
    /// will use 1,017 tokens (17 prompt + 1,000 output). Reserving the worst case admits 4;
    /// settling only after the response (what most gateways do) admits all 20, since nothing
    /// is counted until the first one ends.
    #[test]
    fn reserve_before_vs_settle_after_only() {
        let (limit, reservation, actual) = (5000, 1012, 1017);
        let run = |reserve: u64| {
            let w = Windows::new(Duration::from_secs(60));
            let admitted: Vec<_> = (0..20)
                .filter_map(|_| w.try_reserve(&[("t", reserve, limit)], 1_000).ok())
                .collect();
            for r in &admitted {
                w.settle(&"t", r[0].0, actual, 2_000);
            }
            (admitted.len() as u64, w.used(&"t", 2_000))
        };
        let (n, settled) = run(reservation);
        assert_eq!((n, settled), (4, 4 * actual));
        assert!(settled <= limit + reservation);
        let (n_after, settled_after) = run(0);
        assert_eq!((n_after, settled_after), (20, 20 * actual));
        assert!(
            settled_after > limit + reservation,
            "settle-after-only overshoots"
        );
        eprintln!("reserve-before: {n} admitted, {settled} settled; settle-after-only: {n_after} admitted, {settled_after} settled (limit {limit})");
    }

    #[test]
    fn settle_in_a_later_window_only_adds_the_excess() {
        let w = Windows::new(Duration::from_secs(60));
        let r = w.try_reserve(&[("a", 100, 1000)], 59_000).unwrap();
        w.settle(&"a", r[0].0, 150, 61_000);
        assert_eq!(w.used(&"a", 61_000), 50);
        let r = w.try_reserve(&[("a", 100, 1000)], 61_000).unwrap();
        w.settle(&"a", r[0].0, 20, 125_000);
        assert_eq!(w.used(&"a", 125_000), 0);
    }

    #[test]
    fn huge_amounts_saturate_instead_of_wrapping() {
        let w = Windows::new(Duration::from_secs(60));
        let t0 = 120_000;
        let r = w.try_reserve(&[("a", 10, 1000)], t0).unwrap();
        w.settle(&"a", r[0].0, u64::MAX, t0 + 1);
        assert_eq!(w.used(&"a", t0 + 1), u64::MAX);
        assert!(w.try_reserve(&[("a", u64::MAX, 1000)], t0 + 2).is_err());
        // Settled in a later window: the excess is added there, still saturating.
        let r = w.try_reserve(&[("b", 5, 100)], t0).unwrap();
        w.try_reserve(&[("b", 10, 100)], t0 + 60_000).unwrap();
        w.settle(&"b", r[0].0, u64::MAX, t0 + 60_001);
        assert_eq!(w.used(&"b", t0 + 60_001), u64::MAX);
    }
}
