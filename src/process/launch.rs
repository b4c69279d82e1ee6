//! Starting one process without copying orchd: `clone(CLONE_VM | CLONE_VFORK)`, as glibc's
//! `posix_spawn` does, plus what `posix_spawn` cannot do (parent-death signal, supplementary
//! groups, uid/gid).
//!
//! A plain `fork` copies orchd's page tables and the child's `exec` tears them down again:
//! about 0.4 ms each way for orchd's ~10 MB, on every start and restart. With `CLONE_VM` the
//! child borrows orchd's memory and a small stack of its own until it calls `execve`, and the
//! cloning thread sleeps until then (`CLONE_VFORK`). That child may therefore only make plain
//! system calls on data prepared before the clone: no allocation, no locks, no panics, no
//! glibc function that broadcasts to "all threads" (glibc's `setuid`/`setgid`/`setgroups` do,
//! so the raw system calls are used). Every other thread of orchd keeps running meanwhile.
//!
//! Needs glibc 2.25 or later (older `clone` wrappers overwrote the parent thread's cached
//! pid for `CLONE_VM` children) and a binary linked with immediate binding (Rust's default:
//! lazy binding would run the dynamic linker on the child's stack).
//!
//! A process with an instance cgroup is created *inside* it: `clone3` with
//! `CLONE_INTO_CGROUP` (Linux 5.7+) and a dirfd of the cgroup, so the service never runs an
//! instruction outside it and nothing it forks can escape (a child forked before a later move
//! would stay behind, and one that wipes its environment could not be found by the marker
//! either). The raw `clone3` system call returns in the child on the new stack with no frame
//! to return to, hence a few lines of assembly per architecture (`launch/clone3.rs`). Where
//! `clone3` or `CLONE_INTO_CGROUP` is missing (old kernel, a seccomp filter), the Launcher
//! remembers it and falls back to `clone`, with the child writing itself into `cgroup.procs`
//! before it does anything else; that write can wait 8–16 ms for an RCU grace period
//! (docs/BENCHMARKS.md).

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "launch.rs passes raw kernel structures (sigaction, sigset) sized for x86_64 and aarch64"
);

use std::cell::Cell;
use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect};
use nix::unistd::{Gid, Uid};

mod clone3;
use clone3::{CLONE_INTO_CGROUP, CloneArgs, clone3_run, clone3_unusable};

/// Stack of the cloned child between `clone` and `execve`. The child's frames are small (it
/// makes a dozen system calls); a guard page below catches an overflow.
const STACK_SIZE: usize = 64 * 1024;

/// Credentials resolved before the clone (NSS lookups are not async-signal-safe).
#[derive(Debug)]
pub(super) struct Creds {
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) groups: Vec<Gid>,
}

/// A process to start, with every string and pointer array the child needs built beforehand
/// (`prepare`), so that the clone itself can run under the pid registry lock without lookups.
pub(super) struct Prepared {
    /// Where `execve` is tried, in order: the program itself if it has a `/`, else
    /// `DIR/program` for each `PATH` entry (resolved in the child, after `chdir`, as `execvp`).
    candidates: Vec<CString>,
    /// For each candidate, the argv that runs it with `/bin/sh` (a script without `#!`).
    sh_argv_p: Vec<Vec<*const c_char>>,
    _argv: Vec<CString>,
    argv_p: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_p: Vec<*const c_char>,
    cwd: Option<CString>,
    groups: Vec<libc::gid_t>,
    ids: Option<(libc::uid_t, libc::gid_t)>,
    /// The `PATH` searched, for messages (None: the program has a `/`).
    searched: Option<String>,
}

/// Build what the child needs to run `argv` with exactly `env`, in `cwd`, as `creds`.
pub(super) fn prepare(
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&Path>,
    creds: Option<&Creds>,
) -> Result<Prepared, LaunchError> {
    let program = argv.first().map(String::as_str).unwrap_or_default();
    if program.is_empty() {
        return Err(LaunchError::NotFound(io::Error::new(
            io::ErrorKind::NotFound,
            "empty program name",
        )));
    }
    let (candidates, searched) = if program.contains('/') {
        (vec![cstring(program)?], None)
    } else {
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_owned());
        let c = path
            .split(':')
            .map(|dir| {
                cstring(&format!(
                    "{}/{program}",
                    if dir.is_empty() { "." } else { dir }
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        (c, Some(path))
    };
    let argv_c = argv
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp_c = env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = cwd
        .map(|d| {
            CString::new(d.as_os_str().as_bytes())
                .map_err(|_| LaunchError::Nul(d.display().to_string()))
        })
        .transpose()?;
    let nul_terminated = |v: &[CString]| -> Vec<*const c_char> {
        v.iter()
            .map(|c| c.as_ptr())
            .chain([std::ptr::null()])
            .collect()
    };
    let argv_p = nul_terminated(&argv_c);
    let sh_argv_p = candidates
        .iter()
        .map(|c| {
            [SH.as_ptr(), c.as_ptr()]
                .into_iter()
                .chain(argv_c.iter().skip(1).map(|a| a.as_ptr()))
                .chain([std::ptr::null()])
                .collect()
        })
        .collect();
    Ok(Prepared {
        candidates,
        sh_argv_p,
        argv_p,
        _argv: argv_c,
        envp_p: nul_terminated(&envp_c),
        _envp: envp_c,
        cwd,
        groups: creds
            .map(|c| c.groups.iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
        ids: creds.map(|c| (c.uid.as_raw(), c.gid.as_raw())),
        searched,
    })
}

const SH: &std::ffi::CStr = c"/bin/sh";

/// What the child reads (prepared before the clone), and the cell it reports a failure in.
struct ChildArgs<'a> {
    p: &'a Prepared,
    /// orchd's pid: if the child's parent is not orchd any more, orchd died meanwhile.
    parent: libc::pid_t,
    /// Become stdin, stdout, stderr; all ≥ 3 (see `launch`).
    stdio: [RawFd; 3],
    /// The instance cgroup's `cgroup.procs`, for the child to write itself into first thing
    /// (the fallback without `clone3`); -1: none, or the child was created in its cgroup.
    procs: RawFd,
    /// The step that failed and its errno (errno 0: none). Written by the child, read by the
    /// parent after `clone` returned, which `CLONE_VFORK` orders after the child's exec or exit.
    error: Cell<(Step, c_int)>,
}

/// A step of the child that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Joining the instance cgroup (the fallback without `clone3`).
    Cgroup,
    /// setsid, signal dispositions, the stdio fds, the parent-death signal.
    Setup,
    /// Entering the working directory.
    Chdir,
    /// Taking the unit's user and group.
    Credentials,
    /// execve itself.
    Exec,
}

/// The child's stack, mapped once per spawner thread and reused: a vfork child is done with it
/// once `clone` returns in the parent.
pub(super) struct Launcher {
    base: std::ptr::NonNull<c_void>,
    guard: usize,
    /// Whether `clone3(CLONE_INTO_CGROUP)` works here; found out by the first spawn into a
    /// cgroup, then kept.
    clone3: Clone3,
}

/// What is known about `clone3(CLONE_INTO_CGROUP)` on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Clone3 {
    Untried,
    Works,
    /// Missing or refused: the child joins its cgroup itself, before anything else.
    Unavailable,
}

/// How one clone puts the child into its cgroup.
#[derive(Clone, Copy)]
enum Join<'a> {
    /// No cgroup (orchd has no writable cgroup v2 tree).
    Nothing,
    /// `clone3(CLONE_INTO_CGROUP)` with this cgroup directory.
    Clone3(BorrowedFd<'a>),
    /// Plain `clone`; the child writes "0" to this `cgroup.procs` first thing.
    Procs(RawFd),
}

// SAFETY: the mapping is owned by the Launcher alone; moving it to another thread is moving
// ownership of plain memory.
unsafe impl Send for Launcher {}

impl Launcher {
    pub(super) fn new() -> io::Result<Launcher> {
        // SAFETY: sysconf reads a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        let len = std::num::NonZeroUsize::new(STACK_SIZE.next_multiple_of(page) + page)
            .ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh anonymous private mapping aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK,
            )
        }?;
        // SAFETY: the lowest page of the mapping just made, which nothing references yet.
        unsafe { mprotect(base, page, ProtFlags::PROT_NONE) }?;
        Ok(Launcher {
            base,
            guard: page,
            clone3: Clone3::Untried,
        })
    }

    /// Make every later spawn take the fallback, as if `clone3` were missing.
    #[cfg(test)]
    pub(super) fn force_fallback(&mut self) {
        self.clone3 = Clone3::Unavailable;
    }

    fn len(&self) -> usize {
        STACK_SIZE.next_multiple_of(self.guard) + self.guard
    }

    /// Start `p` in its own session, with default signal dispositions, an empty signal mask
    /// and `stdio` as fds 0–2, inside the cgroup directory `cgroup` if given (from its first
    /// instruction on). Returns the child's pid once it has exec'd; a failure of any step
    /// (exec included) is returned with that step's errno, and the child is reaped here: the
    /// caller must hold whatever serialises `waitpid(-1)` (the pid registry lock), so that
    /// nobody else reaps it first.
    pub(super) fn launch(
        &mut self,
        p: &Prepared,
        stdio: [RawFd; 3],
        cgroup: Option<BorrowedFd<'_>>,
    ) -> Result<libc::pid_t, LaunchError> {
        // The child dup2s the sources onto 0, 1, 2 in that order: a source below 3 could be
        // overwritten before it is used. Give any such source a number ≥ 3 first.
        let mut moved: Vec<OwnedFd> = Vec::new();
        let mut fds = stdio;
        for fd in fds.iter_mut() {
            if *fd < 3 {
                // SAFETY: F_DUPFD_CLOEXEC duplicates an fd the caller keeps open for this call.
                let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3) };
                if dup < 0 {
                    return Err(LaunchError::Clone(io::Error::last_os_error()));
                }
                // SAFETY: `dup` is a new fd owned by nothing else.
                moved.push(unsafe { OwnedFd::from_raw_fd(dup) });
                *fd = dup;
            }
        }
        let (pid, report) = match cgroup {
            None => self
                .clone_once(p, fds, Join::Nothing)
                .map_err(LaunchError::Clone)?,
            Some(dir) => self.clone_into(p, fds, dir)?,
        };
        drop(moved);
        match report {
            (_, 0) => Ok(pid),
            (step, errno) => {
                // The child has exited (status 127): reap it.
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                let err = io::Error::from_raw_os_error(errno);
                Err(match (&p.searched, step, errno) {
                    (Some(path), Step::Exec, libc::ENOENT) => {
                        LaunchError::NotFound(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("not found in PATH {path}"),
                        ))
                    }
                    (Some(path), Step::Exec, libc::EACCES) => {
                        LaunchError::NotFound(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("not executable in PATH {path}"),
                        ))
                    }
                    (_, Step::Cgroup, _) => LaunchError::Cgroup(err),
                    _ => LaunchError::Child(step, err),
                })
            }
        }
    }

    /// Clone `p` into the cgroup directory `dir`: with `clone3(CLONE_INTO_CGROUP)` unless it
    /// is known not to work, else (and on learning that it doesn't) with the child joining
    /// the cgroup itself.
    fn clone_into(
        &mut self,
        p: &Prepared,
        stdio: [RawFd; 3],
        dir: BorrowedFd<'_>,
    ) -> Result<(libc::pid_t, (Step, c_int)), LaunchError> {
        if self.clone3 != Clone3::Unavailable {
            match self.clone_once(p, stdio, Join::Clone3(dir)) {
                Ok(r) => {
                    if self.clone3 == Clone3::Untried {
                        tracing::info!(
                            "service processes start inside their cgroup (clone3 with CLONE_INTO_CGROUP)"
                        );
                        self.clone3 = Clone3::Works;
                    }
                    return Ok(r);
                }
                Err(e) if clone3_unusable(&e) => {
                    tracing::warn!(
                        error = %e,
                        "clone3(CLONE_INTO_CGROUP) is not available: each service process joins its \
                         cgroup itself before it runs anything (slower: a start may wait 8-16 ms \
                         for the kernel); upgrade to Linux 5.7+ or allow clone3 in the seccomp \
                         filter for the fast path"
                    );
                    self.clone3 = Clone3::Unavailable;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOMEM | libc::EAGAIN)) => {
                    return Err(LaunchError::Clone(e));
                }
                Err(e) => return Err(LaunchError::Cgroup(e)),
            }
        }
        let procs = open_procs(dir).map_err(LaunchError::Cgroup)?;
        self.clone_once(p, stdio, Join::Procs(procs.as_raw_fd()))
            .map_err(LaunchError::Clone)
    }

    /// One clone of `p` running `child`: the child's pid and its report (errno 0: it exec'd).
    fn clone_once(
        &mut self,
        p: &Prepared,
        stdio: [RawFd; 3],
        into: Join<'_>,
    ) -> Result<(libc::pid_t, (Step, c_int)), io::Error> {
        let args = ChildArgs {
            p,
            parent: nix::unistd::getpid().as_raw(),
            stdio,
            procs: match into {
                Join::Procs(fd) => fd,
                Join::Nothing | Join::Clone3(_) => -1,
            },
            error: Cell::new((Step::Setup, 0)),
        };
        let arg = (&args as *const ChildArgs).cast_mut().cast::<c_void>();
        // SAFETY: `base + guard` is the lowest usable byte of the mapping this Launcher owns
        // and `base + len` its page-aligned end; stacks grow down on x86_64 and aarch64.
        let (stack_low, stack_top) = unsafe {
            let base = self.base.as_ptr().cast::<u8>();
            (base.add(self.guard), base.add(self.len()).cast::<c_void>())
        };
        // A child taking another uid/gid makes the memory it shares with orchd non-dumpable
        // (the kernel's commit_creds); orchd's own setting is put back after.
        // SAFETY: PR_GET_DUMPABLE reads a flag.
        let dumpable = p.ids.map(|_| unsafe { libc::prctl(libc::PR_GET_DUMPABLE) });
        // Block every signal in this thread, glibc's internal ones too (hence the raw system
        // call), so that the child starts with all blocked and none of orchd's handlers can
        // run in it (on orchd's memory) before it has reset them to the default.
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: rt_sigprocmask reads and writes the 8-byte kernel sigsets passed.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all as *const u64,
                &mut old as *mut u64,
                8usize,
            )
        };
        let pid = match into {
            Join::Clone3(dir) => {
                let ca = CloneArgs {
                    flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
                    exit_signal: libc::SIGCHLD as u64,
                    stack: stack_low as u64,
                    stack_size: (self.len() - self.guard) as u64,
                    cgroup: dir.as_raw_fd() as u64,
                    ..CloneArgs::default()
                };
                // SAFETY: the stack in `ca` is this Launcher's mapping (borrowed mutably for
                // this call) above its guard page, used by no one else; `arg` points to `args`,
                // which outlives the clone: with CLONE_VFORK this thread is suspended until the
                // child has exec'd or exited, after which it touches neither. `child` only
                // makes async-signal-safe system calls (see its comment). `dir` is an open fd
                // borrowed for this call.
                let r = unsafe { clone3_run(&ca, child, arg) };
                if r < 0 {
                    Err(io::Error::from_raw_os_error(-r as i32))
                } else {
                    Ok(r as libc::pid_t)
                }
            }
            Join::Nothing | Join::Procs(_) => {
                // SAFETY: as for clone3 above (same stack, same `args`, same `child`). SIGCHLD
                // makes it an ordinary child for the reaper.
                let r = unsafe {
                    libc::clone(
                        child,
                        stack_top,
                        libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                        arg,
                    )
                };
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(r)
                }
            }
        };
        // SAFETY: restores the mask saved above.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &old as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
        if let Some(d @ 0..=1) = dumpable {
            // SAFETY: PR_SET_DUMPABLE with the value read before.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, d as libc::c_ulong) };
        }
        Ok((pid?, args.error.get()))
    }
}

/// Open `cgroup.procs` of the cgroup directory `dir` for writing (close-on-exec).
fn open_procs(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: openat with an open directory fd and a NUL-terminated relative name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, which no child uses any more.
        let _ = unsafe { nix::sys::mman::munmap(self.base, self.len()) };
    }
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum LaunchError {
    #[error("`{0}` contains a NUL byte")]
    Nul(String),
    /// The program was not found in `PATH` (or is not executable there).
    #[error("{0}")]
    NotFound(io::Error),
    #[error("clone failed: {0}")]
    Clone(io::Error),
    /// The process could not be started in (or join) its cgroup.
    #[error("{0}")]
    Cgroup(io::Error),
    /// A step in the child failed: which, and its errno.
    #[error("{1}")]
    Child(Step, io::Error),
}

fn cstring(s: &str) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::Nul(s.to_owned()))
}

/// The cloned child, between `clone` and `execve`, on orchd's memory.
///
/// It may only make system calls that neither allocate nor lock nor touch other threads:
/// write (to `cgroup.procs`), setsid, rt_sigaction, dup2, chdir, the raw setgroups, setgid and setuid system calls, prctl,
/// getppid, sigprocmask, execve and _exit; it reads the prepared data and writes only its
/// `error` cell. Nothing in it can panic. All signals are blocked on entry (see `launch`).
#[inline(never)]
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&ChildArgs` passed to clone, alive until the parent resumes.
    let args = unsafe { &*(arg.cast_const().cast::<ChildArgs>()) };
    let p = args.p;
    // SAFETY (whole block): each call is a plain system call wrapper on values prepared by
    // the parent; see the function comment.
    unsafe {
        // Without clone3: into the cgroup before anything else, so that nothing this process
        // will start can run outside it.
        if args.procs >= 0 && libc::write(args.procs, b"0".as_ptr().cast::<c_void>(), 1) != 1 {
            fail(args, Step::Cgroup);
        }
        // Own session and process group: stop signals go to the whole group.
        if libc::setsid() < 0 {
            fail(args, Step::Setup);
        }
        // Default dispositions: handlers are reset by exec anyway, ignored signals are not.
        // The raw system call, as glibc's `signal` refuses its reserved signals (32, 33),
        // which orchd may have ignored too. An all-zero kernel `struct sigaction` is SIG_DFL
        // with no flags and an empty mask on x86_64 and aarch64 (at most 32 bytes there).
        let default = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL
                && sig != libc::SIGSTOP
                && libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default.as_ptr(),
                    std::ptr::null_mut::<c_void>(),
                    8usize,
                ) < 0
            {
                fail(args, Step::Setup);
            }
        }
        for (target, &fd) in (0..).zip(args.stdio.iter()) {
            if libc::dup2(fd, target) < 0 {
                fail(args, Step::Setup);
            }
        }
        if let Some(dir) = &p.cwd
            && libc::chdir(dir.as_ptr()) < 0
        {
            fail(args, Step::Chdir);
        }
        if let Some((uid, gid)) = p.ids {
            // The raw system calls: glibc's wrappers would signal every thread of "the
            // process", which for this child means orchd's threads.
            if libc::syscall(
                libc::SYS_setgroups,
                p.groups.len() as libc::c_long,
                p.groups.as_ptr(),
            ) < 0
                || libc::syscall(libc::SYS_setgid, gid as libc::c_long) < 0
                || libc::syscall(libc::SYS_setuid, uid as libc::c_long) < 0
            {
                fail(args, Step::Credentials);
            }
        }
        // After the credentials: changing them clears the parent-death signal.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(args, Step::Setup);
        }
        if libc::getppid() != args.parent {
            // orchd died before the parent-death signal was set: don't run unsupervised.
            libc::_exit(1);
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        // execvp's search: go on past candidates that don't exist or may not be run; report
        // EACCES if any candidate had it, else the last error.
        let mut denied = false;
        for (path, sh_argv) in p.candidates.iter().zip(&p.sh_argv_p) {
            libc::execve(path.as_ptr(), p.argv_p.as_ptr(), p.envp_p.as_ptr());
            match *libc::__errno_location() {
                libc::ENOEXEC => {
                    // A script without `#!`: run it with the shell, as execvp does.
                    libc::execve(SH.as_ptr(), sh_argv.as_ptr(), p.envp_p.as_ptr());
                    fail(args, Step::Exec);
                }
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => fail(args, Step::Exec),
            }
        }
        if denied {
            *libc::__errno_location() = libc::EACCES;
        }
        fail(args, Step::Exec)
    }
}

/// Record errno for the parent and end the child.
fn fail(args: &ChildArgs, step: Step) -> ! {
    // SAFETY: reads this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    args.error
        .set((step, if errno == 0 { libc::EINVAL } else { errno }));
    // SAFETY: _exit ends only this child, without running orchd's exit handlers.
    unsafe { libc::_exit(127) }
}

#[cfg(test)]
mod tests;
