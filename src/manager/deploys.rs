//! The manager's part in deploys: hand the handler a service's supervisor, answer history and
//! "previous release" questions, and record finished deploys (history, the new active
//! release) when their supervisor asks, acknowledging once written.

use super::ManagerError;
use super::{Entry, Manager};
use crate::config::UnitEntry;
use crate::manager::history::HistoryEntry;
use crate::supervisor::{RecordRequest, SupervisorHandle};

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

    /// Record a finished deploy: its history entry and, when it succeeded, the new active
    /// release. Written by the state writer in order; the supervisor hears once both are on
    /// disk, and only then reports the deploy (so "succeeded" is never said of a release a
    /// restart of orchd would forget).
    pub(super) fn record(&mut self, req: RecordRequest) {
        let RecordRequest {
            service,
            report,
            who,
            activate,
            finished,
            reply,
        } = req;
        let started = finished
            .checked_sub(std::time::Duration::from_millis(report.duration_ms))
            .unwrap_or(finished);
        let entry = HistoryEntry {
            deploy_id: report.deploy_id.clone(),
            release: report.release.clone(),
            previous: report.previous.clone(),
            result: report.result.as_str().to_owned(),
            started: humantime::format_rfc3339_seconds(started).to_string(),
            finished: humantime::format_rfc3339_millis(finished).to_string(),
            duration_ms: report.duration_ms,
            who,
            reason: report.reason.clone(),
            rollback: report.rollback,
        };
        let keep = match self.config.units.get(&service) {
            Some(UnitEntry::Ok(u)) => u
                .deploy
                .as_ref()
                .map_or(DEFAULT_KEEP, |d| d.keep_releases as usize),
            _ => DEFAULT_KEEP,
        };
        let mut reply = Some(reply);
        match self.history.record(&service, entry, keep) {
            Ok((path, bytes)) => {
                let ack = if activate { None } else { reply.take() };
                self.writer.write(path, bytes, ack);
            }
            Err(e) => tracing::error!(service, error = %e, "cannot encode deploy history"),
        }
        if activate {
            self.persisted.services.entry(service).or_default().release = Some(report.release);
            self.persisted
                .save_with(&self.state_dir(), &self.writer, reply.take());
        }
        if let Some(reply) = reply {
            let _ = reply.send(Err("cannot encode deploy history".into()));
        }
    }
}
