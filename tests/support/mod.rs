//! Test support shared by the integration tests (`mod support;` in each `tests/*.rs`) and the
//! benches (`#[path = "../tests/support/mod.rs"] mod support;`): an in-process mock upstream,
//! the sluice process launcher, a Redis launcher, a config builder, raw HTTP, sockets and
//! metric readers. Everything binds 127.0.0.1 port 0 and stops what it started on drop.
//!
//! - [`mock`]: [`Mock`], the upstream that records every request, and its [`Behavior`]s;
//! - [`launch`]: [`Sluice`], the binary on picked ports, ready on `/readyz`, killed on drop;
//! - [`redis`]: [`Redis`], a `redis-server` on a picked port, killed on drop;
//! - [`config`]: [`Config`] with [`Pool`], [`Route`], [`Tenant`], the YAML the tests share;
//! - [`http`]: [`raw_http`], requests byte for byte and their [`RawResponse`]; [`client`];
//! - [`net`]: [`free_port`] and [`DelayProxy`], a relay that delays replies;
//! - [`metrics`]: `Sluice::metric` / `Sluice::wait_metric` and `/proc` memory figures.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod http;
pub mod launch;
pub mod metrics;
pub mod mock;
pub mod net;
pub mod redis;

pub use config::{sha256_hex, Config, Pool, Route, Tenant};
pub use http::{client, raw_http, RawResponse};
pub use launch::{readyz, sluice_bin, write_atomically, Sluice};
pub use metrics::{proc_status_kib, reset_peak_rss, sample_sum};
pub use mock::{Behavior, CutEnd, Mock, Recorded};
pub use net::{free_port, DelayProxy};
pub use redis::Redis;
