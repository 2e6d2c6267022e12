//! The peer arms sluice is compared with: LiteLLM (started first, it needs ~30 s to become
//! ready, and waited for last) and nginx; each skipped with a note when not installed or not
//! ready.
use crate::arms::{litellm_config, nginx_config, Arm, Kind, LITELLM_MASTER, VIRTUAL_KEY};
use crate::client::get;
use crate::load::{port_open, wait_until};
use crate::opts::Opts;
use crate::procs::{alive, taskset};
use crate::setup::{log, Session};
use crate::support::net::free_port;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

impl Session {
    /// Start LiteLLM (when installed) on a free port; its address and pid, to wait for.
    pub fn start_litellm(
        &mut self,
        opts: &Opts,
        core: u32,
    ) -> Result<Option<(SocketAddr, u32)>, String> {
        let (dir, up_addr, t0) = (self.dir.clone(), self.up_addr, self.t0);
        let (procs, notes) = (&mut self.procs, &mut self.notes);
        let mut litellm_pending: Option<(SocketAddr, u32)> = None;
        let mut litellm_version = String::new();
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
        self.litellm_version = litellm_version;
        Ok(litellm_pending)
    }

    /// Start nginx (when installed) on a free port; skipped with a note when it does not
    /// listen.
    pub async fn start_nginx(&mut self, core: u32) -> Result<(), String> {
        let (dir, up_addr) = (self.dir.clone(), self.up_addr);
        let (procs, arms, notes) = (&mut self.procs, &mut self.arms, &mut self.notes);
        let mut nginx_version = String::new();
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
                        plain_route: false,
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
        self.nginx_version = nginx_version;
        Ok(())
    }

    /// Wait (180 s at most) for LiteLLM at `addr` (process `pid`); skipped with a note and
    /// stopped when not ready.
    pub async fn wait_litellm(&mut self, addr: SocketAddr, pid: u32) {
        let (dir, t0) = (self.dir.clone(), self.t0);
        let (procs, arms, notes) = (&mut self.procs, &mut self.arms, &mut self.notes);
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
                plain_route: false,
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
}
