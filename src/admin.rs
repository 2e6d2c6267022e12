//! The admin listener: `GET /metrics` (Prometheus text format), `/healthz` (process alive),
//! `/readyz` (200 while serving, 503 once shutdown began), and with `debug.profiling` the
//! profiling endpoints `/debug/pprof/profile` ([`pprof`]) and `/debug/allocator`
//! (`allocator`), which answer 404 otherwise (and are never served by the proxy listener);
//! with `cache.admin_purge` the response cache's purge endpoints ([`cache`]:
//! `DELETE /cache/entries/{input_hash}` and `DELETE /cache/entries`), 404 otherwise.
//!
//! It runs outside Pingora's services, on a thread and runtime of its own: Pingora closes every
//! service's listener at SIGTERM, but during the drain the kubelet's readiness probe (a new
//! connection each time) must see `/readyz` 503 and Prometheus must still scrape `/metrics`.
//! It answers until the process exits. HTTP parsing is still Pingora's (the [`Admin`] app is
//! driven through its `ServerApp` interface); only the accept loop is ours.

mod allocator;
pub mod cache;
pub mod pprof;

use crate::cache::Store;
use crate::config::Snapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bounds on the admin listener's connections (`server.admin_max_connections`,
/// `server.admin_connection_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Longest a connection is kept, keep-alive included.
    pub connection_timeout: Duration,
}

/// Admin HTTP app. `ready` flips to false when the process starts draining.
pub struct Admin {
    /// Readiness flag shared with the shutdown logic.
    pub ready: Arc<AtomicBool>,
    /// The config in force: its `debug` section (reloadable) turns profiling on or off.
    pub config: Arc<ArcSwap<Snapshot>>,
    /// The CPU profiler (one profile at a time).
    pub profiles: pprof::CpuProfiles,
    /// The connection bound ([`Bounds::connection_timeout`]) a profile must fit in.
    pub connection_timeout: Duration,
    /// The response cache's store (the purge endpoints).
    pub store: Arc<Store>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = resp.body().len();
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let uri = session.req_header().uri.clone();
        let (profiling, purge, token) = {
            let snapshot = self.config.load();
            let c = &snapshot.cache;
            (
                snapshot.profiling,
                c.admin_purge,
                c.admin_purge_token_sha256,
            )
        };
        if purge {
            let served = cache::serve(&self.store, session.req_header(), token.as_ref()).await;
            if let Some(resp) = served {
                return resp;
            }
        }
        match uri.path() {
            "/metrics" => {
                crate::metrics::COALESCE_RETAINED.set(
                    i64::try_from(crate::proxy::coalesce::RETAINED.bytes()).unwrap_or(i64::MAX),
                );
                let mut buf = Vec::new();
                let encoder = TextEncoder::new();
                if encoder.encode(&prometheus::gather(), &mut buf).is_err() {
                    return reply(500, "text/plain", b"metrics encoding failed\n".to_vec());
                }
                reply(200, encoder.format_type(), buf)
            }
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.ready.load(Ordering::Acquire) {
                    reply(200, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(503, "text/plain", b"draining\n".to_vec())
                }
            }
            "/debug/pprof/profile" if profiling.enabled => {
                self.profiles
                    .serve(uri.query(), profiling, self.connection_timeout)
                    .await
            }
            "/debug/allocator" if profiling.enabled => allocator::serve(),
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// Bind the admin listener on `addr` (`host:port`) and serve [`Admin`] from a thread of its own
/// until the process exits (see the module doc for why it is not a Pingora service). `config`
/// is the config in force, read per request for the `debug` section and `cache.admin_purge`;
/// `store` is the response cache's store.
///
/// Errors: the bind failed (address in use, bad address), or the thread or its runtime could
/// not be created.
pub fn spawn(
    addr: &str,
    ready: Arc<AtomicBool>,
    bounds: Bounds,
    config: Arc<ArcSwap<Snapshot>>,
    store: Arc<Store>,
) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let app = Arc::new(HttpServer::new_app(Admin {
        ready,
        config,
        profiles: pprof::CpuProfiles::default(),
        connection_timeout: bounds.connection_timeout,
        store,
    }));
    std::thread::Builder::new()
        .name("sluice-admin".to_owned())
        .spawn(move || runtime.block_on(serve(listener, app, bounds)))?;
    Ok(())
}

async fn serve(listener: std::net::TcpListener, app: Arc<HttpServer<Admin>>, bounds: Bounds) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener: cannot serve");
            return;
        }
    };
    // Never changes: this listener is not part of Pingora's shutdown.
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(bounds.max_connections));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut stream: Option<pingora_core::protocols::Stream> = Some(Box::new(
                pingora_core::protocols::l4::stream::Stream::from(sock),
            ));
            // Keep-alive: Pingora hands the connection back after each reusable response. The
            // whole connection is bounded: a trickling or non-reading client cannot keep a slot.
            let _ = tokio::time::timeout(bounds.connection_timeout, async {
                while let Some(s) = stream.take() {
                    stream = app.process_new(s, &shutdown).await;
                }
            })
            .await;
        });
    }
}
