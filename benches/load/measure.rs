//! One arm measured: every phase of a round ([`measure_arm`]: CPU per request, max RPS,
//! latency sequential and open loop, streams), open streams held for memory
//! ([`hold_streams`]), and sluice's start-to-ready ([`measure_startup`]).
use crate::arms::{sluice_config, Arm, Kind, PLAIN_ROUTE_HEADER, VARIANT_ROUTE_HEADER};
use crate::client::{chat_request, get, with_header};
use crate::load::{
    closed_count, closed_for, open_loop, open_stream, sequential, streams, wait_until,
};
use crate::opts::plan;
use crate::procs::{client_core, cpu, mem_kib, set_affinity, signal, taskset, tree};
use crate::report::{median, num, Metrics};
use crate::support::launch::readyz;
use crate::support::net::free_port;
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The upstream's `GET /_stats` counters (`Null` when unreachable).
pub async fn upstream_stats(up: SocketAddr) -> Value {
    match get(up, "/_stats").await {
        Some((200, b)) => serde_json::from_str(&b).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Every phase for one arm in one round.
pub async fn measure_arm(
    arm: &Arm,
    up: SocketAddr,
    up_pid: u32,
    quick: bool,
    clk_tck: f64,
    first: bool,
    proxy_core: u32,
) -> Metrics {
    let slow = arm.kind == Kind::Litellm;
    let p = plan(quick, slow);
    let to = Duration::from_secs(if slow { 60 } else { 10 });
    let req = chat_request(arm.addr, &arm.auth, false, "");
    let sreq = chat_request(arm.addr, &arm.auth, true, "");
    let mut m = Metrics::new();
    let mut errors = 0.0;
    let snap = || {
        let (t, ns) = arm.pid.map(cpu).unwrap_or((0, 0));
        let (ut, uns) = cpu(up_pid);
        (t, ns, ut, uns)
    };

    // warm-up
    let w = sequential(
        arm.addr,
        &req,
        if first { p.warmup * 2 } else { p.warmup },
        to,
    )
    .await;
    errors += w.errors as f64;

    // CPU per request over a fixed count
    let before = snap();
    let st0 = upstream_stats(up).await;
    let (ok, err, secs) = closed_count(arm.addr, &req, p.cpu_conns, p.cpu_requests, to).await;
    let st1 = upstream_stats(up).await;
    let after = snap();
    errors += err as f64;
    let n = ok.max(1) as f64;
    if arm.pid.is_some() {
        m.insert(
            "cpu_us_per_req".into(),
            (after.0 - before.0) as f64 / clk_tck * 1e6 / n,
        );
        m.insert(
            "cpu_sched_us_per_req".into(),
            (after.1 - before.1) as f64 / 1e3 / n,
        );
    }
    m.insert(
        "upstream_cpu_us_per_req".into(),
        (after.3 - before.3) as f64 / 1e3 / n,
    );
    m.insert("cpu_phase_rps".into(), ok as f64 / secs);
    let injected =
        st1["injected_key"].as_f64().unwrap_or(0.0) - st0["injected_key"].as_f64().unwrap_or(0.0);
    let upstream_reqs = st1["chat"].as_f64().unwrap_or(0.0) - st0["chat"].as_f64().unwrap_or(0.0);
    m.insert("upstream_requests_in_cpu_phase".into(), upstream_reqs);
    m.insert("upstream_injected_key_in_cpu_phase".into(), injected);
    let conns =
        st1["connections"].as_f64().unwrap_or(0.0) - st0["connections"].as_f64().unwrap_or(0.0);
    // The two /_stats calls themselves open one connection each.
    m.insert(
        "upstream_conns_per_1k_req".into(),
        (conns - 1.0).max(0.0) * 1000.0 / n,
    );

    // max RPS
    let (rps, err) = closed_for(arm.addr, &req, p.rps_conns, p.rps_secs, to).await;
    errors += err as f64;
    m.insert("max_rps".into(), rps);

    // sequential latency
    let before = snap();
    let mut lat = sequential(arm.addr, &req, p.seq_requests, to).await;
    let after = snap();
    errors += lat.errors as f64;
    m.insert("seq_p50_us".into(), lat.p(0.50));
    m.insert("seq_p99_us".into(), lat.p(0.99));
    if arm.pid.is_some() {
        m.insert(
            "seq_cpu_us_per_req".into(),
            (after.1 - before.1) as f64 / 1e3 / lat.ns.len().max(1) as f64,
        );
    }

    // The same, with the proxy moved onto the load generator's core for the phase: no
    // cross-core wake-ups (what the pinned figure pays on each of its 4 hops).
    let pids = arm.pid.map(tree).unwrap_or_default();
    set_affinity(&pids, client_core());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut lat = sequential(arm.addr, &req, p.seq_requests, to).await;
    set_affinity(&pids, proxy_core);
    errors += lat.errors as f64;
    m.insert("seq_samecore_p50_us".into(), lat.p(0.50));
    m.insert("seq_samecore_p99_us".into(), lat.p(0.99));

    // open loop
    for rate in p.open_rates.clone() {
        let key = format!("open{}", rate as u64);
        if rps < rate * 1.5 {
            continue; // not sustainable on one worker: not measured
        }
        let before = snap();
        let (mut lat, achieved) =
            open_loop(arm.addr, &req, rate, p.open_secs, p.open_conns, to).await;
        let after = snap();
        errors += lat.errors as f64;
        m.insert(format!("{key}_p50_us"), lat.p(0.50));
        m.insert(format!("{key}_p99_us"), lat.p(0.99));
        m.insert(format!("{key}_achieved_rps"), achieved);
        if arm.pid.is_some() {
            m.insert(
                format!("{key}_cpu_us_per_req"),
                (after.1 - before.1) as f64 / 1e3 / lat.ns.len().max(1) as f64,
            );
        }
    }

    // streams
    let (mut ttft, mut total) = streams(arm.addr, &sreq, p.streams, to).await;
    errors += ttft.errors as f64;
    m.insert("ttft_p50_us".into(), ttft.p(0.50));
    m.insert("ttft_p99_us".into(), ttft.p(0.99));
    m.insert("stream_total_p50_us".into(), total.p(0.50));
    m.insert("stream_total_p99_us".into(), total.p(0.99));
    m.insert("errors".into(), errors);
    m
}

/// Hold `n` slow streams open through one arm; RSS of its process tree before, at n/2 and at n.
pub async fn hold_streams(arm: &Arm, up: SocketAddr, n: usize) -> Value {
    let Some(pid) = arm.pid else {
        return Value::Null;
    };
    // Each stream: first chunk at once, then the upstream holds it for up to 10 minutes.
    let req = chat_request(arm.addr, &arm.auth, true, "?chunks=2&gap_ms=600000");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = mem_kib(pid).0;
    let t = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(n);
    let mut errors = 0usize;
    let mut rss_half = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while held.len() + errors < n && Instant::now() < deadline {
        let batch = (n - held.len() - errors).min(250);
        let res = join_all((0..batch).map(|_| async {
            tokio::time::timeout(Duration::from_secs(20), open_stream(arm.addr, &req)).await
        }))
        .await;
        for r in res {
            match r {
                Ok(Ok(s)) => held.push(s),
                _ => errors += 1,
            }
        }
        if rss_half == 0 && held.len() >= n / 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            rss_half = mem_kib(pid).0;
        }
        if errors > n / 10 {
            break;
        }
    }
    let ramp_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, hwm) = mem_kib(pid);
    let up_open = upstream_stats(up).await["open_streams"]
        .as_u64()
        .unwrap_or(0);
    let k = held.len();
    let half_count = n / 2;
    drop(held);
    // Wait for the proxy to close its upstream legs.
    let closed = wait_until(Duration::from_secs(30), || async move {
        upstream_stats(up).await["open_streams"].as_u64() == Some(0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = mem_kib(pid).0;
    json!({
        "requested": n,
        "held": k,
        "errors": errors,
        "upstream_open_streams_seen": up_open,
        "ramp_s": num(ramp_s),
        "rss_before_kib": rss0,
        "rss_half_kib": rss_half,
        "rss_with_streams_kib": rss1,
        "hwm_kib": hwm,
        "rss_after_close_kib": rss_after,
        "upstream_legs_closed_within_30s": closed,
        "bytes_per_stream": num(if k > 0 { (rss1 as f64 - rss0 as f64) * 1024.0 / k as f64 } else { f64::NAN }),
        "slope_bytes_per_stream": num(if k > half_count && rss_half > 0 { (rss1 as f64 - rss_half as f64) * 1024.0 / (k - half_count) as f64 } else { f64::NAN }),
    })
}

/// Exec to the first `/readyz` 200, `runs` times (the approach of scripts/measure_startup.py).
pub async fn measure_startup(
    bin: &Path,
    dir: &Path,
    up: SocketAddr,
    core: u32,
    runs: usize,
    env: &dyn Fn(&mut Command),
) -> Value {
    let mut ms = Vec::new();
    let mut idle_rss = 0;
    let mut errors = Vec::new();
    for i in 0..runs {
        let (port, admin) = (free_port(), free_port());
        let cfg_dir = dir.join(format!("startup-{i}"));
        let _ = std::fs::create_dir_all(&cfg_dir);
        let cfg = cfg_dir.join("sluice.yaml");
        if std::fs::write(&cfg, sluice_config(port, admin, up.port())).is_err() {
            continue;
        }
        let mut c = taskset(core, bin);
        c.arg("run")
            .arg("-c")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        env(&mut c);
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
        let t = Instant::now();
        let Ok(mut child) = c.spawn() else {
            errors.push("spawn failed".to_string());
            continue;
        };
        let mut ok = false;
        while t.elapsed() < Duration::from_secs(10) {
            // Blocking on purpose: poll every 0.5 ms like measure_startup.py.
            if readyz(&admin_addr.to_string()) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let el = t.elapsed().as_secs_f64() * 1000.0;
        if ok {
            ms.push(el);
            idle_rss = mem_kib(child.id()).0;
        } else {
            errors.push(format!("run {i}: not ready in 10 s"));
        }
        signal("TERM", &[child.id()]);
        let t2 = Instant::now();
        while t2.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "runs": ms.len(),
        "median_ms": num(median(&ms)),
        "min_ms": num(ms.first().copied().unwrap_or(f64::NAN)),
        "max_ms": num(ms.last().copied().unwrap_or(f64::NAN)),
        "all_ms": ms.iter().map(|x| num(*x)).collect::<Vec<_>>(),
        "idle_rss_kib": idle_rss,
        "errors": errors,
        "method": format!("taskset -c {core} sluice run -c CFG (bench config); poll GET /readyz every 0.5 ms; includes taskset's own exec"),
    })
}

/// On-CPU nanoseconds of `arm`'s process tree (schedstat: exact, not sampled at clock ticks).
fn on_cpu_ns(arm: &Arm) -> u64 {
    arm.pid.map_or(0, |p| cpu(p).1)
}

/// CPU per request of the sluice arm `base` and its config variant `variant`, measured in
/// `blocks` pairs of closed-loop blocks of `per_block` requests each (8 connections), the two
/// alternating A B B A A B ... so that what the machine's neighbours do to one block they do
/// to the adjacent block of the other arm. Each block runs with only its own arm running (the
/// others SIGSTOPped when `pause`). Returns (base µs/req, variant µs/req, errors); the ratio of
/// the two sums is what `paired_cpu_ratio` reports.
pub async fn paired_cpu(
    arms: &[Arm],
    base: usize,
    variant: usize,
    blocks: usize,
    per_block: u64,
    pause: bool,
) -> (f64, f64, u64) {
    let to = Duration::from_secs(10);
    let (mut ns, mut ok, mut errors) = ([0u64; 2], [0u64; 2], 0u64);
    for b in 0..blocks * 2 {
        // A B B A A B B A ...: each arm goes first in half of the pairs.
        let which = usize::from((b + b / 2) % 2 == 1);
        let idx = [base, variant][which];
        let arm = &arms[idx];
        crate::rounds::pause_all(arms, Some(idx), pause);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let req = chat_request(arm.addr, &arm.auth, false, "");
        let before = on_cpu_ns(arm);
        let (o, e, _) = closed_count(arm.addr, &req, 8, per_block, to).await;
        ns[which] += on_cpu_ns(arm) - before;
        ok[which] += o;
        errors += e;
    }
    let per = |w: usize| ns[w] as f64 / 1e3 / ok[w].max(1) as f64;
    (per(0), per(1), errors)
}

/// What [`route_pair_cpu`] measured: µs of CPU per request on the `plain` route and on the
/// variant's route (means over the blocks), the median over the pairs of their ratio, and
/// the requests that failed.
pub struct RoutePair {
    pub plain_us: f64,
    pub variant_us: f64,
    pub ratio: f64,
    pub errors: u64,
}

/// The request [`route_pair_cpu`] sends to both routes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PairLoad {
    /// The workload's non-streamed chat request, 8 connections: the figure the targets read.
    Json,
    /// The same request streamed (`--paired-stream`): 20 chunks 1 ms apart plus the usage
    /// chunk and `[DONE]` ([`STREAM_PAIR_QUERY`]), [`STREAM_PAIR_CONNS`] connections so that
    /// the paced streams keep the proxy busy. Each chunk is read and written on its own, as
    /// a live LLM stream is, so this is the per-request CPU of streamed traffic.
    Stream,
}

/// The upstream's pacing of a [`PairLoad::Stream`] request (`benches/load/upstream.rs`).
pub const STREAM_PAIR_QUERY: &str = "?chunks=20&gap_ms=1";
/// Connections of a [`PairLoad::Stream`] block: a stream takes about 21 ms, so 64 of them
/// offer about 3,000 requests a second, more than one proxy core serves.
pub const STREAM_PAIR_CONNS: usize = 64;

/// CPU per request of a config variant's route against its `plain` route (the same route
/// without the feature, [`crate::arms::sluice_variant_config`]) in the variant arm's own
/// process: `pairs` pairs of closed-loop blocks of `per_block` requests each (8 connections),
/// one block to each route, alternating A B B A ... so that each route goes first in half of
/// the pairs. One process for both removes what differs between two processes of the same
/// config (their memory layout, measured at up to 7%); short blocks close together put both
/// halves of a pair under the same neighbours; the median of the pairs' ratios leaves out a
/// pair that a burst on the machine hit. Only `idx` runs (the others SIGSTOPped when `pause`).
pub async fn route_pair_cpu(
    arms: &[Arm],
    idx: usize,
    pairs: usize,
    per_block: u64,
    pause: bool,
    load: PairLoad,
) -> RoutePair {
    let arm = &arms[idx];
    let to = Duration::from_secs(10);
    crate::rounds::pause_all(arms, Some(idx), pause);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (stream, query, conns) = match load {
        PairLoad::Json => (false, "", 8),
        PairLoad::Stream => (true, STREAM_PAIR_QUERY, STREAM_PAIR_CONNS),
    };
    let request = chat_request(arm.addr, &arm.auth, stream, query);
    let plain = with_header(&request, PLAIN_ROUTE_HEADER);
    let variant = with_header(&request, VARIANT_ROUTE_HEADER);
    let (mut us, mut ratios, mut errors) = ([0f64; 2], Vec::with_capacity(pairs), 0u64);
    for p in 0..pairs {
        let mut pair = [0f64; 2];
        for k in 0..2 {
            let which = if p % 2 == 0 { k } else { 1 - k };
            let req = if which == 0 { &plain } else { &variant };
            let before = on_cpu_ns(arm);
            let (o, e, _) = closed_count(arm.addr, req, conns, per_block, to).await;
            pair[which] = (on_cpu_ns(arm) - before) as f64 / 1e3 / o.max(1) as f64;
            errors += e;
        }
        us[0] += pair[0] / pairs as f64;
        us[1] += pair[1] / pairs as f64;
        ratios.push(pair[1] / pair[0]);
    }
    RoutePair {
        plain_us: us[0],
        variant_us: us[1],
        ratio: median(&ratios),
        errors,
    }
}
