//! Micro-benchmarks of sluice's hot paths (`make bench`): stream usage parsing per API (MB/s;
//! SSE: OpenAI chat and Responses, Anthropic, Gemini `alt=sse`; Ollama's NDJSON; Bedrock's AWS event stream),
//! request body inspection (10 KiB, 1 MiB), route matching on 1,000 routes, limit checks
//! (ns per admit + settle, and the cost of absent limits), token estimation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::config::{compile, parse, Secrets};
use sluice::limits::{Ask, Limiter};
use sluice::proxy::inspect::inspect;
use sluice::usage::{estimate, ApiKind, SseAccountant};
use std::sync::Arc;

#[path = "../tests/support/mod.rs"]
mod support;

fn fixture(path: &str) -> Bytes {
    let p = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}")))
}

/// Repeat a fixture's events so one pass is ~1 MiB of SSE, split in 1,500-byte chunks like a
/// TCP stream.
fn stream_chunks(one: &Bytes) -> Vec<Bytes> {
    let mut all = Vec::new();
    while all.len() < 1 << 20 {
        all.extend_from_slice(one);
    }
    all.chunks(1500).map(Bytes::copy_from_slice).collect()
}

fn sse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_usage");
    for (name, api, file) in [
        (
            "openai_chat",
            ApiKind::OpenAiChat,
            "openai_chat/llmock_include_usage.sse",
        ),
        (
            "openai_responses",
            ApiKind::OpenAiResponses,
            "openai_responses/llmock_capture.sse",
        ),
        (
            "anthropic",
            ApiKind::AnthropicMessages,
            "anthropic/llmock_capture.sse",
        ),
        // Ollama's NDJSON stream (the NDJSON framer, not SSE), from Ollama's docs/api.md.
        (
            "ollama_ndjson",
            ApiKind::OllamaChat,
            "ollama/chat_stream.ndjson",
        ),
        // AWS event stream framing (binary, CRC-checked), Bedrock ConverseStream.
        (
            "bedrock_converse",
            ApiKind::BedrockConverse,
            "bedrock/converse_stream.bin",
        ),
        (
            "gemini",
            ApiKind::GeminiGenerateContent,
            "gemini/sdk_stream_thoughts.sse",
        ),
    ] {
        let chunks = stream_chunks(&fixture(file));
        let bytes: usize = chunks.iter().map(Bytes::len).sum();
        g.throughput(Throughput::Bytes(bytes as u64));
        for hide in [false, true] {
            if hide && api != ApiKind::OpenAiChat {
                continue;
            }
            let id = if hide {
                format!("{name}_hide_usage")
            } else {
                name.to_owned()
            };
            g.bench_function(id, |b| {
                b.iter(|| {
                    let mut acc = SseAccountant::new(api, hide, 4 << 20);
                    for ch in &chunks {
                        black_box(acc.push(ch));
                    }
                    black_box(acc.finish());
                    acc.usage()
                })
            });
        }
    }
    g.finish();
}

/// The same streams per event (ns/event = time / elements), pass-through mode: the cost of
/// framing and accounting one event of each API's typical stream (mostly content deltas).
fn sse_per_event(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse_event");
    for (name, api, file) in [
        (
            "openai_chat",
            ApiKind::OpenAiChat,
            "openai_chat/llmock_include_usage.sse",
        ),
        (
            "openai_chat_real",
            ApiKind::OpenAiChat,
            "openai_chat/openai_include_usage.sse",
        ),
        (
            "openai_responses",
            ApiKind::OpenAiResponses,
            "openai_responses/llmock_capture.sse",
        ),
        (
            "anthropic",
            ApiKind::AnthropicMessages,
            "anthropic/llmock_capture.sse",
        ),
        // AWS event stream framing (binary, CRC-checked), Bedrock ConverseStream.
        (
            "bedrock_converse",
            ApiKind::BedrockConverse,
            "bedrock/converse_stream.bin",
        ),
        (
            "gemini",
            ApiKind::GeminiGenerateContent,
            "gemini/sdk_stream_thoughts.sse",
        ),
    ] {
        let chunks = stream_chunks(&fixture(file));
        let mut probe = SseAccountant::new(api, false, 4 << 20);
        for ch in &chunks {
            probe.push(ch);
        }
        probe.finish();
        g.throughput(Throughput::Elements(probe.events()));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut acc = SseAccountant::new(api, false, 4 << 20);
                for ch in &chunks {
                    black_box(acc.push(ch));
                }
                black_box(acc.finish());
                acc.usage()
            })
        });
    }
    g.finish();
}

fn body(c: &mut Criterion) {
    let mut g = c.benchmark_group("inspect_body");
    for size in [10 * 1024, 1 << 20] {
        let text = "lorem ipsum dolor ".repeat(size / 18 + 1);
        let v = serde_json::json!({"model": "gpt-4o", "stream": true, "max_tokens": 512,
            "messages": [{"role": "user", "content": &text[..size]}]});
        let body = Bytes::from(serde_json::to_vec(&v).unwrap());
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| inspect(Some(ApiKind::OpenAiChat), body.clone()).unwrap())
        });
    }
    g.finish();
}

fn routes(c: &mut Criterion) {
    let mut yaml = String::from("pools:\n  - name: p\n    provider: openai\n    endpoints: [{url: 'http://127.0.0.1:1', keys: [{env: K}]}]\nroutes:\n");
    for i in 0..1000 {
        yaml.push_str(&format!("  - {{name: r{i}, match: {{path_prefix: /t{i}/v1, model: 'model-{i}-*'}}, pools: [p]}}\n"));
    }
    let snap = compile(&parse(&yaml).unwrap(), Secrets::Skip).unwrap();
    let req =
        pingora_http::RequestHeader::build("POST", b"/t999/v1/chat/completions", None).unwrap();
    c.bench_function("route_match_1000_routes_last", |b| {
        b.iter(|| {
            snap.route(
                black_box("/t999/v1/chat/completions"),
                Some("model-999-x"),
                &req,
            )
            .is_some()
        })
    });
}

/// With `HOT_PATHS_COUNT=N` and `HOT_PATHS_ONLY=<case>`, run that case's body exactly N times
/// outside criterion and exit: `perf stat -e instructions:u` of N vs 0 gives instructions per
/// iteration, steadier than wall time on a shared machine.
fn counted(case: &str, mut body: impl FnMut()) {
    if std::env::var("HOT_PATHS_ONLY").as_deref() != Ok(case) {
        return;
    }
    let n: u64 = std::env::var("HOT_PATHS_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for _ in 0..n {
        body();
    }
    std::process::exit(0);
}

fn limits(c: &mut Criterion) {
    let yaml = "tenants:\n  list:\n    - name: t\n      limits: {requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, max_concurrent: 1000000}\n    - name: free\n";
    let snap = compile(&parse(yaml).unwrap(), Secrets::Skip).unwrap();
    let limiter = Arc::new(Limiter::default());
    let limits = snap.tenant_limits("t").unwrap().clone();
    let tenant: sluice::config::TenantId = Arc::from("t");
    let ask = Ask {
        tenant: &tenant,
        model: Some("gpt-4o"),
        prompt_tokens: 1200,
        output_ceiling: 512,
        cost_ceiling_usd: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    counted("limits_admit_settle_rpm_tpm_concurrency", || {
        rt.block_on(limiter.admit(&limits, ask))
            .unwrap()
            .settle(1100, 300, None)
    });
    c.bench_function("limits_admit_settle_rpm_tpm_concurrency", |b| {
        b.iter(|| {
            rt.block_on(limiter.admit(&limits, ask))
                .unwrap()
                .settle(1100, 300, None)
        })
    });
    shared_limits(c, &rt);
    // Every local limit on, tenant-wide and for the request's model (typed keys: no key
    // formatted per request).
    let yaml = "tenants:\n  list:\n    - name: t\n      limits:\n        requests_per_second: 1000000000\n        requests_per_minute: 1000000000\n        tokens_per_minute: 1000000000000\n        input_tokens_per_minute: 1000000000000\n        output_tokens_per_minute: 1000000000000\n        max_concurrent: 1000000\n        models: [{model: 'gpt-4o*', requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, max_concurrent: 1000000}]\n";
    let snap_all = compile(&parse(yaml).unwrap(), Secrets::Skip).unwrap();
    let limits_all = snap_all.tenant_limits("t").unwrap().clone();
    let ask_all = Ask {
        tenant: &tenant,
        model: Some("gpt-4o"),
        prompt_tokens: 1200,
        output_ceiling: 512,
        cost_ceiling_usd: None,
    };
    counted("limits_admit_settle_every_local_limit_and_model", || {
        rt.block_on(limiter.admit(&limits_all, ask_all))
            .unwrap()
            .settle(1100, 300, None)
    });
    c.bench_function("limits_admit_settle_every_local_limit_and_model", |b| {
        b.iter(|| {
            rt.block_on(limiter.admit(&limits_all, ask_all))
                .unwrap()
                .settle(1100, 300, None)
        })
    });
    c.bench_function("limits_absent_lookup", |b| {
        b.iter(|| snap.tenant_limits(black_box("free")).is_none())
    });
}

/// The same admit + settle with `limits.store: redis` against a local redis-server (started on
/// a free port by `tests/support`'s launcher, stopped on return; skipped with a message when
/// the binary is missing). Most admissions are served from the leased slice; the difference
/// to the local store is the added latency.
fn shared_limits(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let Ok(redis) = support::Redis::try_start() else {
        eprintln!("redis-server not found: skipping limits_admit_settle_redis_store");
        return;
    };
    let yaml = format!("limits:\n  store: redis\n  redis: {{url: \"{}\"}}\ntenants:\n  list:\n    - name: t\n      limits: {{requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, max_concurrent: 1000000}}\n", redis.url());
    let snap = compile(&parse(&yaml).unwrap(), Secrets::Skip).unwrap();
    let store = sluice::limits::shared::SharedStore::new(snap.redis.as_ref().unwrap()).unwrap();
    let limiter = Arc::new(Limiter::new(Some(Arc::new(store))));
    let limits = snap.tenant_limits("t").unwrap().clone();
    let tenant: sluice::config::TenantId = Arc::from("t");
    let ask = Ask {
        tenant: &tenant,
        model: Some("gpt-4o"),
        prompt_tokens: 1200,
        output_ceiling: 512,
        cost_ceiling_usd: None,
    };
    c.bench_function("limits_admit_settle_redis_store", |b| {
        b.iter(|| {
            rt.block_on(limiter.admit(&limits, ask))
                .unwrap()
                .settle(1100, 300, None)
        })
    });
}

fn tokens(c: &mut Criterion) {
    estimate::preload();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(100);
    let mut g = c.benchmark_group("estimate_tokens");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("o200k_4500_bytes", |b| {
        b.iter(|| estimate::count_tokens("gpt-4o", black_box(&text)))
    });
    g.bench_function("cl100k_4500_bytes", |b| {
        b.iter(|| estimate::count_tokens("gpt-4", black_box(&text)))
    });
    g.finish();
}

/// The log redaction every formatted line goes through (src/logging.rs): the per-request
/// access line (nothing to redact) and a Pingora debug header dump (three redactions).
fn redaction(c: &mut Criterion) {
    sluice::logging::remember(["sk-bench-provider-key-0123456789"]);
    let access = "2026-11-29T16:00:00.000000Z  INFO sluice::access: request request_id=5f0c6d2e-8c1b-4d8e-9a57-2f1f2b0c9d11 tenant=team-a route=chat pool=openai endpoint=api.openai.com:443 model=gpt-4o-mini status=200 stream=true prompt_tokens=1200 completion_tokens=350 cached_tokens=0 reasoning_tokens=0 token_source=\"exact\" cost_usd=0.00039 ttft_ms=412.310 duration_ms=2210.004 completed=true attempts=openai/api.openai.com:443:200:ok client_disconnected=false error=\"\"\n";
    let dump = "2026-11-29T16:00:00.000000Z DEBUG pingora_proxy::proxy_h1: Sending header to upstream RequestHeader { base: Parts { method: POST, uri: /v1/chat/completions, version: HTTP/1.1, headers: {\"host\": \"api.openai.com\", \"authorization\": \"Bearer sk-bench-provider-key-0123456789\", \"content-type\": \"application/json\", \"x-api-key\": \"vk\", \"content-length\": \"1234\"} } }\n";
    counted("log_redaction_access_line", || {
        black_box(sluice::logging::redact(black_box(access)).len());
    });
    let mut g = c.benchmark_group("log_redaction");
    g.bench_function("access_line", |b| {
        b.iter(|| sluice::logging::redact(black_box(access)).len())
    });
    g.bench_function("pingora_header_dump", |b| {
        b.iter(|| sluice::logging::redact(black_box(dump)).len())
    });
    g.finish();
}

/// One access line (src/access_log.rs) in each log format, into a sink, redaction included:
/// through tracing-subscriber's formatter (`tracing::info!` with the fields and the `format!`s
/// the logging stage used to make) and written directly.
fn access_line(c: &mut Criterion) {
    use sluice::access_log::{render, AccessLine};
    use sluice::config::schema::LogFormat;
    use sluice::proxy::ctx::AttemptRecord;
    use std::time::Duration;
    let attempts = vec![AttemptRecord {
        pool: Arc::from("openai"),
        endpoint: "api.openai.com:443".to_owned(),
        status: 200,
        outcome: "ok",
    }];
    let line = AccessLine {
        request_id: "5f0c6d2e-8c1b-4d8e-9a57-2f1f2b0c9d11",
        tenant: "team-a",
        route: "chat",
        pool: "openai",
        endpoint: "api.openai.com:443",
        model: "gpt-4o-mini",
        status: 200,
        stream: true,
        prompt_tokens: 1200,
        completion_tokens: 350,
        cached_tokens: 0,
        reasoning_tokens: 0,
        token_source: "exact",
        cost_usd: 0.00039,
        ttft: Some(Duration::from_micros(412_310)),
        held: None,
        duration: Duration::from_micros(2_210_004),
        completed: true,
        attempts: &attempts,
        client_disconnected: false,
        error: "",
        resumes: 0,
        legs: &[],
        coalesced: "",
        cache: "",
        input_hash: "",
    };
    /// The subscriber's writer in src/logging.rs, into a sink.
    struct Redacting;
    impl std::io::Write for Redacting {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let text = String::from_utf8_lossy(b);
            std::io::sink().write_all(sluice::logging::redact(&text).as_bytes())?;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut g = c.benchmark_group("access_line");
    for format in [LogFormat::Text, LogFormat::Json] {
        let name = if format == LogFormat::Json {
            "json"
        } else {
            "text"
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,sluice::access=info",
            ))
            .with_writer(|| Redacting)
            .with_ansi(false);
        let sub: Box<dyn tracing::Subscriber + Send + Sync> = match format {
            LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
            LogFormat::Text => Box::new(builder.finish()),
        };
        tracing::subscriber::with_default(sub, || {
            let old = || {
                let l = black_box(&line);
                let mut attempts = String::new();
                for (i, a) in l.attempts.iter().enumerate() {
                    use std::fmt::Write;
                    let sep = if i == 0 { "" } else { "," };
                    let _ = write!(
                        attempts,
                        "{sep}{}/{}:{}:{}",
                        a.pool, a.endpoint, a.status, a.outcome
                    );
                }
                let model = l.model.to_owned();
                tracing::info!(
                    target: "sluice::access",
                    request_id = %l.request_id,
                    tenant = l.tenant,
                    route = l.route,
                    pool = l.pool,
                    endpoint = l.endpoint,
                    model = %model,
                    status = l.status,
                    stream = l.stream,
                    prompt_tokens = l.prompt_tokens,
                    completion_tokens = l.completion_tokens,
                    cached_tokens = l.cached_tokens,
                    reasoning_tokens = l.reasoning_tokens,
                    token_source = l.token_source,
                    cost_usd = l.cost_usd,
                    ttft_ms = %l.ttft.map_or_else(|| "-".to_owned(), |t| format!("{:.3}", t.as_secs_f64() * 1e3)),
                    duration_ms = %format!("{:.3}", l.duration.as_secs_f64() * 1e3),
                    completed = l.completed,
                    attempts = %attempts,
                    client_disconnected = l.client_disconnected,
                    error = l.error,
                    "request"
                );
            };
            counted(&format!("access_line_{name}_tracing_formatter"), old);
            g.bench_function(format!("{name}_tracing_formatter"), |b| b.iter(old));
            let mut buf = Vec::new();
            counted(&format!("access_line_{name}_direct"), || {
                if tracing::enabled!(target: "sluice::access", tracing::Level::INFO) {
                    render(&mut buf, format, black_box(&line), &mut std::io::sink()).unwrap();
                }
            });
            g.bench_function(format!("{name}_direct"), |b| {
                b.iter(|| {
                    if tracing::enabled!(target: "sluice::access", tracing::Level::INFO) {
                        render(&mut buf, format, black_box(&line), &mut std::io::sink()).unwrap();
                    }
                })
            });
        });
    }
    g.finish();
}

/// `x-ratelimit-*` on a response (both windows limited): formatted per response as the
/// proxy did (`to_string`, `reset_format`), and `RateHeaders::write_to`. Both arms build the
/// response header too.
fn rate_limit_headers(c: &mut Criterion) {
    use sluice::error::{limit_header, remaining_header, reset_format, reset_header};
    use sluice::limits::RateHeaders;
    use std::time::Duration;
    let headers = RateHeaders {
        requests: Some((1_000, 997, Duration::from_millis(41_250))),
        tokens: Some((400_000, 351_488, Duration::from_millis(41_250))),
    };
    let mut g = c.benchmark_group("rate_limit_headers");
    g.bench_function("header_only", |b| {
        b.iter(|| pingora_http::ResponseHeader::build(200, Some(8)).unwrap())
    });
    let old = || {
        let mut h = pingora_http::ResponseHeader::build(200, Some(8)).unwrap();
        for (kind, v) in [("requests", headers.requests), ("tokens", headers.tokens)] {
            if let Some((limit, remaining, reset)) = black_box(v) {
                h.insert_header(limit_header(kind), limit.to_string())
                    .unwrap();
                h.insert_header(remaining_header(kind), remaining.to_string())
                    .unwrap();
                h.insert_header(reset_header(kind), reset_format(reset))
                    .unwrap();
            }
        }
        h
    };
    let new = || {
        let mut h = pingora_http::ResponseHeader::build(200, Some(8)).unwrap();
        black_box(&headers).write_to(&mut h).unwrap();
        h
    };
    counted("rate_limit_headers_formatted_per_response", || drop(old()));
    counted("rate_limit_headers_write_to", || drop(new()));
    g.bench_function("formatted_per_response", |b| b.iter(old));
    g.bench_function("write_to", |b| b.iter(new));
    g.finish();
}

/// What a metric update costs by label lookup (`with_label_values`, as the request path
/// does) and through a handle kept from an earlier lookup.
fn metric_labels(c: &mut Criterion) {
    use sluice::metrics::{REQUESTS, TENANT_IN_FLIGHT};
    counted("metric_labels_with_label_values_4_labels", || {
        REQUESTS
            .with_label_values(black_box(&["chat", "openai", "gpt-4o-mini", "2xx"]))
            .inc()
    });
    counted("metric_labels_model_label", || {
        black_box(sluice::metrics::model_label(black_box(Some("gpt-4o-mini"))));
    });
    counted("metric_labels_model_label_ref", || {
        black_box(sluice::metrics::model_label_ref(black_box(Some(
            "gpt-4o-mini",
        ))));
    });
    let kept = REQUESTS.with_label_values(&["chat", "openai", "gpt-4o-mini", "2xx"]);
    counted("metric_labels_handle", || black_box(&kept).inc());
    let mut g = c.benchmark_group("metric_labels");
    g.bench_function("with_label_values_4_labels", |b| {
        b.iter(|| {
            REQUESTS
                .with_label_values(black_box(&["chat", "openai", "gpt-4o-mini", "2xx"]))
                .inc()
        })
    });
    g.bench_function("with_label_values_1_label", |b| {
        b.iter(|| {
            TENANT_IN_FLIGHT
                .with_label_values(black_box(&["team-a"]))
                .inc()
        })
    });
    g.bench_function("model_label_seen_model", |b| {
        b.iter(|| sluice::metrics::model_label(black_box(Some("gpt-4o-mini"))))
    });
    let handle = REQUESTS.with_label_values(&["chat", "openai", "gpt-4o-mini", "2xx"]);
    g.bench_function("handle", |b| b.iter(|| black_box(&handle).inc()));
    g.finish();
}

/// The response cache: a request's key (its body in canonical form, hashed), a memory-tier
/// lookup (hit, miss) among 10,000 entries, an insert
/// (evictions included, once full), a hit's replayed stream (fresh id and `created`; with the
/// usage chunk hidden, as for a client that did not ask for it), and a miss's recording and
/// store of a whole streamed answer (the check that it is complete included). The stream is
/// llmock's chat capture with `include_usage` (tests/fixtures/openai_chat).
fn cache(c: &mut Criterion) {
    use sluice::cache::record::Recorder;
    use sluice::cache::{replay, Entry, Key, Store};
    use sluice::config::cache::{CacheSettings, CacheStoreKind};
    use std::time::Duration;
    let stream = fixture("openai_chat/llmock_include_usage.sse");
    let id = String::from_utf8_lossy(&stream)
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned);
    let store = Arc::new(Store::new(&CacheSettings {
        max_bytes: 64 << 20,
        max_entry_bytes: 1 << 20,
        max_flight_bytes: 1 << 20,
        max_flight_lag: std::time::Duration::from_secs(1),
        max_flights_total_bytes: 1 << 20,
        admission_keys: 65536,
        admin_purge: false,
        admin_purge_token_sha256: None,
        redis: None,
    }));
    let key = |i: u64| {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&i.to_be_bytes());
        Key(k)
    };
    let entry = Entry {
        sse: true,
        content_type: "text/event-stream".to_owned(),
        body: stream.clone(),
        id,
        usage: Default::default(),
        stored_at_ms: 0,
    };
    let ttl = Duration::from_secs(300);
    let memory = CacheStoreKind::Memory;
    for i in 0..10_000 {
        store.put(key(i), entry.clone(), ttl, memory);
    }
    let mut g = c.benchmark_group("cache");
    g.bench_function("lookup_hit", |b| {
        b.iter(|| store.get_memory(black_box(&key(1234))))
    });
    g.bench_function("lookup_miss", |b| {
        b.iter(|| store.get_memory(black_box(&key(u64::MAX))))
    });
    let mut n = 1_000_000u64;
    g.bench_function("insert", |b| {
        b.iter(|| {
            n += 1;
            store.put(key(n), entry.clone(), ttl, memory)
        })
    });
    // The key of the bench-load request (`benches/load/client.rs`, ~230 B): body parsed,
    // canonicalized and hashed with the route, scope, path and version headers.
    let request = Bytes::from_static(
        br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello to the benchmark in one short sentence. #000000000042"}],"max_tokens":64}"#,
    );
    let headers = http::HeaderMap::new();
    // The digest of a canonical text with the bench-load request's route, scope and path.
    let digest = |text: &[u8]| {
        sluice::cache::key::compute(
            sluice::cache::key::Scope {
                route: "chat",
                tenant: Some("bench"),
            },
            "POST",
            "/v1/chat/completions",
            &headers,
            text,
            false,
        )
    };
    g.bench_function("key_of_request", |b| {
        b.iter(|| {
            let body = sluice::cache::canonical::of(black_box(&request)).unwrap();
            let key = digest(&body.text);
            (key, sluice::cache::Intent::of(&headers, body.deterministic))
        })
    });
    // Its two parts apart: the canonical text, and the digest of it with the rest.
    g.bench_function("canonical_of_request", |b| {
        b.iter(|| sluice::cache::canonical::of(black_box(&request)).unwrap())
    });
    let text = sluice::cache::canonical::of(&request).unwrap().text;
    g.bench_function("digest_of_request", |b| b.iter(|| digest(black_box(&text))));
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function("replay_stream", |b| {
        b.iter(|| replay::for_client(black_box(&entry), ApiKind::OpenAiChat, false, 1 << 20))
    });
    g.bench_function("replay_stream_usage_hidden", |b| {
        b.iter(|| replay::for_client(black_box(&entry), ApiKind::OpenAiChat, true, 1 << 20))
    });
    let mut header = pingora_http::ResponseHeader::build(200, Some(2)).unwrap();
    header
        .insert_header("content-type", "text/event-stream")
        .unwrap();
    // What the relay's accountant reports of that stream as it relays it.
    let delivered = sluice::proxy::ctx::Delivered {
        status: 200,
        completed: true,
        stream_whole: true,
        usage: Some(sluice::usage::Usage {
            prompt_tokens: 5,
            completion_tokens: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    g.bench_function("record_and_store_stream", |b| {
        b.iter(|| {
            n += 1;
            let mut r = Recorder::new(
                store.clone(),
                key(n),
                ttl,
                memory,
                Arc::from("chat"),
                ApiKind::OpenAiChat,
                sluice::config::Accounting::default(),
            )
            .begin(&header, None)
            .unwrap();
            r.push(black_box(&stream));
            r.finish(&delivered);
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    cache,
    sse,
    sse_per_event,
    body,
    routes,
    limits,
    tokens,
    redaction,
    access_line,
    rate_limit_headers,
    metric_labels
);
criterion_main!(benches);
