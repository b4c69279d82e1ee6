//! Spawning service processes and reaping every child: the one owner of process creation and
//! `waitpid(-1)`.
//!
//! Two long-lived OS threads:
//! - the **spawner** starts every service process (`launch.rs`: a vfork-style clone), inside
//!   its instance cgroup from the first instruction on.
//!   `PR_SET_PDEATHSIG` fires when the *thread* that created a child exits, so creating them
//!   from a thread that lives as long as orchd means children die with orchd and never at
//!   random.
//! - the **reaper** waits for SIGCHLD and loops `waitpid(-1, WNOHANG)`, handing each exit status
//!   to the supervisor that registered the pid; orphans adopted through the subreaper are reaped
//!   and logged.
//!
//! Both hold the pid registry lock across their critical section (clone+register,
//! waitpid+lookup), so an exit can never be reaped before its pid is registered, and the
//! spawner's own `waitpid` on a child whose exec failed never races the reaper. Lookups and
//! opening files happen before the lock is taken. This lock guards only that table; no service
//! state lives behind it.

pub mod cgroup;
mod launch;

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid};
use tokio::sync::{mpsc, oneshot};

use launch::{Creds, LaunchError, Launcher, Prepared, Step};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub pid: i32,
    pub code: Option<i32>,
    pub signal: Option<Signal>,
}

/// Everything needed to start one process, resolved before the fork.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// The complete environment of the child.
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// cgroup directory the process starts in (it never runs outside it).
    pub cgroup: Option<PathBuf>,
    /// Pipe stdout/stderr back (services) or discard them (probes).
    pub capture_output: bool,
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Why a spawn failed; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("unknown user `{0}`: create it or fix `user` in the unit")]
    UnknownUser(String),
    #[error("unknown group `{0}`: create it or fix `group` in the unit")]
    UnknownGroup(String),
    #[error("looking up `{name}`: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("`{0}` contains a NUL byte")]
    Nul(String),
    #[error(
        "cannot start the process in its cgroup {path}: {source}; check that orchd's cgroup \
         tree is writable by orchd (docs/operator-guide.md, \"Containment\")"
    )]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("cannot run {program}: {source}")]
    Exec { program: String, source: io::Error },
    #[error("cannot set up the process for {program}: {source}")]
    Setup { program: String, source: io::Error },
    #[error("cannot enter working_dir {dir}: {source}")]
    WorkingDir { dir: PathBuf, source: io::Error },
    #[error("cannot take the unit's user/group (uid {uid}, gid {gid}): {source}")]
    Credentials {
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("orchd's spawner thread is gone")]
    SpawnerGone,
}

type Registry = Arc<Mutex<HashMap<i32, mpsc::UnboundedSender<ExitInfo>>>>;

struct Job {
    spec: SpawnSpec,
    exits: mpsc::UnboundedSender<ExitInfo>,
    reply: oneshot::Sender<Result<Spawned, SpawnError>>,
}

/// Cheap-clone handle to the spawner thread.
#[derive(Clone)]
pub struct Spawner {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Spawner {
    /// Start the spawner and reaper threads. Call once per orchd.
    pub fn start() -> io::Result<Spawner> {
        let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let reg = registry.clone();
        let launcher = Launcher::new()?;
        std::thread::Builder::new()
            .name("orch-spawner".into())
            .spawn(move || spawner_loop(launcher, rx, reg))?;
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGCHLD])?;
        std::thread::Builder::new()
            .name("orch-reaper".into())
            .spawn(move || {
                // Where orchd blocked SIGCHLD in every other thread (`block_sigchld`), the
                // kernel delivers it to this one, already waiting: one wake-up less per exit.
                let _ = sigchld().thread_unblock();
                reap_all(&registry);
                for _ in signals.forever() {
                    reap_all(&registry);
                }
            })?;
        Ok(Spawner { jobs: tx })
    }

    /// Fork and exec `spec`; its exit will be sent on `exits`.
    pub async fn spawn(
        &self,
        spec: SpawnSpec,
        exits: mpsc::UnboundedSender<ExitInfo>,
    ) -> Result<Spawned, SpawnError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { spec, exits, reply })
            .map_err(|_| SpawnError::SpawnerGone)?;
        rx.await.map_err(|_| SpawnError::SpawnerGone)?
    }
}

/// Block SIGCHLD in the calling thread, and so in every thread it creates from now on. Call it
/// first thing in `main`, before any thread exists: the reaper thread unblocks it for itself,
/// so each exit wakes the reaper directly instead of whichever thread the kernel picked, which
/// then had to wake the reaper. (Without it everything still works, one hop slower.)
pub fn block_sigchld() {
    let _ = sigchld().thread_block();
}

fn sigchld() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(Signal::SIGCHLD);
    set
}

fn lock(
    registry: &Registry,
) -> std::sync::MutexGuard<'_, HashMap<i32, mpsc::UnboundedSender<ExitInfo>>> {
    // A panic while holding this lock can only come from a bug in this file; the table itself
    // stays consistent (insert/remove are atomic), so recover it rather than stop reaping.
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn spawner_loop(mut launcher: Launcher, jobs: std::sync::mpsc::Receiver<Job>, registry: Registry) {
    while let Ok(job) = jobs.recv() {
        let exits = job.exits;
        let result = prepare_spawn(&job.spec).and_then(|ready| {
            let mut table = lock(&registry);
            let result = spawn_ready(&mut launcher, &job.spec, ready);
            if let Ok(s) = &result {
                table.insert(s.pid, exits);
            }
            result
        });
        let _ = job.reply.send(result);
    }
}

fn reap_all(registry: &Registry) {
    let mut table = lock(registry);
    loop {
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return,
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "waitpid failed");
                return;
            }
            Ok(s) => s,
        };
        let info = match status {
            WaitStatus::Exited(pid, code) => ExitInfo {
                pid: pid.as_raw(),
                code: Some(code),
                signal: None,
            },
            WaitStatus::Signaled(pid, sig, _) => ExitInfo {
                pid: pid.as_raw(),
                code: None,
                signal: Some(sig),
            },
            _ => continue,
        };
        match table.remove(&info.pid) {
            Some(tx) => {
                let _ = tx.send(info);
            }
            None => {
                tracing::debug!(pid = info.pid, code = ?info.code, signal = ?info.signal, "reaped orphan")
            }
        }
    }
}

fn resolve_creds(spec: &SpawnSpec) -> Result<Option<Creds>, SpawnError> {
    use nix::unistd::{Group, User, getgrouplist};
    let user = match &spec.user {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|source| SpawnError::Lookup {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| SpawnError::UnknownUser(name.clone()))?,
        ),
        None => None,
    };
    let group = match &spec.group {
        Some(name) => Some(
            Group::from_name(name)
                .map_err(|source| SpawnError::Lookup {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| SpawnError::UnknownGroup(name.clone()))?,
        ),
        None => None,
    };
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let uid = user.as_ref().map(|u| u.uid).unwrap_or_else(Uid::current);
    let gid = group
        .as_ref()
        .map(|g| g.gid)
        .or(user.as_ref().map(|u| u.gid))
        .unwrap_or_else(Gid::current);
    let groups = match &user {
        Some(u) => {
            let cname =
                CString::new(u.name.as_bytes()).map_err(|_| SpawnError::Nul(u.name.clone()))?;
            let mut gs = getgrouplist(&cname, gid).map_err(|source| SpawnError::Lookup {
                name: u.name.clone(),
                source,
            })?;
            if !gs.contains(&gid) {
                gs.push(gid);
            }
            gs
        }
        None => vec![gid],
    };
    Ok(Some(Creds { uid, gid, groups }))
}

/// A spawn with everything looked up and opened, ready to be cloned.
struct Ready {
    prepared: Prepared,
    creds: Option<Creds>,
    /// The instance cgroup directory, which the process is created in.
    cgroup: Option<OwnedFd>,
    devnull: OwnedFd,
    /// (read end, write end) of the stdout and stderr pipes, when output is captured.
    out: Option<(OwnedFd, OwnedFd)>,
    err: Option<(OwnedFd, OwnedFd)>,
}

/// Everything that may block (user lookups, opening files), done outside the registry lock.
fn prepare_spawn(spec: &SpawnSpec) -> Result<Ready, SpawnError> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let creds = resolve_creds(spec)?;
    // Opened here, outside the registry lock, so that a cgroup that is gone is reported as
    // such before any clone.
    let cgroup = match &spec.cgroup {
        Some(dir) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(dir)
                .map_err(|source| SpawnError::Cgroup {
                    path: dir.clone(),
                    source,
                })?;
            Some(OwnedFd::from(file))
        }
        None => None,
    };
    let setup_error = |source| SpawnError::Setup {
        program: program.clone(),
        source,
    };
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(setup_error)?;
    // The parent's ends are close-on-exec; dup2 makes the child's copies inheritable.
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from);
    let (out, err) = if spec.capture_output {
        (
            Some(pipe().map_err(setup_error)?),
            Some(pipe().map_err(setup_error)?),
        )
    } else {
        (None, None)
    };
    let prepared = launch::prepare(&spec.argv, &spec.env, spec.cwd.as_deref(), creds.as_ref())
        .map_err(|e| launch_error(spec, creds.as_ref(), e))?;
    Ok(Ready {
        prepared,
        creds,
        cgroup,
        devnull: OwnedFd::from(devnull),
        out,
        err,
    })
}

/// Clone and exec a prepared spawn (under the registry lock).
fn spawn_ready(
    launcher: &mut Launcher,
    spec: &SpawnSpec,
    ready: Ready,
) -> Result<Spawned, SpawnError> {
    let null = ready.devnull.as_raw_fd();
    let stdio = [
        null,
        ready.out.as_ref().map_or(null, |(_, w)| w.as_raw_fd()),
        ready.err.as_ref().map_or(null, |(_, w)| w.as_raw_fd()),
    ];
    let cgroup = ready.cgroup.as_ref().map(AsFd::as_fd);
    let pid = launcher
        .launch(&ready.prepared, stdio, cgroup)
        .map_err(|e| launch_error(spec, ready.creds.as_ref(), e))?;
    // The write ends (and /dev/null, the cgroup dir) close here: the service holds its own
    // copies of what it needs.
    Ok(Spawned {
        pid,
        stdout: ready.out.map(|(r, _)| r),
        stderr: ready.err.map(|(r, _)| r),
    })
}

fn launch_error(spec: &SpawnSpec, creds: Option<&Creds>, e: LaunchError) -> SpawnError {
    let program = spec.argv.first().cloned().unwrap_or_default();
    match e {
        LaunchError::Nul(s) => SpawnError::Nul(s),
        LaunchError::Cgroup(source) | LaunchError::Child(Step::Cgroup, source) => {
            SpawnError::Cgroup {
                path: spec.cgroup.clone().unwrap_or_default(),
                source,
            }
        }
        LaunchError::Child(Step::Chdir, source) => SpawnError::WorkingDir {
            dir: spec.cwd.clone().unwrap_or_default(),
            source,
        },
        LaunchError::Child(Step::Credentials, source) => SpawnError::Credentials {
            uid: creds.map_or(0, |c| c.uid.as_raw()),
            gid: creds.map_or(0, |c| c.gid.as_raw()),
            source,
        },
        LaunchError::Child(Step::Setup, source) | LaunchError::Clone(source) => {
            SpawnError::Setup { program, source }
        }
        LaunchError::NotFound(source) | LaunchError::Child(Step::Exec, source) => {
            SpawnError::Exec { program, source }
        }
    }
}

/// Whether the process group `pgid` still has a member orchd may signal. Once it has none, its
/// number is free for a new process (and group) to take: check before signalling a group whose
/// leader has been reaped.
pub fn group_alive(pgid: i32) -> bool {
    // EPERM: its members are not orchd's to signal (nor to kill), as good as gone.
    pgid > 1 && nix::sys::signal::killpg(Pid::from_raw(pgid), None).is_ok()
}

/// SIGKILL the process group `pgid` if it still has members (see [`group_alive`]).
pub fn kill_group(pgid: i32) {
    if group_alive(pgid) {
        signal_group(pgid, Signal::SIGKILL);
    }
}

/// Send `sig` to the process group `pgid` (ESRCH — nobody left — is not an error).
pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid <= 1 {
        return;
    }
    match nix::sys::signal::killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid, signal = %sig, error = %e, "signalling process group failed")
        }
    }
}
