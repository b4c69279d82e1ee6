//! Publishing a supervisor's state: the status snapshot on its `watch` (from the active
//! slot, with both slots and the deploy in progress), then the events that go with it, each
//! carrying the [`Facts`] of that status (what an alert about it quotes).

use std::sync::Arc;

use futures::future::BoxFuture;

use super::ServiceStatus;
use super::deploy::DeployRun;
use super::logs::LogHub;
use super::state::State;
use super::task::Supervisor;
use crate::event::{Event, EventKind, Facts, OutputTail};
use crate::health::ProbeResult;

impl Supervisor {
    /// Queue an event; it goes out after the status that reflects it (see `publish_status`),
    /// so a subscriber that looks at the status on an event sees the new one.
    pub(super) fn publish(&mut self, kind: EventKind) {
        self.events.push(Event::now(&self.unit.name, kind));
    }

    pub(super) fn publish_status(&mut self) {
        let new = self.snapshot();
        let facts = (!self.events.is_empty()).then(|| self.facts(&new));
        self.status.send_if_modified(|s| {
            let mut new = new;
            if s.state == new.state && s.pid == new.pid {
                new.since.clone_from(&s.since);
            }
            if *s == new {
                return false;
            }
            *s = new;
            true
        });
        for mut event in self.events.drain(..) {
            event.facts.clone_from(&facts);
            self.shared.bus.publish(event);
        }
    }

    /// The service as `status` shows it, and its log (read later, by whoever needs it).
    fn facts(&self, status: &ServiceStatus) -> Arc<Facts> {
        Arc::new(Facts {
            release: status.release.clone(),
            restarts: status.restarts,
            pid: status.pid,
            last_probe: status.last_probe.clone(),
            output: Some(Arc::new(self.logs.clone())),
        })
    }

    fn snapshot(&self) -> ServiceStatus {
        let slot = &self.slots[self.active];
        let m = &slot.machine;
        let probes: Vec<ProbeResult> = slot
            .health
            .iter()
            .flat_map(|t| t.results().cloned())
            .collect();
        let reason = self
            .proxy_error
            .clone()
            .or_else(|| m.reason().map(str::to_owned));
        ServiceStatus {
            name: self.unit.name.clone(),
            state: m.state(),
            health: slot.health(),
            pid: slot.instance.as_ref().map(|i| i.pid).filter(|&p| p > 0),
            release: slot.release.clone(),
            restarts: m.restarts(),
            since: super::now_rfc3339(),
            reason,
            waiting_on: if m.state() == State::Starting {
                self.waiting_on.clone()
            } else {
                Vec::new()
            },
            want_up: m.want_up(),
            ready: slot.ready(),
            port: slot.port(&self.unit),
            description: self.unit.description.clone(),
            last_probe: probes.last().cloned(),
            last_failure: slot.health.as_ref().and_then(|t| t.last_failure().cloned()),
            probes,
            deploying: self.deploy.as_ref().map(DeployRun::describe),
            slots: self.slot_statuses(),
        }
    }

    fn slot_statuses(&self) -> Vec<super::SlotStatus> {
        if self.unit.deploy.is_none() {
            return vec![];
        }
        self.slots
            .iter()
            .map(|s| super::SlotStatus {
                slot: s.index,
                active: s.index == self.active,
                port: s.port(&self.unit),
                release: s.release.clone(),
                state: s.machine.state(),
                health: s.health(),
                pid: s.instance.as_ref().map(|i| i.pid),
                open: self.proxy.as_ref().map_or(0, |p| p.stats().open(s.index)),
            })
            .collect()
    }
}

impl OutputTail for LogHub {
    fn last_lines(&self, n: usize) -> BoxFuture<'static, Vec<String>> {
        let hub = self.clone();
        Box::pin(async move { hub.tail(n).await.into_iter().map(|l| l.line).collect() })
    }
}
