//! Health checks on orchd's own schedule: probers (http, tcp, exec) and the pure tracker that
//! turns probe results into the health axis (`starting | healthy | unhealthy`).
//!
//! A supervisor starts one [`Prober`] task per running instance; each probe is bounded by the
//! unit's `timeout` and runs in that task, so a hanging endpoint never delays other services.
//! Results go back to the supervisor, which owns the [`Tracker`].

mod tracker;

pub mod probe;
pub use probe::{ProbeClients, ProbeTarget, Prober};
pub use tracker::{Tracker, Transition};

use serde::{Deserialize, Serialize};

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

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    /// When the probe started, RFC 3339 UTC.
    pub time: String,
    pub duration_ms: u64,
    /// HTTP status code, for http probes that got a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// "HTTP 200", "connected", "exit status 0", or what went wrong.
    pub detail: String,
}

impl std::fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} after {} ms", self.detail, self.duration_ms)
    }
}
