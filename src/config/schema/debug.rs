//! The `debug` section of the schema: live profiling endpoints on the admin listener, off by
//! default.

use serde::Deserialize;

/// `debug`: endpoints for looking inside a running sidecar, served only on the admin listener
/// (`listeners.admin`). Reloadable: a config reload turns them on or off without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugConf {
    /// Serve `GET /debug/pprof/profile?seconds=N` (a CPU profile in the pprof format) and
    /// `GET /debug/allocator` (jemalloc's statistics, JSON). Default false: both answer 404.
    #[serde(default)]
    pub profiling: bool,
    /// Longest CPU profile a request may ask for (`seconds`, whole seconds); longer asks get a
    /// 400. Must leave at least 10 s of `server.admin_connection_timeout_ms` for symbolizing,
    /// encoding and sending the profile. Default 20 (fits the default 30 s admin connection
    /// timeout); longer profiles need a longer admin connection timeout.
    #[serde(default = "default_max_profile_seconds")]
    pub max_profile_seconds: u64,
    /// Sampling frequency of CPU profiles (Hz, 1..=1000): SIGPROF per this many CPU-time
    /// intervals of the process. Default 99 (Go's runtime samples at 100 Hz; 99 avoids
    /// lockstep with periodic work).
    #[serde(default = "default_profile_frequency_hz")]
    pub profile_frequency_hz: u32,
}

impl Default for DebugConf {
    fn default() -> Self {
        Self {
            profiling: false,
            max_profile_seconds: default_max_profile_seconds(),
            profile_frequency_hz: default_profile_frequency_hz(),
        }
    }
}

fn default_max_profile_seconds() -> u64 {
    20
}
fn default_profile_frequency_hz() -> u32 {
    99
}
