//! The supervisor task: one per service, the only owner of its machine and instance.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::Signal;
use rand::RngExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::cgroup::{self, CgroupRoot};
use super::deps;
use super::logs::{Journal, LogHub, Stream};
use super::process::{ExitInfo, Spawner, signal_group};
use super::spec::{self, InstanceParams};
use super::state::{Action, Ctx, Deps, Input, Machine, State, describe_exit};
use super::{Command, DepWatch, Health, Op, ServiceStatus, SupervisorHandle, now_rfc3339};
use crate::config::Unit;
use crate::event::{Event, EventBus, EventKind};
use crate::health::{ProbeClients, ProbeResult, Tracker};

/// What every supervisor shares: the spawner, containment, the bus.
#[derive(Clone)]
pub struct Shared {
    pub spawner: Spawner,
    pub cgroups: Option<CgroupRoot>,
    pub bus: EventBus,
    /// Identifies this orchd's processes (`ORCH_INSTANCE=<daemon_id>/…`).
    pub daemon_id: String,
    pub journal: Option<Arc<Journal>>,
    pub probes: ProbeClients,
}

/// What a new supervisor starts from.
pub struct SupervisorSpec {
    pub unit: Arc<Unit>,
    /// The release to run (persisted active release, else the unit's).
    pub release: String,
    /// Its status channel, created by the manager so dependents can watch it early.
    pub status: watch::Sender<ServiceStatus>,
    pub deps: Vec<DepWatch>,
    /// Start right away (false: the operator had stopped it).
    pub start: bool,
}

/// One running process of the service.
#[derive(Debug)]
pub(super) struct Instance {
    pub(super) pid: i32,
    pub(super) marker: String,
    cgroup: Option<PathBuf>,
}

pub(super) struct Supervisor {
    pub(super) unit: Arc<Unit>,
    pub(super) shared: Shared,
    pub(super) machine: Machine,
    pub(super) release: String,
    pub(super) slot: usize,
    spawn_seq: u64,
    pub(super) instance: Option<Instance>,
    /// The instance whose main process just exited, while its exit is being handled: its
    /// leftovers (the rest of its group, its cgroup) are still to be killed.
    dying: Option<Instance>,
    deps: Vec<DepWatch>,
    /// When this service started waiting for its dependencies (bounds the wait for health).
    waiting_since: Option<Instant>,
    /// When to evaluate the dependencies again although none changed (a health bound expires).
    dep_recheck: Option<Instant>,
    status: watch::Sender<ServiceStatus>,
    logs: LogHub,
    exits_tx: mpsc::UnboundedSender<ExitInfo>,
    /// Health of the running instance (None: no check, or not running).
    pub(super) health: Option<Tracker>,
    /// Stops the running instance's prober.
    pub(super) prober: Option<CancellationToken>,
    /// Identifies the current prober's results; older ones are ignored.
    pub(super) probe_tag: u64,
    pub(super) probe_tx: mpsc::Sender<(u64, ProbeResult)>,
    /// Events waiting for the status update that goes with them.
    events: Vec<Event>,
}

/// Start the supervisor task of `unit`, running `release`. It starts the service only when told.
pub fn spawn_supervisor(
    spec: SupervisorSpec,
    shared: Shared,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> SupervisorHandle {
    let SupervisorSpec {
        unit,
        release,
        status,
        deps,
        start,
    } = spec;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let logs = LogHub::spawn(&unit.name, shared.journal.clone());
    let handle = SupervisorHandle {
        name: unit.name.clone(),
        commands: cmd_tx,
        status: status.subscribe(),
        logs: logs.clone(),
    };
    let machine = Machine::new(unit.restart.clone(), unit.stop.clone());
    let (probe_tx, probe_rx) = mpsc::channel(16);
    let sup = Supervisor {
        unit,
        shared,
        machine,
        release,
        slot: 0,
        spawn_seq: 0,
        instance: None,
        dying: None,
        deps,
        waiting_since: None,
        dep_recheck: None,
        status,
        logs,
        exits_tx,
        health: None,
        prober: None,
        probe_tag: 0,
        probe_tx,
        events: Vec::new(),
    };
    tracker.spawn(sup.run(cmd_rx, exits_rx, probe_rx, start, cancel));
    handle
}

impl Supervisor {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut exits: mpsc::UnboundedReceiver<ExitInfo>,
        mut probes: mpsc::Receiver<(u64, ProbeResult)>,
        start: bool,
        cancel: CancellationToken,
    ) {
        let (dep_tx, mut dep_rx) = mpsc::channel::<()>(1);
        let mut dep_watchers = self.watch_deps(&dep_tx);
        let deps = self.eval_deps();
        let mut first = vec![Input::DepsChanged(deps)];
        if start {
            first.push(Input::Start);
        }
        self.feed_all(first).await;
        loop {
            let deadline = self.machine.deadline();
            let recheck = self.dep_recheck;
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Reconfigure { unit, deps, restart, release }) => {
                        dep_watchers.abort_all();
                        self.release = release;
                        self.reconfigure(unit, deps, restart).await;
                        dep_watchers = self.watch_deps(&dep_tx);
                    }
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                Some(exit) = exits.recv() => self.on_exit(exit).await,
                _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                    self.feed(Input::Deadline).await;
                }
                Some(()) = dep_rx.recv() => {
                    let deps = self.eval_deps();
                    self.feed(Input::DepsChanged(deps)).await;
                }
                _ = async { sleep_until(recheck.unwrap_or_else(Instant::now)).await }, if recheck.is_some() => {
                    let deps = self.eval_deps();
                    self.feed(Input::DepsChanged(deps)).await;
                }
                Some((tag, result)) = probes.recv() => self.on_probe(tag, result).await,
                _ = cancel.cancelled() => break,
            }
        }
        // orchd is going away without a graceful stop of this service: leave nothing behind.
        self.stop_probing();
        if let Some(inst) = self.instance.take() {
            self.kill_all(&inst);
        }
    }

    fn watch_deps(&self, tx: &mpsc::Sender<()>) -> tokio::task::JoinSet<()> {
        let mut set = tokio::task::JoinSet::new();
        for dep in &self.deps {
            let mut rx = dep.status.clone();
            let tx = tx.clone();
            set.spawn(async move {
                while rx.changed().await.is_ok() {
                    let _ = tx.try_send(());
                }
            });
        }
        set
    }

    fn eval_deps(&mut self) -> Deps {
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let verdict = deps::evaluate(&self.deps, since, now);
        self.dep_recheck = verdict.recheck_at;
        verdict.deps
    }

    async fn on_command(&mut self, cmd: Command) {
        let Command::Control { op, ack } = cmd else {
            return;
        };
        let input = match op {
            Op::Start => Input::Start,
            Op::Stop => Input::Stop,
            Op::Restart => Input::Restart,
            Op::Reset => Input::Reset,
        };
        tracing::debug!(service = %self.unit.name, ?input, "command");
        self.feed(input).await;
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    async fn reconfigure(&mut self, unit: Arc<Unit>, deps: Vec<DepWatch>, restart: bool) {
        self.machine
            .reconfigure(unit.restart.clone(), unit.stop.clone());
        let health_changed = self.unit.health != unit.health;
        self.unit = unit;
        self.deps = deps;
        if health_changed {
            self.restart_probing();
        }
        let deps = self.eval_deps();
        self.feed(Input::DepsChanged(deps)).await;
        if restart && self.machine.want_up() {
            self.feed(Input::Restart).await;
        }
    }

    async fn on_exit(&mut self, exit: ExitInfo) {
        let Some(inst) = &self.instance else { return };
        if inst.pid != exit.pid {
            return;
        }
        let what = describe_exit(exit.code, exit.signal);
        tracing::info!(service = %self.unit.name, pid = exit.pid, "{what}");
        self.logs
            .note(exit.pid, format!("[orchd] process {} {what}", exit.pid));
        self.publish(EventKind::Exited {
            pid: exit.pid,
            code: exit.code,
            signal: exit.signal.map(|s| s.as_str().to_owned()),
        });
        self.stop_probing();
        self.dying = self.instance.take();
        self.feed(Input::Exited {
            code: exit.code,
            signal: exit.signal,
        })
        .await;
        self.dying = None;
    }

    /// Step the machine and perform its actions, including those that performing them causes.
    pub(super) async fn feed(&mut self, input: Input) {
        self.feed_all(vec![input]).await;
    }

    /// Feed several inputs, publishing the status once at the end.
    async fn feed_all(&mut self, inputs: Vec<Input>) {
        let mut queue: VecDeque<Input> = inputs.into();
        while let Some(input) = queue.pop_front() {
            let ctx = Ctx {
                now: Instant::now(),
                rand: rand::rng().random_range(-1.0..=1.0),
            };
            for action in self.machine.step(input, ctx) {
                if let Some(next) = self.perform(action).await {
                    queue.push_back(next);
                }
            }
        }
        if self.machine.state() != State::Starting {
            self.waiting_since = None;
            self.dep_recheck = None;
        }
        self.publish_status();
    }

    async fn perform(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Spawn => Some(self.spawn().await),
            Action::Signal(sig) => match &self.instance {
                Some(inst) => {
                    self.signal(inst, sig);
                    None
                }
                // A monitor-only unit has no process: stopping it ends monitoring at once.
                None => {
                    self.stop_probing();
                    Some(Input::Exited {
                        code: Some(0),
                        signal: None,
                    })
                }
            },
            Action::KillAll => {
                if let Some(inst) = self.instance.as_ref().or(self.dying.as_ref()) {
                    self.kill_all(inst);
                }
                None
            }
            Action::Emit(kind) => {
                self.on_emit(&kind);
                self.publish(kind);
                None
            }
        }
    }

    fn on_emit(&self, kind: &EventKind) {
        let name = &self.unit.name;
        match kind {
            EventKind::Failed { reason } => tracing::error!(service = %name, "failed: {reason}"),
            EventKind::Backoff { delay_ms, restarts } => {
                tracing::warn!(service = %name, restarts, "restarting in {delay_ms} ms")
            }
            EventKind::SpawnFailed { error } => tracing::error!(service = %name, "{error}"),
            _ => {}
        }
    }

    async fn spawn(&mut self) -> Input {
        if self.unit.is_monitor_only() {
            self.start_probing(None);
            return Input::Spawned { pid: 0 };
        }
        self.spawn_seq += 1;
        let name = &self.unit.name;
        let marker = format!(
            "{}/{}/{}/{}",
            self.shared.daemon_id, name, self.slot, self.spawn_seq
        );
        let cgroup = match &self.shared.cgroups {
            Some(root) => {
                match root.instance(&format!("{name}.{}.{}", self.slot, self.spawn_seq)) {
                    Ok(dir) => Some(dir),
                    Err(e) => {
                        tracing::warn!(service = %name, error = %e, "cannot create the instance cgroup; using the process group");
                        None
                    }
                }
            }
            None => None,
        };
        let port = self.unit.deploy.as_ref().map(|d| d.ports[self.slot]);
        let params = InstanceParams {
            port,
            release: self.release.clone(),
            marker: marker.clone(),
            cgroup: cgroup.clone(),
        };
        let spec = match spec::build(&self.unit, &params) {
            Ok(spec) => spec,
            Err(e) => {
                return Input::SpawnFailed {
                    error: e.to_string(),
                };
            }
        };
        match self.shared.spawner.spawn(spec, self.exits_tx.clone()).await {
            Ok(spawned) => {
                let pid = spawned.pid;
                if let Some(fd) = spawned.stdout {
                    self.logs.attach(fd, Stream::Stdout, pid);
                }
                if let Some(fd) = spawned.stderr {
                    self.logs.attach(fd, Stream::Stderr, pid);
                }
                tracing::info!(service = %name, pid, release = %self.release, "started");
                self.instance = Some(Instance {
                    pid,
                    marker,
                    cgroup,
                });
                self.publish(EventKind::Started {
                    pid,
                    release: self.release.clone(),
                });
                self.start_probing(port);
                Input::Spawned { pid }
            }
            Err(e) => Input::SpawnFailed {
                error: e.to_string(),
            },
        }
    }

    fn signal(&self, inst: &Instance, sig: Signal) {
        signal_group(inst.pid, sig);
        if let Some(dir) = &inst.cgroup {
            cgroup::signal_cgroup(dir, sig);
        }
    }

    /// SIGKILL everything the instance started: its group, its cgroup, anything with its marker.
    fn kill_all(&self, inst: &Instance) {
        signal_group(inst.pid, Signal::SIGKILL);
        match &inst.cgroup {
            Some(dir) => {
                cgroup::kill_cgroup(dir);
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || cgroup::remove(&dir));
            }
            None => {
                let n = cgroup::kill_marked(&format!("ORCH_INSTANCE={}", inst.marker));
                if n > 0 {
                    tracing::info!(service = %self.unit.name, count = n, "killed processes the service left behind");
                }
            }
        }
    }

    /// Queue an event; it goes out after the status that reflects it (see `publish_status`),
    /// so a subscriber that looks at the status on an event sees the new one.
    pub(super) fn publish(&mut self, kind: EventKind) {
        self.events.push(Event::now(&self.unit.name, kind));
    }

    pub(super) fn publish_status(&mut self) {
        self.send_status();
        for event in self.events.drain(..) {
            self.shared.bus.publish(event);
        }
    }

    fn send_status(&self) {
        let m = &self.machine;
        let state = m.state();
        let pid = self.instance.as_ref().map(|i| i.pid).filter(|&p| p > 0);
        let health = self.health.as_ref().map_or(Health::None, Tracker::health);
        let ready = state == State::Running && matches!(health, Health::None | Health::Healthy);
        let probes: Vec<ProbeResult> = self
            .health
            .iter()
            .flat_map(|t| t.results().cloned())
            .collect();
        let last_failure = self.health.as_ref().and_then(|t| t.last_failure().cloned());
        let port = self.unit.deploy.as_ref().map(|d| d.ports[self.slot]);
        self.status.send_if_modified(|s| {
            let changed_state = s.state != state || s.pid != pid;
            let new = ServiceStatus {
                name: self.unit.name.clone(),
                state,
                health,
                pid,
                release: self.release.clone(),
                restarts: m.restarts(),
                since: if changed_state {
                    now_rfc3339()
                } else {
                    s.since.clone()
                },
                reason: m.reason().map(str::to_owned),
                want_up: m.want_up(),
                ready,
                port,
                description: self.unit.description.clone(),
                last_probe: probes.last().cloned(),
                last_failure: last_failure.clone(),
                probes: probes.clone(),
            };
            if *s == new {
                return false;
            }
            *s = new;
            true
        });
    }
}
