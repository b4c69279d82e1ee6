//! The manager: registry of services, routing of requests, start/stop order, reload.
//!
//! One task owns the registry. Front ends (socket, D-Bus, signals) send it [`Msg`]s through a
//! [`ManagerHandle`] and never touch service state; the manager forwards commands to the
//! supervisors and answers from their `watch` snapshots.

mod deploys;
mod error;
pub mod history;
mod order;
mod reload;

use crate::deadline::Later;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ManagerError;
pub use reload::ReloadReport;

use crate::alert::AlertHandle;
use crate::config::{Config, Unit, UnitEntry};
use crate::manager::history::HistoryEntry;

/// A service's deploy history (newest last) and the release a rollback would go back to.
pub type HistoryAnswer = (Vec<HistoryEntry>, Option<String>);
use crate::state::PersistedState;
use crate::supervisor::logs::LogHub;
use crate::supervisor::{self, DepWatch, ServiceStatus, Shared, State, SupervisorHandle};

pub use crate::supervisor::Op;

/// A service a control command went to: its status, and the ack that it took the command.
pub type Controlled = (watch::Receiver<ServiceStatus>, oneshot::Receiver<()>);

/// Requests to the manager task.
#[derive(Debug)]
pub enum Msg {
    Status {
        services: Vec<String>,
        reply: oneshot::Sender<Result<Vec<ServiceStatus>, ManagerError>>,
    },
    Control {
        op: Op,
        services: Vec<String>,
        reply: oneshot::Sender<Result<Vec<Controlled>, ManagerError>>,
    },
    Logs {
        service: String,
        reply: oneshot::Sender<Result<LogHub, ManagerError>>,
    },
    /// The status watches of `services` (all when empty), for front ends that follow changes.
    Watch {
        services: Vec<String>,
        reply: oneshot::Sender<Result<Vec<watch::Receiver<ServiceStatus>>, ManagerError>>,
    },
    Reload {
        dry_run: bool,
        reply: oneshot::Sender<Result<ReloadReport, ManagerError>>,
    },
    /// Stop everything in reverse dependency order; replies when done.
    Shutdown { reply: oneshot::Sender<()> },
    /// Liveness check for the watchdog.
    Ping { reply: oneshot::Sender<()> },
    /// A service's supervisor, for deploy and rollback (the handler talks to it directly).
    Supervisor {
        service: String,
        reply: oneshot::Sender<Result<SupervisorHandle, ManagerError>>,
    },
    /// Deploy history and the release a rollback would return to.
    History {
        service: String,
        reply: oneshot::Sender<Result<HistoryAnswer, ManagerError>>,
    },
}

/// Cheap-clone handle to the manager task.
#[derive(Debug, Clone)]
pub struct ManagerHandle {
    tx: mpsc::Sender<Msg>,
}

fn gone() -> ManagerError {
    ManagerError::ShuttingDown
}

impl ManagerHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    pub async fn status(&self, services: Vec<String>) -> Result<Vec<ServiceStatus>, ManagerError> {
        self.ask(|reply| Msg::Status { services, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }
    pub async fn control(
        &self,
        op: Op,
        services: Vec<String>,
    ) -> Result<Vec<Controlled>, ManagerError> {
        self.ask(|reply| Msg::Control {
            op,
            services,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(gone()))
    }
    pub async fn logs(&self, service: String) -> Result<LogHub, ManagerError> {
        self.ask(|reply| Msg::Logs { service, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }
    /// Follow the status of `services` (all when empty): each receiver sees every published
    /// change, and closes when the service is removed.
    pub async fn watch(
        &self,
        services: Vec<String>,
    ) -> Result<Vec<watch::Receiver<ServiceStatus>>, ManagerError> {
        self.ask(|reply| Msg::Watch { services, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }
    pub async fn reload(&self, dry_run: bool) -> Result<ReloadReport, ManagerError> {
        self.ask(|reply| Msg::Reload { dry_run, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }
    pub async fn shutdown(&self) {
        self.ask(|reply| Msg::Shutdown { reply }).await;
    }
    pub async fn supervisor(&self, service: String) -> Result<SupervisorHandle, ManagerError> {
        self.ask(|reply| Msg::Supervisor { service, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }
    pub async fn history(
        &self,
        service: String,
    ) -> Result<(Vec<HistoryEntry>, Option<String>), ManagerError> {
        self.ask(|reply| Msg::History { service, reply })
            .await
            .unwrap_or_else(|| Err(gone()))
    }
    /// True when the manager answered.
    pub async fn ping(&self) -> bool {
        self.ask(|reply| Msg::Ping { reply }).await.is_some()
    }
}

/// One registered service.
enum Entry {
    Supervised {
        handle: SupervisorHandle,
        unit: Arc<Unit>,
        /// The service's status channel, kept to give it a new supervisor after a crash.
        status: watch::Sender<ServiceStatus>,
    },
    /// Failed validation: visible as `bad-setting`, never started. Keeps its status sender so
    /// dependents can see it.
    Bad {
        status: watch::Sender<ServiceStatus>,
    },
}

impl Entry {
    fn status(&self) -> watch::Receiver<ServiceStatus> {
        match self {
            Entry::Supervised { handle, .. } => handle.status.clone(),
            Entry::Bad { status } => status.subscribe(),
        }
    }
}

/// The manager task's state.
pub struct Manager {
    config: Config,
    services: BTreeMap<String, Entry>,
    shared: Shared,
    persisted: PersistedState,
    history: crate::manager::history::History,
    /// Writes state and history files off the async runtime, in order.
    writer: crate::state::Writer,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Told about reloaded `[alerts]` and units (never awaited).
    alerts: Option<AlertHandle>,
}

impl Manager {
    /// Register every unit of `config` and start those the operator hasn't stopped.
    /// Finished deploys arrive on `records` (the receiver of `shared.recorder`).
    pub fn start(
        config: Config,
        shared: Shared,
        records: mpsc::UnboundedReceiver<supervisor::RecordRequest>,
        writer: crate::state::Writer,
        cancel: CancellationToken,
        tracker: TaskTracker,
        alerts: Option<AlertHandle>,
    ) -> (ManagerHandle, tokio::task::JoinHandle<()>) {
        let persisted = PersistedState::load(&config.daemon.state_dir);
        let history = crate::manager::history::History::load(&config.daemon.state_dir);
        let mut m = Manager {
            history,
            writer,
            config,
            services: BTreeMap::new(),
            shared,
            persisted,
            cancel,
            tracker,
            alerts,
        };
        let units: Vec<(String, UnitEntry)> = m
            .config
            .units
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.register(units, true);
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(m.run(rx, records));
        (ManagerHandle { tx }, task)
    }

    fn state_dir(&self) -> PathBuf {
        self.config.daemon.state_dir.clone()
    }

    /// Create status channels for all `units`, then their supervisors (so every dependency's
    /// watch exists before a dependent looks at it).
    fn register(&mut self, units: Vec<(String, UnitEntry)>, boot: bool) {
        let mut pending = Vec::new();
        for (name, entry) in units {
            match entry {
                UnitEntry::Bad { errors, .. } => {
                    let text = errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n");
                    tracing::error!(service = %name, "unit is invalid, not started:\n{text}");
                    let status = ServiceStatus::bad_setting(&name, text);
                    let tx = match self.services.remove(&name) {
                        Some(Entry::Bad { status: tx }) => {
                            tx.send_replace(status);
                            tx
                        }
                        _ => watch::channel(status).0,
                    };
                    self.services.insert(name, Entry::Bad { status: tx });
                }
                UnitEntry::Ok(unit) => {
                    let start = !boot
                        || !self
                            .persisted
                            .services
                            .get(&name)
                            .is_some_and(|s| s.stopped);
                    let release = self.release_of(&unit);
                    let mut initial = ServiceStatus::new(&name, &release);
                    initial.want_up = start;
                    // A unit that was bad and is fixed by a reload keeps its status channel:
                    // its dependents already watch it.
                    let tx = match self.services.remove(&name) {
                        Some(Entry::Bad { status }) => {
                            status.send_replace(initial);
                            status
                        }
                        _ => watch::channel(initial).0,
                    };
                    pending.push((unit, tx, start));
                }
            }
        }
        let mut created: Vec<(Arc<Unit>, watch::Sender<ServiceStatus>, bool)> = Vec::new();
        // Insert placeholders first so dependency lookups find the new watches.
        for (unit, tx, start) in pending {
            self.services
                .insert(unit.name.clone(), Entry::Bad { status: tx.clone() });
            created.push((unit, tx, start));
        }
        for (unit, tx, start) in created {
            let handle = self.spawn_supervisor(&unit, tx.clone(), start);
            self.services.insert(
                unit.name.clone(),
                Entry::Supervised {
                    handle,
                    unit,
                    status: tx,
                },
            );
        }
    }

    fn spawn_supervisor(
        &self,
        unit: &Arc<Unit>,
        status: watch::Sender<ServiceStatus>,
        start: bool,
    ) -> SupervisorHandle {
        let spec = supervisor::SupervisorSpec {
            unit: unit.clone(),
            release: self.release_of(unit),
            status,
            deps: self.dep_watches(unit),
            start,
        };
        supervisor::spawn_supervisor(
            spec,
            self.shared.clone(),
            self.cancel.clone(),
            &self.tracker,
        )
    }

    /// A service whose supervisor crashed (its processes were killed, it shows `failed`) gets
    /// a new one, stopped, before an operator's command or a reload reaches it.
    fn revive(&mut self, name: &str) {
        let Some(Entry::Supervised {
            handle,
            unit,
            status,
        }) = self.services.get(name)
        else {
            return;
        };
        if !handle.commands.is_closed() || self.cancel.is_cancelled() {
            return;
        }
        tracing::warn!(service = %name, "giving a new supervisor to a service whose supervisor crashed");
        let (unit, status) = (unit.clone(), status.clone());
        let handle = self.spawn_supervisor(&unit, status.clone(), false);
        self.services.insert(
            name.to_owned(),
            Entry::Supervised {
                handle,
                unit,
                status,
            },
        );
    }

    fn release_of(&self, unit: &Unit) -> String {
        self.persisted
            .services
            .get(&unit.name)
            .and_then(|s| s.release.clone())
            .unwrap_or_else(|| unit.release.clone())
    }

    /// How long dependents wait for `name` to become healthy.
    fn health_bound(&self, name: &str) -> Option<Duration> {
        let Some(UnitEntry::Ok(unit)) = self.config.units.get(name) else {
            return None;
        };
        let h = unit.health.as_ref()?;
        Some(
            h.start_period
                .saturating_add(h.interval.saturating_mul(h.retries))
                .saturating_add(h.timeout),
        )
    }

    fn dep_watches(&self, unit: &Unit) -> Vec<DepWatch> {
        let mut deps = Vec::new();
        for (names, required) in [(&unit.requires, true), (&unit.after, false)] {
            for name in names {
                if let Some(entry) = self.services.get(name) {
                    deps.push(DepWatch {
                        name: name.clone(),
                        required,
                        status: entry.status(),
                        health_bound: self.health_bound(name),
                    });
                }
            }
        }
        deps
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut records: mpsc::UnboundedReceiver<supervisor::RecordRequest>,
    ) {
        loop {
            let msg = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => msg,
                    None => return,
                },
                Some(record) = records.recv() => {
                    self.record(record);
                    continue;
                }
            };
            match msg {
                Msg::Status { services, reply } => {
                    let _ = reply.send(self.status(&services));
                }
                Msg::Control {
                    op,
                    services,
                    reply,
                } => {
                    let _ = reply.send(self.control(op, &services));
                }
                Msg::Logs { service, reply } => {
                    let _ = reply.send(self.logs(&service));
                }
                Msg::Watch { services, reply } => {
                    let _ = reply.send(self.watch(&services));
                }
                Msg::Reload { dry_run, reply } => {
                    let _ = reply.send(self.reload(dry_run).await);
                }
                Msg::Shutdown { reply } => {
                    self.shutdown().await;
                    // Deploys ended by the shutdown asked to be recorded meanwhile.
                    while let Ok(record) = records.try_recv() {
                        self.record(record);
                    }
                    let _ = reply.send(());
                    return;
                }
                Msg::Ping { reply } => {
                    let _ = reply.send(());
                }
                Msg::Supervisor { service, reply } => {
                    let _ = reply.send(self.supervisor(&service));
                }
                Msg::History { service, reply } => {
                    let _ = reply.send(self.history(&service));
                }
            }
        }
    }

    fn lookup(&self, services: &[String]) -> Result<Vec<String>, ManagerError> {
        if services.is_empty() {
            return Ok(self.services.keys().cloned().collect());
        }
        let unknown: Vec<&str> = services
            .iter()
            .filter(|s| !self.services.contains_key(*s))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let known = self.services.keys().cloned().collect();
            return Err(ManagerError::NoSuchService {
                unknown: unknown.into_iter().map(str::to_owned).collect(),
                known,
            });
        }
        Ok(services.to_vec())
    }

    fn status(&self, services: &[String]) -> Result<Vec<ServiceStatus>, ManagerError> {
        let names = self.lookup(services)?;
        Ok(names
            .iter()
            .filter_map(|n| self.services.get(n))
            .map(|e| e.status().borrow().clone())
            .collect())
    }

    fn watch(
        &self,
        services: &[String],
    ) -> Result<Vec<watch::Receiver<ServiceStatus>>, ManagerError> {
        let names = self.lookup(services)?;
        Ok(names
            .iter()
            .filter_map(|n| self.services.get(n))
            .map(Entry::status)
            .collect())
    }

    fn logs(&self, service: &str) -> Result<LogHub, ManagerError> {
        self.lookup(&[service.to_owned()])?;
        match self.services.get(service) {
            Some(Entry::Supervised { handle, .. }) => Ok(handle.logs.clone()),
            _ => Err(ManagerError::NeverRan {
                service: service.to_owned(),
            }),
        }
    }

    fn control(&mut self, op: Op, services: &[String]) -> Result<Vec<Controlled>, ManagerError> {
        if services.is_empty() {
            return Err(ManagerError::NoServiceNamed);
        }
        let names = self.lookup(services)?;
        let mut out = Vec::new();
        for name in &names {
            if let Some(Entry::Bad { status }) = self.services.get(name) {
                if op != Op::Stop && op != Op::Reset {
                    let errors = status.borrow().reason.clone().unwrap_or_default();
                    return Err(ManagerError::InvalidUnit {
                        service: name.clone(),
                        errors,
                    });
                }
            }
        }
        for name in &names {
            self.revive(name);
            let handle = match self.services.get(name) {
                Some(Entry::Supervised { handle, .. }) => handle,
                // Stop/reset of an invalid unit: nothing to do; report it as it is.
                Some(Entry::Bad { status }) => {
                    let (ack, acked) = oneshot::channel();
                    let _ = ack.send(());
                    out.push((status.subscribe(), acked));
                    continue;
                }
                None => continue,
            };
            let (ack, acked) = oneshot::channel();
            handle.send(supervisor::Command::Control { op, ack: Some(ack) });
            out.push((handle.status.clone(), acked));
            if matches!(op, Op::Start | Op::Stop | Op::Restart) {
                self.persisted
                    .services
                    .entry(name.clone())
                    .or_default()
                    .stopped = op == Op::Stop;
            }
        }
        // The operator's intent is on disk before the command is answered: the last
        // target's acknowledgement waits for the write too (the handler awaits them all).
        let written = self.save_acked();
        if let Some((rx, acked)) = out.pop() {
            let (ack, both) = oneshot::channel();
            tokio::spawn(async move {
                let _ = acked.await;
                if let Ok(Err(e)) = written.await {
                    tracing::error!(error = %e, "cannot persist state");
                }
                let _ = ack.send(());
            });
            out.push((rx, both));
        }
        Ok(out)
    }

    fn save(&self) {
        self.persisted
            .save_with(&self.state_dir(), &self.writer, None);
    }

    /// Save, and hear when it is written.
    fn save_acked(&self) -> oneshot::Receiver<Result<(), String>> {
        let (ack, written) = oneshot::channel();
        self.persisted
            .save_with(&self.state_dir(), &self.writer, Some(ack));
        written
    }

    async fn shutdown(&mut self) {
        let levels = order::stop_levels(&self.config);
        tracing::info!("stopping all services");
        for level in levels {
            let mut waits = Vec::new();
            for name in level {
                if let Some(Entry::Supervised { handle, unit, .. }) = self.services.get(&name) {
                    handle.send(supervisor::Command::op(Op::Stop));
                    waits.push((handle.status.clone(), unit.stop.timeout));
                }
            }
            for (mut rx, timeout) in waits {
                let deadline = Instant::now().later(timeout.saturating_add(Duration::from_secs(2)));
                let _ = tokio::time::timeout_at(deadline, rx.wait_for(|s| is_down(s.state))).await;
            }
        }
        self.cancel.cancel();
    }
}

/// Not running and not about to: stopped, failed, exited or never valid.
pub fn is_down(state: State) -> bool {
    matches!(
        state,
        State::Inactive | State::Failed | State::Exited | State::BadSetting
    )
}

/// The service has reached a state worth reporting after a start/restart: ready, or given up.
pub fn is_settled(s: &ServiceStatus) -> bool {
    s.ready
        || matches!(
            s.state,
            State::Failed | State::Exited | State::BadSetting | State::Inactive | State::Backoff
        )
}
