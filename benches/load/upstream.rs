//! A fast local LLM-ish upstream for the load benchmark (raw tokio, one thread, HTTP/1.1
//! keep-alive, loopback only).
//!
//! `bench_upstream [--port P] [--chunks N] [--gap-ms G]` (env `BENCH_CHUNKS`, `BENCH_GAP_MS`;
//! defaults 20 chunks, 1 ms apart). Port 0 (the default) binds a free port; the first line on
//! stdout is `listening 127.0.0.1:PORT`.
//!
//! - `POST /v1/chat/completions` (any path ending in `/chat/completions`): a non-streamed
//!   `chat.completion` with a `usage` object, or with `"stream": true` a paced SSE stream of N
//!   `chat.completion.chunk` events G ms apart, then (with `stream_options.include_usage`) a
//!   usage chunk with `"choices": []`, then `data: [DONE]`. The query parameters `chunks` and
//!   `gap_ms` override N and G per request. While pacing, a client that closes is noticed at
//!   once (the connection is dropped), so thousands of held streams cost nothing after.
//! - `GET /_stats`: JSON counters (connections accepted, requests, streams, open streams, requests that carried the
//!   injected key `Bearer sk-bench-upstream-key`).
//! - anything else: `200 {}` (health checks) for GET, 404 otherwise.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static CHAT: AtomicU64 = AtomicU64::new(0);
static STREAMS: AtomicU64 = AtomicU64::new(0);
static OPEN_STREAMS: AtomicU64 = AtomicU64::new(0);
static MAX_OPEN_STREAMS: AtomicU64 = AtomicU64::new(0);
static INJECTED_KEY: AtomicU64 = AtomicU64::new(0);

/// The key sluice's bench config injects; the upstream counts requests that carry it.
const INJECTED: &str = "Bearer sk-bench-upstream-key";
const PROMPT_TOKENS: u64 = 12;

#[derive(Clone, Copy)]
struct Pace {
    chunks: u64,
    gap_ms: u64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mut port = 0u16;
    let mut pace = Pace {
        chunks: env_or("BENCH_CHUNKS", 20),
        gap_ms: env_or("BENCH_GAP_MS", 1),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--port" => port = v.parse().expect("--port"),
            "--chunks" => pace.chunks = v.parse().expect("--chunks"),
            "--gap-ms" => pace.gap_ms = v.parse().expect("--gap-ms"),
            _ => panic!("usage: bench_upstream [--port P] [--chunks N] [--gap-ms G]"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_reuseaddr(true).expect("reuseaddr");
        sock.bind(([127, 0, 0, 1], port).into()).expect("bind");
        let listener = sock.listen(4096).expect("listen");
        println!("listening {}", listener.local_addr().expect("addr"));
        loop {
            let Ok((s, _)) = listener.accept().await else {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            CONNECTIONS.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let _ = serve(s, pace).await;
            });
        }
    });
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode a complete chunked body at the start of `b`: (body, bytes consumed), or None if more
/// bytes are needed.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let eol = find(&b[pos..], b"\r\n")?;
        let line = std::str::from_utf8(&b[pos..pos + eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos += eol + 2;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            let end = find(&b[pos..], b"\r\n")?;
            if end == 0 {
                return Some((body, pos + 2));
            }
            let end = find(&b[pos..], b"\r\n\r\n")?;
            return Some((body, pos + end + 4));
        }
        if b.len() < pos + size + 2 {
            return None;
        }
        body.extend_from_slice(&b[pos..pos + size]);
        pos += size + 2;
    }
}

struct Request {
    method: String,
    target: String,
    body: Vec<u8>,
    close: bool,
    injected_key: bool,
}

/// Read one request; None on EOF.
async fn read_request(s: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if s.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let (mut len, mut chunked, mut close, mut injected_key) = (0usize, false, false, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().unwrap_or(0);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        } else if k.eq_ignore_ascii_case("authorization") {
            injected_key = v == INJECTED;
        }
    }
    let body = if chunked {
        loop {
            if let Some((body, used)) = dechunk(&buf[head_end..]) {
                buf.advance(head_end + used);
                break body;
            }
            if s.read_buf(buf).await? == 0 {
                return Ok(None);
            }
        }
    } else {
        while buf.len() < head_end + len {
            if s.read_buf(buf).await? == 0 {
                return Ok(None);
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.advance(head_end + len);
        body
    };
    Ok(Some(Request {
        method,
        target,
        body,
        close,
        injected_key,
    }))
}

async fn serve(mut s: TcpStream, pace: Pace) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(8192);
    while let Some(req) = read_request(&mut s, &mut buf).await? {
        REQUESTS.fetch_add(1, Relaxed);
        if req.injected_key {
            INJECTED_KEY.fetch_add(1, Relaxed);
        }
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        if req.method == "POST" && path.ends_with("/chat/completions") {
            CHAT.fetch_add(1, Relaxed);
            chat(&mut s, &req, query, pace).await?;
        } else if req.method == "GET" && path == "/_stats" {
            let body = format!(
                "{{\"connections\":{},\"requests\":{},\"chat\":{},\"streams\":{},\"open_streams\":{},\"max_open_streams\":{},\"injected_key\":{}}}",
                CONNECTIONS.load(Relaxed),
                REQUESTS.load(Relaxed),
                CHAT.load(Relaxed),
                STREAMS.load(Relaxed),
                OPEN_STREAMS.load(Relaxed),
                MAX_OPEN_STREAMS.load(Relaxed),
                INJECTED_KEY.load(Relaxed)
            );
            write_json(&mut s, 200, &body).await?;
        } else if req.method == "GET" {
            write_json(&mut s, 200, "{}").await?;
        } else {
            write_json(&mut s, 404, r#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}"#).await?;
        }
        if req.close {
            break;
        }
    }
    Ok(())
}

async fn write_json(s: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await
}

struct OpenStream;
impl OpenStream {
    fn new() -> Self {
        let n = OPEN_STREAMS.fetch_add(1, Relaxed) + 1;
        MAX_OPEN_STREAMS.fetch_max(n, Relaxed);
        OpenStream
    }
}
impl Drop for OpenStream {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Relaxed);
    }
}

async fn chat(
    s: &mut TcpStream,
    req: &Request,
    query: &str,
    mut pace: Pace,
) -> std::io::Result<()> {
    let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
    let model = serde_json::to_string(v["model"].as_str().unwrap_or("bench-model"))?;
    if v["stream"].as_bool() != Some(true) {
        let body = format!(
            concat!(
                r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":{},"#,
                r#""choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello! This is a benchmark reply from the local upstream."}},"finish_reason":"stop"}}],"#,
                r#""usage":{{"prompt_tokens":{},"completion_tokens":11,"total_tokens":{}}}}}"#
            ),
            model,
            PROMPT_TOKENS,
            PROMPT_TOKENS + 11
        );
        return write_json(s, 200, &body).await;
    }
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("chunks", n)) => pace.chunks = n.parse().unwrap_or(pace.chunks),
            Some(("gap_ms", n)) => pace.gap_ms = n.parse().unwrap_or(pace.gap_ms),
            _ => {}
        }
    }
    let include_usage = v["stream_options"]["include_usage"].as_bool() == Some(true);
    STREAMS.fetch_add(1, Relaxed);
    let _open = OpenStream::new();
    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
        .await?;
    let usage_null = if include_usage {
        r#","usage":null"#
    } else {
        ""
    };
    let mut probe = [0u8; 512];
    for i in 0..pace.chunks {
        if i > 0 && pace.gap_ms > 0 {
            // Pace, but notice a client that leaves (HTTP/1.1: it sends nothing while waiting).
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(pace.gap_ms)) => {}
                r = s.read(&mut probe) => {
                    if matches!(r, Ok(0) | Err(_)) {
                        return Err(std::io::ErrorKind::ConnectionAborted.into());
                    }
                }
            }
        }
        let delta = if i == 0 {
            r#"{"role":"assistant","content":"tok "}"#
        } else {
            r#"{"content":"tok "}"#
        };
        let finish = if i + 1 == pace.chunks {
            r#""stop""#
        } else {
            "null"
        };
        let ev = format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{model},\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]{usage_null}}}\n\n"
        );
        s.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
            .await?;
    }
    let mut tail = String::new();
    if include_usage {
        let ev = format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{model},\"choices\":[],\"usage\":{{\"prompt_tokens\":{PROMPT_TOKENS},\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
            pace.chunks,
            PROMPT_TOKENS + pace.chunks
        );
        tail.push_str(&format!("{:x}\r\n{ev}\r\n", ev.len()));
    }
    let done = "data: [DONE]\n\n";
    tail.push_str(&format!("{:x}\r\n{done}\r\n0\r\n\r\n", done.len()));
    s.write_all(tail.as_bytes()).await
}
