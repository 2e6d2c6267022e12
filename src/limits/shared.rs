//! Limits shared by every sidecar replica through Redis, served from leased slices.
//!
//! Each replica leases a slice of a tenant's window quota from Redis with an atomic Lua script
//! (`give = min(want, limit - granted)`), serves requests from the slice locally, and returns
//! what an idle slice still holds. The slice size follows the replica's own rate (about
//! `lease_ms` worth of traffic, at most `limit ÷ (4 × expected_replicas)`), so a busy tenant
//! does not call Redis per request and a quiet one does not strand quota. Windows are fixed
//! and aligned on wall-clock time (`unix_ms ÷ window`), so every replica counts the same window.
//!
//! Consistency: Redis never grants more than the limit per window, so requests admitted across
//! replicas never exceed a requests-per-minute limit; settled tokens exceed a tokens-per-minute
//! limit only by usage above requests' own reservations (prompt estimates that came out low).
//! Budgets work the same way in micro-USD per UTC day and month: a request reserves its
//! worst-case cost (prompt estimate and output ceiling at the model's price) and settles to its
//! exact cost, so spend exceeds a budget only by cost above reservations. The cost of this
//! exactness: a replica may hold up to `limit ÷ (4 × expected_replicas)` it does not use yet
//! (given back after 4 × `lease_ms` idle), so others can be refused while quota is stranded.
//! Spend lives in Redis (keys per day/month, expiring), so it survives a sidecar restart; the
//! unused part of a restarted replica's slice counts as spent.

use crate::balance::now_ms;
use crate::config::schema::{FailurePolicy, RedisConf};
use crate::metrics;
use redis::aio::ConnectionManager;
use redis::Script;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lease: grant up to ARGV[2] of limit ARGV[1] on KEYS[1] (the window's granted total),
/// expiring after ARGV[3] ms. Returns the amount granted.
const LEASE: &str = r"
local granted = tonumber(redis.call('GET', KEYS[1]) or '0')
local give = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - granted)
if give <= 0 then return 0 end
redis.call('INCRBY', KEYS[1], give)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return give
";

/// Return ARGV[1] units to KEYS[1] (never below zero). Returns the amount returned.
const RETURN: &str = r"
local granted = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = math.min(tonumber(ARGV[1]), granted)
if back > 0 then redis.call('DECRBY', KEYS[1], back) end
return back
";

/// Redis was unreachable or too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDown;

#[derive(Debug, Default, Clone, Copy)]
struct Slice {
    window: u64,
    remaining: i64,
    /// Takes in the current second and the previous one (the slice's rate).
    second: u64,
    this_second: u64,
    last_second: u64,
    last_used_ms: u64,
}

/// The shared store of one sluice process.
pub struct SharedStore {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    lease_ms: u64,
    /// Failure policy for tenants that set none.
    pub failure_policy: FailurePolicy,
    /// Replicas sharing the limits (local fallback = limit ÷ this).
    pub expected_replicas: u32,
    slices: Mutex<HashMap<String, Slice>>,
    lease: Script,
    give_back: Script,
    /// After a failure, calls fail fast until then (ms since the epoch), then a fresh
    /// connection is tried: an outage costs requests no wait at all, a recovery is noticed
    /// within [`RETRY_AFTER_FAILURE`].
    down_until_ms: std::sync::atomic::AtomicU64,
}

/// How long the store fails fast after a Redis failure before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);

impl SharedStore {
    /// A store for `conf`. Errors: an unparseable URL. Connecting happens on first use.
    pub fn new(conf: &RedisConf) -> Result<Self, String> {
        let client = redis::Client::open(conf.url.as_str()).map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            timeout: Duration::from_millis(conf.timeout_ms),
            lease_ms: conf.lease_ms,
            failure_policy: conf.failure_policy,
            expected_replicas: conf.expected_replicas.max(1),
            slices: Mutex::new(HashMap::new()),
            lease: Script::new(LEASE),
            give_back: Script::new(RETURN),
            down_until_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreDown> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(self.timeout, ConnectionManager::new(self.client.clone()))
            .await
            .map_err(|_| StoreDown)?
            .map_err(|_| StoreDown)?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Run `script` with a bounded wait; counts round trips, latency and failures.
    async fn call<T: redis::FromRedisValue>(
        &self,
        op: &str,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, StoreDown> {
        use std::sync::atomic::Ordering;
        if now_ms() < self.down_until_ms.load(Ordering::Acquire) {
            metrics::REDIS_ERRORS.with_label_values(&[op]).inc();
            return Err(StoreDown);
        }
        let started = Instant::now();
        let conn = self.connection().await;
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                self.mark_down().await;
                return Err(e);
            }
        };
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(a);
        }
        metrics::REDIS_ROUND_TRIPS.with_label_values(&[op]).inc();
        let res = tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut conn)).await;
        metrics::REDIS_LATENCY
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(Ok(v)) => Ok(v),
            _ => {
                metrics::REDIS_ERRORS.with_label_values(&[op]).inc();
                self.mark_down().await;
                Err(StoreDown)
            }
        }
    }

    /// Fail fast for a while and forget the connection (the next try makes a new one).
    async fn mark_down(&self) {
        let until = now_ms() + RETRY_AFTER_FAILURE.as_millis() as u64;
        self.down_until_ms
            .store(until, std::sync::atomic::Ordering::Release);
        *self.conn.lock().await = None;
    }

    fn redis_key(key: &str, window: u64) -> String {
        format!("sluice:{key}:{window}")
    }

    /// Take `amount` of `limit` per `window_ms` window under `key` (e.g. `t:team-a:rpm`):
    /// from the local slice, leasing more from Redis when it runs short. `Ok(Some(window))`
    /// when admitted (the window to settle in), `Ok(None)` when the window's quota is spent.
    pub async fn take(
        &self,
        key: &str,
        limit: u64,
        amount: u64,
        window_ms: u64,
    ) -> Result<Option<u64>, StoreDown> {
        let now = now_ms();
        self.take_in(key, limit, amount, now / window_ms, window_ms * 2)
            .await
    }

    /// [`SharedStore::take`] in an explicit window (`window` id, Redis key expiring after
    /// `ttl_ms`), e.g. a UTC day or month for budgets.
    pub async fn take_in(
        &self,
        key: &str,
        limit: u64,
        amount: u64,
        window: u64,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StoreDown> {
        // A single request larger than the whole limit takes the whole window.
        let amount = amount.min(limit) as i64;
        let now = now_ms();
        let want = {
            let Ok(mut slices) = self.slices.lock() else {
                return Err(StoreDown);
            };
            let s = slices.entry(key.to_owned()).or_default();
            if s.window != window {
                *s = Slice { window, ..*s };
                s.remaining = 0;
            }
            let sec = now / 1000;
            if s.second != sec {
                s.last_second = if s.second + 1 == sec {
                    s.this_second
                } else {
                    0
                };
                s.this_second = 0;
                s.second = sec;
            }
            s.this_second += amount as u64;
            s.last_used_ms = now;
            if s.remaining >= amount {
                s.remaining -= amount;
                return Ok(Some(window));
            }
            let rate = s.last_second.max(s.this_second);
            let cap = (limit / (4 * u64::from(self.expected_replicas))).max(1);
            let by_rate = (rate * self.lease_ms).div_ceil(1000).clamp(1, cap);
            (amount - s.remaining) as u64 + by_rate
        };
        let rkey = Self::redis_key(key, window);
        let args = [limit.to_string(), want.to_string(), ttl_ms.to_string()];
        let got: i64 = self.call("lease", &self.lease, &[&rkey], &args).await?;
        metrics::LEASES
            .with_label_values(&["granted"])
            .inc_by(got.max(0) as u64);
        let Ok(mut slices) = self.slices.lock() else {
            return Err(StoreDown);
        };
        let s = slices.entry(key.to_owned()).or_default();
        if s.window != window {
            return Ok(None);
        }
        s.remaining += got;
        if s.remaining >= amount {
            s.remaining -= amount;
            Ok(Some(window))
        } else {
            Ok(None)
        }
    }

    /// Settle a take of `reserved` in `window` to `actual`: the difference goes back to (or
    /// comes out of) the local slice.
    pub fn settle(&self, key: &str, window: u64, reserved: u64, actual: u64) {
        if let Ok(mut slices) = self.slices.lock() {
            if let Some(s) = slices.get_mut(key).filter(|s| s.window == window) {
                let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                s.remaining = s
                    .remaining
                    .saturating_add(signed(reserved).saturating_sub(signed(actual)));
            }
        }
    }

    /// Return idle slices' leftovers to Redis. Runs every flush interval.
    pub async fn flush(&self) {
        self.return_idle().await;
    }

    /// Give back what slices idle for more than 4 × `lease_ms` still hold in their window.
    async fn return_idle(&self) {
        let now = now_ms();
        let idle: Vec<(String, u64, i64)> = self
            .slices
            .lock()
            .map(|mut m| {
                m.iter_mut()
                    .filter(|(_, s)| {
                        s.remaining > 0 && now.saturating_sub(s.last_used_ms) > 4 * self.lease_ms
                    })
                    .map(|(k, s)| {
                        let back = s.remaining;
                        s.remaining = 0;
                        (k.clone(), s.window, back)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (key, window, back) in idle {
            let rkey = Self::redis_key(&key, window);
            if let Ok(n) = self
                .call::<i64>("return", &self.give_back, &[&rkey], &[back.to_string()])
                .await
            {
                metrics::LEASES
                    .with_label_values(&["returned"])
                    .inc_by(n.max(0) as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(url: &str) -> RedisConf {
        RedisConf {
            url: url.to_owned(),
            timeout_ms: 50,
            failure_policy: FailurePolicy::Open,
            expected_replicas: 2,
            lease_ms: 250,
        }
    }

    #[test]
    fn plain_and_tls_urls_make_a_store() {
        assert!(SharedStore::new(&conf("redis://127.0.0.1:6379/0")).is_ok());
        // TLS support is compiled in: a rediss:// client can be created.
        assert!(SharedStore::new(&conf("rediss://redis.example:6380")).is_ok());
        assert!(SharedStore::new(&conf("http://nope")).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast_after_the_first_timeout() {
        // Nothing listens on the port: the first call fails, the next ones fail at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let store = SharedStore::new(&conf(&format!("redis://127.0.0.1:{port}"))).unwrap();
        assert_eq!(store.take("t:rpm", 10, 1, 60_000).await, Err(StoreDown));
        let t0 = Instant::now();
        assert_eq!(store.take("t:rpm", 10, 1, 60_000).await, Err(StoreDown));
        assert!(t0.elapsed() < Duration::from_millis(10), "not failing fast");
    }
}
