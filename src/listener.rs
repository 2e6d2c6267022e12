//! Client connections of the proxy listener, bounded before Pingora parses anything: a cap on
//! open connections, a deadline for each whole request header (slowloris) and an idle timeout
//! between kept-alive requests.
//!
//! [`Listener`] is the listener's [`ServerApp`]: it wraps Pingora's HTTP proxy app and runs
//! the HTTP/1.1 keep-alive loop that Pingora's blanket `ServerApp` impl would run
//! (`pingora-core` `apps/mod.rs`), over a [`GuardedIo`] that enforces the deadlines on reads.
//! Pingora 0.9.1 alone only has a per-read timeout on the first request header and, once a
//! request has said `keep-alive`, no limit at all on the wait for the next one.
//!
//! Choices, all documented in the README:
//! - A header deadline closes the connection without a response, as nginx does on
//!   `client_header_timeout`: nothing of the request is known, and the SDKs retry a dropped
//!   connection like a 408.
//! - An idle timeout reads as a clean end of stream to Pingora, so it closes quietly.
//! - Past `server.max_client_connections` a new connection gets a 503 in OpenAI's error shape
//!   (the request, hence its provider, is not read) with `connection: close` and
//!   `retry-after: 1`, then a bounded lingering close (RFC 9112 §9.6) so the client reads it.

use crate::config::ConnectionLimits;
use crate::error::SluiceError;
use crate::metrics;
use crate::provider::ErrorStyle;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// Pingora's own first-request keep-alive setting (seconds), kept as its blanket impl sets it.
const FIRST_REQUEST_KEEPALIVE_SECONDS: u64 = 60;

/// Longest a refused connection is kept for its lingering close.
const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// Most bytes of a refused connection's request read (and dropped) during the lingering close.
const REFUSE_DRAIN_BYTES: usize = 64 * 1024;

/// The proxy listener's app: `app` (Pingora's `HttpProxy`) behind the connection bounds.
pub struct Listener<A> {
    app: Arc<A>,
    limits: ConnectionLimits,
    permits: Arc<Semaphore>,
    /// Refusals in progress (each lingers up to [`REFUSE_LINGER`]): bounded too, so a connect
    /// flood past the cap cannot pile up sockets and tasks; past it a connection is dropped
    /// without the 503.
    refusing: Arc<Semaphore>,
}

impl<A> Listener<A> {
    /// Serve `app` (the `Arc` the service was built from) under `limits`.
    pub fn new(app: Arc<A>, limits: ConnectionLimits) -> Self {
        Self {
            app,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSALS_IN_PROGRESS)),
            limits,
        }
    }
}

/// Log a warning at start when the soft open-files limit (`Max open files` in
/// /proc/self/limits, Linux) leaves less than two descriptors per allowed client connection
/// (one for the client, about one for its upstream): past it, accepts fail before the cap.
pub fn warn_if_open_files_low(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        if soft < max_connections.saturating_mul(2) {
            tracing::warn!(
                open_files_limit = soft,
                max_client_connections = max_connections,
                "the open-files limit (ulimit -n) is below twice server.max_client_connections: raise it or lower the cap"
            );
        }
    }
}

/// Decrements the open-connections gauge when the connection ends, however it ends.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::CLIENT_CONNECTIONS.inc();
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::CLIENT_CONNECTIONS.dec();
    }
}

#[async_trait]
impl<A> ServerApp for Listener<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            metrics::CLIENT_CONNECTIONS_CLOSED
                .with_label_values(&["over_limit"])
                .inc();
            if let Ok(_refusing) = self.refusing.clone().try_acquire_owned() {
                refuse(stream, self.limits.max_connections).await;
            }
            return None;
        };
        let _open = OpenConnection::new();
        let mut stream: Stream = Box::new(GuardedIo::new(stream, self.limits));
        let mut settings = None;
        loop {
            let mut session = ServerSession::new_http1(stream);
            match settings {
                Some(s) => {
                    pingora_core::apps::HttpPersistentSettings::apply_to_session(s, &mut session)
                }
                None => {
                    session.set_keepalive(Some(FIRST_REQUEST_KEEPALIVE_SECONDS));
                    session.set_keepalive_reuses_remaining(
                        self.app
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            // Not carried by the persistent settings: set it for every request. A client that
            // stops reading fails the write instead of holding its request (and upstream call)
            // forever.
            session.set_write_timeout(Some(self.limits.write_timeout));
            if *shutdown.borrow() {
                // Stop the client from reusing a connection of a draining server.
                session.set_keepalive(None);
            }
            let reused = self.app.process_new_http(session, shutdown).await?;
            let (next, next_settings) = reused.consume();
            stream = between_requests(next)?;
            settings = next_settings;
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// Arm the idle timeout on a stream coming back from a finished request. `None` (close) if it
/// is not a [`GuardedIo`], which cannot happen: every stream this listener serves is one.
fn between_requests(stream: Stream) -> Option<Stream> {
    match stream.into_any().downcast::<GuardedIo>() {
        Ok(mut io) => {
            io.begin_idle();
            Some(io)
        }
        Err(_) => None,
    }
}

/// Most over-cap connections answered (503 + linger) at once; further ones are closed at once.
/// A fixed fraction of the defaults' scale: the 503 is a courtesy, the cap is the protection.
const MAX_REFUSALS_IN_PROGRESS: usize = 256;

/// Answer a connection over the cap: a 503 with `connection: close`, then read (and drop) what
/// the client already sent for at most [`REFUSE_LINGER`] / [`REFUSE_DRAIN_BYTES`], so closing
/// with unread data does not reset the connection before the client reads the answer.
async fn refuse(mut stream: Stream, limit: usize) {
    let err = SluiceError::TooManyConnections(limit);
    let body = err.body(ErrorStyle::OpenAi);
    let head = format!(
        "HTTP/1.1 {} Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        err.status(),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await?;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSE_DRAIN_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            drained += n;
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

/// Where a connection is in its request cycle, as far as reads show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between two requests: waiting for the first byte of the next one (idle timeout).
    Idle,
    /// Reading a request header (header deadline). `newline`: the last significant byte was
    /// `\n`; `content`: a byte other than CR/LF was seen (leading empty lines do not end it).
    Header { newline: bool, content: bool },
    /// Header complete: body and response are governed by Pingora's and sluice's timeouts.
    Request,
}

/// A client stream that enforces [`ConnectionLimits`] on reads: a read past the header
/// deadline fails with `TimedOut` (Pingora closes the connection), a read past the idle
/// timeout returns end of stream. Everything else is delegated unchanged.
pub struct GuardedIo {
    inner: Stream,
    limits: ConnectionLimits,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    /// Started when a write, flush or shutdown stops making progress (the client is not
    /// reading); cleared by any progress. Pingora bounds its body writes but not the chunked
    /// terminator, the flush or the shutdown that end a response, which a client that stops
    /// reading would block forever.
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl GuardedIo {
    /// Wrap a freshly accepted `inner`: its header deadline starts now.
    pub fn new(inner: Stream, limits: ConnectionLimits) -> Self {
        Self {
            inner,
            limits,
            phase: Phase::Header {
                newline: false,
                content: false,
            },
            deadline: Box::pin(tokio::time::sleep(limits.header_timeout)),
            write_stall: None,
        }
    }

    /// `polled`, the result of a write-side poll, bounded by `server.client_write_timeout_ms`
    /// of no progress: a timed-out error once a stall lasted that long (the request ends as a
    /// client that left, the connection is dropped and closed, its slot freed).
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_stall = None;
            return polled;
        }
        let bound = self.limits.write_timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(bound)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading for server.client_write_timeout_ms",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The previous request is finished: the next read waits at most the idle timeout.
    pub fn begin_idle(&mut self) {
        self.phase = Phase::Idle;
        let at = Instant::now() + self.limits.keepalive_idle_timeout;
        self.deadline.as_mut().reset(at);
    }

    /// Follow the header through newly read `bytes`.
    fn observe(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Idle {
            self.phase = Phase::Header {
                newline: false,
                content: false,
            };
            let at = Instant::now() + self.limits.header_timeout;
            self.deadline.as_mut().reset(at);
        }
        let Phase::Header {
            mut newline,
            mut content,
        } = self.phase
        else {
            return;
        };
        // RFC 9112 §2.2: the header ends at an empty line; a bare LF is accepted as a line
        // terminator (so is Pingora's parser), CR is ignored here.
        for &b in bytes {
            match b {
                b'\n' if newline && content => {
                    self.phase = Phase::Request;
                    return;
                }
                b'\n' => newline = true,
                b'\r' => {}
                _ => {
                    newline = false;
                    content = true;
                }
            }
        }
        self.phase = Phase::Header { newline, content };
    }
}

impl std::fmt::Debug for GuardedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedIo")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Request {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // A client sending a byte now and then must not push the deadline back: check it on
        // every read, not only when the stream is silent.
        if matches!(this.phase, Phase::Header { .. }) && Instant::now() >= this.deadline.deadline()
        {
            return Poll::Ready(Err(header_timeout()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some(new) = buf.filled().get(before..) {
                    if !new.is_empty() {
                        this.observe(new);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) if this.phase == Phase::Idle => {
                    metrics::CLIENT_CONNECTIONS_CLOSED
                        .with_label_values(&["idle_timeout"])
                        .inc();
                    // End of stream: Pingora ends the keep-alive loop without a log line.
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(()) => Poll::Ready(Err(header_timeout())),
            },
        }
    }
}

/// The error a read past the header deadline returns (and counts).
fn header_timeout() -> io::Error {
    metrics::CLIENT_CONNECTIONS_CLOSED
        .with_label_values(&["header_timeout"])
        .inc();
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request header not received within server.header_timeout_ms",
    )
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.bound_write(cx, polled)
    }
}

#[async_trait]
impl Shutdown for GuardedIo {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for GuardedIo {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedIo {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedIo {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for GuardedIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl Peek for GuardedIo {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Whether `addr` (`host:port`) can be listened on now: a listener is bound to it and closed
/// at once (std's `TcpListener::bind` sets `SO_REUSEADDR` on Unix, as Pingora's own bind does,
/// so only another listener makes it fail). Errors: the address does not resolve, or the bind
/// fails (`AddrInUse`: another process listens there).
pub fn check_free(addr: &str) -> io::Result<()> {
    std::net::TcpListener::bind(addr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(header_ms: u64, idle_ms: u64) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_millis(header_ms),
            keepalive_idle_timeout: Duration::from_millis(idle_ms),
            max_connections: 4,
            write_timeout: Duration::from_secs(60),
        }
    }

    fn guarded(limits: ConnectionLimits) -> (GuardedIo, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1024);
        (GuardedIo::new(Box::new(server), limits), client)
    }

    #[tokio::test(start_paused = true)]
    async fn header_split_anywhere_ends_the_header_phase() {
        let (mut io, mut client) = guarded(limits(1_000, 5_000));
        for part in [&b"GET / HTTP/1.1\r"[..], b"\nhost: a\r\n\r", b"\nbody"] {
            client.write_all(part).await.unwrap();
            let mut buf = [0u8; 64];
            let _ = io.read(&mut buf).await.unwrap();
        }
        assert_eq!(io.phase, Phase::Request);
        // Past the header deadline, body reads are not cut.
        tokio::time::advance(Duration::from_secs(2)).await;
        client.write_all(b"more").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn leading_empty_lines_do_not_end_the_header() {
        let (mut io, mut client) = guarded(limits(1_000, 5_000));
        client.write_all(b"\r\n\r\n\n\nGET").await.unwrap();
        let mut buf = [0u8; 64];
        let _ = io.read(&mut buf).await.unwrap();
        assert!(matches!(io.phase, Phase::Header { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_header_fails_at_the_deadline() {
        let (mut io, mut client) = guarded(limits(1_000, 5_000));
        let mut buf = [0u8; 64];
        let mut err = None;
        for _ in 0..5 {
            client.write_all(b"x").await.unwrap();
            match io.read(&mut buf).await {
                Ok(_) => tokio::time::advance(Duration::from_millis(300)).await,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_kept_alive_connection_ends_at_the_idle_timeout() {
        let (mut io, _client) = guarded(limits(1_000, 5_000));
        io.begin_idle();
        let mut buf = [0u8; 64];
        let started = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_request_gets_its_own_header_deadline() {
        let (mut io, mut client) = guarded(limits(1_000, 5_000));
        io.begin_idle();
        tokio::time::advance(Duration::from_secs(4)).await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        assert!(matches!(io.phase, Phase::Header { .. }));
        // Silent for longer than the header deadline: the read fails.
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn check_free_refuses_an_address_another_listener_holds() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let err = check_free(&addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(held);
        assert!(check_free(&addr).is_ok());
        assert!(check_free("not-an-address").is_err());
    }
}
