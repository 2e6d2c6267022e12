//! Response reuse, compiled: the process's cache store settings ([`CacheSettings`], from the
//! `cache` section) and each route's `cache` ([`RouteCache`]) and `hedge` ([`Hedge`]).

pub use super::schema::{CacheScope, CacheStoreKind, CacheWhen};
use std::time::Duration;

/// The process's response store (`cache`). Fixed at start, but for `admin_purge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Memory tier bound, bytes (`cache.max_bytes`).
    pub max_bytes: u64,
    /// Largest response stored, bytes (`cache.max_entry_bytes`).
    pub max_entry_bytes: usize,
    /// Keys the memory tier's doorkeeper remembers; 0: no admission check
    /// (`cache.admission_keys`).
    pub admission_keys: usize,
    /// The Redis tier, when a route uses `store: redis`.
    pub redis: Option<CacheRedis>,
    /// Most response bytes a coalesced call keeps for late joiners (`cache.max_flight_bytes`).
    pub max_flight_bytes: usize,
    /// How long a coalesced call waits for a follower lagging past `max_flight_bytes` before
    /// cutting it (`cache.max_flight_lag_ms`).
    pub max_flight_lag: Duration,
    /// Most response bytes all coalesced calls keep together (`cache.max_flights_total_bytes`).
    pub max_flights_total_bytes: usize,
    /// The admin listener serves the purge endpoints (`cache.admin_purge`; read from the
    /// config in force, so a reload applies it).
    pub admin_purge: bool,
    /// SHA-256 of the bearer token the purge endpoints require (`cache.admin_purge_token`);
    /// the token itself is never kept. `None`: no token is asked for.
    pub admin_purge_token_sha256: Option<[u8; 32]>,
}

/// The Redis tier's server (`cache.redis`, else the limits' `limits.redis`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRedis {
    /// `redis://` or `rediss://` URL (a secret: never logged).
    pub url: String,
    /// Longest a lookup waits on Redis.
    pub timeout: Duration,
    /// Bound on one background (re)connect.
    pub connect_timeout: Duration,
    /// Largest value written (an encoded entry), bytes: `cache.max_entry_bytes` plus
    /// [`REDIS_VALUE_ALLOWANCE_BYTES`] for its headers and metadata. Larger ones stay in memory only.
    pub max_value_bytes: usize,
    /// Bound on the bytes of writes in flight (`cache.redis.max_pending_put_bytes`); a write
    /// past it is skipped (counted), never queued.
    pub max_pending_put_bytes: usize,
}

/// Room for an encoded entry's status, headers and usage beside its body, bytes.
pub const REDIS_VALUE_ALLOWANCE_BYTES: usize = 64 * 1024;

/// `routes[].cache`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    /// How long an entry is served.
    pub ttl: Duration,
    /// Whose requests share entries.
    pub scope: CacheScope,
    /// Memory only, or memory then Redis.
    pub store: CacheStoreKind,
    /// Which requests are cached.
    pub when: CacheWhen,
    /// A hit counts against the tenant's request limits (never tokens or budget).
    pub hits_count_toward_limits: bool,
}

/// `routes[].hedge`, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedge {
    /// No lane delivered content this long after failover began (and again every `after`):
    /// start a lane on the next candidate.
    pub after: Duration,
    /// Most hedged attempts per request, beside the first (1..=4).
    pub max: u32,
}
