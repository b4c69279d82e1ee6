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
        };
        let spec = match spec::build(&self.unit, &params) {
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

    /// SIGKILL everything the instance started: its group, its cgroup, anything with its marker.
    pub(super) fn kill_all(&self, inst: &Instance) {
        // The group goes at once; the cgroup and the /proc scan for the marker (milliseconds
        // each) run beside the restart instead of before it: they only find this instance's
        // processes, never the next one's.
        signal_group(inst.pid, Signal::SIGKILL);
        let (name, dir, marker) = (
            self.unit.name.clone(),
            inst.cgroup.clone(),
            inst.marker.clone(),
        );
        tokio::task::spawn_blocking(move || sweep_instance(&name, dir.as_deref(), &marker));
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
