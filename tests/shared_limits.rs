//! Limits shared across replicas through Redis: 4 sluice processes, one tenant, one limit.
//! Starts its own `redis-server` (Debian package) on a port it picked, and stops it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures_util::future::join_all;
use std::time::{Duration, Instant};
use support::{
    free_port, write_atomically, Config, DelayProxy, Mock, Pool, Redis, Route, Sluice, Tenant,
};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");

fn config(mock: &Mock, store: &str, limits: &str, extra: &str) -> String {
    Config::new()
        .pool(Pool::openai("p", &mock.url()))
        .route(Route::prefix("main", "/v1", &["p"]))
        .yaml_at(&["limits"], store)
        .yaml("tenants: {default: t}")
        .tenant(Tenant::new("t").limits(limits))
        .yaml(extra)
        .to_yaml()
}

fn redis_store(r: &Redis, policy: &str) -> String {
    format!("  store: redis\n  redis: {{url: \"{}\", timeout_ms: 100, expected_replicas: 4, failure_policy: {policy}}}", r.url())
}

/// Stay clear of a minute boundary: the test's requests must fall in one window.
async fn start_of_a_minute_window() {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        % 60_000;
    if ms > 40_000 {
        tokio::time::sleep(Duration::from_millis(60_500 - ms)).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Send `n` requests spread over `proxies` with 16 in flight; returns (admitted, refused).
async fn drive(proxies: &[String], n: usize, body: serde_json::Value) -> (usize, usize) {
    let c = client();
    let mut ok = 0;
    let mut refused = 0;
    for batch in (0..n).collect::<Vec<_>>().chunks(16) {
        let reqs = batch.iter().map(|i| {
            c.post(format!(
                "{}/v1/chat/completions",
                proxies[i % proxies.len()]
            ))
            .json(&body)
            .send()
        });
        for r in join_all(reqs).await {
            match r.unwrap().status().as_u16() {
                200 => ok += 1,
                429 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    (ok, refused)
}

#[tokio::test]
async fn four_replicas_share_one_requests_per_minute_limit() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let body = serde_json::json!({"model": "gpt-4o", "messages": []});
    start_of_a_minute_window().await;
    let shared: Vec<Sluice> = (0..4)
        .map(|_| {
            Sluice::start(
                &config(
                    &mock,
                    &redis_store(&redis, "open"),
                    "{requests_per_minute: 600}",
                    "",
                ),
                &[KEY_ENV],
            )
        })
        .collect();
    let proxies: Vec<String> = shared.iter().map(|s| s.proxy.clone()).collect();
    let (ok_shared, refused) = drive(&proxies, 1200, body.clone()).await;
    eprintln!("store redis: {ok_shared} admitted, {refused} refused of 1200 across 4 replicas (limit 600/min)");
    assert!(ok_shared <= 600, "admitted {ok_shared} > 600");
    assert!(
        ok_shared >= 540,
        "admitted only {ok_shared}: quota stranded"
    );
    drop(shared);

    start_of_a_minute_window().await;
    let local: Vec<Sluice> = (0..4)
        .map(|_| {
            Sluice::start(
                &config(&mock, "  store: local", "{requests_per_minute: 600}", ""),
                &[KEY_ENV],
            )
        })
        .collect();
    let proxies: Vec<String> = local.iter().map(|s| s.proxy.clone()).collect();
    let (ok_local, _) = drive(&proxies, 3000, body).await;
    eprintln!("store local: {ok_local} admitted of 3000 across 4 replicas (limit 600/min each)");
    assert_eq!(ok_local, 2400, "each replica admits its own 600");
}

#[tokio::test]
async fn tokens_and_budget_hold_across_replicas() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    start_of_a_minute_window().await;
    // Tokens: 5,000/min shared; each stream reserves ~520 and settles 17 + 500 exactly.
    let replicas: Vec<Sluice> = (0..4)
        .map(|_| {
            Sluice::start(
                &config(
                    &mock,
                    &redis_store(&redis, "open"),
                    "{tokens_per_minute: 5000}",
                    "",
                ),
                &[KEY_ENV],
            )
        })
        .collect();
    let proxies: Vec<String> = replicas.iter().map(|s| s.proxy.clone()).collect();
    let body = serde_json::json!({"model": "gpt-4o", "stream": true, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]});
    let (ok, _) = drive(&proxies, 40, body).await;
    let settled: u64 = mock
        .requests()
        .iter()
        .map(|r| 17 + r.json()["max_tokens"].as_u64().unwrap())
        .sum();
    let mut reserved = 0.0;
    for s in &replicas {
        reserved += s
            .metric("sluice_tokens_reserved_total", &[("tenant", "t")])
            .await;
    }
    let largest = reserved / ok.max(1) as f64;
    eprintln!("tokens: {ok} streams admitted across 4 replicas, {settled} tokens settled (limit 5000, largest reservation {largest:.0})");
    assert!(
        ok >= 1 && settled as f64 <= 5000.0 + largest,
        "settled {settled}"
    );
    drop(replicas);

    // Budget: $0.02/day shared; each request costs about $0.0032 (17 + 4 tokens at $150/1M).
    let models = "models:\n  - match: \"gpt-*\"\n    max_output_tokens: 4\n    price: {input_per_1m: 150.0, output_per_1m: 150.0}\n";
    let replicas: Vec<Sluice> = (0..4)
        .map(|_| {
            Sluice::start(
                &config(
                    &mock,
                    &redis_store(&redis, "open"),
                    "{budget: {usd_per_day: 0.02}}",
                    models,
                ),
                &[KEY_ENV],
            )
        })
        .collect();
    let proxies: Vec<String> = replicas.iter().map(|s| s.proxy.clone()).collect();
    let before = mock.requests().len();
    let (ok, refused) = drive(&proxies, 64, serde_json::json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).await;
    let (mut spend, mut fallbacks) = (0.0, 0.0);
    for s in &replicas {
        spend += s.metric("sluice_spend_usd_total", &[("tenant", "t")]).await;
        fallbacks += s.metric("sluice_redis_fallbacks_total", &[]).await;
    }
    eprintln!(
        "budget: {ok} admitted, {refused} refused, spend ${spend:.5} of $0.02 across 4 replicas ({fallbacks} admissions without Redis)"
    );
    assert_eq!(mock.requests().len() - before, ok);
    assert!(refused > 0 && ok >= 3);
    assert!(spend <= 0.02 + 1e-9, "spend {spend} over the shared budget");
    drop(replicas);
    // Spend lives in Redis: a restarted sidecar still sees the budget spent.
    let fresh = Sluice::start(
        &config(
            &mock,
            &redis_store(&redis, "open"),
            "{budget: {usd_per_day: 0.02}}",
            models,
        ),
        &[KEY_ENV],
    );
    let (ok, refused) = drive(
        std::slice::from_ref(&fresh.proxy),
        4,
        serde_json::json!({"model": "gpt-4o", "messages": []}),
    )
    .await;
    assert_eq!((ok, refused), (0, 4), "budget forgotten after restart");
}

#[tokio::test]
async fn round_trips_per_admitted_request_stay_under_a_tenth_at_500_rps() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let s = Sluice::start(
        &config(
            &mock,
            &redis_store(&redis, "open"),
            "{requests_per_minute: 1000000}",
            "",
        ),
        &[KEY_ENV],
    );
    let calls_before = redis.script_calls();
    let c = client();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let mut handles = Vec::new();
    let t0 = Instant::now();
    for _ in 0..1500 {
        tick.tick().await;
        let req = c
            .post(format!("{}/v1/chat/completions", s.proxy))
            .json(&serde_json::json!({"model": "gpt-4o", "messages": []}));
        handles.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    let statuses = join_all(handles).await;
    let rate = 1500.0 / t0.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|s| matches!(s, Ok(200))).count();
    // The metric first: a background slice return between the two reads only adds to Redis.
    let counted = s.metric("sluice_redis_round_trips_total", &[]).await as u64;
    let trips = redis.script_calls() - calls_before;
    let per = trips as f64 / admitted as f64;
    eprintln!("{admitted} admitted at {rate:.0} req/s, {trips} Redis round trips (INFO commandstats): {per:.4} per request");
    assert_eq!(admitted, 1500);
    assert!(per < 0.1, "{per} round trips per request");
    // Redis also counts the retry of each script's first EVALSHA after NOSCRIPT (2 scripts),
    // and returns made after the metric was read (at most one flush in between).
    assert!(
        counted <= trips && trips - counted <= 4,
        "metric {counted} vs redis {trips}"
    );
}

#[tokio::test]
async fn redis_outage_fail_open_and_fail_closed_then_sharing_resumes() {
    let port = free_port();
    let redis = Redis::start_on(port);
    let mock = Mock::start().await;
    let open = Sluice::start(
        &config(
            &mock,
            &redis_store(&redis, "open"),
            "{requests_per_minute: 100000}",
            "",
        ),
        &[KEY_ENV],
    );
    let closed = Sluice::start(
        &config(
            &mock,
            &redis_store(&redis, "closed"),
            "{requests_per_minute: 100000}",
            "",
        ),
        &[KEY_ENV],
    );
    let body = serde_json::json!({"model": "gpt-4o", "messages": []});
    assert_eq!(
        drive(
            &[open.proxy.clone(), closed.proxy.clone()],
            20,
            body.clone()
        )
        .await,
        (20, 0)
    );
    drop(redis);
    // Fail open: zero failures, local limits (100000 / 4 replicas) apply.
    let c = client();
    for _ in 0..50 {
        let r = c
            .post(format!("{}/v1/chat/completions", open.proxy))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        open.metric("sluice_redis_fallbacks_total", &[("policy", "open")])
            .await
            >= 1.0
    );
    // Fail closed: quota this replica already leased still serves (it is its own); once it
    // needs Redis, a native 503, within the configured timeout (plus local overhead).
    let mut served_from_slice = 0;
    loop {
        let r = c
            .post(format!("{}/v1/chat/completions", closed.proxy))
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert_eq!(r.status(), 200);
        served_from_slice += 1;
        assert!(served_from_slice < 100, "never failed closed");
    }
    eprintln!(
        "fail-closed replica served {served_from_slice} requests from its leased slice, then 503"
    );
    for _ in 0..5 {
        let t0 = Instant::now();
        let r = c
            .post(format!("{}/v1/chat/completions", closed.proxy))
            .json(&body)
            .send()
            .await
            .unwrap();
        let took = t0.elapsed();
        assert_eq!(r.status(), 503);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "limit_store_unavailable");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    // Redis back on the same port: sharing resumes without restarting sluice.
    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = c
            .post(format!("{}/v1/chat/completions", closed.proxy))
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "sharing did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// p-th percentile (0..=100) of `v`, in the unit of `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// `conc` clients each sending `each` requests in a row; returns every request's latency (ms)
/// and status.
async fn latencies(proxy: &str, conc: usize, each: usize) -> Vec<(f64, u16)> {
    let c = client();
    let body = serde_json::json!({"model": "gpt-4o", "messages": []});
    let clients = (0..conc).map(|_| {
        let (c, body, url) = (
            c.clone(),
            body.clone(),
            format!("{proxy}/v1/chat/completions"),
        );
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(each);
            for _ in 0..each {
                let t0 = Instant::now();
                let status = c
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                out.push((t0.elapsed().as_secs_f64() * 1000.0, status));
            }
            out
        })
    });
    join_all(clients)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect()
}

/// Redis killed, and Redis behind a relay that delays every reply by 300 ms: at 32 concurrent
/// requests, the p99 latency sluice adds stays within `timeout_ms` (50) + 20 ms of a healthy
/// Redis's p99, under both failure policies. `lease_ms: 1` keeps slices tiny, so about every
/// other request needs Redis. Three sluice processes (healthy, slow, dead Redis) are measured
/// in turn for 3 rounds; the median round is compared (the machine is shared and noisy).
#[tokio::test]
async fn a_dead_or_slow_redis_adds_at_most_timeout_ms_at_32_concurrent_requests() {
    const TIMEOUT_MS: f64 = 50.0;
    const CONC: usize = 32;
    const EACH: usize = 12;
    const ROUNDS: usize = 3;
    let mock = Mock::start().await;
    let store = |url: &str, policy: &str| {
        format!("  store: redis\n  redis: {{url: \"{url}\", timeout_ms: 50, expected_replicas: 1, lease_ms: 1, failure_policy: {policy}}}")
    };
    let limits = "{requests_per_minute: 1000000}";
    let ms = |run: &[(f64, u16)], admitted_only: bool| -> Vec<f64> {
        run.iter()
            .filter(|(_, s)| !admitted_only || *s == 200)
            .map(|(t, _)| *t)
            .collect()
    };
    for policy in ["open", "closed"] {
        let redis = Redis::start();
        let start =
            |url: &str| Sluice::start(&config(&mock, &store(url, policy), limits, ""), &[KEY_ENV]);
        let healthy = start(&redis.url());
        let relay = DelayProxy::start(redis.addr(), Duration::from_millis(300)).await;
        let slow = start(&format!("redis://{}", relay.addr));
        let dying = Redis::start();
        let dead = start(&dying.url());
        latencies(&healthy.proxy, 4, 5).await;
        latencies(&dead.proxy, 4, 5).await;
        drop(dying);
        // Per arm: (added p99 of each round, requests, refused).
        let mut added: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut refused = [0usize; 2];
        for round in 0..ROUNDS {
            let base = latencies(&healthy.proxy, CONC, EACH).await;
            // Fail closed refuses whatever a loaded machine makes slower than 50 ms, even with
            // a healthy Redis; fail open never refuses.
            let base_refused = base.iter().filter(|(_, s)| *s != 200).count();
            if policy == "open" {
                assert_eq!(base_refused, 0, "healthy Redis, fail open: refusals");
            } else if base_refused > 0 {
                eprintln!("policy {policy}, round {round}, healthy Redis: {base_refused} refused (a round trip over 50 ms)");
            }
            let base_p99 = percentile(&ms(&base, false), 99.0);
            for (i, (name, s)) in [("slow (300 ms)", &slow), ("killed", &dead)]
                .into_iter()
                .enumerate()
            {
                let run = latencies(&s.proxy, CONC, EACH).await;
                let all = ms(&run, false);
                let admitted = ms(&run, true);
                let p99 = percentile(&all, 99.0);
                let n_refused = run.iter().filter(|(_, s)| *s != 200).count();
                refused[i] += n_refused;
                added[i].push(p99 - base_p99);
                eprintln!(
                    "policy {policy}, round {round}, Redis {name}: {} requests at {CONC} concurrent, {} admitted, {n_refused} refused; p50 {:.1} ms, p99 {p99:.1} ms vs healthy p50 {:.1} ms, p99 {base_p99:.1} ms: added p99 {:.1} ms",
                    run.len(),
                    admitted.len(),
                    percentile(&all, 50.0),
                    percentile(&ms(&base, false), 50.0),
                    p99 - base_p99,
                );
                match policy {
                    "open" => assert_eq!(n_refused, 0, "fail open refused requests"),
                    _ => assert!(run.iter().all(|(_, s)| [200, 503].contains(s))),
                }
            }
        }
        for (i, (name, s)) in [("slow (300 ms)", &slow), ("killed", &dead)]
            .into_iter()
            .enumerate()
        {
            let errors = s.metric("sluice_redis_errors_total", &[]).await;
            let fallbacks = s.metric("sluice_redis_fallbacks_total", &[]).await;
            let median = percentile(&added[i], 50.0);
            eprintln!(
                "policy {policy}, Redis {name}: median added p99 {median:.1} ms over {ROUNDS} rounds ({} refused), {errors} Redis errors, {fallbacks} admissions without Redis",
                refused[i]
            );
            assert!(errors >= 1.0 && fallbacks >= 1.0, "Redis trouble never met");
            assert!(median <= TIMEOUT_MS + 20.0, "added p99 {:?}", added[i]);
        }
    }
}

/// 48 simultaneous requests on one replica lease at most `limit ÷ (4 × expected_replicas)`
/// beyond what they use; once Redis said the window is spent, a burst of 1,000 refusals
/// costs fewer than 10 round trips.
#[tokio::test]
async fn concurrent_requests_share_one_lease_and_a_spent_window_is_refused_locally() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    start_of_a_minute_window().await;
    // 192 per minute over 4 replicas: the cap per replica is 192 ÷ 16 = 12.
    let s = Sluice::start(
        &config(
            &mock,
            &redis_store(&redis, "open"),
            "{requests_per_minute: 192}",
            "",
        ),
        &[KEY_ENV],
    );
    let c = client();
    let body = serde_json::json!({"model": "gpt-4o", "messages": []});
    let reqs = (0..48).map(|_| {
        c.post(format!("{}/v1/chat/completions", s.proxy))
            .json(&body)
            .send()
    });
    let statuses: Vec<u16> = join_all(reqs)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let granted = s
        .metric("sluice_redis_leases_total", &[("kind", "granted")])
        .await as u64;
    let in_redis = redis.sum_keys("sluice:t:rpm:*");
    eprintln!("48 concurrent requests: {granted} units leased (Redis counts {in_redis}), cap 12 beyond use");
    assert!((48..=48 + 12).contains(&granted), "leased {granted}");
    assert!(in_redis <= 48 + 12, "Redis counts {in_redis}");

    // Spend the window, then a refused burst.
    let (ok, _) = drive(std::slice::from_ref(&s.proxy), 200, body.clone()).await;
    assert!(48 + ok <= 192, "admitted {} > 192", 48 + ok);
    let before = redis.script_calls();
    let t0 = Instant::now();
    let (ok, refused) = drive(std::slice::from_ref(&s.proxy), 1000, body).await;
    let trips = redis.script_calls() - before;
    eprintln!(
        "refused burst: {refused} refused, {ok} admitted in {:?}, {trips} Redis round trips",
        t0.elapsed()
    );
    assert_eq!((ok, refused), (0, 1000));
    assert!(trips < 10, "{trips} round trips for a refused burst");
}

#[tokio::test]
async fn settled_tokens_are_counted_with_the_shared_store() {
    let redis = Redis::start();
    let mock = Mock::start().await;
    let s = Sluice::start(
        &config(
            &mock,
            &redis_store(&redis, "open"),
            "{tokens_per_minute: 100000}",
            "",
        ),
        &[KEY_ENV],
    );
    let body = serde_json::json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let c = client();
    for _ in 0..2 {
        let r = c
            .post(format!("{}/v1/chat/completions", s.proxy))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    }
    // The mock reports 17 prompt + 4 completion tokens per stream.
    let settled = s
        .wait_metric("sluice_tokens_settled_total", &[("tenant", "t")], |v| {
            v >= 42.0
        })
        .await;
    assert_eq!(settled, 42.0, "{}", s.log());
}

/// `limits.store` is read at start: a reload that changes it keeps the running store, says so
/// in the log and in `sluice_config_reload_ignored_fields_total`, and applies the rest.
#[tokio::test]
async fn a_reload_changing_the_store_keeps_it_logs_counts_and_applies_the_rest() {
    let mock = Mock::start().await;
    let s = Sluice::start(
        &config(&mock, "  store: local", "{requests_per_minute: 1000}", ""),
        &[KEY_ENV],
    );
    let body = serde_json::json!({"model": "gpt-4o", "messages": []});
    assert_eq!(
        drive(std::slice::from_ref(&s.proxy), 3, body.clone()).await,
        (3, 0)
    );
    let (proxy, admin) = (
        s.proxy.trim_start_matches("http://"),
        s.admin.trim_start_matches("http://"),
    );
    let port = free_port();
    let next = config(
        &mock,
        &format!("  store: redis\n  redis: {{url: \"redis://127.0.0.1:{port}\"}}"),
        "{requests_per_minute: 4}",
        "",
    );
    write_atomically(
        &s.dir.join("sluice.yaml"),
        &format!("{}{next}", Sluice::listeners_yaml(proxy, admin)),
    );
    // The directory watch (or the checksum poll) picks it up: one reload.
    let ignored = s
        .wait_metric(
            "sluice_config_reload_ignored_fields_total",
            &[("field", "limits.store")],
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(ignored, 1.0);
    // The ignored field is counted while the reload is built, before the new snapshot is
    // stored; the success count comes after the store, so the new limit is in force by then.
    s.wait_metric(
        "sluice_config_reload_total",
        &[("result", "success")],
        |v| v >= 1.0,
    )
    .await;
    let log = s.wait_log("limits.store").await;
    assert!(log.contains("limits.store"), "no warning: {log}");
    // The new limit applies (the local store kept counting the 3 requests).
    assert_eq!(drive(std::slice::from_ref(&s.proxy), 3, body).await, (1, 2));
}
