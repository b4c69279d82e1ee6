//! Reload: re-read the configuration, diff it against the running one, apply only what changed.
//!
//! An invalid new configuration (orchd.toml or any unit) changes nothing: every error is
//! returned and all services run on as they were.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ManagerError;
use super::{Entry, Manager};
use crate::config::{self, Config, Unit, UnitEntry};
use crate::supervisor;

/// What a reload did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub dry_run: bool,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed in a way that needs a new process.
    pub restarted: Vec<String>,
    /// Changed, applied without touching the process.
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    /// Settings that need a restart of orchd itself to apply.
    pub notes: Vec<String>,
}

fn ok_unit(entry: Option<&UnitEntry>) -> Option<&Arc<Unit>> {
    match entry {
        Some(UnitEntry::Ok(u)) => Some(u),
        _ => None,
    }
}

/// Compare two configurations.
pub fn plan(old: &Config, new: &Config) -> ReloadReport {
    let mut r = ReloadReport::default();
    let names: BTreeSet<&String> = old.units.keys().chain(new.units.keys()).collect();
    for name in names {
        let (o, n) = (old.units.get(name), new.units.get(name));
        match (ok_unit(o), ok_unit(n)) {
            (_, None) if n.is_none() => r.removed.push(name.clone()),
            (None, Some(_)) => r.added.push(name.clone()),
            (Some(a), Some(b)) if a == b => r.unchanged.push(name.clone()),
            (Some(a), Some(b)) if a.needs_restart(b) => r.restarted.push(name.clone()),
            (Some(_), Some(_)) => r.updated.push(name.clone()),
            _ => r.unchanged.push(name.clone()),
        }
    }
    let (a, b) = (&old.daemon, &new.daemon);
    if a.api != b.api {
        r.notes
            .push("[api] changed: restart orchd to apply it".into());
    }
    if a.state_dir != b.state_dir || a.units_dir != b.units_dir {
        r.notes
            .push("units_dir/state_dir changed: a reload refuses this; restart orchd".into());
    }
    if a.metrics != b.metrics {
        r.notes
            .push("[metrics] changed: restart orchd to apply it".into());
    }
    r
}

impl Manager {
    /// Re-read the configuration (on a blocking thread: unit files, `env`/NSS lookups and
    /// the like must not hold an async worker) and apply what changed.
    pub(super) async fn reload(&mut self, dry_run: bool) -> Result<ReloadReport, ManagerError> {
        let path = self.config.daemon.path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
        let new = match loaded {
            Ok(result) => result.map_err(invalid)?,
            Err(e) => {
                return Err(invalid(vec![config::Diagnostic::whole_file(
                    &self.config.daemon.path,
                    format!("reading the configuration failed: {e}"),
                )]));
            }
        };
        let errors = new.diagnostics();
        if !errors.is_empty() {
            return Err(invalid(errors));
        }
        let (a, b) = (&self.config.daemon, &new.daemon);
        if a.units_dir != b.units_dir || a.state_dir != b.state_dir {
            return Err(ManagerError::DirsChanged);
        }
        let mut report = plan(&self.config, &new);
        report.dry_run = dry_run;
        if dry_run {
            return Ok(report);
        }
        tracing::info!(added = ?report.added, removed = ?report.removed, restarted = ?report.restarted, updated = ?report.updated, "reloading");
        for name in &report.removed {
            self.remove(name);
        }
        let mut new = new;
        // What only a restart of orchd applies stays as it runs, so later reloads still say so.
        new.daemon.api = self.config.daemon.api.clone();
        new.daemon.metrics = self.config.daemon.metrics.clone();
        let old = std::mem::replace(&mut self.config, new);
        let added: Vec<(String, UnitEntry)> = report
            .added
            .iter()
            .filter_map(|n| self.config.units.get(n).map(|e| (n.clone(), e.clone())))
            .collect();
        self.register(added, false);
        for (name, restart) in report
            .restarted
            .iter()
            .map(|n| (n, true))
            .chain(report.updated.iter().map(|n| (n, false)))
        {
            let Some(unit) = ok_unit(self.config.units.get(name)).cloned() else {
                continue;
            };
            self.revive(name);
            let deps = self.dep_watches(&unit);
            let release = self.release_of(&unit);
            if let Some(Entry::Supervised {
                handle,
                unit: current,
                ..
            }) = self.services.get_mut(name)
            {
                handle.send(supervisor::Command::Reconfigure(Box::new(
                    supervisor::Reconfigure {
                        unit: unit.clone(),
                        deps,
                        restart,
                        release: release.clone(),
                    },
                )));
                *current = unit;
            }
        }
        drop(old);
        self.shared
            .env
            .update(&self.config.daemon.secret_env_names());
        if let Some(alerts) = &self.alerts {
            alerts.reconfigure(self.config.daemon.alerts.clone(), self.config.units.clone());
        }
        Ok(report)
    }

    /// Stop a removed service gracefully, then let its task end.
    fn remove(&mut self, name: &str) {
        let Some(entry) = self.services.remove(name) else {
            return;
        };
        self.persisted.services.remove(name);
        self.save();
        if let Entry::Supervised { handle, unit, .. } = entry {
            handle.send(supervisor::Command::op(supervisor::Op::Stop));
            let grace = unit
                .stop
                .timeout
                .saturating_add(std::time::Duration::from_secs(2));
            tokio::spawn(async move {
                let mut rx = handle.status.clone();
                let _ = tokio::time::timeout(grace, rx.wait_for(|s| super::is_down(s.state))).await;
                drop(handle);
            });
        }
    }
}

fn invalid(errors: Vec<config::Diagnostic>) -> ManagerError {
    ManagerError::InvalidConfig {
        errors: errors.iter().map(ToString::to_string).collect(),
    }
}
