//! The response-reuse part of the schema: the process-wide `cache` section (the memory tier's
//! bound and the optional Redis tier), and per route the `cache`, `coalesce` and `hedge` opt-ins.

use serde::Deserialize;

/// `cache`: the process's response store, shared by every route that sets `routes[].cache`.
/// Fixed at start (a reload keeps the store it has; a changed bound applies at restart).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Memory tier bound: the sum of stored response sizes (body bytes plus a fixed overhead
    /// per entry), bytes. Default 32 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Largest response stored (body bytes, as received from the upstream); larger ones are
    /// served but not stored. Default 1 MiB.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: u64,
    /// Scan resistance of the memory tier: once it is full, an answer is kept only when its
    /// key already missed once among about this many recent first-time misses (a doorkeeper
    /// Bloom filter of about 10 bits per key, cleared after this many keys), so a stream of
    /// one-off requests neither evicts answers that are asked for again nor pays for being
    /// kept. 0 keeps every answer. Default 65536 (80 KiB).
    #[serde(default = "default_admission_keys")]
    pub admission_keys: u64,
    /// The Redis tier of routes with `cache.store: redis`. Default: the limits' Redis
    /// (`limits.redis`: its `url`, `timeout_ms` and `connect_timeout_ms`).
    #[serde(default)]
    pub redis: Option<CacheRedisConf>,
    /// Request coalescing (`routes[].coalesce`): most response bytes a shared upstream call
    /// keeps for clients that join it late; past it the call takes no new followers (they
    /// make their own call) and keeps only what its slowest client has not read yet (the
    /// upstream read waits for that client beyond it, up to `max_flight_lag_ms`). Default
    /// 1 MiB.
    #[serde(default = "default_max_flight_bytes")]
    pub max_flight_bytes: u64,
    /// Request coalescing: how long a shared upstream call waits for a follower that lags
    /// more than `max_flight_bytes` behind, ms; then that follower is cut (its stream ends
    /// with the API's native error event, a plain body is closed short) and the call goes on
    /// for its other clients. 0 cuts at once. Default 1000.
    #[serde(default = "default_max_flight_lag_ms")]
    pub max_flight_lag_ms: u64,
    /// Request coalescing: most response bytes all shared calls of the process keep at once,
    /// together. Past it, a call that receives more takes no new followers and keeps only
    /// what its followers have not read yet, as past its own `max_flight_bytes`, so many long
    /// answers in flight at the same time cannot grow the sidecar by `max_flight_bytes` each.
    /// Default 16 MiB.
    #[serde(default = "default_max_flights_total_bytes")]
    pub max_flights_total_bytes: u64,
    /// Serve the purge endpoints on the admin listener (`DELETE /cache/entries/{input_hash}`,
    /// `DELETE /cache/entries`). Default false: they answer 404. Unlike the bounds above, a
    /// reload applies it at once.
    #[serde(default)]
    pub admin_purge: bool,
    /// The bearer token the purge endpoints require (`Authorization: Bearer <token>`): exactly
    /// one of `env`, `file` (a Secret mount; a reload reads it again) or `sha256` (hex of the
    /// token). Default: none, and the endpoints answer whoever reaches the admin listener.
    #[serde(default)]
    pub admin_purge_token: Option<super::VirtualKeySource>,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            max_entry_bytes: default_max_entry_bytes(),
            admission_keys: default_admission_keys(),
            redis: None,
            max_flight_bytes: default_max_flight_bytes(),
            max_flight_lag_ms: default_max_flight_lag_ms(),
            max_flights_total_bytes: default_max_flights_total_bytes(),
            admin_purge: false,
            admin_purge_token: None,
        }
    }
}

fn default_max_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_max_entry_bytes() -> u64 {
    1024 * 1024
}
fn default_admission_keys() -> u64 {
    65536
}
fn default_max_flight_bytes() -> u64 {
    1024 * 1024
}
fn default_max_flights_total_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_max_flight_lag_ms() -> u64 {
    1000
}

/// `cache.redis`: the Redis tier's own server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRedisConf {
    /// `redis://[:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// The longest a request waits on Redis for a lookup (a store never delays a response),
    /// ms; past it the lookup is a miss. Default 50.
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// Bound on one attempt to (re)connect, in the background, ms. Default 1000.
    #[serde(default = "default_redis_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Bound on the bytes of cache writes in flight to Redis (each is spawned, never delaying
    /// a response); a write past it is skipped. Default 8 MiB (at least one largest entry).
    #[serde(default)]
    pub max_pending_put_bytes: Option<u64>,
}

fn default_redis_timeout_ms() -> u64 {
    50
}
fn default_redis_connect_timeout_ms() -> u64 {
    1000
}

/// Whose requests share cache entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// The tenant's own requests only (default): one tenant never sees another's answers.
    #[default]
    Tenant,
    /// Every request of the route.
    Route,
}

/// Which tiers a route's entries live in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStoreKind {
    /// This process's memory only (default).
    #[default]
    Memory,
    /// Memory, then Redis (shared by the replicas).
    Redis,
}

/// Which requests a route caches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheWhen {
    /// Requests that ask for determinism (`temperature: 0`, or a `seed`), and requests with
    /// the opt-in header `x-sluice-cache: on` (default).
    #[default]
    Deterministic,
    /// Every request (the client still bypasses with `cache-control: no-cache` or
    /// `x-sluice-cache: off`).
    Always,
}

/// `routes[].cache`: exact-match response cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConf {
    /// How long an entry is served, ms. Default 300,000 (5 minutes).
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// `tenant` (default) or `route`.
    #[serde(default)]
    pub scope: CacheScope,
    /// `memory` (default) or `redis`.
    #[serde(default)]
    pub store: CacheStoreKind,
    /// `deterministic` (default) or `always`.
    #[serde(default)]
    pub when: CacheWhen,
    /// A hit counts against the tenant's request limits (requests per minute / second and
    /// concurrency; never tokens or budget). Default true.
    #[serde(default = "super::default_true")]
    pub hits_count_toward_limits: bool,
}

fn default_ttl_ms() -> u64 {
    300_000
}

/// `routes[].hedge`: race a slow first attempt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConf {
    /// When no attempt has delivered content this long after failover began (and again every
    /// `after_ms`), start a lane on the next candidate beside the ones running, ms.
    pub after_ms: u64,
    /// Most hedged attempts per request (beside the first). Default 1, at most 4.
    #[serde(default = "one_u32")]
    pub max: u32,
}

fn one_u32() -> u32 {
    1
}
