//! A small HTTP/1.1 keep-alive client that notes when the first body byte arrived, and the
//! workload's request (an OpenAI chat completion, streamed or not).
use crate::support::http::find;
use bytes::{Buf, BytesMut};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response: status, when its first body byte and its end arrived, its body if kept.
pub struct Resp {
    pub status: u16,
    pub first_body: Option<Instant>,
    pub done: Instant,
    pub body: Vec<u8>,
}

/// One keep-alive connection and its read buffer.
pub struct Conn {
    pub s: TcpStream,
    pub buf: BytesMut,
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
        self.s.write_all(&stamped(req)).await?;
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
pub struct Client {
    pub addr: SocketAddr,
    pub conn: Option<Conn>,
    pub timeout: Duration,
}

impl Client {
    /// A client of `addr`; every connect and round trip bounded by `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            conn: None,
            timeout,
        }
    }

    /// Send `req` (connecting first if needed) and read the response; `None` on any error
    /// or timeout (the connection is then dropped).
    pub async fn send(&mut self, req: &[u8], keep_body: bool) -> Option<Resp> {
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

/// `GET path` on a fresh connection (2 s bound): status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    let mut c = Client::new(addr, Duration::from_secs(2));
    let r = c.send(req.as_bytes(), true).await?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// The model every request names.
pub const MODEL: &str = "gpt-4o-mini";

/// The workload's `POST /v1/chat/completions{query}` (OpenAI chat completions, ~230 B body,
/// `max_tokens` 64; with `stream`, `stream_options.include_usage`), bearer `auth`.
/// The serial number every workload request carries in its prompt (12 digits, rewritten per
/// request by [`stamped`]): no two requests the harness sends are identical, so a proxy's
/// response cache or request coalescing never answers one from another (the `sluice-reuse`
/// arm measures what they cost when they miss).
const SERIAL: &[u8] = b"#000000000000";
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Start the serial numbers at `n` (`--load-only` runs: each process its own range, so that
/// runs one after the other do not repeat each other's requests).
pub fn serials_from(n: u64) {
    NEXT_SERIAL.store(n, Ordering::Relaxed);
}

/// `req` with the next serial number in place of its [`SERIAL`] (same length, so the
/// `content-length` holds); `req` itself when it has none.
pub fn stamped(req: &[u8]) -> Cow<'_, [u8]> {
    let Some(at) = find(req, SERIAL) else {
        return Cow::Borrowed(req);
    };
    let n = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed) % 1_000_000_000_000;
    let mut out = req.to_vec();
    out[at + 1..at + SERIAL.len()].copy_from_slice(format!("{n:012}").as_bytes());
    Cow::Owned(out)
}

pub fn chat_request(addr: SocketAddr, auth: &str, stream: bool, query: &str) -> Vec<u8> {
    let body = if stream {
        format!(
            r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Say hello to the benchmark in one short sentence. #000000000000"}}],"max_tokens":64,"stream":true,"stream_options":{{"include_usage":true}}}}"#
        )
    } else {
        format!(
            r#"{{"model":"{MODEL}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Say hello to the benchmark in one short sentence. #000000000000"}}],"max_tokens":64}}"#
        )
    };
    format!(
        "POST /v1/chat/completions{query} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {auth}\r\ncontent-type: application/json\r\naccept: {}\r\ncontent-length: {}\r\n\r\n{body}",
        if stream { "text/event-stream" } else { "application/json" },
        body.len()
    )
    .into_bytes()
}

/// `req` (an HTTP/1.1 request) with the header line `line` (`name: value`) added after its
/// request line.
pub fn with_header(req: &[u8], line: &str) -> Vec<u8> {
    let at = find(req, b"\r\n").map_or(req.len(), |i| i + 2);
    let mut out = Vec::with_capacity(req.len() + line.len() + 2);
    out.extend_from_slice(&req[..at]);
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&req[at..]);
    out
}
