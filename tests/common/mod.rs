//! Test harness: an in-process mock LLM upstream on 127.0.0.1:0 that records every request,
//! and the `sluice` binary started on ports picked by binding port 0, stopped on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The value of header `name` (case-insensitive) among `headers`.
fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A mock upstream speaking enough of OpenAI / Anthropic.
#[derive(Clone)]
pub struct Mock {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// When a connection that was streaming `/slow` saw the peer close.
    pub slow_closed_at: Arc<Mutex<Option<Instant>>>,
    /// Connections accepted.
    pub connections: Arc<Mutex<usize>>,
    /// Status for every request, if set (e.g. 503 for a failing upstream).
    pub force_status: Arc<Mutex<Option<u16>>>,
    /// What to do instead of answering normally.
    pub behavior: Arc<Mutex<Behavior>>,
    /// Released by the test to let a paused [`Behavior::HugeSseLine`] go on.
    pub gate: Arc<tokio::sync::Notify>,
}

/// Faults the mock can inject.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Behavior {
    /// Answer normally.
    #[default]
    Normal,
    /// Answer this status with an OpenAI error body and optional `retry-after` (seconds).
    Status(u16, Option<u32>),
    /// Read the request, never answer.
    Stall,
    /// Stream 3 SSE chunks, then drop the connection.
    CutAfterThree,
    /// 401 when the request's `authorization` contains this key.
    RejectKey(String),
    /// `Status(status, retry_after)` for requests whose body names this model, else normal.
    StatusForModel(String, u16, Option<u32>),
    /// A 200 SSE chat stream: one normal chunk, then one `data:` line of `line_bytes` bytes
    /// sent in 64 KiB pieces with no newline (pausing after `pause_at` bytes until
    /// `Mock::gate` is notified), then its blank line, a usage chunk and `[DONE]`.
    HugeSseLine { line_bytes: usize, pause_at: usize },
    /// A 200 with this content type and body (SSE bodies chunked, others with a length).
    Canned { content_type: String, body: String },
    /// A 200 SSE stream of `body` cut after the number of bytes in the request's `x-cut-at`
    /// header (the whole body without it), sent chunked in two pieces; then `end`.
    CutAt { body: Vec<u8>, end: CutEnd },
}

/// How a [`Behavior::CutAt`] stream ends after its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutEnd {
    /// The end of the chunked body: a clean EOF.
    Eof,
    /// A TCP reset.
    Reset,
    /// Nothing more for 30 s, then a close.
    Stall,
}

impl Mock {
    pub async fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock = Mock {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            slow_closed_at: Arc::default(),
            connections: Arc::default(),
            force_status: Arc::default(),
            behavior: Arc::default(),
            gate: Arc::default(),
        };
        let m = mock.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                *m.connections.lock().unwrap() += 1;
                let m = m.clone();
                tokio::spawn(async move {
                    let _ = m.serve(sock).await;
                });
            }
        });
        mock
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, b: Behavior) {
        *self.behavior.lock().unwrap() = b;
    }

    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    async fn serve(&self, mut sock: TcpStream) -> std::io::Result<()> {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            // Read one request head.
            let head_end = loop {
                if let Some(p) = find(&buf, b"\r\n\r\n") {
                    break p;
                }
                let mut chunk = [0u8; 65536];
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            buf.drain(..head_end + 4);
            let mut lines = head.split("\r\n");
            let mut first = lines.next().unwrap_or("").split(' ');
            let method = first.next().unwrap_or("").to_owned();
            let path = first.next().unwrap_or("").to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                let mut chunk = vec![0u8; 1 << 20];
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body: Vec<u8> = buf.drain(..len).collect();
            let rec = Recorded {
                method,
                path,
                headers,
                body,
            };
            self.requests.lock().unwrap().push(rec.clone());
            if !self.respond(&mut sock, &rec).await? {
                return Ok(());
            }
        }
    }

    /// Answer `rec`; returns whether the connection stays open.
    async fn respond(&self, sock: &mut TcpStream, rec: &Recorded) -> std::io::Result<bool> {
        let mut behavior = self.behavior.lock().unwrap().clone();
        if let Behavior::StatusForModel(model, status, retry_after) = &behavior {
            let json: serde_json::Value = serde_json::from_slice(&rec.body).unwrap_or_default();
            behavior = if json["model"].as_str() == Some(model.as_str()) {
                Behavior::Status(*status, *retry_after)
            } else {
                Behavior::Normal
            };
        }
        match behavior {
            Behavior::Normal => {}
            Behavior::Status(status, retry_after) => {
                let body = format!(
                    r#"{{"error":{{"message":"mock {status}","type":"server_error","param":null,"code":null}}}}"#
                );
                let ra = retry_after
                    .map(|s| format!("retry-after: {s}\r\n"))
                    .unwrap_or_default();
                let head = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{ra}content-length: {}\r\n\r\n", body.len());
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(body.as_bytes()).await?;
                return Ok(true);
            }
            Behavior::RejectKey(k)
                if rec.header("authorization").is_some_and(|a| a.contains(&k)) =>
            {
                let body = r#"{"error":{"message":"bad key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
                write_json(sock, 401, body).await?;
                return Ok(true);
            }
            Behavior::RejectKey(_) | Behavior::StatusForModel(..) => {}
            Behavior::Stall => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return Ok(false);
            }
            Behavior::HugeSseLine {
                line_bytes,
                pause_at,
            } => {
                self.huge_sse_line(sock, line_bytes, pause_at).await?;
                return Ok(true);
            }
            Behavior::Canned { content_type, body } => {
                if content_type.starts_with("text/event-stream") {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n", body.len());
                    sock.write_all(head.as_bytes()).await?;
                    sock.write_all(body.as_bytes()).await?;
                    sock.write_all(b"\r\n0\r\n\r\n").await?;
                } else {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n", body.len());
                    sock.write_all(head.as_bytes()).await?;
                    sock.write_all(body.as_bytes()).await?;
                }
                return Ok(true);
            }
            Behavior::CutAt { body, end } => {
                let cut = rec
                    .header("x-cut-at")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(body.len())
                    .min(body.len());
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await?;
                let (a, b) = body[..cut].split_at(cut / 2);
                for piece in [a, b].into_iter().filter(|p| !p.is_empty()) {
                    sock.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .await?;
                    sock.write_all(piece).await?;
                    sock.write_all(b"\r\n").await?;
                    sock.flush().await?;
                }
                match end {
                    CutEnd::Eof => {
                        sock.write_all(b"0\r\n\r\n").await?;
                        return Ok(true);
                    }
                    CutEnd::Reset => sock.set_zero_linger()?,
                    CutEnd::Stall => tokio::time::sleep(Duration::from_secs(30)).await,
                }
                return Ok(false);
            }
            Behavior::CutAfterThree => {
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await?;
                for i in 0..3 {
                    let e = format!("data: {{\"id\":\"cut\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"part{i} \"}}}}]}}\n\n");
                    sock.write_all(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes())
                        .await?;
                    sock.flush().await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return Ok(false);
            }
        }
        let forced = *self.force_status.lock().unwrap();
        if let Some(status) = forced {
            let body = format!(
                r#"{{"error":{{"message":"forced {status}","type":"server_error","param":null,"code":null}}}}"#
            );
            write_json(sock, status, &body).await?;
            return Ok(true);
        }
        let path = rec.path.split('?').next().unwrap_or("");
        let json: serde_json::Value = serde_json::from_slice(&rec.body).unwrap_or_default();
        let stream = json["stream"].as_bool().unwrap_or(false);
        let model = json["model"].as_str().unwrap_or("none").to_owned();
        match path {
            "/slow" | "/v1/slow/chat/completions" | "/v1/slow/messages" => {
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await?;
                for i in 0..400 {
                    let event = format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n");
                    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                    if sock.write_all(chunk.as_bytes()).await.is_err() {
                        break;
                    }
                    // Watch for the peer closing while we pace the stream.
                    let mut probe = [0u8; 1];
                    match tokio::time::timeout(Duration::from_millis(20), sock.read(&mut probe))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        _ => {}
                    }
                }
                *self.slow_closed_at.lock().unwrap() = Some(Instant::now());
                Ok(false)
            }
            "/v1/chat/completions" if stream => {
                let include = json["stream_options"]["include_usage"]
                    .as_bool()
                    .unwrap_or(false);
                let usage_null = if include { r#","usage":null"# } else { "" };
                let mut events = Vec::new();
                for (i, word) in ["Hello", " from", " the", " mock"].iter().enumerate() {
                    let role = if i == 0 { r#""role":"assistant","# } else { "" };
                    events.push(format!(
                        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{{role}\"content\":\"{word}\"}},\"finish_reason\":null}}]{usage_null}}}\n\n"
                    ));
                }
                if include {
                    // Reported completion = max_tokens when given (a long answer), else 4.
                    let completion = json["max_tokens"].as_u64().unwrap_or(4);
                    events.push(format!("data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"{model}\",\"choices\":[],\"usage\":{{\"prompt_tokens\":17,\"completion_tokens\":{completion},\"total_tokens\":{}}}}}\n\n", 17 + completion));
                }
                events.push("data: [DONE]\n\n".to_owned());
                sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await?;
                for e in events {
                    sock.write_all(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes())
                        .await?;
                }
                sock.write_all(b"0\r\n\r\n").await?;
                Ok(true)
            }
            "/v1/chat/completions" => {
                let body = format!(
                    r#"{{"id":"c2","object":"chat.completion","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{},"completion_tokens":1,"total_tokens":{}}},"echo_body_len":{}}}"#,
                    rec.body.len() / 4,
                    rec.body.len() / 4 + 1,
                    rec.body.len()
                );
                write_json(sock, 200, &body).await?;
                Ok(true)
            }
            _ => {
                let body = serde_json::json!({"echo_path": rec.path, "echo_method": rec.method, "echo_body_len": rec.body.len()}).to_string();
                write_json(sock, 200, &body).await?;
                Ok(true)
            }
        }
    }
}

impl Mock {
    /// [`Behavior::HugeSseLine`].
    async fn huge_sse_line(
        &self,
        sock: &mut TcpStream,
        line_bytes: usize,
        pause_at: usize,
    ) -> std::io::Result<()> {
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await?;
        let first = "data: {\"choices\":[{\"delta\":{\"content\":\"big\"}}]}\n\ndata: ";
        sock.write_all(format!("{:x}\r\n{first}\r\n", first.len()).as_bytes())
            .await?;
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        let mut paused = false;
        while sent < line_bytes {
            if !paused && sent >= pause_at {
                self.gate.notified().await;
                paused = true;
            }
            let n = piece.len().min(line_bytes - sent);
            sock.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            sock.write_all(&piece[..n]).await?;
            sock.write_all(b"\r\n").await?;
            sent += n;
        }
        let end = "\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";
        sock.write_all(format!("{:x}\r\n{end}\r\n0\r\n\r\n", end.len()).as_bytes())
            .await
    }
}

async fn write_json(sock: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Write `text` to `path` atomically (a temp file renamed over it), as editors and the kubelet
/// do: sluice's directory watch must never read a half-written config.
pub fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A free 127.0.0.1 port (bound to port 0, then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        path: &std::path::Path,
        proxy: &str,
        admin: &str,
        env: &[(&str, &str)],
    ) -> Sluice {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
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

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = self.admin.trim_start_matches("http://").to_owned();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sluice exited early ({status}): {}", self.log());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                use std::io::Write;
                let _ =
                    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                let mut line = String::new();
                let _ = BufReader::new(s).read_line(&mut line);
                if line.contains(" 200 ") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sluice not ready in 20 s");
    }

    /// Poll metric `name`/`labels` until `ok(value)` or 10 s; returns the last value. For values
    /// written by the log stage, which runs just after the response ends.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name, labels).await;
            if ok(v) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sum of the samples of metric `name` whose labels include every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response read off a raw socket by [`raw_http`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// Write `request` to `addr` (`http://host:port` or `host:port`) byte for byte (reqwest and
/// hyper normalize request-targets; this does not) and read the response until the server
/// closes (send `connection: close`) or 10 s pass. `status` 0: no response at all.
pub async fn raw_http(addr: &str, request: &[u8]) -> RawResponse {
    let addr = addr.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf)).await;
    let Some(end) = find(&buf, b"\r\n\r\n") else {
        return RawResponse {
            status: 0,
            headers: Vec::new(),
            body: buf,
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let (mut out, mut rest) = (Vec::new(), body.as_slice());
        while let Some(p) = find(rest, b"\r\n") {
            let size = std::str::from_utf8(&rest[..p])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .unwrap_or(0);
            if size == 0 || rest.len() < p + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[p + 2..p + 2 + size]);
            rest = &rest[(p + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// A TCP relay on 127.0.0.1:0 to `target` that holds every chunk the target sends back for
/// `delay` before passing it on (in order): a slow Redis, or any slow server. Requests go
/// through at once. Stops accepting when dropped; relayed connections end with their peers.
pub struct DelayProxy {
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    pub async fn start(target: SocketAddr, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                    let down = tokio::spawn(async move {
                        while let Some((due, bytes)) = rx.recv().await {
                            tokio::time::sleep_until(due.into()).await;
                            if cw.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0
                            || tx
                                .send((Instant::now() + delay, buf[..n].to_vec()))
                                .is_err()
                        {
                            break;
                        }
                    }
                    drop(tx);
                    let _ = down.await;
                    up.abort();
                });
            }
        });
        DelayProxy { addr, accept }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM` ...), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Reset the peak RSS (`VmHWM`) of `pid` to its current RSS (`/proc/<pid>/clear_refs`, value
/// 5, Linux 4.0+; see proc(5)).
pub fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}
