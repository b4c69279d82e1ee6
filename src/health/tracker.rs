//! The health axis of one instance: pure, table-tested.
//!
//! `start_period`: failures don't count while the process starts; a success ends it early.
//! `retries` consecutive counted failures → unhealthy; `success_threshold` consecutive
//! successes → healthy. The last 10 results are kept for `orchctl status SVC`.

use crate::deadline::Later;
use std::collections::VecDeque;

use tokio::time::Instant;

use super::Health;
use super::ProbeResult;
use crate::config::HealthConfig;

/// Results kept for status.
pub const KEEP_RESULTS: usize = 10;

/// A change of health caused by a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

/// Health of one instance.
#[derive(Debug, Clone)]
pub struct Tracker {
    cfg: HealthConfig,
    health: Health,
    start_period_ends: Option<Instant>,
    fails: u32,
    oks: u32,
    results: VecDeque<ProbeResult>,
    last_failure: Option<ProbeResult>,
}

impl Tracker {
    /// A new instance started at `now`: health `starting`.
    pub fn new(cfg: HealthConfig, now: Instant) -> Tracker {
        let start_period_ends = Some(now.later(cfg.start_period));
        Tracker {
            cfg,
            health: Health::Starting,
            start_period_ends,
            fails: 0,
            oks: 0,
            results: VecDeque::new(),
            last_failure: None,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }
    pub fn results(&self) -> impl Iterator<Item = &ProbeResult> {
        self.results.iter()
    }
    pub fn last_failure(&self) -> Option<&ProbeResult> {
        self.last_failure.as_ref()
    }
    /// New timing settings from a reload; the counts carry on.
    pub fn reconfigure(&mut self, cfg: HealthConfig) {
        self.cfg = cfg;
    }

    /// Take one result observed at `now`.
    pub fn observe(&mut self, r: ProbeResult, now: Instant) -> Transition {
        if self.results.len() == KEEP_RESULTS {
            self.results.pop_front();
        }
        self.results.push_back(r.clone());
        if r.ok {
            self.fails = 0;
            self.oks = self.oks.saturating_add(1);
            self.start_period_ends = None;
            if self.health != Health::Healthy && self.oks >= self.cfg.success_threshold {
                self.health = Health::Healthy;
                return Transition::BecameHealthy;
            }
            return Transition::None;
        }
        self.oks = 0;
        self.last_failure = Some(r);
        if self.start_period_ends.is_some_and(|end| now < end) {
            return Transition::None;
        }
        self.start_period_ends = None;
        self.fails = self.fails.saturating_add(1);
        if self.health != Health::Unhealthy && self.fails >= self.cfg.retries {
            self.health = Health::Unhealthy;
            return Transition::BecameUnhealthy;
        }
        Transition::None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::HealthCheck;

    fn cfg(retries: u32, success_threshold: u32, start_period_ms: u64) -> HealthConfig {
        HealthConfig {
            check: HealthCheck::Tcp {
                addr: "127.0.0.1:1".into(),
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries,
            start_period: Duration::from_millis(start_period_ms),
            success_threshold,
            ..HealthConfig::default()
        }
    }

    fn res(ok: bool) -> ProbeResult {
        ProbeResult {
            ok,
            time: String::new(),
            duration_ms: 1,
            status: None,
            detail: if ok { "ok" } else { "refused" }.into(),
        }
    }

    #[test]
    fn retries_consecutive_failures_make_it_unhealthy() {
        let t0 = Instant::now();
        let mut t = Tracker::new(cfg(3, 1, 0), t0);
        assert_eq!(t.health(), Health::Starting);
        assert_eq!(t.observe(res(false), t0), Transition::None);
        assert_eq!(t.observe(res(false), t0), Transition::None);
        assert_eq!(t.observe(res(false), t0), Transition::BecameUnhealthy);
        assert_eq!(t.observe(res(false), t0), Transition::None);
        assert_eq!(t.observe(res(true), t0), Transition::BecameHealthy);
        assert_eq!(t.health(), Health::Healthy);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut t = Tracker::new(cfg(2, 1, 0), t0);
        t.observe(res(true), t0);
        t.observe(res(false), t0);
        t.observe(res(true), t0);
        assert_eq!(t.observe(res(false), t0), Transition::None);
        assert_eq!(t.observe(res(false), t0), Transition::BecameUnhealthy);
    }

    #[test]
    fn start_period_suppresses_failures_until_it_ends_or_a_success() {
        let t0 = Instant::now();
        let mut t = Tracker::new(cfg(1, 1, 1000), t0);
        assert_eq!(
            t.observe(res(false), t0 + Duration::from_millis(500)),
            Transition::None
        );
        assert_eq!(t.health(), Health::Starting);
        assert_eq!(
            t.observe(res(false), t0 + Duration::from_millis(1000)),
            Transition::BecameUnhealthy
        );

        let mut t = Tracker::new(cfg(1, 1, 10_000), t0);
        assert_eq!(t.observe(res(true), t0), Transition::BecameHealthy);
        // the success ended the start period: the next failure counts
        assert_eq!(t.observe(res(false), t0), Transition::BecameUnhealthy);
    }

    #[test]
    fn success_threshold_needs_consecutive_successes() {
        let t0 = Instant::now();
        let mut t = Tracker::new(cfg(3, 2, 0), t0);
        assert_eq!(t.observe(res(true), t0), Transition::None);
        assert_eq!(t.observe(res(true), t0), Transition::BecameHealthy);
    }

    #[test]
    fn keeps_the_last_ten_results_and_last_failure() {
        let t0 = Instant::now();
        let mut t = Tracker::new(cfg(100, 1, 0), t0);
        for i in 0..15 {
            t.observe(res(i % 2 == 0), t0);
        }
        assert_eq!(t.results().count(), KEEP_RESULTS);
        assert_eq!(t.last_failure().map(|r| r.detail.as_str()), Some("refused"));
    }
}
