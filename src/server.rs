//! Wiring: the compiled config into a Pingora server with two services, the proxy listener
//! (the [`Sluice`] app) and the admin listener ([`Admin`]).

use crate::admin::Admin;
use crate::config::Snapshot;
use crate::proxy::Sluice;
use arc_swap::ArcSwap;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Seconds to keep serving in-flight requests after SIGTERM before closing (well under
/// Kubernetes' 30 s grace period).
const GRACE_PERIOD_SECONDS: u64 = 10;
/// Seconds for the final shutdown of services after the grace period.
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

/// Build the Pingora server for `snapshot` and run it until shutdown. Never returns.
pub fn run(snapshot: Snapshot) -> ! {
    crate::metrics::init();
    // Load the tokenizer tables off the request path (hundreds of ms in a debug build), without
    // delaying readiness: only estimation needs them.
    std::thread::spawn(crate::usage::estimate::preload);
    let conf = ServerConf {
        threads: snapshot.threads,
        grace_period_seconds: Some(GRACE_PERIOD_SECONDS),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECONDS),
        ..ServerConf::default()
    };
    let proxy_addr = snapshot.proxy_addr.clone();
    let admin_addr = snapshot.admin_addr.clone();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let config = Arc::new(ArcSwap::from_pointee(snapshot));
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Sluice::new(config),
        "sluice proxy",
    );
    proxy.add_tcp(&proxy_addr);

    let ready = Arc::new(AtomicBool::new(false));
    let mut admin = Service::new(
        "sluice admin".to_owned(),
        HttpServer::new_app(Admin {
            ready: ready.clone(),
        }),
    );
    admin.add_tcp(&admin_addr);

    server.add_service(proxy);
    server.add_service(admin);
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "sluice starting");
    ready.store(true, Ordering::Release);
    server.run_forever()
}
