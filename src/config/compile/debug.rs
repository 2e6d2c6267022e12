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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(d: &DebugConf, admin_timeout_ms: u64) -> (Profiling, Vec<String>) {
        let mut errs = Errors::default();
        let p = compile_debug(d, admin_timeout_ms, &mut errs);
        (p, errs.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn defaults_are_off_and_fit_the_default_admin_timeout() {
        let (p, errs) = check(&DebugConf::default(), 30_000);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            p,
            Profiling {
                enabled: false,
                max_seconds: 20,
                frequency_hz: 99
            }
        );
        let on = DebugConf {
            profiling: true,
            ..DebugConf::default()
        };
        assert!(check(&on, 30_000).1.is_empty());
    }

    #[test]
    fn bounds_are_checked_with_their_paths() {
        let long = DebugConf {
            profiling: true,
            max_profile_seconds: 60,
            ..DebugConf::default()
        };
        let errs = check(&long, 30_000).1;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("debug.max_profile_seconds: must leave 10000 ms"));
        // The same bound with a longer admin timeout is fine; off, it is not checked.
        assert!(check(&long, 70_000).1.is_empty());
        let off = DebugConf {
            profiling: false,
            ..long
        };
        assert!(check(&off, 30_000).1.is_empty());
        for hz in [0, 1_001] {
            let d = DebugConf {
                profile_frequency_hz: hz,
                ..DebugConf::default()
            };
            let errs = check(&d, 30_000).1;
            assert_eq!(
                errs,
                ["debug.profile_frequency_hz: must be between 1 and 1000"]
            );
        }
        let zero = DebugConf {
            max_profile_seconds: 0,
            ..DebugConf::default()
        };
        assert_eq!(
            check(&zero, 30_000).1,
            ["debug.max_profile_seconds: must be at least 1"]
        );
    }
}
