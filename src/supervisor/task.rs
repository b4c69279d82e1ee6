//! The supervisor task: one per service, the only owner of its slots, their machines and
//! instances, its proxy and its deploy.
//!
//! A service has two slots. Normally one (the *active* slot) runs; a deploy starts the new
//! release in the other, and the deploy machine (`deploy/`) drives the switch. Each slot has its own pure
//! [`Machine`]; inputs are routed to the slot they concern (exits by pid, probe results by tag).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::Signal;
use rand::RngExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::deploy::DeployRun;
use super::deps;
use super::instance::Sweep;
use super::logs::{Journal, LogHub};
use super::spec::ServiceEnv;
use super::state::{Action, Ctx, Deps, Input, Machine, State, describe_exit};
use super::{Command, DepWatch, Health, Op, ServiceStatus, SupervisorHandle};
use crate::config::{SwitchMode, Unit};
use crate::event::{Event, EventBus, EventKind};
use crate::health::{ProbeClients, ProbeResult, Tracker};
use crate::process::cgroup::CgroupRoot;
use crate::process::{ExitInfo, Spawner, kill_group, signal_group};
use crate::proxy::{Backend, Proxy};

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
    /// The environment services inherit from orchd.
    pub env: ServiceEnv,
    /// Where finished deploys are recorded (the manager answers once they are written).
    pub recorder: mpsc::UnboundedSender<super::RecordRequest>,
    /// Where a supervisor that crashed is recorded for `status`.
    pub parts: crate::guard::Parts,
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
    pub(super) cgroup: Option<PathBuf>,
    /// The readers of its stdout and stderr; they end at EOF.
    pub(super) readers: Vec<tokio::task::JoinHandle<()>>,
}

/// How long an exit waits for the process's last output to be read, so that its log (and the
/// alert that quotes it) ends with what it printed, not with the exit note.
const DRAIN_OUTPUT: std::time::Duration = std::time::Duration::from_millis(50);

/// One of the service's two slots: a release, its machine, its process and its health.
pub(super) struct Slot {
    pub(super) index: usize,
    pub(super) machine: Machine,
    pub(super) release: String,
    pub(super) instance: Option<Instance>,
    /// The instance whose main process just exited, while its exit is being handled: its
    /// leftovers (the rest of its group, its cgroup) are still to be killed.
    pub(super) dying: Option<Instance>,
    /// Health of the running instance (None: no check, or not running).
    pub(super) health: Option<Tracker>,
    /// Stops the running instance's prober.
    pub(super) prober: Option<CancellationToken>,
    /// Identifies the current prober's results; older ones are ignored.
    pub(super) probe_tag: u64,
    /// A stopped instance whose leftovers are being cleared ([`Action::Clear`]).
    pub(super) clearing: Option<Clearing>,
}

/// The job that ends a stopped instance's leftovers; it reports its slot on `cleared_tx`.
pub(super) struct Clearing {
    pid: i32,
    sweep: Sweep,
    job: tokio::task::JoinHandle<()>,
}

impl Slot {
    fn new(index: usize, unit: &Unit, release: String) -> Slot {
        Slot {
            index,
            machine: Machine::new(unit.restart.clone(), unit.stop.clone()),
            release,
            instance: None,
            dying: None,
            health: None,
            prober: None,
            probe_tag: 0,
            clearing: None,
        }
    }

    pub(super) fn health(&self) -> Health {
        self.health.as_ref().map_or(Health::None, Tracker::health)
    }

    /// Running, and healthy or without a health check.
    pub(super) fn ready(&self) -> bool {
        self.machine.state() == State::Running
            && matches!(self.health(), Health::None | Health::Healthy)
    }

    pub(super) fn port(&self, unit: &Unit) -> Option<u16> {
        unit.deploy.as_ref().map(|d| d.ports[self.index])
    }
}

pub(super) struct Supervisor {
    pub(super) unit: Arc<Unit>,
    pub(super) shared: Shared,
    pub(super) slots: [Slot; 2],
    /// The slot that serves (and whose state is the service's state).
    pub(super) active: usize,
    pub(super) spawn_seq: u64,
    pub(super) next_tag: u64,
    pub(super) deps: Vec<DepWatch>,
    /// When this service started waiting for its dependencies (bounds the wait for health).
    pub(super) waiting_since: Option<Instant>,
    /// When to evaluate the dependencies again although none changed (a health bound expires).
    pub(super) dep_recheck: Option<Instant>,
    /// The dependencies the last evaluation found still on their way (for the status).
    pub(super) waiting_on: Vec<String>,
    pub(super) status: watch::Sender<ServiceStatus>,
    pub(super) logs: LogHub,
    pub(super) exits_tx: mpsc::UnboundedSender<ExitInfo>,
    /// Slots whose stopped instance has been cleared.
    pub(super) cleared_tx: mpsc::UnboundedSender<usize>,
    /// Results are boxed: every slot of the queue is as large as its item.
    pub(super) probe_tx: mpsc::Sender<(u64, Box<ProbeResult>)>,
    /// Events waiting for the status update that goes with them.
    pub(super) events: Vec<Event>,
    /// The public listener of a `[deploy]` service with the built-in proxy.
    pub(super) proxy: Option<Proxy>,
    /// Why the proxy could not be bound, for status.
    pub(super) proxy_error: Option<String>,
    pub(super) deploy: Option<DeployRun>,
    /// `switch = "command"`: the switch command still has to run for the first ready release.
    pub(super) switch_pending: bool,
    /// Completions of a deploy's switch command and record come back as commands, through a
    /// weak sender: it neither keeps the channel open once the manager lets go of the service
    /// nor costs a channel of its own per service.
    pub(super) commands: mpsc::WeakUnboundedSender<Command>,
    /// The switch command running (or last run): the next one waits for it, so that the
    /// front ends up where the last switch pointed it.
    pub(super) switch_job: Option<tokio::task::JoinHandle<()>>,
    /// Leftovers of ended instances still to be swept (see [`Sweep::kill`]).
    pub(super) sweeps: Vec<Sweep>,
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
    let own_commands = cmd_tx.downgrade();
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let (cleared_tx, cleared_rx) = mpsc::unbounded_channel();
    let logs = LogHub::spawn(&unit.name, shared.journal.clone(), shared.parts.clone());
    let handle = SupervisorHandle {
        name: unit.name.clone(),
        commands: cmd_tx,
        status: status.subscribe(),
        logs: logs.clone(),
    };
    let (probe_tx, probe_rx) = mpsc::channel(16);
    let slots = [
        Slot::new(0, &unit, release.clone()),
        Slot::new(1, &unit, release),
    ];
    let switch_command = unit
        .deploy
        .as_ref()
        .is_some_and(|d| d.switch == SwitchMode::Command);
    let sup = Supervisor {
        unit,
        shared,
        slots,
        active: 0,
        spawn_seq: 0,
        next_tag: 0,
        deps,
        waiting_since: None,
        dep_recheck: None,
        waiting_on: Vec::new(),
        status,
        logs,
        exits_tx,
        cleared_tx,
        probe_tx,
        events: Vec::new(),
        proxy: None,
        proxy_error: None,
        deploy: None,
        switch_pending: switch_command,
        commands: own_commands,
        switch_job: None,
        sweeps: Vec::new(),
    };
    let guard = CrashReport {
        name: sup.unit.name.clone(),
        status: sup.status.clone(),
        bus: sup.shared.bus.clone(),
        parts: sup.shared.parts.clone(),
    };
    guard.parts.recovered(&guard.part());
    // Boxed: the future keeps a pointer instead of holding the ~2 KiB state twice (as the
    // argument and as the moved-in local), which is most of a supervisor's memory.
    let inputs = Inputs {
        commands: cmd_rx,
        exits: exits_rx,
        cleared: cleared_rx,
        probes: probe_rx,
    };
    // Every line the task logs (the machine's `from -> to` among them) names the service.
    let span = tracing::info_span!("supervisor", service = %guard.name);
    let run = tracing::Instrument::instrument(Box::new(sup).run(inputs, start, cancel), span);
    tracker.spawn(async move {
        if let Err(message) = crate::guard::catch(run).await {
            guard.report(&message);
        }
    });
    handle
}

/// What is left to report a supervisor that panicked: its processes were killed by
/// `Supervisor`'s `Drop` while the panic unwound; the service shows `failed` with the reason,
/// an event (and so an alert) says so, and `orchctl restart` gives it a new supervisor.
struct CrashReport {
    name: String,
    status: watch::Sender<ServiceStatus>,
    bus: EventBus,
    parts: crate::guard::Parts,
}

impl CrashReport {
    fn part(&self) -> String {
        format!("supervisor of {}", self.name)
    }

    fn report(&self, message: &str) {
        let name = &self.name;
        tracing::error!(service = %name, panic = %message, "the service's supervisor crashed; its processes were killed");
        self.parts.crashed(&self.part(), message, false);
        let reason = format!(
            "orchd's supervisor of {name} crashed ({message}); its processes were killed; \
             `orchctl restart {name}` supervises it again"
        );
        let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        self.status.send_modify(|s| {
            s.state = State::Failed;
            s.health = Health::None;
            s.pid = None;
            s.ready = false;
            s.since = since;
            s.reason = Some(reason.clone());
            s.deploying = None;
            s.slots.clear();
            s.waiting_on.clear();
        });
        self.bus
            .publish(Event::now(name, EventKind::Failed { reason }));
    }
}

impl Supervisor {
    /// SIGKILL every process the slots still hold (running, exiting, being cleared), stop
    /// their probers, and return the sweeps that finish the job (cgroups, markers): what the
    /// end of `run` awaits, and what `Drop` runs on a thread after a panic.
    fn kill_leftovers(&mut self) -> Vec<Sweep> {
        let mut sweeps = std::mem::take(&mut self.sweeps);
        for i in 0..2 {
            if let Some(c) = self.slots[i].clearing.take() {
                c.job.abort();
                kill_group(c.pid);
                sweeps.push(c.sweep);
            }
            self.stop_probing(i);
            if let Some(inst) = self.slots[i].instance.take() {
                // Not reaped yet: its group id cannot be anyone else's.
                signal_group(inst.pid, Signal::SIGKILL);
                sweeps.push(Sweep::of(&inst));
            }
            if let Some(inst) = self.slots[i].dying.take() {
                // Reaped: its group is signalled only while it still has members.
                kill_group(inst.pid);
                sweeps.push(Sweep::of(&inst));
            }
        }
        sweeps
    }
}

impl Drop for Supervisor {
    /// The normal ends of `run` take every process first; one still recorded here means the
    /// task is unwinding from a panic. Kill them all (group, cgroup, marker) rather than leave
    /// them running unsupervised.
    fn drop(&mut self) {
        let sweeps = self.kill_leftovers();
        if sweeps.is_empty() {
            return;
        }
        let service = self.unit.name.clone();
        // The cgroup kill and the /proc scan block: on a thread of their own.
        let spawned = std::thread::Builder::new()
            .name("orch-sweep".into())
            .spawn(move || {
                for sweep in sweeps {
                    sweep.run(&service);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(service = %self.unit.name, error = %e, "cannot start the sweep of a crashed supervisor's processes");
        }
    }
}

/// What a supervisor's loop listens to.
struct Inputs {
    commands: mpsc::UnboundedReceiver<Command>,
    exits: mpsc::UnboundedReceiver<ExitInfo>,
    cleared: mpsc::UnboundedReceiver<usize>,
    /// Results are boxed: every slot of the queue is as large as its item.
    probes: mpsc::Receiver<(u64, Box<ProbeResult>)>,
}

impl Supervisor {
    async fn run(mut self: Box<Self>, inputs: Inputs, start: bool, cancel: CancellationToken) {
        let Inputs {
            mut commands,
            mut exits,
            mut cleared,
            mut probes,
        } = inputs;
        self.bind_proxy().await;
        let (dep_tx, mut dep_rx) = mpsc::channel::<()>(1);
        let mut dep_watchers = self.watch_deps(&dep_tx);
        let deps = self.eval_deps();
        let mut first = vec![Input::DepsChanged(deps)];
        if start {
            first.push(Input::Start);
        }
        self.feed_all(self.active, first).await;
        loop {
            let deadline = self.next_deadline();
            let recheck = self.dep_recheck;
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Reconfigure(r)) => {
                        dep_watchers.abort_all();
                        let super::Reconfigure { unit, deps, restart, release } = *r;
                        self.reconfigure(unit, deps, restart, release).await;
                        dep_watchers = self.watch_deps(&dep_tx);
                    }
                    Some(cmd) => self.on_command(cmd).await,
                    None => break,
                },
                Some(exit) = exits.recv() => self.on_exit(exit).await,
                Some(slot) = cleared.recv() => {
                    self.slots[slot].clearing = None;
                    self.feed(slot, Input::Cleared).await;
                }
                _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                    self.on_deadline().await;
                }
                Some(()) = dep_rx.recv() => {
                    let deps = self.eval_deps();
                    self.feed(self.active, Input::DepsChanged(deps)).await;
                }
                _ = async { sleep_until(recheck.unwrap_or_else(Instant::now)).await }, if recheck.is_some() => {
                    let deps = self.eval_deps();
                    self.feed(self.active, Input::DepsChanged(deps)).await;
                }
                Some((tag, result)) = probes.recv() => self.on_probe(tag, *result).await,
                _ = cancel.cancelled() => break,
            }
        }
        // orchd is going away without a graceful stop of this service: leave nothing behind,
        // before this task ends. The sweeps block (cgroup removal, the /proc scan, waiting for
        // deaths): off the runtime's threads, which other services' last sweeps need too.
        let sweeps = self.kill_leftovers();
        if !sweeps.is_empty() {
            let service = self.unit.name.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for sweep in sweeps {
                    sweep.run(&service);
                }
            })
            .await;
        }
    }

    async fn bind_proxy(&mut self) {
        let Some(d) = self.unit.deploy.clone() else {
            return;
        };
        let Some(listen) = d.listen.filter(|_| d.switch == SwitchMode::Proxy) else {
            return;
        };
        if self.proxy.as_ref().is_some_and(|p| p.listen == listen) {
            return;
        }
        self.proxy = None;
        match Proxy::bind(listen, d.proxy, &self.unit.name, self.shared.parts.clone()).await {
            Ok(p) => {
                tracing::info!(service = %self.unit.name, %listen, "proxy listening");
                self.proxy = Some(p);
                self.proxy_error = None;
            }
            Err(e) => {
                tracing::error!(service = %self.unit.name, %listen, error = %e, "cannot bind the proxy's listen address");
                self.proxy_error = Some(format!("cannot listen on {listen}: {e}"));
            }
        }
        self.sync_proxy();
    }

    /// Outside a deploy, the proxy follows the active slot: its port while it runs, else none.
    pub(super) fn sync_proxy(&self) {
        if self.deploy.is_some() {
            return;
        }
        if let Some(p) = &self.proxy {
            let slot = &self.slots[self.active];
            let backend = match (slot.machine.state(), slot.port(&self.unit)) {
                (State::Running | State::Stopping, Some(port)) => Some(Backend {
                    slot: slot.index,
                    addr: ([127, 0, 0, 1], port).into(),
                }),
                _ => None,
            };
            if p.active() != backend {
                p.switch(backend);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.slots[0].machine.deadline(),
            self.slots[1].machine.deadline(),
            self.deploy.as_ref().and_then(DeployRun::deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        for i in 0..2 {
            if self.slots[i].machine.deadline().is_some_and(|d| d <= now) {
                self.feed(i, Input::Deadline).await;
            }
        }
        if self
            .deploy
            .as_ref()
            .and_then(DeployRun::deadline)
            .is_some_and(|d| d <= now)
        {
            self.deploy_deadline().await;
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
        self.waiting_on = verdict.waiting_on;
        verdict.deps
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Control { op, ack } => {
                if op == Op::Stop && self.deploy.is_some() {
                    self.abort_deploy("the service was stopped by an operator")
                        .await;
                }
                let input = match op {
                    Op::Start => Input::Start,
                    Op::Stop => Input::Stop,
                    Op::Restart => Input::Restart,
                    Op::Reset => Input::Reset,
                };
                tracing::debug!(service = %self.unit.name, ?input, "command");
                if op == Op::Reset
                    && crate::guard::test_panic_requested(&format!("supervisor:{}", self.unit.name))
                {
                    panic!("test panic requested by ORCHD_TEST_PANIC");
                }
                self.feed(self.active, input).await;
                // A stop that aborted a deploy stops the other slot too: a switch back still
                // running (switch_command) makes the old release active only afterwards.
                let other = 1 - self.active;
                if op == Op::Stop && self.slots[other].machine.want_up() {
                    self.feed(other, Input::Stop).await;
                }
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
            }
            Command::Deploy {
                request,
                progress,
                reply,
            } => {
                let accepted = self.start_deploy(*request, progress).await;
                let _ = reply.send(accepted);
            }
            Command::Rollback { reply } => self.rollback_deploy(reply).await,
            Command::DeployDone(done) => self.on_deploy_done(done).await,
            Command::Reconfigure(_) => {}
        }
    }

    async fn reconfigure(
        &mut self,
        unit: Arc<Unit>,
        deps: Vec<DepWatch>,
        restart: bool,
        release: String,
    ) {
        let active = self.active;
        self.slots[active]
            .machine
            .reconfigure(unit.restart.clone(), unit.stop.clone());
        if self.deploy.is_none() {
            self.slots[active].release = release;
        }
        let health_changed = self.unit.health != unit.health;
        self.unit = unit;
        self.deps = deps;
        if health_changed {
            self.restart_probing(active);
        }
        self.bind_proxy().await;
        let deps = self.eval_deps();
        self.feed(active, Input::DepsChanged(deps)).await;
        if restart && self.slots[active].machine.want_up() && self.deploy.is_none() {
            self.feed(active, Input::Restart).await;
        }
    }

    async fn on_exit(&mut self, exit: ExitInfo) {
        let Some(i) = (0..2).find(|&i| {
            self.slots[i]
                .instance
                .as_ref()
                .is_some_and(|inst| inst.pid == exit.pid)
        }) else {
            return;
        };
        if let Some(inst) = self.slots[i].instance.as_mut() {
            let readers = std::mem::take(&mut inst.readers);
            let _ = tokio::time::timeout(DRAIN_OUTPUT, futures::future::join_all(readers)).await;
        }
        let what = describe_exit(exit.code, exit.signal);
        tracing::info!(service = %self.unit.name, pid = exit.pid, slot = i, "{what}");
        self.logs
            .note(exit.pid, format!("[orchd] process {} {what}", exit.pid));
        self.publish(EventKind::Exited {
            pid: exit.pid,
            code: exit.code,
            signal: exit.signal.map(|s| s.as_str().to_owned()),
        });
        self.stop_probing(i);
        self.slots[i].dying = self.slots[i].instance.take();
        self.feed(
            i,
            Input::Exited {
                code: exit.code,
                signal: exit.signal,
            },
        )
        .await;
        self.slots[i].dying = None;
    }

    /// Step a slot's machine and perform its actions, including those that performing them
    /// causes; then let the deploy (if any) advance and publish the status.
    pub(super) async fn feed(&mut self, slot: usize, input: Input) {
        self.feed_all(slot, vec![input]).await;
    }

    async fn feed_all(&mut self, slot: usize, inputs: Vec<Input>) {
        self.run_slot(slot, inputs).await;
        self.settle().await;
    }

    /// Step a slot's machine and perform its actions (and those they cause), without looking
    /// at the deploy: the deploy's driver uses this, and looks itself.
    pub(super) async fn run_slot(&mut self, slot: usize, inputs: Vec<Input>) {
        let mut queue: VecDeque<Input> = inputs.into();
        while let Some(input) = queue.pop_front() {
            let ctx = Ctx {
                now: Instant::now(),
                rand: rand::rng().random_range(-1.0..=1.0),
            };
            for action in self.slots[slot].machine.step(input, ctx) {
                if let Some(next) = self.perform(slot, action).await {
                    queue.push_back(next);
                }
            }
        }
        // After the actions, so that a restart's spawn never waits behind a sweep.
        self.start_sweeps();
        if self.slots[self.active].machine.state() != State::Starting {
            self.waiting_since = None;
            self.dep_recheck = None;
        }
    }

    /// After any change: let the deploy move on, point the proxy (or the switch command) at
    /// the active slot, publish the status and the events that go with it.
    pub(super) async fn settle(&mut self) {
        self.advance_deploy().await;
        self.sync_proxy();
        self.point_switch_at_start();
        self.publish_status();
    }

    /// With `switch = "command"`, the front (nginx, …) learns the active slot's port once it is
    /// ready after orchd starts: the last deploy may have left the other port there.
    fn point_switch_at_start(&mut self) {
        if !self.switch_pending || self.deploy.is_some() || !self.slots[self.active].ready() {
            return;
        }
        self.switch_pending = false;
        self.spawn_switch_command(self.active, false);
    }

    async fn perform(&mut self, slot: usize, action: Action) -> Option<Input> {
        match action {
            Action::Spawn => Some(self.spawn(slot).await),
            Action::Signal(sig) => match &self.slots[slot].instance {
                Some(inst) => {
                    self.signal(inst, sig);
                    None
                }
                // A monitor-only unit has no process: stopping it ends monitoring at once.
                None => {
                    self.stop_probing(slot);
                    Some(Input::Exited {
                        code: Some(0),
                        signal: None,
                    })
                }
            },
            Action::Clear { grace_until } => {
                let Some(inst) = self.slots[slot].dying.as_ref() else {
                    // A monitor-only unit has no process to clear.
                    return Some(Input::Cleared);
                };
                let (pid, sweep) = (inst.pid, Sweep::of(inst));
                let cleared = self.cleared_tx.clone();
                let job = sweep
                    .clone()
                    .clear(pid, grace_until, self.unit.name.clone());
                let job = tokio::spawn(async move {
                    job.await;
                    let _ = cleared.send(slot);
                });
                self.slots[slot].clearing = Some(Clearing { pid, sweep, job });
                None
            }
            Action::KillAll => {
                let s = &self.slots[slot];
                if let Some(sweep) = s.instance.as_ref().or(s.dying.as_ref()).map(Sweep::kill) {
                    self.sweeps.push(sweep);
                }
                None
            }
            Action::Emit(kind) => {
                self.on_emit(&kind);
                // A release being judged by a deploy (not serving yet) that fails is the
                // deploy's failure (`deploy_failed`), not the service's: no `failed` alert.
                let judged = self.deploy.as_ref().is_some_and(|d| d.candidate() == slot)
                    && slot != self.active;
                if !(judged && matches!(kind, EventKind::Failed { .. } | EventKind::Backoff { .. }))
                {
                    self.publish(kind);
                }
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
}
