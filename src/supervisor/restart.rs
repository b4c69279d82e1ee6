//! Restart policy arithmetic: exponential backoff with cap and jitter, and the start limit.
//!
//! Pure functions over [`RestartConfig`]; the state machine in `state.rs` calls them.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::RestartConfig;

/// Delay before restart attempt `attempt` (0-based): `delay × multiplier^attempt`, capped at
/// `max_delay`, then scaled by `1 ± jitter` using `rand` in `[-1, 1]`.
pub fn backoff_delay(cfg: &RestartConfig, attempt: u32, rand: f64) -> Duration {
    let base = cfg.delay.as_secs_f64();
    let exp = cfg.multiplier.max(1.0).powi(attempt.min(1000) as i32);
    let capped = (base * exp).min(cfg.max_delay.as_secs_f64());
    let jittered = capped * (1.0 + cfg.jitter.clamp(0.0, 1.0) * rand.clamp(-1.0, 1.0));
    // try_: a product past Duration's range (or NaN) must not panic the supervisor.
    Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(Duration::MAX)
}

/// Tracks the start times inside the `interval` window for the `burst` start limit.
#[derive(Debug, Clone, Default)]
pub struct StartLimit {
    starts: VecDeque<Instant>,
}

impl StartLimit {
    /// Record a start at `now`.
    pub fn record(&mut self, now: Instant) {
        self.starts.push_back(now);
    }

    /// Would one more start at `now` exceed `burst` starts within `interval`? `burst = 0` never does.
    pub fn exceeded(&mut self, cfg: &RestartConfig, now: Instant) -> bool {
        if cfg.burst == 0 {
            self.starts.clear();
            return false;
        }
        while let Some(first) = self.starts.front() {
            if now.duration_since(*first) >= cfg.interval {
                self.starts.pop_front();
            } else {
                break;
            }
        }
        self.starts.len() >= cfg.burst as usize
    }

    /// Number of starts currently inside the window.
    pub fn count(&self) -> usize {
        self.starts.len()
    }

    /// Forget all recorded starts (an operator restart or reset).
    pub fn clear(&mut self) {
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RestartConfig {
        RestartConfig {
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            ..RestartConfig::default()
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = cfg();
        let ms: Vec<u128> = (0..6)
            .map(|n| backoff_delay(&c, n, 0.0).as_millis())
            .collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_in_band() {
        let c = RestartConfig {
            jitter: 0.1,
            ..cfg()
        };
        assert_eq!(backoff_delay(&c, 0, 1.0).as_millis(), 110);
        assert_eq!(backoff_delay(&c, 0, -1.0).as_millis(), 90);
        assert_eq!(backoff_delay(&c, 40, 1.0).as_millis(), 1100);
    }

    #[test]
    fn zero_delay_is_zero() {
        let c = RestartConfig {
            delay: Duration::ZERO,
            ..cfg()
        };
        assert_eq!(backoff_delay(&c, 5, 1.0), Duration::ZERO);
    }

    #[test]
    fn start_limit_counts_inside_window() {
        let c = RestartConfig {
            burst: 3,
            interval: Duration::from_secs(10),
            ..cfg()
        };
        let t0 = Instant::now();
        let mut l = StartLimit::default();
        for i in 0..3 {
            assert!(!l.exceeded(&c, t0 + Duration::from_secs(i)));
            l.record(t0 + Duration::from_secs(i));
        }
        assert!(l.exceeded(&c, t0 + Duration::from_secs(3)));
        // the first start leaves the window after 10 s
        assert!(!l.exceeded(&c, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn burst_zero_means_no_limit() {
        let c = cfg();
        let t0 = Instant::now();
        let mut l = StartLimit::default();
        for _ in 0..100 {
            l.record(t0);
        }
        assert!(!l.exceeded(&c, t0));
    }
}
