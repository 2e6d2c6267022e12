//! Side-by-side load harness (issue 6): the same keep-alive HTTP/1.1 LLM workload through
//!
//! - `direct`  : straight to the local upstream (`bench_upstream`), the latency baseline;
//! - `bare`    : bare Pingora 0.9.1 passthrough (`bare_pingora`), the floor;
//! - `nginx`   : Debian nginx, one worker, `proxy_pass` to a keepalive upstream;
//! - `sluice`  : the release binary with every policy on (virtual key -> tenant, key injection,
//!   request/token/concurrency limits and budgets set too high to reject, usage parsing,
//!   metrics, one JSON log line per request to a file);
//! - `litellm` : LiteLLM proxy 1.106.2, one worker (skipped with a message when not installed).
//!
//! Rounds interleave the arms (A B C ... A B C ..., the start rotating each round); the arms
//! not under test are SIGSTOPped so they cannot steal the proxy core. Every proxy runs on core
//! `--proxy-core` (default 1) through `taskset`; this process (the load generator) and the
//! upstream run on the core `scripts/bench_load.sh` pinned it to (core 0).
//!
//! Usage: see `scripts/bench_load.sh` (it builds, installs the peers and pins the cores).
//! `bench_load [--rounds N] [--quick] [--arms direct,bare,nginx,sluice,litellm]
//!   [--bin-dir target/bench/bin] [--out-dir target/bench] [--litellm-venv DIR]
//!   [--hold-streams N] [--budget-s S] [--proxy-core C] [--no-hold] [--no-pause] [--paired-stream]
//!   [--extra-sluice NAME=PATH ...]`   (another sluice build as arm `sluice-NAME`, same config)
//! `bench_load --load-only ADDR [REQUESTS [STREAMS [CONNS]]]` (`BENCH_PLAIN=1`: the `plain` route, `0`: the variant's with the same headers) and
//! `bench_load --sluice-config PROXY_PORT ADMIN_PORT UPSTREAM_PORT [VARIANT]`: helpers for
//! scripts/bench_load_profile.sh.
//! `bench_load --pair-only ADDR PID [PAIRS [BLOCK]]`: the paired route CPU of a variant's
//! process started by hand (its route against its `plain` route), to try a change quickly.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

//! Modules: [`opts`] (flags, phase sizes), [`setup`] (upstream and arms started; [`peers`]:
//! nginx and LiteLLM), [`arms`]
//! (arm configs, smoke test), [`client`] (HTTP/1.1 client, the request), [`load`] (load
//! patterns), [`measure`] (one arm's phases, open streams, start-to-ready), [`rounds`]
//! (interleaved rounds, checks), [`procs`] (process trees, `/proc` CPU and memory),
//! [`report`] (statistics, targets, JSON), [`markdown`]; [`support`] is `tests/support`,
//! shared with the integration tests (free ports, readiness probe, config builder).

mod arms;
mod client;
mod load;
mod markdown;
mod measure;
mod opts;
mod peers;
mod procs;
mod report;
mod rounds;
mod setup;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use arms::{sluice_config, VIRTUAL_KEY};
use client::chat_request;
use load::{closed_count, streams};
use opts::{parse_opts, Opts};
use procs::{alive, tree};
use report::Results;
use setup::{bin, log, sluice_env};

// ------------------------------------------------------------------------------------------

/// A number drawn from the clock, where a run's request serials start (distinct requests
/// across runs).
fn clock_serial() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000_000)
}

/// The single-threaded runtime the load generator runs on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `bench_load --load-only ADDR [REQUESTS [STREAMS [CONNS]]]`: just send a fixed load (for
/// profiling a proxy under callgrind/perf: scripts/bench_load_profile.sh).
fn load_only(args: &[String]) -> i32 {
    let addr: SocketAddr = args
        .first()
        .and_then(|a| a.parse().ok())
        .expect("--load-only ADDR");
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let streams_n: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);
    let conns: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(8);
    let auth = std::env::var("BENCH_AUTH").unwrap_or_else(|_| VIRTUAL_KEY.to_string());
    // Distinct requests across runs: the serials start at BENCH_SERIAL_FROM, else at a
    // number drawn from the clock.
    client::serials_from(
        std::env::var("BENCH_SERIAL_FROM")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(clock_serial),
    );
    let rt = runtime();
    rt.block_on(async move {
        let to = Duration::from_secs(120);
        // BENCH_PLAIN=1: the variant config's `plain` route, BENCH_PLAIN=0 the variant's own
        // (a profile of the route without the feature, to set beside the variant's, with
        // the same headers as in the paired CPU phase).
        let mut req = chat_request(addr, &auth, false, "");
        match std::env::var("BENCH_PLAIN").as_deref() {
            Ok("1") => req = client::with_header(&req, arms::PLAIN_ROUTE_HEADER),
            Ok("0") => req = client::with_header(&req, arms::VARIANT_ROUTE_HEADER),
            _ => {}
        }
        let (ok, err, secs) = closed_count(addr, &req, conns, n, to).await;
        let (ttft, _) = streams(addr, &chat_request(addr, &auth, true, ""), streams_n, to).await;
        eprintln!(
            "load-only: {ok} ok / {err} errors in {secs:.2} s on {conns} connections; {} streams ok, {} failed",
            ttft.ns.len(),
            ttft.errors
        );
        i32::from(err > 0 || ttft.errors > 0)
    })
}

/// `bench_load --pair-only ADDR PID [PAIRS [BLOCK]]`: warm-up, then `PAIRS` (default 40)
/// pairs of `BLOCK`-request (default 1,500) JSON blocks to the variant route and its `plain`
/// route of the sluice process `PID` listening on `ADDR`, as the paired CPU phase runs them
/// ([`measure::route_pair_cpu`]); prints the median ratio and both routes' µs per request.
fn pair_only(args: &[String]) -> i32 {
    let addr: SocketAddr = args.first().and_then(|a| a.parse().ok()).expect("ADDR");
    let pid: u32 = args.get(1).and_then(|a| a.parse().ok()).expect("PID");
    let pairs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(40);
    let block: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1500);
    client::serials_from(clock_serial());
    let rt = runtime();
    rt.block_on(async move {
        let to = Duration::from_secs(10);
        let request = chat_request(addr, VIRTUAL_KEY, false, "");
        let plain = client::with_header(&request, arms::PLAIN_ROUTE_HEADER);
        let variant = client::with_header(&request, arms::VARIANT_ROUTE_HEADER);
        for req in [&plain, &variant] {
            closed_count(addr, req, 8, 3000, to).await;
        }
        let (mut ratios, mut us, mut errors) = (Vec::new(), [Vec::new(), Vec::new()], 0);
        for p in 0..pairs {
            let mut pair = [0f64; 2];
            for k in 0..2 {
                let which = if p % 2 == 0 { k } else { 1 - k };
                let req = if which == 0 { &plain } else { &variant };
                let before = procs::cpu(pid).1;
                let (ok, e, _) = closed_count(addr, req, 8, block, to).await;
                pair[which] = (procs::cpu(pid).1 - before) as f64 / 1e3 / ok.max(1) as f64;
                errors += e;
            }
            ratios.push(pair[1] / pair[0]);
            us[0].push(pair[0]);
            us[1].push(pair[1]);
        }
        let m = report::median;
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "ratio {:.3} (quartiles {:.3} / {:.3}); plain {:.1} µs/req, variant {:.1} µs/req; {errors} errors",
            m(&ratios),
            sorted[sorted.len() / 4],
            sorted[sorted.len() * 3 / 4],
            m(&us[0]),
            m(&us[1])
        );
        i32::from(errors > 0)
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--load-only") {
        std::process::exit(load_only(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some("--pair-only") {
        std::process::exit(pair_only(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some("--sluice-config") {
        // `bench_load --sluice-config PROXY_PORT ADMIN_PORT UPSTREAM_PORT [VARIANT]`: the bench config.
        let port = |i: usize| {
            argv.get(i)
                .and_then(|a| a.parse::<u16>().ok())
                .expect("ports")
        };
        // An optional fifth argument names a config variant (`--sluice-variants`), to
        // profile a route variant: requests without `x-bench-route: plain` take its route.
        let config = match argv.get(5) {
            Some(v) => arms::sluice_variant_config(v, port(2), port(3), port(4))
                .unwrap_or_else(|| panic!("unknown variant {v}")),
            None => sluice_config(port(2), port(3), port(4)),
        };
        print!("{config}");
        return;
    }
    let opts = parse_opts();
    let rt = runtime();
    let code = rt.block_on(async {
        tokio::select! {
            r = run(opts) => match r {
                Ok(()) => 0,
                Err(e) => { eprintln!("bench_load: {e}"); 1 }
            },
            _ = tokio::signal::ctrl_c() => { eprintln!("bench_load: interrupted"); 130 }
        }
    });
    // `run`'s Procs was dropped above: every child is stopped.
    std::process::exit(code);
}

/// One whole run: set up, rounds, open streams, start-to-ready, binary size, then everything
/// stopped and the report written (JSON and Markdown).
async fn run(opts: Opts) -> Result<(), String> {
    let mut s = setup::start(&opts).await?;
    let names: Vec<String> = s.arms.iter().map(|a| a.name.clone()).collect();
    log(s.t0, format!("arms: {}", names.join(", ")));
    let rounds = rounds::run(&opts, &mut s).await;
    // Peak RSS after the load rounds.
    let peak = rounds::rss_by_arm(&s.arms);
    let checks = rounds::checks(&s, &rounds.per_round).await;
    let hold_res = rounds::hold_all(&opts, &mut s).await;
    let peak_after = rounds::rss_by_arm(&s.arms);

    let startup = measure::measure_startup(
        &bin(&opts, "sluice"),
        &s.dir,
        s.up_addr,
        opts.proxy_core,
        if opts.quick { 3 } else { 11 },
        &sluice_env,
    )
    .await;
    log(s.t0, format!("sluice start-to-ready: {startup}"));
    let (size, stripped) = binary_size(&opts, &s);

    // Stop everything.
    let all_pids: Vec<u32> = s.procs.list.iter().flat_map(|x| tree(x.1)).collect();
    s.procs.stop_all();
    let leftovers: Vec<u32> = all_pids.into_iter().filter(|p| alive(*p)).collect();
    let loadavg_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let res = Results {
        names: s.arms.iter().map(|a| a.name.clone()).collect(),
        rounds,
        peak,
        peak_after,
        checks,
        hold_res,
        startup,
        size,
        stripped,
        leftovers,
        loadavg_end,
    };
    let sum = report::Summary::new(&res.names, &res.rounds.per_round);
    let targets = report::targets(&res, &sum);
    let report = report::json(&opts, &s, &res, &sum, &targets);
    let json_path = opts.out_dir.join(format!("load-{}.json", s.stamp));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;

    let md = markdown::render(&opts, &s, &res, &sum, &targets, &report, &json_path);
    let md_path = opts.out_dir.join("load-latest.md");
    std::fs::write(&md_path, &md).map_err(|e| e.to_string())?;
    println!("{md}");
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    let _ = std::fs::remove_dir_all(&s.dir);
    if !res.leftovers.is_empty() {
        return Err(format!("processes left behind: {:?}", res.leftovers));
    }
    Ok(())
}

/// Bytes of the sluice binary, before and after `strip` (of a copy).
fn binary_size(opts: &Opts, s: &setup::Session) -> (u64, u64) {
    let size = std::fs::metadata(bin(opts, "sluice"))
        .map(|m| m.len())
        .unwrap_or(0);
    let stripped_copy = s.dir.join("sluice.stripped");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&stripped_copy)
        .arg(bin(opts, "sluice"))
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| std::fs::metadata(&stripped_copy).ok())
        .map(|m| m.len())
        .unwrap_or(size);
    (size, stripped)
}
