//! Configuration: `orchd.toml` and the unit files in its `units_dir` (DESIGN §3).
//!
//! Loading is two-staged: a serde mirror with `deny_unknown_fields` (`raw.rs`, parsed
//! leniently by `lenient.rs` so every bad key is reported), then validation into the
//! typed structs here (`validate_daemon.rs`, `validate_unit.rs`, `health.rs`) and checks
//! across units (`graph.rs`). Every problem is a [`Diagnostic`] printed as
//! `FILE:LINE:COL: message`. A broken unit does not fail the load: it is a
//! [`UnitEntry::Bad`] that the manager shows as `bad-setting`. Used by `orchd` at start,
//! on reload and for `--check`.

mod daemon;
mod diag;
mod graph;
mod health;
mod lenient;
mod raw;
mod template;
mod unit;
mod validate_daemon;
mod validate_unit;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

use validate_daemon::validate_daemon;
use validate_unit::{Links, UnitCtx, validate_unit};

/// The daemon's settings and every unit file found.
#[derive(Debug, Clone, PartialEq)]
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
    /// Every bad unit's diagnostics, sorted by file, line and column.
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

/// Loads `orchd.toml` at `config_path` and every `units_dir/*.toml`. Fails only when
/// `orchd.toml` is unreadable or invalid, or `units_dir` unreadable; a broken unit
/// becomes [`UnitEntry::Bad`].
pub fn load(config_path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let (daemon, errors) = load_daemon(config_path)?;
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        units: load_units(&daemon)?,
        daemon: daemon.config,
    })
}

/// Every problem in the config and all units, sorted (empty = valid), for `orchd --check`.
/// Unlike [`load`], units are still checked when `orchd.toml` has errors, as long as
/// `units_dir` itself could be read from it.
pub fn check(config_path: &Path) -> Vec<Diagnostic> {
    let (daemon, mut all) = match load_daemon(config_path) {
        Ok(loaded) => loaded,
        Err(errors) => return errors,
    };
    if daemon.units_dir_ok {
        match load_units(&daemon) {
            Ok(units) => all.extend(
                Config {
                    daemon: daemon.config,
                    units,
                }
                .diagnostics(),
            ),
            Err(errors) => all.extend(errors),
        }
    }
    all.sort();
    all
}

/// Reads and validates `orchd.toml`; `Err` only when it cannot be read.
fn load_daemon(
    config_path: &Path,
) -> Result<(validate_daemon::DaemonOutcome, Vec<Diagnostic>), Vec<Diagnostic>> {
    let path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let text = std::fs::read_to_string(&path).map_err(|e| {
        vec![Diagnostic::whole_file(
            &path,
            format!("cannot read config file: {e}"),
        )]
    })?;
    let mut daemon = validate_daemon(&path, &text);
    let errors = std::mem::take(&mut daemon.errors);
    Ok((daemon, errors))
}

fn load_units(
    daemon: &validate_daemon::DaemonOutcome,
) -> Result<BTreeMap<String, UnitEntry>, Vec<Diagnostic>> {
    let dir = &daemon.config.units_dir;
    let unreadable = |e: std::io::Error| {
        vec![
            daemon
                .units_dir_at
                .diag(format!("cannot read units_dir {}: {e}", dir.display())),
        ]
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path);
            files.push(UnitFile { name, path, text });
        }
    }
    let ctx = UnitCtx {
        channels: daemon
            .config
            .alerts
            .channel_names()
            .map(String::from)
            .collect(),
    };
    Ok(build_units(files, dir, &ctx))
}

/// One unit file as read from disk.
struct UnitFile {
    name: String,
    path: PathBuf,
    text: std::io::Result<String>,
}

/// Validates unit files, each on its own and then across each other.
fn build_units(
    files: Vec<UnitFile>,
    units_dir: &Path,
    ctx: &UnitCtx,
) -> BTreeMap<String, UnitEntry> {
    let mut parsed = BTreeMap::new();
    let mut links = BTreeMap::new();
    for f in files {
        let outcome = match &f.text {
            Ok(text) => validate_unit(&f.name, &f.path, text, ctx),
            Err(e) => validate_unit::UnitOutcome {
                unit: None,
                errors: vec![Diagnostic::whole_file(
                    &f.path,
                    format!("cannot read unit file: {e}"),
                )],
                links: Links::default(),
            },
        };
        links.insert(f.name.clone(), outcome.links);
        parsed.insert(f.name, (f.path, outcome.unit, outcome.errors));
    }
    let mut cross = graph::cross_check(&links, units_dir);
    parsed
        .into_iter()
        .map(|(name, (path, unit, mut errors))| {
            errors.extend(cross.remove(&name).unwrap_or_default());
            let entry = match unit {
                Some(unit) if errors.is_empty() => UnitEntry::Ok(Arc::new(unit)),
                _ => {
                    errors.sort();
                    UnitEntry::Bad { path, errors }
                }
            };
            (name, entry)
        })
        .collect()
}

/// Validates one unit file's text on its own, against the alert `channels` of
/// `orchd.toml`, without the checks across units. For tools and tests.
pub fn load_unit_str(
    name: &str,
    path: &Path,
    text: &str,
    channels: &[&str],
) -> Result<Unit, Vec<Diagnostic>> {
    let ctx = UnitCtx {
        channels: channels.iter().map(|c| c.to_string()).collect(),
    };
    let outcome = validate_unit(name, path, text, &ctx);
    match outcome.unit {
        Some(unit) if outcome.errors.is_empty() => Ok(unit),
        _ => {
            let mut errors = outcome.errors;
            errors.sort();
            Err(errors)
        }
    }
}
