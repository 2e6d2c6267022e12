//! `GET /debug/pprof/profile?seconds=N` on the admin listener: a CPU profile of the whole
//! process in the pprof format, a gzip-compressed `profile.proto` message
//! (<https://github.com/google/pprof/blob/main/proto/profile.proto>), as Go's `net/http/pprof`
//! serves it, so `go tool pprof` and other pprof readers take the URL as is.
//!
//! Samples come from the `pprof` crate (tikv/pprof-rs): `setitimer(ITIMER_PROF)` raises
//! SIGPROF each 1/`frequency` second of CPU time consumed by the process, and the handler records
//! the interrupted thread's stack. Timer and handler are process-wide, so one profile runs at a
//! time; another request meanwhile gets a 409 at once. The profile is taken on a thread of the
//! runtime's blocking pool (sleep, then symbolize and encode): the admin listener's one thread
//! keeps answering `/readyz` and `/metrics` meanwhile.

use super::reply;
use crate::config::Profiling;
use http::Response;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// `seconds` when the request names none: Go's default (`net/http/pprof`), or the configured
/// maximum if lower.
const DEFAULT_SECONDS: u64 = 30;

/// Shared objects whose code is not unwound from the signal handler: unwinding through them
/// while they hold their own locks (the dynamic loader's, libgcc's unwinder) can deadlock. The
/// pprof-rs README recommends this list.
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso"];

/// The CPU profiler of the admin listener: at most one profile at a time.
pub struct CpuProfiles {
    slot: Arc<Semaphore>,
}

impl Default for CpuProfiles {
    fn default() -> Self {
        Self {
            slot: Arc::new(Semaphore::new(1)),
        }
    }
}

impl CpuProfiles {
    /// Answer one profile request: `query` is the request's query string, `conf` the profiling
    /// settings in force, `connection_timeout` the admin listener's bound on a connection (the
    /// profile must be sent within it, as Go refuses a `seconds` beyond its `WriteTimeout`).
    ///
    /// 200 with the gzip-compressed profile (`application/octet-stream`); 400 for a `seconds`
    /// that is not a whole number in `1..=debug.max_profile_seconds` or that would outlast the
    /// connection; 409 while another profile runs; 500 if the profiler cannot start or encode.
    pub async fn serve(
        &self,
        query: Option<&str>,
        conf: Profiling,
        connection_timeout: Duration,
    ) -> Response<Vec<u8>> {
        let seconds = match seconds(query, conf.max_seconds, connection_timeout) {
            Ok(s) => s,
            Err(msg) => return reply(400, "text/plain", format!("{msg}\n").into_bytes()),
        };
        let Ok(permit) = self.slot.clone().try_acquire_owned() else {
            return reply(
                409,
                "text/plain",
                b"a CPU profile is already being taken: retry when it ends\n".to_vec(),
            );
        };
        let frequency = conf.frequency_hz;
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            take(Duration::from_secs(seconds), frequency)
        });
        match task.await {
            Ok(Ok(body)) => {
                let mut resp = reply(200, "application/octet-stream", body);
                resp.headers_mut().insert(
                    http::header::CONTENT_DISPOSITION,
                    http::HeaderValue::from_static("attachment; filename=\"profile\""),
                );
                resp
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "CPU profile failed");
                reply(
                    500,
                    "text/plain",
                    format!("CPU profile failed: {e}\n").into_bytes(),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "CPU profile task failed");
                reply(500, "text/plain", b"CPU profile failed\n".to_vec())
            }
        }
    }
}

/// The `seconds` query parameter, checked. Errors: the message of the 400.
fn seconds(query: Option<&str>, max: u64, connection_timeout: Duration) -> Result<u64, String> {
    let raw = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == "seconds")
        .map(|(_, v)| v);
    let seconds = match raw {
        None => DEFAULT_SECONDS.min(max),
        Some(v) => match v.parse::<u64>() {
            Ok(s) if (1..=max).contains(&s) => s,
            _ => {
                return Err(format!(
                    "seconds must be a whole number from 1 to {max} (debug.max_profile_seconds)"
                ))
            }
        },
    };
    let needed = Duration::from_millis(
        seconds
            .saturating_mul(1_000)
            .saturating_add(Profiling::MARGIN_MS),
    );
    if needed > connection_timeout {
        return Err(format!(
            "a {seconds} s profile would outlast server.admin_connection_timeout_ms ({} ms)",
            connection_timeout.as_millis()
        ));
    }
    Ok(seconds)
}

/// Sample the process for `duration` at `frequency` Hz, then symbolize, encode and gzip.
/// Blocking: runs on the blocking pool.
fn take(duration: Duration, frequency: i32) -> Result<Vec<u8>, String> {
    use pprof::protos::Message;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(frequency)
        .blocklist(BLOCKLIST)
        .build()
        .map_err(|e| format!("cannot start the profiler: {e}"))?;
    std::thread::sleep(duration);
    // Built while the guard still holds the samples (dropping it discards them); samples that
    // fall during the build are skipped by the handler, not recorded.
    let report = guard.report().build().map_err(|e| e.to_string())?;
    drop(guard);
    let proto = report
        .pprof()
        .map_err(|e| e.to_string())?
        .write_to_bytes()
        .map_err(|e| e.to_string())?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&proto).map_err(|e| e.to_string())?;
    gz.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3_600);

    #[test]
    fn seconds_are_checked() {
        assert_eq!(seconds(Some("seconds=2"), 20, LONG), Ok(2));
        assert_eq!(seconds(Some("debug=1&seconds=20"), 20, LONG), Ok(20));
        assert_eq!(seconds(None, 20, LONG), Ok(20));
        assert_eq!(seconds(Some("x=1"), 60, LONG), Ok(DEFAULT_SECONDS));
        for bad in [
            "seconds=0",
            "seconds=21",
            "seconds=-1",
            "seconds=2.5",
            "seconds=",
            "seconds",
        ] {
            let err = seconds(Some(bad), 20, LONG).unwrap_err();
            assert!(err.contains("from 1 to 20"), "{bad}: {err}");
        }
        // 15 s + the margin does not fit a 24 s connection.
        let err = seconds(Some("seconds=15"), 20, Duration::from_secs(24)).unwrap_err();
        assert!(err.contains("admin_connection_timeout_ms"), "{err}");
    }
}
