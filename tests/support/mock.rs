//! The mock LLM upstream: an in-process HTTP/1.1 server on 127.0.0.1:0 that records every
//! request and answers as OpenAI / Anthropic would (JSON and SSE), or injects a [`Behavior`].
use super::http::{find, header_in};
use std::net::SocketAddr;
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

impl Recorded {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
    /// The body as JSON (panics when it is not).
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
    /// Reset the connection after reading the request, for this many more requests, then
    /// answer normally.
    ResetBeforeHeader(u32),
    /// Answer this status with a JSON `content-length` of 1,000 bytes, send the first 10, then
    /// nothing (the time the proxy closes the connection is recorded in `slow_closed_at`).
    StallInErrorBody(u16),
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
    /// [`Behavior::Canned`] with one more response header line (`name: value`).
    CannedWithHeader {
        content_type: String,
        header: String,
        body: String,
    },
    /// A 200 SSE stream of `body` cut after the number of bytes in the request's `x-cut-at`
    /// header (the whole body without it), sent chunked in two pieces; then `end`.
    CutAt { body: Vec<u8>, end: CutEnd },
    /// [`Behavior::CutAt`] with a JSON body (`application/json`, chunked: no
    /// `content-length`).
    CutJsonAt { body: Vec<u8>, end: CutEnd },
    /// A 200 OpenAI chat SSE stream of `events` content chunks (`tok0 `, `tok1 `, ...) sent
    /// `gap_ms` apart, then a finish chunk, a usage chunk and `[DONE]`; with `reset_after`,
    /// a TCP reset after that many content chunks instead. The time the proxy closes the
    /// connection first is recorded in `Mock::slow_closed_at`.
    Paced {
        events: usize,
        gap_ms: u64,
        reset_after: Option<usize>,
    },
    /// Wait this long after reading the request (nothing sent; a proxy closing the
    /// connection meanwhile is recorded in `slow_closed_at`), then answer normally.
    Delay(Duration),
    /// A 200 with this content type and binary `body` (an AWS event stream), sent chunked.
    CannedBytes { content_type: String, body: Vec<u8> },
    /// A 200 OpenAI chat SSE stream: content chunk `tok0 `, then (once `Mock::gate` is
    /// notified) chunks `tok1 ` to `tok{events-1} ` back to back, each padded with `pad`
    /// spaces of content, then a finish chunk, a usage chunk and `[DONE]`. To a request for
    /// `/responses`, the same as Responses events: `response.output_text.delta` numbered from
    /// `sequence_number` 0, then `response.completed` with usage.
    GatedBurst { events: usize, pad: usize },
}

/// How a [`Behavior::CutAt`] stream ends after its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutEnd {
    /// The end of the chunked body: a clean EOF.
    Eof,
    /// A TCP reset.
    Reset,
    /// Nothing more for 30 s (the time the proxy closes the connection first is recorded in
    /// `Mock::slow_closed_at`), then a close.
    Stall,
}

impl Mock {
    /// When the proxy closed a connection this mock was holding open (`slow_closed_at`),
    /// polled for up to `within`; `None` if it did not by then.
    pub async fn wait_closed(&self, within: Duration) -> Option<Instant> {
        let until = Instant::now() + within;
        loop {
            if let Some(t) = *self.slow_closed_at.lock().unwrap() {
                return Some(t);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Listen on 127.0.0.1:0 and serve every connection on a task of its own.
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

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer with `b` from the next request on.
    pub fn set(&self, b: Behavior) {
        *self.behavior.lock().unwrap() = b;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }

    /// Every request received so far, in order.
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
            Behavior::Delay(wait) => {
                let mut probe = [0u8; 1];
                if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(wait, sock.read(&mut probe)).await
                {
                    *self.slow_closed_at.lock().unwrap() = Some(Instant::now());
                    return Ok(false);
                }
            }
            Behavior::StallInErrorBody(status) => {
                let head = format!("HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"error\":");
                sock.write_all(head.as_bytes()).await?;
                sock.flush().await?;
                let mut probe = [0u8; 1];
                let read = sock.read(&mut probe);
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_secs(30), read).await
                {
                    *self.slow_closed_at.lock().unwrap() = Some(Instant::now());
                }
                return Ok(false);
            }
            Behavior::ResetBeforeHeader(left) => {
                *self.behavior.lock().unwrap() = match left {
                    0 | 1 => Behavior::Normal,
                    n => Behavior::ResetBeforeHeader(n - 1),
                };
                if left > 0 {
                    sock.set_zero_linger()?;
                    return Ok(false);
                }
            }
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
            Behavior::CannedWithHeader {
                content_type,
                header,
                body,
            } => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{header}\r\ncontent-length: {}\r\n\r\n", body.len());
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(body.as_bytes()).await?;
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
            Behavior::CannedBytes { content_type, body } => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n", body.len());
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(&body).await?;
                sock.write_all(b"\r\n0\r\n\r\n").await?;
                return Ok(true);
            }
            Behavior::CutAt { body, end } => {
                return self
                    .cut_at(sock, rec, "text/event-stream", &body, end)
                    .await;
            }
            Behavior::CutJsonAt { body, end } => {
                return self.cut_at(sock, rec, "application/json", &body, end).await;
            }
            Behavior::Paced {
                events,
                gap_ms,
                reset_after,
            } => return self.paced(sock, events, gap_ms, reset_after).await,
            Behavior::GatedBurst { events, pad } => {
                let responses = rec.path.contains("/responses");
                self.gated_burst(sock, events, pad, responses).await?;
                return Ok(true);
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
    /// [`Behavior::CutAt`] and [`Behavior::CutJsonAt`]: `body` as `content_type`, chunked, cut
    /// after the request's `x-cut-at` bytes, then `end`; returns whether the connection stays
    /// open.
    async fn cut_at(
        &self,
        sock: &mut TcpStream,
        rec: &Recorded,
        content_type: &str,
        body: &[u8],
        end: CutEnd,
    ) -> std::io::Result<bool> {
        let cut = rec
            .header("x-cut-at")
            .and_then(|v| v.parse().ok())
            .unwrap_or(body.len())
            .min(body.len());
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).await?;
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
            CutEnd::Stall => {
                // Nothing more for 30 s, unless the proxy closes the connection first
                // (its time is recorded in `slow_closed_at`).
                let mut probe = [0u8; 1];
                let read = sock.read(&mut probe);
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_secs(30), read).await
                {
                    *self.slow_closed_at.lock().unwrap() = Some(Instant::now());
                }
            }
        }
        Ok(false)
    }
}

impl Mock {
    /// [`Behavior::Paced`]; returns whether the connection stays open.
    async fn paced(
        &self,
        sock: &mut TcpStream,
        events: usize,
        gap_ms: u64,
        reset_after: Option<usize>,
    ) -> std::io::Result<bool> {
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await?;
        let chunk = |e: &str| format!("{:x}\r\n{e}\r\n", e.len());
        for i in 0..events {
            if reset_after == Some(i) {
                sock.set_zero_linger()?;
                return Ok(false);
            }
            let e = format!("data: {{\"id\":\"p1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n");
            sock.write_all(chunk(&e).as_bytes()).await?;
            sock.flush().await?;
            // Pace the stream while watching for the proxy closing the connection.
            let mut probe = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(gap_ms), sock.read(&mut probe)).await
            {
                *self.slow_closed_at.lock().unwrap() = Some(Instant::now());
                return Ok(false);
            }
        }
        sock.write_all(chunk(&stream_end("p1", events)).as_bytes())
            .await?;
        sock.write_all(b"0\r\n\r\n").await?;
        Ok(true)
    }

    /// [`Behavior::GatedBurst`].
    async fn gated_burst(
        &self,
        sock: &mut TcpStream,
        events: usize,
        pad: usize,
        responses: bool,
    ) -> std::io::Result<()> {
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n").await?;
        let pad = " ".repeat(pad);
        let event = |i: usize| {
            if responses {
                format!("event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_b1\",\"output_index\":0,\"content_index\":0,\"delta\":\"tok{i} {pad}\",\"sequence_number\":{i}}}\n\n")
            } else {
                format!("data: {{\"id\":\"b1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} {pad}\"}},\"finish_reason\":null}}]}}\n\n")
            }
        };
        let chunk = |e: &str| format!("{:x}\r\n{e}\r\n", e.len());
        sock.write_all(chunk(&event(0)).as_bytes()).await?;
        sock.flush().await?;
        self.gate.notified().await;
        let mut burst = String::new();
        for i in 1..events {
            burst.push_str(&event(i));
            if burst.len() >= 64 * 1024 || i + 1 == events {
                sock.write_all(chunk(&burst).as_bytes()).await?;
                burst.clear();
            }
        }
        let end = if responses {
            format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"resp_b1\",\"object\":\"response\",\"status\":\"completed\",\"usage\":{{\"input_tokens\":9,\"output_tokens\":{events},\"total_tokens\":{}}}}},\"sequence_number\":{events}}}\n\n", 9 + events)
        } else {
            stream_end("b1", events)
        };
        sock.write_all(chunk(&end).as_bytes()).await?;
        sock.write_all(b"0\r\n\r\n").await?;
        Ok(())
    }

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

/// The end of a mock OpenAI chat stream of `events` content chunks with id `id`: a finish
/// chunk, a usage chunk (9 prompt tokens, `events` completion tokens) and `[DONE]`.
fn stream_end(id: &str, events: usize) -> String {
    format!(
        "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n\
         data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{events},\"total_tokens\":{}}}}}\n\n\
         data: [DONE]\n\n",
        9 + events
    )
}
