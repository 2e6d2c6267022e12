//! Every Prometheus metric sluice exports, declared and registered once (default registry),
//! served by the admin listener. Label values are bounded: configured route/pool/tenant
//! names, status classes, token kinds, and model names through [`model_label`].

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, HistogramVec,
    IntCounterVec, IntGauge,
};
use std::collections::HashSet;
use std::sync::Mutex;

// `register_*!` fails only on a duplicate name or invalid label names: both are programmer
// errors fixed at compile time of this file, and each metric is registered exactly once
// (Lazy), so the panic below can only fire in development.
macro_rules! metric {
    ($e:expr) => {
        match $e {
            Ok(m) => m,
            Err(err) => panic!("metric registration: {err}"),
        }
    };
}

mod reuse;
mod traces;
pub use reuse::*;
pub use traces::*;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// `sluice_requests_total{route,pool,model,status_class}`: finished requests.
pub static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_requests_total",
        "Requests finished, by route, pool, model and status class (2xx..5xx)",
        &["route", "pool", "model", "status_class"]
    ))
});

/// `sluice_tokens_total{tenant,model,kind,source}`: tokens by kind (`prompt`, `completion`,
/// `cached`, `cache_write`, `reasoning`) and source (`exact` from upstream usage, `estimated`
/// by tiktoken when the upstream sent none).
pub static TOKENS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_tokens_total",
        "Tokens counted, by tenant, model, kind and source (exact or estimated)",
        &["tenant", "model", "kind", "source"]
    ))
});

/// `sluice_upstream_duration_seconds{route,pool}`: attempt start to end of response.
pub static UPSTREAM_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    metric!(register_histogram_vec!(
        "sluice_upstream_duration_seconds",
        "Upstream request duration, from sending the request to the end of the response",
        &["route", "pool"],
        LATENCY_BUCKETS.to_vec()
    ))
});

/// `sluice_ttft_seconds{route,pool}`: time to first token (first response body byte).
pub static TTFT: Lazy<HistogramVec> = Lazy::new(|| {
    metric!(register_histogram_vec!(
        "sluice_ttft_seconds",
        "Time to first token: request start to the first response body byte sent to the client",
        &["route", "pool"],
        LATENCY_BUCKETS.to_vec()
    ))
});

/// `sluice_streams_in_flight`: streamed responses being relayed now.
pub static STREAMS_IN_FLIGHT: Lazy<IntGauge> = Lazy::new(|| {
    metric!(register_int_gauge!(
        "sluice_streams_in_flight",
        "Streamed (SSE) responses currently being relayed"
    ))
});

/// `sluice_client_disconnects_total{route}`: clients that left before the response ended
/// (the upstream call is then cancelled).
pub static CLIENT_DISCONNECTS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_client_disconnects_total",
        "Clients that disconnected before the end of the response; the upstream call was closed",
        &["route"]
    ))
});

/// `sluice_errors_total{reason}`: requests sluice answered itself with an error.
pub static ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_errors_total",
        "Requests answered by sluice with its own error, by reason",
        &["reason"]
    ))
});

/// `sluice_limit_decisions_total{tenant,decision,reason}`: limiter decisions; `decision` is
/// `admitted` (reason `ok`) or `rejected` (reason `requests`, `tokens`, `concurrency`,
/// `budget`).
pub static LIMIT_DECISIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_limit_decisions_total",
        "Limiter decisions by tenant, decision (admitted, rejected) and reason",
        &["tenant", "decision", "reason"]
    ))
});

/// `sluice_tokens_reserved_total{tenant}`: tokens reserved before forwarding (prompt
/// estimate + output ceiling, per limited counter).
pub static TOKENS_RESERVED: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_tokens_reserved_total",
        "Tokens reserved by the limiter before forwarding (worst case), by tenant",
        &["tenant"]
    ))
});

/// `sluice_tokens_settled_total{tenant}`: tokens the reservations settled to (exact usage).
pub static TOKENS_SETTLED: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_tokens_settled_total",
        "Tokens the limiter's reservations settled to (prompt + completion), by tenant",
        &["tenant"]
    ))
});

/// `sluice_spend_usd_total{tenant,model}`: cost of requests from exact usage and the price
/// table.
pub static SPEND: Lazy<prometheus::CounterVec> = Lazy::new(|| {
    metric!(prometheus::register_counter_vec!(
        "sluice_spend_usd_total",
        "Spend in USD computed from usage and the models price table, by tenant and model",
        &["tenant", "model"]
    ))
});

/// `sluice_budget_remaining_usd{tenant,period}`: USD left under a tenant's day/month budget.
pub static BUDGET_REMAINING: Lazy<prometheus::GaugeVec> = Lazy::new(|| {
    metric!(prometheus::register_gauge_vec!(
        "sluice_budget_remaining_usd",
        "USD left under the tenant's budget, by period (day, month)",
        &["tenant", "period"]
    ))
});

/// `sluice_tenant_requests_in_flight{tenant}`: requests holding a concurrency permit.
pub static TENANT_IN_FLIGHT: Lazy<prometheus::IntGaugeVec> = Lazy::new(|| {
    metric!(prometheus::register_int_gauge_vec!(
        "sluice_tenant_requests_in_flight",
        "Requests of tenants with a concurrency limit currently holding a permit",
        &["tenant"]
    ))
});

/// `sluice_config_reload_total{result}`: reload attempts, `success` or `failure`.
pub static CONFIG_RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_config_reload_total",
        "Config reload attempts by result (success, failure)",
        &["result"]
    ))
});

/// `sluice_config_last_success_timestamp_seconds`: when the config in force was loaded.
pub static CONFIG_LAST_SUCCESS: Lazy<prometheus::Gauge> = Lazy::new(|| {
    metric!(prometheus::register_gauge!(
        "sluice_config_last_success_timestamp_seconds",
        "Unix time at which the config in force was loaded"
    ))
});

/// `sluice_config_hash`: the first 52 bits of the SHA-256 of the config text in force.
pub static CONFIG_HASH: Lazy<prometheus::Gauge> = Lazy::new(|| {
    metric!(prometheus::register_gauge!(
        "sluice_config_hash",
        "First 52 bits of the SHA-256 of the config text in force (compare across replicas)"
    ))
});

/// `sluice_breaker_state{pool,endpoint}`: 0 closed, 1 half-open, 2 open.
pub static BREAKER_STATE: Lazy<prometheus::GaugeVec> = Lazy::new(|| {
    metric!(prometheus::register_gauge_vec!(
        "sluice_breaker_state",
        "Circuit breaker state per endpoint: 0 closed, 1 half-open, 2 open",
        &["pool", "endpoint"]
    ))
});

/// `sluice_endpoint_skips_total{pool,endpoint,reason}`: endpoints skipped without a connect
/// attempt (`breaker_open`, `cooling_down`, `no_usable_key`).
pub static ENDPOINT_SKIPS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_endpoint_skips_total",
        "Endpoints skipped without a connection attempt, by reason",
        &["pool", "endpoint", "reason"]
    ))
});

/// `sluice_failovers_total{route,from_pool,to_pool,reason}`: an attempt abandoned for the
/// next endpoint or pool (before any byte reached the client).
pub static FAILOVERS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_failovers_total",
        "Failovers from one pool to the next attempt's pool, by reason (status or error)",
        &["route", "from_pool", "to_pool", "reason"]
    ))
});

/// `sluice_upstream_retries_total`: the same endpoint tried again after a transient failure
/// (`routes[].failover.retry`), by reason (status or error label).
pub static RETRIES: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_upstream_retries_total",
        "Same-endpoint retries after a transient failure, by reason (status or error)",
        &["route", "pool", "reason"]
    ))
});

/// `sluice_stream_resumes_total{route, outcome}`: streams cut after content on a route with
/// `resume_on_cut`, by outcome: `spliced` (the client got the whole answer), `no_candidate`
/// (no usable candidate accepts a prefill), `failed` (every continuation failed).
pub static STREAM_RESUMES: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_stream_resumes_total",
        "Streams cut after content that sluice tried to resume, by outcome",
        &["route", "outcome"]
    ))
});

/// `sluice_upstream_attempts`: upstream attempts per request.
pub static ATTEMPTS: Lazy<prometheus::HistogramVec> = Lazy::new(|| {
    metric!(register_histogram_vec!(
        "sluice_upstream_attempts",
        "Upstream attempts per request",
        &["route"],
        vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0]
    ))
});

/// `sluice_key_cooldowns_total{pool,endpoint,reason}`: keys cooled down (`rate_limited`) or
/// disabled for as long as the key keeps its value (`unauthorized`).
pub static KEY_COOLDOWNS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_key_cooldowns_total",
        "Upstream keys cooled down (rate_limited) or disabled while the key keeps its value (unauthorized)",
        &["pool", "endpoint", "reason"]
    ))
});

/// `sluice_redis_round_trips_total{op}`: Redis round trips of the shared limit store
/// (`lease`, `return`, `spend`).
pub static REDIS_ROUND_TRIPS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_redis_round_trips_total",
        "Round trips to Redis by the shared limit store, by operation",
        &["op"]
    ))
});

/// `sluice_redis_latency_seconds{op}`.
pub static REDIS_LATENCY: Lazy<HistogramVec> = Lazy::new(|| {
    metric!(register_histogram_vec!(
        "sluice_redis_latency_seconds",
        "Latency of Redis round trips of the shared limit store",
        &["op"],
        vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]
    ))
});

/// `sluice_redis_errors_total{op}`: failed or timed-out round trips.
pub static REDIS_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_redis_errors_total",
        "Redis round trips that failed or timed out",
        &["op"]
    ))
});

/// `sluice_redis_leases_total{kind}`: quota units leased (`granted`) and given back
/// (`returned`).
pub static LEASES: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_redis_leases_total",
        "Quota units leased from Redis (granted) and given back (returned)",
        &["kind"]
    ))
});

/// `sluice_redis_fallbacks_total{policy}`: admissions decided without Redis (`open`: local
/// limits; `closed`: refused).
pub static REDIS_FALLBACKS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_redis_fallbacks_total",
        "Admissions decided without Redis by failure policy (open: local limits, closed: refused)",
        &["policy"]
    ))
});

/// `sluice_client_connections`: client connections open on the proxy listener.
pub static CLIENT_CONNECTIONS: Lazy<IntGauge> = Lazy::new(|| {
    metric!(register_int_gauge!(
        "sluice_client_connections",
        "Client connections open on the proxy listener"
    ))
});

/// `sluice_client_connections_closed_total{reason}`: client connections sluice closed to
/// bound them: `header_timeout` (request header not complete within
/// `server.header_timeout_ms`), `idle_timeout` (kept alive with no request for
/// `server.keepalive_idle_timeout_ms`), `over_limit` (refused past
/// `server.max_client_connections`).
pub static CLIENT_CONNECTIONS_CLOSED: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_client_connections_closed_total",
        "Client connections closed by sluice's bounds (header_timeout, idle_timeout, over_limit)",
        &["reason"]
    ))
});

/// `sluice_config_reload_ignored_fields_total{field}`: reloads that changed a field read only
/// at start (listeners, threads, drain deadline, log format, reload settings, limit store):
/// the rest of the reload applied, this field keeps its running value until a restart.
pub static CONFIG_RELOAD_IGNORED: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_config_reload_ignored_fields_total",
        "Reloads that changed a field read only at start (kept until restart), by YAML field",
        &["field"]
    ))
});

/// `sluice_budget_overrun_usd_total{tenant}`: cost above the requests' budget reservations
/// (prompt estimates that came out low, or a reservation capped at what was left): the most
/// spend can exceed a budget by.
pub static BUDGET_OVERRUN: Lazy<prometheus::CounterVec> = Lazy::new(|| {
    metric!(prometheus::register_counter_vec!(
        "sluice_budget_overrun_usd_total",
        "USD charged above the requests' budget reservations (bounds a budget's overshoot)",
        &["tenant"]
    ))
});

/// `sluice_sse_oversized_events_total{route}`: SSE events larger than
/// `accounting.max_sse_event_bytes`, forwarded without being parsed (the request's tokens are
/// then estimated).
pub static SSE_OVERSIZED_EVENTS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_sse_oversized_events_total",
        "SSE events over accounting.max_sse_event_bytes, forwarded unparsed, by route",
        &["route"]
    ))
});

/// `sluice_usage_implausible_total{route}`: responses whose usage reported more tokens than
/// `accounting.max_usage_tokens` in one field; treated as malformed, tokens estimated.
pub static USAGE_IMPLAUSIBLE: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_usage_implausible_total",
        "Responses whose usage exceeded accounting.max_usage_tokens (tokens estimated), by route",
        &["route"]
    ))
});

/// `sluice_stream_commits_total{route,on}`: streamed responses committed to the client (commit
/// on content), by what committed them: `content` (the first event carrying output),
/// `final` (the stream's end before any content), `error` (an error event the route does not
/// fail over on), `cap` (the held events reached `accounting.max_sse_event_bytes`).
pub static STREAM_COMMITS: Lazy<IntCounterVec> = Lazy::new(|| {
    metric!(register_int_counter_vec!(
        "sluice_stream_commits_total",
        "Streamed responses committed to the client, by route and what committed them",
        &["route", "on"]
    ))
});

/// `sluice_stream_held_seconds{route}`: commit on content, from the served attempt's response
/// header to the commit (the time its no-content events were held).
pub static STREAM_HELD: Lazy<HistogramVec> = Lazy::new(|| {
    metric!(register_histogram_vec!(
        "sluice_stream_held_seconds",
        "Time a stream's header and no-content events were held before its first content event",
        &["route"],
        LATENCY_BUCKETS.to_vec()
    ))
});

/// Force registration of every metric (so `/metrics` lists them from the start).
pub fn init() {
    reuse::init();
    traces::init();
    Lazy::force(&CLIENT_CONNECTIONS);
    Lazy::force(&CLIENT_CONNECTIONS_CLOSED);
    Lazy::force(&REQUESTS);
    Lazy::force(&TOKENS);
    Lazy::force(&UPSTREAM_DURATION);
    Lazy::force(&TTFT);
    Lazy::force(&STREAMS_IN_FLIGHT);
    Lazy::force(&CLIENT_DISCONNECTS);
    Lazy::force(&ERRORS);
    Lazy::force(&LIMIT_DECISIONS);
    Lazy::force(&TOKENS_RESERVED);
    Lazy::force(&TOKENS_SETTLED);
    Lazy::force(&SPEND);
    Lazy::force(&BUDGET_REMAINING);
    Lazy::force(&TENANT_IN_FLIGHT);
    Lazy::force(&CONFIG_RELOADS);
    Lazy::force(&CONFIG_LAST_SUCCESS);
    Lazy::force(&CONFIG_HASH);
    Lazy::force(&BREAKER_STATE);
    Lazy::force(&ENDPOINT_SKIPS);
    Lazy::force(&FAILOVERS);
    Lazy::force(&STREAM_RESUMES);
    Lazy::force(&ATTEMPTS);
    Lazy::force(&RETRIES);
    Lazy::force(&KEY_COOLDOWNS);
    Lazy::force(&REDIS_ROUND_TRIPS);
    Lazy::force(&REDIS_LATENCY);
    Lazy::force(&REDIS_ERRORS);
    Lazy::force(&LEASES);
    Lazy::force(&REDIS_FALLBACKS);
    Lazy::force(&CONFIG_RELOAD_IGNORED);
    Lazy::force(&BUDGET_OVERRUN);
    Lazy::force(&SSE_OVERSIZED_EVENTS);
    Lazy::force(&USAGE_IMPLAUSIBLE);
    Lazy::force(&STREAM_COMMITS);
    Lazy::force(&STREAM_HELD);
}

/// Most distinct model names exported as labels; later ones are exported as `other`.
pub const MAX_MODEL_LABELS: usize = 200;

static MODELS: Lazy<Mutex<HashSet<String>>> = Lazy::new(|| Mutex::new(HashSet::new()));

/// Bounded label for a client-supplied model name: the name itself when it is short, made of
/// `[A-Za-z0-9._:/@-]`, and among the first [`MAX_MODEL_LABELS`] distinct names seen; `other`
/// otherwise; `none` when the request named no model.
pub fn model_label(model: Option<&str>) -> String {
    model_label_ref(model).to_owned()
}

/// [`model_label`] without an allocation per call: `model` itself when it is its own label
/// (only its first sighting copies it into the set of seen names), else `other` / `none`.
pub fn model_label_ref(model: Option<&str>) -> &str {
    let Some(m) = model else {
        return "none";
    };
    let clean = m.len() <= 64
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b));
    if !clean {
        return "other";
    }
    let Ok(mut seen) = MODELS.lock() else {
        return "other";
    };
    if seen.contains(m) {
        return m;
    }
    if seen.len() < MAX_MODEL_LABELS {
        seen.insert(m.to_owned());
        return m;
    }
    "other"
}

/// `2xx`..`5xx` for a status code (`0` when no response was sent).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_bounded() {
        assert_eq!(model_label(None), "none");
        assert_eq!(model_label(Some("gpt-4o-mini")), "gpt-4o-mini");
        assert_eq!(model_label_ref(Some("gpt-4o-mini")), "gpt-4o-mini");
        assert_eq!(model_label_ref(Some("bad model\n")), "other");
        assert_eq!(model_label_ref(None), "none");
        assert_eq!(model_label(Some("bad model\n")), "other");
        assert_eq!(model_label(Some(&"x".repeat(65))), "other");
        for i in 0..MAX_MODEL_LABELS + 10 {
            model_label(Some(&format!("m{i}")));
        }
        assert_eq!(model_label(Some("brand-new-model")), "other");
        assert_eq!(model_label(Some("gpt-4o-mini")), "gpt-4o-mini");
    }
}
