//! Pointing a deployed service's public side at a slot: the built-in proxy (at once), or the
//! operator's `switch_command` (e.g. rewriting an nginx upstream), which must exit 0 within
//! 30 s. A command runs in a task of its own, never on the supervisor's loop; switch
//! commands run one after the other, so the front ends up where the last one pointed it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Command;
use super::deploy::DeployDone;
use super::spec::{self, InstanceParams};
use super::task::{Shared, Supervisor};
use crate::config::{Unit, substitute};
use crate::process::SpawnSpec;
use crate::proxy::Backend;

/// How long a `switch_command` may run.
const SWITCH_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Supervisor {
    /// Point the built-in proxy at `slot`.
    pub(super) fn switch_proxy(&mut self, slot: usize) {
        let port = self.slots[slot].port(&self.unit);
        if let (Some(p), Some(port)) = (&self.proxy, port) {
            p.switch(Some(Backend {
                slot,
                addr: ([127, 0, 0, 1], port).into(),
            }));
        }
    }

    /// Run `switch_command` for `slot` in a task, after any still running. For a deploy
    /// (`for_deploy`) its result comes back as [`DeployDone::Switched`]; otherwise (orchd's
    /// start) a failure is logged.
    pub(super) fn spawn_switch_command(&mut self, slot: usize, for_deploy: bool) {
        let job = SwitchJob {
            unit: self.unit.clone(),
            shared: self.shared.clone(),
            release: self.slots[slot].release.clone(),
            port: self.slots[slot].port(&self.unit),
        };
        let back = for_deploy.then(|| self.commands.clone());
        let previous = self.switch_job.take();
        self.switch_job = Some(tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            // A panic in the job must still answer the deploy, which waits for it.
            let result = match crate::guard::catch(job.run()).await {
                Ok(result) => result,
                Err(panic) => Err(format!("the switch command's task crashed: {panic}")),
            };
            match back {
                Some(back) => {
                    if let Some(back) = back.upgrade() {
                        let _ = back.send(Command::DeployDone(DeployDone::Switched(result)));
                    }
                }
                None => {
                    if let Err(e) = result {
                        tracing::error!(service = %job.unit.name, "pointing the front at the running release failed: {e}");
                    }
                }
            }
        }));
    }
}

/// One run of the switch command, with what it needs from the supervisor.
struct SwitchJob {
    unit: Arc<Unit>,
    shared: Shared,
    release: String,
    port: Option<u16>,
}

impl SwitchJob {
    async fn run(&self) -> Result<(), String> {
        let argv = self
            .unit
            .deploy
            .as_ref()
            .and_then(|d| d.switch_command.clone())
            .unwrap_or_default();
        let params = InstanceParams {
            port: self.port,
            release: self.release.clone(),
            marker: format!("{}/{}/switch", self.shared.daemon_id, self.unit.name),
            cgroup: None,
            env: self.shared.env.vars(),
        };
        let mut spec: SpawnSpec = spec::build_blocking(&self.unit, Some(argv.as_slice()), params)
            .await
            .map_err(|e| e.to_string())?;
        spec.capture_output = false;
        let shown: Vec<String> = argv
            .iter()
            .map(|a| substitute(a, self.port, &self.release))
            .collect();
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
                crate::process::signal_group(spawned.pid, nix::sys::signal::Signal::SIGKILL);
                Err(format!(
                    "{} did not finish within {}",
                    shown.join(" "),
                    humantime::format_duration(SWITCH_COMMAND_TIMEOUT)
                ))
            }
        }
    }
}
