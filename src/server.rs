//! Wiring: the compiled config into a Pingora server running the proxy listener (the
//! [`Sluice`] app) and the background services; the admin listener runs beside it
//! ([`crate::admin::spawn`]).

use crate::cache::redis_tier::RedisTier;
use crate::config::Snapshot;
use crate::health::HealthChecker;
use crate::limits::shared::SharedStore;
use crate::limits::Limiter;
use crate::listener::Listener;
use crate::proxy::Sluice;
use crate::reload::Reloader;
use arc_swap::ArcSwap;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Seconds for the final shutdown of services after the drain deadline.
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 2;

/// Keeps the Redis connection (see [`SharedStore::maintain`]) and returns idle leases, every
/// [`FLUSH_INTERVAL`].
struct SharedFlush(Arc<SharedStore>);

/// Budget spend batching interval (bounds a shared budget's overshoot, see `limits::shared`).
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for SharedFlush {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        // (Re)connecting to Redis happens here, off every request's path.
        tokio::spawn(self.0.clone().maintain());
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.0.flush().await;
                    return;
                }
                _ = tick.tick() => self.0.flush().await,
            }
        }
    }
}

/// Keeps the response cache's Redis tier connected (see [`RedisTier::maintain`]) and listens
/// on its purge channel for the store (see [`crate::cache::purge_channel`]) until shutdown.
struct CacheRedisKeeper(Arc<RedisTier>, Arc<crate::cache::Store>);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for CacheRedisKeeper {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let (tier, store) = (self.0.clone(), self.1.clone());
        let both = async move {
            tokio::join!(
                tier.clone().maintain(),
                crate::cache::purge_channel::listen(tier, store)
            );
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            () = both => {}
        }
    }
}

/// Build the Pingora server for `snapshot` (loaded from `path`, watched for reloads) and run
/// it until shutdown. SIGTERM: stop accepting, readiness false, drain for
/// `server.drain_timeout_seconds`, exit. SIGINT: exit at once. SIGHUP: reload. Never returns.
pub fn run(path: PathBuf, snapshot: Snapshot) -> ! {
    crate::metrics::init();
    if let Some(t) = &snapshot.tracing {
        // Before any runtime starts: the exporter's blocking HTTP client is built here.
        if let Err(e) = crate::otel::init(t) {
            tracing::error!(error = %e, "tracing: cannot start the OTLP exporter");
            std::process::exit(1);
        }
        tracing::info!(endpoint = %t.endpoint, "tracing: exporting spans over OTLP/HTTP");
    }
    let conf = ServerConf {
        threads: snapshot.threads,
        grace_period_seconds: Some(crate::drain::pingora_grace_seconds(snapshot.drain_timeout)),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECONDS),
        ..ServerConf::default()
    };
    let proxy_addr = snapshot.proxy_addr.clone();
    let admin_addr = snapshot.admin_addr.clone();
    let admin_bounds = crate::admin::Bounds {
        max_connections: snapshot.admin_max_connections,
        connection_timeout: snapshot.admin_connection_timeout,
    };
    // Pingora retries a taken address for 30 s and then stops only the proxy service: the
    // process would stay up, and readiness (a connection to the proxy address) would be
    // answered by whoever holds the port. Refuse at once instead, as for the admin listener.
    if let Err(e) = crate::listener::check_free(&proxy_addr) {
        tracing::error!(proxy = %proxy_addr, error = %e, "proxy listener: cannot bind");
        std::process::exit(1);
    }
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let shared = match &snapshot.redis {
        Some(conf) => match SharedStore::new(conf) {
            Ok(store) => Some(Arc::new(store)),
            Err(e) => {
                tracing::error!(error = %e, "limits.redis.url: cannot use it");
                std::process::exit(1);
            }
        },
        None => None,
    };
    let limiter = Arc::new(Limiter::new(shared.clone()));
    let config = Arc::new(ArcSwap::from_pointee(snapshot));
    let config_for_reload = config.clone();
    let config_for_health = config.clone();
    let config_for_admin = config.clone();
    // The attempts' upstream connector loads the root certificates: off the start-up path.
    crate::proxy::attempt::prepare_connector();
    // The proxy app behind the connection bounds.
    let connections = config.load().connections;
    let buffers = config.load().client_buffers;
    crate::listener::warn_if_open_files_low(connections.max_connections);
    let sluice = Sluice::new(config, limiter);
    // The response cache's Redis tier, built with the store from the first snapshot.
    let cache_redis = sluice.store().redis().cloned();
    let cache_store = sluice.store().clone();
    let cache_store_for_channel = cache_store.clone();
    let app = Arc::new(pingora_proxy::http_proxy(&server.configuration, sluice));
    let mut proxy = Service::new("sluice proxy".to_owned(), Listener::new(app, connections));
    // Sized L4 buffers instead of Pingora's 64 KiB read buffer per client connection.
    proxy.add_listener(
        ListenerConfig::tcp(proxy_addr.as_str()).l4_buffer(L4BufferSettings::new(
            buffers.read_bytes,
            buffers.write_bytes,
        )),
    );

    let ready = Arc::new(AtomicBool::new(false));
    // No tokenizer table is built at start: each encoding is built on its first need, on a
    // thread of its own (`usage::estimate`), so a sidecar whose upstreams report usage never
    // holds one (o200k_base alone is about 28 MiB).
    // Not a Pingora service: it must keep answering through the drain (see `admin`).
    if let Err(e) = crate::admin::spawn(
        &admin_addr,
        ready.clone(),
        admin_bounds,
        config_for_admin,
        cache_store,
    ) {
        tracing::error!(admin = %admin_addr, error = %e, "admin listener: cannot bind");
        std::process::exit(1);
    }

    let reloader = Reloader::new(path, config_for_reload, ready.clone());
    server.add_service(proxy);
    server.add_service(background_service("config reload", reloader));
    server.add_service(background_service(
        "health checks",
        HealthChecker::new(config_for_health),
    ));
    if let Some(store) = shared {
        server.add_service(background_service("shared limits", SharedFlush(store)));
    }
    if let Some(tier) = cache_redis {
        server.add_service(background_service(
            "cache redis tier",
            CacheRedisKeeper(tier, cache_store_for_channel),
        ));
    }
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "sluice starting");
    server.run_forever()
}
