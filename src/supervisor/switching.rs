//! Pointing a deployed service's public side at a slot: the built-in proxy, or the operator's
//! `switch_command` (e.g. rewriting an nginx upstream), which must exit 0 within 30 s.

use std::time::Duration;

use tokio::sync::mpsc;

use super::process::SpawnSpec;
use super::spec::{self, InstanceParams};
use super::task::Supervisor;
use crate::config::{SwitchMode, substitute};
use crate::deploy::proxy::Backend;

/// How long a `switch_command` may run.
const SWITCH_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Supervisor {
    /// Point the public side at `slot`: the proxy, or the operator's `switch_command`.
    pub(super) async fn switch_to(&mut self, slot: usize) -> Result<(), String> {
        let port = self.slots[slot].port(&self.unit);
        let Some(cfg) = self.unit.deploy.clone() else {
            return Ok(());
        };
        match cfg.switch {
            SwitchMode::Proxy => {
                if let (Some(p), Some(port)) = (&self.proxy, port) {
                    p.switch(Some(Backend {
                        slot,
                        addr: ([127, 0, 0, 1], port).into(),
                    }));
                }
                Ok(())
            }
            SwitchMode::Command => {
                let argv = cfg.switch_command.unwrap_or_default();
                self.run_switch_command(slot, &argv, port).await
            }
        }
    }

    async fn run_switch_command(
        &mut self,
        slot: usize,
        argv: &[String],
        port: Option<u16>,
    ) -> Result<(), String> {
        let release = self.slots[slot].release.clone();
        let params = InstanceParams {
            port,
            release: release.clone(),
            marker: format!("{}/{}/switch", self.shared.daemon_id, self.unit.name),
            cgroup: None,
            env: self.shared.env.vars(),
        };
        let mut spec: SpawnSpec = spec::build_blocking(&self.unit, Some(argv), params)
            .await
            .map_err(|e| e.to_string())?;
        spec.capture_output = false;
        let shown: Vec<String> = argv.iter().map(|a| substitute(a, port, &release)).collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spawned = self
            .shared
            .spawner
            .spawn(spec, tx)
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(SWITCH_COMMAND_TIMEOUT, rx.recv()).await {
            Ok(Some(exit)) if exit.code == Some(0) => Ok(()),
            Ok(Some(exit)) => Err(format!(
                "{} {}",
                shown.join(" "),
                super::state::describe_exit(exit.code, exit.signal)
            )),
            Ok(None) => Err("lost track of the switch command".into()),
            Err(_) => {
                super::process::signal_group(spawned.pid, nix::sys::signal::Signal::SIGKILL);
                Err(format!(
                    "{} did not finish within {}",
                    shown.join(" "),
                    humantime::format_duration(SWITCH_COMMAND_TIMEOUT)
                ))
            }
        }
    }
}
