//! Processes: every child is recorded (pid file for the wrapper's trap) and stopped on drop,
//! with its whole tree; CPU time and memory read from `/proc` over a process tree; cores
//! pinned with `taskset`.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The children of a run by (name, pid, handle), listed in `pidfile` for the wrapper's trap.
pub struct Procs {
    pub list: Vec<(String, u32, std::process::Child)>,
    pub pidfile: PathBuf,
}

impl Procs {
    /// Spawn `cmd` (stdin closed) as `name` and record it; its pid.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> std::io::Result<u32> {
        let child = cmd.stdin(Stdio::null()).spawn()?;
        let pid = child.id();
        self.list.push((name.to_string(), pid, child));
        self.write_pidfile();
        Ok(pid)
    }

    /// Write every recorded tree's pids to `pidfile`, one a line.
    pub fn write_pidfile(&self) {
        let mut s = String::new();
        for (_, pid, _) in &self.list {
            for p in tree(*pid) {
                s.push_str(&format!("{p}\n"));
            }
        }
        let _ = std::fs::write(&self.pidfile, s);
    }

    /// SIGCONT + SIGTERM the whole tree of one child, SIGKILL after 5 s.
    pub fn stop(&mut self, pid: u32) {
        let Some(i) = self.list.iter().position(|(_, p, _)| *p == pid) else {
            return;
        };
        let (_, _, mut child) = self.list.remove(i);
        let pids = tree(pid);
        signal("CONT", &pids);
        signal("TERM", &pids);
        let t = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Children of the child (LiteLLM workers, nginx workers) that outlived it.
        let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
        signal("KILL", &left);
        self.write_pidfile();
    }

    /// [`Procs::stop`] every child, the last started first.
    pub fn stop_all(&mut self) {
        let pids: Vec<u32> = self.list.iter().map(|(_, p, _)| *p).collect();
        for p in pids.into_iter().rev() {
            self.stop(p);
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `kill -SIG` every pid of `pids` (errors ignored).
pub fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(|p| p.to_string()))
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` exists and is not a zombie (`/proc/<pid>/stat`).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(st) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(rest) = st.rsplit_once(") ").map(|x| x.1) {
                    if let Some(pp) = rest.split(' ').nth(1).and_then(|x| x.parse().ok()) {
                        parent.push((p, pp));
                    }
                }
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// CPU time of a process tree: (utime+stime in clock ticks from /proc/<pid>/stat, on-CPU ns
/// summed over the live threads' /proc/<pid>/task/*/schedstat).
pub fn cpu(pid: u32) -> (u64, u64) {
    let (mut ticks, mut ns) = (0u64, 0u64);
    for p in tree(pid) {
        if let Ok(st) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            if let Some(rest) = st.rsplit_once(") ").map(|x| x.1) {
                let f: Vec<&str> = rest.split(' ').collect();
                // fields after the comm: [0]=state ... utime = field 14 overall = index 11 here
                ticks += f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                ticks += f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                    ns += s
                        .split(' ')
                        .next()
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    (ticks, ns)
}

/// (VmRSS, VmHWM) in KiB summed over a process tree.
pub fn mem_kib(pid: u32) -> (u64, u64) {
    let (mut rss, mut hwm) = (0, 0);
    for p in tree(pid) {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            for l in s.lines() {
                let v = || {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                if l.starts_with("VmRSS:") {
                    rss += v();
                } else if l.starts_with("VmHWM:") {
                    hwm += v();
                }
            }
        }
    }
    (rss, hwm)
}

/// Move every thread of `pids` to `core` (`taskset -a -p -c`).
pub fn set_affinity(pids: &[u32], core: u32) {
    for p in pids {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", &core.to_string(), &p.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The core this process is pinned to (the first allowed one).
pub fn client_core() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().split([',', '-']).next().map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `taskset -c core prog`: `prog` pinned to `core`.
pub fn taskset(core: u32, prog: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(core.to_string()).arg(prog);
    c
}
