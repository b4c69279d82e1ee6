//! Starting and ending a slot's process: spawn with its spec and cgroup, signal its group,
//! and kill everything it left behind.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::logs::Stream;
use super::spec::{self, InstanceParams};
use super::state::Input;
use super::task::{Instance, Supervisor};
use crate::event::EventKind;
use crate::process::cgroup;
use crate::process::{group_alive, kill_group, signal_group};

/// The last spawn sequence number handed out (instance markers and cgroup names).
static SPAWN_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Supervisor {
    pub(super) async fn spawn(&mut self, slot: usize) -> Input {
        let port = self.slots[slot].port(&self.unit);
        if self.unit.is_monitor_only() {
            self.start_probing(slot, None);
            return Input::Spawned { pid: 0 };
        }
        // Unique in this orchd, not only in this supervisor: a supervisor started again
        // after a crash must not reuse the names its predecessor's sweep still kills.
        self.spawn_seq = SPAWN_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
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
#[derive(Debug, Clone)]
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
        kill_group(inst.pid);
        Sweep::of(inst)
    }

    /// The sweep of `inst`, without killing anything yet.
    pub(super) fn of(inst: &Instance) -> Sweep {
        Sweep {
            cgroup: inst.cgroup.clone(),
            marker: inst.marker.clone(),
        }
    }

    pub(super) fn run(&self, service: &str) {
        sweep_instance(service, self.cgroup.as_deref(), &self.marker);
    }

    /// After a stop whose main process `pgid` has exited: give the rest of its process group
    /// and cgroup (which got the stop signal too) until `grace_until` to exit, then SIGKILL
    /// what is left and sweep. Returns when nothing of the instance runs.
    pub(super) async fn clear(self, pgid: i32, grace_until: Option<Instant>, service: String) {
        if let Some(until) = grace_until {
            let mut pause = Duration::from_millis(1);
            while !self.group_gone(pgid) {
                let now = Instant::now();
                if now >= until {
                    tracing::warn!(
                        service,
                        "processes of the service outlived the stop timeout; killing them"
                    );
                    break;
                }
                tokio::time::sleep(pause.min(until - now)).await;
                pause = (pause * 2).min(CLEAR_POLL_MAX);
            }
        }
        kill_group(pgid);
        let _ = tokio::task::spawn_blocking(move || self.run(&service)).await;
    }

    /// No process is left in the group, nor in the cgroup.
    fn group_gone(&self, pgid: i32) -> bool {
        !group_alive(pgid) && self.cgroup.as_deref().is_none_or(cgroup::is_empty)
    }
}

/// The longest pause between two looks at a stopping instance's remaining processes.
const CLEAR_POLL_MAX: Duration = Duration::from_millis(50);

/// Kill what an instance left: its cgroup (then remove it) and anything carrying its marker.
fn sweep_instance(service: &str, cgroup: Option<&std::path::Path>, marker: &str) {
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
