//! The process launcher: the `sluice` binary started on listeners picked by binding port 0,
//! with its config in a temp dir of its own and its stderr in a log file there; ready when
//! `/readyz` answers 200, killed (and its dir removed) on drop.
use super::net::free_port;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sluice binary under test: cargo's `CARGO_BIN_EXE_sluice` where cargo sets it
/// (integration tests and benches), else the path in `SLUICE_BIN`.
pub fn sluice_bin() -> PathBuf {
    option_env!("CARGO_BIN_EXE_sluice")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("SLUICE_BIN").map(PathBuf::from))
        .expect("no sluice binary: set SLUICE_BIN")
}

/// One `GET /readyz` to `addr` (`host:port`) on a fresh connection (read timeout 1 s): whether
/// the status line says 200.
pub fn readyz(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line.contains(" 200 ")
}

/// Write `text` to `path` atomically (a temp file renamed over it), as editors and the kubelet
/// do: sluice's directory watch must never read a half-written config.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A running `sluice` process; killed on drop.
pub struct Sluice {
    child: Child,
    pub proxy: String,
    pub admin: String,
    pub dir: PathBuf,
}

impl Sluice {
    /// Start sluice with `body` (YAML without `listeners`) and `env` vars.
    pub fn start(body: &str, env: &[(&str, &str)]) -> Sluice {
        let (proxy, admin) = Self::listeners();
        let dir = Self::temp_dir();
        let path = dir.join("sluice.yaml");
        std::fs::write(
            &path,
            format!("{}{body}", Self::listeners_yaml(&proxy, &admin)),
        )
        .unwrap();
        Self::start_file(dir, &path, &proxy, &admin, env)
    }

    /// Two free `127.0.0.1:port` addresses (proxy, admin).
    pub fn listeners() -> (String, String) {
        (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        )
    }

    /// The `listeners:` YAML line for `proxy` / `admin`.
    pub fn listeners_yaml(proxy: &str, admin: &str) -> String {
        format!("listeners: {{proxy: '{proxy}', admin: '{admin}'}}\n")
    }

    /// A fresh temp dir (removed when the `Sluice` using it drops).
    pub fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Start sluice on the config at `path` (which names `proxy`/`admin` as listeners).
    pub fn start_file(
        dir: PathBuf,
        path: &Path,
        proxy: &str,
        admin: &str,
        env: &[(&str, &str)],
    ) -> Sluice {
        let mut cmd = Command::new(sluice_bin());
        let log = std::fs::File::create(dir.join("sluice.log")).unwrap();
        cmd.args(["run", "-c"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(log);
        cmd.env(
            "RUST_LOG",
            std::env::var("SLUICE_TEST_LOG")
                .unwrap_or_else(|_| "warn,sluice::access=info,sluice::reload=info".into()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut s = Sluice {
            child,
            proxy: format!("http://{proxy}"),
            admin: format!("http://{admin}"),
            dir,
        };
        s.wait_ready();
        s
    }

    /// Replace the config file with `body` (YAML without `listeners`, which stay) and wait
    /// (bounded) until sluice reports one more successful reload.
    pub async fn reload(&self, body: &str) {
        let name = "sluice_config_reload_total";
        let before = self.metric(name, &[("result", "success")]).await;
        let listeners = Self::listeners_yaml(
            self.proxy.trim_start_matches("http://"),
            self.admin.trim_start_matches("http://"),
        );
        write_atomically(&self.dir.join("sluice.yaml"), &format!("{listeners}{body}"));
        self.signal("HUP");
        let after = self
            .wait_metric(name, &[("result", "success")], |v| v > before)
            .await;
        assert!(after > before, "config not reloaded:\n{}", self.log());
    }

    /// Send `signal` (e.g. "HUP", "TERM") to sluice.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Wait (bounded) for the process to exit; returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The sluice process id (for `/proc/<pid>/status`, see [`proc_status_kib`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What sluice wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sluice.log")).unwrap_or_default()
    }

    /// The log once it contains `needle` (the access line is written after the response,
    /// from the log stage): polled for up to 5 s, then whatever it holds.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `input_hash` of the first access line that has one (the response cache's key,
    /// 64 hex digits), once the log holds it (see [`Sluice::wait_log`]); empty if none came.
    pub async fn input_hash(&self) -> String {
        const FIELD: &str = "input_hash=\"";
        let log = self.wait_log(FIELD).await;
        log.split(FIELD)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = self.admin.trim_start_matches("http://").to_owned();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice exited early ({status}): {}", self.log());
            }
            if readyz(&addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sluice not ready in 20 s");
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
