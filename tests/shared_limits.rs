//! Limits shared across replicas through Redis: 4 sluice processes, one tenant, one limit.
//! Starts its own `redis-server` (Debian package) on a port it picked, and stops it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{free_port, Mock, Sluice};
use futures_util::future::join_all;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");

/// A redis-server on 127.0.0.1:port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not installed: `make test` installs the Debian package");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }
    fn start() -> Redis {
        Self::start_on(free_port())
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    /// `INFO commandstats` calls of EVALSHA + EVAL.
    fn script_calls(&self) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "commandstats"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(mock: &Mock, store: &str, limits: &str, extra: &str) -> String {
    format!(
        r#"pools:
  - name: p
    provider: openai
    endpoints: [{{url: "{}", keys: [{{env: SLUICE_TEST_KEY}}]}}]
routes:
  - {{name: main, match: {{path_prefix: /v1}}, pools: [p]}}
limits:
{store}
tenants:
  default: t
  list:
    - name: t
      limits: {limits}
{extra}"#,
        mock.url()
    )
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
    let mut spend = 0.0;
    for s in &replicas {
        spend += s.metric("sluice_spend_usd_total", &[("tenant", "t")]).await;
    }
    eprintln!(
        "budget: {ok} admitted, {refused} refused, spend ${spend:.5} of $0.02 across 4 replicas"
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
