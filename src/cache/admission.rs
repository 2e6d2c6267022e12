//! The memory tier's admission check once it is full: TinyLFU's doorkeeper (Einziger,
//! Friedman and Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", ACM Transactions
//! on Storage 13(4), 2017, section 3.4.2), a Bloom filter of the keys that missed once. A key
//! the filter has not seen is remembered and its answer is not kept; its next miss finds it
//! there, and that answer is kept. The filter is cleared after `cache.admission_keys` new keys
//! (TinyLFU's reset), so it remembers about the last that many one-off requests.
//!
//! Why: with the tier full, each kept answer evicts another. A route whose requests are mostly
//! one-off (a `when: always` route, a search box with a long tail) would otherwise pay for
//! recording and keeping every answer and push out the answers that are asked for again; the
//! cost is one more upstream call for a key's second request while the tier is full.
//!
//! The filter is [`fastbloom::AtomicBloomFilter`] (lock-free; <https://docs.rs/fastbloom>),
//! fed the key's own bits: the key is already a SHA-256 digest, so nothing is hashed again.

use super::key::{DigestHash, Key};
use fastbloom::AtomicBloomFilter;
use std::sync::atomic::{AtomicU64, Ordering};

/// Filter bits per remembered key: about a 1% false-positive rate at the reset point with the
/// optimal number of probes (7).
const BITS_PER_KEY: usize = 10;

/// The doorkeeper of a full memory tier.
pub struct Doorkeeper {
    filter: AtomicBloomFilter<DigestHash>,
    /// New keys remembered since the last clear.
    fresh: AtomicU64,
    /// Clear after this many new keys (`cache.admission_keys`).
    keys: u64,
}

impl Doorkeeper {
    /// A doorkeeper remembering about `keys` keys (`keys * 10` bits); `None` for 0 (every
    /// answer is kept).
    pub fn new(keys: usize) -> Option<Doorkeeper> {
        if keys == 0 {
            return None;
        }
        let filter = AtomicBloomFilter::with_num_bits(keys.saturating_mul(BITS_PER_KEY))
            .hasher(DigestHash)
            .expected_items(keys);
        Some(Doorkeeper {
            filter,
            fresh: AtomicU64::new(0),
            keys: u64::try_from(keys).unwrap_or(u64::MAX),
        })
    }

    /// Whether `key` missed before (since the last clear), remembering it now. A false
    /// positive (about 1 in 100 when the filter is nearly due for its clear) admits a one-off
    /// answer; a key forgotten by a clear waits for one more miss.
    pub fn seen(&self, key: &Key) -> bool {
        if self.filter.insert_hash(bits(key)) {
            return true;
        }
        if self.fresh.fetch_add(1, Ordering::Relaxed) + 1 >= self.keys {
            self.fresh.store(0, Ordering::Relaxed);
            self.filter.clear();
        }
        false
    }

    /// Whether the filter holds `key` now, without remembering it.
    #[cfg(test)]
    fn remembers(&self, key: &Key) -> bool {
        self.filter.contains_hash(bits(key))
    }
}

/// The filter's hash of `key`: bytes 8..16 of the digest (the memory tier's shards and table
/// use the first 8).
fn bits(key: &Key) -> u64 {
    let mut bits = [0u8; 8];
    bits.copy_from_slice(&key.0[8..16]);
    u64::from_le_bytes(bits)
}

#[cfg(test)]
mod tests {
    use super::super::key::test_key as key;
    use super::*;

    #[test]
    fn zero_keys_means_no_doorkeeper() {
        assert!(Doorkeeper::new(0).is_none());
    }

    #[test]
    fn a_key_is_admitted_on_its_second_miss() {
        let d = Doorkeeper::new(1024).expect("doorkeeper");
        assert!(!d.seen(&key(1)));
        assert!(d.seen(&key(1)));
        assert!(d.seen(&key(1)));
        assert!(!d.seen(&key(2)));
    }

    #[test]
    fn one_off_keys_are_mostly_turned_away_and_the_filter_resets() {
        let d = Doorkeeper::new(1000).expect("doorkeeper");
        let admitted = (0..1000).filter(|&i| d.seen(&key(i))).count();
        // 10 bits per key, 7 probes: about 1% at the reset point, less before it.
        assert!(admitted < 30, "{admitted} of 1000 one-off keys admitted");
        assert!(d.remembers(&key(0)));
        // The 1000th new key (false positives are not new) clears the filter.
        let forgotten = (1000..1000 + 2 * admitted as u64 + 1).any(|i| {
            d.seen(&key(i));
            !d.remembers(&key(0))
        });
        assert!(forgotten, "the filter was not cleared after 1000 new keys");
    }
}
