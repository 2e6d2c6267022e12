//! The admin listener's profiling endpoints (`debug.profiling`): a CPU profile taken under
//! load is a gzip-compressed pprof `profile.proto` (decoded here with the message types the
//! `pprof` crate generates from google/pprof's published `profile.proto`) naming sluice's own
//! functions; the admin listener answers meanwhile; a second profile is refused; bad `seconds`
//! are a 400; off by default; never on the proxy listener; jemalloc statistics as JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use pprof::protos::Message;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{client, Config, Mock, Pool, Route, Sluice, Tenant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");
const VK: &str = "sk-app-virtual-key";
const PROFILING: &str = "debug: {profiling: true}";

/// One OpenAI pool on `mock`, one route, one tenant; `extra` merged at the top level.
fn config(mock: &Mock, extra: &str) -> String {
    Config::new()
        .pool(Pool::openai("oa", &mock.url()))
        .route(Route::prefix("chat", "/v1", &["oa"]))
        .tenant(Tenant::new("team-a").virtual_key(VK))
        .yaml(extra)
        .to_yaml()
}

/// `workers` tasks sending chat completions (streamed and not) through the proxy until `stop`;
/// each success counted in `done`, anything else in `failed`.
fn load(s: &Sluice, workers: usize, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> Arc<AtomicU64> {
    let failed = Arc::new(AtomicU64::new(0));
    for i in 0..workers {
        let (url, stop, done, failed) = (
            format!("{}/v1/chat/completions", s.proxy),
            stop.clone(),
            done.clone(),
            failed.clone(),
        );
        tokio::spawn(async move {
            let c = client();
            // Bounded: at most this many requests per worker even if `stop` never comes.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = serde_json::json!({
                    "model": "gpt-4o-mini",
                    "stream": i % 2 == 0,
                    "messages": [{"role": "user", "content": "profile me"}],
                });
                let resp = c.post(&url).bearer_auth(VK).json(&body).send().await;
                let ok = match resp {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let counter = if ok { &done } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    failed
}

/// Gunzip and decode a pprof profile.
fn decode(body: &[u8]) -> pprof::protos::Profile {
    assert_eq!(&body[..2], &[0x1f, 0x8b], "not gzip");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut raw)
        .unwrap();
    pprof::protos::Profile::parse_from_bytes(&raw).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_profile_under_load_names_sluice_functions_and_the_admin_listener_keeps_answering() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, PROFILING), &[KEY_ENV]);
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let failed = load(&s, 8, stop.clone(), done.clone());

    let url = format!("{}/debug/pprof/profile?seconds=2", s.admin);
    let asked = std::time::Instant::now();
    let profile = tokio::spawn({
        let url = url.clone();
        async move {
            let r = client().get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let disposition = r
                .headers()
                .get("content-disposition")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, disposition, r.bytes().await.unwrap().to_vec())
        }
    });
    // While the profile is being taken: a second one is refused at once, and the admin
    // listener still answers its probes and scrapes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = client().get(&url).send().await.unwrap();
    assert_eq!(second.status(), 409);
    assert!(second.text().await.unwrap().contains("already"));
    let ready = client()
        .get(format!("{}/readyz", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = client()
        .get(format!("{}/metrics", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("sluice_requests_total"));
    assert!(
        !profile.is_finished(),
        "the profile ended before the probes"
    );

    let (status, disposition, body) = profile.await.unwrap();
    let took = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        disposition.as_deref(),
        Some("attachment; filename=\"profile\"")
    );
    assert!(done.load(Ordering::Relaxed) > 0, "no request went through");
    // SIGPROF interrupts the proxy's threads 99 times a second of CPU: no request may fail.
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while profiling"
    );

    let p = decode(&body);
    let name = |i: i64| p.string_table[usize::try_from(i).unwrap()].as_str();
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (name(t.ty), name(t.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert!(!p.sample.is_empty(), "no samples");
    let sampled: i64 = p.sample.iter().map(|s| s.value[0]).sum();
    assert!(sampled > 0);
    let functions: Vec<&str> = p.function.iter().map(|f| name(f.name)).collect();
    let ours: Vec<&&str> = functions
        .iter()
        .filter(|f| f.starts_with("sluice::"))
        .collect();
    assert!(
        !ours.is_empty(),
        "no sluice:: function among {} functions",
        functions.len()
    );
    // Measured, not asserted (timing belongs in benches).
    eprintln!(
        "profile: answered in {:.2} s for seconds=2, {} gzip bytes, {} samples ({} stacks), \
         {} functions of which {} sluice::, {} requests served meanwhile",
        took.as_secs_f64(),
        body.len(),
        sampled,
        p.sample.len(),
        functions.len(),
        ours.len(),
        done.load(Ordering::Relaxed)
    );
    // The profile is free again.
    let after = client()
        .get(format!("{}/debug/pprof/profile?seconds=1", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
}

#[tokio::test]
async fn profiling_is_off_by_default_on_by_reload_and_never_on_the_proxy_listener() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, ""), &[KEY_ENV]);
    let get = |url: String| async move { client().get(url).send().await.unwrap() };
    for path in ["/debug/pprof/profile?seconds=1", "/debug/allocator"] {
        assert_eq!(
            get(format!("{}{path}", s.admin)).await.status(),
            404,
            "{path}"
        );
    }

    s.reload(&config(&mock, PROFILING)).await;
    let stats = get(format!("{}/debug/allocator", s.admin)).await;
    assert_eq!(stats.status(), 200);
    let stats: serde_json::Value = stats.json().await.unwrap();
    assert_eq!(stats["allocator"], "jemalloc");
    for field in [
        "allocated_bytes",
        "active_bytes",
        "resident_bytes",
        "mapped_bytes",
        "retained_bytes",
        "metadata_bytes",
    ] {
        assert!(stats[field].is_u64(), "{field}: {stats}");
    }
    // The binary's allocator is jemalloc: it holds what sluice allocated.
    assert!(stats["allocated_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["resident_bytes"].as_u64() >= stats["allocated_bytes"].as_u64());

    for bad in ["0", "-1", "abc", "2.5", "21", "100000"] {
        let r = get(format!("{}/debug/pprof/profile?seconds={bad}", s.admin)).await;
        assert_eq!(r.status(), 400, "seconds={bad}");
        assert!(
            r.text().await.unwrap().contains("from 1 to 20"),
            "seconds={bad}"
        );
    }

    // The proxy listener serves apps only: /debug/* is no route there, with or without a key.
    for path in ["/debug/pprof/profile?seconds=1", "/debug/allocator"] {
        for auth in [None, Some(VK)] {
            let mut req = client().get(format!("{}{path}", s.proxy));
            if let Some(k) = auth {
                req = req.bearer_auth(k);
            }
            let r = req.send().await.unwrap();
            assert!(r.status().is_client_error(), "{path}: {}", r.status());
            let body = r.bytes().await.unwrap();
            assert!(!body.starts_with(&[0x1f, 0x8b]), "{path}: a profile");
            assert!(!body.windows(9).any(|w| w == b"allocated"), "{path}: stats");
        }
    }
    assert!(
        mock.requests().is_empty(),
        "a /debug request reached the upstream"
    );

    // Off again by reload.
    s.reload(&config(&mock, "")).await;
    assert_eq!(
        get(format!("{}/debug/allocator", s.admin)).await.status(),
        404
    );
}
