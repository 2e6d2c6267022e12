//! Side-by-side load harness (issue 6): the same keep-alive HTTP/1.1 LLM workload through
//!
//! - `direct`  : straight to the local upstream (`bench_upstream`), the latency baseline;
//! - `bare`    : bare Pingora 0.9.1 passthrough (`bare_pingora`), the floor;
//! - `nginx`   : Debian nginx, one worker, `proxy_pass` to a keepalive upstream;
//! - `sluice`  : the release binary with every policy on (virtual key -> tenant, key injection,
//!   request/token/concurrency limits and budgets set too high to reject, usage parsing,
//!   metrics, one JSON log line per request to a file);
//! - `litellm` : LiteLLM proxy 1.106.2, one worker (skipped with a message when not installed).
//!
//! Rounds interleave the arms (A B C ... A B C ..., the start rotating each round); the arms
//! not under test are SIGSTOPped so they cannot steal the proxy core. Every proxy runs on core
//! `--proxy-core` (default 1) through `taskset`; this process (the load generator) and the
//! upstream run on the core `scripts/bench_load.sh` pinned it to (core 0).
//!
//! Usage: see `scripts/bench_load.sh` (it builds, installs the peers and pins the cores).
//! `bench_load [--rounds N] [--quick] [--arms direct,bare,nginx,sluice,litellm]
//!   [--bin-dir target/bench/bin] [--out-dir target/bench] [--litellm-venv DIR]
//!   [--hold-streams N] [--budget-s S] [--proxy-core C] [--no-hold] [--no-pause]
//!   [--extra-sluice NAME=PATH ...]`   (another sluice build as arm `sluice-NAME`, same config)
//! `bench_load --load-only ADDR [REQUESTS [STREAMS [CONNS]]]` and
//! `bench_load --sluice-config PROXY_PORT ADMIN_PORT UPSTREAM_PORT`: helpers for
//! scripts/bench_load_profile.sh.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------------------------------------
// Options

#[derive(Clone)]
struct Opts {
    rounds: usize,
    quick: bool,
    arms: Vec<String>,
    bin_dir: PathBuf,
    out_dir: PathBuf,
    litellm_venv: PathBuf,
    hold_streams: usize,
    hold_set: bool,
    extra_sluice: Vec<(String, PathBuf)>,
    budget: Duration,
    proxy_core: u32,
    hold: bool,
    pause: bool,
}

fn parse_opts() -> Opts {
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
        budget: Duration::from_secs(13 * 60),
        proxy_core: 1,
        hold: true,
        pause: true,
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
            "--no-hold" => o.hold = false,
            "--no-pause" => o.pause = false,
            _ => panic!("unknown option {a} (see benches/load/harness.rs)"),
        }
    }
    if !o.arms.iter().any(|a| a == "direct") {
        o.arms.insert(0, "direct".into()); // latency baseline, always measured
    }
    o
}

/// Phase sizes. `slow` is LiteLLM (a Python proxy, ~100x the cost per request).
struct Plan {
    warmup: u64,
    cpu_conns: usize,
    cpu_requests: u64,
    rps_conns: usize,
    rps_secs: f64,
    seq_requests: u64,
    open_rates: Vec<f64>,
    open_secs: f64,
    open_conns: usize,
    streams: u64,
}

fn plan(quick: bool, slow: bool) -> Plan {
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

// ------------------------------------------------------------------------------------------
// Processes: every child is recorded (pid file for the wrapper's trap) and stopped on drop.

struct Procs {
    list: Vec<(String, u32, std::process::Child)>,
    pidfile: PathBuf,
}

impl Procs {
    fn spawn(&mut self, name: &str, mut cmd: Command) -> std::io::Result<u32> {
        let child = cmd.stdin(Stdio::null()).spawn()?;
        let pid = child.id();
        self.list.push((name.to_string(), pid, child));
        self.write_pidfile();
        Ok(pid)
    }

    fn write_pidfile(&self) {
        let mut s = String::new();
        for (_, pid, _) in &self.list {
            for p in tree(*pid) {
                s.push_str(&format!("{p}\n"));
            }
        }
        let _ = std::fs::write(&self.pidfile, s);
    }

    /// SIGCONT + SIGTERM the whole tree of one child, SIGKILL after 5 s.
    fn stop(&mut self, pid: u32) {
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

    fn stop_all(&mut self) {
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

fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(|p| p.to_string()))
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
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
fn cpu(pid: u32) -> (u64, u64) {
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
fn mem_kib(pid: u32) -> (u64, u64) {
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
fn set_affinity(pids: &[u32], core: u32) {
    for p in pids {
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", &core.to_string(), &p.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The core this process is pinned to (the first allowed one).
fn client_core() -> u32 {
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

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("addr").port()
}

fn taskset(core: u32, prog: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(core.to_string()).arg(prog);
    c
}

// ------------------------------------------------------------------------------------------
// A small HTTP/1.1 keep-alive client that notes when the first body byte arrived.

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Resp {
    status: u16,
    first_body: Option<Instant>,
    done: Instant,
    body: Vec<u8>,
}

struct Conn {
    s: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        if self.s.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Send `req` and read the whole response. Returns (response, server wants close).
    async fn roundtrip(&mut self, req: &[u8], keep_body: bool) -> std::io::Result<(Resp, bool)> {
        self.s.write_all(req).await?;
        self.read_response(keep_body).await
    }

    async fn read_response(&mut self, keep_body: bool) -> std::io::Result<(Resp, bool)> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let (status, len, chunked, close) = {
            let head = std::str::from_utf8(&self.buf[..head_end])
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            let (mut len, mut chunked, mut close) = (None, false, false);
            for l in lines {
                if let Some((k, v)) = l.split_once(':') {
                    let v = v.trim();
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.parse::<usize>().ok();
                    } else if k.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = v.to_ascii_lowercase().contains("chunked");
                    } else if k.eq_ignore_ascii_case("connection") {
                        close = v.eq_ignore_ascii_case("close");
                    }
                }
            }
            (status, len, chunked, close)
        };
        self.buf.advance(head_end);
        let mut first_body = (!self.buf.is_empty()).then(Instant::now);
        let mut body = Vec::new();
        if chunked {
            loop {
                // chunk-size line
                let eol = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    self.fill().await?;
                    first_body.get_or_insert_with(Instant::now);
                };
                let size = std::str::from_utf8(&self.buf[..eol])
                    .ok()
                    .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                    .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
                self.buf.advance(eol + 2);
                if size == 0 {
                    loop {
                        // trailers, then the empty line
                        let eol = loop {
                            if let Some(i) = find(&self.buf, b"\r\n") {
                                break i;
                            }
                            self.fill().await?;
                        };
                        self.buf.advance(eol + 2);
                        if eol == 0 {
                            break;
                        }
                    }
                    break;
                }
                while self.buf.len() < size + 2 {
                    self.fill().await?;
                    first_body.get_or_insert_with(Instant::now);
                }
                if keep_body {
                    body.extend_from_slice(&self.buf[..size]);
                }
                self.buf.advance(size + 2);
            }
        } else if let Some(len) = len {
            while self.buf.len() < len {
                self.fill().await?;
                first_body.get_or_insert_with(Instant::now);
            }
            if keep_body {
                body.extend_from_slice(&self.buf[..len]);
            }
            self.buf.advance(len);
        } else {
            // read to close
            loop {
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) => break,
                    Ok(_) => {
                        first_body.get_or_insert_with(Instant::now);
                    }
                    Err(e) => return Err(e),
                }
            }
            if keep_body {
                body.extend_from_slice(&self.buf);
            }
            self.buf.clear();
            return Ok((
                Resp {
                    status,
                    first_body,
                    done: Instant::now(),
                    body,
                },
                true,
            ));
        }
        Ok((
            Resp {
                status,
                first_body,
                done: Instant::now(),
                body,
            },
            close,
        ))
    }
}

/// A connection that reconnects when the server closed it or a request failed.
struct Client {
    addr: SocketAddr,
    conn: Option<Conn>,
    timeout: Duration,
}

impl Client {
    fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            conn: None,
            timeout,
        }
    }

    async fn send(&mut self, req: &[u8], keep_body: bool) -> Option<Resp> {
        if self.conn.is_none() {
            self.conn = tokio::time::timeout(self.timeout, Conn::connect(self.addr))
                .await
                .ok()?
                .ok();
        }
        let conn = self.conn.as_mut()?;
        match tokio::time::timeout(self.timeout, conn.roundtrip(req, keep_body)).await {
            Ok(Ok((resp, close))) => {
                if close {
                    self.conn = None;
                }
                Some(resp)
            }
            _ => {
                self.conn = None;
                None
            }
        }
    }
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    let mut c = Client::new(addr, Duration::from_secs(2));
    let r = c.send(req.as_bytes(), true).await?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

// ------------------------------------------------------------------------------------------
// Workload

const MODEL: &str = "gpt-4o-mini";

fn chat_request(addr: SocketAddr, auth: &str, stream: bool, query: &str) -> Vec<u8> {
    let body = if stream {
        format!(
            r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Say hello to the benchmark in one short sentence."}}],"max_tokens":64,"stream":true,"stream_options":{{"include_usage":true}}}}"#
        )
    } else {
        format!(
            r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Say hello to the benchmark in one short sentence."}}],"max_tokens":64}}"#
        )
    };
    format!(
        "POST /v1/chat/completions{query} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {auth}\r\ncontent-type: application/json\r\naccept: {}\r\ncontent-length: {}\r\n\r\n{body}",
        if stream { "text/event-stream" } else { "application/json" },
        body.len()
    )
    .into_bytes()
}

fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64
}

struct Lat {
    ns: Vec<u64>,
    errors: u64,
}

impl Lat {
    fn p(&mut self, q: f64) -> f64 {
        self.ns.sort_unstable();
        pct(&self.ns, q) / 1000.0
    }
}

/// Closed loop, `conns` connections, exactly `total` requests. Returns (ok, errors, seconds).
async fn closed_count(
    addr: SocketAddr,
    req: &[u8],
    conns: usize,
    total: u64,
    to: Duration,
) -> (u64, u64, f64) {
    let left = Rc::new(Cell::new(total));
    let (ok, err) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    let t = Instant::now();
    join_all((0..conns).map(|_| {
        let (left, ok, err) = (left.clone(), ok.clone(), err.clone());
        async move {
            let mut c = Client::new(addr, to);
            while left.get() > 0 {
                left.set(left.get() - 1);
                match c.send(req, false).await {
                    Some(r) if r.status == 200 => ok.set(ok.get() + 1),
                    _ => err.set(err.get() + 1),
                }
            }
        }
    }))
    .await;
    (ok.get(), err.get(), t.elapsed().as_secs_f64())
}

/// Closed loop for `secs`, counting completions after a warm-up tenth. Returns (rps, errors).
async fn closed_for(
    addr: SocketAddr,
    req: &[u8],
    conns: usize,
    secs: f64,
    to: Duration,
) -> (f64, u64) {
    let t0 = Instant::now();
    let warm = t0 + Duration::from_secs_f64(secs * 0.1);
    let end = t0 + Duration::from_secs_f64(secs);
    let (ok, err) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    join_all((0..conns).map(|_| {
        let (ok, err) = (ok.clone(), err.clone());
        async move {
            let mut c = Client::new(addr, to);
            while Instant::now() < end {
                match c.send(req, false).await {
                    Some(r) if r.status == 200 => {
                        if r.done >= warm && r.done <= end {
                            ok.set(ok.get() + 1)
                        }
                    }
                    _ => err.set(err.get() + 1),
                }
            }
        }
    }))
    .await;
    (ok.get() as f64 / (secs * 0.9), err.get())
}

/// One connection, `n` requests one after the other.
async fn sequential(addr: SocketAddr, req: &[u8], n: u64, to: Duration) -> Lat {
    let mut c = Client::new(addr, to);
    let mut lat = Lat {
        ns: Vec::with_capacity(n as usize),
        errors: 0,
    };
    for _ in 0..n {
        let t = Instant::now();
        match c.send(req, false).await {
            Some(r) if r.status == 200 => lat.ns.push((r.done - t).as_nanos() as u64),
            _ => lat.errors += 1,
        }
    }
    lat
}

/// Open loop at `rate` req/s for `secs`, spread round-robin over `conns` keep-alive
/// connections. Latency runs from the send, or from the scheduled time when the connection was
/// still busy then (no coordinated omission; the 1 ms timer's own lateness is not counted).
async fn open_loop(
    addr: SocketAddr,
    req: &[u8],
    rate: f64,
    secs: f64,
    conns: usize,
    to: Duration,
) -> (Lat, f64) {
    let total = (rate * secs) as usize;
    let t0 = Instant::now() + Duration::from_millis(5);
    let res = join_all((0..conns).map(|j| async move {
        let mut c = Client::new(addr, to);
        let mut ns = Vec::new();
        let mut errors = 0u64;
        let mut last_done = t0;
        let mut i = j;
        while i < total {
            let sched = t0 + Duration::from_secs_f64(i as f64 / rate);
            let start = if last_done > sched {
                sched
            } else {
                tokio::time::sleep_until(sched.into()).await;
                Instant::now()
            };
            match c.send(req, false).await {
                Some(r) if r.status == 200 => {
                    ns.push((r.done - start).as_nanos() as u64);
                    last_done = r.done;
                }
                _ => {
                    errors += 1;
                    last_done = Instant::now();
                }
            }
            i += conns;
        }
        (ns, errors)
    }))
    .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let mut lat = Lat {
        ns: Vec::new(),
        errors: 0,
    };
    for (ns, e) in res {
        lat.ns.extend(ns);
        lat.errors += e;
    }
    let achieved = lat.ns.len() as f64 / elapsed.max(secs);
    (lat, achieved)
}

/// `n` streams one after the other on one connection: (TTFT, total time), both from the send.
async fn streams(addr: SocketAddr, req: &[u8], n: u64, to: Duration) -> (Lat, Lat) {
    let mut c = Client::new(addr, to);
    let mut ttft = Lat {
        ns: Vec::new(),
        errors: 0,
    };
    let mut total = Lat {
        ns: Vec::new(),
        errors: 0,
    };
    for _ in 0..n {
        let t = Instant::now();
        match c.send(req, true).await {
            Some(r) if r.status == 200 && find(&r.body, b"data: [DONE]").is_some() => {
                ttft.ns
                    .push((r.first_body.unwrap_or(r.done) - t).as_nanos() as u64);
                total.ns.push((r.done - t).as_nanos() as u64);
            }
            _ => {
                ttft.errors += 1;
                total.errors += 1;
            }
        }
    }
    (ttft, total)
}

/// Open a stream and return its socket once the first SSE bytes arrived.
async fn open_stream(addr: SocketAddr, req: &[u8]) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(req).await?;
    let mut buf = Vec::with_capacity(2048);
    let mut tmp = [0u8; 2048];
    loop {
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(h) = find(&buf, b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 200") {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            if find(&buf[h..], b"data:").is_some() {
                return Ok(s);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Arms

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Direct,
    Bare,
    Nginx,
    Sluice,
    Litellm,
}

struct Arm {
    name: String,
    kind: Kind,
    addr: SocketAddr,
    pid: Option<u32>,
    auth: String,
    admin: Option<SocketAddr>,
}

const VIRTUAL_KEY: &str = "sk-bench-virtual-key-0001";
const UPSTREAM_KEY: &str = "sk-bench-upstream-key";
const LITELLM_MASTER: &str = "sk-bench-litellm-9f2c71d4e8a3";

fn sluice_config(proxy: u16, admin: u16, upstream: u16) -> String {
    format!(
        r#"# sluice bench config: every policy on, limits far above the load so nothing is rejected.
listeners: {{proxy: "127.0.0.1:{proxy}", admin: "127.0.0.1:{admin}"}}
server: {{threads: 1, log_format: json, drain_timeout_seconds: 1}}
pools:
  - name: local
    provider: openai
    endpoints:
      - url: "http://127.0.0.1:{upstream}"
        keys: [{{env: BENCH_UPSTREAM_KEY}}]
routes:
  - {{name: chat, match: {{path_prefix: /v1}}, pools: [local]}}
models:
  - match: "gpt-4o-mini*"
    max_output_tokens: 16384
    price: {{input_per_1m: 0.15, output_per_1m: 0.60, cached_input_per_1m: 0.075}}
limits:
  default_max_output_tokens: 4096
tenants:
  header: x-sluice-tenant
  reject_unknown_keys: true
  list:
    - name: bench
      virtual_keys: [{{env: BENCH_VIRTUAL_KEY}}]
      limits:
        requests_per_second: 1000000000
        requests_per_minute: 1000000000
        tokens_per_minute: 1000000000000
        input_tokens_per_minute: 1000000000000
        output_tokens_per_minute: 1000000000000
        max_concurrent: 1000000
        budget: {{usd_per_day: 1000000000, usd_per_month: 1000000000}}
        models:
          - {{model: "gpt-4o*", requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, max_concurrent: 1000000}}
"#
    )
}

fn nginx_config(dir: &Path, port: u16, upstream: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 19990; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream llm {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"#
    )
}

fn litellm_config(upstream: u16) -> String {
    format!(
        r#"model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: "http://127.0.0.1:{upstream}/v1"
      api_key: "{UPSTREAM_KEY}"
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  master_key: "{LITELLM_MASTER}"
"#
    )
}

async fn wait_until<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_ok()
}

/// A request of each kind must succeed before an arm is measured.
async fn smoke(arm: &Arm) -> Result<(), String> {
    let to = Duration::from_secs(30);
    let mut c = Client::new(arm.addr, to);
    let r = c
        .send(&chat_request(arm.addr, &arm.auth, false, ""), true)
        .await
        .ok_or("non-stream request failed")?;
    if r.status != 200 || find(&r.body, b"\"usage\"").is_none() {
        return Err(format!(
            "non-stream: status {} body {}",
            r.status,
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let r = c
        .send(&chat_request(arm.addr, &arm.auth, true, ""), true)
        .await
        .ok_or("stream request failed")?;
    if r.status != 200 || find(&r.body, b"data: [DONE]").is_none() {
        return Err(format!(
            "stream: status {} body {}",
            r.status,
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Statistics helpers

fn median(v: &[f64]) -> f64 {
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

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "–".into()
    }
}

type Metrics = BTreeMap<String, f64>;

// ------------------------------------------------------------------------------------------

/// `bench_load --load-only ADDR [REQUESTS [STREAMS [CONNS]]]`: just send a fixed load (for
/// profiling a proxy under callgrind/perf: scripts/bench_load_profile.sh).
fn load_only(args: &[String]) -> i32 {
    let addr: SocketAddr = args
        .first()
        .and_then(|a| a.parse().ok())
        .expect("--load-only ADDR");
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let streams_n: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);
    let conns: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(8);
    let auth = std::env::var("BENCH_AUTH").unwrap_or_else(|_| VIRTUAL_KEY.to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let to = Duration::from_secs(120);
        let (ok, err, secs) = closed_count(addr, &chat_request(addr, &auth, false, ""), conns, n, to).await;
        let (ttft, _) = streams(addr, &chat_request(addr, &auth, true, ""), streams_n, to).await;
        eprintln!(
            "load-only: {ok} ok / {err} errors in {secs:.2} s on {conns} connections; {} streams ok, {} failed",
            ttft.ns.len(),
            ttft.errors
        );
        i32::from(err > 0 || ttft.errors > 0)
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--load-only") {
        std::process::exit(load_only(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some("--sluice-config") {
        // `bench_load --sluice-config PROXY_PORT ADMIN_PORT UPSTREAM_PORT`: the bench config.
        let port = |i: usize| {
            argv.get(i)
                .and_then(|a| a.parse::<u16>().ok())
                .expect("ports")
        };
        print!("{}", sluice_config(port(2), port(3), port(4)));
        return;
    }
    let opts = parse_opts();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async {
        tokio::select! {
            r = run(opts) => match r {
                Ok(()) => 0,
                Err(e) => { eprintln!("bench_load: {e}"); 1 }
            },
            _ = tokio::signal::ctrl_c() => { eprintln!("bench_load: interrupted"); 130 }
        }
    });
    // `run`'s Procs was dropped above: every child is stopped.
    std::process::exit(code);
}

fn log(t0: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:6.1}s] {}", t0.elapsed().as_secs_f64(), msg.as_ref());
}

async fn run(opts: Opts) -> Result<(), String> {
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
    let bin = |name: &str| opts.bin_dir.join(name);
    for b in ["bench_upstream", "bare_pingora", "sluice"] {
        if !bin(b).exists() {
            return Err(format!(
                "{} missing (run scripts/bench_load.sh)",
                bin(b).display()
            ));
        }
    }
    let want = |a: &str| opts.arms.iter().any(|x| x == a);

    // --- upstream (on this process's core)
    let mut up_cmd = Command::new(bin("bench_upstream"));
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
        let mut c = taskset(core, &bin("bare_pingora"));
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
    let sluice_env = |c: &mut Command| {
        c.env("BENCH_UPSTREAM_KEY", UPSTREAM_KEY)
            .env("BENCH_VIRTUAL_KEY", VIRTUAL_KEY)
            .env("RUST_LOG", "info");
    };
    // The main sluice arm, then any `--extra-sluice NAME=PATH` variants (other builds of the
    // same config, e.g. a profile experiment or a fix, measured in the same interleaved session).
    let mut sluices: Vec<(String, PathBuf)> = Vec::new();
    if want("sluice") {
        sluices.push(("sluice".into(), bin("sluice")));
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
    let names: Vec<String> = arms.iter().map(|a| a.name.clone()).collect();
    log(t0, format!("arms: {}", names.join(", ")));

    let pause_all = |arms: &[Arm], except: Option<usize>| {
        for (j, a) in arms.iter().enumerate() {
            if let Some(p) = a.pid {
                let sig = if Some(j) == except || !opts.pause {
                    "CONT"
                } else {
                    "STOP"
                };
                signal(sig, &tree(p));
            }
        }
    };

    // ---------------------------------------------------------------- rounds
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
            pause_all(&arms, Some(idx));
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
    pause_all(&arms, None); // leave none stopped
    if opts.pause {
        for a in &arms {
            if let Some(p) = a.pid {
                signal("CONT", &tree(p));
            }
        }
    }

    // Peak RSS after the load rounds.
    let mut peak: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for a in &arms {
        if let Some(p) = a.pid {
            peak.insert(a.name.clone(), mem_kib(p));
        }
    }
    let mut checks: Vec<String> = Vec::new();
    for a in &arms {
        let (mut inj, mut reqs, mut conns) = (0.0, 0.0, Vec::new());
        for r in &per_round {
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

    // ---------------------------------------------------------------- open streams
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
            pause_all(&arms, Some(idx));
            let v = hold_streams(&arms[idx], up_addr, n).await;
            log(t0, format!("{name} open streams: {v}"));
            hold_res.insert(name.into(), v);
        }
        pause_all(&arms, None);
        for a in &arms {
            if let Some(p) = a.pid {
                signal("CONT", &tree(p));
            }
        }
    }
    let mut peak_after: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for a in &arms {
        if let Some(p) = a.pid {
            peak_after.insert(a.name.clone(), mem_kib(p));
        }
    }

    // ---------------------------------------------------------------- start-to-ready
    let startup = measure_startup(
        &bin("sluice"),
        &dir,
        up_addr,
        core,
        if opts.quick { 3 } else { 11 },
        &sluice_env,
    )
    .await;
    log(t0, format!("sluice start-to-ready: {startup}"));

    // ---------------------------------------------------------------- binary size
    let size = std::fs::metadata(bin("sluice"))
        .map(|m| m.len())
        .unwrap_or(0);
    let stripped_copy = dir.join("sluice.stripped");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&stripped_copy)
        .arg(bin("sluice"))
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| std::fs::metadata(&stripped_copy).ok())
        .map(|m| m.len())
        .unwrap_or(size);

    // ---------------------------------------------------------------- stop everything
    let all_pids: Vec<u32> = procs.list.iter().flat_map(|x| tree(x.1)).collect();
    procs.stop_all();
    let leftovers: Vec<u32> = all_pids.into_iter().filter(|p| alive(*p)).collect();
    let loadavg_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // ---------------------------------------------------------------- summary
    let names: Vec<String> = arms.iter().map(|a| a.name.clone()).collect();
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
    for a in &names {
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
    let g = |a: &str, k: &str| {
        med.get(&(a.to_string(), k.to_string()))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let r = |a: &str, k: &str| {
        ratio
            .get(&(a.to_string(), k.to_string()))
            .copied()
            .unwrap_or(f64::NAN)
    };

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
    let targets = vec![
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
            "added p50 over direct, 1 connection sequential, proxy on its own core (µs)",
            "≤ 100 µs",
            g("sluice", "seq_p50_added_us"),
            g("sluice", "seq_p50_added_us") <= 100.0,
            "µs",
        ),
        (
            "the same with the proxy on the client's core (no cross-core wake-ups) (µs)",
            "≤ 100 µs",
            g("sluice", "seq_samecore_p50_added_us"),
            g("sluice", "seq_samecore_p50_added_us") <= 100.0,
            "µs",
        ),
        (
            "TTFT added over direct, p50 (µs)",
            "≤ 500 µs",
            g("sluice", "ttft_p50_added_us"),
            g("sluice", "ttft_p50_added_us") <= 500.0,
            "µs",
        ),
        (
            "RSS per open stream (KiB)",
            "≤ 40 KiB",
            hold_per_stream("sluice") / 1024.0,
            hold_per_stream("sluice") / 1024.0 <= 40.0,
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
        "binary": {"path": bin("sluice").display().to_string(), "bytes": size, "bytes_after_strip": stripped},
        "targets": targets.iter().map(|(name, goal, v, ok, unit)| json!({"target": name, "goal": goal, "measured": num(*v), "unit": unit, "met": ok})).collect::<Vec<_>>(),
        "checks": checks,
        "notes": notes,
        "leftover_pids": leftovers,
    });
    let json_path = opts.out_dir.join(format!("load-{stamp}.json"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;

    // ---------------------------------------------------------------- markdown
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
    for a in &names {
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
    for a in &names {
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
    for a in &names {
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
    for a in &names {
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
        startup["idle_rss_kib"], bin("sluice").display(), size, size as f64 / 1e6, stripped
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
    for a in &names {
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
    let _ = writeln_s(w, "\n## Targets\n");
    let _ = writeln_s(w, "| target | goal | measured | met |");
    let _ = writeln_s(w, "|---|---|---:|---|");
    for (name, goal, v, ok, unit) in &targets {
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
    let md_path = opts.out_dir.join("load-latest.md");
    std::fs::write(&md_path, &md).map_err(|e| e.to_string())?;
    println!("{md}");
    eprintln!("wrote {} and {}", json_path.display(), md_path.display());
    let _ = std::fs::remove_dir_all(&dir);
    if !leftovers.is_empty() {
        return Err(format!("processes left behind: {leftovers:?}"));
    }
    Ok(())
}

fn writeln_s(w: &mut String, s: &str) -> std::fmt::Result {
    w.push_str(s);
    w.push('\n');
    Ok(())
}

fn plan_json(p: &Plan) -> Value {
    json!({
        "warmup": p.warmup, "cpu_conns": p.cpu_conns, "cpu_requests": p.cpu_requests,
        "rps_conns": p.rps_conns, "rps_secs": p.rps_secs, "seq_requests": p.seq_requests,
        "open_rates": p.open_rates, "open_secs": p.open_secs, "open_conns": p.open_conns, "streams": p.streams,
    })
}

async fn upstream_stats(up: SocketAddr) -> Value {
    match get(up, "/_stats").await {
        Some((200, b)) => serde_json::from_str(&b).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// Every phase for one arm in one round.
async fn measure_arm(
    arm: &Arm,
    up: SocketAddr,
    up_pid: u32,
    quick: bool,
    clk_tck: f64,
    first: bool,
    proxy_core: u32,
) -> Metrics {
    let slow = arm.kind == Kind::Litellm;
    let p = plan(quick, slow);
    let to = Duration::from_secs(if slow { 60 } else { 10 });
    let req = chat_request(arm.addr, &arm.auth, false, "");
    let sreq = chat_request(arm.addr, &arm.auth, true, "");
    let mut m = Metrics::new();
    let mut errors = 0.0;
    let snap = || {
        let (t, ns) = arm.pid.map(cpu).unwrap_or((0, 0));
        let (ut, uns) = cpu(up_pid);
        (t, ns, ut, uns)
    };

    // warm-up
    let w = sequential(
        arm.addr,
        &req,
        if first { p.warmup * 2 } else { p.warmup },
        to,
    )
    .await;
    errors += w.errors as f64;

    // CPU per request over a fixed count
    let before = snap();
    let st0 = upstream_stats(up).await;
    let (ok, err, secs) = closed_count(arm.addr, &req, p.cpu_conns, p.cpu_requests, to).await;
    let st1 = upstream_stats(up).await;
    let after = snap();
    errors += err as f64;
    let n = ok.max(1) as f64;
    if arm.pid.is_some() {
        m.insert(
            "cpu_us_per_req".into(),
            (after.0 - before.0) as f64 / clk_tck * 1e6 / n,
        );
        m.insert(
            "cpu_sched_us_per_req".into(),
            (after.1 - before.1) as f64 / 1e3 / n,
        );
    }
    m.insert(
        "upstream_cpu_us_per_req".into(),
        (after.3 - before.3) as f64 / 1e3 / n,
    );
    m.insert("cpu_phase_rps".into(), ok as f64 / secs);
    let injected =
        st1["injected_key"].as_f64().unwrap_or(0.0) - st0["injected_key"].as_f64().unwrap_or(0.0);
    let upstream_reqs = st1["chat"].as_f64().unwrap_or(0.0) - st0["chat"].as_f64().unwrap_or(0.0);
    m.insert("upstream_requests_in_cpu_phase".into(), upstream_reqs);
    m.insert("upstream_injected_key_in_cpu_phase".into(), injected);
    let conns =
        st1["connections"].as_f64().unwrap_or(0.0) - st0["connections"].as_f64().unwrap_or(0.0);
    // The two /_stats calls themselves open one connection each.
    m.insert(
        "upstream_conns_per_1k_req".into(),
        (conns - 1.0).max(0.0) * 1000.0 / n,
    );

    // max RPS
    let (rps, err) = closed_for(arm.addr, &req, p.rps_conns, p.rps_secs, to).await;
    errors += err as f64;
    m.insert("max_rps".into(), rps);

    // sequential latency
    let before = snap();
    let mut lat = sequential(arm.addr, &req, p.seq_requests, to).await;
    let after = snap();
    errors += lat.errors as f64;
    m.insert("seq_p50_us".into(), lat.p(0.50));
    m.insert("seq_p99_us".into(), lat.p(0.99));
    if arm.pid.is_some() {
        m.insert(
            "seq_cpu_us_per_req".into(),
            (after.1 - before.1) as f64 / 1e3 / lat.ns.len().max(1) as f64,
        );
    }

    // The same, with the proxy moved onto the load generator's core for the phase: no
    // cross-core wake-ups (what the pinned figure pays on each of its 4 hops).
    let pids = arm.pid.map(tree).unwrap_or_default();
    set_affinity(&pids, client_core());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut lat = sequential(arm.addr, &req, p.seq_requests, to).await;
    set_affinity(&pids, proxy_core);
    errors += lat.errors as f64;
    m.insert("seq_samecore_p50_us".into(), lat.p(0.50));
    m.insert("seq_samecore_p99_us".into(), lat.p(0.99));

    // open loop
    for rate in p.open_rates.clone() {
        let key = format!("open{}", rate as u64);
        if rps < rate * 1.5 {
            continue; // not sustainable on one worker: not measured
        }
        let before = snap();
        let (mut lat, achieved) =
            open_loop(arm.addr, &req, rate, p.open_secs, p.open_conns, to).await;
        let after = snap();
        errors += lat.errors as f64;
        m.insert(format!("{key}_p50_us"), lat.p(0.50));
        m.insert(format!("{key}_p99_us"), lat.p(0.99));
        m.insert(format!("{key}_achieved_rps"), achieved);
        if arm.pid.is_some() {
            m.insert(
                format!("{key}_cpu_us_per_req"),
                (after.1 - before.1) as f64 / 1e3 / lat.ns.len().max(1) as f64,
            );
        }
    }

    // streams
    let (mut ttft, mut total) = streams(arm.addr, &sreq, p.streams, to).await;
    errors += ttft.errors as f64;
    m.insert("ttft_p50_us".into(), ttft.p(0.50));
    m.insert("ttft_p99_us".into(), ttft.p(0.99));
    m.insert("stream_total_p50_us".into(), total.p(0.50));
    m.insert("stream_total_p99_us".into(), total.p(0.99));
    m.insert("errors".into(), errors);
    m
}

/// Hold `n` slow streams open through one arm; RSS of its process tree before, at n/2 and at n.
async fn hold_streams(arm: &Arm, up: SocketAddr, n: usize) -> Value {
    let Some(pid) = arm.pid else {
        return Value::Null;
    };
    // Each stream: first chunk at once, then the upstream holds it for up to 10 minutes.
    let req = chat_request(arm.addr, &arm.auth, true, "?chunks=2&gap_ms=600000");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = mem_kib(pid).0;
    let t = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(n);
    let mut errors = 0usize;
    let mut rss_half = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while held.len() + errors < n && Instant::now() < deadline {
        let batch = (n - held.len() - errors).min(250);
        let res = join_all((0..batch).map(|_| async {
            tokio::time::timeout(Duration::from_secs(20), open_stream(arm.addr, &req)).await
        }))
        .await;
        for r in res {
            match r {
                Ok(Ok(s)) => held.push(s),
                _ => errors += 1,
            }
        }
        if rss_half == 0 && held.len() >= n / 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            rss_half = mem_kib(pid).0;
        }
        if errors > n / 10 {
            break;
        }
    }
    let ramp_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, hwm) = mem_kib(pid);
    let up_open = upstream_stats(up).await["open_streams"]
        .as_u64()
        .unwrap_or(0);
    let k = held.len();
    let half_count = n / 2;
    drop(held);
    // Wait for the proxy to close its upstream legs.
    let closed = wait_until(Duration::from_secs(30), || async move {
        upstream_stats(up).await["open_streams"].as_u64() == Some(0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after = mem_kib(pid).0;
    json!({
        "requested": n,
        "held": k,
        "errors": errors,
        "upstream_open_streams_seen": up_open,
        "ramp_s": num(ramp_s),
        "rss_before_kib": rss0,
        "rss_half_kib": rss_half,
        "rss_with_streams_kib": rss1,
        "hwm_kib": hwm,
        "rss_after_close_kib": rss_after,
        "upstream_legs_closed_within_30s": closed,
        "bytes_per_stream": num(if k > 0 { (rss1 as f64 - rss0 as f64) * 1024.0 / k as f64 } else { f64::NAN }),
        "slope_bytes_per_stream": num(if k > half_count && rss_half > 0 { (rss1 as f64 - rss_half as f64) * 1024.0 / (k - half_count) as f64 } else { f64::NAN }),
    })
}

/// Exec to the first `/readyz` 200, `runs` times (the approach of scripts/measure_startup.py).
async fn measure_startup(
    bin: &Path,
    dir: &Path,
    up: SocketAddr,
    core: u32,
    runs: usize,
    env: &dyn Fn(&mut Command),
) -> Value {
    let mut ms = Vec::new();
    let mut idle_rss = 0;
    let mut errors = Vec::new();
    for i in 0..runs {
        let (port, admin) = (free_port(), free_port());
        let cfg_dir = dir.join(format!("startup-{i}"));
        let _ = std::fs::create_dir_all(&cfg_dir);
        let cfg = cfg_dir.join("sluice.yaml");
        if std::fs::write(&cfg, sluice_config(port, admin, up.port())).is_err() {
            continue;
        }
        let mut c = taskset(core, bin);
        c.arg("run")
            .arg("-c")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        env(&mut c);
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
        let t = Instant::now();
        let Ok(mut child) = c.spawn() else {
            errors.push("spawn failed".to_string());
            continue;
        };
        let mut ok = false;
        while t.elapsed() < Duration::from_secs(10) {
            // Blocking on purpose: poll every 0.5 ms like measure_startup.py.
            if let Ok(mut s) = std::net::TcpStream::connect(admin_addr) {
                use std::io::Read;
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .is_ok()
                {
                    let mut b = [0u8; 64];
                    if let Ok(n) = s.read(&mut b) {
                        if find(&b[..n], b" 200 ").is_some() {
                            ok = true;
                            break;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let el = t.elapsed().as_secs_f64() * 1000.0;
        if ok {
            ms.push(el);
            idle_rss = mem_kib(child.id()).0;
        } else {
            errors.push(format!("run {i}: not ready in 10 s"));
        }
        signal("TERM", &[child.id()]);
        let t2 = Instant::now();
        while t2.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({
        "runs": ms.len(),
        "median_ms": num(median(&ms)),
        "min_ms": num(ms.first().copied().unwrap_or(f64::NAN)),
        "max_ms": num(ms.last().copied().unwrap_or(f64::NAN)),
        "all_ms": ms.iter().map(|x| num(*x)).collect::<Vec<_>>(),
        "idle_rss_kib": idle_rss,
        "errors": errors,
        "method": format!("taskset -c {core} sluice run -c CFG (bench config); poll GET /readyz every 0.5 ms; includes taskset's own exec"),
    })
}
