//! The supervisor's side of health checks: start and stop the instance's prober, and turn its
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
    /// A new instance runs: health `starting`, probes begin.
    pub(super) fn start_probing(&mut self, port: Option<u16>) {
        self.stop_probing();
        let Some(cfg) = self.unit.health.clone() else {
            return;
        };
        let target = match self.probe_target(&cfg.check, port) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(service = %self.unit.name, error = %e, "cannot set up the health check");
                return;
            }
        };
        self.probe_tag += 1;
        let cancel = CancellationToken::new();
        let schedule = Schedule {
            interval: cfg.interval,
            timeout: cfg.timeout,
        };
        Prober::spawn(
            target,
            schedule,
            self.shared.probes.clone(),
            self.probe_tag,
            self.probe_tx.clone(),
            cancel.clone(),
        );
        self.prober = Some(cancel);
        self.health = Some(Tracker::new(cfg, Instant::now()));
    }

    /// The instance is gone: no probes, no health.
    pub(super) fn stop_probing(&mut self) {
        if let Some(cancel) = self.prober.take() {
            cancel.cancel();
        }
        self.health = None;
    }

    /// Health settings changed on reload: keep the health so far, probe on the new schedule.
    pub(super) fn restart_probing(&mut self) {
        if self.prober.is_none() {
            return;
        }
        let kept = self.health.take();
        let port = self.unit.deploy.as_ref().map(|d| d.ports[self.slot]);
        self.start_probing(port);
        if let (Some(mut old), Some(cfg)) = (kept, self.unit.health.clone()) {
            old.reconfigure(cfg);
            self.health = Some(old);
        }
    }

    fn probe_target(
        &self,
        check: &HealthCheck,
        port: Option<u16>,
    ) -> Result<ProbeTarget, spec::SpecError> {
        let sub = |t: &str| substitute(t, port, &self.release);
        Ok(match check {
            HealthCheck::Http {
                url,
                expect_status,
                expect_body,
                headers,
                insecure,
            } => ProbeTarget::Http {
                url: sub(url),
                expect_status: expect_status.clone(),
                expect_body: expect_body.clone(),
                headers: headers.iter().map(|(k, v)| (k.clone(), sub(v))).collect(),
                insecure: *insecure,
            },
            HealthCheck::Tcp { addr } => ProbeTarget::Tcp { addr: sub(addr) },
            HealthCheck::Exec { argv } => {
                let marker = match &self.instance {
                    Some(i) => format!("{}/probe", i.marker),
                    None => format!("{}/{}/monitor/probe", self.shared.daemon_id, self.unit.name),
                };
                let params = InstanceParams {
                    port,
                    release: self.release.clone(),
                    marker,
                    cgroup: None,
                };
                let mut spec = spec::build_argv(&self.unit, argv, &params)?;
                spec.capture_output = false;
                ProbeTarget::Exec { spec }
            }
        })
    }

    /// A probe result arrived.
    pub(super) async fn on_probe(&mut self, tag: u64, result: ProbeResult) {
        if tag != self.probe_tag || self.machine.state() != State::Running {
            return;
        }
        let Some(tracker) = self.health.as_mut() else {
            return;
        };
        let name = self.unit.name.clone();
        match tracker.observe(result.clone(), Instant::now()) {
            Transition::None => {}
            Transition::BecameHealthy => {
                tracing::info!(service = %name, "healthy: {result}");
                self.publish(EventKind::Healthy { probe: result });
            }
            Transition::BecameUnhealthy => {
                tracing::warn!(service = %name, "unhealthy: {result}");
                self.publish(EventKind::Unhealthy { probe: result });
                let restart = self
                    .unit
                    .health
                    .as_ref()
                    .is_some_and(|h| h.on_unhealthy == OnUnhealthy::Restart);
                if restart && !self.unit.is_monitor_only() {
                    self.feed(Input::Unhealthy).await;
                    return;
                }
            }
        }
        self.publish_status();
    }
}
