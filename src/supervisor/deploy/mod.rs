//! Deploys (DESIGN §4) of one service, inside its supervisor task.
//!
//! [`machine`] is the procedure as a pure `step(input) -> actions` machine, table-tested in
//! `tests.rs` without processes; `driver.rs` is the supervisor's side: it shows the machine
//! the slots after every change, performs its actions (start or stop a slot, switch, record,
//! report) and feeds back their completions. The values here are what a deploy tells its
//! client and the history, as domain values; `api::proto::deploy` maps them to the wire.

mod driver;
pub mod machine;
#[cfg(test)]
mod tests;

pub(super) use driver::{DeployDone, DeployRun};

/// Why a deploy was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployRefused {
    /// One deploy per service at a time.
    #[error(
        "a deploy of {service} is already running: {running} started by {who} {secs}s ago; wait for it or run `orchctl rollback {service}`"
    )]
    Busy {
        service: String,
        running: String,
        who: String,
        secs: u64,
    },
    #[error(transparent)]
    Release(#[from] crate::config::ReleaseNameError),
    #[error("{0} is monitor-only: there is nothing to deploy")]
    MonitorOnly(String),
}

/// How a release replaces another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Two slots behind the proxy (or a switch command): start, switch, watch, drain.
    PortSwap,
    /// No `[deploy]`: stop the old release, start the new one; on failure the old again.
    Restart,
}

/// The final result of a deploy (*contract*: `succeeded | failed | rolled_back`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    RolledBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
        }
    }
}

/// One step of a deploy, as its client sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Deploying {
        release: String,
        previous: String,
        strategy: Strategy,
    },
    Started {
        release: String,
        pid: i32,
        port: Option<u16>,
        slot: usize,
    },
    Healthy {
        release: String,
        after_ms: u64,
    },
    Switched {
        release: String,
        port: Option<u16>,
    },
    Watching {
        release: String,
        for_ms: u64,
    },
    OldStopped {
        release: String,
    },
}

/// A step with the deploy it belongs to and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployProgress {
    pub deploy_id: String,
    pub elapsed_ms: u64,
    pub step: Step,
}

/// How a deploy ended: the last thing its client hears, and what history records.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployReport {
    pub deploy_id: String,
    pub result: Outcome,
    pub release: String,
    pub previous: String,
    /// The release active now.
    pub active: String,
    pub duration_ms: u64,
    /// Why it did not succeed (or what went wrong around a success); null on a clean one.
    pub reason: Option<String>,
    /// Asked for as a rollback.
    pub rollback: bool,
}
