//! The metrics of response reuse and racing: the response cache (memory and Redis tiers),
//! request coalescing and hedging. Registered with the rest by [`super::init`].

use once_cell::sync::Lazy;
use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, IntCounter, IntCounterVec,
    IntGauge,
};

/// `sluice_hedges_total{route}`: hedged lanes started (`routes[].hedge`).
pub static HEDGES: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_hedges_total",
        "Hedged lanes started because the lanes running delivered no content in time",
        &["route"]
    ))
});

/// `sluice_hedge_wins_total{route,lane}`: hedged requests by the lane that won (`first`: the
/// first attempt's lane, `hedge`: a hedged one).
pub static HEDGE_WINS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_hedge_wins_total",
        "Hedged requests by the lane whose answer was served (first, hedge)",
        &["route", "lane"]
    ))
});

/// `sluice_hedge_cost_tokens_total{route,pool}`: prompt tokens (estimated) sent to attempts
/// that lost a hedge race, which their upstream may bill.
pub static HEDGE_COST_TOKENS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_hedge_cost_tokens_total",
        "Prompt tokens (estimated) sent to attempts that lost a hedge race",
        &["route", "pool"]
    ))
});

/// `sluice_hedge_cost_usd_total{route,pool}`: their price, for models with a price.
pub static HEDGE_COST_USD: Lazy<prometheus::CounterVec> = Lazy::new(|| {
    metric!(prometheus::register_counter_vec!(
        "sluice_hedge_cost_usd_total",
        "USD (estimated from the price table) of prompts sent to attempts that lost a hedge race",
        &["route", "pool"]
    ))
});

/// `sluice_cache_purged_entries_total{tier}`: entries the admin listener's purge endpoints
/// removed (`memory`: this process's memory tier, by its own admin listener or by another
/// replica's purge heard on the purge channel; `redis`: the shared Redis tier).
pub static CACHE_PURGED: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_cache_purged_entries_total",
        "Response cache entries removed by the admin listener's purge endpoints, by tier (memory, redis)",
        &["tier"]
    ))
});

/// `sluice_cache_redis_errors_total{op}`: calls of the response cache's Redis tier that failed,
/// timed out or were skipped while the tier fails fast (`get`, `put`, and `delete` and
/// `publish` from the admin listener's purge), its failed background `connect` attempts, and
/// the purge channel's failed or lost subscriptions (`subscribe`). A failed `get` is
/// a miss; a failed `put` only this count.
pub static CACHE_REDIS_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_cache_redis_errors_total",
        "Response cache Redis tier calls failed, timed out or skipped while Redis is down (get, put, delete), and failed connects",
        &["op"]
    ))
});

/// `sluice_cache_redis_lookups_total{result}`: memory misses of `store: redis` routes answered
/// by the Redis tier: `hit` (an entry that decodes), `undecodable` (a value that does not decode
/// as an entry: a miss), `too_large` (a value over the tier's value bound, read no further
/// than it: a miss). Redis misses and failures are not counted here.
pub static CACHE_REDIS_LOOKUPS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_cache_redis_lookups_total",
        "Response cache entries found in the Redis tier, by result (hit, undecodable, too_large)",
        &["result"]
    ))
});

/// `sluice_cache_redis_skipped_puts_total{reason}`: entries not written to the Redis tier:
/// `too_large` (over the tier's value bound), `backlog` (too many bytes of writes in flight).
pub static CACHE_REDIS_SKIPPED_PUTS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_cache_redis_skipped_puts_total",
        "Response cache entries not written to Redis, by reason (too_large, backlog)",
        &["reason"]
    ))
});

/// `sluice_coalesced_requests_total{route}`: requests served as followers of an identical
/// request's upstream call (request coalescing); the call itself is counted once, under its
/// leader.
pub static COALESCED: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_coalesced_requests_total",
        "Requests that shared an identical request's upstream call instead of making their own",
        &["route"]
    ))
});

/// `sluice_coalesce_clients_cut_total{route}`: clients of a coalesced call cut for holding it
/// back longer than `cache.max_flight_lag_ms`: a follower more than `cache.max_flight_bytes`
/// behind (its stream ended with a native error event), or the leader's own client with a
/// write blocked that long while followers were there (closed mid-response).
pub static COALESCE_CUT: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_coalesce_clients_cut_total",
        "Clients of a coalesced call cut for holding it back too long, by route",
        &["route"]
    ))
});

/// `sluice_coalesce_retained_bytes`: response bytes the coalesced calls in flight keep
/// together (bounded for late joiners by `cache.max_flights_total_bytes`); read when
/// `/metrics` is scraped.
pub static COALESCE_RETAINED: Lazy<IntGauge> = Lazy::new(|| {
    metric!(register_int_gauge!(
        "sluice_coalesce_retained_bytes",
        "Response bytes the coalesced calls in flight keep, together"
    ))
});

/// `sluice_cache_requests_total{route,outcome}`: requests of caching routes by cache outcome
/// (`hit`, `miss`, `bypass`).
pub static CACHE_REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_cache_requests_total",
        "Requests of routes with a response cache, by route and outcome (hit, miss, bypass)",
        &["route", "outcome"]
    ))
});

/// `sluice_cache_bytes`: the memory tier's weighted size (bytes; bounded by `cache.max_bytes`).
pub static CACHE_BYTES: Lazy<IntGauge> = Lazy::new(|| {
    metric!(register_int_gauge!(
        "sluice_cache_bytes",
        "Response cache memory tier: weighted size of its entries, bytes"
    ))
});

/// `sluice_cache_entries`: entries in the memory tier.
pub static CACHE_ENTRIES: Lazy<IntGauge> = Lazy::new(|| {
    metric!(register_int_gauge!(
        "sluice_cache_entries",
        "Response cache memory tier: entries"
    ))
});

/// `sluice_cache_admission_skipped_total`: misses whose answer was not recorded because the
/// memory tier was full and its doorkeeper had not seen the key miss before
/// (`crate::cache::admission`).
pub static CACHE_ADMISSION_SKIPPED: Lazy<IntCounter> = Lazy::new(|| {
    metric!(register_int_counter!(
        "sluice_cache_admission_skipped_total",
        "Response cache misses not recorded: the memory tier was full and the key had not missed before (a one-off request)"
    ))
});

/// `sluice_cache_stored_total{route}`: complete responses stored.
pub static CACHE_STORED: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_cache_stored_total",
        "Complete 200 responses stored in the response cache, by route",
        &["route"]
    ))
});

/// `sluice_cache_saved_tokens_total{route,kind}`: tokens hits did not spend upstream (`kind`:
/// `prompt`, `completion`), from the stored response's usage.
pub static CACHE_SAVED_TOKENS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_cache_saved_tokens_total",
        "Tokens cache hits did not spend upstream, by route and kind (prompt, completion)",
        &["route", "kind"]
    ))
});

/// `sluice_cache_saved_usd_total{route}`: USD hits did not spend (model price table).
pub static CACHE_SAVED_USD: Lazy<prometheus::CounterVec> = Lazy::new(|| {
    metric!(prometheus::register_counter_vec!(
        "sluice_cache_saved_usd_total",
        "USD cache hits did not spend upstream (priced with the model table), by route",
        &["route"]
    ))
});

/// `sluice_cache_purge_channel_subscribed`: 1 while this process listens on the Redis tier's
/// purge channel (`crate::cache::purge_channel`), else 0.
pub static CACHE_PURGE_SUBSCRIBED: Lazy<IntGauge> = Lazy::new(|| {
    metric!(register_int_gauge!(
        "sluice_cache_purge_channel_subscribed",
        "1 while this process listens on the response cache's Redis purge channel (other replicas' purges reach its memory tier), else 0"
    ))
});

/// Force registration of these metrics.
pub(super) fn init() {
    Lazy::force(&HEDGES);
    Lazy::force(&HEDGE_WINS);
    Lazy::force(&HEDGE_COST_TOKENS);
    Lazy::force(&HEDGE_COST_USD);
    Lazy::force(&CACHE_REDIS_ERRORS);
    Lazy::force(&CACHE_PURGED);
    Lazy::force(&CACHE_ADMISSION_SKIPPED);
    Lazy::force(&CACHE_PURGE_SUBSCRIBED);
    Lazy::force(&CACHE_REDIS_LOOKUPS);
    Lazy::force(&CACHE_REDIS_SKIPPED_PUTS);
    Lazy::force(&COALESCED);
    Lazy::force(&COALESCE_CUT);
    Lazy::force(&COALESCE_RETAINED);
    Lazy::force(&CACHE_REQUESTS);
    Lazy::force(&CACHE_BYTES);
    Lazy::force(&CACHE_ENTRIES);
    Lazy::force(&CACHE_STORED);
    Lazy::force(&CACHE_SAVED_TOKENS);
    Lazy::force(&CACHE_SAVED_USD);
}
