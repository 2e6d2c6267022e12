//! The response cache's purge channel: a purge on one replica's admin listener
//! ([`super::Store::purge`]) reaches every replica's memory tier, not only Redis and its own.
//!
//! - The purging replica sends `DEL`, then `PUBLISH` [`CHANNEL`] `<key hex>`
//!   ([`super::redis_tier::RedisTier::publish_purge`]); `PUBLISH` answers how many subscribers
//!   got the message, which the purge's answer reports (`replicas_told`). A Redis user needs
//!   the permission of this channel (ACL `&sluice:cache:v1:purge`) for both sides.
//! - Every process with a Redis tier subscribes to [`CHANNEL`] on a connection of its own
//!   (Redis pub/sub, <https://redis.io/docs/latest/develop/interact/pubsub/>; redis-rs's
//!   `aio::PubSub`, <https://docs.rs/redis/0.32/redis/aio/struct.PubSub.html>) and removes each
//!   key it hears from its memory tier ([`super::Store::forget`]).
//! - Pub/sub delivers at most once, to the subscribers connected at the time. A subscription
//!   that fails, ends, or does not answer a `PING` within `cache.redis.connect_timeout_ms`
//!   (checked every [`PING_EVERY`] while idle) is counted in
//!   `sluice_cache_redis_errors_total{op="subscribe"}` and made again after
//!   [`crate::redis_link::RETRY_AFTER_FAILURE`]; `sluice_cache_purge_channel_subscribed` is 0
//!   meanwhile. A purge sent while a replica was not subscribed does not reach it;
//!   `replicas_told` says how many it reached. So every subscription, once made, starts by
//!   emptying the memory tier ([`Store::purge_memory`]): whatever it held while no purge could
//!   be heard may have been purged elsewhere. Entries of `store: redis` routes come back from
//!   Redis (where a purge's `DEL` did reach), the rest from the upstream. At start the tier is
//!   empty and nothing is lost.
//! - A message that is not 64 hex digits is ignored.

use super::redis_tier::RedisTier;
use super::{Key, Store};
use crate::metrics;
use crate::redis_link::RETRY_AFTER_FAILURE;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use std::sync::Arc;
use std::time::Duration;

/// The Redis pub/sub channel of purges; each message is one key's 64 hex digits (the access
/// line's `input_hash`). `v1` changes with the key's derivation, as the entries' prefix does.
pub const CHANNEL: &str = "sluice:cache:v1:purge";

/// How often an idle subscription is checked with a `PING` (a Redis that vanished without
/// closing the connection is noticed within this plus `cache.redis.connect_timeout_ms`).
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// Listen on [`CHANNEL`] through `tier`'s server and remove every key heard from `store`'s
/// memory tier; subscribes again after any failure. Runs until the process ends.
pub async fn listen(tier: Arc<RedisTier>, store: Arc<Store>) {
    loop {
        match subscribe(&tier).await {
            Some((sink, stream)) => {
                metrics::CACHE_PURGE_SUBSCRIBED.set(1);
                // Purges are heard from now on; the ones sent before may have been missed.
                let dropped = store.purge_memory();
                if dropped > 0 {
                    tracing::warn!(
                        channel = CHANNEL,
                        dropped_entries = dropped,
                        "cache purge channel: subscribed; the memory tier was emptied, as purges sent while unsubscribed may have been missed"
                    );
                } else {
                    tracing::info!(channel = CHANNEL, "cache purge channel: subscribed");
                }
                follow(&tier, &store, sink, stream).await;
                metrics::CACHE_PURGE_SUBSCRIBED.set(0);
                tracing::warn!(
                    channel = CHANNEL,
                    "cache purge channel: subscription lost, subscribing again; purges sent meanwhile do not reach this replica"
                );
            }
            None => tracing::debug!(channel = CHANNEL, "cache purge channel: cannot subscribe"),
        }
        metrics::CACHE_REDIS_ERRORS
            .with_label_values(&["subscribe"])
            .inc();
        tokio::time::sleep(RETRY_AFTER_FAILURE).await;
    }
}

/// A subscription to [`CHANNEL`], made within the tier's connect timeout; `None` on failure
/// (the error is not logged: it may name the server).
async fn subscribe(tier: &RedisTier) -> Option<(PubSubSink, PubSubStream)> {
    let client = tier.link().client();
    let made = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        Ok::<_, redis::RedisError>(pubsub.split())
    };
    tokio::time::timeout(tier.link().connect_timeout(), made)
        .await
        .ok()?
        .ok()
}

/// Apply the messages of one subscription until it ends or stops answering `PING`.
async fn follow(tier: &RedisTier, store: &Store, mut sink: PubSubSink, mut stream: PubSubStream) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => apply(store, msg.get_payload_bytes()),
                None => return,
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(
                    tier.link().connect_timeout(),
                    sink.ping::<redis::Value>(),
                );
                if !matches!(pong.await, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// One message: remove the key it names from `store`'s memory tier.
fn apply(store: &Store, payload: &[u8]) {
    let key = std::str::from_utf8(payload).ok().and_then(Key::from_hex);
    match key {
        Some(key) => {
            if store.forget(&key) {
                tracing::info!(
                    target: "sluice::admin",
                    input_hash = %key.hex(),
                    "cache purge from another replica: removed from the memory tier"
                );
            }
        }
        None => tracing::debug!(
            channel = CHANNEL,
            bytes = payload.len(),
            "cache purge channel: a message that is not a key, ignored"
        ),
    }
}
