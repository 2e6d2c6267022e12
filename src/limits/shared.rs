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
//!
//! Latency: no request waits on Redis longer than `timeout_ms`, at any concurrency.
//! - (Re)connecting is the job of one background task ([`SharedStore::maintain`], the
//!   [`RedisLink`]'s); a request only reads the current connection and, when there is none
//!   yet, waits for one no longer than its own deadline.
//! - After a failure the store fails fast for [`RETRY_AFTER_FAILURE`]: an atomic read, no lock.
//! - One lease per key is in flight at a time (a spawned task, so a request that gives up or is
//!   cancelled loses nothing it was granted); the other requests of that key wait for it until
//!   their deadline instead of leasing slices of their own. Quota leased but unused per replica
//!   thus stays under `limit ÷ (4 × expected_replicas)` under any concurrency.
//! - When Redis grants less than asked, its window is spent: the replica refuses what its
//!   slice cannot cover without a round trip for the next 4 × `lease_ms` (then asks again, in
//!   case another replica gave quota back), or until the window ends.

use super::key::LimitKey;
use crate::config::schema::{FailurePolicy, RedisConf};
use crate::metrics;
use crate::redis_link::RedisLink;
/// How long the store fails fast after a Redis failure (the link's pause).
pub use crate::redis_link::RETRY_AFTER_FAILURE;
use redis::Script;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Lease: grant up to `ARGV[2]` of limit `ARGV[1]` on `KEYS[1]` (the window's granted total),
/// expiring after `ARGV[3]` ms. Returns the amount granted.
const LEASE: &str = r"
local granted = tonumber(redis.call('GET', KEYS[1]) or '0')
local give = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) - granted)
if give <= 0 then return 0 end
redis.call('INCRBY', KEYS[1], give)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return give
";

/// Return `ARGV[1]` units to `KEYS[1]` (never below zero). Returns the amount returned.
const RETURN: &str = r"
local granted = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = math.min(tonumber(ARGV[1]), granted)
if back > 0 then redis.call('DECRBY', KEYS[1], back) end
return back
";

/// Redis was unreachable or too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreDown;

#[derive(Debug, Default, Clone)]
struct Slice {
    window: u64,
    remaining: i64,
    /// Takes in the current second and the previous one (the slice's rate).
    second: u64,
    this_second: u64,
    last_second: u64,
    last_used_ms: u64,
    /// The lease in flight for this key, if any: its waiters are woken when it ends.
    lease: Option<Arc<Notify>>,
    /// What the requests waiting for a lease want in all: the next lease asks for it too, so
    /// a request waits for at most two leases (the one in flight, then one that counts it).
    queued: i64,
    /// Redis granted less than asked in this window (its quota is spent): until then (unix
    /// ms), what the slice cannot cover is refused without a round trip.
    exhausted_until_ms: u64,
}

impl Slice {
    /// Start `window` afresh (the previous window's slice is worthless).
    fn roll(&mut self, window: u64) {
        self.window = window;
        self.remaining = 0;
        self.exhausted_until_ms = 0;
        self.lease = None;
        self.queued = 0;
    }
}

/// The shared store of one sluice process.
pub struct SharedStore {
    /// The kept connection to Redis (reconnects, fail-fast after a failure).
    link: RedisLink,
    lease_ms: u64,
    /// Failure policy for tenants that set none.
    pub failure_policy: FailurePolicy,
    /// Replicas sharing the limits (local fallback = limit ÷ this).
    pub expected_replicas: u32,
    slices: Mutex<HashMap<LimitKey, Slice>>,
    lease: Script,
    give_back: Script,
}

impl SharedStore {
    /// A store for `conf`. Errors: an unparseable URL. Connecting is the job of
    /// [`SharedStore::maintain`], which the server runs in the background.
    pub fn new(conf: &RedisConf) -> Result<Self, String> {
        let link = RedisLink::new(
            &conf.url,
            Duration::from_millis(conf.timeout_ms),
            Duration::from_millis(conf.connect_timeout_ms),
            metrics::REDIS_ERRORS.with_label_values(&["connect"]),
        )?;
        Ok(Self {
            link,
            lease_ms: conf.lease_ms,
            failure_policy: conf.failure_policy,
            expected_replicas: conf.expected_replicas.max(1),
            slices: Mutex::new(HashMap::new()),
            lease: Script::new(LEASE),
            give_back: Script::new(RETURN),
        })
    }

    /// The bound on a request's wait on the store (`limits.redis.timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.link.timeout()
    }

    /// Whether the store fails fast now (an atomic read: never waits).
    fn is_down(&self) -> bool {
        self.link.is_down()
    }

    /// Keep a connection to Redis (see [`RedisLink::maintain`]): runs until the process
    /// ends; every connect attempt is bounded by `limits.redis.connect_timeout_ms`.
    pub async fn maintain(self: Arc<Self>) {
        self.link.maintain().await;
    }

    /// Run `script` within `timeout_ms`; counts round trips, latency and failures.
    async fn call<T: redis::FromRedisValue>(
        &self,
        op: &str,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Result<T, StoreDown> {
        if self.is_down() {
            metrics::REDIS_ERRORS.with_label_values(&[op]).inc();
            return Err(StoreDown);
        }
        let started = Instant::now();
        let deadline = started + self.link.timeout();
        let Some(mut conn) = self.link.connection(deadline).await else {
            metrics::REDIS_ERRORS.with_label_values(&[op]).inc();
            self.link.mark_down();
            return Err(StoreDown);
        };
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(a);
        }
        metrics::REDIS_ROUND_TRIPS.with_label_values(&[op]).inc();
        let res = tokio::time::timeout_at(deadline, inv.invoke_async::<T>(&mut conn)).await;
        metrics::REDIS_LATENCY
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(Ok(v)) => Ok(v),
            _ => {
                metrics::REDIS_ERRORS.with_label_values(&[op]).inc();
                self.link.mark_down();
                Err(StoreDown)
            }
        }
    }

    /// Take `amount` of `limit` per `window_ms` window of counter `key` (Redis key
    /// [`LimitKey::redis_key`], e.g. `sluice:team-a:rpm:{window}`):
    /// from the local slice, leasing more from Redis when it runs short, waiting no later
    /// than `deadline`. `Ok(Some(window))` when admitted (the window to settle in),
    /// `Ok(None)` when the window's quota is spent.
    pub async fn take(
        self: &Arc<Self>,
        key: &LimitKey,
        limit: u64,
        amount: u64,
        window_ms: u64,
        deadline: Instant,
    ) -> Result<Option<u64>, StoreDown> {
        let now = crate::limits::now_ms();
        self.take_in(key, limit, amount, now / window_ms, window_ms * 2, deadline)
            .await
    }

    /// [`SharedStore::take`] in an explicit window (`window` id, Redis key expiring after
    /// `ttl_ms`), e.g. a UTC day or month for budgets.
    pub async fn take_in(
        self: &Arc<Self>,
        key: &LimitKey,
        limit: u64,
        amount: u64,
        window: u64,
        ttl_ms: u64,
        deadline: Instant,
    ) -> Result<Option<u64>, StoreDown> {
        // A single request larger than the whole limit takes the whole window.
        let amount = amount.min(limit) as i64;
        let mut window = window;
        let now = crate::limits::now_ms();
        let mut first = true;
        // This request's place in the queue, from its first wait until it returns.
        let mut queued: Option<Queued<'_>> = None;
        loop {
            // Created under the slices' lock, so the lease's end cannot slip between.
            let lease: Arc<Notify>;
            let ended;
            {
                let Ok(mut slices) = self.slices.lock() else {
                    return Err(StoreDown);
                };
                // Cloning the key costs a reference count, no allocation.
                let s = slices.entry(key.clone()).or_default();
                // Windows only move forward: a request that computed its window just before a
                // boundary and wakes after another rolled the slice serves from the new one.
                if window > s.window {
                    s.roll(window);
                } else if window < s.window {
                    window = s.window;
                }
                if first {
                    first = false;
                    s.count(now, amount as u64);
                }
                if s.remaining >= amount {
                    s.remaining -= amount;
                    return Ok(Some(window));
                }
                if now < s.exhausted_until_ms {
                    return Ok(None);
                }
                if self.is_down() {
                    return Err(StoreDown);
                }
                lease = match &s.lease {
                    Some(l) => l.clone(),
                    None => {
                        let rate = s.last_second.max(s.this_second);
                        let cap = (limit / (4 * u64::from(self.expected_replicas))).max(1);
                        let by_rate = (rate * self.lease_ms).div_ceil(1000).clamp(1, cap);
                        let others = s.queued - if queued.is_some() { amount } else { 0 };
                        let short = (amount + others - s.remaining).max(0) as u64;
                        let want = short + by_rate;
                        let l = Arc::new(Notify::new());
                        s.lease = Some(l.clone());
                        self.spawn_lease(key, window, limit, want, ttl_ms, l.clone());
                        l
                    }
                };
                ended = lease.notified();
                if queued.is_none() {
                    s.queued += amount;
                    queued = Some(Queued {
                        store: self,
                        key,
                        window,
                        amount,
                    });
                }
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return Err(StoreDown);
            }
        }
    }

    /// Lease `want` more of `key`'s `window` from Redis in a task of its own (a request that
    /// stops waiting loses nothing granted), credit the slice, and wake its waiters.
    fn spawn_lease(
        self: &Arc<Self>,
        key: &LimitKey,
        window: u64,
        limit: u64,
        want: u64,
        ttl_ms: u64,
        done: Arc<Notify>,
    ) {
        let store = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let rkey = key.redis_key(window);
            let args = [limit.to_string(), want.to_string(), ttl_ms.to_string()];
            let got: Result<i64, StoreDown> =
                store.call("lease", &store.lease, &[&rkey], &args).await;
            if let Ok(g) = got {
                metrics::LEASES
                    .with_label_values(&["granted"])
                    .inc_by(g.max(0) as u64);
            }
            if let Ok(mut slices) = store.slices.lock() {
                if let Some(s) = slices.get_mut(&key) {
                    if s.window == window {
                        if let Ok(g) = got {
                            s.remaining += g.max(0);
                            if (g.max(0) as u64) < want {
                                s.exhausted_until_ms = crate::limits::now_ms() + 4 * store.lease_ms;
                            }
                        }
                    }
                    if s.lease.as_ref().is_some_and(|l| Arc::ptr_eq(l, &done)) {
                        s.lease = None;
                    }
                }
                done.notify_waiters();
            } else {
                done.notify_waiters();
            }
        });
    }

    /// Settle a take of `reserved` in `window` to `actual`: the difference goes back to (or
    /// comes out of) the local slice.
    pub fn settle(&self, key: &LimitKey, window: u64, reserved: u64, actual: u64) {
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
        let now = crate::limits::now_ms();
        let idle: Vec<(LimitKey, u64, i64)> = self
            .slices
            .lock()
            .map(|mut m| {
                m.iter_mut()
                    .filter(|(_, s)| {
                        s.remaining > 0
                            && s.lease.is_none()
                            && now.saturating_sub(s.last_used_ms) > 4 * self.lease_ms
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
            let rkey = key.redis_key(window);
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

/// A request's place in its key's queue for a lease: its amount counts in the next lease's
/// ask until it is served, refused, gives up or is cancelled.
struct Queued<'a> {
    store: &'a SharedStore,
    key: &'a LimitKey,
    window: u64,
    amount: i64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Ok(mut slices) = self.store.slices.lock() {
            if let Some(s) = slices.get_mut(self.key).filter(|s| s.window == self.window) {
                s.queued = (s.queued - self.amount).max(0);
            }
        }
    }
}

impl Slice {
    /// Count a take of `amount` at `now_ms` in the slice's rate.
    fn count(&mut self, now_ms: u64, amount: u64) {
        let sec = now_ms / 1000;
        if self.second != sec {
            self.last_second = if self.second + 1 == sec {
                self.this_second
            } else {
                0
            };
            self.this_second = 0;
            self.second = sec;
        }
        self.this_second += amount;
        self.last_used_ms = now_ms;
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
            connect_timeout_ms: 1000,
        }
    }

    /// The requests-per-minute counter of `tenant`.
    fn rpm(tenant: &str) -> LimitKey {
        LimitKey::tenant(
            super::super::key::Counter::RequestsPerMinute,
            &Arc::from(tenant),
        )
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
        // Nothing listens on the port: the first call fails, the next ones fail at once
        // (on their first poll) while the store is marked down.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let store =
            Arc::new(SharedStore::new(&conf(&format!("redis://127.0.0.1:{port}"))).unwrap());
        tokio::spawn(store.clone().maintain());
        let deadline = || Instant::now() + store.timeout();
        assert_eq!(
            store.take(&rpm("t"), 10, 1, 60_000, deadline()).await,
            Err(StoreDown)
        );
        // The first take gives up at its own deadline; the lease task it started marks the
        // store down when its call fails, which may come a moment later on a busy machine.
        let marked = Instant::now() + Duration::from_secs(5);
        while !store.is_down() && Instant::now() < marked {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(store.is_down(), "a failed call did not mark the store down");
        // Failing fast means failing on the first poll: no wait, no timer, no round trip.
        use futures_util::FutureExt;
        assert_eq!(
            store
                .take(&rpm("t"), 10, 1, 60_000, deadline())
                .now_or_never(),
            Some(Err(StoreDown)),
            "not failing fast"
        );
    }

    /// A Redis that accepts connections and never answers: 32 concurrent takes all give up
    /// at their deadline (`timeout_ms`), none later, and the next one fails at once.
    #[tokio::test(start_paused = true)]
    async fn a_silent_redis_never_holds_a_request_past_its_timeout() {
        let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", hole.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = hole.accept().await {
                held.push(sock);
            }
        });
        let store = Arc::new(SharedStore::new(&conf(&url)).unwrap());
        tokio::spawn(store.clone().maintain());
        let t0 = Instant::now();
        let takes = (0..32).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let r = store
                    .take(
                        &rpm(&format!("t{}", i % 4)),
                        100,
                        1,
                        60_000,
                        Instant::now() + store.timeout(),
                    )
                    .await;
                (r, t0.elapsed())
            })
        });
        for t in futures_util::future::join_all(takes).await {
            let (r, took) = t.unwrap();
            assert_eq!(r, Err(StoreDown));
            assert!(took <= Duration::from_millis(50), "waited {took:?}");
        }
        let t1 = Instant::now();
        let r = store
            .take(&rpm("t0"), 100, 1, 60_000, Instant::now() + store.timeout())
            .await;
        assert_eq!((r, t1.elapsed()), (Err(StoreDown), Duration::ZERO));
        // After the fail-fast pause the store tries again (and waits no longer than before).
        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
        let t2 = Instant::now();
        let r = store
            .take(&rpm("t0"), 100, 1, 60_000, Instant::now() + store.timeout())
            .await;
        assert_eq!(r, Err(StoreDown));
        assert!(t2.elapsed() <= Duration::from_millis(50));
    }
}
