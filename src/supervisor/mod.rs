//! Per-service supervision: one task per service owns its state machine and instances.
//!
//! The manager creates a [`Supervisor`] per unit and talks to it through a [`SupervisorHandle`]
//! (commands over `mpsc`, the latest [`ServiceStatus`] from a `watch`). The task feeds inputs
//! (commands, exits from the reaper, deadlines, dependency changes) to the pure
//! [`state::Machine`] and performs the actions it returns.

pub mod cgroup;
pub mod logs;
pub mod process;
pub mod restart;
pub mod spec;
pub mod state;
mod task;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

pub use state::State;
pub use task::{Shared, SupervisorSpec, spawn_supervisor};

use crate::config::Unit;

/// Health axis, separate from the state (*contract*: the names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::None => "none",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

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
    /// A reload changed the unit; `restart` says whether the process must be restarted.
    Reconfigure {
        unit: Arc<Unit>,
        deps: Vec<DepWatch>,
        restart: bool,
    },
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
