//! The supervisor's side of health checks: start and stop a slot's prober, and turn its
//! results into health, events, readiness and (with `on_unhealthy = "restart"`) a restart.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::spec::{self, InstanceParams};
use super::state::{Input, State};
use super::task::Supervisor;
use crate::config::{HealthCheck, OnUnhealthy, substitute};
use crate::event::EventKind;
use crate::health::probe::Schedule;
use crate::health::{ProbeResult, ProbeTarget, Prober, Tracker, Transition};

impl Supervisor {
    /// A new instance runs in `slot`: health `starting`, probes begin.
    pub(super) fn start_probing(&mut self, slot: usize, port: Option<u16>) {
        self.stop_probing(slot);
        let Some(cfg) = self.unit.health.clone() else {
            return;
        };
        self.next_tag += 1;
        let tag = self.next_tag;
        let cancel = CancellationToken::new();
        let schedule = Schedule {
            interval: cfg.interval,
            timeout: cfg.timeout,
        };
        let (probes, results) = (self.shared.probes.clone(), self.probe_tx.clone());
        match &cfg.check {
            // Reading the env_file or looking up the user (NSS: perhaps LDAP) may block: the
            // prober's spec is built on a blocking thread, and probing starts when it is ready.
            HealthCheck::Exec { argv }
                if self.unit.user.is_some() || self.unit.env_file.is_some() =>
            {
                let (unit, argv) = (self.unit.clone(), argv.clone());
                let params = self.exec_probe_params(slot, port);
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    match spec::build_blocking(&unit, Some(&argv), params).await {
                        Ok(mut spec) if !cancel.is_cancelled() => {
                            spec.capture_output = false;
                            let target = ProbeTarget::Exec { spec };
                            Prober::spawn(target, schedule, probes, tag, results, cancel);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(service = %unit.name, error = %e, "cannot set up the health check")
                        }
                    }
                });
            }
            check => match self.probe_target(slot, check, port) {
                Ok(target) => Prober::spawn(target, schedule, probes, tag, results, cancel.clone()),
                Err(e) => {
                    tracing::error!(service = %self.unit.name, error = %e, "cannot set up the health check");
                    return;
                }
            },
        }
        let s = &mut self.slots[slot];
        s.probe_tag = tag;
        s.prober = Some(cancel);
        s.health = Some(Tracker::new(cfg, Instant::now()));
    }

    /// The slot's instance is gone: no probes, no health.
    pub(super) fn stop_probing(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        if let Some(cancel) = s.prober.take() {
            cancel.cancel();
        }
        s.health = None;
    }

    /// Health settings changed on reload: keep the health so far, probe on the new schedule.
    pub(super) fn restart_probing(&mut self, slot: usize) {
        if self.slots[slot].prober.is_none() {
            return;
        }
        let kept = self.slots[slot].health.take();
        let port = self.slots[slot].port(&self.unit);
        self.start_probing(slot, port);
        if let (Some(mut old), Some(cfg)) = (kept, self.unit.health.clone()) {
            old.reconfigure(cfg);
            self.slots[slot].health = Some(old);
        }
    }

    fn probe_target(
        &self,
        slot: usize,
        check: &HealthCheck,
        port: Option<u16>,
    ) -> Result<ProbeTarget, spec::SpecError> {
        let release = &self.slots[slot].release;
        let sub = |t: &str| substitute(t, port, release);
        Ok(match check {
            HealthCheck::Http {
                url,
                expect_status,
                expect_body,
                headers,
                insecure,
            } => ProbeTarget::http(
                sub(url),
                expect_status.clone(),
                expect_body.clone(),
                headers.iter().map(|(k, v)| (k.clone(), sub(v))).collect(),
                *insecure,
            ),
            HealthCheck::Tcp { addr } => ProbeTarget::Tcp { addr: sub(addr) },
            HealthCheck::Exec { argv } => {
                let params = self.exec_probe_params(slot, port);
                let mut spec = spec::build_argv(&self.unit, argv, &params)?;
                spec.capture_output = false;
                ProbeTarget::Exec { spec }
            }
        })
    }

    /// An exec probe runs as the slot's instance does, with a marker of its own under it.
    fn exec_probe_params(&self, slot: usize, port: Option<u16>) -> InstanceParams {
        let marker = match &self.slots[slot].instance {
            Some(i) => format!("{}/probe", i.marker),
            None => format!("{}/{}/monitor/probe", self.shared.daemon_id, self.unit.name),
        };
        InstanceParams {
            port,
            release: self.slots[slot].release.clone(),
            marker,
            cgroup: None,
            env: self.shared.env.vars(),
        }
    }

    /// A probe result arrived.
    pub(super) async fn on_probe(&mut self, tag: u64, result: ProbeResult) {
        let Some(slot) =
            (0..2).find(|&i| self.slots[i].probe_tag == tag && self.slots[i].prober.is_some())
        else {
            return;
        };
        if self.slots[slot].machine.state() != State::Running {
            return;
        }
        let Some(tracker) = self.slots[slot].health.as_mut() else {
            return;
        };
        let name = self.unit.name.clone();
        match tracker.observe(result.clone(), Instant::now()) {
            Transition::None => {}
            Transition::BecameHealthy => {
                tracing::info!(service = %name, slot, "healthy: {result}");
                self.publish(EventKind::Healthy { probe: result });
            }
            Transition::BecameUnhealthy => {
                tracing::warn!(service = %name, slot, "unhealthy: {result}");
                self.publish(EventKind::Unhealthy { probe: result });
                let restart = self
                    .unit
                    .health
                    .as_ref()
                    .is_some_and(|h| h.on_unhealthy == OnUnhealthy::Restart);
                // A deploy's candidate is judged by the deploy, not restarted.
                let candidate = self
                    .deploy
                    .as_ref()
                    .is_some_and(|d| d.candidate() == slot && slot != self.active);
                if restart && !self.unit.is_monitor_only() && !candidate && self.deploy.is_none() {
                    self.feed(slot, Input::Unhealthy).await;
                    return;
                }
            }
        }
        // Health changes may move a deploy on (healthy candidate, unhealthy during watch).
        self.settle().await;
    }
}
