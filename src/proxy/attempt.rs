//! One upstream attempt as a value: the request sent to one endpoint of one pool with one key,
//! on pingora-core's HTTP [`Connector`] (connection pool and reuse, TLS, HTTP/1.1, and HTTP/2
//! where a TLS upstream offers it through ALPN), yielding the response header and then body
//! chunks. Whoever holds an [`Attempt`] consumes it (failover, relay); dropping it closes the
//! upstream connection at once (HTTP/1.1: the socket; HTTP/2: a `RST_STREAM` on the stream),
//! which is how a client that left stops the upstream call. A response read to its end hands
//! the connection back to the pool.
//!
//! Timeouts: connect (TCP + TLS) through the peer's options, time to the response header
//! (`ttfb`) and between body chunks (`idle`) as the session's per-read timeouts, and the
//! route's failover deadline over the whole wait for the header.

use super::classify::classify;
use crate::config::{Endpoint, Pool};
use crate::error::{SluiceError, TimeoutPhase};
use crate::provider::{provider, CLIENT_CREDENTIAL_HEADERS};
use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Most informational (1xx) response headers skipped before the final one.
const MAX_INFORMATIONAL: usize = 8;

/// Hop-by-hop request headers (RFC 9110 section 7.6.1, plus the de facto `keep-alive`,
/// `proxy-connection` and HTTP/2's `http2-settings`), never forwarded; with the headers sluice
/// sets itself (`host`, `content-length`) and the ones it must not pass on (`expect`: the body
/// is already read; `accept-encoding`: usage is read from the bytes, so the response must be
/// identity-encoded; `x-sluice-cache`: the client's switch for sluice's response cache).
const NOT_FORWARDED: [HeaderName; 15] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
    header::HOST,
    header::CONTENT_LENGTH,
    header::EXPECT,
    header::ACCEPT_ENCODING,
    // sluice's own request header (the client's cache switch), not the provider's.
    HeaderName::from_static("x-sluice-cache"),
];

/// The process's upstream connector: one connection pool for every attempt of every config
/// (pooled connections are keyed by peer, so a reload keeps them) and the active health checks.
static CONNECTOR: OnceCell<Connector> = OnceCell::const_new();

/// The upstream connector, built on first need on a blocking thread: building it loads the
/// system's root certificates (rustls-native-certs), tens of milliseconds that must not
/// stall a worker thread serving other requests. [`prepare_connector`] builds it at start.
pub async fn connector() -> &'static Connector {
    CONNECTOR
        .get_or_init(|| async {
            match tokio::task::spawn_blocking(|| Connector::new(None)).await {
                Ok(c) => c,
                Err(_) => Connector::new(None),
            }
        })
        .await
}

/// Build the upstream connector now, on a thread of its own (start-up does not wait for it;
/// a request that needs it first waits asynchronously).
pub fn prepare_connector() {
    std::thread::spawn(|| {
        let _ = CONNECTOR.set(Connector::new(None));
    });
}

/// Where an attempt goes: pool, endpoint index in it, key index on the endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pool (pinned by the request's snapshot).
    pub pool: Arc<Pool>,
    /// Endpoint index in `pool.endpoints`.
    pub endpoint: usize,
    /// Key index in the endpoint's keys.
    pub key: usize,
}

impl Target {
    /// The endpoint, `None` only for an index out of range (a bug).
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.pool.endpoints.get(self.endpoint)
    }

    /// Endpoint `host:port` (log and metric label, error text).
    pub fn addr(&self) -> &str {
        self.endpoint().map_or("upstream", |e| e.addr.as_str())
    }
}

/// What is sent: the client's request header without its hop-by-hop and credential headers
/// ([`forwarded_header`]), the model as the pool's upstream knows it, and the body (one shared
/// `Bytes`: every attempt sends the same buffer, never a copy).
pub struct Outgoing<'a> {
    /// The client's request header as forwarded (path: the normalized path the route was
    /// chosen for; no credentials).
    pub base: &'a RequestHeader,
    /// The model as the pool's upstream knows it (after `model_map`; Azure deployment name).
    pub model: Option<&'a str>,
    /// The body to send.
    pub body: Bytes,
    /// The attempt span's W3C `traceparent` (tracing on), sent in place of the client's.
    pub traceparent: Option<http::HeaderValue>,
}

/// The client's request header as every attempt forwards it: method, path and query, and the
/// headers minus hop-by-hop ones (RFC 9110 section 7.6.1, with those the client nominated in
/// `connection`), credentials, and the ones sluice sets or must not pass on (`host`,
/// `content-length`, `expect`: the body is already read; `accept-encoding`: usage is read from
/// the bytes, so the response must be identity-encoded). Built once per request.
pub fn forwarded_header(client: &RequestHeader) -> pingora_error::Result<RequestHeader> {
    let pq = client
        .uri
        .path_and_query()
        .map_or_else(|| client.uri.path(), |pq| pq.as_str());
    // Without a case map: names go out lower-case (HTTP/2 requires it, RFC 9113 section
    // 8.2.1; HTTP/1.1 ignores case), and every insert skips the case map.
    let mut req = RequestHeader::build_no_case(client.method.clone(), pq.as_bytes(), None)?;
    let nominated: Vec<&str> = client
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for (name, value) in &client.headers {
        if NOT_FORWARDED.contains(name)
            || CLIENT_CREDENTIAL_HEADERS.contains(&name.as_str())
            || nominated
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_str()))
        {
            continue;
        }
        req.append_header(name.clone(), value.clone())?;
    }
    Ok(req)
}

/// Counts an attempt in flight on its endpoint (for `least_in_flight`) while it lives.
struct InFlight(Arc<Pool>, usize);

impl InFlight {
    fn new(pool: Arc<Pool>, endpoint: usize) -> Self {
        if let Some(e) = pool.endpoints.get(endpoint) {
            e.state.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Self(pool, endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(e) = self.0.endpoints.get(self.1) {
            e.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A sent request whose response header arrived: read its body with [`Attempt::chunk`].
/// Dropping it before the end closes the upstream connection.
pub struct Attempt {
    /// `None` once the body ended (the connection went back to the pool).
    session: Option<HttpSession>,
    /// Boxed: a peer is about 1 KiB, and attempts move between stages.
    peer: Box<HttpPeer>,
    target: Target,
    _in_flight: InFlight,
}

impl Attempt {
    /// Connect to `target` (a pooled connection when one is idle), send `out`, and wait for
    /// the final response header (1xx skipped), within the pool's connect and `ttfb`
    /// timeouts and before `deadline`. Errors are [`SluiceError`]s by who caused them
    /// ([`classify`]): the upstream (unreachable, timeout, reset, invalid response) or sluice
    /// ([`SluiceError::Internal`]: a header it could not build; neutral for the breaker).
    ///
    /// A failure on a reused pooled connection before any response byte (the upstream closed
    /// it while idle) is retried once on a fresh connection, as Pingora's own proxy does.
    pub async fn start(
        target: Target,
        out: &Outgoing<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<(Attempt, Box<ResponseHeader>), SluiceError> {
        let in_flight = InFlight::new(target.pool.clone(), target.endpoint);
        let peer = peer(&target).await?;
        let addr = target.addr().to_owned();
        let request = || build_request(&target, out).map_err(|_| SluiceError::Internal);
        let mut req = Some(Box::new(request()?));
        let exchange = async {
            let mut tries = 0;
            loop {
                tries += 1;
                let (mut session, reused) = connector()
                    .await
                    .get_http_session(&*peer)
                    .await
                    .map_err(|e| classify(&e, &addr, true))?;
                // The second try (rare) builds its header again rather than every request
                // keeping a copy.
                let req = match req.take() {
                    Some(r) => r,
                    None => Box::new(request()?),
                };
                match exchange(&mut session, req, &out.body, &target).await {
                    Ok(header) => return Ok((session, header)),
                    Err(mut e) => {
                        if *e.etype() != ErrorType::InternalError {
                            // Pingora's client session leaves the source untagged: a failure
                            // on the wire here is the upstream's.
                            e.as_up();
                        }
                        e.retry.decide_reuse(reused);
                        if reused && tries < 2 && e.retry() {
                            continue;
                        }
                        return Err(classify(&e, &addr, true));
                    }
                }
            }
        };
        let (session, header) =
            tokio::time::timeout_at(deadline, exchange)
                .await
                .map_err(|_| SluiceError::UpstreamTimeout {
                    upstream: addr.clone(),
                    phase: TimeoutPhase::FirstByte,
                })??;
        let attempt = Attempt {
            session: Some(session),
            peer,
            target,
            _in_flight: in_flight,
        };
        Ok((attempt, header))
    }

    /// Where this attempt went.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The next body chunk, `Ok(None)` at the end of the body (the connection then goes back
    /// to the pool), or the upstream's failure: a stall past the pool's `idle` timeout, a
    /// reset, invalid framing. Not cancel-safe: an attempt whose read was cancelled must be
    /// dropped (every caller does: a cancelled read means the client left or the drain ended).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, SluiceError> {
        let Some(session) = self.session.as_mut() else {
            return Ok(None);
        };
        match session.read_response_body().await {
            Ok(Some(chunk)) => Ok(Some(chunk)),
            Ok(None) => {
                let pool_idle = self.target.pool.timeouts.pool_idle;
                if let Some(session) = self.session.take() {
                    connector()
                        .await
                        .release_http_session(session, &*self.peer, Some(pool_idle))
                        .await;
                }
                Ok(None)
            }
            Err(mut e) => {
                self.session = None;
                e.as_up();
                Err(classify(&e, self.target.addr(), false))
            }
        }
    }

    /// Close the upstream connection now (HTTP/1.1: the socket; HTTP/2: a `RST_STREAM`),
    /// keeping the attempt as a value: [`Attempt::chunk`] then yields the end of the body.
    pub fn close(&mut self) {
        self.session = None;
    }

    /// Read what is left of the body (bounded by the idle timeout per read) so that the
    /// connection can be reused; closes it instead after `limit` bytes.
    pub async fn finish(mut self, limit: usize) {
        let mut seen = 0usize;
        while let Ok(Some(chunk)) = self.chunk().await {
            seen += chunk.len();
            if seen > limit {
                return;
            }
        }
    }
}

/// The peer for `target`: its address resolved asynchronously (Pingora's `HttpPeer::new`
/// would resolve blocking), the pool's connect / ttfb / idle timeouts, ALPN `h2,http/1.1` for
/// TLS upstreams (HTTP/2 where the upstream offers it).
async fn peer(target: &Target) -> Result<Box<HttpPeer>, SluiceError> {
    let ep = target.endpoint().ok_or(SluiceError::Internal)?;
    let unreachable = || SluiceError::UpstreamUnreachable(ep.addr.clone());
    let addr = tokio::net::lookup_host(ep.addr.as_str())
        .await
        .map_err(|_| unreachable())?
        .next()
        .ok_or_else(unreachable)?;
    let mut peer = Box::new(HttpPeer::new(addr, ep.tls, ep.host.clone()));
    let t = target.pool.timeouts;
    peer.options.connection_timeout = Some(t.connect);
    peer.options.total_connection_timeout = Some(t.connect);
    peer.options.read_timeout = Some(t.ttfb);
    peer.options.write_timeout = Some(t.idle);
    peer.options.idle_timeout = Some(t.pool_idle);
    if ep.tls {
        peer.options.alpn = ALPN::H2H1;
    }
    Ok(peer)
}

/// The upstream request for `target`: the forwarded header with the endpoint's key in the
/// provider's style, the mapped path, `Host`, and the body's `content-length`.
fn build_request(target: &Target, out: &Outgoing<'_>) -> pingora_error::Result<RequestHeader> {
    let ep = target
        .endpoint()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "endpoint index"))?;
    let pool = &target.pool;
    let p = provider(pool.provider);
    if out.model.is_some_and(|m| !p.accepts_model(m)) {
        // Unreachable: failover refuses such a model before starting an attempt. Kept so that
        // a body value can never be spliced into a URL unchecked.
        return Error::e_explain(ErrorType::InternalError, "model not valid in upstream URL");
    }
    let mut req = out.base.clone();
    let pq = out
        .base
        .uri
        .path_and_query()
        .map_or_else(|| out.base.uri.path(), |pq| pq.as_str());
    let path = p.upstream_path(&ep.base_path, pq, out.model, pool.api_version.as_deref());
    if path != pq {
        let uri = http::Uri::try_from(path)
            .map_err(|_| Error::explain(ErrorType::InternalError, "invalid upstream path"))?;
        req.set_uri(uri);
    }
    let key = ep
        .keys
        .get(target.key)
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "endpoint has no such key"))?;
    let default_port = if ep.tls { ":443" } else { ":80" };
    let host = ep.addr.strip_suffix(default_port).unwrap_or(&ep.addr);
    req.insert_header(header::HOST, host)?;
    req.insert_header(header::CONTENT_LENGTH, out.body.len())?;
    if let Some(tp) = &out.traceparent {
        req.insert_header("traceparent", tp.clone())?;
    }
    // Last: a signing provider (Bedrock SigV4) signs the final host, path and body, anew for
    // each attempt.
    p.authorize(
        &mut req,
        key.expose(),
        Some(&out.body),
        pool.region.as_deref(),
    )?;
    Ok(req)
}

/// Send `request` and `body` on `session` and read the final response header.
async fn exchange(
    session: &mut HttpSession,
    mut req: Box<RequestHeader>,
    body: &Bytes,
    target: &Target,
) -> pingora_error::Result<Box<ResponseHeader>> {
    if let HttpSession::H2(_) = session {
        // HTTP/2 carries the authority in `:authority` (RFC 9113 section 8.3.1), not `Host`.
        let host = req.remove_header(&header::HOST);
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or(target.addr());
        let scheme = if target.endpoint().is_some_and(|e| e.tls) {
            "https"
        } else {
            "http"
        };
        let pq = req
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(pq)
            .build()
            .map_err(|_| Error::explain(ErrorType::InternalError, "invalid h2 authority"))?;
        req.set_uri(uri);
        req.set_version(http::Version::HTTP_2);
    }
    session.write_request_header(req).await?;
    if !body.is_empty() {
        session.write_request_body(body.clone(), true).await?;
    }
    session.finish_request_body().await?;
    let ttfb = target.pool.timeouts.ttfb;
    session.set_read_timeout(Some(ttfb));
    for _ in 0..=MAX_INFORMATIONAL {
        session.read_response_header().await?;
        let Some(h) = session.response_header() else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "no response header");
        };
        if h.status.is_informational() {
            continue;
        }
        let header = Box::new(h.clone());
        session.set_read_timeout(Some(target.pool.timeouts.idle));
        return Ok(header);
    }
    Error::e_explain(
        ErrorType::InvalidHTTPHeader,
        "too many informational responses",
    )
}
