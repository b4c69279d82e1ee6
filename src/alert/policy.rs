//! The pure alerting policy: which events become alerts, dedup per service + kind within
//! `repeat_interval` (counting what was held back), crash loops as one incident, and recovery
//! notices with the downtime.
//!
//! No I/O and no clock of its own: the Alerter task feeds it events with `now` and calls
//! [`Policy::tick`] at [`Policy::next_deadline`]. Tested with paused tokio time.

use crate::deadline::Later;
use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::message::AlertEvent;
use crate::event::EventKind;

/// What the policy needs to know about a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitInfo {
    /// Recovery is `healthy` again (true) or running for `stable` without exiting (false).
    pub has_health: bool,
    /// How long a restarted service must run to count as recovered (its `reset_after`).
    pub stable: Duration,
}

impl Default for UnitInfo {
    fn default() -> Self {
        UnitInfo {
            has_health: false,
            stable: Duration::from_secs(60),
        }
    }
}

/// Something to tell the on-call.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub service: String,
    pub event: AlertEvent,
    /// Similar alerts held back since the last one of this kind (or, for a recovery, during
    /// the whole incident).
    pub held_back: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub backoff_ms: Option<u64>,
    pub restarts: Option<u32>,
    pub reason: Option<String>,
    pub probe: Option<String>,
    /// For a recovery: since the incident began.
    pub down: Option<Duration>,
}

impl Notice {
    fn new(service: &str, event: AlertEvent) -> Notice {
        Notice {
            service: service.to_owned(),
            event,
            held_back: 0,
            exit_code: None,
            signal: None,
            backoff_ms: None,
            restarts: None,
            reason: None,
            probe: None,
            down: None,
        }
    }
}

/// Per-service memory.
#[derive(Debug, Default)]
struct Track {
    /// When the current incident began; `None` when all is well.
    incident_since: Option<Instant>,
    /// Per kind: when the last alert went out, and how many were held back since.
    sent: HashMap<AlertEvent, (Instant, u32)>,
    last_exit: Option<(Option<i32>, Option<String>)>,
    last_error: Option<String>,
    /// Probes failed during this run: its restart is part of the unhealthy incident.
    unhealthy_this_run: bool,
    /// A restarted service without health check counts as recovered at this instant.
    recovery_due: Option<Instant>,
}

/// The policy's state for all services.
#[derive(Debug)]
pub struct Policy {
    repeat: Duration,
    services: HashMap<String, Track>,
}

impl Policy {
    pub fn new(repeat: Duration) -> Policy {
        Policy {
            repeat,
            services: HashMap::new(),
        }
    }

    pub fn set_repeat(&mut self, repeat: Duration) {
        self.repeat = repeat;
    }

    /// Feed one event; returns what to send now.
    pub fn on_event(
        &mut self,
        service: &str,
        kind: &EventKind,
        unit: UnitInfo,
        now: Instant,
    ) -> Vec<Notice> {
        let t = self.services.entry(service.to_owned()).or_default();
        match kind {
            EventKind::Started { .. } => {
                t.unhealthy_this_run = false;
                if t.incident_since.is_some() && !unit.has_health {
                    t.recovery_due = Some(now.later(unit.stable));
                }
                vec![]
            }
            EventKind::Exited { code, signal, .. } => {
                t.last_exit = Some((*code, signal.clone()));
                t.recovery_due = None;
                vec![]
            }
            EventKind::SpawnFailed { error } => {
                t.last_exit = None;
                t.last_error = Some(error.clone());
                t.recovery_due = None;
                vec![]
            }
            EventKind::Backoff { delay_ms, restarts } => {
                t.recovery_due = None;
                if t.unhealthy_this_run {
                    // Restarted for failing probes: the unhealthy alert covers it.
                    return vec![];
                }
                let mut n = Notice::new(service, AlertEvent::Crashed);
                n.backoff_ms = Some(*delay_ms);
                n.restarts = Some(*restarts);
                fill_exit(&mut n, t);
                self.alert(n, now)
            }
            EventKind::Failed { reason } => {
                t.recovery_due = None;
                let mut n = Notice::new(service, AlertEvent::Failed);
                fill_exit(&mut n, t);
                n.reason = Some(reason.clone());
                self.alert(n, now)
            }
            EventKind::Unhealthy { probe } => {
                t.unhealthy_this_run = true;
                t.recovery_due = None;
                let mut n = Notice::new(service, AlertEvent::Unhealthy);
                n.probe = Some(probe.to_string());
                self.alert(n, now)
            }
            EventKind::Healthy { probe } => {
                let mut out = self.recover(service, now);
                for n in &mut out {
                    n.probe = Some(probe.to_string());
                }
                out
            }
            // The reason already names the release ("release v42 was not ready within …").
            EventKind::DeployFailed { reason, .. } => {
                self.deploy_alert(service, AlertEvent::DeployFailed, reason.clone(), now)
            }
            EventKind::RolledBack {
                reason,
                release,
                to,
                ..
            } => self.deploy_alert(
                service,
                AlertEvent::RolledBack,
                format!("release {release} rolled back to {to}: {reason}"),
                now,
            ),
            EventKind::Stopped
            | EventKind::DeployStarted { .. }
            | EventKind::Switched { .. }
            | EventKind::DeploySucceeded { .. } => vec![],
        }
    }

    /// A deploy that failed or was rolled back: the previous release still serves, so this is
    /// no outage and opens no incident (no recovery notice follows).
    fn deploy_alert(
        &mut self,
        service: &str,
        event: AlertEvent,
        reason: String,
        now: Instant,
    ) -> Vec<Notice> {
        let had_incident = self
            .services
            .get(service)
            .is_some_and(|t| t.incident_since.is_some());
        let mut n = Notice::new(service, event);
        n.reason = Some(reason);
        let out = self.alert(n, now);
        if !had_incident {
            if let Some(t) = self.services.get_mut(service) {
                t.incident_since = None;
            }
        }
        out
    }

    /// Recoveries that have come due.
    pub fn tick(&mut self, now: Instant) -> Vec<Notice> {
        let due: Vec<String> = self
            .services
            .iter()
            .filter(|(_, t)| t.recovery_due.is_some_and(|d| d <= now))
            .map(|(name, _)| name.clone())
            .collect();
        due.iter().flat_map(|s| self.recover(s, now)).collect()
    }

    /// When [`Policy::tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.services.values().filter_map(|t| t.recovery_due).min()
    }

    /// Forget services that no longer exist.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.services.retain(|name, _| keep(name));
    }

    /// Open (or continue) an incident; send unless the same kind went out within `repeat`.
    fn alert(&mut self, mut n: Notice, now: Instant) -> Vec<Notice> {
        let repeat = self.repeat;
        let t = self.services.entry(n.service.clone()).or_default();
        t.incident_since.get_or_insert(now);
        match t.sent.get_mut(&n.event) {
            Some((at, held)) if now.duration_since(*at) < repeat => {
                *held += 1;
                vec![]
            }
            Some((at, held)) => {
                n.held_back = std::mem::take(held);
                *at = now;
                vec![n]
            }
            None => {
                t.sent.insert(n.event, (now, 0));
                vec![n]
            }
        }
    }

    /// Close the incident, if there is one, with a recovery notice.
    fn recover(&mut self, service: &str, now: Instant) -> Vec<Notice> {
        let Some(t) = self.services.get_mut(service) else {
            return vec![];
        };
        t.recovery_due = None;
        let Some(since) = t.incident_since.take() else {
            return vec![];
        };
        let mut n = Notice::new(service, AlertEvent::Recovered);
        n.down = Some(now.duration_since(since));
        n.held_back = t.sent.values().map(|(_, h)| h).sum();
        t.sent.clear();
        t.last_error = None;
        vec![n]
    }
}

fn fill_exit(n: &mut Notice, t: &Track) {
    if let Some((code, signal)) = &t.last_exit {
        n.exit_code = *code;
        n.signal = signal.clone();
    } else if let Some(e) = &t.last_error {
        n.reason = Some(format!("could not start: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ProbeResult;

    const PLAIN: UnitInfo = UnitInfo {
        has_health: false,
        stable: Duration::from_secs(5),
    };

    fn crash(p: &mut Policy, restarts: u32, now: Instant) -> Vec<Notice> {
        let mut out = p.on_event("api", &started(), PLAIN, now);
        let exited = EventKind::Exited {
            pid: 1,
            code: Some(1),
            signal: None,
        };
        out.extend(p.on_event("api", &exited, PLAIN, now));
        let backoff = EventKind::Backoff {
            delay_ms: 30_000,
            restarts,
        };
        out.extend(p.on_event("api", &backoff, PLAIN, now));
        out
    }

    fn started() -> EventKind {
        EventKind::Started {
            pid: 1,
            release: "current".into(),
        }
    }

    fn probe(ok: bool) -> ProbeResult {
        ProbeResult {
            ok,
            time: "t".into(),
            duration_ms: 3,
            status: Some(if ok { 200 } else { 500 }),
            detail: if ok { "HTTP 200" } else { "HTTP 500" }.into(),
        }
    }

    /// The BENCHMARKS figure: a crash loop for 10 minutes (a restart every `max_delay` = 30 s
    /// after a fast ramp) with `repeat_interval = "1h"` sends one alert, and with the fix one
    /// recovery: at most 2 messages per channel.
    #[tokio::test(start_paused = true)]
    async fn ten_minute_crash_loop_sends_one_alert_and_one_recovery() {
        let mut p = Policy::new(Duration::from_secs(3600));
        let start = Instant::now();
        let mut sent = Vec::new();
        let mut restarts = 0;
        while start.elapsed() < Duration::from_secs(600) {
            restarts += 1;
            sent.extend(crash(&mut p, restarts, Instant::now()));
            sent.extend(p.tick(Instant::now()));
            let delay =
                Duration::from_millis(100 * 2u64.pow(restarts.min(9))).min(Duration::from_secs(30));
            tokio::time::advance(delay).await;
        }
        assert!(restarts > 20, "{restarts}");
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].event, AlertEvent::Crashed);
        assert_eq!(sent[0].exit_code, Some(1));
        assert_eq!(sent[0].restarts, Some(1));
        // Fixed: it starts and stays up for `stable`.
        sent.extend(p.on_event("api", &started(), PLAIN, Instant::now()));
        assert_eq!(p.next_deadline(), Some(Instant::now() + PLAIN.stable));
        tokio::time::advance(PLAIN.stable).await;
        sent.extend(p.tick(Instant::now()));
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[1].event, AlertEvent::Recovered);
        assert_eq!(sent[1].held_back, restarts - 1);
        let down = sent[1].down.expect("downtime");
        assert!(down >= Duration::from_secs(600), "{down:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn reminder_after_repeat_interval_counts_what_was_held_back() {
        let mut p = Policy::new(Duration::from_secs(60));
        let unhealthy = EventKind::Unhealthy {
            probe: probe(false),
        };
        let h = UnitInfo {
            has_health: true,
            ..PLAIN
        };
        assert_eq!(p.on_event("api", &unhealthy, h, Instant::now()).len(), 1);
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert!(p.on_event("api", &unhealthy, h, Instant::now()).is_empty());
        }
        tokio::time::advance(Duration::from_secs(31)).await;
        let reminder = p.on_event("api", &unhealthy, h, Instant::now());
        assert_eq!(reminder.len(), 1);
        assert_eq!(reminder[0].held_back, 3);
        assert_eq!(reminder[0].probe.as_deref(), Some("HTTP 500 after 3 ms"));
        // Another kind is not deduplicated against this one.
        let failed = EventKind::Failed {
            reason: "gave up".into(),
        };
        assert_eq!(p.on_event("api", &failed, h, Instant::now()).len(), 1);
        // Healthy again: one recovery; then a new incident alerts at once.
        tokio::time::advance(Duration::from_secs(5)).await;
        let healthy = EventKind::Healthy { probe: probe(true) };
        let rec = p.on_event("api", &healthy, h, Instant::now());
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].event, AlertEvent::Recovered);
        assert_eq!(rec[0].down, Some(Duration::from_secs(66)));
        assert!(p.on_event("api", &healthy, h, Instant::now()).is_empty());
        assert_eq!(p.on_event("api", &unhealthy, h, Instant::now()).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn restart_for_unhealthy_is_not_also_a_crash_and_started_is_not_recovery_with_health() {
        let mut p = Policy::new(Duration::from_secs(3600));
        let h = UnitInfo {
            has_health: true,
            ..PLAIN
        };
        let now = Instant::now();
        assert!(p.on_event("api", &started(), h, now).is_empty());
        let unhealthy = EventKind::Unhealthy {
            probe: probe(false),
        };
        assert_eq!(p.on_event("api", &unhealthy, h, now).len(), 1);
        let exited = EventKind::Exited {
            pid: 1,
            code: None,
            signal: Some("SIGTERM".into()),
        };
        assert!(p.on_event("api", &exited, h, now).is_empty());
        let backoff = EventKind::Backoff {
            delay_ms: 100,
            restarts: 1,
        };
        assert!(p.on_event("api", &backoff, h, now).is_empty());
        assert!(p.on_event("api", &started(), h, now).is_empty());
        assert_eq!(p.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exit_before_the_stable_window_cancels_the_recovery() {
        let mut p = Policy::new(Duration::from_secs(3600));
        assert_eq!(crash(&mut p, 1, Instant::now()).len(), 1);
        p.on_event("api", &started(), PLAIN, Instant::now());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(crash(&mut p, 2, Instant::now()).is_empty());
        assert_eq!(p.next_deadline(), None);
        p.on_event("api", &started(), PLAIN, Instant::now());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(p.tick(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(p.tick(Instant::now()).len(), 1);
    }
}
