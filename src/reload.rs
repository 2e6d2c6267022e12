//! Hot reload and readiness, as a Pingora background service.
//!
//! Triggers: a change in the config file's directory (inotify through `notify`; a Kubernetes
//! ConfigMap update is a new `..<timestamp>` directory and an atomic rename of the `..data`
//! symlink (Kubernetes docs, "ConfigMaps: mounted ConfigMaps are updated automatically";
//! kubelet's `AtomicWriter`), so the directory is watched, not the file), a checksum poll as a
//! fallback, and SIGHUP (forces a reload, e.g. after a key file rotated). A new config is
//! parsed, validated and compiled whole (keys re-read) before it is swapped in with
//! `ArcSwap`; requests in flight keep the snapshot they started with. A bad config is
//! rejected with every path-qualified error in the log and the last good one keeps serving.
//! On shutdown (SIGTERM), readiness turns false at once.

use crate::config::{load_text, Secrets, Snapshot};
use crate::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Debounce after a directory event: the kubelet's swap is several renames in a row.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Why a reload was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A change in the config directory.
    Watch,
    /// The checksum poll.
    Poll,
    /// SIGHUP: reload even if the file did not change (key files may have).
    Signal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "watch",
            Trigger::Poll => "poll",
            Trigger::Signal => "sighup",
        }
    }
}

/// The reload service.
pub struct Reloader {
    path: PathBuf,
    config: Arc<ArcSwap<Snapshot>>,
    ready: Arc<AtomicBool>,
    last_text_sha256: Mutex<String>,
}

impl Reloader {
    /// Reload `path` into `config`; `ready` is the admin listener's readiness flag.
    pub fn new(path: PathBuf, config: Arc<ArcSwap<Snapshot>>, ready: Arc<AtomicBool>) -> Self {
        let snapshot = config.load_full();
        record_success(&snapshot.source_sha256);
        let current = fingerprint(&snapshot.source_sha256, &snapshot.key_files);
        Self {
            path,
            config,
            ready,
            last_text_sha256: Mutex::new(current),
        }
    }

    /// Re-read the file and swap it in if it changed (or `trigger` is SIGHUP) and is valid.
    /// Returns whether a new snapshot is in force.
    pub fn check(&self, trigger: Trigger) -> bool {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                // Mid-swap the file can be briefly missing; the next event or poll retries.
                tracing::warn!(path = %self.path.display(), error = %e, "config unreadable");
                return false;
            }
        };
        let sha = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(text.as_bytes()))
        };
        // What is compared: the config text and the key files it reads (a rotated Secret).
        let fingerprint = fingerprint(&sha, &self.config.load().key_files);
        let Ok(mut last) = self.last_text_sha256.lock() else {
            return false;
        };
        if *last == fingerprint && trigger != Trigger::Signal {
            return false;
        }
        // Remember it even if rejected: log a bad config once, not every poll.
        *last = fingerprint;
        match load_text(&text, Secrets::Load) {
            Ok(mut next) => {
                keep_start_only_fields(&self.config.load(), &mut next);
                let routes = next.routes.len();
                let pools = next.pools.len();
                crate::logging::remember_keys(&next);
                self.config.store(Arc::new(next));
                record_success(&sha);
                // Logged before it is counted: whoever sees the count can read the line.
                tracing::info!(trigger = trigger.as_str(), sha256 = %sha, routes, pools, "config reloaded");
                metrics::CONFIG_RELOADS
                    .with_label_values(&["success"])
                    .inc();
                true
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(trigger = trigger.as_str(), "config rejected: {e}");
                }
                tracing::error!(
                    trigger = trigger.as_str(),
                    errors = errors.0.len(),
                    "config rejected: the last good config keeps serving"
                );
                metrics::CONFIG_RELOADS
                    .with_label_values(&["failure"])
                    .inc();
                false
            }
        }
    }
}

/// Fields sluice reads only at start, by YAML path: a reload that changes one keeps the
/// running value (copied from `current` into `next`), logs a warning naming the fields and
/// counts each in `sluice_config_reload_ignored_fields_total{field}`; the rest applies.
/// Returns the fields kept.
pub fn keep_start_only_fields(current: &Snapshot, next: &mut Snapshot) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($field:literal, $($f:ident).+) => {
            if next.$($f).+ != current.$($f).+ {
                next.$($f).+.clone_from(&current.$($f).+);
                kept.push($field);
            }
        };
    }
    keep!("listeners.proxy", proxy_addr);
    keep!("listeners.admin", admin_addr);
    keep!("server.threads", threads);
    keep!("server.drain_timeout_seconds", drain_timeout);
    keep!("server.log_format", log_format);
    keep!("server.header_timeout_ms", connections.header_timeout);
    keep!(
        "server.keepalive_idle_timeout_ms",
        connections.keepalive_idle_timeout
    );
    keep!("server.max_client_connections", connections.max_connections);
    keep!("server.client_write_timeout_ms", connections.write_timeout);
    // The proxy listener's L4 buffers are set when it is built, at start.
    keep!("server.client_read_buffer_bytes", client_buffers.read_bytes);
    keep!(
        "server.client_write_buffer_bytes",
        client_buffers.write_bytes
    );
    keep!("server.admin_max_connections", admin_max_connections);
    keep!(
        "server.admin_connection_timeout_ms",
        admin_connection_timeout
    );
    keep!("reload.watch", reload_watch);
    keep!("reload.poll_interval_ms", reload_poll);
    // The response store (and its Redis tier) is built once, at start.
    keep!("cache.max_bytes", cache.max_bytes);
    keep!("cache.max_entry_bytes", cache.max_entry_bytes);
    keep!("cache.redis", cache.redis);
    // The OTLP exporter, its thread and queue are set up once, at start.
    keep!("tracing", tracing);
    match (&current.redis, &next.redis) {
        (Some(_), None) | (None, Some(_)) => kept.push("limits.store"),
        (Some(c), Some(n)) => {
            for (field, changed) in [
                ("limits.redis.url", c.url != n.url),
                ("limits.redis.timeout_ms", c.timeout_ms != n.timeout_ms),
                (
                    "limits.redis.connect_timeout_ms",
                    c.connect_timeout_ms != n.connect_timeout_ms,
                ),
                (
                    "limits.redis.failure_policy",
                    c.failure_policy != n.failure_policy,
                ),
                (
                    "limits.redis.expected_replicas",
                    c.expected_replicas != n.expected_replicas,
                ),
                ("limits.redis.lease_ms", c.lease_ms != n.lease_ms),
            ] {
                if changed {
                    kept.push(field);
                }
            }
        }
        (None, None) => {}
    }
    next.redis.clone_from(&current.redis);
    if !kept.is_empty() {
        // The warning first: whoever sees the count can read the warning too.
        tracing::warn!(
            fields = %kept.join(","),
            "config reload: these fields are read only at start and keep their running values until a restart; the rest of the reload applies"
        );
        for field in &kept {
            metrics::CONFIG_RELOAD_IGNORED
                .with_label_values(&[field])
                .inc();
        }
    }
    kept
}

/// The config text's hash plus a hash of the key files' contents (missing files hash as
/// empty; a Secret mid-swap is retried by the next event or poll).
fn fingerprint(text_sha: &str, key_files: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in key_files {
        h.update(f.as_bytes());
        h.update(std::fs::read(f).unwrap_or_default());
    }
    format!("{text_sha}/{}", hex::encode(h.finalize()))
}

fn record_success(sha: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics::CONFIG_LAST_SUCCESS.set(now);
    // The first 13 hex digits (52 bits) fit a float exactly: a gauge that changes with the
    // config, comparable across replicas.
    let short = u64::from_str_radix(sha.get(..13).unwrap_or("0"), 16).unwrap_or(0);
    metrics::CONFIG_HASH.set(short as f64);
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let snapshot = self.config.load_full();
        // Ready once the proxy listener accepts connections (Pingora starts services in an
        // order of its own: the admin listener may answer before the proxy listens).
        let (addr, ready) = (snapshot.proxy_addr.clone(), self.ready.clone());
        tokio::spawn(async move {
            while tokio::net::TcpStream::connect(addr.as_str()).await.is_err() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ready.store(true, Ordering::Release);
        });
        let (tx, mut events) = mpsc::channel::<()>(64);
        let _watcher = if snapshot.reload_watch {
            let dir_of = |p: &std::path::Path| {
                p.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), PathBuf::from)
            };
            let dir = dir_of(&self.path);
            // Key files' directories too (Secret mounts swap `..data` the same way).
            let mut key_dirs: Vec<PathBuf> = snapshot
                .key_files
                .iter()
                .map(|f| dir_of(std::path::Path::new(f)))
                .filter(|d| *d != dir)
                .collect();
            key_dirs.sort();
            key_dirs.dedup();
            let w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // Reads (our own `check` among them) are not changes: reacting to them made an
                // idle sluice re-read its config many times a second.
                if let Ok(ev) = res {
                    if !matches!(ev.kind, notify::EventKind::Access(_)) {
                        let _ = tx.try_send(());
                    }
                }
            });
            let watching = w.map_err(|e| e.to_string()).and_then(|mut w| {
                w.watch(&dir, RecursiveMode::NonRecursive)
                    .map_err(|e| e.to_string())?;
                for d in &key_dirs {
                    if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %d.display(), error = %e, "cannot watch a key directory: polling only");
                    }
                }
                Ok(w)
            });
            match watching {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory: polling only");
                    None
                }
            }
        } else {
            None
        };
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut poll = tokio::time::interval(snapshot.reload_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.ready.store(false, Ordering::Release);
                    // Not reloadable: Pingora's grace period was set from the first config.
                    crate::drain::begin(snapshot.drain_timeout);
                    tracing::info!("shutting down: not ready, draining in-flight requests");
                    // Pingora waits out the whole drain deadline; exit as soon as nothing is
                    // in flight instead (new connections are already refused).
                    while crate::proxy::active_requests() > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tracing::info!("drained: exiting");
                    // The spans of the last requests, bounded by `tracing.export_timeout_ms`.
                    let _ = tokio::task::spawn_blocking(crate::otel::flush).await;
                    std::process::exit(0);
                }
                Some(()) = events.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while events.try_recv().is_ok() {}
                    self.check(Trigger::Watch);
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.check(Trigger::Signal);
                }
                _ = poll.tick() => {
                    self.check(Trigger::Poll);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secrets;

    fn snapshot(extra: &str) -> Snapshot {
        let text = format!(
            "pools:\n  - name: p\n    provider: openai\n    endpoints: [{{url: \"http://127.0.0.1:9\", keys: [{{env: K}}]}}]\nroutes:\n  - {{name: main, match: {{path_prefix: /v1}}, pools: [p]}}\n{extra}"
        );
        load_text(&text, Secrets::Skip).unwrap()
    }

    #[test]
    fn start_only_fields_keep_their_running_values_and_the_rest_applies() {
        let current = snapshot("server: {threads: 2}\nlimits: {store: local}\n");
        let mut next = snapshot(
            "server: {threads: 8, drain_timeout_seconds: 99}\nlimits:\n  store: redis\n  redis: {url: \"redis://127.0.0.1:1\"}\n  default: {requests_per_minute: 5}\n",
        );
        let kept = keep_start_only_fields(&current, &mut next);
        assert_eq!(
            kept,
            [
                "server.threads",
                "server.drain_timeout_seconds",
                "limits.store"
            ]
        );
        assert_eq!(next.threads, current.threads);
        assert_eq!(next.drain_timeout, current.drain_timeout);
        assert!(next.redis.is_none());
        // Not start-only: applies.
        assert!(next.default_limits.is_some());

        let a = snapshot("limits:\n  store: redis\n  redis: {url: \"redis://127.0.0.1:1\"}\n");
        let mut b = snapshot(
            "limits:\n  store: redis\n  redis: {url: \"redis://127.0.0.1:1\", timeout_ms: 80, lease_ms: 100}\n",
        );
        assert_eq!(
            keep_start_only_fields(&a, &mut b),
            ["limits.redis.timeout_ms", "limits.redis.lease_ms"]
        );
        assert_eq!(b.redis, a.redis);
        let mut same = snapshot("");
        assert!(keep_start_only_fields(&snapshot(""), &mut same).is_empty());

        // The response store's bounds are read once, at start.
        let mut bigger = snapshot("cache: {max_bytes: 99999999, max_entry_bytes: 2048}\n");
        assert_eq!(
            keep_start_only_fields(&snapshot(""), &mut bigger),
            ["cache.max_bytes", "cache.max_entry_bytes"]
        );
        assert_eq!(bigger.cache, snapshot("").cache);
        // So are the client connections' buffers (the listener is built once).
        let mut buffers =
            snapshot("server: {client_read_buffer_bytes: 4096, client_write_buffer_bytes: 0}\n");
        assert_eq!(
            keep_start_only_fields(&snapshot(""), &mut buffers),
            [
                "server.client_read_buffer_bytes",
                "server.client_write_buffer_bytes"
            ]
        );
        assert_eq!(
            buffers.client_buffers.read_bytes,
            snapshot("").client_buffers.read_bytes
        );
        // The purge switch is read per request: it applies.
        let mut purge = snapshot("cache: {admin_purge: true}\n");
        assert!(keep_start_only_fields(&snapshot(""), &mut purge).is_empty());
        assert!(purge.cache.admin_purge);
    }

    #[test]
    fn the_cache_redis_tier_is_kept_until_a_restart() {
        let route = "  - {name: c, match: {path_prefix: /v2}, pools: [p], cache: {store: redis}}\n";
        let memory = snapshot("");
        let mut redis = snapshot(&format!(
            "{route}cache: {{redis: {{url: \"redis://127.0.0.1:1\"}}}}\n"
        ));
        assert!(redis.cache.redis.is_some());
        assert_eq!(keep_start_only_fields(&memory, &mut redis), ["cache.redis"]);
        assert!(redis.cache.redis.is_none());
    }
}
