//! Whether a service's dependencies let it start, from their watched statuses.
//!
//! `requires`: the dependency must be ready (running and healthy, or running with no health
//! check), or have exited cleanly (a one-shot job). Failed, invalid or stopped → blocked.
//! A dependency with a health check that stays unready longer than its bound
//! (`start_period + retries × interval + timeout`) blocks too. `after`: ordering only — wait
//! while the dependency is on its way up, never block.

use crate::deadline::Later;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{Deps, State};
use super::{DepWatch, Health};

/// The verdict, and when to look again if a health bound may expire while waiting.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub deps: Deps,
    pub recheck_at: Option<Instant>,
    /// The dependencies still on their way (empty unless `Waiting`).
    pub waiting_on: Vec<String>,
}

/// Evaluate `deps` at `now`; `waiting_since` is when the dependent started waiting.
pub fn evaluate(deps: &[DepWatch], waiting_since: Instant, now: Instant) -> Verdict {
    let mut waiting = Vec::new();
    let mut waiting_on = Vec::new();
    let mut recheck_at: Option<Instant> = None;
    for dep in deps {
        let s = dep.status.borrow();
        if s.ready || (dep.required && s.state == State::Exited) {
            continue;
        }
        let on_its_way = s.want_up
            && matches!(
                s.state,
                State::Inactive | State::Starting | State::Running | State::Backoff
            );
        if !dep.required {
            if on_its_way {
                waiting.push(format!("{} ({})", dep.name, s.state));
                waiting_on.push(dep.name.clone());
            }
            continue;
        }
        match s.state {
            State::Failed | State::BadSetting => {
                return blocked(format!("{} is {}", dep.name, s.state));
            }
            _ if !s.want_up => {
                return blocked(format!("{} is {} (not started)", dep.name, s.state));
            }
            State::Running if s.health != Health::None => {
                if let Some(bound) = dep.health_bound {
                    let expires = waiting_since.later(bound);
                    if now >= expires {
                        return blocked(format!(
                            "{} did not become healthy within {} (health {})",
                            dep.name,
                            humantime::format_duration(round_ms(bound)),
                            s.health.as_str()
                        ));
                    }
                    recheck_at = Some(recheck_at.map_or(expires, |r| r.min(expires)));
                }
                waiting.push(format!(
                    "{} (running, health {})",
                    dep.name,
                    s.health.as_str()
                ));
                waiting_on.push(dep.name.clone());
            }
            _ => {
                waiting.push(format!("{} ({})", dep.name, s.state));
                waiting_on.push(dep.name.clone());
            }
        }
    }
    if waiting.is_empty() {
        return Verdict {
            deps: Deps::Ready,
            recheck_at: None,
            waiting_on,
        };
    }
    Verdict {
        deps: Deps::Waiting(waiting.join(", ")),
        recheck_at,
        waiting_on,
    }
}

fn blocked(why: String) -> Verdict {
    Verdict {
        deps: Deps::Blocked(why),
        recheck_at: None,
        waiting_on: Vec::new(),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;

    use super::*;
    use crate::supervisor::ServiceStatus;

    fn dep(
        name: &str,
        required: bool,
        f: impl FnOnce(&mut ServiceStatus),
    ) -> (watch::Sender<ServiceStatus>, DepWatch) {
        let mut s = ServiceStatus::new(name, "r");
        s.want_up = true;
        f(&mut s);
        let (tx, rx) = watch::channel(s);
        (
            tx,
            DepWatch {
                name: name.into(),
                required,
                status: rx,
                health_bound: Some(Duration::from_secs(10)),
            },
        )
    }

    #[test]
    fn verdicts() {
        let t0 = Instant::now();
        let (_a, ready) = dep("db", true, |s| {
            s.state = State::Running;
            s.ready = true;
        });
        assert_eq!(evaluate(&[ready], t0, t0).deps, Deps::Ready);
        let (_b, oneshot) = dep("migrate", true, |s| s.state = State::Exited);
        assert_eq!(evaluate(&[oneshot], t0, t0).deps, Deps::Ready);
        let (_c, failed) = dep("db", true, |s| s.state = State::Failed);
        assert_eq!(
            evaluate(&[failed], t0, t0).deps,
            Deps::Blocked("db is failed".into())
        );
        let (_d, stopped) = dep("db", true, |s| s.want_up = false);
        assert_eq!(
            evaluate(&[stopped], t0, t0).deps,
            Deps::Blocked("db is inactive (not started)".into())
        );
        let (_e, after_stopped) = dep("cache", false, |s| s.want_up = false);
        assert_eq!(evaluate(&[after_stopped], t0, t0).deps, Deps::Ready);
        let (_f, backing_off) = dep("db", true, |s| s.state = State::Backoff);
        assert_eq!(
            evaluate(&[backing_off], t0, t0).deps,
            Deps::Waiting("db (backoff)".into())
        );
    }

    #[test]
    fn an_unhealthy_dependency_blocks_after_its_bound() {
        let t0 = Instant::now();
        let (_a, d) = dep("db", true, |s| {
            s.state = State::Running;
            s.health = Health::Starting;
        });
        let v = evaluate(std::slice::from_ref(&d), t0, t0 + Duration::from_secs(3));
        assert_eq!(
            v.deps,
            Deps::Waiting("db (running, health starting)".into())
        );
        assert_eq!(v.recheck_at, Some(t0 + Duration::from_secs(10)));
        let v = evaluate(&[d], t0, t0 + Duration::from_secs(10));
        assert_eq!(
            v.deps,
            Deps::Blocked("db did not become healthy within 10s (health starting)".into())
        );
    }
}
