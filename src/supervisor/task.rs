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
use super::logs::{Journal, LogHub, Stream};
use super::process::{ExitInfo, Spawner, signal_group};
use super::spec::{self, InstanceParams};
use super::state::{Action, Ctx, Deps, Input, Machine, State, describe_exit};
use super::{Command, DepWatch, Health, Op, ServiceStatus, SupervisorHandle, now_rfc3339};
use crate::config::Unit;
use crate::event::{Event, EventBus, EventKind};

/// What every supervisor shares: the spawner, containment, the bus.
#[derive(Clone)]
pub struct Shared {
    pub spawner: Spawner,
    pub cgroups: Option<CgroupRoot>,
    pub bus: EventBus,
    /// Identifies this orchd's processes (`ORCH_INSTANCE=<daemon_id>/…`).
    pub daemon_id: String,
    pub journal: Option<Arc<Journal>>,
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
struct Instance {
    pid: i32,
    marker: String,
    cgroup: Option<PathBuf>,
}

struct Supervisor {
    unit: Arc<Unit>,
    shared: Shared,
    machine: Machine,
    release: String,
    slot: usize,
    spawn_seq: u64,
    instance: Option<Instance>,
    /// The instance whose main process just exited, while its exit is being handled: its
    /// leftovers (the rest of its group, its cgroup) are still to be killed.
    dying: Option<Instance>,
    deps: Vec<DepWatch>,
    /// The dependencies the last evaluation found still on their way (for the status).
    waiting_on: Vec<String>,
    status: watch::Sender<ServiceStatus>,
    logs: LogHub,
    exits_tx: mpsc::UnboundedSender<ExitInfo>,
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
        waiting_on: Vec::new(),
        status,
        logs,
        exits_tx,
    };
    tracker.spawn(sup.run(cmd_rx, exits_rx, start, cancel));
    handle
}

impl Supervisor {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut exits: mpsc::UnboundedReceiver<ExitInfo>,
        start: bool,
        cancel: CancellationToken,
    ) {
        let (dep_tx, mut dep_rx) = mpsc::channel::<()>(1);
        let mut dep_watchers = self.watch_deps(&dep_tx);
        let mut first = vec![Input::DepsChanged(self.eval_deps())];
        if start {
            first.push(Input::Start);
        }
        self.feed_all(first).await;
        loop {
            let deadline = self.machine.deadline();
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Reconfigure { unit, deps, restart }) => {
                        dep_watchers.abort_all();
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
                _ = cancel.cancelled() => break,
            }
        }
        // orchd is going away without a graceful stop of this service: leave nothing behind.
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
        self.waiting_on.clear();
        let mut waiting = Vec::new();
        for dep in &self.deps {
            let s = dep.status.borrow();
            if s.ready || (dep.required && s.state == State::Exited) {
                continue;
            }
            let starting = s.want_up
                && matches!(
                    s.state,
                    State::Inactive | State::Starting | State::Running | State::Backoff
                );
            if !dep.required {
                if starting {
                    waiting.push(format!("{} ({})", dep.name, s.state));
                    self.waiting_on.push(dep.name.clone());
                }
                continue;
            }
            match s.state {
                State::Failed | State::BadSetting => {
                    self.waiting_on.clear();
                    return Deps::Blocked(format!("{} is {}", dep.name, s.state));
                }
                _ if !s.want_up => {
                    self.waiting_on.clear();
                    return Deps::Blocked(format!("{} is {} (not started)", dep.name, s.state));
                }
                _ => {
                    waiting.push(format!("{} ({})", dep.name, s.state));
                    self.waiting_on.push(dep.name.clone());
                }
            }
        }
        if waiting.is_empty() {
            Deps::Ready
        } else {
            Deps::Waiting(waiting.join(", "))
        }
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
        self.unit = unit;
        self.deps = deps;
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
        self.dying = self.instance.take();
        self.feed(Input::Exited {
            code: exit.code,
            signal: exit.signal,
        })
        .await;
        self.dying = None;
    }

    /// Step the machine and perform its actions, including those that performing them causes.
    async fn feed(&mut self, input: Input) {
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
        self.publish_status();
    }

    async fn perform(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::Spawn => Some(self.spawn().await),
            Action::Signal(sig) => {
                if let Some(inst) = &self.instance {
                    self.signal(inst, sig);
                }
                None
            }
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
            return Input::Spawned { pid: 0 };
        }
        self.spawn_seq += 1;
        let name = &self.unit.name;
        let marker = format!(
            "{}/{}/{}/{}",
            self.shared.daemon_id, name, self.slot, self.spawn_seq
        );
        // One cgroup per spawn, never reused: the previous instance's cgroup is removed in the
        // background after its exit, and that removal (kill, then rmdir) must not hit this one.
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
                remove_cgroup(cgroup);
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
                Input::Spawned { pid }
            }
            Err(e) => {
                remove_cgroup(cgroup);
                Input::SpawnFailed {
                    error: e.to_string(),
                }
            }
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
                remove_cgroup(Some(dir.clone()));
            }
            None => {
                let n = cgroup::kill_marked(&format!("ORCH_INSTANCE={}", inst.marker));
                if n > 0 {
                    tracing::info!(service = %self.unit.name, count = n, "killed processes the service left behind");
                }
            }
        }
    }

    fn publish(&self, kind: EventKind) {
        self.shared.bus.publish(Event::now(&self.unit.name, kind));
    }

    fn publish_status(&self) {
        let m = &self.machine;
        let state = m.state();
        let pid = self.instance.as_ref().map(|i| i.pid).filter(|&p| p > 0);
        let health = Health::None;
        let ready = state == State::Running && matches!(health, Health::None | Health::Healthy);
        let port = self.unit.deploy.as_ref().map(|d| d.ports[self.slot]);
        self.status.send_if_modified(|s| {
            let changed_state = s.state != state;
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
                waiting_on: if state == State::Starting {
                    self.waiting_on.clone()
                } else {
                    Vec::new()
                },
                want_up: m.want_up(),
                ready,
                port,
                description: self.unit.description.clone(),
            };
            if *s == new {
                return false;
            }
            *s = new;
            true
        });
    }
}

/// Remove an instance's cgroup in the background, once what it holds has died.
fn remove_cgroup(dir: Option<PathBuf>) {
    if let Some(dir) = dir {
        tokio::task::spawn_blocking(move || cgroup::remove(&dir));
    }
}
