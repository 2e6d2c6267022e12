//! Active health checks, as a Pingora background service: for pools with a `health_check`,
//! each endpoint gets a cheap GET (e.g. `/v1/models`) with its key every `interval`. Only the
//! upstream being down counts as a breaker failure (connect error, timeout, reset, or a status
//! in [`crate::balance::breaker::FAILURE_STATUSES`]); any other answer, a 4xx included, shows
//! it up and counts as a success (closing a half-open breaker); a check sluice could not build
//! is neutral. Checks always run, even while the breaker is open: they are how an endpoint
//! that takes no traffic is seen to recover.

use crate::balance::breaker::Outcome;
use crate::balance::now_ms;
use crate::config::{Endpoint, Pool, Snapshot};
use crate::provider::provider;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the scheduler looks for due checks.
const TICK: Duration = Duration::from_millis(100);

/// The health check service.
pub struct HealthChecker {
    config: Arc<ArcSwap<Snapshot>>,
}

impl HealthChecker {
    /// Checks for the pools of the snapshot in force (re-read every tick: reloads apply), on
    /// the attempts' upstream connector.
    pub fn new(config: Arc<ArcSwap<Snapshot>>) -> Self {
        Self { config }
    }
}

/// One check of `pool.endpoints[idx]` within the check's timeout (expiry: a failure).
pub async fn check(connector: &Connector, pool: &Pool, idx: usize) -> Outcome {
    let (Some(hc), Some(ep)) = (&pool.health_check, pool.endpoints.get(idx)) else {
        return Outcome::Neutral;
    };
    tokio::time::timeout(hc.timeout, probe(connector, pool, ep, &hc.path))
        .await
        .unwrap_or(Outcome::Failure)
}

async fn probe(connector: &Connector, pool: &Pool, ep: &Endpoint, path: &str) -> Outcome {
    let Some(addr) = tokio::net::lookup_host(ep.addr.as_str())
        .await
        .ok()
        .and_then(|mut a| a.next())
    else {
        return Outcome::Failure;
    };
    let mut peer = HttpPeer::new(addr, ep.tls, ep.host.clone());
    peer.options.connection_timeout = Some(pool.timeouts.connect);
    let Ok((mut session, _)) = connector.get_http_session(&peer).await else {
        return Outcome::Failure;
    };
    let p = provider(pool.provider);
    let target = p.upstream_path(&ep.base_path, path, None, pool.api_version.as_deref());
    // From here until the request is written, a failure is sluice's (a path or key it cannot
    // put in a header): neutral.
    let Ok(mut req) = RequestHeader::build("GET", target.as_bytes(), None) else {
        return Outcome::Neutral;
    };
    let host = ep
        .addr
        .strip_suffix(if ep.tls { ":443" } else { ":80" })
        .unwrap_or(&ep.addr);
    let key = ep
        .keys
        .first()
        .map(|k| k.expose().to_owned())
        .unwrap_or_default();
    if req.insert_header("host", host).is_err()
        || p.authorize(&mut req, &key, Some(&[]), pool.region.as_deref())
            .is_err()
    {
        return Outcome::Neutral;
    }
    if session.write_request_header(Box::new(req)).await.is_err()
        || session.finish_request_body().await.is_err()
        || session.read_response_header().await.is_err()
    {
        return Outcome::Failure;
    }
    let outcome = session
        .response_header()
        .map_or(Outcome::Failure, |h| Outcome::of_status(h.status.as_u16()));
    // Drain the (small) body so the connection could be reused; stop at 1 MiB.
    let mut seen = 0usize;
    while let Ok(Some(chunk)) = session.read_response_body().await {
        seen += chunk.len();
        if seen > 1 << 20 {
            break;
        }
    }
    outcome
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last: HashMap<(String, String), u64> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.config.load_full();
            let now = now_ms();
            for pool in snapshot.pools.values() {
                let Some(hc) = &pool.health_check else {
                    continue;
                };
                for (i, ep) in pool.endpoints.iter().enumerate() {
                    let key = (pool.name.to_string(), ep.addr.clone());
                    let due = last
                        .get(&key)
                        .is_none_or(|t| now >= t + hc.interval.as_millis() as u64);
                    if !due {
                        continue;
                    }
                    last.insert(key, now);
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        let connector = crate::proxy::attempt::connector().await;
                        let outcome = check(connector, &pool, i).await;
                        if let Some(ep) = pool.endpoints.get(i) {
                            match outcome {
                                Outcome::Success => {
                                    // Lets an open breaker whose open time is over go half-open,
                                    // so the success closes it.
                                    ep.state.breaker.permits();
                                }
                                Outcome::Failure => {
                                    tracing::warn!(pool = %pool.name, endpoint = %ep.addr, "health check failed");
                                }
                                Outcome::Neutral => {}
                            }
                            ep.state.breaker.record(outcome);
                        }
                    });
                }
            }
        }
    }
}
