//! The response cache's Redis tier: encoded entries (bytes in, bytes out) shared by the
//! replicas, under `sluice:cache:v1:{key hex}` with Redis's own expiry (`SET key value PX ttl`,
//! <https://redis.io/docs/latest/commands/set/>; read back with `GETRANGE`, never more than
//! the tier writes, see [`RedisTier::get_with_ttl`]).
//!
//! A Redis failure never fails a request and never delays one noticeably:
//! - a lookup ([`RedisTier::get`]) waits at most the tier's `timeout` (`cache.redis.timeout_ms`,
//!   default 50 ms), and any failure is a miss; after a failure the tier fails fast (a miss with
//!   no wait at all) for [`crate::redis_link::RETRY_AFTER_FAILURE`] while the background task
//!   reconnects ([`RedisLink`]);
//! - a write ([`RedisTier::put`]) is spawned, so it never holds a response; it too is bounded by
//!   the `timeout`, and the bytes of writes in flight are bounded
//!   (`cache.redis.max_pending_put_bytes`): a write past the bound, or of a value larger than
//!   the tier's value bound, is skipped and counted, never queued.
//!
//! What the bytes mean is the memory tier's business (`Entry::encode` / `Entry::decode`, a
//! versioned form): a value this tier cannot vouch for is returned as is and rejected there.

use super::Key;
use crate::config::cache::CacheRedis;
use crate::metrics;
use crate::redis_link::RedisLink;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Prefix of every Redis key of the tier; `v1` changes with the key's derivation.
pub const KEY_PREFIX: &str = "sluice:cache:v1:";

/// The Redis key of `key`: [`KEY_PREFIX`] then its 64 hex digits.
pub fn redis_key(key: &Key) -> String {
    format!("{KEY_PREFIX}{}", key.hex())
}

/// The Redis tier of one sluice process. Share it in an `Arc`; run [`RedisTier::maintain`]
/// in the background.
pub struct RedisTier {
    link: RedisLink,
    /// Largest value written, bytes.
    max_value_bytes: usize,
    /// Bytes of writes in flight: one permit per byte (`max_pending_put_bytes` in all).
    pending: Arc<Semaphore>,
}

impl RedisTier {
    /// A tier for `conf`. Errors: an unparseable URL. Connecting is the job of
    /// [`RedisTier::maintain`].
    pub fn new(conf: &CacheRedis) -> Result<Self, String> {
        let link = RedisLink::new(
            &conf.url,
            conf.timeout,
            conf.connect_timeout,
            metrics::CACHE_REDIS_ERRORS.with_label_values(&["connect"]),
        )?;
        // A semaphore holds at most `Semaphore::MAX_PERMITS` (usize::MAX >> 3).
        let permits = conf.max_pending_put_bytes.min(Semaphore::MAX_PERMITS);
        Ok(Self {
            link,
            max_value_bytes: conf.max_value_bytes,
            pending: Arc::new(Semaphore::new(permits)),
        })
    }

    /// Keep the connection to Redis (see [`RedisLink::maintain`]); runs until the process
    /// ends.
    pub async fn maintain(self: Arc<Self>) {
        self.link.maintain().await;
    }

    /// The bound on a lookup (`cache.redis.timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.link.timeout()
    }

    /// The link to the tier's server (the purge channel subscribes through its client).
    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// Whether the tier fails fast now (Redis failed less than the pause ago).
    pub fn is_down(&self) -> bool {
        self.link.is_down()
    }

    /// The value stored under `key`, waiting at most the tier's `timeout`. `None`: a miss, a
    /// timeout or any failure (counted in `sluice_cache_redis_errors_total{op="get"}`); after
    /// a failure, `None` at once (no wait) until the fail-fast pause is over.
    pub async fn get(&self, key: &Key) -> Option<Vec<u8>> {
        self.get_with_ttl(key).await.map(|(v, _)| v)
    }

    /// [`RedisTier::get`], with the entry's time left to live (`PTTL`, in the same round
    /// trip; <https://redis.io/docs/latest/commands/pttl/>). The time left is `None` when the
    /// key has no expiry (not written by sluice).
    ///
    /// Never reads more than the tier's value bound (`max_value_bytes`, what it writes at
    /// most): the round trip is a pipeline of `STRLEN`, `GETRANGE key 0 bound-1` and `PTTL`
    /// (<https://redis.io/docs/latest/commands/strlen/>,
    /// <https://redis.io/docs/latest/commands/getrange/>), so a larger value (written by
    /// something else) is a miss of which at most the bound is read, counted in
    /// `sluice_cache_redis_lookups_total{result="too_large"}`. A missing key reads as length
    /// 0: a miss.
    pub async fn get_with_ttl(&self, key: &Key) -> Option<(Vec<u8>, Option<Duration>)> {
        if self.fails_fast("get") {
            return None;
        }
        // `GETRANGE key 0 -1` would be the whole value: a bound of 0 reads nothing.
        let last = i64::try_from(self.max_value_bytes.checked_sub(1)?).unwrap_or(i64::MAX);
        let (mut conn, deadline) = self.connect("get").await?;
        let rkey = redis_key(key);
        let mut pipe = redis::pipe();
        pipe.cmd("STRLEN")
            .arg(&rkey)
            .cmd("GETRANGE")
            .arg(&rkey)
            .arg(0)
            .arg(last)
            .cmd("PTTL")
            .arg(&rkey);
        let res =
            tokio::time::timeout_at(deadline, pipe.query_async::<(u64, Vec<u8>, i64)>(&mut conn));
        match res.await {
            Ok(Ok((0, _, _))) => None,
            Ok(Ok((len, _, _)))
                if len > u64::try_from(self.max_value_bytes).unwrap_or(u64::MAX) =>
            {
                metrics::CACHE_REDIS_LOOKUPS
                    .with_label_values(&["too_large"])
                    .inc();
                None
            }
            // PTTL: -1 no expiry, -2 gone meanwhile (then a miss: it just expired). A value
            // replaced between the two reads by a longer one comes back cut: it does not
            // decode (a miss).
            Ok(Ok((_, v, ms))) if ms > 0 => {
                Some((v, Some(Duration::from_millis(ms.unsigned_abs()))))
            }
            Ok(Ok((_, v, -1))) => Some((v, None)),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                self.failed("get", Some(&e));
                None
            }
            Err(_) => {
                self.failed("get", None);
                None
            }
        }
    }

    /// Whether the tier fails fast now; if so, `op` is counted as failed
    /// (`sluice_cache_redis_errors_total{op}`) and not tried.
    fn fails_fast(&self, op: &str) -> bool {
        let down = self.link.is_down();
        if down {
            metrics::CACHE_REDIS_ERRORS.with_label_values(&[op]).inc();
        }
        down
    }

    /// A connection for `op` and the deadline of its call (the tier's `timeout` from now);
    /// `None` when none came by then: `op` is counted as failed and the tier fails fast.
    async fn connect(&self, op: &str) -> Option<(redis::aio::ConnectionManager, Instant)> {
        let deadline = Instant::now() + self.link.timeout();
        let conn = self.link.connection(deadline).await;
        if conn.is_none() {
            metrics::CACHE_REDIS_ERRORS.with_label_values(&[op]).inc();
            self.link.mark_down();
        }
        Some((conn?, deadline))
    }

    /// Count a failed `op`; when the connection is at fault (an I/O error, one redis-rs says
    /// needs a new connection, or the timeout: `None`), fail fast and reconnect. An error
    /// reply (a key of another type, Redis out of memory...) came back at once over a working
    /// connection: counted only.
    fn failed(&self, op: &str, error: Option<&redis::RedisError>) {
        metrics::CACHE_REDIS_ERRORS.with_label_values(&[op]).inc();
        if error.is_none_or(|e| e.is_io_error() || e.is_unrecoverable_error()) {
            self.link.mark_down();
        }
    }

    /// Store `value` under `key` for `ttl` (at least 1 ms), in a task of its own: returns at
    /// once. Skipped (counted in `sluice_cache_redis_skipped_puts_total{reason}`) when the
    /// value is over the tier's bound or the writes in flight already hold their bound of
    /// bytes; skipped while the tier fails fast, and failures, are counted in
    /// `sluice_cache_redis_errors_total{op="put"}`. Must be called within a tokio runtime.
    pub fn put(self: &Arc<Self>, key: Key, value: Vec<u8>, ttl: Duration) {
        if value.len() > self.max_value_bytes {
            metrics::CACHE_REDIS_SKIPPED_PUTS
                .with_label_values(&["too_large"])
                .inc();
            return;
        }
        if self.fails_fast("put") {
            return;
        }
        // One permit per byte (an empty value takes one), held until the write ends.
        let bytes = u32::try_from(value.len().max(1)).unwrap_or(u32::MAX);
        let Ok(permit) = self.pending.clone().try_acquire_many_owned(bytes) else {
            metrics::CACHE_REDIS_SKIPPED_PUTS
                .with_label_values(&["backlog"])
                .inc();
            return;
        };
        let tier = self.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        tokio::spawn(async move {
            let _permit = permit;
            tier.write(&key, value, ttl_ms).await;
        });
    }

    /// Remove `key`'s value (`DEL key`, <https://redis.io/docs/latest/commands/del/>), waiting
    /// at most the tier's `timeout`: `Ok(true)` removed, `Ok(false)` there was none. Errors
    /// (`Err(())`, counted in `sluice_cache_redis_errors_total{op="delete"}`): Redis failed,
    /// timed out, or the tier fails fast now.
    pub async fn delete(&self, key: &Key) -> Result<bool, ()> {
        self.call("delete", redis::cmd("DEL").arg(redis_key(key)))
            .await
            .map(|n| n > 0)
    }

    /// Tell every replica to drop `key` from its memory tier: `PUBLISH` of its hex on
    /// [`super::purge_channel::CHANNEL`] (<https://redis.io/docs/latest/commands/publish/>),
    /// waiting at most the tier's `timeout`. `Ok(n)`: how many subscribers (this process's own
    /// included) received it. Errors (`Err(())`, counted in
    /// `sluice_cache_redis_errors_total{op="publish"}`): as [`RedisTier::delete`]'s (a Redis
    /// user without the channel's permission gets an error reply).
    pub async fn publish_purge(&self, key: &Key) -> Result<u64, ()> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(super::purge_channel::CHANNEL).arg(key.hex());
        self.call("publish", &cmd)
            .await
            .map(|n| u64::try_from(n).unwrap_or(0))
    }

    /// One command answering an integer, as `op`, bounded by the tier's `timeout`; failures
    /// counted (see [`RedisTier::failed`]).
    async fn call(&self, op: &str, cmd: &redis::Cmd) -> Result<i64, ()> {
        if self.fails_fast(op) {
            return Err(());
        }
        let (mut conn, deadline) = self.connect(op).await.ok_or(())?;
        match tokio::time::timeout_at(deadline, cmd.query_async::<i64>(&mut conn)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => {
                self.failed(op, Some(&e));
                Err(())
            }
            Err(_) => {
                self.failed(op, None);
                Err(())
            }
        }
    }

    /// `SET key value PX ttl_ms`, bounded by the tier's `timeout`.
    async fn write(&self, key: &Key, value: Vec<u8>, ttl_ms: u64) {
        let Some((mut conn, deadline)) = self.connect("put").await else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(redis_key(key)).arg(value).arg("PX").arg(ttl_ms);
        match tokio::time::timeout_at(deadline, cmd.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failed("put", Some(&e)),
            Err(_) => self.failed("put", None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(url: &str, max_value_bytes: usize, pending: usize) -> CacheRedis {
        CacheRedis {
            url: url.to_owned(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(1000),
            max_value_bytes,
            max_pending_put_bytes: pending,
        }
    }

    #[test]
    fn keys_are_prefixed_and_versioned() {
        let k = Key([0xab; 32]);
        assert_eq!(
            redis_key(&k),
            format!("sluice:cache:v1:{}", "ab".repeat(32))
        );
    }

    #[test]
    fn a_bad_url_is_refused() {
        assert!(RedisTier::new(&conf("http://nope", 10, 10)).is_err());
        assert!(RedisTier::new(&conf("redis://127.0.0.1:1", 10, 10)).is_ok());
    }

    /// A Redis that accepts connections and never answers: 16 concurrent lookups all give up
    /// at the tier's timeout, none later; the next one is a miss at once; puts return at once.
    #[tokio::test(start_paused = true)]
    async fn a_silent_redis_never_holds_a_lookup_past_its_timeout() {
        let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", hole.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = hole.accept().await {
                held.push(sock);
            }
        });
        let tier = Arc::new(RedisTier::new(&conf(&url, 1024, 4096)).unwrap());
        tokio::spawn(tier.clone().maintain());
        let t0 = Instant::now();
        let gets = (0..16u8).map(|i| {
            let tier = tier.clone();
            tokio::spawn(async move { (tier.get(&Key([i; 32])).await, t0.elapsed()) })
        });
        for g in futures_util::future::join_all(gets).await {
            let (v, took) = g.unwrap();
            assert_eq!(v, None);
            assert!(took <= tier.timeout(), "waited {took:?}");
        }
        assert!(tier.is_down());
        let t1 = Instant::now();
        assert_eq!(tier.get(&Key([1; 32])).await, None);
        assert_eq!(t1.elapsed(), Duration::ZERO);
        tier.put(Key([1; 32]), vec![1, 2, 3], Duration::from_secs(1));
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }

    /// Values over the bound and writes past the backlog bound are skipped, not queued.
    #[tokio::test]
    async fn oversized_values_and_backlog_are_skipped() {
        let tier = Arc::new(RedisTier::new(&conf("redis://127.0.0.1:1", 100, 150)).unwrap());
        let skipped = |r: &str| {
            metrics::CACHE_REDIS_SKIPPED_PUTS
                .with_label_values(&[r])
                .get()
        };
        let (large0, backlog0) = (skipped("too_large"), skipped("backlog"));
        tier.put(Key([0; 32]), vec![0; 101], Duration::from_secs(1));
        assert_eq!(skipped("too_large"), large0 + 1);
        // Nothing connects (no maintainer): the first write holds its 100 bytes until its
        // timeout, so a second one of 100 bytes is past the 150-byte bound.
        tier.put(Key([1; 32]), vec![0; 100], Duration::from_secs(1));
        tier.put(Key([2; 32]), vec![0; 100], Duration::from_secs(1));
        assert_eq!(skipped("backlog"), backlog0 + 1);
        assert!(tier.pending.available_permits() <= 50);
    }
}
