//! Key rotation state of one endpoint: a key answered 401/403 is disabled until the next
//! reload; a key answered 429 cools down until the upstream's `retry-after`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// State of one key.
#[derive(Debug, Default)]
pub struct KeyState {
    disabled: AtomicBool,
    cooldown_until_ms: AtomicU64,
}

/// All keys of an endpoint.
#[derive(Debug, Default)]
pub struct Keys {
    keys: Vec<KeyState>,
}

impl Keys {
    /// State for `n` keys, all usable.
    pub fn new(n: usize) -> Self {
        Self {
            keys: (0..n).map(|_| KeyState::default()).collect(),
        }
    }

    /// The first usable key at `now_ms`, or `Err(earliest time one is usable again)` (`None`:
    /// every key is disabled).
    pub fn pick(&self, now_ms: u64) -> Result<usize, Option<u64>> {
        let mut earliest: Option<u64> = None;
        for (i, k) in self.keys.iter().enumerate() {
            if k.disabled.load(Ordering::Acquire) {
                continue;
            }
            let until = k.cooldown_until_ms.load(Ordering::Acquire);
            if until <= now_ms {
                return Ok(i);
            }
            earliest = Some(earliest.map_or(until, |e| e.min(until)));
        }
        Err(earliest)
    }

    /// Disable key `i` (401/403) until reload.
    pub fn disable(&self, i: usize) {
        if let Some(k) = self.keys.get(i) {
            k.disabled.store(true, Ordering::Release);
        }
    }

    /// Cool key `i` down until `until_ms` (429 with retry-after).
    pub fn cool_down(&self, i: usize, until_ms: u64) {
        if let Some(k) = self.keys.get(i) {
            k.cooldown_until_ms.fetch_max(until_ms, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation() {
        let k = Keys::new(3);
        assert_eq!(k.pick(0), Ok(0));
        k.disable(0);
        assert_eq!(k.pick(0), Ok(1));
        k.cool_down(1, 500);
        assert_eq!(k.pick(100), Ok(2));
        k.cool_down(2, 300);
        assert_eq!(k.pick(100), Err(Some(300)));
        assert_eq!(k.pick(300), Ok(2));
        assert_eq!(k.pick(600), Ok(1));
        k.disable(1);
        k.disable(2);
        assert_eq!(k.pick(1000), Err(None));
    }
}
