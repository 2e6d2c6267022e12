//! Setting up a run: the upstream on this process's core, then every arm asked for on the
//! proxy core (LiteLLM first: it needs ~30 s to become ready), each smoke-tested; an arm
//! that cannot start is skipped with a note, except direct, bare and sluice.
use crate::arms::{sluice_config, sluice_variant_config, smoke, tracing_variant_config, Arm, Kind};
use crate::arms::{UPSTREAM_KEY, VIRTUAL_KEY};
use crate::client::get;
use crate::load::{port_open, wait_until};
use crate::opts::Opts;
use crate::procs::{taskset, Procs};
use crate::support::net::free_port;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A run under way: its processes (stopped on drop), the upstream and the arms that passed
/// their smoke test, and what the report needs from the start.
pub struct Session {
    pub t0: Instant,
    pub started: chrono::DateTime<chrono::Utc>,
    pub stamp: String,
    /// Temp dir of this run (configs, logs), removed at the end.
    pub dir: PathBuf,
    pub procs: Procs,
    pub notes: Vec<String>,
    pub loadavg_start: String,
    pub clk_tck: f64,
    pub up_addr: SocketAddr,
    pub up_pid: u32,
    pub arms: Vec<Arm>,
    pub nginx_version: String,
    pub litellm_version: String,
}

/// `msg` on stderr with the seconds since `t0`.
pub fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

/// The binary `name` in `--bin-dir`.
pub fn bin(opts: &Opts, name: &str) -> PathBuf {
    opts.bin_dir.join(name)
}

/// The environment every sluice of the run gets: its keys and `RUST_LOG=info`.
pub fn sluice_env(c: &mut Command) {
    c.env("BENCH_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("BENCH_VIRTUAL_KEY", VIRTUAL_KEY)
        .env("RUST_LOG", "info");
}

/// Start the upstream and the arms of `opts`; an error when a binary is missing or direct,
/// bare or sluice cannot start or fails its smoke test.
pub async fn start(opts: &Opts) -> Result<Session, String> {
    let t0 = Instant::now();
    let started = chrono::Utc::now();
    let stamp = started.format("%Y%m%dT%H%M%SZ").to_string();
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("sluice-bench-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut procs = Procs {
        list: Vec::new(),
        pidfile: opts.out_dir.join("run.pids"),
    };
    let notes: Vec<String> = Vec::new();
    let loadavg_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let clk_tck: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    for b in ["bench_upstream", "bare_pingora", "sluice"] {
        if !bin(opts, b).exists() {
            return Err(format!(
                "{} missing (run scripts/bench_load.sh)",
                bin(opts, b).display()
            ));
        }
    }
    let want = |a: &str| opts.arms.iter().any(|x| x == a);

    let (up_addr, up_pid) = start_upstream(opts, &mut procs)?;
    log(t0, format!("upstream on {up_addr} (pid {up_pid})"));
    let core = opts.proxy_core;
    let direct = Arm {
        name: "direct".into(),
        kind: Kind::Direct,
        addr: up_addr,
        pid: None,
        auth: VIRTUAL_KEY.into(),
        admin: None,
        plain_route: false,
    };
    let mut s = Session {
        t0,
        started,
        stamp,
        dir,
        procs,
        notes,
        loadavg_start,
        clk_tck,
        up_addr,
        up_pid,
        arms: vec![direct],
        nginx_version: String::new(),
        litellm_version: String::new(),
    };
    // LiteLLM first: it needs ~30 s to become ready.
    let litellm_pending = if want("litellm") {
        s.start_litellm(opts, core)?
    } else {
        None
    };
    if want("bare") {
        s.start_bare(opts, core).await?;
    }
    if want("nginx") {
        s.start_nginx(core).await?;
    }
    s.start_sluices(opts, core, want("sluice")).await?;
    if let Some((addr, pid)) = litellm_pending {
        s.wait_litellm(addr, pid).await;
    }
    s.smoke_all().await?;
    Ok(s)
}

/// Start the upstream (`bench_upstream`, 20 chunks 1 ms apart) on this process's core and a
/// free port; its address (from its first stdout line) and pid.
fn start_upstream(opts: &Opts, procs: &mut Procs) -> Result<(SocketAddr, u32), String> {
    let mut up_cmd = Command::new(bin(opts, "bench_upstream"));
    up_cmd
        .args(["--port", "0", "--chunks", "20", "--gap-ms", "1"])
        .stdout(Stdio::piped());
    let mut up_child = up_cmd
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("upstream: {e}"))?;
    let up_pid = up_child.id();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = up_child.stdout.take().ok_or("upstream stdout")?;
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
    }
    procs.list.push(("upstream".into(), up_pid, up_child));
    procs.write_pidfile();
    let up_addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or(format!("upstream said {line:?}"))?;
    Ok((up_addr, up_pid))
}

impl Session {
    /// Start bare Pingora on a free port and wait until it listens.
    async fn start_bare(&mut self, opts: &Opts, core: u32) -> Result<(), String> {
        let (dir, up_addr) = (self.dir.clone(), self.up_addr);
        let (procs, arms) = (&mut self.procs, &mut self.arms);
        let port = free_port();
        let mut c = taskset(core, &bin(opts, "bare_pingora"));
        c.arg(format!("127.0.0.1:{port}"))
            .arg(up_addr.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("bare.err")).map_err(|e| e.to_string())?);
        let pid = procs.spawn("bare", c).map_err(|e| e.to_string())?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !wait_until(Duration::from_secs(10), || port_open(addr)).await {
            return Err("bare_pingora did not listen".into());
        }
        arms.push(Arm {
            name: "bare".into(),
            kind: Kind::Bare,
            addr,
            pid: Some(pid),
            auth: VIRTUAL_KEY.into(),
            admin: None,
            plain_route: false,
        });
        Ok(())
    }

    /// Start the main sluice arm (with `main`), then any `--extra-sluice NAME=PATH` variants
    /// (other builds of the same config, e.g. a profile experiment or a fix, measured in the
    /// same interleaved session); each validated first and ready on `/readyz`.
    async fn start_sluices(&mut self, opts: &Opts, core: u32, main: bool) -> Result<(), String> {
        let (dir, up_addr) = (self.dir.clone(), self.up_addr);
        let (procs, arms) = (&mut self.procs, &mut self.arms);
        let mut sluices: Vec<(String, PathBuf)> = Vec::new();
        if main {
            sluices.push(("sluice".into(), bin(opts, "sluice")));
        }
        sluices.extend(opts.extra_sluice.iter().cloned());
        // Config variants of the main arm: (name, binary, variant).
        let mut runs: Vec<(String, PathBuf, Option<String>)> =
            sluices.into_iter().map(|(n, e)| (n, e, None)).collect();
        if main {
            for v in &opts.variants {
                runs.push((format!("sluice-{v}"), bin(opts, "sluice"), Some(v.clone())));
            }
        }
        // The `tracing` variant's OTLP sink: an in-process mock answering every export 200,
        // alive until the harness exits.
        let mut sink: Option<crate::support::mock::Mock> = None;
        for (name, exe, variant) in runs {
            let (port, admin) = (free_port(), free_port());
            // The config gets a directory of its own: sluice watches the config's directory, and a
            // log file written next to it would trigger a re-read on every write.
            let conf_dir = dir.join(format!("{name}-conf"));
            std::fs::create_dir_all(&conf_dir).map_err(|e| e.to_string())?;
            let cfg = conf_dir.join("sluice.yaml");
            // A route variant's config also has the `plain` route (the same route without the
            // feature), measured against it in the same process.
            let (text, plain_route) = match &variant {
                None => (sluice_config(port, admin, up_addr.port()), false),
                Some(v) if v == "tracing" => {
                    if sink.is_none() {
                        sink = Some(crate::support::mock::Mock::start().await);
                    }
                    let sink_port = sink.as_ref().map_or(0, |m| m.addr.port());
                    let text = tracing_variant_config(port, admin, up_addr.port(), sink_port);
                    (text, false)
                }
                Some(v) => {
                    let text = sluice_variant_config(v, port, admin, up_addr.port()).ok_or_else(|| {
                        format!("unknown sluice variant {v:?} (known: reuse, cache, cache-full, cache-nostore, cache-noretain, coalesce, same, tracing)")
                    })?;
                    (text, true)
                }
            };
            std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
            let v = Command::new(&exe)
                .arg("validate")
                .arg(&cfg)
                .output()
                .map_err(|e| format!("{}: {e}", exe.display()))?;
            if !v.status.success() {
                return Err(format!(
                    "bench sluice config invalid for {}:\n{}",
                    exe.display(),
                    String::from_utf8_lossy(&v.stderr)
                ));
            }
            let log_path = dir.join(format!("{name}.log"));
            let mut c = taskset(core, &exe);
            c.arg("run")
                .arg("-c")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).map_err(|e| e.to_string())?);
            sluice_env(&mut c);
            let pid = procs.spawn(&name, c).map_err(|e| e.to_string())?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let admin = SocketAddr::from(([127, 0, 0, 1], admin));
            let ready = wait_until(Duration::from_secs(15), || async move {
                matches!(get(admin, "/readyz").await, Some((200, _)))
            })
            .await;
            if !ready {
                return Err(format!(
                    "{name} not ready: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            arms.push(Arm {
                name,
                kind: Kind::Sluice,
                addr,
                pid: Some(pid),
                auth: VIRTUAL_KEY.into(),
                admin: Some(admin),
                plain_route,
            });
        }
        Ok(())
    }

    /// A smoke test of every arm: an arm that fails it is skipped with a note, except direct,
    /// bare and sluice (an error).
    async fn smoke_all(&mut self) -> Result<(), String> {
        let (procs, arms, notes) = (&mut self.procs, &mut self.arms, &mut self.notes);
        let mut i = 0;
        while i < arms.len() {
            match smoke(&arms[i]).await {
                Ok(()) => i += 1,
                Err(e) => {
                    let a = arms.remove(i);
                    if a.kind == Kind::Direct || a.kind == Kind::Bare || a.kind == Kind::Sluice {
                        return Err(format!("{} smoke test failed: {e}", a.name));
                    }
                    notes.push(format!("{} arm skipped: smoke test failed: {e}", a.name));
                    if let Some(p) = a.pid {
                        procs.stop(p);
                    }
                }
            }
        }
        Ok(())
    }
}
