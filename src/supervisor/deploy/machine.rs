//! The deploy procedure as a pure machine: `step(input, now) -> actions`, no I/O, no clock.
//!
//! Port swap (`[deploy]`): wait for the idle slot to be down → start the release there → wait
//! until it is ready (within `timeout`; without a health check, running for [`SETTLE`]) →
//! switch → watch it for `watch` (it exits or turns unhealthy → switch back, stop it: rolled
//! back) → give the old slot's connections up to `drain` → stop the old release → record →
//! succeeded. Restart strategy (no `[deploy]`): stop the old release, start the new one, wait
//! until ready; on failure start the old one again. Every end is recorded (history, and the
//! new active release) *before* it is reported: the client never hears "succeeded" for a
//! release a restart of orchd would forget.
//!
//! The driver shows the machine both slots ([`Input::Slots`]) after every change, feeds it
//! deadlines and the completions of its switch and record actions, and performs the actions.

use std::time::Duration;

use tokio::time::Instant;

use super::{DeployProgress, DeployReport, Outcome, Step, Strategy};
use crate::deadline::Later;
use crate::event::EventKind;
use crate::supervisor::Health;
use crate::supervisor::state::State;

/// Without a health check, a new release counts as ready once it has run this long.
pub const SETTLE: Duration = Duration::from_secs(1);

/// What is fixed when a deploy is accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub id: String,
    pub release: String,
    pub previous: String,
    /// The slot the new release runs in, and the one that serves now.
    pub cand: usize,
    pub old: usize,
    pub strategy: Strategy,
    pub timeout: Duration,
    pub watch: Duration,
    pub drain: Duration,
    /// The unit has `[health]` (else: ready after [`SETTLE`] of running).
    pub has_health: bool,
    /// Asked for as a rollback (`orchctl rollback`, a late one).
    pub rollback: bool,
    pub who: String,
}

/// One slot as the machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotView {
    pub state: State,
    pub health: Health,
    /// Running and healthy (or running without a health check).
    pub ready: bool,
    /// Its process, once spawned.
    pub pid: Option<i32>,
    pub port: Option<u16>,
    /// What went wrong with it, in words, for a failure message: the slot machine's reason
    /// or the last failed probe (empty when nothing did).
    pub trouble: String,
    /// The last failed probe, for "not ready within" messages.
    pub last_failure: Option<String>,
}

impl SlotView {
    /// A slot that is down, for tests and a start.
    pub fn down() -> SlotView {
        SlotView {
            state: State::Inactive,
            health: Health::None,
            ready: false,
            pid: None,
            port: None,
            trouble: String::new(),
            last_failure: None,
        }
    }

    fn is_down(&self) -> bool {
        down(self.state)
    }
}

/// Both slots, and the connections (tcp) or requests (http) still open on the old one.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub cand: SlotView,
    pub old: SlotView,
    pub old_open: usize,
}

/// What the machine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The slots after a change (a spawn, an exit, a probe, a stop, a count of connections).
    Slots(View),
    /// [`Deploy::deadline`] has passed.
    Deadline,
    /// The switch asked for by [`Action::Switch`] is done.
    Switched(Result<(), String>),
    /// The record asked for by [`Action::Record`] is written (or could not be).
    Recorded(Result<(), String>),
    /// `orchctl rollback` while this deploy runs.
    Rollback,
    /// The service is being stopped (an operator's stop, a reload, shutdown).
    Abort(String),
}

/// What the driver does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Give the idle slot the new release and a machine that does not restart it (a crash
    /// while it is judged fails the deploy).
    Prepare,
    /// Start (feed `Start` to) a slot.
    Start(usize),
    /// Stop a slot (unless it is down).
    Stop(usize),
    /// Point the public side (proxy or switch command) at a slot; completion: [`Input::Switched`].
    Switch(usize),
    /// The slot that serves, for status and for a stop that follows.
    SetActive(usize),
    /// The new release passed: its slot gets the unit's restart policy.
    Adopt,
    /// End the old slot's open connections (the drain ran out).
    CutOld,
    /// Tell the client.
    Progress(DeployProgress),
    /// A fact for the event bus.
    Emit(EventKind),
    /// Write the history entry (and with `activate`, the new active release); completion:
    /// [`Input::Recorded`].
    Record {
        report: DeployReport,
        activate: bool,
    },
    /// The end: event, final message to the client, the deploy is over.
    Finish(DeployReport),
}

/// What an operator's rollback amounts to while this deploy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackAnswer {
    /// This deploy ends as rolled back; its report answers the rollback.
    Now,
    /// The new release has passed its watch and is replacing the old one: once this deploy
    /// has ended, the rollback is a deploy of the previous release.
    AfterThis,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Waiting for the idle slot to finish stopping (e.g. right after a rollback).
    ClearingSlot,
    /// Restart strategy: waiting for the old release to stop.
    StoppingOld,
    /// The new release is starting; it must be ready by the deadline.
    Starting { deadline: Instant },
    /// The switch to the new release is under way.
    Switching,
    /// Switched; the new release must stay up and healthy until the deadline.
    Watching { deadline: Instant },
    /// Switching back to the old release, then: rolled back (or failed) for `why`.
    SwitchingBack { why: String },
    /// The old release's open connections get until the deadline.
    Draining { deadline: Instant },
    /// The old release was told to stop.
    StoppingPrevious,
    /// The end is decided and being recorded.
    Recording { report: DeployReport },
    /// Reported.
    Done,
}

/// A deploy in progress.
#[derive(Debug, Clone)]
pub struct Deploy {
    pub plan: Plan,
    started: Instant,
    phase: Phase,
    /// The `started` step was told.
    announced: bool,
    /// Without a health check: when the new release will have run for [`SETTLE`].
    settled_at: Option<Instant>,
    /// The latest view of the slots.
    view: View,
    /// An operator asked to roll back while the forward switch ran.
    rollback_after_switch: bool,
    /// The idle slot was told to stop before the deploy could begin.
    stop_asked: bool,
}

fn down(state: State) -> bool {
    matches!(
        state,
        State::Inactive | State::Failed | State::Exited | State::BadSetting
    )
}

impl Deploy {
    /// Accept `plan` at `now`; the actions announce it and begin as far as `view` allows.
    pub fn start(plan: Plan, view: View, now: Instant) -> (Deploy, Vec<Action>) {
        let mut d = Deploy {
            plan,
            started: now,
            phase: Phase::ClearingSlot,
            announced: false,
            settled_at: None,
            view,
            rollback_after_switch: false,
            stop_asked: false,
        };
        let mut out = vec![
            d.progress(
                now,
                Step::Deploying {
                    release: d.plan.release.clone(),
                    previous: d.plan.previous.clone(),
                    strategy: d.plan.strategy,
                },
            ),
            Action::Emit(EventKind::DeployStarted {
                deploy_id: d.plan.id.clone(),
                release: d.plan.release.clone(),
                previous: d.plan.previous.clone(),
                who: d.plan.who.clone(),
            }),
        ];
        out.extend(d.advance(now));
        (d, out)
    }

    /// The next time [`Input::Deadline`] is due.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting { deadline } => Some(match self.settled_at {
                Some(s) => s.min(deadline),
                None => deadline,
            }),
            Phase::Watching { deadline } | Phase::Draining { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Over: reported.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// "v42 (watching, api-17…)" for status.
    pub fn describe(&self) -> String {
        let phase = match self.phase {
            Phase::ClearingSlot => "waiting for the idle slot",
            Phase::StoppingOld => "stopping the old release",
            Phase::Starting { .. } => "starting",
            Phase::Switching => "switching",
            Phase::Watching { .. } => "watching",
            Phase::SwitchingBack { .. } => "switching back",
            Phase::Draining { .. } => "draining the old release",
            Phase::StoppingPrevious => "stopping the old release",
            Phase::Recording { .. } => "recording",
            Phase::Done => "done",
        };
        format!("{} ({phase}, {})", self.plan.release, self.plan.id)
    }

    pub fn elapsed_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Take `input` at `now`.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = match input {
            Input::Slots(view) => {
                self.view = view;
                Vec::new()
            }
            Input::Deadline => self.on_deadline(now),
            Input::Switched(result) => self.on_switched(result, now),
            Input::Recorded(result) => return self.on_recorded(result),
            Input::Rollback => return self.rollback(now).1,
            Input::Abort(why) => self.abort(why, now),
        };
        out.extend(self.advance(now));
        out
    }

    /// `orchctl rollback`: what it amounts to, and the actions.
    pub fn rollback(&mut self, now: Instant) -> (RollbackAnswer, Vec<Action>) {
        let (cand, old) = (self.plan.cand, self.plan.old);
        let old_runs = self.view.old.state == State::Running;
        let mut out = match &self.phase {
            Phase::Watching { .. } | Phase::Draining { .. } if old_runs => {
                self.roll_back("rolled back by an operator".into(), now)
            }
            Phase::Switching => {
                self.rollback_after_switch = true;
                Vec::new()
            }
            Phase::SwitchingBack { .. } => Vec::new(),
            Phase::ClearingSlot | Phase::StoppingOld | Phase::Starting { .. } => {
                let mut out = vec![Action::SetActive(old), Action::Stop(cand)];
                if !matches!(self.view.old.state, State::Running | State::Starting) {
                    out.push(Action::Start(old));
                }
                out.extend(self.record(
                    Outcome::RolledBack,
                    Some("cancelled by an operator's rollback".into()),
                    now,
                ));
                out
            }
            _ => return (RollbackAnswer::AfterThis, Vec::new()),
        };
        out.extend(self.advance(now));
        (RollbackAnswer::Now, out)
    }

    fn progress(&self, now: Instant, step: Step) -> Action {
        Action::Progress(DeployProgress {
            deploy_id: self.plan.id.clone(),
            elapsed_ms: self.elapsed_ms(now),
            step,
        })
    }

    /// Take every step the current view allows.
    fn advance(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        // Each pass either changes the phase (which only moves forward, bar the one
        // Starting → Switching → Watching path) or ends the loop: it terminates.
        loop {
            let more = match self.phase.clone() {
                Phase::ClearingSlot => self.begin(now),
                Phase::StoppingOld => self.after_old_stopped(now),
                Phase::Starting { .. } => self.while_starting(now),
                Phase::Watching { .. } => self.while_watching(now),
                Phase::Draining { .. } => self.while_draining(),
                Phase::StoppingPrevious => self.after_previous_stopped(now),
                Phase::Switching
                | Phase::SwitchingBack { .. }
                | Phase::Recording { .. }
                | Phase::Done => None,
            };
            match more {
                Some(actions) => out.extend(actions),
                None => return out,
            }
        }
    }

    /// The idle slot is down: give it the new release and go.
    fn begin(&mut self, now: Instant) -> Option<Vec<Action>> {
        if !self.view.cand.is_down() {
            // Still running there (a failed switch back left it so): stop it, once.
            if self.view.cand.state != State::Stopping && !self.stop_asked {
                self.stop_asked = true;
                return Some(vec![Action::Stop(self.plan.cand)]);
            }
            return None;
        }
        Some(match self.plan.strategy {
            Strategy::PortSwap => {
                self.enter_starting(now);
                vec![Action::Prepare, Action::Start(self.plan.cand)]
            }
            Strategy::Restart => {
                self.phase = Phase::StoppingOld;
                vec![Action::Prepare, Action::Stop(self.plan.old)]
            }
        })
    }

    fn enter_starting(&mut self, now: Instant) {
        self.phase = Phase::Starting {
            deadline: now.later(self.plan.timeout),
        };
    }

    fn after_old_stopped(&mut self, now: Instant) -> Option<Vec<Action>> {
        if !self.view.old.is_down() {
            return None;
        }
        self.enter_starting(now);
        Some(vec![Action::Start(self.plan.cand)])
    }

    fn while_starting(&mut self, now: Instant) -> Option<Vec<Action>> {
        let c = &self.view.cand;
        if !self.announced {
            if let Some(pid) = c.pid {
                self.announced = true;
                if !self.plan.has_health {
                    self.settled_at = Some(now.later(SETTLE));
                }
                let step = Step::Started {
                    release: self.plan.release.clone(),
                    pid,
                    port: c.port,
                    slot: self.plan.cand,
                };
                return Some(vec![self.progress(now, step)]);
            }
        }
        let settled = self.settled_at.is_none_or(|t| now >= t);
        if c.ready && settled && self.announced {
            let healthy = self.progress(
                now,
                Step::Healthy {
                    release: self.plan.release.clone(),
                    after_ms: self.elapsed_ms(now),
                },
            );
            if self.plan.strategy == Strategy::Restart {
                let mut out = vec![healthy, Action::SetActive(self.plan.cand)];
                out.extend(self.record(Outcome::Succeeded, None, now));
                return Some(out);
            }
            self.phase = Phase::Switching;
            return Some(vec![healthy, Action::Switch(self.plan.cand)]);
        }
        let gone = matches!(
            c.state,
            State::Failed | State::Exited | State::Backoff | State::Inactive
        );
        if (gone && self.announced) || c.state == State::Failed {
            let why = self.trouble("before it became ready");
            return Some(self.fail_start(why, now));
        }
        None
    }

    fn while_watching(&mut self, now: Instant) -> Option<Vec<Action>> {
        let c = &self.view.cand;
        if c.state == State::Running && c.health != Health::Unhealthy {
            return None;
        }
        let why = self.trouble("during the watch");
        Some(self.roll_back(why, now))
    }

    fn while_draining(&mut self) -> Option<Vec<Action>> {
        if self.view.old_open > 0 && !self.view.old.is_down() {
            return None;
        }
        Some(self.stop_previous())
    }

    fn stop_previous(&mut self) -> Vec<Action> {
        self.phase = Phase::StoppingPrevious;
        if self.view.old.is_down() {
            Vec::new()
        } else {
            vec![Action::Stop(self.plan.old)]
        }
    }

    fn after_previous_stopped(&mut self, now: Instant) -> Option<Vec<Action>> {
        if !self.view.old.is_down() {
            return None;
        }
        let mut out = vec![self.progress(
            now,
            Step::OldStopped {
                release: self.plan.previous.clone(),
            },
        )];
        out.extend(self.record(Outcome::Succeeded, None, now));
        Some(out)
    }

    fn on_deadline(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            // The settle time passing is no failure: the advance looks at the release.
            Phase::Starting { deadline } if now < deadline => Vec::new(),
            Phase::Starting { .. } => {
                let c = &self.view.cand;
                let last = c
                    .last_failure
                    .as_ref()
                    .map(|p| format!("; last probe: {p}"))
                    .unwrap_or_default();
                let why = format!(
                    "release {} was not ready within {} (health {}){last}",
                    self.plan.release,
                    humantime::format_duration(self.plan.timeout),
                    c.health.as_str()
                );
                self.fail_start(why, now)
            }
            Phase::Watching { deadline } if now >= deadline => {
                self.phase = Phase::Draining {
                    deadline: now.later(self.plan.drain),
                };
                Vec::new()
            }
            Phase::Draining { deadline } if now >= deadline => {
                let mut out = vec![Action::CutOld];
                out.extend(self.stop_previous());
                out
            }
            _ => Vec::new(),
        }
    }

    fn on_switched(&mut self, result: Result<(), String>, now: Instant) -> Vec<Action> {
        match (self.phase.clone(), result) {
            (Phase::Switching, Ok(())) => self.after_switch(now),
            (Phase::Switching, Err(e)) => {
                let why = format!("switching to the new release failed: {e}; nothing was switched");
                let mut out = vec![Action::Stop(self.plan.cand)];
                out.extend(self.record(Outcome::Failed, Some(why), now));
                out
            }
            (Phase::SwitchingBack { why }, Ok(())) => {
                let mut out = vec![
                    Action::SetActive(self.plan.old),
                    Action::Stop(self.plan.cand),
                ];
                out.extend(self.record(Outcome::RolledBack, Some(why), now));
                out
            }
            (Phase::SwitchingBack { why }, Err(e)) => {
                // The front may still point at the new release: keep it active, and say so.
                let why =
                    format!("{why}; switching back failed: {e}; the new release still serves");
                let mut out = self.record(Outcome::Failed, Some(why), now);
                let release = self.plan.release.clone();
                for a in &mut out {
                    if let Action::Record { report, .. } = a {
                        report.active = release.clone();
                    }
                }
                if let Phase::Recording { report } = &mut self.phase {
                    report.active = release;
                }
                out
            }
            // A switch no phase waits for (the deploy was aborted meanwhile): nothing to do.
            _ => Vec::new(),
        }
    }

    fn after_switch(&mut self, now: Instant) -> Vec<Action> {
        let (release, port) = (self.plan.release.clone(), self.view.cand.port);
        let mut out = vec![
            Action::SetActive(self.plan.cand),
            self.progress(
                now,
                Step::Switched {
                    release: release.clone(),
                    port,
                },
            ),
            self.progress(
                now,
                Step::Watching {
                    release: release.clone(),
                    for_ms: self.plan.watch.as_millis() as u64,
                },
            ),
            Action::Emit(EventKind::Switched {
                deploy_id: self.plan.id.clone(),
                release,
                port,
            }),
        ];
        self.phase = Phase::Watching {
            deadline: now.later(self.plan.watch),
        };
        if std::mem::take(&mut self.rollback_after_switch) {
            out.extend(self.roll_back("rolled back by an operator".into(), now));
        }
        out
    }

    /// Switch back to the old release if it still runs; else the deploy failed.
    fn roll_back(&mut self, why: String, now: Instant) -> Vec<Action> {
        if self.view.old.state == State::Running {
            self.phase = Phase::SwitchingBack { why };
            return vec![Action::Switch(self.plan.old)];
        }
        let why = format!("{why}; the previous release is not running, nothing to roll back to");
        let mut out = vec![Action::Stop(self.plan.cand)];
        out.extend(self.record(Outcome::Failed, Some(why), now));
        out
    }

    /// The new release never became ready: stop it; the restart strategy brings the old back.
    fn fail_start(&mut self, why: String, now: Instant) -> Vec<Action> {
        let restart = self.plan.strategy == Strategy::Restart;
        // A rollback whose release never served has failed, whatever runs afterwards: "rolled
        // back" is what a successful `orchctl rollback` reports.
        let (outcome, why) = if self.plan.rollback {
            let again = if restart {
                format!(
                    "; the rollback did not happen ({} runs again)",
                    self.plan.previous
                )
            } else {
                String::new()
            };
            (Outcome::Failed, format!("{why}{again}"))
        } else if restart {
            (Outcome::RolledBack, why)
        } else {
            (Outcome::Failed, why)
        };
        let mut out = vec![Action::Stop(self.plan.cand)];
        if restart {
            out.insert(0, Action::SetActive(self.plan.old));
            out.push(Action::Start(self.plan.old));
        }
        out.extend(self.record(outcome, Some(why), now));
        out
    }

    /// Stop or shutdown during the deploy: end it consistently.
    fn abort(&mut self, why: String, now: Instant) -> Vec<Action> {
        let (cand, old) = (self.plan.cand, self.plan.old);
        match self.phase {
            Phase::Watching { .. } => self.roll_back(why, now),
            // The new release passed its watch: it stays, whatever stops now.
            Phase::Draining { .. } | Phase::StoppingPrevious => {
                let mut out = Vec::new();
                if !self.view.old.is_down() {
                    out.push(Action::Stop(old));
                }
                out.extend(self.record(Outcome::Succeeded, None, now));
                out
            }
            // The forward switch may still land: point the front back at the old release
            // after it (switches are done in order).
            Phase::Switching => {
                let mut out = vec![
                    Action::Switch(old),
                    Action::SetActive(old),
                    Action::Stop(cand),
                ];
                out.extend(self.record(Outcome::Failed, Some(why), now));
                out
            }
            Phase::SwitchingBack { .. } | Phase::Recording { .. } | Phase::Done => Vec::new(),
            Phase::ClearingSlot | Phase::StoppingOld | Phase::Starting { .. } => {
                let mut out = vec![Action::SetActive(old), Action::Stop(cand)];
                out.extend(self.record(Outcome::Failed, Some(why), now));
                out
            }
        }
    }

    /// What went wrong with the candidate, in words.
    fn trouble(&self, when: &str) -> String {
        let c = &self.view.cand;
        let release = &self.plan.release;
        if c.health == Health::Unhealthy {
            let probe = c.last_failure.clone().unwrap_or_default();
            return format!("release {release} turned unhealthy {when}: {probe}");
        }
        let reason = if c.trouble.is_empty() {
            String::new()
        } else {
            format!(": {}", c.trouble)
        };
        let what = if c.is_down() || c.state == State::Backoff {
            "stopped"
        } else {
            "was not ready"
        };
        format!("release {release} {what} {when}{reason}")
    }

    /// Decide the end: the new release's slot adopts the unit's restart policy on success;
    /// the report is written before it is told.
    fn record(&mut self, outcome: Outcome, reason: Option<String>, now: Instant) -> Vec<Action> {
        let active = match outcome {
            Outcome::Succeeded => self.plan.release.clone(),
            _ => self.plan.previous.clone(),
        };
        let report = DeployReport {
            deploy_id: self.plan.id.clone(),
            result: outcome,
            release: self.plan.release.clone(),
            previous: self.plan.previous.clone(),
            active,
            duration_ms: self.elapsed_ms(now),
            reason,
            rollback: self.plan.rollback,
        };
        self.phase = Phase::Recording {
            report: report.clone(),
        };
        let mut out = Vec::new();
        if outcome == Outcome::Succeeded {
            out.push(Action::Adopt);
        }
        out.push(Action::Record {
            report,
            activate: outcome == Outcome::Succeeded,
        });
        out
    }

    fn on_recorded(&mut self, result: Result<(), String>) -> Vec<Action> {
        let Phase::Recording { mut report } = self.phase.clone() else {
            return Vec::new();
        };
        if let Err(e) = result {
            let note = if report.result == Outcome::Succeeded {
                format!(
                    "the new active release could not be recorded ({e}): a restart of orchd \
                     would start {} again; fix state_dir and deploy again",
                    report.previous
                )
            } else {
                format!("the deploy history could not be written ({e})")
            };
            report.reason = Some(match report.reason.take() {
                Some(r) => format!("{r}; {note}"),
                None => note,
            });
        }
        self.phase = Phase::Done;
        vec![Action::Finish(report)]
    }
}
