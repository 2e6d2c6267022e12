//! The floor sluice is measured against: a bare Pingora (=0.9.1) passthrough proxy, one worker
//! thread, `upstream_peer` to a fixed plain-HTTP address and nothing else.
//!
//! `cargo run --release --example bare_pingora -- LISTEN_ADDR UPSTREAM_ADDR`
//! e.g. `bare_pingora 127.0.0.1:6188 127.0.0.1:8000`. Used by `bench_load` (benches/load/).
#![allow(clippy::expect_used)]

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

struct Passthrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .expect("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR");
    let upstream = args
        .next()
        .expect("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR");
    let tmp = std::env::temp_dir();
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: tmp
            .join(format!("bare_pingora.{}.pid", std::process::id()))
            .display()
            .to_string(),
        upgrade_sock: tmp
            .join(format!("bare_pingora.{}.sock", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy =
        pingora_proxy::http_proxy_service(&server.configuration, Passthrough { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
