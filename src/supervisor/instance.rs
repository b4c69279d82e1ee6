//! Starting and ending a slot's process: spawn with its spec and cgroup, signal its group,
//! and kill everything it left behind.

use nix::sys::signal::Signal;

use super::cgroup;
use super::logs::Stream;
use super::process::signal_group;
use super::spec::{self, InstanceParams};
use super::state::Input;
use super::task::{Instance, Supervisor};
use crate::event::EventKind;

impl Supervisor {
    pub(super) async fn spawn(&mut self, slot: usize) -> Input {
        let port = self.slots[slot].port(&self.unit);
        if self.unit.is_monitor_only() {
            self.start_probing(slot, None);
            return Input::Spawned { pid: 0 };
        }
        self.spawn_seq += 1;
        let name = self.unit.name.clone();
        let marker = format!(
            "{}/{}/{}/{}",
            self.shared.daemon_id, name, slot, self.spawn_seq
        );
        let cgroup = match &self.shared.cgroups {
            Some(root) => match root.instance(&format!("{name}.{slot}.{}", self.spawn_seq)) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "cannot create the instance cgroup; using the process group");
                    None
                }
            },
            None => None,
        };
        let release = self.slots[slot].release.clone();
        let params = InstanceParams {
            port,
            release: release.clone(),
            marker: marker.clone(),
            cgroup: cgroup.clone(),
            env: self.shared.env.vars(),
        };
        let spec = match spec::build_blocking(&self.unit, None, params).await {
            Ok(spec) => spec,
            Err(e) => {
                return Input::SpawnFailed {
                    error: e.to_string(),
                };
            }
        };
        match self.shared.spawner.spawn(spec, self.exits_tx.clone()).await {
            Ok(spawned) => {
                let pid = spawned.pid;
                let mut readers = Vec::new();
                if let Some(fd) = spawned.stdout {
                    readers.push(self.logs.attach(fd, Stream::Stdout, pid));
                }
                if let Some(fd) = spawned.stderr {
                    readers.push(self.logs.attach(fd, Stream::Stderr, pid));
                }
                tracing::info!(service = %name, pid, release = %release, slot, "started");
                self.slots[slot].instance = Some(Instance {
                    pid,
                    marker,
                    cgroup,
                    readers,
                });
                self.publish(EventKind::Started { pid, release });
                self.start_probing(slot, port);
                Input::Spawned { pid }
            }
            Err(e) => Input::SpawnFailed {
                error: e.to_string(),
            },
        }
    }

    pub(super) fn signal(&self, inst: &Instance, sig: Signal) {
        signal_group(inst.pid, sig);
        if let Some(dir) = &inst.cgroup {
            cgroup::signal_cgroup(dir, sig);
        }
    }

    /// Sweep the leftovers of ended instances (see [`Sweep::kill`]) on the blocking pool.
    /// Called once a step's actions are done, so that a restart's spawn has happened first.
    pub(super) fn start_sweeps(&mut self) {
        for sweep in self.sweeps.drain(..) {
            let service = self.unit.name.clone();
            tokio::task::spawn_blocking(move || sweep.run(&service));
        }
    }
}

/// What is left to kill of an ended instance: its cgroup and the processes with its marker.
#[derive(Debug)]
pub(super) struct Sweep {
    cgroup: Option<std::path::PathBuf>,
    marker: String,
}

impl Sweep {
    /// SIGKILL the instance's process group at once, and return the rest of the job: the
    /// cgroup and the `/proc` scan for the marker take milliseconds each, so they run beside
    /// the restart rather than before it. They only ever find this instance's processes, never
    /// the next one's (its own cgroup and marker).
    pub(super) fn kill(inst: &Instance) -> Sweep {
        signal_group(inst.pid, Signal::SIGKILL);
        Sweep {
            cgroup: inst.cgroup.clone(),
            marker: inst.marker.clone(),
        }
    }

    pub(super) fn run(&self, service: &str) {
        sweep_instance(service, self.cgroup.as_deref(), &self.marker);
    }
}

/// Kill what an instance left: its cgroup (then remove it) and anything carrying its marker.
pub(super) fn sweep_instance(service: &str, cgroup: Option<&std::path::Path>, marker: &str) {
    if let Some(dir) = cgroup {
        cgroup::remove(dir);
    }
    let n = cgroup::kill_marked(&format!("ORCH_INSTANCE={marker}"));
    if n > 0 {
        tracing::info!(
            service,
            count = n,
            "killed processes the service left behind"
        );
    }
}
