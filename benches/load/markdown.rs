//! The Markdown report (`target/bench/load-latest.md`): the run, then one table per concern
//! (CPU and throughput, latency, streaming, memory, per-round ratios, targets) and the checks.
use crate::opts::{plan, Opts};
use crate::report::{f, Results, Summary, Target};
use crate::setup::{bin, Session};
use serde_json::Value;
use std::path::Path;

/// The report of a run; `report` is its JSON (for the machine), written to `json_path`.
pub fn render(
    opts: &Opts,
    s: &Session,
    res: &Results,
    sum: &Summary,
    targets: &[Target],
    report: &Value,
    json_path: &Path,
) -> String {
    let (started, t0, loadavg_start, core, notes) =
        (s.started, s.t0, &s.loadavg_start, opts.proxy_core, &s.notes);
    let (rounds_done, names, peak, peak_after) =
        (res.rounds.done, &res.names, &res.peak, &res.peak_after);
    let (hold_res, startup, size, stripped, checks) = (
        &res.hold_res,
        &res.startup,
        res.size,
        res.stripped,
        &res.checks,
    );
    let (loadavg_end, summary) = (&res.loadavg_end, &sum.summary);
    let g = |a: &str, k: &str| sum.g(a, k);
    let r = |a: &str, k: &str| sum.r(a, k);
    let startup_ms = startup["median_ms"].as_f64().unwrap_or(f64::NAN);
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln_s(
        w,
        &format!(
            "# sluice load benchmark — {}\n",
            started.format("%Y-%m-%d %H:%M UTC")
        ),
    );
    let _ = writeln_s(
        w,
        &format!(
            "{} round(s){} interleaved ({}), arms: {}. Machine: {} × {}, kernel {}; load average at start {} / end {}. Proxy under test on core {} (`taskset -c {}`), load generator + upstream on core 0; arms not under test SIGSTOPped. Raw data: `{}`. Run took {:.0} s.\n",
            rounds_done,
            if opts.quick { " (quick mode: short phases)" } else { "" },
            "A B C … A B C …, start rotated each round",
            names.join(", "),
            report["machine"]["nproc"],
            report["machine"]["cpu_model"].as_str().unwrap_or(""),
            report["machine"]["kernel"].as_str().unwrap_or(""),
            loadavg_start.split(' ').take(3).collect::<Vec<_>>().join(" "),
            loadavg_end.split(' ').take(3).collect::<Vec<_>>().join(" "),
            core,
            core,
            json_path.display(),
            t0.elapsed().as_secs_f64()
        ),
    );
    let p = plan(opts.quick, false);
    let pl = plan(opts.quick, true);
    let _ = writeln_s(w, &format!(
        "Workload: keep-alive HTTP/1.1 `POST /v1/chat/completions` (~230 B JSON body, ~330 B JSON reply with `usage`). CPU: {} requests ({} for LiteLLM) closed-loop on {} connections. Max RPS: {} connections, {} s closed loop. Latency: {} sequential requests on 1 connection ({} LiteLLM); open loop at 50 and 200 req/s for {} s over {} connections (skipped where the arm's max RPS < 1.5× the rate). Streams: {} sequential ({} LiteLLM), 20 SSE chunks 1 ms apart + usage + [DONE]. Values are medians over rounds; ×bare is the median of per-round ratios to bare Pingora; \"added\" is arm minus direct in the same round.\n",
        p.cpu_requests, pl.cpu_requests, p.cpu_conns, p.rps_conns, p.rps_secs, p.seq_requests, pl.seq_requests, p.open_secs, p.open_conns, p.streams, pl.streams
    ));
    let _ = writeln_s(w, "## CPU and throughput (one worker thread)\n");
    let _ = writeln_s(w, "CPU µs/req: the fixed-count closed-loop phase (utime+stime from /proc/<pid>/stat; the schedstat column is the same interval in ns). The 1-connection and 200 req/s columns divide the proxy's on-CPU time over those latency phases by their requests: at low load every request also pays the proxy's sleep/wake-up cycle.\n");
    let _ = writeln_s(w, "| arm | CPU µs/req | ×bare | CPU µs/req (schedstat) | CPU µs/req, 1 conn sequential | CPU µs/req at 200 req/s | max RPS | ×bare | upstream CPU µs/req | upstream conns per 1k req | errors |");
    let _ = writeln_s(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for a in names {
        let _ = writeln_s(
            w,
            &format!(
                "| {a} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f(g(a, "cpu_us_per_req"), 1),
                f(r(a, "cpu_us_per_req"), 2),
                f(g(a, "cpu_sched_us_per_req"), 1),
                f(g(a, "seq_cpu_us_per_req"), 1),
                f(g(a, "open200_cpu_us_per_req"), 1),
                f(g(a, "max_rps"), 0),
                f(r(a, "max_rps"), 2),
                f(g(a, "upstream_cpu_us_per_req"), 1),
                f(g(a, "upstream_conns_per_1k_req"), 1),
                f(g(a, "errors"), 0)
            ),
        );
    }
    let _ = writeln_s(w, "\n## Latency (µs; added = minus direct, same round)\n");
    let _ = writeln_s(w, "seq = 1 connection, one request after the other, proxy pinned to its own core (each request crosses cores 4 times: client → proxy → upstream → proxy → client). same-core = the same phase with the proxy moved onto the load generator's core. 50/s and 200/s = open loop (latency from the scheduled send when the connection was still busy).\n");
    let _ = writeln_s(w, "| arm | seq p50 | seq p99 | added p50 | added p99 | same-core seq p50 | same-core added p50 | same-core added p99 | 50/s p50 | 50/s p99 | added p50 | added p99 | 200/s p50 | 200/s p99 | added p50 | added p99 |");
    let _ = writeln_s(
        w,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    );
    for a in names {
        let _ = writeln_s(
            w,
            &format!(
                "| {a} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f(g(a, "seq_p50_us"), 0),
                f(g(a, "seq_p99_us"), 0),
                f(g(a, "seq_p50_added_us"), 0),
                f(g(a, "seq_p99_added_us"), 0),
                f(g(a, "seq_samecore_p50_us"), 0),
                f(g(a, "seq_samecore_p50_added_us"), 0),
                f(g(a, "seq_samecore_p99_added_us"), 0),
                f(g(a, "open50_p50_us"), 0),
                f(g(a, "open50_p99_us"), 0),
                f(g(a, "open50_p50_added_us"), 0),
                f(g(a, "open50_p99_added_us"), 0),
                f(g(a, "open200_p50_us"), 0),
                f(g(a, "open200_p99_us"), 0),
                f(g(a, "open200_p50_added_us"), 0),
                f(g(a, "open200_p99_added_us"), 0),
            ),
        );
    }
    let _ = writeln_s(w, "\n## Streaming (µs; TTFT = send to first SSE byte)\n");
    let _ = writeln_s(w, "| arm | TTFT p50 | TTFT p99 | TTFT added p50 | TTFT added p99 | total p50 | total added p50 | total added p99 |");
    let _ = writeln_s(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for a in names {
        let _ = writeln_s(
            w,
            &format!(
                "| {a} | {} | {} | {} | {} | {} | {} | {} |",
                f(g(a, "ttft_p50_us"), 0),
                f(g(a, "ttft_p99_us"), 0),
                f(g(a, "ttft_p50_added_us"), 0),
                f(g(a, "ttft_p99_added_us"), 0),
                f(g(a, "stream_total_p50_us"), 0),
                f(g(a, "stream_total_p50_added_us"), 0),
                f(g(a, "stream_total_p99_added_us"), 0),
            ),
        );
    }
    let _ = writeln_s(w, "\n## Memory\n");
    let _ = writeln_s(w, "| arm | RSS after rounds (MiB) | peak RSS VmHWM after rounds (MiB) | open streams held | RSS before → with streams (MiB) | bytes per stream | slope, 2nd half (B/stream) | VmHWM after streams (MiB) |");
    let _ = writeln_s(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for a in names {
        let Some((rss, hwm)) = peak.get(a) else {
            continue;
        };
        let h = hold_res.get(a);
        let hv = |k: &str| h.and_then(|v| v[k].as_f64()).unwrap_or(f64::NAN);
        let _ = writeln_s(
            w,
            &format!(
                "| {a} | {} | {} | {} | {} → {} | {} | {} | {} |",
                f(*rss as f64 / 1024.0, 1),
                f(*hwm as f64 / 1024.0, 1),
                h.map(|v| format!("{} of {}", v["held"], v["requested"]))
                    .unwrap_or("–".into()),
                f(hv("rss_before_kib") / 1024.0, 1),
                f(hv("rss_with_streams_kib") / 1024.0, 1),
                f(hv("bytes_per_stream"), 0),
                f(hv("slope_bytes_per_stream"), 0),
                f(
                    peak_after
                        .get(a)
                        .map(|x| x.1 as f64 / 1024.0)
                        .unwrap_or(f64::NAN),
                    1
                ),
            ),
        );
    }
    let _ = writeln_s(w, &format!(
        "\nsluice start-to-ready (exec of `taskset -c {core} sluice run` to first `/readyz` 200, {} runs): median {} ms (min {}, max {}); idle RSS {} KiB. Binary `{}`: {} bytes ({:.2} MB; {} after `strip`).\n",
        startup["runs"], f(startup_ms, 1), f(startup["min_ms"].as_f64().unwrap_or(f64::NAN), 1), f(startup["max_ms"].as_f64().unwrap_or(f64::NAN), 1),
        startup["idle_rss_kib"], bin(opts, "sluice").display(), size, size as f64 / 1e6, stripped
    ));
    let _ = writeln_s(
        w,
        "## Per-round ratios to bare Pingora (CPU µs/req, max RPS)\n",
    );
    let _ = writeln_s(
        w,
        "| arm | CPU ratio per round | max RPS ratio per round | CPU µs/req per round |",
    );
    let _ = writeln_s(w, "|---|---|---|---|");
    for a in names {
        let col = |k: &str, ratio: bool| -> String {
            summary
                .get(a)
                .and_then(|m| m.get(k))
                .map(|v| {
                    v[if ratio {
                        "ratio_to_bare_per_round"
                    } else {
                        "per_round"
                    }]
                    .as_array()
                    .map(|xs| {
                        xs.iter()
                            .map(|x| {
                                x.as_f64()
                                    .map(|y| f(y, if ratio { 2 } else { 1 }))
                                    .unwrap_or("–".into())
                            })
                            .collect::<Vec<_>>()
                            .join(" / ")
                    })
                    .unwrap_or_default()
                })
                .unwrap_or("–".into())
        };
        let _ = writeln_s(
            w,
            &format!(
                "| {a} | {} | {} | {} |",
                col("cpu_us_per_req", true),
                col("max_rps", true),
                col("cpu_us_per_req", false)
            ),
        );
    }
    let paired: Vec<&String> = names
        .iter()
        .filter(|a| sum.g(a, "paired_cpu_ratio").is_finite())
        .collect();
    if !paired.is_empty() {
        let _ = writeln_s(
            w,
            "\n## Paired CPU: each other sluice against its base\n\nIn every round, after the phases above, two request streams alternate in closed-loop blocks (A B B A ..., 8 connections, only the measured proxy running); CPU is the on-CPU time from schedstat over each block. Neighbours' noise on the machine falls on adjacent blocks of both alike, which the separate CPU phases above cannot promise.\n\n- A route variant (`reuse`, `cache`, `coalesce`, ...): its route against the same route without the feature (`plain`, selected by a request header) in the variant's own process, 40 pairs of 1,500-request blocks (10 of 1,000 with `--quick`); the ratio is the median over the pairs. One process for both leaves out what differs between two processes of the same config.\n- Another build or a process-wide variant (`tracing`): the process against the sluice arm, 6 pairs of 4,000-request blocks (3 of 2,000 with `--quick`); the ratio is of the sums.\n",
        );
        let _ = writeln_s(
            w,
            "| arm | ratio to its base, median over rounds | ratio per round | base µs/req per round | arm µs/req per round |",
        );
        let _ = writeln_s(w, "|---|---:|---|---|---|");
        let per_round = |a: &str, k: &str, digits: usize| -> String {
            res.rounds
                .per_round
                .iter()
                .filter_map(|r| r.get(a)?.get(k).copied())
                .map(|x| f(x, digits))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        // One row per arm from the keys `{p}cpu_ratio`, `{p}base_cpu_us_per_req` and
        // `{p}cpu_us_per_req` (`p`: `paired_`, or `paired_stream_` for the streamed pairing).
        let rows = |w: &mut String, arms: &[&String], p: &str| {
            for a in arms {
                let _ = writeln_s(
                    w,
                    &format!(
                        "| {a} | {} | {} | {} | {} |",
                        f(sum.g(a, &format!("{p}cpu_ratio")), 3),
                        per_round(a, &format!("{p}cpu_ratio"), 3),
                        per_round(a, &format!("{p}base_cpu_us_per_req"), 1),
                        per_round(a, &format!("{p}cpu_us_per_req"), 1)
                    ),
                );
            }
        };
        rows(w, &paired, "paired_");
        let streamed: Vec<&String> = paired
            .iter()
            .copied()
            .filter(|a| sum.g(a, "paired_stream_cpu_ratio").is_finite())
            .collect();
        if !streamed.is_empty() {
            let _ = writeln_s(
                w,
                "\nStreamed (`--paired-stream`; informational, the targets read the table above): the same pairing with the workload's request streamed, 20 chunks 1 ms apart plus the usage chunk and `[DONE]`, 64 connections, 40 pairs of 600-request blocks (10 of 300 with `--quick`).\n",
            );
            let _ = writeln_s(
                w,
                "| arm | ratio to its plain route, median over rounds | ratio per round | plain µs/req per round | arm µs/req per round |",
            );
            let _ = writeln_s(w, "|---|---:|---|---|---|");
            rows(w, &streamed, "paired_stream_");
        }
    }
    let _ = writeln_s(w, "\n## Targets\n");
    let _ = writeln_s(w, "| target | goal | measured | met |");
    let _ = writeln_s(w, "|---|---|---:|---|");
    for (name, goal, v, ok, unit) in targets {
        let _ = writeln_s(
            w,
            &format!(
                "| {name} | {goal} | {} {unit} | {} |",
                f(*v, 2),
                if v.is_finite() {
                    if *ok {
                        "yes"
                    } else {
                        "**no**"
                    }
                } else {
                    "not measured"
                }
            ),
        );
    }
    if !checks.is_empty() || !notes.is_empty() {
        let _ = writeln_s(w, "\n## Checks and notes\n");
        for c in checks.iter().chain(notes.iter()) {
            let _ = writeln_s(w, &format!("- {}", c.replace('\n', "\n  ")));
        }
    }
    md
}

fn writeln_s(w: &mut String, s: &str) -> std::fmt::Result {
    w.push_str(s);
    w.push('\n');
    Ok(())
}
