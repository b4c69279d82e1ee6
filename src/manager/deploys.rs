//! The manager's part in deploys: hand the handler a service's supervisor, answer history and
//! "previous release" questions, and — on deploy events from the bus — persist the new active
//! release and append to the release history.

use super::ManagerError;
use super::{Entry, Manager};
use crate::config::UnitEntry;
use crate::deploy::history::HistoryEntry;
use crate::event::{Event, EventKind};
use crate::supervisor::SupervisorHandle;

/// History kept when a unit has no `[deploy] keep_releases`.
const DEFAULT_KEEP: usize = 5;

impl Manager {
    pub(super) fn supervisor(&self, service: &str) -> Result<SupervisorHandle, ManagerError> {
        self.lookup(&[service.to_owned()])?;
        match self.services.get(service) {
            Some(Entry::Supervised { handle, .. }) => Ok(handle.clone()),
            _ => Err(ManagerError::NotDeployable {
                service: service.to_owned(),
            }),
        }
    }

    /// The service's history (newest last) and the release a rollback would go back to.
    pub(super) fn history(&self, service: &str) -> Result<super::HistoryAnswer, ManagerError> {
        self.lookup(&[service.to_owned()])?;
        let current = self
            .services
            .get(service)
            .map(|e| e.status().borrow().release.clone())
            .unwrap_or_default();
        let list = self.history.of(service).to_vec();
        Ok((list, self.history.previous_release(service, &current)))
    }

    /// Persist what a finished deploy changed.
    pub(super) fn on_event(&mut self, event: &Event) {
        let service = event.service.as_str();
        // (deploy id, release, previous, result, duration, who, reason, asked as a rollback)
        let (deploy_id, release, previous, result, duration_ms, who, reason, rollback) =
            match &event.kind {
                EventKind::DeploySucceeded {
                    deploy_id,
                    release,
                    previous,
                    duration_ms,
                    who,
                    rollback,
                } => (
                    deploy_id,
                    release,
                    previous,
                    "succeeded",
                    *duration_ms,
                    who,
                    None,
                    *rollback,
                ),
                EventKind::DeployFailed {
                    deploy_id,
                    release,
                    previous,
                    reason,
                    duration_ms,
                    who,
                } => (
                    deploy_id,
                    release,
                    previous,
                    "failed",
                    *duration_ms,
                    who,
                    Some(reason),
                    false,
                ),
                EventKind::RolledBack {
                    deploy_id,
                    release,
                    to,
                    reason,
                    duration_ms,
                    who,
                } => (
                    deploy_id,
                    release,
                    to,
                    "rolled_back",
                    *duration_ms,
                    who,
                    Some(reason),
                    false,
                ),
                _ => return,
            };
        if result == "succeeded" {
            self.persisted
                .services
                .entry(service.to_owned())
                .or_default()
                .release = Some(release.clone());
            self.save();
        }
        let finished = humantime::parse_rfc3339_weak(&event.time)
            .unwrap_or_else(|_| std::time::SystemTime::now());
        let started = finished
            .checked_sub(std::time::Duration::from_millis(duration_ms))
            .unwrap_or(finished);
        let entry = HistoryEntry {
            deploy_id: deploy_id.clone(),
            release: release.clone(),
            previous: previous.clone(),
            result: result.to_owned(),
            started: humantime::format_rfc3339_seconds(started).to_string(),
            finished: event.time.clone(),
            duration_ms,
            who: who.clone(),
            reason: reason.cloned(),
            rollback,
        };
        let keep = match self.config.units.get(service) {
            Some(UnitEntry::Ok(u)) => u
                .deploy
                .as_ref()
                .map_or(DEFAULT_KEEP, |d| d.keep_releases as usize),
            _ => DEFAULT_KEEP,
        };
        if let Err(e) = self.history.append(service, entry, keep) {
            tracing::error!(service, error = %e, "cannot write deploy history");
        }
    }
}
