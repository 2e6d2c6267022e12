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
//! replicas never exceed a requests-per-minute limit; tokens exceed a tokens-per-minute limit
//! only by usage above a request's own reservation (a prompt estimate that came out low).
//! Budgets are charged to Redis in batches (every flush interval), so the overshoot of a budget
//! is at most what every replica spends in one interval, plus requests in flight.

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

/// Add ARGV[1] USD to the day (KEYS[1]) and month (KEYS[2]) spend, with expiries ARGV[2] and
/// ARGV[3] seconds. Returns both totals (as strings).
const SPEND: &str = r"
local d = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local m = redis.call('INCRBYFLOAT', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {d, m}
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

#[derive(Debug, Default, Clone, Copy)]
struct Spend {
    /// Global spend (all replicas) as of the last flush, for the day and month keys in
    /// `day`/`month`.
    day: i64,
    month: i64,
    global_day: f64,
    global_month: f64,
    unflushed: f64,
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
    spend: Mutex<HashMap<String, Spend>>,
    lease: Script,
    give_back: Script,
    spend_script: Script,
}

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
            spend: Mutex::new(HashMap::new()),
            lease: Script::new(LEASE),
            give_back: Script::new(RETURN),
            spend_script: Script::new(SPEND),
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
        let started = Instant::now();
        let mut conn = self.connection().await?;
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
                Err(StoreDown)
            }
        }
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
        // A single request larger than the whole limit takes the whole window.
        let amount = amount.min(limit) as i64;
        let now = now_ms();
        let window = now / window_ms;
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
                s.last_second = if s.second + 1 == sec { s.this_second } else { 0 };
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
        let args = [limit.to_string(), want.to_string(), (window_ms * 2).to_string()];
        let got: i64 = self.call("lease", &self.lease, &[&rkey], &args).await?;
        metrics::LEASES.with_label_values(&["granted"]).inc_by(got.max(0) as u64);
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
                s.remaining += reserved as i64 - actual as i64;
            }
        }
    }

    /// USD left under `day_cap` / `month_cap` for `tenant`, from the last flushed global spend
    /// plus this replica's unflushed spend. `Err(period)` names a spent cap.
    pub fn budget_left(
        &self,
        tenant: &str,
        day_cap: Option<f64>,
        month_cap: Option<f64>,
    ) -> Result<f64, super::budget::Period> {
        let (day, month) = super::budget::today();
        let s = self
            .spend
            .lock()
            .ok()
            .and_then(|m| m.get(tenant).copied())
            .unwrap_or_default();
        let d = if s.day == day { s.global_day } else { 0.0 } + s.unflushed;
        let m = if s.month == month { s.global_month } else { 0.0 } + s.unflushed;
        let mut left = f64::INFINITY;
        if let Some(cap) = day_cap {
            if d >= cap {
                return Err(super::budget::Period::Day);
            }
            left = left.min(cap - d);
        }
        if let Some(cap) = month_cap {
            if m >= cap {
                return Err(super::budget::Period::Month);
            }
            left = left.min(cap - m);
        }
        Ok(left)
    }

    /// Charge `usd` to `tenant` (flushed to Redis by [`SharedStore::flush`]).
    pub fn charge(&self, tenant: &str, usd: f64) {
        if let Ok(mut m) = self.spend.lock() {
            m.entry(tenant.to_owned()).or_default().unflushed += usd;
        }
    }

    /// Push unflushed spend to Redis and refresh every known tenant's global spend; return
    /// idle slices' leftovers. Runs every flush interval.
    pub async fn flush(&self) {
        let (day, month) = super::budget::today();
        let tenants: Vec<(String, f64)> = self
            .spend
            .lock()
            .map(|m| m.iter().map(|(t, s)| (t.clone(), s.unflushed)).collect())
            .unwrap_or_default();
        for (tenant, usd) in tenants {
            let keys = [format!("sluice:{tenant}:usd:d{day}"), format!("sluice:{tenant}:usd:m{month}")];
            let args = [format!("{usd}"), (2 * 86_400).to_string(), (32 * 86_400).to_string()];
            let res: Result<(String, String), _> = self
                .call("spend", &self.spend_script, &[&keys[0], &keys[1]], &args)
                .await;
            if let (Ok((d, m)), Ok(mut book)) = (res, self.spend.lock()) {
                let s = book.entry(tenant).or_default();
                s.unflushed -= usd;
                s.day = day;
                s.month = month;
                s.global_day = d.parse().unwrap_or(s.global_day);
                s.global_month = m.parse().unwrap_or(s.global_month);
            }
        }
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
                    .filter(|(_, s)| s.remaining > 0 && now.saturating_sub(s.last_used_ms) > 4 * self.lease_ms)
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
                metrics::LEASES.with_label_values(&["returned"]).inc_by(n.max(0) as u64);
            }
        }
    }
}
