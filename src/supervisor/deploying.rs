//! The deploy procedure (DESIGN §4), driven inside the supervisor task that owns both slots.
//!
//! Port swap (`[deploy]`): start the release on the idle slot → wait until it is ready (within
//! `timeout`) → switch the proxy (or run `switch_command`) → watch it for `watch` (a crash or
//! unhealthy → switch back, stop it: rolled back) → give the old slot's connections up to
//! `drain` → stop the old release → succeeded. Restart strategy (no `[deploy]`): stop the old
//! release, start the new one, wait until ready; on failure start the old one again.
//!
//! `advance_deploy` is called after every change of either slot and decides the next step.

use crate::deadline::Later;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::state::{Input, Machine, State};
use super::task::Supervisor;
use super::{DeployMsg, DeployRequest, Health};
use crate::api::proto::{ApiError, ErrorCode};
use crate::config::{RestartConfig, RestartPolicy};
use crate::event::EventKind;

/// Default for services without `[deploy]` (restart strategy).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Without a health check, a new release counts as ready once it has run this long.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strategy {
    PortSwap,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for the idle slot to finish stopping (e.g. right after a rollback).
    ClearingSlot,
    /// Restart strategy: waiting for the old release to stop.
    StoppingOld,
    /// The new release is starting; it must be ready by the deadline.
    Starting { deadline: Instant },
    /// Switched; the new release must stay up and healthy until the deadline.
    Watching { deadline: Instant },
    /// The old release's open connections get until the deadline.
    Draining { deadline: Instant },
    /// The old release was told to stop.
    StoppingPrevious,
}

/// The final result of a deploy (*contract*: `succeeded | failed | rolled_back`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Succeeded,
    Failed,
    RolledBack,
}

impl Outcome {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
        }
    }
}

/// A deploy in progress.
pub(super) struct DeployRun {
    pub(super) id: String,
    pub(super) release: String,
    pub(super) previous: String,
    pub(super) candidate: usize,
    pub(super) old: usize,
    pub(super) phase: Phase,
    pub(super) strategy: Strategy,
    pub(super) started: Instant,
    pub(super) timeout: Duration,
    pub(super) who: String,
    pub(super) rollback: bool,
    pub(super) announced_start: bool,
    /// Without a health check: when the new release will have run for [`SETTLE`].
    pub(super) settled_at: Option<Instant>,
    pub(super) progress: mpsc::UnboundedSender<DeployMsg>,
}

impl DeployRun {
    pub(super) fn deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Starting { deadline }
            | Phase::Watching { deadline }
            | Phase::Draining { deadline } => Some(deadline),
            Phase::ClearingSlot | Phase::StoppingOld | Phase::StoppingPrevious => None,
        };
        match (
            phase,
            self.settled_at
                .filter(|_| matches!(self.phase, Phase::Starting { .. })),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// "v42 (watching)" for status.
    pub(super) fn describe(&self) -> String {
        let phase = match self.phase {
            Phase::ClearingSlot => "waiting for the idle slot",
            Phase::StoppingOld => "stopping the old release",
            Phase::Starting { .. } => "starting",
            Phase::Watching { .. } => "watching",
            Phase::Draining { .. } => "draining the old release",
            Phase::StoppingPrevious => "stopping the old release",
        };
        format!("{} ({phase}, {})", self.release, self.id)
    }

    pub(super) fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn step(&self, mut v: Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert("deploy_id".into(), json!(self.id));
            o.insert("elapsed_ms".into(), json!(self.elapsed_ms()));
        }
        let _ = self.progress.send(DeployMsg::Step(v));
    }
}

fn down(state: State) -> bool {
    matches!(
        state,
        State::Inactive | State::Failed | State::Exited | State::BadSetting
    )
}

impl Supervisor {
    /// Accept a deploy (or refuse it: one per service at a time).
    pub(super) async fn start_deploy(
        &mut self,
        req: DeployRequest,
        progress: mpsc::UnboundedSender<DeployMsg>,
    ) -> Result<String, ApiError> {
        if let Some(d) = &self.deploy {
            return Err(ApiError::new(
                ErrorCode::Busy,
                format!(
                    "a deploy of {} is already running: {} started by {} {}s ago; wait for it or run `orchctl rollback {}`",
                    self.unit.name,
                    d.describe(),
                    d.who,
                    d.started.elapsed().as_secs(),
                    self.unit.name
                ),
            ));
        }
        // The API checks this too; here because the release becomes part of a path and a
        // command line, whoever asks.
        if let Err(e) = crate::config::check_release(&req.release) {
            return Err(ApiError::new(ErrorCode::BadRequest, e.to_string()));
        }
        if self.unit.is_monitor_only() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "{} is monitor-only: there is nothing to deploy",
                    self.unit.name
                ),
            ));
        }
        let strategy = if self.unit.deploy.is_some() {
            Strategy::PortSwap
        } else {
            Strategy::Restart
        };
        let timeout = req
            .timeout
            .or(self.unit.deploy.as_ref().map(|d| d.timeout))
            .unwrap_or(DEFAULT_TIMEOUT);
        let old = self.active;
        let candidate = 1 - old;
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let id = format!("{}-{millis}", self.unit.name);
        let previous = self.slots[old].release.clone();
        let now = Instant::now();
        // The idle slot may still be stopping (a rollback a moment ago): wait for it.
        let phase = Phase::ClearingSlot;
        let run = DeployRun {
            id: id.clone(),
            release: req.release.clone(),
            previous: previous.clone(),
            candidate,
            old,
            phase,
            strategy,
            started: now,
            timeout,
            who: req.who.clone(),
            rollback: req.rollback,
            announced_start: false,
            settled_at: None,
            progress,
        };
        tracing::info!(service = %self.unit.name, deploy = %id, release = %req.release, previous = %previous, who = %req.who, "deploy started");
        run.step(json!({ "step": "deploying", "release": req.release, "previous": previous, "strategy": match strategy { Strategy::PortSwap => "port-swap", Strategy::Restart => "restart" } }));
        self.publish(EventKind::DeployStarted {
            deploy_id: id.clone(),
            release: req.release,
            previous,
            who: req.who,
        });
        self.deploy = Some(run);
        if let Some(p) = &self.proxy {
            p.stats().set_guarded(true);
        }
        self.settle().await;
        Ok(id)
    }

    /// The idle slot is down: give it the new release and a machine without restarts (a crash
    /// while it is judged fails the deploy), then begin.
    async fn begin(&mut self) {
        let Some(d) = &self.deploy else { return };
        let (cand, old, strategy, release, timeout) =
            (d.candidate, d.old, d.strategy, d.release.clone(), d.timeout);
        let judged = RestartConfig {
            policy: RestartPolicy::No,
            ..self.unit.restart.clone()
        };
        let slot = &mut self.slots[cand];
        slot.release = release;
        slot.machine = Machine::new(judged, self.unit.stop.clone());
        match strategy {
            Strategy::PortSwap => {
                self.set_phase(Phase::Starting {
                    deadline: Instant::now().later(timeout),
                });
                Box::pin(self.feed(cand, Input::Start)).await;
            }
            Strategy::Restart => {
                self.set_phase(Phase::StoppingOld);
                Box::pin(self.feed(old, Input::Stop)).await;
            }
        }
    }

    /// Take every step the current state allows.
    pub(super) async fn advance_deploy(&mut self) {
        // Steps feed the slots, and feeding advances the deploy: the outer call does the
        // looking again; a nested one returns at once.
        if self.advancing {
            return;
        }
        self.advancing = true;
        let mut guard = 0;
        while self.deploy.is_some() && guard < 16 {
            guard += 1;
            if !Box::pin(self.deploy_tick()).await {
                break;
            }
        }
        self.advancing = false;
    }

    /// One step; true when something changed and the state should be looked at again.
    async fn deploy_tick(&mut self) -> bool {
        let Some(d) = &self.deploy else { return false };
        let (cand, old, phase) = (d.candidate, d.old, d.phase);
        match phase {
            Phase::ClearingSlot => {
                if !down(self.slots[cand].machine.state()) {
                    return false;
                }
                self.begin().await;
                true
            }
            Phase::StoppingOld => {
                if !down(self.slots[old].machine.state()) {
                    return false;
                }
                let deadline = Instant::now().later(d.timeout);
                self.set_phase(Phase::Starting { deadline });
                self.feed_candidate_start(cand).await;
                true
            }
            Phase::Starting { .. } => self.tick_starting(cand, old).await,
            Phase::Watching { .. } => {
                let c = &self.slots[cand];
                if c.machine.state() == State::Running && c.health() != Health::Unhealthy {
                    return false;
                }
                let why = self.candidate_trouble(cand, "during the watch");
                self.roll_back(why).await;
                true
            }
            Phase::Draining { .. } => {
                let open = self.proxy.as_ref().map_or(0, |p| p.stats().open(old));
                if open > 0 && !down(self.slots[old].machine.state()) {
                    return false;
                }
                self.stop_previous(old).await;
                true
            }
            Phase::StoppingPrevious => {
                if !down(self.slots[old].machine.state()) {
                    return false;
                }
                if let Some(d) = &self.deploy {
                    d.step(json!({ "step": "old_stopped", "release": d.previous }));
                }
                self.finish(Outcome::Succeeded, None);
                true
            }
        }
    }

    async fn feed_candidate_start(&mut self, cand: usize) {
        Box::pin(self.feed(cand, Input::Start)).await;
    }

    async fn tick_starting(&mut self, cand: usize, old: usize) -> bool {
        let Some(d) = &self.deploy else { return false };
        let c = &self.slots[cand];
        if !d.announced_start {
            if let Some(inst) = &c.instance {
                d.step(json!({ "step": "started", "release": d.release, "pid": inst.pid, "port": c.port(&self.unit), "slot": cand }));
                let settle = self.unit.health.is_none().then(|| Instant::now() + SETTLE);
                if let Some(d) = self.deploy.as_mut() {
                    d.announced_start = true;
                    d.settled_at = settle;
                }
                return true;
            }
        }
        // Without a health check, "ready" also means: did not die within the settle time.
        let settled = d.settled_at.is_none_or(|t| Instant::now() >= t);
        if c.ready() && settled {
            d.step(json!({ "step": "healthy", "release": d.release, "after_ms": d.elapsed_ms() }));
            if d.strategy == Strategy::Restart {
                self.active = cand;
                self.finish(Outcome::Succeeded, None);
                return true;
            }
            if let Err(e) = self.switch_to(cand).await {
                self.finish(
                    Outcome::Failed,
                    Some(format!(
                        "switching to the new release failed: {e}; nothing was switched"
                    )),
                );
                self.stop_slot(cand).await;
                return true;
            }
            self.after_switch(cand);
            return true;
        }
        if matches!(
            c.machine.state(),
            State::Failed | State::Exited | State::Backoff | State::Inactive
        ) && d.announced_start
            || matches!(c.machine.state(), State::Failed)
        {
            let why = self.candidate_trouble(cand, "before it became ready");
            self.fail_start(cand, old, why).await;
            return true;
        }
        false
    }

    fn after_switch(&mut self, cand: usize) {
        let Some(d) = self.deploy.as_ref() else {
            return;
        };
        let port = self.slots[cand].port(&self.unit);
        let watch = self
            .unit
            .deploy
            .as_ref()
            .map_or(Duration::ZERO, |d| d.watch);
        let (id, release) = (d.id.clone(), d.release.clone());
        d.step(json!({ "step": "switched", "release": release, "port": port }));
        d.step(
            json!({ "step": "watching", "release": release, "for_ms": watch.as_millis() as u64 }),
        );
        self.active = cand;
        tracing::info!(service = %self.unit.name, deploy = %id, release = %release, "switched");
        self.publish(EventKind::Switched {
            deploy_id: id,
            release,
            port,
        });
        self.set_phase(Phase::Watching {
            deadline: Instant::now().later(watch),
        });
    }

    /// What went wrong with the candidate, in words.
    fn candidate_trouble(&self, cand: usize, when: &str) -> String {
        let c = &self.slots[cand];
        let release = &c.release;
        if c.health() == Health::Unhealthy {
            let probe = c
                .health
                .as_ref()
                .and_then(|t| t.last_failure())
                .map(|p| p.to_string())
                .unwrap_or_default();
            return format!("release {release} turned unhealthy {when}: {probe}");
        }
        let reason = c
            .machine
            .reason()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        format!(
            "release {release} {} {when}{reason}",
            match c.machine.state() {
                State::Failed | State::Exited | State::Inactive | State::Backoff => "stopped",
                _ => "was not ready",
            }
        )
    }

    /// The candidate never became ready: stop it; the restart strategy brings the old back.
    pub(super) async fn fail_start(&mut self, cand: usize, old: usize, why: String) {
        let Some(d) = self.deploy.as_ref() else {
            return;
        };
        let restart = d.strategy == Strategy::Restart;
        // A rollback whose release never served has failed, whatever runs afterwards: "rolled
        // back" is what a successful `orchctl rollback` reports.
        let (outcome, why) = if d.rollback {
            let again = format!("; the rollback did not happen ({} runs again)", d.previous);
            (
                Outcome::Failed,
                format!("{why}{}", if restart { again.as_str() } else { "" }),
            )
        } else if restart {
            (Outcome::RolledBack, why)
        } else {
            (Outcome::Failed, why)
        };
        // Finish first: the stops and starts below re-enter advance_deploy, which must find no
        // deploy left to act on.
        if restart {
            self.active = old;
            self.finish(outcome, Some(why));
            self.stop_slot(cand).await;
            Box::pin(self.feed(old, Input::Start)).await;
        } else {
            self.finish(outcome, Some(why));
            self.stop_slot(cand).await;
        }
    }

    /// Deadlines of the deploy's phases.
    pub(super) async fn deploy_deadline(&mut self) {
        let Some(d) = &self.deploy else { return };
        let (cand, old) = (d.candidate, d.old);
        match d.phase {
            // The settle time passing is no failure: the advance below looks at the release.
            Phase::Starting { deadline } if Instant::now() < deadline => {}
            Phase::Starting { .. } => {
                let secs = humantime::format_duration(d.timeout);
                let health = self.slots[cand].health();
                let last = self.slots[cand]
                    .health
                    .as_ref()
                    .and_then(|t| t.last_failure())
                    .map(|p| format!("; last probe: {p}"))
                    .unwrap_or_default();
                let why = format!(
                    "release {} was not ready within {secs} (health {}){last}",
                    d.release,
                    health.as_str()
                );
                self.fail_start(cand, old, why).await;
            }
            Phase::Watching { .. } => {
                let drain = self
                    .unit
                    .deploy
                    .as_ref()
                    .map_or(Duration::ZERO, |d| d.drain);
                self.set_phase(Phase::Draining {
                    deadline: Instant::now().later(drain),
                });
            }
            Phase::Draining { .. } => {
                if let Some(p) = &self.proxy {
                    p.stats().cut(old);
                }
                self.stop_previous(old).await;
            }
            Phase::ClearingSlot | Phase::StoppingOld | Phase::StoppingPrevious => {}
        }
        self.settle().await;
    }

    async fn stop_previous(&mut self, old: usize) {
        self.set_phase(Phase::StoppingPrevious);
        if !down(self.slots[old].machine.state()) {
            Box::pin(self.feed(old, Input::Stop)).await;
        }
    }

    pub(super) async fn stop_slot(&mut self, slot: usize) {
        if !down(self.slots[slot].machine.state()) {
            Box::pin(self.feed(slot, Input::Stop)).await;
        }
    }

    pub(super) fn set_phase(&mut self, phase: Phase) {
        if let Some(d) = self.deploy.as_mut() {
            d.phase = phase;
        }
    }
}
