//! The `cache` section and each route's `cache` / `hedge` compiled and validated (each problem
//! with its path).

use super::{secret_digest, Errors, Secrets};
use crate::config::cache::{
    CacheRedis, CacheSettings, Hedge, RouteCache, REDIS_VALUE_ALLOWANCE_BYTES,
};
use crate::config::schema::{CacheSection, CacheStoreKind, HedgeConf, RedisConf, RouteCacheConf};
use std::time::Duration;

/// Default bound on the bytes of Redis tier writes in flight (`cache.redis.max_pending_put_bytes`).
const DEFAULT_MAX_PENDING_PUT_BYTES: usize = 8 * 1024 * 1024;

/// Largest `cache.admission_keys`: a doorkeeper of about 20 MiB.
const MAX_ADMISSION_KEYS: u64 = 1 << 24;

/// Most hedged attempts a route may ask for.
const MAX_HEDGES: u32 = 4;

/// The `cache` section; `limits_redis` is the limits' Redis, the default of the Redis tier.
/// `uses_redis`: some route stores in Redis (then a Redis server is required). `secrets`:
/// whether `cache.admin_purge_token` is read.
pub(super) fn compile_settings(
    c: &CacheSection,
    limits_redis: Option<&RedisConf>,
    uses_redis: bool,
    secrets: Secrets,
    errs: &mut Errors,
) -> CacheSettings {
    if c.max_bytes == 0 {
        errs.push("cache.max_bytes", "must be greater than 0");
    }
    if c.max_entry_bytes == 0 || c.max_entry_bytes > c.max_bytes {
        errs.push(
            "cache.max_entry_bytes",
            "must be greater than 0 and at most cache.max_bytes",
        );
    }
    if c.max_flight_bytes == 0 {
        errs.push("cache.max_flight_bytes", "must be greater than 0");
    }
    if c.admission_keys > MAX_ADMISSION_KEYS {
        errs.push(
            "cache.admission_keys",
            format!("must be at most {MAX_ADMISSION_KEYS}"),
        );
    }
    if c.max_flights_total_bytes == 0 {
        errs.push("cache.max_flights_total_bytes", "must be greater than 0");
    }
    let max_entry_bytes = usize::try_from(c.max_entry_bytes).unwrap_or(usize::MAX);
    let max_value_bytes = max_entry_bytes.saturating_add(REDIS_VALUE_ALLOWANCE_BYTES);
    // Room for at least one largest entry, so every storable entry can be written.
    let default_pending = DEFAULT_MAX_PENDING_PUT_BYTES.max(max_value_bytes);
    let redis = match (&c.redis, limits_redis) {
        (Some(r), _) => {
            if !["redis://", "rediss://", "redis+unix://"]
                .iter()
                .any(|p| r.url.starts_with(p))
            {
                errs.push(
                    "cache.redis.url",
                    "must be a redis:// (or rediss:// for TLS) URL",
                );
            } else if redis::Client::open(r.url.as_str()).is_err() {
                // The client's own parse (host, port, db): refused here, not at start.
                errs.push("cache.redis.url", "not a valid Redis URL");
            }
            if r.timeout_ms == 0 || r.connect_timeout_ms == 0 {
                errs.push(
                    "cache.redis",
                    "timeout_ms and connect_timeout_ms must be at least 1",
                );
            }
            let pending = match r.max_pending_put_bytes {
                Some(n) => {
                    if n < c.max_entry_bytes {
                        errs.push(
                            "cache.redis.max_pending_put_bytes",
                            "must be at least cache.max_entry_bytes",
                        );
                    }
                    usize::try_from(n).unwrap_or(usize::MAX)
                }
                None => default_pending,
            };
            Some(CacheRedis {
                url: r.url.clone(),
                timeout: Duration::from_millis(r.timeout_ms),
                connect_timeout: Duration::from_millis(r.connect_timeout_ms),
                max_value_bytes,
                max_pending_put_bytes: pending,
            })
        }
        (None, Some(r)) => Some(CacheRedis {
            url: r.url.clone(),
            timeout: Duration::from_millis(r.timeout_ms),
            connect_timeout: Duration::from_millis(r.connect_timeout_ms.max(1)),
            max_value_bytes,
            max_pending_put_bytes: default_pending,
        }),
        (None, None) => {
            if uses_redis {
                errs.push(
                    "cache.redis",
                    "required by a route with cache.store: redis (or set limits.redis)",
                );
            }
            None
        }
    };
    CacheSettings {
        max_bytes: c.max_bytes,
        max_entry_bytes,
        admission_keys: usize::try_from(c.admission_keys.min(MAX_ADMISSION_KEYS)).unwrap_or(0),
        redis: if uses_redis { redis } else { None },
        max_flight_bytes: usize::try_from(c.max_flight_bytes).unwrap_or(usize::MAX),
        max_flight_lag: Duration::from_millis(c.max_flight_lag_ms),
        max_flights_total_bytes: usize::try_from(c.max_flights_total_bytes).unwrap_or(usize::MAX),
        admin_purge: c.admin_purge,
        admin_purge_token_sha256: c
            .admin_purge_token
            .as_ref()
            .and_then(|t| secret_digest(t, "cache.admin_purge_token", secrets, errs)),
    }
}

/// `routes[i].cache` at `path` (`routes[i]`).
pub(super) fn compile_route_cache(path: &str, c: &RouteCacheConf, errs: &mut Errors) -> RouteCache {
    if c.ttl_ms == 0 {
        errs.push(format!("{path}.cache.ttl_ms"), "must be greater than 0");
    }
    RouteCache {
        ttl: Duration::from_millis(c.ttl_ms),
        scope: c.scope,
        store: c.store,
        when: c.when,
        hits_count_toward_limits: c.hits_count_toward_limits,
    }
}

/// Whether a route stores in Redis.
pub(super) fn uses_redis(c: Option<&RouteCacheConf>) -> bool {
    c.is_some_and(|c| c.store == CacheStoreKind::Redis)
}

/// `routes[i].hedge` at `path` (`routes[i]`).
pub(super) fn compile_hedge(path: &str, h: &HedgeConf, errs: &mut Errors) -> Hedge {
    if h.after_ms == 0 {
        errs.push(format!("{path}.hedge.after_ms"), "must be greater than 0");
    }
    if h.max == 0 || h.max > MAX_HEDGES {
        errs.push(
            format!("{path}.hedge.max"),
            format!("must be between 1 and {MAX_HEDGES}"),
        );
    }
    Hedge {
        after: Duration::from_millis(h.after_ms),
        max: h.max.clamp(1, MAX_HEDGES),
    }
}
