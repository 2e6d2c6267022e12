//! Hot reload through the kubelet's ConfigMap update algorithm (new timestamped directory,
//! `..data_tmp` symlink, atomic rename over `..data`), bad configs rejected without dropping
//! traffic, limit counters surviving reloads, and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Mock, Sluice};

const KEY_ENV: (&str, &str) = ("SLUICE_TEST_KEY", "sk-real-upstream-key");

/// The kubelet's atomic writer for a ConfigMap volume: `sluice.yaml -> ..data/sluice.yaml`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped dir, points `..data_tmp` at
/// it and renames `..data_tmp` over `..data`, then removes the old dir.
struct Kubelet {
    dir: PathBuf,
    version: u32,
    current: Option<PathBuf>,
}

impl Kubelet {
    fn new(dir: &Path) -> Kubelet {
        Kubelet {
            dir: dir.to_owned(),
            version: 0,
            current: None,
        }
    }

    fn publish(&mut self, text: &str) {
        self.version += 1;
        let ts = format!(
            "..2026_11_21_19_00_{:02}.{}",
            self.version,
            std::process::id()
        );
        let ts_dir = self.dir.join(&ts);
        std::fs::create_dir(&ts_dir).unwrap();
        std::fs::write(ts_dir.join("sluice.yaml"), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if self.current.is_none() {
            symlink("..data/sluice.yaml", self.dir.join("sluice.yaml")).unwrap();
        }
        if let Some(old) = self.current.replace(ts_dir) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("sluice.yaml")
    }
}

fn config(listeners: &str, mock: &Mock, extra: &str) -> String {
    format!(
        "{listeners}reload: {{poll_interval_ms: 60000}}\nserver: {{drain_timeout_seconds: 3}}\npools:\n  - name: p\n    provider: openai\n    endpoints: [{{url: \"{}\", keys: [{{env: SLUICE_TEST_KEY}}]}}]\nroutes:\n  - {{name: main, match: {{path_prefix: /v1}}, pools: [p]}}\n{extra}",
        mock.url()
    )
}

fn start(kubelet: &mut Kubelet, first: impl Fn(&str) -> String) -> Sluice {
    let (proxy, admin) = Sluice::listeners();
    let listeners = Sluice::listeners_yaml(&proxy, &admin);
    kubelet.publish(&first(&listeners));
    Sluice::start_file(
        kubelet.dir.clone(),
        &kubelet.path(),
        &proxy,
        &admin,
        &[KEY_ENV],
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_configmap_swaps_take_effect_within_2s_with_no_failed_request_under_load() {
    let mocks = [
        Mock::start().await,
        Mock::start().await,
        Mock::start().await,
        Mock::start().await,
    ];
    let dir = Sluice::temp_dir();
    let mut kubelet = Kubelet::new(&dir);
    let s = start(&mut kubelet, |l| config(l, &mocks[0], ""));
    let listeners = Sluice::listeners_yaml(
        s.proxy.trim_start_matches("http://"),
        s.admin.trim_start_matches("http://"),
    );

    // Steady load: over 200 requests/s (one every 4 ms), alternating inspected and passthrough.
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (ok, failed, stop, proxy) = (ok.clone(), failed.clone(), stop.clone(), s.proxy.clone());
        tokio::spawn(async move {
            let c = client();
            let mut tick = tokio::time::interval(Duration::from_millis(4));
            let mut i = 0u64;
            let mut inflight = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                let req = if i % 2 == 0 {
                    c.post(format!("{proxy}/v1/chat/completions"))
                        .json(&serde_json::json!({"model": "gpt-4o", "messages": []}))
                } else {
                    c.get(format!("{proxy}/v1/models"))
                };
                let (ok, failed) = (ok.clone(), failed.clone());
                inflight.push(tokio::spawn(async move {
                    match req.send().await {
                        Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }));
            }
            for h in inflight {
                let _ = h.await;
            }
        })
    };
    let load_start = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (k, mock) in mocks.iter().enumerate().skip(1) {
        let before = mock.requests().len();
        assert_eq!(before, 0);
        kubelet.publish(&config(&listeners, mock, &format!("# version {k}\n")));
        let took = wait_for("new config in force", Duration::from_secs(2), || {
            !mock.requests().is_empty()
        })
        .await;
        eprintln!("swap {k}: new upstream reached {took:?} after the ..data rename");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let rate = (ok + failed) as f64 / load_start.elapsed().as_secs_f64();
    eprintln!("load during swaps: {ok} ok, {failed} failed, {rate:.0} req/s");
    assert!(ok > 200, "load generator too slow: {ok}");
    assert_eq!(failed, 0, "requests failed during reloads\n{}", s.log());
    assert_eq!(
        s.metric("sluice_config_reload_total", &[("result", "success")])
            .await,
        3.0
    );
    assert!(s.log().contains("config reloaded"));
}

#[tokio::test]
async fn invalid_configs_are_rejected_and_the_old_one_keeps_serving() {
    let mock = Mock::start().await;
    let other = Mock::start().await;
    let dir = Sluice::temp_dir();
    let mut kubelet = Kubelet::new(&dir);
    let s = start(&mut kubelet, |l| config(l, &mock, ""));
    let listeners = Sluice::listeners_yaml(
        s.proxy.trim_start_matches("http://"),
        s.admin.trim_start_matches("http://"),
    );
    let hash_before = s.metric("sluice_config_hash", &[]).await;
    let bad_yaml = format!("{}routes: [\n", config(&listeners, &other, ""));
    let unknown_pool = config(&listeners, &other, "").replace("pools: [p]", "pools: [azure]");
    for (n, (bad, why)) in [
        (bad_yaml, "invalid YAML"),
        (unknown_pool, "routes[0].pools[0]: unknown pool \"azure\""),
    ]
    .into_iter()
    .enumerate()
    {
        kubelet.publish(&bad);
        let failures = s
            .wait_metric(
                "sluice_config_reload_total",
                &[("result", "failure")],
                |v| v >= (n + 1) as f64,
            )
            .await;
        assert_eq!(failures, (n + 1) as f64);
        // The error line is written just after the metric: poll for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s.log().contains(why) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(s.log().contains(why), "log lacks {why:?}:\n{}", s.log());
        // Traffic continues on the old config.
        let r = client()
            .post(format!("{}/v1/chat/completions", s.proxy))
            .json(&serde_json::json!({"model": "m"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(mock.requests().len(), 2);
    assert!(other.requests().is_empty());
    assert_eq!(s.metric("sluice_config_hash", &[]).await, hash_before);
    assert_eq!(
        s.metric("sluice_config_reload_total", &[("result", "success")])
            .await,
        0.0
    );
}

#[tokio::test]
async fn limit_counters_survive_an_unrelated_reload() {
    let mock = Mock::start().await;
    let dir = Sluice::temp_dir();
    let mut kubelet = Kubelet::new(&dir);
    let tenants =
        "tenants:\n  default: t\n  list:\n    - name: t\n      limits: {requests_per_minute: 10}\n";
    let s = start(&mut kubelet, |l| config(l, &mock, tenants));
    let listeners = Sluice::listeners_yaml(
        s.proxy.trim_start_matches("http://"),
        s.admin.trim_start_matches("http://"),
    );
    let send = || {
        client()
            .post(format!("{}/v1/chat/completions", s.proxy))
            .json(&serde_json::json!({"model": "m"}))
            .send()
    };
    for _ in 0..9 {
        assert_eq!(send().await.unwrap().status(), 200);
    }
    // An unrelated change: a new route.
    let changed = config(&listeners, &mock, tenants).replace(
        "routes:\n",
        "routes:\n  - {name: extra, match: {path_prefix: /v2}, pools: [p]}\n",
    );
    kubelet.publish(&changed);
    s.wait_metric(
        "sluice_config_reload_total",
        &[("result", "success")],
        |v| v >= 1.0,
    )
    .await;
    let tenth = send().await.unwrap();
    assert_eq!(tenth.status(), 200);
    assert_eq!(
        tenth.headers()["x-ratelimit-remaining-requests"],
        "0",
        "still 10/10 after the reload"
    );
    assert_eq!(send().await.unwrap().status(), 429);
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains_then_exits() {
    let mock = Mock::start().await;
    let other = Mock::start().await;
    let dir = Sluice::temp_dir();
    let path = dir.join("sluice.yaml");
    let (proxy, admin) = Sluice::listeners();
    let listeners = Sluice::listeners_yaml(&proxy, &admin);
    // Watch off and a long poll: only SIGHUP can reload.
    let text = |m: &Mock| {
        config(&listeners, m, "").replace(
            "reload: {poll_interval_ms: 60000}",
            "reload: {watch: false, poll_interval_ms: 60000}",
        )
    };
    std::fs::write(&path, text(&mock)).unwrap();
    let mut s = Sluice::start_file(dir.clone(), &path, &proxy, &admin, &[KEY_ENV]);
    std::fs::write(&path, text(&other)).unwrap();
    s.signal("HUP");
    s.wait_metric(
        "sluice_config_reload_total",
        &[("result", "success")],
        |v| v >= 1.0,
    )
    .await;
    let r = client()
        .post(format!("{}/v1/chat/completions", s.proxy))
        .json(&serde_json::json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(other.requests().len(), 1);

    // A stream in flight when SIGTERM arrives keeps flowing; readiness goes down at once.
    let mut stream = client()
        .post(format!("{}/v1/slow/chat/completions", s.proxy))
        .json(&serde_json::json!({"model": "m", "stream": true}))
        .send()
        .await
        .unwrap();
    assert!(stream.chunk().await.unwrap().is_some());
    s.signal("TERM");
    let ready_off = wait_for("readiness off", Duration::from_secs(1), || {
        std::net::TcpStream::connect(s.admin.trim_start_matches("http://"))
            .map(|mut c| {
                use std::io::{Read, Write};
                let _ =
                    c.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = c.read_to_string(&mut out);
                !out.contains(" 200 ")
            })
            .unwrap_or(true)
    })
    .await;
    eprintln!("readiness off {ready_off:?} after SIGTERM");
    let mut chunks_after_term = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(500) {
        if stream.chunk().await.unwrap_or(None).is_some() {
            chunks_after_term += 1;
        }
    }
    assert!(
        chunks_after_term >= 5,
        "in-flight stream stalled after SIGTERM ({chunks_after_term} chunks)"
    );
    // Drain deadline 3 s, then exit.
    let status = s
        .wait_exit(Duration::from_secs(10))
        .expect("sluice did not exit after the drain deadline");
    eprintln!("exited {status:?}");
}

/// A proxy address another process listens on: sluice exits at once, non-zero, saying so
/// (Pingora alone would retry for 30 s and then leave the process up without its proxy
/// listener, with `/readyz` answered through the other process's port).
#[test]
fn a_taken_proxy_address_is_refused_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = taken.local_addr().unwrap().to_string();
    let (_, admin) = Sluice::listeners();
    let dir = Sluice::temp_dir();
    let path = dir.join("sluice.yaml");
    std::fs::write(
        &path,
        format!(
            "{}pools:\n  - name: p\n    provider: openai\n    endpoints: [{{url: 'http://127.0.0.1:9', keys: [{{env: SLUICE_TEST_KEY}}]}}]\nroutes:\n  - name: r\n    match: {{path_prefix: /v1}}\n    pools: [p]\n",
            Sluice::listeners_yaml(&proxy, &admin)
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let out = std::process::Command::new(support::sluice_bin())
        .args(["run", "-c"])
        .arg(&path)
        .env(KEY_ENV.0, KEY_ENV.1)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let elapsed = t0.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "sluice ran on a taken address: {log}"
    );
    assert!(log.contains("proxy listener: cannot bind"), "{log}");
    // Well before Pingora's 30 s of retries.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(
        !support::readyz(&admin),
        "the admin listener outlived the refusal"
    );
    drop(taken);
}

#[tokio::test]
async fn sigint_exits_at_once() {
    let mock = Mock::start().await;
    let mut s = Sluice::start(&config("", &mock, ""), &[KEY_ENV]);
    let t0 = Instant::now();
    s.signal("INT");
    assert!(
        s.wait_exit(Duration::from_secs(2)).is_some(),
        "still running after SIGINT"
    );
    eprintln!("SIGINT exit took {:?}", t0.elapsed());
}

#[tokio::test]
async fn a_rotated_key_file_is_picked_up_without_a_config_change() {
    let mock = Mock::start().await;
    let dir = Sluice::temp_dir();
    let secrets = dir.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let key = secrets.join("openai-api-key");
    std::fs::write(&key, "sk-old\n").unwrap();
    let conf_dir = dir.join("config");
    std::fs::create_dir(&conf_dir).unwrap();
    let mut kubelet = Kubelet::new(&conf_dir);
    let key_path = key.display().to_string();
    let s = start(&mut kubelet, |l| {
        config(l, &mock, "").replace(
            "{env: SLUICE_TEST_KEY}",
            &format!("{{file: \"{key_path}\"}}"),
        )
    });
    let send = || {
        client()
            .post(format!("{}/v1/chat/completions", s.proxy))
            .json(&serde_json::json!({"model": "m"}))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    std::fs::write(&key, "sk-new\n").unwrap();
    s.wait_metric(
        "sluice_config_reload_total",
        &[("result", "success")],
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(send().await.unwrap().status(), 200);
    let auth: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert_eq!(auth, vec!["Bearer sk-old", "Bearer sk-new"]);
    assert!(
        !s.log().contains("sk-new") && !s.log().contains("sk-old"),
        "a key reached the log"
    );
}

/// One request on a new connection to the admin listener; the status code, or None when
/// nothing answered (refused or closed).
fn admin_get(admin: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(admin.trim_start_matches("http://")).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn sigterm_with_20_streams_admin_answers_until_exit_and_late_streams_end_with_an_error_event()
{
    let mock = Mock::start().await;
    let text =
        config("", &mock, "").replace("drain_timeout_seconds: 3", "drain_timeout_seconds: 2");
    let mut s = Sluice::start(&text, &[KEY_ENV]);
    // 20 streams of ~8 s each (the mock's /slow paces 400 events 20 ms apart): all outlive
    // the 2 s drain deadline.
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut r = client()
            .post(format!("{}/v1/slow/chat/completions", s.proxy))
            .json(&serde_json::json!({"model": "m", "stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.chunk().await.unwrap().is_some());
        streams.push(r);
    }
    s.signal("TERM");
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                let mut body = Vec::new();
                while let Ok(Some(c)) = r.chunk().await {
                    body.extend_from_slice(&c);
                }
                String::from_utf8_lossy(&body).into_owned()
            })
        })
        .collect();
    let admin_url = s.admin.clone();
    let u = admin_url.clone();
    wait_for("readiness off", Duration::from_secs(1), move || {
        admin_get(&u, "/readyz") == Some(503)
    })
    .await;
    // Probe the admin listener on new connections until the process exits.
    let (mut probes, mut metrics_ok) = (0, 0);
    let t0 = Instant::now();
    let exit = loop {
        if let Some(st) = s.wait_exit(Duration::from_millis(1)) {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM: {}",
            s.log()
        );
        let (u, p) = (admin_url.clone(), admin_url.clone());
        let ready = tokio::task::spawn_blocking(move || admin_get(&u, "/readyz"))
            .await
            .unwrap();
        let metrics = tokio::task::spawn_blocking(move || admin_get(&p, "/metrics"))
            .await
            .unwrap();
        match (ready, metrics) {
            (Some(r), Some(m)) => {
                assert_eq!(r, 503, "/readyz during the drain");
                assert_eq!(m, 200, "/metrics during the drain");
                probes += 1;
                metrics_ok += 1;
            }
            // Nothing answered: only acceptable because the process is exiting right now.
            _ => assert!(
                s.wait_exit(Duration::from_secs(2)).is_some(),
                "admin listener stopped answering before the process exited"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "exited {exit:?} after {:?}; {probes} readiness probes answered 503, {metrics_ok} scrapes 200",
        t0.elapsed()
    );
    assert!(
        probes >= 10,
        "only {probes} probes answered during a 2 s drain"
    );
    for r in readers {
        let body = r.await.unwrap();
        let last = body.trim_end().rsplit("\n\n").next().unwrap_or("");
        assert!(
            last.starts_with("data: {\"error\"") && last.contains("shutting_down"),
            "a stream past the drain deadline must end with a native error event, ended with {last:?}"
        );
        assert!(body.contains("tok5 "), "the stream flowed during the drain");
    }
}
