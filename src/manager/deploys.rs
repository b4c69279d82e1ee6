//! The manager's part in deploys: hand the handler a service's supervisor, answer history and
//! "previous release" questions, and — on deploy events from the bus — persist the new active
//! release and append to the release history.

use super::{Entry, Manager};
use crate::api::proto::{ApiError, ErrorCode};
use crate::config::UnitEntry;
use crate::deploy::history::HistoryEntry;
use crate::event::{Event, EventKind};
use crate::supervisor::SupervisorHandle;

/// History kept when a unit has no `[deploy] keep_releases`.
const DEFAULT_KEEP: usize = 5;

impl Manager {
    pub(super) fn supervisor(&self, service: &str) -> Result<SupervisorHandle, ApiError> {
        self.lookup(&[service.to_owned()])?;
        match self.services.get(service) {
            Some(Entry::Supervised { handle, .. }) => Ok(handle.clone()),
            _ => Err(ApiError::new(
                ErrorCode::Failed,
                format!(
                    "{service} has an invalid unit file; fix it and run `orchctl reload` first"
                ),
            )),
        }
    }

    /// The service's history (newest last) and the release a rollback would go back to.
    pub(super) fn history(&self, service: &str) -> Result<super::HistoryAnswer, ApiError> {
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
        let (entry, new_release) = match &event.kind {
            EventKind::DeploySucceeded {
                deploy_id,
                release,
                previous,
                duration_ms,
                who,
                rollback,
            } => (
                entry(
                    event,
                    deploy_id,
                    release,
                    previous,
                    "succeeded",
                    *duration_ms,
                    who,
                    None,
                    *rollback,
                ),
                Some(release.clone()),
            ),
            EventKind::DeployFailed {
                deploy_id,
                release,
                previous,
                reason,
                duration_ms,
                who,
            } => (
                entry(
                    event,
                    deploy_id,
                    release,
                    previous,
                    "failed",
                    *duration_ms,
                    who,
                    Some(reason),
                    false,
                ),
                None,
            ),
            EventKind::RolledBack {
                deploy_id,
                release,
                to,
                reason,
                duration_ms,
                who,
            } => (
                entry(
                    event,
                    deploy_id,
                    release,
                    to,
                    "rolled_back",
                    *duration_ms,
                    who,
                    Some(reason),
                    false,
                ),
                None,
            ),
            _ => return,
        };
        if let Some(release) = new_release {
            self.persisted
                .services
                .entry(service.to_owned())
                .or_default()
                .release = Some(release);
            self.save();
        }
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

#[allow(clippy::too_many_arguments)]
fn entry(
    event: &Event,
    deploy_id: &str,
    release: &str,
    previous: &str,
    result: &str,
    duration_ms: u64,
    who: &str,
    reason: Option<&String>,
    rollback: bool,
) -> HistoryEntry {
    let finished =
        humantime::parse_rfc3339_weak(&event.time).unwrap_or_else(|_| std::time::SystemTime::now());
    let started = finished
        .checked_sub(std::time::Duration::from_millis(duration_ms))
        .unwrap_or(finished);
    HistoryEntry {
        deploy_id: deploy_id.to_owned(),
        release: release.to_owned(),
        previous: previous.to_owned(),
        result: result.to_owned(),
        started: humantime::format_rfc3339_seconds(started).to_string(),
        finished: event.time.clone(),
        duration_ms,
        who: who.to_owned(),
        reason: reason.cloned(),
        rollback,
    }
}
