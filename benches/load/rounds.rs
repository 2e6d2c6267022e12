//! The measured rounds: every arm in turn (A B C ... A B C ..., the start rotated each
//! round), the others SIGSTOPped; then the checks that the load did what it should, and the
//! open-streams phase.
use crate::arms::{Arm, Kind};
use crate::client::get;
use crate::measure::{hold_streams, measure_arm, paired_cpu, route_pair_cpu, PairLoad};
use crate::opts::Opts;
use crate::procs::{mem_kib, signal, tree};
use crate::report::{f, Metrics};
use crate::setup::{log, Session};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// SIGSTOP every arm but `except` (none: every arm continues); with `pause` false, none.
pub fn pause_all(arms: &[Arm], except: Option<usize>, pause: bool) {
    for (j, a) in arms.iter().enumerate() {
        if let Some(p) = a.pid {
            let sig = if Some(j) == except || !pause {
                "CONT"
            } else {
                "STOP"
            };
            signal(sig, &tree(p));
        }
    }
}

/// The response cache's memory tier of `arm` from its `/metrics`: entries, weighted bytes,
/// answers stored and answers the doorkeeper turned away (`None`: no cache metrics).
async fn cache_state(arm: &Arm) -> Option<String> {
    let (200, body) = get(arm.admin?, "/metrics").await? else {
        return None;
    };
    let value = |name: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let stored = value("sluice_cache_stored_total");
    (stored > 0.0).then(|| {
        format!(
            "cache tier {} entries, {} bytes; stored {stored}, admission skipped {}",
            value("sluice_cache_entries"),
            value("sluice_cache_bytes"),
            value("sluice_cache_admission_skipped_total")
        )
    })
}

/// What the rounds measured: per round, per arm, metric -> value.
pub struct Rounds {
    pub per_round: Vec<BTreeMap<String, Metrics>>,
    pub done: usize,
}

/// Run up to `--rounds` rounds within the time budget (leaving a reserve for what follows);
/// every arm continues afterwards.
pub async fn run(opts: &Opts, s: &mut Session) -> Rounds {
    let (t0, arms, notes) = (s.t0, &s.arms, &mut s.notes);
    let (up_addr, up_pid, clk_tck, core) = (s.up_addr, s.up_pid, s.clk_tck, opts.proxy_core);
    let pause = |arms: &[Arm], except: Option<usize>| pause_all(arms, except, opts.pause);
    let mut per_round: Vec<BTreeMap<String, Metrics>> = Vec::new();
    let reserve = if opts.hold {
        Duration::from_secs(150)
    } else {
        Duration::from_secs(40)
    };
    let mut rounds_done = 0;
    for round in 0..opts.rounds {
        if round > 0 && t0.elapsed() + reserve > opts.budget {
            notes.push(format!(
                "rounds cut to {round} of {} by the time budget ({} s)",
                opts.rounds,
                opts.budget.as_secs()
            ));
            break;
        }
        let mut results: BTreeMap<String, Metrics> = BTreeMap::new();
        let n = arms.len();
        for k in 0..n {
            let idx = (k + round) % n;
            let arm = &arms[idx];
            pause(arms, Some(idx));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let m = measure_arm(arm, up_addr, up_pid, opts.quick, clk_tck, round == 0, core).await;
            log(
                t0,
                format!(
                    "round {} {:8}: cpu {} us/req, max {} rps, seq p50 {} us p99 {} us, ttft p50 {} us, errors {}",
                    round + 1,
                    arm.name,
                    f(*m.get("cpu_us_per_req").unwrap_or(&f64::NAN), 1),
                    f(*m.get("max_rps").unwrap_or(&f64::NAN), 0),
                    f(*m.get("seq_p50_us").unwrap_or(&f64::NAN), 1),
                    f(*m.get("seq_p99_us").unwrap_or(&f64::NAN), 1),
                    f(*m.get("ttft_p50_us").unwrap_or(&f64::NAN), 1),
                    m.get("errors").copied().unwrap_or(0.0)
                ),
            );
            results.insert(arm.name.clone(), m);
        }
        // Every other sluice against its base in paired blocks: the figure its CPU targets
        // are judged on. A route variant against its own `plain` route in its own process;
        // another build or a process-wide variant against the sluice arm.
        if let Some(base) = arms.iter().position(|a| a.name == "sluice") {
            let (blocks, per_block) = if opts.quick { (3, 2_000) } else { (6, 4_000) };
            let (pairs, per_pair_block) = if opts.quick { (10, 1_000) } else { (40, 1_500) };
            for (v, arm) in arms.iter().enumerate() {
                if !arm.name.starts_with("sluice-") {
                    continue;
                }
                let (b, x, ratio, errors) = if arm.plain_route {
                    let r =
                        route_pair_cpu(arms, v, pairs, per_pair_block, opts.pause, PairLoad::Json)
                            .await;
                    (r.plain_us, r.variant_us, r.ratio, r.errors)
                } else {
                    let (b, x, e) = paired_cpu(arms, base, v, blocks, per_block, opts.pause).await;
                    (b, x, x / b, e)
                };
                log(
                    t0,
                    format!(
                        "round {} paired CPU: {} {} us/req, {} {} us/req (x{}), errors {errors}",
                        round + 1,
                        if arm.plain_route {
                            "its plain route"
                        } else {
                            "sluice"
                        },
                        f(b, 1),
                        arm.name,
                        f(x, 1),
                        f(ratio, 3)
                    ),
                );
                // Whether the variant's memory tier was full (its doorkeeper turning one-off
                // answers away) or still filling during these blocks.
                if let Some(state) = cache_state(arm).await {
                    log(t0, format!("round {} {}: {state}", round + 1, arm.name));
                }
                if let Some(m) = results.get_mut(&arm.name) {
                    m.insert("paired_base_cpu_us_per_req".into(), b);
                    m.insert("paired_cpu_us_per_req".into(), x);
                    m.insert("paired_cpu_ratio".into(), ratio);
                    *m.entry("errors".into()).or_default() += errors as f64;
                }
                if arm.plain_route && opts.paired_stream {
                    // The same pairing with streamed requests: informational (the targets
                    // read the JSON figure above).
                    let per = if opts.quick { 300 } else { 600 };
                    let r = route_pair_cpu(arms, v, pairs, per, opts.pause, PairLoad::Stream).await;
                    log(
                        t0,
                        format!(
                            "round {} paired CPU, streamed: its plain route {} us/req, {} {} us/req (x{}), errors {}",
                            round + 1,
                            f(r.plain_us, 1),
                            arm.name,
                            f(r.variant_us, 1),
                            f(r.ratio, 3),
                            r.errors
                        ),
                    );
                    if let Some(m) = results.get_mut(&arm.name) {
                        m.insert("paired_stream_base_cpu_us_per_req".into(), r.plain_us);
                        m.insert("paired_stream_cpu_us_per_req".into(), r.variant_us);
                        m.insert("paired_stream_cpu_ratio".into(), r.ratio);
                        *m.entry("errors".into()).or_default() += r.errors as f64;
                    }
                }
            }
        }
        // Added latency vs direct, same round.
        let direct = results.get("direct").cloned().unwrap_or_default();
        for (name, m) in results.iter_mut() {
            if name == "direct" {
                continue;
            }
            for key in [
                "seq_p50_us",
                "seq_p99_us",
                "seq_samecore_p50_us",
                "seq_samecore_p99_us",
                "open50_p50_us",
                "open50_p99_us",
                "open200_p50_us",
                "open200_p99_us",
                "ttft_p50_us",
                "ttft_p99_us",
                "stream_total_p50_us",
                "stream_total_p99_us",
            ] {
                if let (Some(a), Some(d)) = (m.get(key).copied(), direct.get(key).copied()) {
                    m.insert(key.replace("_us", "_added_us"), a - d);
                }
            }
        }
        per_round.push(results);
        rounds_done = round + 1;
    }
    pause(arms, None); // leave none stopped
    if opts.pause {
        for a in arms {
            if let Some(p) = a.pid {
                signal("CONT", &tree(p));
            }
        }
    }
    Rounds {
        per_round,
        done: rounds_done,
    }
}

/// (VmRSS, VmHWM) in KiB of every arm with a process, by name.
pub fn rss_by_arm(arms: &[Arm]) -> BTreeMap<String, (u64, u64)> {
    let mut peak: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for a in arms {
        if let Some(p) = a.pid {
            peak.insert(a.name.clone(), mem_kib(p));
        }
    }
    peak
}

/// What the upstream and sluice saw: injected keys, upstream connections, exact token counts,
/// limit decisions, log lines.
pub async fn checks(s: &Session, per_round: &[BTreeMap<String, Metrics>]) -> Vec<String> {
    let (arms, dir) = (&s.arms, &s.dir);
    let mut checks: Vec<String> = Vec::new();
    for a in arms {
        let (mut inj, mut reqs, mut conns) = (0.0, 0.0, Vec::new());
        for r in per_round {
            if let Some(m) = r.get(&a.name) {
                inj += m
                    .get("upstream_injected_key_in_cpu_phase")
                    .copied()
                    .unwrap_or(0.0);
                reqs += m
                    .get("upstream_requests_in_cpu_phase")
                    .copied()
                    .unwrap_or(0.0);
                conns.push(
                    m.get("upstream_conns_per_1k_req")
                        .copied()
                        .unwrap_or(f64::NAN),
                );
            }
        }
        checks.push(format!(
            "{}: upstream saw {reqs} chat requests in the CPU phases, {inj} with the injected pool key; new upstream connections per 1k requests per round: {}",
            a.name,
            conns.iter().map(|c| f(*c, 1)).collect::<Vec<_>>().join(" / ")
        ));
    }
    if let Some(a) = arms.iter().find(|a| a.kind == Kind::Sluice) {
        if let Some((200, body)) = get(a.admin.unwrap_or(a.addr), "/metrics").await {
            let exact = body
                .lines()
                .any(|l| l.starts_with("sluice_tokens_total") && l.contains("source=\"exact\""));
            let decisions = body
                .lines()
                .filter(|l| l.starts_with("sluice_limit_decisions_total"))
                .map(|l| l.to_string())
                .collect::<Vec<_>>();
            checks.push(format!(
                "sluice /metrics: exact token counts present = {exact}; limit decisions: {}",
                decisions.join("; ")
            ));
        }
        let log_lines = std::fs::read_to_string(dir.join("sluice.log"))
            .map(|s| s.lines().filter(|l| l.starts_with('{')).count())
            .unwrap_or(0);
        checks.push(format!("sluice JSON log lines written: {log_lines}"));
    }
    // The `tracing` variant: its CPU per request holds only if its spans were exported, not
    // dropped.
    if let Some(a) = arms.iter().find(|a| a.name == "sluice-tracing") {
        if let Some((200, body)) = get(a.admin.unwrap_or(a.addr), "/metrics").await {
            let spans = body
                .lines()
                .filter(|l| l.starts_with("sluice_trace_spans_"))
                .collect::<Vec<_>>();
            checks.push(format!("sluice-tracing /metrics: {}", spans.join("; ")));
        }
    }

    checks
}

/// Hold `--hold-streams` open streams through sluice, bare and nginx in turn (the others
/// paused), within the time budget; by arm name.
pub async fn hold_all(opts: &Opts, s: &mut Session) -> BTreeMap<String, Value> {
    let (t0, arms, notes, up_addr) = (s.t0, &s.arms, &mut s.notes, s.up_addr);
    let pause = |arms: &[Arm], except: Option<usize>| pause_all(arms, except, opts.pause);
    let mut hold_res: BTreeMap<String, Value> = BTreeMap::new();
    if opts.hold {
        let n = if opts.quick && !opts.hold_set {
            opts.hold_streams.min(2000)
        } else {
            opts.hold_streams
        };
        for name in ["sluice", "bare", "nginx"] {
            let Some(idx) = arms.iter().position(|a| a.name == name) else {
                continue;
            };
            if t0.elapsed() > opts.budget {
                notes.push(format!("open-streams test of {name} skipped: time budget"));
                continue;
            }
            pause(arms, Some(idx));
            let v = hold_streams(&arms[idx], up_addr, n).await;
            log(t0, format!("{name} open streams: {v}"));
            hold_res.insert(name.into(), v);
        }
        pause(arms, None);
        for a in arms {
            if let Some(p) = a.pid {
                signal("CONT", &tree(p));
            }
        }
    }
    hold_res
}
