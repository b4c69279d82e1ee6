//! Upper bounds of every duration and count orchd accepts, from a file or a request.
//!
//! A value past its bound is refused where it enters (`FILE:LINE:COL` for files, a usage error
//! for requests), so deadline arithmetic never meets a duration that overflows a clock. The
//! bounds are generous: each is far past what an operator would write on purpose
//! (docs/units.md and docs/api.md list them).

use std::time::Duration;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// `restart.delay`.
pub const RESTART_DELAY: Duration = Duration::from_secs(HOUR);
/// `restart.max_delay`.
pub const RESTART_MAX_DELAY: Duration = Duration::from_secs(DAY);
/// `restart.reset_after` and `restart.interval`.
pub const RESTART_WINDOW: Duration = Duration::from_secs(30 * DAY);
/// `stop.timeout`.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(DAY);
/// `health.interval` and `health.start_period`.
pub const HEALTH_PERIOD: Duration = Duration::from_secs(DAY);
/// `health.timeout`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(HOUR);
/// `deploy.timeout`, `deploy.watch`, `deploy.drain`, and `orchctl deploy --timeout`.
pub const DEPLOY_PHASE: Duration = Duration::from_secs(DAY);
/// `[alerts] repeat_interval`.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(30 * DAY);
/// `orchctl silence --for`.
pub const SILENCE: Duration = Duration::from_secs(366 * DAY);
/// `restart.multiplier`.
pub const MULTIPLIER: f64 = 100.0;
/// `health.retries` and `health.success_threshold`.
pub const PROBE_COUNT: u32 = 1000;
/// `deploy.keep_releases`.
pub const KEEP_RELEASES: u32 = 1000;
/// `restart.burst`.
pub const BURST: u32 = 10_000;

/// Parse a humantime duration (`"30m"`, `"1h30m"`) of at most `max`; the error says why
/// and what is allowed.
pub fn parse_duration(text: &str, max: Duration) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))?;
    if d > max {
        return Err(format!(
            "{text:?} is too long: at most {} is allowed",
            show(max)
        ));
    }
    Ok(d)
}

/// A bound as an operator would write it (`"24h"`, `"30d"`).
pub fn show(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => humantime::format_duration(d).to_string(),
        s if s % DAY == 0 && s > DAY => format!("{}d", s / DAY),
        s if s % HOUR == 0 => format!("{}h", s / HOUR),
        _ => humantime::format_duration(d).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_within_and_past_their_bound() {
        assert_eq!(
            parse_duration("10s", STOP_TIMEOUT),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(parse_duration("24h", STOP_TIMEOUT), Ok(STOP_TIMEOUT));
        assert_eq!(
            parse_duration("500000000000y", STOP_TIMEOUT),
            Err("\"500000000000y\" is too long: at most 24h is allowed".to_owned())
        );
        assert_eq!(
            parse_duration("1year 2days", SILENCE),
            Err("\"1year 2days\" is too long: at most 366d is allowed".to_owned())
        );
        assert!(
            parse_duration("soon", SILENCE)
                .unwrap_err()
                .starts_with("invalid duration \"soon\"")
        );
    }
}
