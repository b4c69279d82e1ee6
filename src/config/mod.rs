//! Configuration: `orchd.toml` and the unit files in its `units_dir` (DESIGN §3).
//!
//! Loading (`load.rs`) is two-staged: a serde mirror with `deny_unknown_fields`
//! (`raw.rs`, parsed leniently by `lenient.rs` so every bad key is reported), then
//! validation (`validate_daemon.rs`, `validate_unit.rs`, `health.rs`) into the typed
//! structs of `daemon.rs` and `unit.rs`, and checks across units (`graph.rs`). Every problem is a [`Diagnostic`] printed as
//! `FILE:LINE:COL: message`. A broken unit does not fail the load: it is a
//! [`UnitEntry::Bad`] that the manager shows as `bad-setting`. Used by `orchd` at start,
//! on reload and for `--check`.

pub mod bounds;
mod daemon;
mod diag;
mod graph;
mod health;
mod lenient;
mod load;
mod names;
mod raw;
mod template;
mod unit;
mod validate_daemon;
mod validate_unit;
mod values;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use daemon::{
    AlertsConfig, ApiConfig, DaemonConfig, DbusMode, EmailChannel, GRANT_COMMANDS, Grant,
    MetricsConfig, Principal, Secret, SecretSource, TlsMode, WebhookChannel, WebhookFormat,
};
pub use diag::Diagnostic;
pub use template::substitute;
pub use unit::{
    DeployConfig, HealthCheck, HealthConfig, OnUnhealthy, ProxyMode, RestartConfig, RestartPolicy,
    StopConfig, SwitchMode, Unit,
};

pub use names::{
    MAX_RELEASE_LEN, RELEASE_RULE, ReleaseNameError, check_release, valid_service_name,
};

pub use load::{CheckReport, check, load, load_unit_str};

/// The daemon's settings and every unit file found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub daemon: DaemonConfig,
    /// By service name (the file stem).
    pub units: BTreeMap<String, UnitEntry>,
}

/// A unit file: valid, or kept with its errors so it stays visible as `bad-setting`.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitEntry {
    Ok(Arc<Unit>),
    Bad {
        path: PathBuf,
        errors: Vec<Diagnostic>,
    },
}

impl Config {
    /// Every bad unit's diagnostics, sorted by file, line and column. (Errors in
    /// `orchd.toml` make [`load`] fail, so a loaded config has none of those; [`check`]
    /// reports both.)
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut all: Vec<Diagnostic> = self
            .units
            .values()
            .filter_map(|u| match u {
                UnitEntry::Bad { errors, .. } => Some(errors.iter().cloned()),
                UnitEntry::Ok(_) => None,
            })
            .flatten()
            .collect();
        all.sort();
        all
    }
}
