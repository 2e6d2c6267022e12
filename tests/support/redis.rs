//! The Redis launcher: a `redis-server` (Debian package `redis-server`) on 127.0.0.1 and a
//! port it picked, without persistence, killed on drop; plus what the tests read back from it
//! through `redis-cli`.
use super::net::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server on 127.0.0.1:port, killed on drop.
pub struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Start one on `port` and wait (10 s at most) until it accepts connections; an error
    /// when `redis-server` cannot be spawned (not installed).
    pub fn try_start_on(port: u16) -> std::io::Result<Redis> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Killed on drop even if the wait below panics.
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }
    /// [`Redis::try_start_on`], panicking when `redis-server` is missing.
    pub fn start_on(port: u16) -> Redis {
        Self::try_start_on(port)
            .expect("redis-server not installed: `make test` installs the Debian package")
    }
    /// On a free port.
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }
    /// On a free port; an error when `redis-server` cannot be spawned.
    pub fn try_start() -> std::io::Result<Redis> {
        Self::try_start_on(free_port())
    }
    /// Send `signal` (`STOP`: it stops answering but keeps its connections open; `CONT`) to
    /// the server.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} redis-server");
    }
    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    /// One `redis-cli` command against this server; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Sum of the integer values of the keys matching `pattern` (e.g. one tenant's windows).
    pub fn sum_keys(&self, pattern: &str) -> u64 {
        self.keys(pattern)
            .iter()
            .map(|k| self.cli(&["GET", k]).trim().parse::<u64>().unwrap_or(0))
            .sum()
    }
    /// The keys matching `pattern` (e.g. `sluice:cache:v1:*`), through `redis-cli --scan`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cli(&["--scan", "--pattern", pattern])
            .lines()
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect()
    }
    /// `INFO commandstats` calls of EVALSHA + EVAL.
    pub fn script_calls(&self) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
