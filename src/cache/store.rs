//! The response store shared by every caching route: the memory tier (a `moka` concurrent
//! cache bounded by the weighted size of its entries, each expiring after its route's TTL),
//! then, for routes with `store: redis`, the Redis tier shared by the replicas
//! ([`RedisTier`]: a memory miss asks it, a hit there is kept in memory for the time Redis
//! still gives it; a store writes both). Built once at start and kept across reloads
//! (outside the config snapshot).

use super::entry::Entry;
use super::key::Key;
use super::redis_tier::RedisTier;
use crate::config::cache::{CacheSettings, CacheStoreKind};
use crate::metrics;
use moka::sync::Cache;
use moka::Expiry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One entry in the memory tier, with its own time to live.
#[derive(Clone)]
struct Stored {
    entry: Arc<Entry>,
    ttl: Duration,
}

/// Each entry expires `ttl` after it was written (an update restarts it).
struct PerEntryTtl;

impl Expiry<Key, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _key: &Key, value: &Stored, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Stored,
        _now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Small stores between two runs of the memory tier's housekeeping (evictions applied, gauges
/// exported), at most: the bound holds within this many small entries (each under 1/64 of
/// `cache.max_bytes`; a larger one runs it at once) of the last run.
const HOUSEKEEPING_EVERY: u64 = 32;

/// Longest a store waits for housekeeping (and the gauges for an update) after the last run
/// while stores go on, ms.
const HOUSEKEEPING_MS: u64 = 100;

/// The process's response store: the memory tier (`cache.max_bytes`), and the Redis tier when
/// the first snapshot has one (some route with `store: redis`).
pub struct Store {
    memory: Cache<Key, Stored>,
    max_entry_bytes: usize,
    /// The memory tier's bound (`cache.max_bytes`).
    max_bytes: u64,
    /// Stores so far (housekeeping cadence).
    stores: AtomicU64,
    /// When housekeeping last ran (ms since `epoch`; `u64::MAX`: never).
    housekept_ms: AtomicU64,
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
        let memory = Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_key: &Key, v: &Stored| v.entry.weight())
            .expire_after(PerEntryTtl)
            .build();
        Store {
            memory,
            max_entry_bytes: settings.max_entry_bytes,
            max_bytes: settings.max_bytes,
            stores: AtomicU64::new(0),
            housekept_ms: AtomicU64::new(u64::MAX),
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
            self.memory.insert(
                *key,
                Stored {
                    entry: entry.clone(),
                    ttl,
                },
            );
            self.memory.run_pending_tasks();
            self.export();
        }
        Some(entry)
    }

    /// The memory tier's live entry for `key`, if any (no I/O: the first tier of [`Store::get`]).
    pub fn get_memory(&self, key: &Key) -> Option<Arc<Entry>> {
        self.memory.get(key).map(|s| s.entry)
    }

    /// Store `entry` under `key` for `ttl`, replacing any entry there. An entry whose body is
    /// over `cache.max_entry_bytes` is not stored. Eviction (least recently used first, as
    /// `moka`'s TinyLFU admission allows) keeps the weighted size within `cache.max_bytes`.
    /// With `Redis`, the encoded entry is also written to the Redis tier, in a task of its
    /// own ([`RedisTier::put`]: never delays the caller, failures only counted).
    pub fn put(&self, key: Key, entry: Entry, ttl: Duration, route_store: CacheStoreKind) {
        if entry.body.len() > self.max_entry_bytes {
            return;
        }
        if let (CacheStoreKind::Redis, Some(tier)) = (route_store, &self.redis) {
            tier.put(key, entry.encode(), ttl);
        }
        let weight = u64::from(entry.weight());
        match route_store {
            CacheStoreKind::Memory | CacheStoreKind::Redis => {
                self.memory.insert(
                    key,
                    Stored {
                        entry: Arc::new(entry),
                        ttl,
                    },
                );
            }
        }
        // Evictions are applied by moka's housekeeping (it also runs on its own as the cache
        // is used). Run it now after a large entry, so the bound holds at once where it
        // matters, and every `HOUSEKEEPING_EVERY` stores, so small ones pay for it rarely.
        let stores = self.stores.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last_ms = self.housekept_ms.load(Ordering::Relaxed);
        if weight.saturating_mul(64) >= self.max_bytes
            || stores % HOUSEKEEPING_EVERY == 0
            || last_ms == u64::MAX
            || now_ms.saturating_sub(last_ms) >= HOUSEKEEPING_MS
        {
            self.housekept_ms.store(now_ms, Ordering::Relaxed);
            self.memory.run_pending_tasks();
            self.export();
        }
    }

    /// Weighted size of the memory tier now (bytes, after pending evictions are applied).
    pub fn weighted_bytes(&self) -> u64 {
        self.memory.run_pending_tasks();
        self.memory.weighted_size()
    }

    /// Entries in the memory tier now.
    pub fn entries(&self) -> u64 {
        self.memory.run_pending_tasks();
        self.memory.entry_count()
    }

    /// `sluice_cache_bytes` and `sluice_cache_entries` from the memory tier.
    fn export(&self) {
        let (bytes, entries) = (self.memory.weighted_size(), self.memory.entry_count());
        metrics::CACHE_BYTES.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        metrics::CACHE_ENTRIES.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;
    use bytes::Bytes;

    fn settings(max_bytes: u64, max_entry_bytes: usize) -> CacheSettings {
        CacheSettings {
            max_bytes,
            max_entry_bytes,
            max_flight_bytes: max_entry_bytes,
            redis: None,
        }
    }

    fn entry(len: usize) -> Entry {
        Entry {
            sse: false,
            content_type: "application/json".to_owned(),
            body: Bytes::from(vec![b'x'; len]),
            id: None,
            usage: Usage::default(),
        }
    }

    fn key(i: u32) -> Key {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        Key(k)
    }

    #[tokio::test]
    async fn stores_and_serves() {
        let s = Store::new(&settings(1 << 20, 1 << 16));
        let ttl = Duration::from_secs(60);
        s.put(key(1), entry(10), ttl, CacheStoreKind::Memory);
        let got = s.get(&key(1), CacheStoreKind::Memory).await;
        assert_eq!(got.map(|e| e.body.len()), Some(10));
        assert!(s.get(&key(2), CacheStoreKind::Memory).await.is_none());
    }

    #[tokio::test]
    async fn over_max_entry_bytes_is_not_stored() {
        let s = Store::new(&settings(1 << 20, 100));
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
        let s = Store::new(&settings(max, 8 * 1024));
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
    async fn entries_expire_after_their_ttl() {
        let s = Store::new(&settings(1 << 20, 1 << 16));
        s.put(
            key(1),
            entry(10),
            Duration::from_millis(30),
            CacheStoreKind::Memory,
        );
        assert!(s.get(&key(1), CacheStoreKind::Memory).await.is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(s.get(&key(1), CacheStoreKind::Memory).await.is_none());
    }
}
