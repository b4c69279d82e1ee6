//! Per-service supervision: one task per service owns its state machine and instances.
//!
//! The manager creates a supervisor task per unit and talks to it through a [`SupervisorHandle`]
//! (commands over `mpsc`, the latest [`ServiceStatus`] from a `watch`). The task feeds inputs
//! (commands, exits from the reaper, deadlines, dependency changes) to the pure
//! [`state::Machine`] and performs the actions it returns.

pub mod deploy;
pub mod deps;
mod instance;
pub mod logs;
mod probing;
pub mod restart;
pub mod spec;
pub mod state;
mod status;
mod switching;
mod task;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::health::Health;
pub use state::State;
pub use task::{Shared, SupervisorSpec, spawn_supervisor};

use crate::config::Unit;

/// The latest snapshot of one service, published on its `watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    pub health: Health,
    pub pid: Option<i32>,
    pub release: String,
    pub restarts: u32,
    /// When the service entered its current state, RFC 3339 UTC.
    pub since: String,
    /// Why it is in this state (waiting for a dependency, gave up, the unit's errors, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In `starting`: the dependencies it waits for. orchd's own readiness notification uses it
    /// to tell "about to start" from "stuck behind a failing dependency"; not part of the API.
    #[serde(skip)]
    pub waiting_on: Vec<String>,
    /// The operator (or start-up) wants it running.
    pub want_up: bool,
    /// Running and healthy (or running with no health check): dependents and deploys may go on.
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The most recent health probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<crate::health::ProbeResult>,
    /// The most recent failed probe of the running instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<crate::health::ProbeResult>,
    /// The last 10 probe results, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<crate::health::ProbeResult>,
    /// The deploy in progress, e.g. "v42 (watching)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploying: Option<String>,
    /// Both slots of a `[deploy]` service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotStatus>,
}

/// One slot of a `[deploy]` service, in status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub slot: usize,
    pub active: bool,
    pub port: Option<u16>,
    pub release: String,
    pub state: State,
    pub health: Health,
    pub pid: Option<i32>,
    /// Open connections (tcp) or in-flight requests (http) through the proxy.
    pub open: usize,
}

impl ServiceStatus {
    /// A fresh, inactive status.
    pub fn new(name: &str, release: &str) -> Self {
        ServiceStatus {
            name: name.to_owned(),
            state: State::Inactive,
            health: Health::None,
            pid: None,
            release: release.to_owned(),
            restarts: 0,
            since: now_rfc3339(),
            reason: None,
            waiting_on: Vec::new(),
            want_up: false,
            ready: false,
            port: None,
            description: None,
            last_probe: None,
            last_failure: None,
            probes: Vec::new(),
            deploying: None,
            slots: Vec::new(),
        }
    }

    /// A unit that failed validation.
    pub fn bad_setting(name: &str, errors: String) -> Self {
        ServiceStatus {
            state: State::BadSetting,
            reason: Some(errors),
            ..Self::new(name, "")
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Commands to a supervisor.
#[derive(Debug)]
pub enum Command {
    /// An operator (or start-up, reload, shutdown) command; `ack` is answered once the machine
    /// has taken it and the new status is published.
    Control {
        op: Op,
        ack: Option<oneshot::Sender<()>>,
    },
    /// Deploy a release; progress and the result go to `progress`. The reply is the deploy
    /// id once accepted, or why not (another deploy holds the service).
    Deploy {
        request: Box<DeployRequest>,
        progress: mpsc::UnboundedSender<DeployMsg>,
        reply: oneshot::Sender<Result<String, deploy::DeployRefused>>,
    },
    /// Switch back at once if the previous release still runs (during a deploy's watch);
    /// answers the final result, or `None` when a late rollback (a new deploy) is needed.
    Rollback {
        reply: oneshot::Sender<Option<deploy::DeployReport>>,
    },
    /// A reload changed the unit.
    Reconfigure(Box<Reconfigure>),
    /// A deploy's switch command or record has completed (sent by the supervisor's own tasks).
    DeployDone(deploy::DeployDone),
}

/// A changed unit for a running supervisor (boxed in [`Command`], whose every queued slot is
/// as large as its largest variant).
#[derive(Debug)]
pub struct Reconfigure {
    pub unit: Arc<Unit>,
    pub deps: Vec<DepWatch>,
    /// Whether the process must be restarted.
    pub restart: bool,
    /// The release to run from now on (the unit's, unless a deploy chose one).
    pub release: String,
}

/// What to deploy, and who asked.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    pub release: String,
    /// Overrides `deploy.timeout`.
    pub timeout: Option<std::time::Duration>,
    /// "uid 1001 (ci), pid 4242", for events and history.
    pub who: String,
    /// A rollback (recorded as such in history).
    pub rollback: bool,
}

/// Deploy progress to the client that asked.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployMsg {
    Step(deploy::DeployProgress),
    Done(deploy::DeployReport),
}

/// A finished deploy, for the manager to record (history, and with `activate` the new active
/// release) before the deploy is reported: answered once it is written.
#[derive(Debug)]
pub struct RecordRequest {
    pub service: String,
    pub report: deploy::DeployReport,
    /// "uid 1001 (ci), pid 4242".
    pub who: String,
    pub activate: bool,
    pub finished: std::time::SystemTime,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// Operator commands on a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Start,
    Stop,
    Restart,
    Reset,
}

impl Command {
    /// A control command without acknowledgement.
    pub fn op(op: Op) -> Command {
        Command::Control { op, ack: None }
    }
}

/// A dependency's status, watched by its dependents.
#[derive(Debug, Clone)]
pub struct DepWatch {
    pub name: String,
    /// `requires` (true) or only `after` (false).
    pub required: bool,
    pub status: watch::Receiver<ServiceStatus>,
    /// For a dependency with a health check: how long a dependent waits for it to become
    /// healthy (`start_period + retries × interval + timeout`) before giving up.
    pub health_bound: Option<std::time::Duration>,
}

/// Cheap-clone handle to one supervisor task.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    pub name: String,
    pub commands: mpsc::UnboundedSender<Command>,
    pub status: watch::Receiver<ServiceStatus>,
    pub logs: logs::LogHub,
}

impl SupervisorHandle {
    /// Send a command; false when the task has ended.
    pub fn send(&self, cmd: Command) -> bool {
        self.commands.send(cmd).is_ok()
    }
}
