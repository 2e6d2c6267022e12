//! The `debug` section compiled and validated: the admin listener's profiling endpoints.

use super::Errors;
use crate::config::schema::DebugConf;
use crate::config::snapshot::Profiling;

/// See [`Profiling::MARGIN_MS`].
const PROFILE_MARGIN_MS: u64 = Profiling::MARGIN_MS;

/// Highest sampling frequency accepted (Hz): the interval timer counts in microseconds, and
/// beyond about 1 kHz the signal handler's cost dominates what it measures.
const MAX_FREQUENCY_HZ: u32 = 1_000;

/// `debug`, checked against `server.admin_connection_timeout_ms` (`admin_timeout_ms`), which
/// bounds every admin connection and so every profile.
pub(super) fn compile_debug(d: &DebugConf, admin_timeout_ms: u64, errs: &mut Errors) -> Profiling {
    if d.max_profile_seconds == 0 {
        errs.push("debug.max_profile_seconds", "must be at least 1");
    } else if d.profiling
        && d.max_profile_seconds
            .saturating_mul(1_000)
            .saturating_add(PROFILE_MARGIN_MS)
            > admin_timeout_ms
    {
        errs.push(
            "debug.max_profile_seconds",
            format!(
                "must leave {PROFILE_MARGIN_MS} ms of server.admin_connection_timeout_ms \
                 ({admin_timeout_ms} ms) to send the profile: lower it or raise the timeout"
            ),
        );
    }
    if d.profile_frequency_hz == 0 || d.profile_frequency_hz > MAX_FREQUENCY_HZ {
        errs.push(
            "debug.profile_frequency_hz",
            format!("must be between 1 and {MAX_FREQUENCY_HZ}"),
        );
    }
    Profiling {
        enabled: d.profiling,
        max_seconds: d.max_profile_seconds,
        frequency_hz: i32::try_from(d.profile_frequency_hz.min(MAX_FREQUENCY_HZ)).unwrap_or(99),
    }
}
