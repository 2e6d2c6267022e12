//! The response cache's Redis tier against a real `redis-server` (Debian package, started on a
//! picked port and stopped by each test): bytes in, bytes out; misses; values over the bound;
//! error replies; Redis killed mid-run (a miss within the timeout, then at once) and back
//! (found again); and the store over it (two replicas' stores sharing entries, a purge, and
//! the purge channel that carries it to the other replica's memory tier).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures_util::FutureExt;
use sluice::cache::purge_channel;
use sluice::cache::redis_tier::{redis_key, RedisTier};
use sluice::cache::Key;
use sluice::config::cache::CacheRedis;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::Redis;

const TIMEOUT: Duration = Duration::from_millis(50);

fn tier(redis: &Redis) -> Arc<RedisTier> {
    let conf = CacheRedis {
        url: redis.url(),
        timeout: TIMEOUT,
        connect_timeout: Duration::from_millis(1000),
        max_value_bytes: 64 * 1024,
        max_pending_put_bytes: 1024 * 1024,
    };
    let tier = Arc::new(RedisTier::new(&conf).unwrap());
    tokio::spawn(tier.clone().maintain());
    tier
}

/// A direct connection to `redis`, to read and write behind the tier's back.
async fn direct(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `SET` `key`'s Redis key to `value` behind the tier's back (no expiry).
async fn set_behind(redis: &Redis, key: &Key, value: &[u8]) {
    let _: () = redis::cmd("SET")
        .arg(redis_key(key))
        .arg(value)
        .query_async(&mut direct(redis).await)
        .await
        .unwrap();
}

/// Poll `tier.get(key)` (at most 10 s) until it returns something.
async fn eventually_get(tier: &RedisTier, key: &Key) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(v) = tier.get(key).await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn a_put_is_found_by_get_with_its_ttl_and_a_missing_key_is_a_miss() {
    let redis = Redis::start();
    let tier = tier(&redis);
    let key = Key([7; 32]);
    assert_eq!(
        tier.get(&Key([8; 32])).await,
        None,
        "a missing key is a miss"
    );
    let value: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    tier.put(key, value.clone(), Duration::from_secs(30));
    assert_eq!(eventually_get(&tier, &key).await, Some(value));
    // Stored under the documented key, with Redis's own expiry.
    let mut c = direct(&redis).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(redis_key(&key))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 30_000, "PTTL {pttl}");
    assert!(redis_key(&key).starts_with("sluice:cache:v1:"));
    // Another key is still a miss, and the tier is healthy.
    assert_eq!(tier.get(&Key([8; 32])).await, None);
    assert!(!tier.is_down());
}

#[tokio::test]
async fn whatever_bytes_redis_holds_come_back_as_they_are() {
    let redis = Redis::start();
    let tier = tier(&redis);
    let key = Key([9; 32]);
    let garbage = b"\x00\xffnot an entry\r\n".to_vec();
    set_behind(&redis, &key, &garbage).await;
    // The tier does not interpret values: the memory tier's decoder rejects garbage.
    assert_eq!(eventually_get(&tier, &key).await, Some(garbage));
}

/// A value larger than the tier ever writes (put there by something else) is a miss that is
/// never read whole: the lookup reads at most the tier's value bound. One at the bound comes
/// back whole.
#[tokio::test]
async fn a_value_over_the_bound_found_in_redis_is_a_miss_read_no_further() {
    let redis = Redis::start();
    let tier = tier(&redis);
    let (big, fits) = (Key([13; 32]), Key([14; 32]));
    for (key, len) in [(big, 64 * 1024 + 1), (fits, 64 * 1024)] {
        set_behind(&redis, &key, &vec![b'z'; len]).await;
    }
    assert_eq!(
        eventually_get(&tier, &fits).await.map(|v| v.len()),
        Some(64 * 1024)
    );
    let too_large = || {
        sluice::metrics::CACHE_REDIS_LOOKUPS
            .with_label_values(&["too_large"])
            .get()
    };
    let before = too_large();
    assert_eq!(
        tier.get(&big).await,
        None,
        "an oversized value was returned"
    );
    assert_eq!(too_large(), before + 1);
    assert!(
        !tier.is_down(),
        "an oversized value made the tier fail fast"
    );
}

/// An error reply (here WRONGTYPE: the key holds a list) is a miss for that key only: the
/// connection works, so the tier does not fail fast for the others.
#[tokio::test]
async fn an_error_reply_is_a_miss_without_failing_fast() {
    let redis = Redis::start();
    let tier = tier(&redis);
    let (odd, fine) = (Key([11; 32]), Key([12; 32]));
    let mut c = direct(&redis).await;
    let _: () = redis::cmd("RPUSH")
        .arg(redis_key(&odd))
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    tier.put(fine, b"fine".to_vec(), Duration::from_secs(30));
    assert_eq!(eventually_get(&tier, &fine).await, Some(b"fine".to_vec()));
    assert_eq!(tier.get(&odd).await, None);
    assert!(!tier.is_down(), "an error reply made the tier fail fast");
    assert_eq!(tier.get(&fine).await, Some(b"fine".to_vec()));
}

#[tokio::test]
async fn a_value_over_the_bound_is_never_stored() {
    let redis = Redis::start();
    let tier = tier(&redis);
    let (big, small) = (Key([1; 32]), Key([2; 32]));
    tier.put(big, vec![b'x'; 64 * 1024 + 1], Duration::from_secs(30));
    tier.put(small, vec![b'y'; 64 * 1024], Duration::from_secs(30));
    assert_eq!(
        eventually_get(&tier, &small).await.map(|v| v.len()),
        Some(64 * 1024)
    );
    let mut c = direct(&redis).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(redis_key(&big))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0, "an oversized value reached Redis");
}

#[tokio::test]
async fn redis_killed_is_a_quick_miss_then_an_instant_one_and_back_it_is_found_again() {
    let redis = Redis::start();
    let port = redis.addr().port();
    let tier = tier(&redis);
    let key = Key([3; 32]);
    tier.put(key, b"first".to_vec(), Duration::from_secs(30));
    assert_eq!(eventually_get(&tier, &key).await, Some(b"first".to_vec()));

    drop(redis);
    // The first lookup after the kill finds the connection broken (or waits out the
    // timeout): a miss, bounded by the timeout plus scheduling slack.
    let t0 = Instant::now();
    assert_eq!(tier.get(&key).await, None);
    let first_miss = t0.elapsed();
    eprintln!("first lookup after the kill: a miss in {first_miss:?}");
    assert!(
        first_miss < TIMEOUT + Duration::from_millis(200),
        "first miss took {first_miss:?}"
    );
    assert!(tier.is_down());
    // Then every lookup is a miss on its first poll: no wait, no round trip.
    assert_eq!(
        tier.get(&key).now_or_never(),
        Some(None),
        "not failing fast"
    );
    // And a write returns at once.
    tier.put(key, b"lost".to_vec(), Duration::from_secs(30));

    // Redis back (empty: no persistence) on the same port: the tier reconnects by itself.
    let redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = None;
    while found.is_none() && Instant::now() < deadline {
        tier.put(key, b"second".to_vec(), Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
        found = tier.get(&key).await;
    }
    assert_eq!(
        found,
        Some(b"second".to_vec()),
        "not found again after Redis came back"
    );
    drop(redis);
}

/// Two stores (two replicas) on one Redis: what one stores the other finds, decoded, and
/// keeps in memory; a value that is not an entry is a miss; memory-only routes never ask Redis.
mod store {
    use super::*;
    use bytes::Bytes;
    use sluice::cache::{Entry, Store};
    use sluice::config::cache::{CacheSettings, CacheStoreKind};

    fn store(redis: &Redis) -> Store {
        store_at(&redis.url())
    }

    /// A store whose Redis tier is at `url`.
    fn store_at(url: &str) -> Store {
        let settings = CacheSettings {
            max_bytes: 1 << 20,
            max_entry_bytes: 64 * 1024,
            max_flight_bytes: 64 * 1024,
            max_flight_lag: std::time::Duration::from_secs(1),
            max_flights_total_bytes: 1 << 20,
            admission_keys: 65536,
            admin_purge: false,
            admin_purge_token_sha256: None,
            redis: Some(CacheRedis {
                url: url.to_owned(),
                timeout: TIMEOUT,
                connect_timeout: Duration::from_millis(1000),
                max_value_bytes: 128 * 1024,
                max_pending_put_bytes: 1024 * 1024,
            }),
        };
        let s = Store::new(&settings);
        tokio::spawn(s.redis().unwrap().clone().maintain());
        s
    }

    fn entry() -> Entry {
        Entry {
            sse: false,
            content_type: "application/json".to_owned(),
            body: Bytes::from_static(br#"{"id":"c1","choices":[]}"#),
            id: Some("c1".to_owned()),
            usage: Default::default(),
            stored_at_ms: 0,
        }
    }

    /// Poll `store.get` (10 s at most) until it finds `key`.
    async fn eventually(store: &Store, key: &Key) -> Option<Arc<Entry>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(e) = store.get(key, CacheStoreKind::Redis).await {
                return Some(e);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    #[tokio::test]
    async fn an_entry_stored_by_one_replica_is_found_by_the_other_and_kept_in_memory() {
        let redis = Redis::start();
        let (a, b) = (store(&redis), store(&redis));
        let key = Key([4; 32]);
        a.put(key, entry(), Duration::from_secs(30), CacheStoreKind::Redis);
        let got = eventually(&b, &key).await.expect("not found through Redis");
        assert_eq!(*got, entry());
        assert_eq!(b.entries(), 1, "a Redis hit was not kept in memory");
        // A memory-only route of B finds it in memory now, but never asks Redis.
        let other = Key([5; 32]);
        a.put(
            other,
            entry(),
            Duration::from_secs(30),
            CacheStoreKind::Redis,
        );
        assert!(eventually(&b, &key).await.is_some());
        assert!(b.get(&other, CacheStoreKind::Memory).await.is_none());
        // A memory-only put never reaches Redis.
        let local = Key([6; 32]);
        a.put(
            local,
            entry(),
            Duration::from_secs(30),
            CacheStoreKind::Memory,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(b.get(&local, CacheStoreKind::Redis).await.is_none());
    }

    #[tokio::test]
    async fn a_purge_removes_the_entry_from_memory_and_from_redis_and_says_when_redis_failed() {
        use sluice::cache::store::{Purged, RedisPurge};
        let redis = Redis::start();
        let (a, b) = (store(&redis), store(&redis));
        let key = Key([11; 32]);
        a.put(key, entry(), Duration::from_secs(30), CacheStoreKind::Redis);
        assert!(eventually_get(a.redis().unwrap(), &key).await.is_some());
        let purged = a.purge(&key).await;
        assert_eq!(
            purged,
            Purged {
                memory: true,
                redis: RedisPurge::Removed,
                replicas_told: Some(0),
            }
        );
        assert!(redis.keys(&redis_key(&key)).is_empty(), "still in Redis");
        // Gone for every replica: B finds it in neither tier.
        assert!(b.get(&key, CacheStoreKind::Redis).await.is_none());
        assert!(a.get(&key, CacheStoreKind::Redis).await.is_none());
        let again = a.purge(&key).await;
        assert_eq!(
            again,
            Purged {
                memory: false,
                redis: RedisPurge::Absent,
                replicas_told: Some(0),
            }
        );
        // Redis gone: the memory tier is purged all the same, Redis's part is a failure,
        // within the tier's timeout.
        let other = Key([12; 32]);
        a.put(
            other,
            entry(),
            Duration::from_secs(30),
            CacheStoreKind::Memory,
        );
        drop(redis);
        let t0 = Instant::now();
        let down = a.purge(&other).await;
        assert_eq!(
            down,
            Purged {
                memory: true,
                redis: RedisPurge::Failed,
                replicas_told: None,
            }
        );
        let took = t0.elapsed();
        assert!(took < TIMEOUT + Duration::from_millis(200), "took {took:?}");
    }

    /// Subscribers of the purge channel now (`PUBSUB NUMSUB`), polled (10 s at most) until
    /// there are `n`.
    async fn subscribers(redis: &Redis, n: i64) -> i64 {
        let mut conn = direct(redis).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, got): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(purge_channel::CHANNEL)
                .query_async(&mut conn)
                .await
                .unwrap();
            if got == n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `PUBLISH` `payload` on the purge channel behind the stores' back; returns how many
    /// subscribers got it.
    async fn publish(redis: &Redis, payload: &str) -> i64 {
        redis::cmd("PUBLISH")
            .arg(purge_channel::CHANNEL)
            .arg(payload)
            .query_async(&mut direct(redis).await)
            .await
            .unwrap()
    }

    /// Polls `store.entries()` (10 s at most) until it is `n`.
    async fn entries(store: &Store, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.entries() != n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.entries()
    }

    #[tokio::test]
    async fn a_purge_reaches_every_replicas_memory_through_the_channel_and_after_a_redis_restart() {
        use sluice::cache::store::RedisPurge;
        let redis = Redis::start();
        let port = redis.addr().port();
        let (a, b) = (Arc::new(store(&redis)), Arc::new(store(&redis)));
        for s in [&a, &b] {
            tokio::spawn(purge_channel::listen(s.redis().unwrap().clone(), s.clone()));
        }
        assert_eq!(subscribers(&redis, 2).await, 2, "both replicas subscribe");
        // A stores it (memory and Redis); B finds it in Redis and keeps it in memory.
        let key = Key([21; 32]);
        a.put(key, entry(), Duration::from_secs(30), CacheStoreKind::Redis);
        assert!(eventually(&b, &key).await.is_some());
        assert_eq!(b.entries(), 1);
        // B's memory-only copy would be served until its TTL; A's purge reaches it.
        let purged = a.purge(&key).await;
        assert_eq!(purged.redis, RedisPurge::Removed);
        assert_eq!(purged.replicas_told, Some(2), "{purged:?}");
        assert_eq!(entries(&b, 0).await, 0, "B still holds the purged entry");
        assert!(b.get(&key, CacheStoreKind::Memory).await.is_none());
        // A message that is not a key is ignored; the subscription goes on.
        let local = Key([22; 32]);
        b.put(
            local,
            entry(),
            Duration::from_secs(30),
            CacheStoreKind::Memory,
        );
        let marker = Key([25; 32]);
        b.put(
            marker,
            entry(),
            Duration::from_secs(30),
            CacheStoreKind::Memory,
        );
        for junk in ["", "not a key", &"z".repeat(64), &local.hex()[..63]] {
            publish(&redis, junk).await;
        }
        // Messages arrive in order: once the marker's purge is applied, so was the junk.
        assert_eq!(publish(&redis, &marker.hex()).await, 2);
        assert_eq!(
            entries(&b, 1).await,
            1,
            "the marker's purge did not reach B"
        );
        assert!(
            b.get(&local, CacheStoreKind::Memory).await.is_some(),
            "junk removed an entry"
        );
        assert_eq!(subscribers(&redis, 2).await, 2);
        // Redis restarted: the replicas subscribe again, and purges reach them again.
        drop(redis);
        let redis = Redis::start_on(port);
        assert_eq!(subscribers(&redis, 2).await, 2, "not subscribed again");
        assert_eq!(publish(&redis, &local.hex().to_uppercase()).await, 2);
        assert_eq!(
            entries(&b, 0).await,
            0,
            "a purge after the restart did not reach B"
        );
    }

    /// A Redis user without the purge channel's permission (ACL `resetchannels`): the purge
    /// still removes the entry from Redis; only the telling fails, and is counted.
    #[tokio::test]
    async fn a_purge_whose_publish_is_refused_still_removes_the_entry() {
        use sluice::cache::store::RedisPurge;
        let redis = Redis::start();
        let _: () = redis::cmd("ACL")
            .arg(&[
                "SETUSER",
                "nochan",
                "on",
                ">pw",
                "~*",
                "+@all",
                "resetchannels",
            ])
            .query_async(&mut direct(&redis).await)
            .await
            .unwrap();
        let url = format!("redis://nochan:pw@{}", redis.addr());
        let s = store_at(&url);
        let refused = || {
            sluice::metrics::CACHE_REDIS_ERRORS
                .with_label_values(&["publish"])
                .get()
        };
        let before = refused();
        let key = Key([24; 32]);
        s.put(key, entry(), Duration::from_secs(30), CacheStoreKind::Redis);
        assert!(eventually_get(s.redis().unwrap(), &key).await.is_some());
        let purged = s.purge(&key).await;
        assert_eq!(purged.redis, RedisPurge::Removed, "{purged:?}");
        assert!(purged.memory);
        assert_eq!(purged.replicas_told, None);
        assert_eq!(refused(), before + 1);
        assert!(redis.keys(&redis_key(&key)).is_empty(), "still in Redis");
        // An error reply over a working connection: the tier does not fail fast for it.
        assert!(!s.redis().unwrap().is_down());
    }

    /// The ids of the clients subscribed to something now (`CLIENT LIST TYPE pubsub`).
    async fn subscriber_ids(redis: &Redis) -> Vec<String> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut direct(redis).await)
            .await
            .unwrap();
        list.lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_owned)
            .collect()
    }

    /// A Redis that stops answering without closing the connection (SIGSTOP): the idle
    /// subscription's `PING` goes unanswered, so it is dropped and, once Redis answers again,
    /// made anew on a new connection, and purges reach the store again.
    #[tokio::test]
    async fn a_silent_redis_ends_the_subscription_by_its_ping_and_it_is_made_again() {
        let redis = Redis::start();
        let s = Arc::new(store(&redis));
        tokio::spawn(purge_channel::listen(s.redis().unwrap().clone(), s.clone()));
        assert_eq!(subscribers(&redis, 1).await, 1);
        let before = subscriber_ids(&redis).await;
        assert_eq!(before.len(), 1, "{before:?}");
        redis.signal("STOP");
        // One PING interval plus its timeout (the 1 s connect timeout), and some slack.
        tokio::time::sleep(purge_channel::PING_EVERY + Duration::from_millis(1_500)).await;
        redis.signal("CONT");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut now = subscriber_ids(&redis).await;
        while (now.len() != 1 || now == before) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            now = subscriber_ids(&redis).await;
        }
        assert!(
            now.len() == 1 && now != before,
            "before {before:?}, now {now:?}"
        );
        let key = Key([23; 32]);
        s.put(
            key,
            entry(),
            Duration::from_secs(30),
            CacheStoreKind::Memory,
        );
        assert_eq!(publish(&redis, &key.hex()).await, 1);
        assert_eq!(
            entries(&s, 0).await,
            0,
            "the new subscription does not apply purges"
        );
    }

    #[tokio::test]
    async fn a_value_that_is_not_an_entry_is_a_miss() {
        let redis = Redis::start();
        let s = store(&redis);
        let key = Key([10; 32]);
        let mut c = direct(&redis).await;
        let _: () = redis::cmd("SET")
            .arg(redis_key(&key))
            .arg(b"\x01garbage".as_slice())
            .arg("PX")
            .arg(30_000)
            .query_async(&mut c)
            .await
            .unwrap();
        // The tier hands the bytes over; the entry's decoder refuses them: a miss.
        assert!(eventually_get(s.redis().unwrap(), &key).await.is_some());
        assert!(s.get(&key, CacheStoreKind::Redis).await.is_none());
        assert_eq!(s.entries(), 0);
    }
}
