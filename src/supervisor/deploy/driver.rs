//! The supervisor's side of a deploy: it accepts one, shows the [`Deploy`] machine both slots
//! after every change, performs its actions and feeds back their completions. Nothing here
//! waits: a switch command runs in a task of its own and the record is written by the
//! manager, each coming back as a [`DeployDone`] on the supervisor's loop.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::machine::{Action, Deploy, Input, Plan, RollbackAnswer, SlotView, View};
use super::{DeployRefused, DeployReport, Outcome, Strategy};
use crate::config::{RestartConfig, RestartPolicy, SwitchMode};
use crate::event::EventKind;
use crate::supervisor::state::{Input as SlotInput, Machine, State};
use crate::supervisor::task::Supervisor;
use crate::supervisor::{Command, DeployMsg, DeployRequest, RecordRequest};

/// Default for services without `[deploy]` (restart strategy).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A deploy in progress: the machine, and who hears of it.
pub(in crate::supervisor) struct DeployRun {
    pub(in crate::supervisor) machine: Deploy,
    progress: mpsc::UnboundedSender<DeployMsg>,
    /// Answered with the final report: an instant rollback's reply.
    final_tap: Option<oneshot::Sender<Option<DeployReport>>>,
    /// Answered `None` once this deploy has ended: rollbacks that become a late rollback.
    after: Vec<oneshot::Sender<Option<DeployReport>>>,
}

impl DeployRun {
    pub(in crate::supervisor) fn deadline(&self) -> Option<Instant> {
        self.machine.deadline()
    }

    pub(in crate::supervisor) fn describe(&self) -> String {
        self.machine.describe()
    }

    /// The slot whose new release is being judged (its failures are the deploy's).
    pub(in crate::supervisor) fn candidate(&self) -> usize {
        self.machine.plan.cand
    }
}

/// A deploy action's completion, back on the supervisor's loop.
#[derive(Debug)]
pub enum DeployDone {
    Switched(Result<(), String>),
    Recorded(Result<(), String>),
}

fn down(state: State) -> bool {
    matches!(
        state,
        State::Inactive | State::Failed | State::Exited | State::BadSetting
    )
}

impl Supervisor {
    /// Accept a deploy (or refuse it: one per service at a time).
    pub(in crate::supervisor) async fn start_deploy(
        &mut self,
        req: DeployRequest,
        progress: mpsc::UnboundedSender<DeployMsg>,
    ) -> Result<String, DeployRefused> {
        if let Some(d) = &self.deploy {
            return Err(DeployRefused::Busy {
                service: self.unit.name.clone(),
                running: d.describe(),
                who: d.machine.plan.who.clone(),
                secs: d.machine.elapsed_ms(Instant::now()) / 1000,
            });
        }
        // The API checks this too; here because the release becomes part of a path and a
        // command line, whoever asks.
        crate::config::check_release(&req.release)?;
        if self.unit.is_monitor_only() {
            return Err(DeployRefused::MonitorOnly(self.unit.name.clone()));
        }
        let cfg = self.unit.deploy.as_ref();
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let old = self.active;
        let plan = Plan {
            id: format!("{}-{millis}", self.unit.name),
            release: req.release,
            previous: self.slots[old].release.clone(),
            cand: 1 - old,
            old,
            strategy: if cfg.is_some() {
                Strategy::PortSwap
            } else {
                Strategy::Restart
            },
            timeout: req
                .timeout
                .or(cfg.map(|d| d.timeout))
                .unwrap_or(DEFAULT_TIMEOUT),
            watch: cfg.map_or(Duration::ZERO, |d| d.watch),
            drain: cfg.map_or(Duration::ZERO, |d| d.drain),
            has_health: self.unit.health.is_some(),
            rollback: req.rollback,
            who: req.who,
        };
        let id = plan.id.clone();
        tracing::info!(service = %self.unit.name, deploy = %id, release = %plan.release, previous = %plan.previous, who = %plan.who, "deploy started");
        let view = self.deploy_view(plan.cand, plan.old);
        let (machine, actions) = Deploy::start(plan, view, Instant::now());
        self.deploy = Some(DeployRun {
            machine,
            progress,
            final_tap: None,
            after: Vec::new(),
        });
        if let Some(p) = &self.proxy {
            p.stats().set_guarded(true);
        }
        self.deploy_actions(actions).await;
        self.settle().await;
        Ok(id)
    }

    /// What the machine sees of the two slots.
    fn deploy_view(&self, cand: usize, old: usize) -> View {
        let see = |i: usize| {
            let s = &self.slots[i];
            SlotView {
                state: s.machine.state(),
                health: s.health(),
                ready: s.ready(),
                pid: s.instance.as_ref().map(|inst| inst.pid),
                port: s.port(&self.unit),
                trouble: s.machine.reason().unwrap_or_default().to_owned(),
                last_failure: s
                    .health
                    .as_ref()
                    .and_then(|t| t.last_failure())
                    .map(|p| p.to_string()),
            }
        };
        View {
            cand: see(cand),
            old: see(old),
            old_open: self.proxy.as_ref().map_or(0, |p| p.stats().open(old)),
        }
    }

    /// Show the machine the slots until it has nothing more to do.
    pub(in crate::supervisor) async fn advance_deploy(&mut self) {
        // Each round performs actions that change the slots; the machine's phases only move
        // forward, so this ends within a handful of rounds. The bound is a guard against a
        // bug, and says so loudly.
        for _ in 0..64 {
            let Some(d) = &self.deploy else { return };
            let view = self.deploy_view(d.machine.plan.cand, d.machine.plan.old);
            let actions = match self.deploy.as_mut() {
                Some(d) => d.machine.step(Input::Slots(view), Instant::now()),
                None => return,
            };
            if actions.is_empty() {
                return;
            }
            self.deploy_actions(actions).await;
        }
        tracing::error!(service = %self.unit.name, "the deploy machine did not settle after 64 rounds; this is a bug in orchd, please report it");
    }

    /// A deadline of the deploy has passed.
    pub(in crate::supervisor) async fn deploy_deadline(&mut self) {
        self.deploy_input(Input::Deadline).await;
    }

    /// A switch or a record has completed.
    pub(in crate::supervisor) async fn on_deploy_done(&mut self, done: DeployDone) {
        let input = match done {
            DeployDone::Switched(r) => Input::Switched(r),
            DeployDone::Recorded(r) => Input::Recorded(r),
        };
        self.deploy_input(input).await;
    }

    /// A stop or shutdown during the deploy.
    pub(in crate::supervisor) async fn abort_deploy(&mut self, why: &str) {
        self.deploy_input(Input::Abort(why.to_owned())).await;
    }

    async fn deploy_input(&mut self, input: Input) {
        let Some(d) = self.deploy.as_mut() else {
            return;
        };
        let actions = d.machine.step(input, Instant::now());
        self.deploy_actions(actions).await;
        self.settle().await;
    }

    /// `orchctl rollback`: answered with the report of this deploy (rolled back), or `None`
    /// when a late rollback (a deploy of the previous release) is what it takes — at once
    /// without a deploy, or once this one has ended.
    pub(in crate::supervisor) async fn rollback_deploy(
        &mut self,
        reply: oneshot::Sender<Option<DeployReport>>,
    ) {
        let Some(d) = self.deploy.as_mut() else {
            let _ = reply.send(None);
            return;
        };
        let (answer, actions) = d.machine.rollback(Instant::now());
        match answer {
            RollbackAnswer::Now => d.final_tap = Some(reply),
            RollbackAnswer::AfterThis => d.after.push(reply),
        }
        self.deploy_actions(actions).await;
        self.settle().await;
    }

    /// Perform the machine's actions; completions that come at once (a proxy switch) are fed
    /// back in order, with the actions they lead to.
    async fn deploy_actions(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            if let Some(input) = self.deploy_action(action).await {
                if let Some(d) = self.deploy.as_mut() {
                    queue.extend(d.machine.step(input, Instant::now()));
                }
            }
        }
    }

    async fn deploy_action(&mut self, action: Action) -> Option<Input> {
        let Some(d) = &self.deploy else { return None };
        let (cand, old) = (d.machine.plan.cand, d.machine.plan.old);
        match action {
            Action::Prepare => {
                let judged = RestartConfig {
                    policy: RestartPolicy::No,
                    ..self.unit.restart.clone()
                };
                let release = d.machine.plan.release.clone();
                let slot = &mut self.slots[cand];
                slot.release = release;
                slot.machine = Machine::new(judged, self.unit.stop.clone());
            }
            Action::Start(s) => self.run_slot(s, vec![SlotInput::Start]).await,
            Action::Stop(s) => {
                if !down(self.slots[s].machine.state()) {
                    self.run_slot(s, vec![SlotInput::Stop]).await;
                }
            }
            Action::Switch(s) => return self.request_switch(s),
            Action::SetActive(s) => self.active = s,
            Action::Adopt => self.slots[cand]
                .machine
                .reconfigure(self.unit.restart.clone(), self.unit.stop.clone()),
            Action::CutOld => {
                if let Some(p) = &self.proxy {
                    p.stats().cut(old);
                }
            }
            Action::Progress(p) => {
                let _ = d.progress.send(DeployMsg::Step(p));
            }
            Action::Emit(kind) => {
                if let EventKind::Switched { release, .. } = &kind {
                    tracing::info!(service = %self.unit.name, deploy = %d.machine.plan.id, release = %release, "switched");
                }
                self.publish(kind);
            }
            Action::Record { report, activate } => self.record(report, activate),
            Action::Finish(report) => self.finish(report),
        }
        None
    }

    /// Point the public side at `slot`. The proxy switches at once; a switch command runs in
    /// a task and its result comes back as [`DeployDone::Switched`].
    fn request_switch(&mut self, slot: usize) -> Option<Input> {
        let mode = self.unit.deploy.as_ref().map(|d| d.switch);
        match mode {
            Some(SwitchMode::Command) => {
                self.spawn_switch_command(slot, true);
                None
            }
            _ => {
                self.switch_proxy(slot);
                Some(Input::Switched(Ok(())))
            }
        }
    }

    /// Ask the manager to write the history entry (and the new active release); the answer
    /// comes back as [`DeployDone::Recorded`].
    fn record(&mut self, report: DeployReport, activate: bool) {
        let Some(d) = &self.deploy else { return };
        let (reply, answer) = oneshot::channel();
        let request = RecordRequest {
            service: self.unit.name.clone(),
            report,
            who: d.machine.plan.who.clone(),
            activate,
            finished: SystemTime::now(),
            reply,
        };
        let back = self.commands.clone();
        let done = |result| Command::DeployDone(DeployDone::Recorded(result));
        if self.shared.recorder.send(request).is_err() {
            if let Some(back) = back.upgrade() {
                let _ = back.send(done(Err("orchd is stopping".into())));
            }
            return;
        }
        tokio::spawn(async move {
            let result = answer
                .await
                .unwrap_or_else(|_| Err("orchd's manager did not answer".into()));
            if let Some(back) = back.upgrade() {
                let _ = back.send(done(result));
            }
        });
    }

    /// The end: event, final message to the client and to rollbacks waiting on it.
    fn finish(&mut self, report: DeployReport) {
        let Some(mut d) = self.deploy.take() else {
            return;
        };
        if let Some(p) = &self.proxy {
            p.stats().set_guarded(false);
        }
        let (name, plan) = (&self.unit.name, &d.machine.plan);
        match report.result {
            Outcome::Succeeded => {
                tracing::info!(service = %name, deploy = %plan.id, release = %plan.release, duration_ms = report.duration_ms, "deploy succeeded")
            }
            other => {
                tracing::warn!(service = %name, deploy = %plan.id, release = %plan.release, result = other.as_str(), "deploy did not succeed: {}", report.reason.clone().unwrap_or_default())
            }
        }
        let reason = report.reason.clone().unwrap_or_default();
        let event = match report.result {
            Outcome::Succeeded => EventKind::DeploySucceeded {
                deploy_id: plan.id.clone(),
                release: plan.release.clone(),
                previous: plan.previous.clone(),
                duration_ms: report.duration_ms,
                who: plan.who.clone(),
                rollback: plan.rollback,
            },
            Outcome::Failed => EventKind::DeployFailed {
                deploy_id: plan.id.clone(),
                release: plan.release.clone(),
                previous: plan.previous.clone(),
                reason,
                duration_ms: report.duration_ms,
                who: plan.who.clone(),
            },
            Outcome::RolledBack => EventKind::RolledBack {
                deploy_id: plan.id.clone(),
                release: plan.release.clone(),
                to: plan.previous.clone(),
                reason,
                duration_ms: report.duration_ms,
                who: plan.who.clone(),
            },
        };
        self.publish(event);
        if let Some(tap) = d.final_tap.take() {
            let _ = tap.send(Some(report.clone()));
        }
        for waiting in d.after.drain(..) {
            let _ = waiting.send(None);
        }
        let _ = d.progress.send(DeployMsg::Done(report));
    }
}
