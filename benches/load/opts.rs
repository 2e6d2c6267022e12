//! The harness's command line ([`Opts`], see `benches/load/harness.rs` for the flags) and
//! the size of each measured phase ([`Plan`]).
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// The command line: rounds, arms, directories, the open-streams count, the time budget,
/// the proxy core, and whether to hold streams and pause idle arms.
#[derive(Clone)]
pub struct Opts {
    pub rounds: usize,
    pub quick: bool,
    pub arms: Vec<String>,
    pub bin_dir: PathBuf,
    pub out_dir: PathBuf,
    pub litellm_venv: PathBuf,
    pub hold_streams: usize,
    pub hold_set: bool,
    pub extra_sluice: Vec<(String, PathBuf)>,
    /// Config variants of the sluice arm run beside it (same binary): `reuse` and `tracing`
    /// by default.
    pub variants: Vec<String>,
    pub budget: Duration,
    pub proxy_core: u32,
    pub hold: bool,
    pub pause: bool,
    /// `--paired-stream`: route variants are also paired with streamed requests
    /// ([`crate::measure::PairLoad::Stream`]).
    pub paired_stream: bool,
}

/// The flags of `std::env::args` (see `benches/load/harness.rs`); panics on a bad one.
pub fn parse_opts() -> Opts {
    let mut o = Opts {
        rounds: 5,
        quick: false,
        arms: ["direct", "bare", "nginx", "sluice", "litellm"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        bin_dir: PathBuf::from("target/bench/bin"),
        out_dir: PathBuf::from("target/bench"),
        litellm_venv: PathBuf::from("target/bench/litellm-venv"),
        // The fd hard limit here is 20,000 and a proxy holds two sockets per stream.
        hold_streams: 9_800,
        hold_set: false,
        extra_sluice: Vec::new(),
        variants: vec!["reuse".into(), "tracing".into()],
        budget: Duration::from_secs(13 * 60),
        proxy_core: 1,
        hold: true,
        pause: true,
        paired_stream: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => o.rounds = val().parse().expect("--rounds"),
            "--quick" => o.quick = true,
            "--arms" => o.arms = val().split(',').map(|s| s.trim().to_string()).collect(),
            "--bin-dir" => o.bin_dir = val().into(),
            "--out-dir" => o.out_dir = val().into(),
            "--litellm-venv" => o.litellm_venv = val().into(),
            "--hold-streams" => {
                o.hold_streams = val().parse().expect("--hold-streams");
                o.hold_set = true;
            }
            "--budget-s" => o.budget = Duration::from_secs(val().parse().expect("--budget-s")),
            "--proxy-core" => o.proxy_core = val().parse().expect("--proxy-core"),
            "--extra-sluice" => {
                let v = val();
                let (name, path) = v.split_once('=').expect("--extra-sluice NAME=PATH");
                o.extra_sluice.push((format!("sluice-{name}"), path.into()));
            }
            "--sluice-variants" => {
                o.variants = val()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "--no-hold" => o.hold = false,
            "--no-pause" => o.pause = false,
            "--paired-stream" => o.paired_stream = true,
            _ => panic!("unknown option {a} (see benches/load/harness.rs)"),
        }
    }
    if !o.arms.iter().any(|a| a == "direct") {
        o.arms.insert(0, "direct".into()); // latency baseline, always measured
    }
    o
}

/// Phase sizes. `slow` is LiteLLM (a Python proxy, ~100x the cost per request).
pub struct Plan {
    pub warmup: u64,
    pub cpu_conns: usize,
    pub cpu_requests: u64,
    pub rps_conns: usize,
    pub rps_secs: f64,
    pub seq_requests: u64,
    pub open_rates: Vec<f64>,
    pub open_secs: f64,
    pub open_conns: usize,
    pub streams: u64,
}

/// The phase sizes for `--quick` or not, for a slow arm (LiteLLM) or a fast one.
pub fn plan(quick: bool, slow: bool) -> Plan {
    let (q, s) = (quick, slow);
    Plan {
        warmup: if s { 30 } else { 500 },
        cpu_conns: 8,
        cpu_requests: match (q, s) {
            (false, false) => 20_000,
            (true, false) => 4_000,
            (false, true) => 400,
            (true, true) => 100,
        },
        rps_conns: 32,
        rps_secs: if q { 1.0 } else { 2.5 },
        seq_requests: match (q, s) {
            (false, false) => 2_000,
            (true, false) => 500,
            (false, true) => 200,
            (true, true) => 50,
        },
        open_rates: vec![50.0, 200.0],
        open_secs: if q { 1.5 } else { 4.0 },
        open_conns: 16,
        streams: match (q, s) {
            (false, false) => 100,
            (true, false) => 20,
            (false, true) => 30,
            (true, true) => 10,
        },
    }
}

/// `p` for the JSON report.
pub fn plan_json(p: &Plan) -> Value {
    json!({
        "warmup": p.warmup, "cpu_conns": p.cpu_conns, "cpu_requests": p.cpu_requests,
        "rps_conns": p.rps_conns, "rps_secs": p.rps_secs, "seq_requests": p.seq_requests,
        "open_rates": p.open_rates, "open_secs": p.open_secs, "open_conns": p.open_conns, "streams": p.streams,
    })
}
