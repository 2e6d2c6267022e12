//! The report's numbers: statistics over rounds ([`median`], ratios to bare Pingora), what a
//! run measured ([`Results`]), the targets, and the JSON written to `target/bench/`.
use crate::opts::{plan, plan_json, Opts};
use crate::rounds::Rounds;
use crate::setup::{bin, Session};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// Median of the finite values of `v`; NaN when none.
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `x` rounded to 3 decimals for JSON; `null` when not finite.
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// `x` with `digits` decimals for Markdown; "–" when not finite.
pub fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".into()
    }
}

/// One arm's figures in one round, by metric name.
pub type Metrics = BTreeMap<String, f64>;

/// Everything a run measured after its setup.
pub struct Results {
    pub rounds: Rounds,
    /// Arm names, in setup order.
    pub names: Vec<String>,
    /// (VmRSS, VmHWM) KiB by arm after the rounds, and after the open-streams phase.
    pub peak: BTreeMap<String, (u64, u64)>,
    pub peak_after: BTreeMap<String, (u64, u64)>,
    pub checks: Vec<String>,
    /// Open-streams results by arm.
    pub hold_res: BTreeMap<String, Value>,
    pub startup: Value,
    /// Binary bytes, before and after `strip`.
    pub size: u64,
    pub stripped: u64,
    pub leftovers: Vec<u32>,
    pub loadavg_end: String,
}

/// Medians over rounds and medians of the per-round ratios to bare Pingora, by (arm, metric).
pub struct Summary {
    pub summary: BTreeMap<String, BTreeMap<String, Value>>,
    med: HashMap<(String, String), f64>,
    ratio: HashMap<(String, String), f64>,
}

impl Summary {
    /// Summarize `per_round` for arms `names`.
    pub fn new(names: &[String], per_round: &[BTreeMap<String, Metrics>]) -> Summary {
        let metric_keys: Vec<String> = {
            let mut k: Vec<String> = per_round
                .iter()
                .flat_map(|r| r.values().flat_map(|m| m.keys().cloned()))
                .collect();
            k.sort();
            k.dedup();
            k
        };
        let mut summary: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        let mut med: HashMap<(String, String), f64> = HashMap::new();
        let mut ratio: HashMap<(String, String), f64> = HashMap::new();
        for a in names {
            let mut ms = BTreeMap::new();
            for k in &metric_keys {
                let vals: Vec<f64> = per_round
                    .iter()
                    .filter_map(|r| r.get(a)?.get(k).copied())
                    .collect();
                if vals.is_empty() {
                    continue;
                }
                let ratios: Vec<f64> = per_round
                    .iter()
                    .filter_map(|r| Some(r.get(a)?.get(k)? / r.get("bare")?.get(k)?))
                    .collect();
                let m = median(&vals);
                med.insert((a.clone(), k.clone()), m);
                let rm = median(&ratios);
                ratio.insert((a.clone(), k.clone()), rm);
                ms.insert(
                k.clone(),
                json!({
                    "median": num(m),
                    "per_round": vals.iter().map(|x| num(*x)).collect::<Vec<_>>(),
                    "ratio_to_bare_per_round": ratios.iter().map(|x| num(*x)).collect::<Vec<_>>(),
                    "ratio_to_bare_median": num(rm),
                }),
            );
            }
            summary.insert(a.clone(), ms);
        }
        Summary {
            summary,
            med,
            ratio,
        }
    }

    /// Median over rounds of metric `k` of arm `a` (NaN when not measured).
    pub fn g(&self, a: &str, k: &str) -> f64 {
        self.med
            .get(&(a.to_string(), k.to_string()))
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// Median of the per-round ratios of metric `k` of arm `a` to bare Pingora's.
    pub fn r(&self, a: &str, k: &str) -> f64 {
        self.ratio
            .get(&(a.to_string(), k.to_string()))
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// One target: (what, goal, measured, met, unit).
pub type Target = (&'static str, &'static str, f64, bool, &'static str);

/// The targets (issue 12: the upstream leg at the cost of bare Pingora) against what was
/// measured.
pub fn targets(res: &Results, sum: &Summary) -> Vec<Target> {
    let (hold_res, per_round, startup, stripped) = (
        &res.hold_res,
        &res.rounds.per_round,
        &res.startup,
        res.stripped,
    );
    let g = |a: &str, k: &str| sum.g(a, k);
    let r = |a: &str, k: &str| sum.r(a, k);
    let hold_per_stream = |name: &str| {
        hold_res
            .get(name)
            .and_then(|v| v["bytes_per_stream"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let litellm_over_sluice: Vec<f64> = per_round
        .iter()
        .filter_map(|r| {
            Some(
                r.get("litellm")?.get("cpu_us_per_req")?
                    / r.get("sluice")?.get("cpu_us_per_req")?,
            )
        })
        .collect();
    let startup_ms = startup["median_ms"].as_f64().unwrap_or(f64::NAN);
    let peak_mib = res
        .peak
        .get("sluice")
        .map_or(f64::NAN, |(_, hwm)| *hwm as f64 / 1024.0);
    let mut t = vec![
        (
            "CPU/request, sluice vs bare Pingora (median of per-round ratios)",
            "≤ 1.3×",
            r("sluice", "cpu_us_per_req"),
            r("sluice", "cpu_us_per_req") <= 1.3,
            "×",
        ),
        (
            "CPU/request, LiteLLM ÷ sluice (median of per-round ratios)",
            "≥ 100×",
            median(&litellm_over_sluice),
            median(&litellm_over_sluice) >= 100.0,
            "×",
        ),
        (
            "added p50 over bare Pingora's, 1 connection sequential (µs)",
            "≤ +10 µs",
            g("sluice", "seq_p50_added_us") - g("bare", "seq_p50_added_us"),
            g("sluice", "seq_p50_added_us") - g("bare", "seq_p50_added_us") <= 10.0,
            "µs",
        ),
        (
            "added TTFT over bare Pingora's, p50 (µs)",
            "≤ +50 µs",
            g("sluice", "ttft_p50_added_us") - g("bare", "ttft_p50_added_us"),
            g("sluice", "ttft_p50_added_us") - g("bare", "ttft_p50_added_us") <= 50.0,
            "µs",
        ),
        (
            "peak RSS under the bench, every policy on (VmHWM after the rounds, MiB)",
            "≤ 24 MiB",
            peak_mib,
            peak_mib <= 24.0,
            "MiB",
        ),
        (
            "RSS per open stream (KiB)",
            "≤ 48 KiB",
            hold_per_stream("sluice") / 1024.0,
            hold_per_stream("sluice") / 1024.0 <= 48.0,
            "KiB",
        ),
        (
            "start-to-ready, median (ms)",
            "≤ 50 ms",
            startup_ms,
            startup_ms <= 50.0,
            "ms",
        ),
        (
            "stripped release binary (MB = 10^6 B)",
            "≤ 15 MB",
            stripped as f64 / 1e6,
            (stripped as f64) <= 15e6,
            "MB",
        ),
    ];
    // Issue 14: response reuse that does not help (every request distinct) costs a route
    // next to nothing.
    if res.names.iter().any(|n| n == "sluice-reuse") {
        let v = g("sluice-reuse", "paired_cpu_ratio");
        t.push((
            "CPU/request, route with cache and coalescing on, every request a miss ÷ the same route without them in the same process (paired blocks, median over rounds)",
            "≤ 1.05×",
            v,
            v <= 1.05,
            "×",
        ));
    }
    t
}

/// The JSON report.
pub fn json(opts: &Opts, s: &Session, res: &Results, sum: &Summary, targets: &[Target]) -> Value {
    let (started, t0, loadavg_start, clk_tck, core) = (
        s.started,
        s.t0,
        &s.loadavg_start,
        s.clk_tck,
        opts.proxy_core,
    );
    let (nginx_version, litellm_version, notes) = (&s.nginx_version, &s.litellm_version, &s.notes);
    let (rounds_done, per_round, names) = (res.rounds.done, &res.rounds.per_round, &res.names);
    let (peak, peak_after, hold_res, startup) =
        (&res.peak, &res.peak_after, &res.hold_res, &res.startup);
    let (size, stripped, checks, leftovers) = (res.size, res.stripped, &res.checks, &res.leftovers);
    let (loadavg_end, summary) = (&res.loadavg_end, &sum.summary);
    let machine = json!({
        "cpu_model": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim(),
        "nproc": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines().filter(|l| l.starts_with("processor")).count(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "loadavg_start": loadavg_start.trim(),
        "loadavg_end": loadavg_end.trim(),
        "clk_tck": clk_tck,
        "proxy_core": core,
        "client_and_upstream_core": "the core scripts/bench_load.sh pinned bench_load to (taskset -c 0)",
    });
    let report = json!({
        "started": started.to_rfc3339(),
        "duration_s": num(t0.elapsed().as_secs_f64()),
        "rounds": rounds_done,
        "rounds_requested": opts.rounds,
        "quick": opts.quick,
        "arms": names,
        "versions": {"nginx": nginx_version, "litellm": litellm_version, "pingora": "0.9.1"},
        "machine": machine,
        "workload": {
            "protocol": "HTTP/1.1 keep-alive, loopback",
            "request": "POST /v1/chat/completions, model gpt-4o-mini, 2 messages, max_tokens 64 (~230 B body); non-stream response ~330 B JSON with usage",
            "stream": "stream:true + stream_options.include_usage; upstream sends 20 chunks 1 ms apart (tokio timer: ~1-2 ms), a usage chunk, [DONE]",
            "plan_fast_arms": plan_json(&plan(opts.quick, false)),
            "plan_litellm": plan_json(&plan(opts.quick, true)),
            "latency_added": "arm minus direct, same round, then median over rounds",
            "cpu": "utime+stime of the proxy's process tree from /proc/<pid>/stat (clock ticks) over a fixed request count; cpu_sched_us_per_req is the same from /proc/<pid>/task/*/schedstat (ns)",
        },
        "per_round": per_round,
        "summary": summary,
        "peak_rss_kib_after_rounds": peak.iter().map(|(k, (rss, hwm))| (k.clone(), json!({"rss": rss, "hwm": hwm}))).collect::<BTreeMap<_, _>>(),
        "peak_rss_kib_after_open_streams": peak_after.iter().map(|(k, (rss, hwm))| (k.clone(), json!({"rss": rss, "hwm": hwm}))).collect::<BTreeMap<_, _>>(),
        "open_streams": hold_res,
        "startup": startup,
        "binary": {"path": bin(opts, "sluice").display().to_string(), "bytes": size, "bytes_after_strip": stripped},
        "targets": targets.iter().map(|(name, goal, v, ok, unit)| json!({"target": name, "goal": goal, "measured": num(*v), "unit": unit, "met": ok})).collect::<Vec<_>>(),
        "checks": checks,
        "notes": notes,
        "leftover_pids": leftovers,
    });
    report
}
