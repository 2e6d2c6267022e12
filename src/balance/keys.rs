//! Key rotation state of one endpoint: a key answered 401/403 is disabled (for as long as the
//! key keeps its value: a rotated key starts fresh); a key answered 429 cools down until the
//! upstream's `retry-after`, for the model of the refused request only (providers rate-limit
//! per model: OpenAI's and Anthropic's rate-limit docs give limits per model, so a 429 for one
//! model says nothing about another).
//!
//! A request that names no model (nothing was inspected) sees the disabled flag and the
//! cooldowns of earlier model-less requests, never a model's cooldown: model-less requests
//! form a scope of their own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One model's cooldown on a key: `model` `None` is the model-less scope.
#[derive(Debug)]
struct Cooldown {
    model: Option<Box<str>>,
    until_ms: u64,
}

/// State of one key, shared by every config snapshot in which the key keeps its value (see
/// [`crate::balance::Registry`]).
#[derive(Debug, Default)]
pub struct KeyState {
    disabled: AtomicBool,
    /// Latest end of any cooldown, ms since the epoch: when past, no lock is taken.
    latest_until_ms: AtomicU64,
    cooldowns: Mutex<Vec<Cooldown>>,
}

impl KeyState {
    /// End of `model`'s cooldown (ms since the epoch), 0 when none.
    fn until(&self, model: Option<&str>, now_ms: u64) -> u64 {
        if self.latest_until_ms.load(Ordering::Acquire) <= now_ms {
            return 0;
        }
        let list = self
            .cooldowns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        list.iter()
            .find(|c| c.model.as_deref() == model)
            .map_or(0, |c| c.until_ms)
    }

    /// Cool `model` down until `until_ms`, holding at most `max_models` cooldowns: expired
    /// ones go first, then the one ending soonest.
    fn cool_down(&self, model: Option<&str>, until_ms: u64, now_ms: u64, max_models: usize) {
        let mut list = self
            .cooldowns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = list.iter_mut().find(|c| c.model.as_deref() == model) {
            c.until_ms = c.until_ms.max(until_ms);
        } else {
            list.retain(|c| c.until_ms > now_ms);
            while !list.is_empty() && list.len() >= max_models.max(1) {
                let soonest = list
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, c)| c.until_ms)
                    .map_or(0, |(i, _)| i);
                list.swap_remove(soonest);
            }
            list.push(Cooldown {
                model: model.map(Box::from),
                until_ms,
            });
        }
        self.latest_until_ms.fetch_max(until_ms, Ordering::AcqRel);
    }

    /// Cooldowns held (expired ones included until the next insertion).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.cooldowns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// All keys of an endpoint, in the order of the config snapshot that holds them.
#[derive(Debug, Default)]
pub struct Keys {
    keys: Vec<Arc<KeyState>>,
    max_models: usize,
}

impl Keys {
    /// Fresh state for `n` keys, all usable, each holding up to `max_models` model cooldowns.
    pub fn new(n: usize, max_models: usize) -> Self {
        Self::from_states((0..n).map(|_| Arc::default()).collect(), max_models)
    }

    /// Keys with the given (possibly shared) states, in order.
    pub fn from_states(keys: Vec<Arc<KeyState>>, max_models: usize) -> Self {
        Self { keys, max_models }
    }

    /// The first usable key for a request for `model` (`None`: the request names none) at
    /// `now_ms`, or `Err(earliest time one is usable again)` (`None`: every key is disabled).
    pub fn pick(&self, now_ms: u64, model: Option<&str>) -> Result<usize, Option<u64>> {
        let mut earliest: Option<u64> = None;
        for (i, k) in self.keys.iter().enumerate() {
            if k.disabled.load(Ordering::Acquire) {
                continue;
            }
            let until = k.until(model, now_ms);
            if until <= now_ms {
                return Ok(i);
            }
            earliest = Some(earliest.map_or(until, |e| e.min(until)));
        }
        Err(earliest)
    }

    /// Disable key `i` (401/403), for every model, for as long as it keeps its value.
    pub fn disable(&self, i: usize) {
        if let Some(k) = self.keys.get(i) {
            k.disabled.store(true, Ordering::Release);
        }
    }

    /// Cool key `i` down for `model` (`None`: model-less requests) until `until_ms` (a 429's
    /// `retry-after`), ms since the epoch.
    pub fn cool_down(&self, i: usize, model: Option<&str>, until_ms: u64) {
        if let Some(k) = self.keys.get(i) {
            k.cool_down(model, until_ms, super::now_ms(), self.max_models);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation() {
        let k = Keys::new(3, 8);
        let m = Some("gpt-4o");
        assert_eq!(k.pick(0, m), Ok(0));
        k.disable(0);
        assert_eq!(k.pick(0, m), Ok(1));
        k.cool_down(1, m, u64::MAX - 1);
        assert_eq!(k.pick(100, m), Ok(2));
        k.cool_down(2, m, u64::MAX - 2);
        assert_eq!(k.pick(100, m), Err(Some(u64::MAX - 2)));
        k.disable(1);
        k.disable(2);
        assert_eq!(k.pick(1000, m), Err(None));
    }

    #[test]
    fn cooldowns_are_per_model() {
        let k = Keys::new(1, 8);
        let now = crate::balance::now_ms();
        k.cool_down(0, Some("a"), now + 30_000);
        assert_eq!(k.pick(now, Some("a")), Err(Some(now + 30_000)));
        assert_eq!(k.pick(now, Some("b")), Ok(0), "another model is not held");
        assert_eq!(k.pick(now, None), Ok(0), "model-less requests are not held");
        k.cool_down(0, None, now + 10_000);
        assert_eq!(k.pick(now, None), Err(Some(now + 10_000)));
        assert_eq!(k.pick(now, Some("b")), Ok(0));
        assert_eq!(k.pick(now + 30_000, Some("a")), Ok(0), "over");
        k.disable(0);
        assert_eq!(
            k.pick(now, Some("b")),
            Err(None),
            "disabled for every model"
        );
    }

    #[test]
    fn model_cooldowns_are_bounded() {
        let k = Keys::new(1, 4);
        let now = crate::balance::now_ms();
        // Expired ones go first.
        k.cool_down(0, Some("old"), now.saturating_sub(1));
        for i in 0..4u64 {
            k.cool_down(0, Some(&format!("m{i}")), now + 10_000 + i);
        }
        assert_eq!(k.keys[0].held(), 4);
        assert_eq!(k.pick(now, Some("m0")), Err(Some(now + 10_000)));
        // Full: the one ending soonest (m0) makes room.
        k.cool_down(0, Some("m4"), now + 20_000);
        assert_eq!(k.keys[0].held(), 4);
        assert_eq!(k.pick(now, Some("m0")), Ok(0));
        assert_eq!(k.pick(now, Some("m1")), Err(Some(now + 10_001)));
        assert_eq!(k.pick(now, Some("m4")), Err(Some(now + 20_000)));
        for i in 0..1_000 {
            k.cool_down(0, Some(&format!("x{i}")), now + 30_000);
        }
        assert_eq!(k.keys[0].held(), 4, "never more than the cap");
    }
}
