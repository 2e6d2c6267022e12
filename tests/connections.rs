//! Client connection bounds (`server.header_timeout_ms`, `server.keepalive_idle_timeout_ms`,
//! `server.max_client_connections`) against the sluice binary, over raw TCP on 127.0.0.1, and
//! the memory the process gives back once connections close. Sizes stay well under the
//! open-files limit (`ulimit -n`, checked first): 2,000 client sockets plus sluice's 2,000.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::{proc_status_kib, Config, Mock, Pool, Route, Sluice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One openai pool on `mock` behind a catch-all route, with `server` settings.
fn config(mock: &Mock, server: &str) -> String {
    Config::new()
        .yaml(&format!("server: {{{server}}}"))
        .pool(Pool::openai("p", &mock.url()))
        .route(Route::prefix("all", "/", &["p"]))
        .to_yaml()
}

const KEY: (&str, &str) = ("SLUICE_TEST_KEY", "sk-connections-test-key");

fn addr(s: &Sluice) -> String {
    s.proxy.trim_start_matches("http://").to_owned()
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// The soft open-files limit of this process (`Max open files` in /proc/self/limits).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Send `GET /v1/models` and read the whole response; returns its status and head.
async fn get_models(sock: &mut TcpStream) -> (u16, String) {
    sock.write_all(b"GET /v1/models HTTP/1.1\r\nhost: sluice\r\n\r\n")
        .await
        .unwrap();
    read_response(sock).await
}

/// Read one response (content-length or chunked body) from `sock`.
async fn read_response(sock: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    loop {
        let body = &buf[head_end..];
        let done = match len {
            Some(n) => body.len() >= n,
            None => body.ends_with(b"0\r\n\r\n"),
        };
        if done {
            return (status, String::from_utf8_lossy(&buf).into_owned());
        }
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the server closed `sock` (end of stream or reset) within `limit`.
async fn closed_within(sock: &mut TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn slowloris_connections_are_closed_by_the_header_deadline() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, "header_timeout_ms: 500"), &[KEY]);
    let target = addr(&s);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut sock = TcpStream::connect(&target).await.unwrap();
            let t0 = Instant::now();
            // Half of them trickle a header byte every 100 ms, half never send a byte.
            let trickle = i % 2 == 0;
            let header = b"GET /v1/models HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut b = [0u8; 256];
            for k in 0..100 {
                if trickle && sock.write_all(&header[k % header.len()..][..1]).await.is_err() {
                    return Some(t0.elapsed());
                }
                match tokio::time::timeout(Duration::from_millis(100), sock.read(&mut b)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
                    Ok(Ok(n)) => panic!("unexpected response: {:?}", String::from_utf8_lossy(&b[..n])),
                    Err(_) => {}
                }
            }
            None
        }));
    }
    let mut closed_after = Vec::new();
    for t in tasks {
        closed_after.push(t.await.unwrap().expect("still open after 10 s"));
    }
    let max = closed_after.iter().max().unwrap();
    let min = closed_after.iter().min().unwrap();
    eprintln!(
        "slowloris: 200 closed in {min:?}..{max:?} (total {:?})",
        started.elapsed()
    );
    assert!(
        *min >= Duration::from_millis(400),
        "closed before the deadline: {min:?}"
    );
    assert!(
        *max < Duration::from_secs(5),
        "closed long after the deadline: {max:?}"
    );
    let counted = s
        .wait_metric(
            "sluice_client_connections_closed_total",
            &[("reason", "header_timeout")],
            |v| v >= 200.0,
        )
        .await;
    assert!(counted >= 200.0, "header_timeout closes counted: {counted}");
    // A prompt client is still served, on a connection reused for a second request.
    let mut sock = TcpStream::connect(&target).await.unwrap();
    assert_eq!(get_models(&mut sock).await.0, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        get_models(&mut sock).await.0,
        200,
        "an idle gap is not a header deadline"
    );
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed_and_memory_is_given_back() {
    const CONNS: usize = 2_000;
    let limit = open_files_limit();
    assert!(
        limit > 3 * CONNS as u64,
        "ulimit -n {limit} too low for {CONNS} connections (client and sluice sides)"
    );
    let mock = Mock::start().await;
    let s = Sluice::start(
        &config(
            &mock,
            "keepalive_idle_timeout_ms: 10000, max_client_connections: 4096",
        ),
        &[KEY],
    );
    let target = addr(&s);
    // Warm up (first-request allocations, upstream connection pool) before the baseline.
    for _ in 0..20 {
        let mut sock = TcpStream::connect(&target).await.unwrap();
        assert_eq!(get_models(&mut sock).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(s.pid());

    let started = Instant::now();
    let mut socks = Vec::with_capacity(CONNS);
    for _ in 0..CONNS / 100 {
        let batch = futures_util::future::join_all((0..100).map(|_| {
            let target = target.clone();
            async move {
                let mut sock = TcpStream::connect(&target).await.unwrap();
                assert_eq!(get_models(&mut sock).await.0, 200);
                sock
            }
        }))
        .await;
        socks.extend(batch);
    }
    let opened = Instant::now();
    let open = s.metric("sluice_client_connections", &[]).await;
    let peak = rss_kib(s.pid());
    assert!(
        opened.duration_since(started) < Duration::from_secs(9),
        "opening {CONNS} connections took longer than the idle timeout"
    );
    assert_eq!(open as usize, CONNS, "every idle connection is held open");

    let closes = futures_util::future::join_all(
        socks
            .iter_mut()
            .map(|sock| closed_within(sock, Duration::from_secs(15))),
    )
    .await;
    let closed = closes.iter().filter(|c| **c).count();
    let waited = started.elapsed();
    assert_eq!(closed, CONNS, "idle connections closed by the server");
    assert!(
        waited >= Duration::from_millis(9_500),
        "closed before the idle timeout: {waited:?}"
    );
    drop(socks);
    let counted = s
        .wait_metric(
            "sluice_client_connections_closed_total",
            &[("reason", "idle_timeout")],
            |v| v >= CONNS as f64,
        )
        .await;
    assert!(
        counted >= CONNS as f64,
        "idle_timeout closes counted: {counted}"
    );
    assert_eq!(s.metric("sluice_client_connections", &[]).await, 0.0);

    // The allocator returns freed pages in the background: poll (bounded) for RSS to settle.
    let mut after = rss_kib(s.pid());
    // jemalloc's default decay is 10 s: measured, RSS settles about 8 s after the closes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while after > before + 10 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss_kib(s.pid());
    }
    eprintln!(
        "rss KiB: before {before}, peak with {CONNS} idle connections {peak} ({} B per connection), after close {after}",
        (peak.saturating_sub(before)) * 1024 / CONNS as u64
    );
    assert!(
        after <= before + 10 * 1024,
        "RSS after the connections closed: {after} KiB vs {before} KiB before"
    );
    // Still serving.
    let mut sock = TcpStream::connect(&target).await.unwrap();
    assert_eq!(get_models(&mut sock).await.0, 200);
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_get_a_503_until_one_closes() {
    let mock = Mock::start().await;
    let s = Sluice::start(&config(&mock, "max_client_connections: 5"), &[KEY]);
    let target = addr(&s);
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut sock = TcpStream::connect(&target).await.unwrap();
        assert_eq!(get_models(&mut sock).await.0, 200);
        held.push(sock);
    }
    for _ in 0..3 {
        let mut extra = TcpStream::connect(&target).await.unwrap();
        let (status, resp) = get_models(&mut extra).await;
        assert_eq!(status, 503, "{resp}");
        assert!(resp.contains("connection: close"), "{resp}");
        assert!(resp.contains("retry-after: 1"), "{resp}");
        let body: serde_json::Value =
            serde_json::from_str(&resp[resp.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
        assert!(closed_within(&mut extra, Duration::from_secs(3)).await);
    }
    assert_eq!(
        s.metric(
            "sluice_client_connections_closed_total",
            &[("reason", "over_limit")]
        )
        .await,
        3.0
    );
    // The held connections still work.
    assert_eq!(get_models(&mut held[0]).await.0, 200);
    // One closes: a new connection is served (once sluice has seen the close).
    drop(held.pop());
    s.wait_metric("sluice_client_connections", &[], |v| v <= 4.0)
        .await;
    let mut sock = TcpStream::connect(&target).await.unwrap();
    assert_eq!(get_models(&mut sock).await.0, 200);
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_request_and_connection_at_the_write_timeout() {
    let mock = Mock::start().await;
    // A 64 MiB SSE line: far more than the socket buffers hold, so writes to a client that
    // never reads stop making progress.
    mock.set(support::Behavior::HugeSseLine {
        line_bytes: 64 << 20,
        pause_at: usize::MAX,
    });
    let s = Sluice::start(&config(&mock, "client_write_timeout_ms: 500"), &[KEY]);
    let mut sock = TcpStream::connect(addr(&s)).await.unwrap();
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    // Never read: sluice's writes stop making progress and fail at the write timeout, which
    // ends the request (upstream call closed, counted as a client disconnect).
    let t0 = Instant::now();
    let disconnects = s
        .wait_metric("sluice_client_disconnects_total", &[], |v| v >= 1.0)
        .await;
    eprintln!("request ended {:?} after it was sent", t0.elapsed());
    assert_eq!(disconnects, 1.0, "{}", s.log());
    // The access line follows the token estimate: poll for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log().contains("client_disconnected=true") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.log().contains("client_disconnected=true"), "{}", s.log());
    // The connection itself is closed too (its shutdown flush is bounded by the same timeout),
    // so it does not hold a slot under `max_client_connections`.
    let open = s
        .wait_metric("sluice_client_connections", &[], |v| v == 0.0)
        .await;
    assert_eq!(
        open, 0.0,
        "a client that stops reading still holds its connection"
    );
    drop(sock);
}
