//! cgroup v2 containment, and the environment-marker fallback where no writable tree exists.
//!
//! Each instance gets its own cgroup under `<orchd's cgroup>/orch.<daemon id>/`, so a stop can end
//! with `cgroup.kill` and catch daemons that double-forked out of the process group. Where there is
//! no writable cgroup v2 tree (unprivileged, or v1-only hosts), every process carries
//! `ORCH_INSTANCE=<id>` in its environment and orchd finds leftovers by scanning `/proc`.
//! Owned by the supervisors (one instance dir each) and by orchd's start-up sweep.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Where orchd puts its instances' cgroups.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
}

impl CgroupRoot {
    /// Find a writable cgroup v2 directory for this orchd (`daemon_id` keeps two orchds with
    /// different state dirs apart). `None` when there is none: fall back to markers.
    pub fn detect(daemon_id: &str) -> Option<CgroupRoot> {
        let mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|m| {
                m.join("cgroup.procs").exists() && m.join("cgroup.subtree_control").exists()
            })?;
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
        let dir = mount
            .join(path.trim_start_matches('/'))
            .join(format!("orch.{daemon_id}"));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::info!(dir = %dir.display(), error = %e, "no writable cgroup v2 tree; containing services by process group and environment marker");
                return None;
            }
        }
        // Probe: can we create and remove a child (delegation may allow mkdir on the root only)?
        let probe = dir.join(".probe");
        if fs::create_dir(&probe)
            .and_then(|_| fs::remove_dir(&probe))
            .is_err()
        {
            return None;
        }
        tracing::info!(dir = %dir.display(), "service cgroups under");
        Some(CgroupRoot { dir })
    }

    /// Create (or reuse, after killing what it holds) the cgroup of one instance.
    pub fn instance(&self, name: &str) -> io::Result<PathBuf> {
        let dir = self.dir.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                kill_cgroup(&dir);
            }
            Err(e) => return Err(e),
        }
        Ok(dir)
    }

    /// Kill every process in every instance cgroup (left by a previous orchd) and remove them.
    /// Returns how many processes were killed.
    pub fn sweep(&self) -> usize {
        let mut killed = 0;
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                killed += procs(&path).len();
                kill_cgroup(&path);
                wait_empty(&path);
                let _ = fs::remove_dir(&path);
            }
        }
        killed
    }

    /// At orchd's exit: kill and remove what is left, then the root itself, so that orchds
    /// with short-lived state dirs (tests, trials) don't leave a directory each behind.
    pub fn remove_all(&self) {
        let killed = self.sweep();
        if killed > 0 {
            tracing::warn!(
                count = killed,
                "killed service processes still running at exit"
            );
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), error = %e, "cannot remove the cgroup root");
        }
    }
}

/// Pids in a cgroup.
pub fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Send `sig` to every process of a cgroup.
pub fn signal_cgroup(dir: &Path, sig: Signal) {
    for pid in procs(dir) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// SIGKILL everything in a cgroup: `cgroup.kill` where the kernel has it (5.14+), else each pid.
pub fn kill_cgroup(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_err() {
        signal_cgroup(dir, Signal::SIGKILL);
    }
}

/// Is the cgroup empty (or gone)?
pub fn is_empty(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(s) => s.lines().any(|l| l.trim() == "populated 0"),
        Err(_) => procs(dir).is_empty(),
    }
}

fn wait_empty(dir: &Path) {
    wait_a_second_for(|| is_empty(dir));
}

/// Wait until `done` (checked every 5 ms), at most about a second: killed processes take a
/// moment to exit, and a process stuck in the kernel must not hold orchd up for long.
fn wait_a_second_for(mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Remove an instance cgroup once its processes are gone (best effort).
pub fn remove(dir: &Path) {
    kill_cgroup(dir);
    wait_empty(dir);
    let _ = fs::remove_dir(dir);
}

/// Pids whose environment contains `marker` (e.g. `ORCH_INSTANCE=…`), excluding orchd itself.
pub fn pids_with_marker(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = marker.as_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|env| {
                    env.split(|&b| b == 0).any(|var| {
                        var == needle || var.starts_with(needle) && needle.ends_with(b"/")
                    })
                })
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILL every process carrying `marker`, and wait (up to a second) until they are dead;
/// returns how many there were.
pub fn kill_marked(marker: &str) -> usize {
    let pids = pids_with_marker(marker);
    for &pid in &pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    // A SIGKILLed process is dead only once the kernel has run its exit.
    wait_a_second_for(|| pids.iter().all(|&pid| !running(pid)));
    pids.len()
}

/// The process exists and is not a zombie.
fn running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}
