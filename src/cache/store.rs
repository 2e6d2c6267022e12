//! The response store shared by every caching route: the memory tier (a `quick_cache`
//! concurrent cache bounded by the weighted size of its entries, each expiring after its
//! route's TTL), then, for routes with `store: redis`, the Redis tier shared by the replicas
//! ([`RedisTier`]: a memory miss asks it, a hit there is kept in memory for the time Redis
//! still gives it; a store writes both). Built once at start and kept across reloads
//! (outside the config snapshot).
//!
//! Why `quick_cache` (S3-FIFO eviction; <https://docs.rs/quick_cache>) rather than `moka`
//! (TinyLFU admission, LRU eviction, a timer wheel for per-entry expiry): on a route whose
//! requests all miss, every answer is stored and another evicted. With `moka` that touched the
//! oldest entry and several queues per store; S3-FIFO admits a new entry to a small FIFO and
//! evicts one-hit entries from there first (Yang et al., "FIFO queues are all you need for
//! cache eviction", SOSP 2023), so a stream of one-off answers churns recently touched memory
//! only. Measured in the README's "Response cache" section. Expiry is checked on lookup (an
//! expired entry is a miss and is removed); until then it only takes room the size bound
//! already counts.

use super::admission::Doorkeeper;
use super::entry::Entry;
use super::key::{DigestHash, Key};
use super::redis_tier::RedisTier;
use crate::config::cache::{CacheSettings, CacheStoreKind};
use crate::metrics;
use quick_cache::sync::Cache;
use quick_cache::Weighter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One entry in the memory tier, with the instant it expires.
#[derive(Clone)]
struct Stored {
    entry: Arc<Entry>,
    expires: Instant,
}

/// An entry weighs [`Entry::weight`] bytes.
#[derive(Clone, Copy)]
struct ByWeight;

impl Weighter<Key, Stored> for ByWeight {
    fn weight(&self, _key: &Key, value: &Stored) -> u64 {
        u64::from(value.entry.weight())
    }
}

/// Stores between two exports of the memory tier's gauges, at most.
const EXPORT_EVERY: u64 = 32;

/// Longest the gauges wait for an update after the last export while stores go on, ms.
const EXPORT_MS: u64 = 100;

/// Entries one shard of the memory tier holds at the largest entry size, at least: the
/// memory tier is split into shards (each with its own lock and share of `cache.max_bytes`),
/// and an entry heavier than a shard's share would not be admitted at all.
const ENTRIES_PER_SHARD: u64 = 2;

/// Most shards of the memory tier (sluice's workers are few; more shards only cut the size
/// a shard can hold).
const MAX_SHARDS: u64 = 16;

/// Weight of a typical entry, for the memory tier's initial sizing only (bytes).
const TYPICAL_ENTRY_BYTES: u64 = 4096;

/// What [`Store::purge`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// The memory tier held the key.
    pub memory: bool,
    /// What the Redis tier did.
    pub redis: RedisPurge,
    /// How many replicas' purge channel subscribers (this process's own included) were told
    /// to drop the key from their memory tier; `None` without a Redis tier or when the
    /// `PUBLISH` failed.
    pub replicas_told: Option<u64>,
}

/// The Redis tier's part of a [`Store::purge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisPurge {
    /// The store has no Redis tier.
    Off,
    /// Redis held the key; it is removed.
    Removed,
    /// Redis did not hold the key.
    Absent,
    /// Redis failed or timed out (or the tier fails fast now): the key may still be there.
    Failed,
}

impl RedisPurge {
    /// `off`, `removed`, `absent` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisPurge::Off => "off",
            RedisPurge::Removed => "removed",
            RedisPurge::Absent => "absent",
            RedisPurge::Failed => "failed",
        }
    }
}

/// The process's response store: the memory tier (`cache.max_bytes`), and the Redis tier when
/// the first snapshot has one (some route with `store: redis`).
pub struct Store {
    memory: Cache<Key, Stored, ByWeight, DigestHash>,
    max_entry_bytes: usize,
    /// The memory tier's bound as the crate applies it (its shards' capacities), bytes.
    capacity: u64,
    /// The memory tier was full at the last export of its gauges: new answers go through
    /// the doorkeeper.
    full: AtomicBool,
    /// `cache.admission_keys`; `None` for 0.
    doorkeeper: Option<Doorkeeper>,
    /// Stores so far (gauge export cadence).
    stores: AtomicU64,
    /// When the gauges were last exported (ms since `epoch`; `u64::MAX`: never).
    exported_ms: AtomicU64,
    epoch: Instant,
    /// The Redis tier (`cache.redis`, else `limits.redis`); its connection is kept by
    /// [`RedisTier::maintain`], which the server runs.
    redis: Option<Arc<RedisTier>>,
}

impl Store {
    /// A store sized by `settings` (`cache.max_bytes`: the memory tier's bound on the sum of
    /// [`Entry::weight`]s; `cache.max_entry_bytes`: the largest body stored), with a Redis tier
    /// when `settings.redis` is set (a URL the config check accepted; one the client still
    /// refuses is logged, without the URL, and the store runs on memory alone).
    pub fn new(settings: &CacheSettings) -> Store {
        let redis = settings
            .redis
            .as_ref()
            .and_then(|conf| match RedisTier::new(conf) {
                Ok(tier) => Some(Arc::new(tier)),
                Err(e) => {
                    tracing::error!(error = %e, "cache.redis: unusable URL, the Redis tier is off");
                    None
                }
            });
        let memory = memory_tier(settings);
        Store {
            capacity: memory.capacity(),
            memory,
            max_entry_bytes: settings.max_entry_bytes,
            full: AtomicBool::new(false),
            doorkeeper: Doorkeeper::new(settings.admission_keys),
            stores: AtomicU64::new(0),
            exported_ms: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            redis,
        }
    }

    /// The Redis tier, if any (the server runs its [`RedisTier::maintain`]).
    pub fn redis(&self) -> Option<&Arc<RedisTier>> {
        self.redis.as_ref()
    }

    /// The largest response body stored, bytes (`cache.max_entry_bytes`).
    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// The live entry for `key`, if any (an expired one is a miss). `route_store`: the route's
    /// tiers. With `Redis`, a memory miss asks the Redis tier (waiting at most
    /// `cache.redis.timeout_ms`; a Redis failure is a miss), and an entry found there that
    /// decodes is served and kept in memory for the time Redis still gives it.
    pub async fn get(&self, key: &Key, route_store: CacheStoreKind) -> Option<Arc<Entry>> {
        if let Some(entry) = self.get_memory(key) {
            return Some(entry);
        }
        match (route_store, &self.redis) {
            (CacheStoreKind::Redis, Some(tier)) => self.get_from_redis(tier, key).await,
            (CacheStoreKind::Memory | CacheStoreKind::Redis, _) => None,
        }
    }

    /// The Redis tier's entry for `key`, decoded, kept in memory when it fits.
    async fn get_from_redis(&self, tier: &RedisTier, key: &Key) -> Option<Arc<Entry>> {
        let (bytes, left) = tier.get_with_ttl(key).await?;
        let Some(entry) = Entry::decode(&bytes) else {
            metrics::CACHE_REDIS_LOOKUPS
                .with_label_values(&["undecodable"])
                .inc();
            return None;
        };
        metrics::CACHE_REDIS_LOOKUPS
            .with_label_values(&["hit"])
            .inc();
        let entry = Arc::new(entry);
        // A replica with a larger `max_entry_bytes` may have stored it: served, not kept.
        if let (Some(ttl), true) = (left, entry.body.len() <= self.max_entry_bytes) {
            self.keep(*key, entry.clone(), ttl);
        }
        Some(entry)
    }

    /// The memory tier's live entry for `key`, if any (no I/O: the first tier of
    /// [`Store::get`]). An expired entry is removed and is a miss.
    pub fn get_memory(&self, key: &Key) -> Option<Arc<Entry>> {
        let stored = self.memory.get(key)?;
        let now = Instant::now();
        if stored.expires > now {
            return Some(stored.entry);
        }
        self.memory.remove_if(key, |s| s.expires <= now);
        None
    }

    /// Whether the answer to a miss on `key` is worth recording to be stored: always on a
    /// route with the Redis tier (`route_store`; shared by the replicas, bounded by Redis)
    /// and while the memory tier has room; once it is full (at or over 15/16 of its bound at
    /// the last gauge export), only when the key missed before ([`Doorkeeper::seen`];
    /// `cache.admission_keys: 0` admits every answer). Counts
    /// `sluice_cache_admission_skipped_total` when not.
    pub fn admits(&self, key: &Key, route_store: CacheStoreKind) -> bool {
        let Some(door) = &self.doorkeeper else {
            return true;
        };
        if route_store == CacheStoreKind::Redis || !self.full.load(Ordering::Relaxed) {
            return true;
        }
        let seen = door.seen(key);
        if !seen {
            metrics::CACHE_ADMISSION_SKIPPED.inc();
        }
        seen
    }

    /// Store `entry` under `key` for `ttl`, replacing any entry there. An entry whose body is
    /// over `cache.max_entry_bytes` is not stored. Eviction (S3-FIFO: entries never looked up
    /// again go first) keeps the weighted size within `cache.max_bytes`. With `Redis`, the
    /// encoded entry is also written to the Redis tier, in a task of its own
    /// ([`RedisTier::put`]: never delays the caller, failures only counted).
    pub fn put(&self, key: Key, entry: Entry, ttl: Duration, route_store: CacheStoreKind) {
        if entry.body.len() > self.max_entry_bytes {
            return;
        }
        match route_store {
            CacheStoreKind::Redis => {
                if let Some(tier) = &self.redis {
                    tier.put(key, entry.encode(), ttl);
                }
            }
            CacheStoreKind::Memory => {}
        }
        self.keep(key, Arc::new(entry), ttl);
    }

    /// The memory tier's insert, and the gauges now and then.
    fn keep(&self, key: Key, entry: Arc<Entry>, ttl: Duration) {
        // One clock read for the expiry and the export cadence.
        let now = Instant::now();
        self.memory.insert(
            key,
            Stored {
                entry,
                expires: now + ttl,
            },
        );
        let stores = self.stores.fetch_add(1, Ordering::Relaxed) + 1;
        let since = now.saturating_duration_since(self.epoch);
        let now_ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        let last_ms = self.exported_ms.load(Ordering::Relaxed);
        if stores % EXPORT_EVERY == 0
            || last_ms == u64::MAX
            || now_ms.saturating_sub(last_ms) >= EXPORT_MS
        {
            self.exported_ms.store(now_ms, Ordering::Relaxed);
            self.export();
        }
    }

    /// Remove `key`'s entry from the memory tier and, when the store has a Redis tier, from
    /// Redis and, through the purge channel, from every subscribed replica's memory tier
    /// (waiting at most `cache.redis.timeout_ms`). An answer being recorded for `key`
    /// at the time is still stored when it completes. Counts
    /// `sluice_cache_purged_entries_total` and updates the memory tier's gauges.
    pub async fn purge(&self, key: &Key) -> Purged {
        let memory = self.forget(key);
        let (redis, replicas_told) = match &self.redis {
            None => (RedisPurge::Off, None),
            Some(tier) => {
                let redis = match tier.delete(key).await {
                    Ok(true) => {
                        metrics::CACHE_PURGED.with_label_values(&["redis"]).inc();
                        RedisPurge::Removed
                    }
                    Ok(false) => RedisPurge::Absent,
                    Err(()) => RedisPurge::Failed,
                };
                // The other replicas are told even when the `DEL` failed: their memory
                // copies go all the same.
                (redis, tier.publish_purge(key).await.ok())
            }
        };
        Purged {
            memory,
            redis,
            replicas_told,
        }
    }

    /// Remove `key` from this process's memory tier only: the first step of a purge here, and
    /// all of one another replica sent (heard on the purge channel). Returns whether the
    /// tier held it; counts `sluice_cache_purged_entries_total{tier="memory"}` then.
    pub fn forget(&self, key: &Key) -> bool {
        let held = self.memory.remove(key).is_some();
        if held {
            metrics::CACHE_PURGED.with_label_values(&["memory"]).inc();
            self.export();
        }
        held
    }

    /// Empty the memory tier; returns how many entries it held. The Redis tier is left as it
    /// is (it is shared by every replica; a route with `store: redis` finds its entries there
    /// again). Counts `sluice_cache_purged_entries_total{tier="memory"}` and updates the
    /// gauges.
    pub fn purge_memory(&self) -> u64 {
        let held = self.entries();
        self.memory.clear();
        metrics::CACHE_PURGED
            .with_label_values(&["memory"])
            .inc_by(held);
        self.export();
        held
    }

    /// Weighted size of the memory tier now (bytes).
    pub fn weighted_bytes(&self) -> u64 {
        self.memory.weight()
    }

    /// Entries in the memory tier now (expired ones not yet looked up included).
    pub fn entries(&self) -> u64 {
        self.memory.len() as u64
    }

    /// `sluice_cache_bytes` and `sluice_cache_entries` from the memory tier, and whether it is
    /// full for [`Store::admits`].
    fn export(&self) {
        let (bytes, entries) = (self.weighted_bytes(), self.entries());
        self.full.store(
            bytes >= self.capacity - self.capacity / 16,
            Ordering::Relaxed,
        );
        metrics::CACHE_BYTES.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        metrics::CACHE_ENTRIES.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

/// The memory tier for `settings`: `cache.max_bytes` split over shards that each hold at least
/// [`ENTRIES_PER_SHARD`] entries of `cache.max_entry_bytes`.
fn memory_tier(settings: &CacheSettings) -> Cache<Key, Stored, ByWeight, DigestHash> {
    let max_bytes = settings.max_bytes.max(1);
    let largest = u64::try_from(settings.max_entry_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(u64::from(super::entry::ENTRY_OVERHEAD_BYTES));
    let fit = max_bytes / largest.saturating_mul(ENTRIES_PER_SHARD).max(1);
    // A power of two (the crate rounds up otherwise, which would halve each shard's share).
    let shards = match fit.clamp(1, MAX_SHARDS) {
        n if n.is_power_of_two() => n,
        n => n.next_power_of_two() / 2,
    };
    let items = usize::try_from(max_bytes / TYPICAL_ENTRY_BYTES)
        .unwrap_or(usize::MAX)
        .max(16);
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(items)
        .weight_capacity(max_bytes)
        .shards(usize::try_from(shards).unwrap_or(1))
        .build();
    match options {
        Ok(o) => Cache::with_options(o, ByWeight, DigestHash, Default::default()),
        // Only an invalid option fails, and those above are in range: one shard then.
        Err(_) => Cache::with(items, max_bytes, ByWeight, DigestHash, Default::default()),
    }
}

/// Settings for a store in unit tests: a memory tier of `max_bytes` taking entries up to
/// `max_entry_bytes`, no Redis tier.
#[cfg(test)]
pub(crate) fn test_settings(max_bytes: u64, max_entry_bytes: usize) -> CacheSettings {
    CacheSettings {
        max_bytes,
        max_entry_bytes,
        admission_keys: 1024,
        max_flight_bytes: max_entry_bytes,
        max_flight_lag: std::time::Duration::from_secs(1),
        max_flights_total_bytes: 1 << 20,
        admin_purge: false,
        admin_purge_token_sha256: None,
        redis: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::key::test_key as key;
    use super::*;
    use crate::usage::Usage;
    use bytes::Bytes;

    fn entry(len: usize) -> Entry {
        Entry {
            sse: false,
            content_type: "application/json".to_owned(),
            body: Bytes::from(vec![b'x'; len]),
            id: None,
            usage: Usage::default(),
            stored_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_full_tier_keeps_only_answers_whose_key_missed_before() {
        let ttl = Duration::from_secs(60);
        let s = Store::new(&test_settings(64 * 1024, 8 * 1024));
        // Room: every answer is admitted, the doorkeeper is not asked.
        assert!(s.admits(&key(1_000), CacheStoreKind::Memory));
        assert!(s.admits(&key(1_000), CacheStoreKind::Memory));
        let skipped = metrics::CACHE_ADMISSION_SKIPPED.get();
        for i in 0..200 {
            s.put(key(i), entry(1024), ttl, CacheStoreKind::Memory);
        }
        // Full now (the gauges, and the flag, are exported every 32 stores).
        assert!(!s.admits(&key(5_000), CacheStoreKind::Memory), "first miss");
        assert!(metrics::CACHE_ADMISSION_SKIPPED.get() > skipped);
        assert!(s.admits(&key(5_000), CacheStoreKind::Memory), "second miss");
        // The Redis tier's routes are not turned away: the shared tier has its own bound.
        assert!(s.admits(&key(6_000), CacheStoreKind::Redis));
        // Emptied: room again.
        s.purge_memory();
        assert!(s.admits(&key(7_000), CacheStoreKind::Memory));
    }

    #[tokio::test]
    async fn admission_keys_zero_keeps_every_answer() {
        let ttl = Duration::from_secs(60);
        let mut settings = test_settings(64 * 1024, 8 * 1024);
        settings.admission_keys = 0;
        let s = Store::new(&settings);
        for i in 0..200 {
            s.put(key(i), entry(1024), ttl, CacheStoreKind::Memory);
        }
        assert!(
            s.weighted_bytes() * 16 >= 64 * 1024 * 15,
            "the tier is full"
        );
        assert!(s.admits(&key(5_000), CacheStoreKind::Memory));
    }

    #[tokio::test]
    async fn stores_and_serves() {
        let s = Store::new(&test_settings(1 << 20, 1 << 16));
        let ttl = Duration::from_secs(60);
        s.put(key(1), entry(10), ttl, CacheStoreKind::Memory);
        let got = s.get(&key(1), CacheStoreKind::Memory).await;
        assert_eq!(got.map(|e| e.body.len()), Some(10));
        assert!(s.get(&key(2), CacheStoreKind::Memory).await.is_none());
    }

    #[tokio::test]
    async fn over_max_entry_bytes_is_not_stored() {
        let s = Store::new(&test_settings(1 << 20, 100));
        s.put(
            key(1),
            entry(101),
            Duration::from_secs(60),
            CacheStoreKind::Memory,
        );
        assert!(s.get(&key(1), CacheStoreKind::Memory).await.is_none());
        s.put(
            key(2),
            entry(100),
            Duration::from_secs(60),
            CacheStoreKind::Memory,
        );
        assert!(s.get(&key(2), CacheStoreKind::Memory).await.is_some());
    }

    #[tokio::test]
    async fn weighted_size_stays_within_the_bound() {
        let max = 64 * 1024;
        let s = Store::new(&test_settings(max, 8 * 1024));
        for i in 0..200 {
            s.put(
                key(i),
                entry(4096),
                Duration::from_secs(60),
                CacheStoreKind::Memory,
            );
            assert!(
                s.weighted_bytes() <= max,
                "after {i}: {}",
                s.weighted_bytes()
            );
        }
        assert!(s.entries() > 0);
    }

    #[tokio::test]
    async fn an_entry_of_the_largest_size_is_admitted_whatever_the_bound() {
        // The tier is sharded; a shard's share must still hold the largest entry.
        for (max_bytes, max_entry) in [(1 << 20, 1 << 19), (3 << 20, 1 << 20), (32 << 20, 1 << 16)]
        {
            let s = Store::new(&test_settings(max_bytes, max_entry));
            s.put(
                key(7),
                entry(max_entry),
                Duration::from_secs(60),
                CacheStoreKind::Memory,
            );
            let got = s.get(&key(7), CacheStoreKind::Memory).await;
            assert_eq!(
                got.map(|e| e.body.len()),
                Some(max_entry),
                "{max_bytes}/{max_entry}"
            );
        }
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl() {
        let s = Store::new(&test_settings(1 << 20, 1 << 16));
        s.put(
            key(1),
            entry(10),
            Duration::from_millis(30),
            CacheStoreKind::Memory,
        );
        assert!(s.get(&key(1), CacheStoreKind::Memory).await.is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(s.get(&key(1), CacheStoreKind::Memory).await.is_none());
        // The expired entry was removed on that lookup.
        assert_eq!(s.entries(), 0);
    }
}
