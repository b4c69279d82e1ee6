//! How a deploy ends: rolled back (switch back while the previous release still runs),
//! aborted by a stop or shutdown, or finished — with its event, the final message to the client
//! and, on success, the normal restart policy for the new release.

use serde_json::{Value, json};

use super::DeployMsg;
use super::deploying::{Outcome, Phase};
use super::state::State;
use super::task::Supervisor;
use crate::event::EventKind;

impl Supervisor {
    /// During the watch: switch back to the old release (still running), stop the new one.
    pub(super) async fn roll_back(&mut self, why: String) {
        let Some(d) = &self.deploy else { return };
        let (cand, old) = (d.candidate, d.old);
        let old_runs = self.slots[old].machine.state() == State::Running;
        if old_runs && self.switch_to(old).await.is_ok() {
            self.active = old;
            self.finish(Outcome::RolledBack, Some(why));
        } else {
            self.finish(
                Outcome::Failed,
                Some(format!(
                    "{why}; the previous release is not running, nothing to roll back to"
                )),
            );
        }
        self.stop_slot(cand).await;
    }

    /// `orchctl rollback` while the previous release still runs: a pure switch.
    pub(super) async fn instant_rollback(&mut self) -> Option<Value> {
        let d = self.deploy.as_ref()?;
        let (cand, old, phase) = (d.candidate, d.old, d.phase);
        let final_rx = self.final_listener();
        match phase {
            Phase::Watching { .. } | Phase::Draining { .. }
                if self.slots[old].machine.state() == State::Running =>
            {
                self.roll_back("rolled back by an operator".into()).await;
            }
            // Before the switch: end the deploy as rolled back, stop the new release, and (restart
            // strategy) bring the old one back.
            Phase::Starting { .. } | Phase::StoppingOld | Phase::ClearingSlot => {
                self.active = old;
                self.finish(
                    Outcome::RolledBack,
                    Some("cancelled by an operator's rollback".into()),
                );
                self.stop_slot(cand).await;
                if !matches!(
                    self.slots[old].machine.state(),
                    State::Running | State::Starting
                ) {
                    Box::pin(self.feed(old, super::state::Input::Start)).await;
                }
            }
            _ => return None,
        }
        self.sync_proxy();
        self.publish_status();
        final_rx.and_then(|mut rx| rx.try_recv().ok())
    }

    /// A second receiver of the deploy's final object (for the rollback's own reply).
    pub(super) fn final_listener(&mut self) -> Option<tokio::sync::oneshot::Receiver<Value>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.final_tap = Some(tx);
        Some(rx)
    }

    /// Stop or shutdown during a deploy: end it consistently.
    pub(super) async fn abort_deploy(&mut self, why: &str) {
        let Some(d) = &self.deploy else { return };
        let (cand, old, phase) = (d.candidate, d.old, d.phase);
        match phase {
            Phase::Watching { .. } => self.roll_back(why.to_owned()).await,
            // The new release passed its watch: it stays, whatever stops now.
            Phase::Draining { .. } | Phase::StoppingPrevious => {
                self.finish(Outcome::Succeeded, None);
                self.stop_slot(old).await;
            }
            _ => {
                self.active = old;
                self.finish(Outcome::Failed, Some(why.to_owned()));
                self.stop_slot(cand).await;
            }
        }
    }

    /// End the deploy: event, final message, the candidate's normal restart policy.
    pub(super) fn finish(&mut self, outcome: Outcome, reason: Option<String>) {
        let Some(d) = self.deploy.take() else { return };
        if let Some(p) = &self.proxy {
            p.stats().set_guarded(false);
        }
        if outcome == Outcome::Succeeded {
            self.slots[d.candidate]
                .machine
                .reconfigure(self.unit.restart.clone(), self.unit.stop.clone());
        }
        let duration_ms = d.elapsed_ms();
        let (release, to) = match outcome {
            Outcome::Succeeded => (d.release.clone(), d.release.clone()),
            _ => (d.release.clone(), d.previous.clone()),
        };
        let final_obj = json!({
            "deploy_id": d.id,
            "result": outcome.as_str(),
            "release": release,
            "previous": d.previous,
            "active": to,
            "duration_ms": duration_ms,
            "reason": reason,
            "rollback": d.rollback,
        });
        match outcome {
            Outcome::Succeeded => {
                tracing::info!(service = %self.unit.name, deploy = %d.id, release = %d.release, duration_ms, "deploy succeeded")
            }
            _ => {
                tracing::warn!(service = %self.unit.name, deploy = %d.id, release = %d.release, result = outcome.as_str(), "deploy did not succeed: {}", reason.clone().unwrap_or_default())
            }
        }
        let event = match outcome {
            Outcome::Succeeded => EventKind::DeploySucceeded {
                deploy_id: d.id.clone(),
                release: d.release.clone(),
                previous: d.previous.clone(),
                duration_ms,
                who: d.who.clone(),
                rollback: d.rollback,
            },
            Outcome::Failed => EventKind::DeployFailed {
                deploy_id: d.id.clone(),
                release: d.release.clone(),
                previous: d.previous.clone(),
                reason: reason.clone().unwrap_or_default(),
                duration_ms,
                who: d.who.clone(),
            },
            Outcome::RolledBack => EventKind::RolledBack {
                deploy_id: d.id.clone(),
                release: d.release.clone(),
                to: d.previous.clone(),
                reason: reason.clone().unwrap_or_default(),
                duration_ms,
                who: d.who.clone(),
            },
        };
        self.publish(event);
        if let Some(tap) = self.final_tap.take() {
            let _ = tap.send(final_obj.clone());
        }
        let _ = d.progress.send(DeployMsg::Done(final_obj));
    }
}
