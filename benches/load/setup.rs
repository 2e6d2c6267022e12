//! Setting up a run: the upstream on this process's core, then every arm asked for on the
//! proxy core (LiteLLM first: it needs ~30 s to become ready), each smoke-tested; an arm
//! that cannot start is skipped with a note, except direct, bare and sluice.
use crate::arms::{litellm_config, nginx_config, sluice_config, smoke, Arm, Kind};
use crate::arms::{LITELLM_MASTER, UPSTREAM_KEY, VIRTUAL_KEY};
use crate::client::get;
use crate::load::{port_open, wait_until};
use crate::opts::Opts;
use crate::procs::{alive, taskset, Procs};
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
    let mut notes: Vec<String> = Vec::new();
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

    // --- upstream (on this process's core)
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
    log(t0, format!("upstream on {up_addr} (pid {up_pid})"));

    let mut arms: Vec<Arm> = vec![Arm {
        name: "direct".into(),
        kind: Kind::Direct,
        addr: up_addr,
        pid: None,
        auth: VIRTUAL_KEY.into(),
        admin: None,
    }];
    let core = opts.proxy_core;

    // --- LiteLLM first: it needs ~30 s to become ready.
    let mut litellm_pending: Option<(SocketAddr, u32)> = None;
    let mut litellm_version = String::new();
    if want("litellm") {
        let exe = opts.litellm_venv.join("bin/litellm");
        if exe.exists() {
            litellm_version = Command::new(opts.litellm_venv.join("bin/python"))
                .args([
                    "-c",
                    "import importlib.metadata as m; print(m.version('litellm'))",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            let port = free_port();
            let cfg = dir.join("litellm.yaml");
            std::fs::write(&cfg, litellm_config(up_addr.port())).map_err(|e| e.to_string())?;
            let mut c = taskset(core, &exe);
            c.args(["--config"])
                .arg(&cfg)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--num_workers",
                    "1",
                ])
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .env("LITELLM_LOG", "ERROR")
                .env("LITELLM_TELEMETRY", "False")
                .env("NO_DOCS", "True")
                .env("DISABLE_ADMIN_UI", "True")
                .stdout(std::fs::File::create(dir.join("litellm.log")).map_err(|e| e.to_string())?)
                .stderr(std::fs::File::create(dir.join("litellm.err")).map_err(|e| e.to_string())?);
            match procs.spawn("litellm", c) {
                Ok(pid) => {
                    litellm_pending = Some((SocketAddr::from(([127, 0, 0, 1], port)), pid));
                    log(
                        t0,
                        format!("litellm {litellm_version} starting on :{port} (pid {pid})"),
                    );
                }
                Err(e) => notes.push(format!("litellm arm skipped: cannot start ({e})")),
            }
        } else {
            notes.push(format!(
                "litellm arm skipped: {} not installed (scripts/bench_load.sh installs litellm[proxy]==1.106.2 there; the install failed or was skipped)",
                exe.display()
            ));
        }
    }

    // --- bare Pingora
    if want("bare") {
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
        });
    }

    // --- nginx
    let mut nginx_version = String::new();
    if want("nginx") {
        let exe = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        match exe {
            None => notes.push(
                "nginx arm skipped: nginx not installed (apt-get install -y nginx-light)".into(),
            ),
            Some(exe) => {
                nginx_version = Command::new(&exe)
                    .arg("-v")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                    .unwrap_or_default();
                let port = free_port();
                let conf = dir.join("nginx.conf");
                std::fs::write(&conf, nginx_config(&dir, port, up_addr.port()))
                    .map_err(|e| e.to_string())?;
                let mut c = taskset(core, &exe);
                c.arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg(dir.join("nginx-error.log"))
                    .stdout(Stdio::null())
                    .stderr(
                        std::fs::File::create(dir.join("nginx.err")).map_err(|e| e.to_string())?,
                    );
                let pid = procs.spawn("nginx", c).map_err(|e| e.to_string())?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if wait_until(Duration::from_secs(10), || port_open(addr)).await {
                    arms.push(Arm {
                        name: "nginx".into(),
                        kind: Kind::Nginx,
                        addr,
                        pid: Some(pid),
                        auth: VIRTUAL_KEY.into(),
                        admin: None,
                    });
                } else {
                    notes.push(format!(
                        "nginx arm skipped: it did not listen ({})",
                        std::fs::read_to_string(dir.join("nginx.err"))
                            .unwrap_or_default()
                            .trim()
                    ));
                    procs.stop(pid);
                }
            }
        }
    }

    // --- sluice
    // The main sluice arm, then any `--extra-sluice NAME=PATH` variants (other builds of the
    // same config, e.g. a profile experiment or a fix, measured in the same interleaved session).
    let mut sluices: Vec<(String, PathBuf)> = Vec::new();
    if want("sluice") {
        sluices.push(("sluice".into(), bin(opts, "sluice")));
    }
    sluices.extend(opts.extra_sluice.iter().cloned());
    for (name, exe) in sluices {
        let (port, admin) = (free_port(), free_port());
        // The config gets a directory of its own: sluice watches the config's directory, and a
        // log file written next to it would trigger a re-read on every write.
        let conf_dir = dir.join(format!("{name}-conf"));
        std::fs::create_dir_all(&conf_dir).map_err(|e| e.to_string())?;
        let cfg = conf_dir.join("sluice.yaml");
        std::fs::write(&cfg, sluice_config(port, admin, up_addr.port()))
            .map_err(|e| e.to_string())?;
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
        });
    }

    // --- wait for LiteLLM
    if let Some((addr, pid)) = litellm_pending {
        log(t0, "waiting for litellm (up to 180 s)");
        let ready = wait_until(Duration::from_secs(180), || async move {
            alive(pid) && matches!(get(addr, "/health/liveliness").await, Some((200, _)))
        })
        .await;
        if ready {
            arms.push(Arm {
                name: "litellm".into(),
                kind: Kind::Litellm,
                addr,
                pid: Some(pid),
                auth: LITELLM_MASTER.into(),
                admin: None,
            });
            log(t0, "litellm ready");
        } else {
            let err = std::fs::read_to_string(dir.join("litellm.err")).unwrap_or_default();
            let tail: String = err
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            notes.push(format!(
                "litellm arm skipped: not ready within 180 s; stderr tail:\n{tail}"
            ));
            procs.stop(pid);
        }
    }

    // --- smoke test every arm
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
    Ok(Session {
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
        arms,
        nginx_version,
        litellm_version,
    })
}
