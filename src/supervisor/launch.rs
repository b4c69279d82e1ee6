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
//! to return to, hence a few lines of assembly per architecture (`clone3_run`). Where `clone3`
//! or `CLONE_INTO_CGROUP` is missing (old kernel, a seccomp filter), the Launcher remembers it
//! and falls back to `clone`, with the child writing itself into `cgroup.procs` before it does
//! anything else; that write can wait 8–16 ms for an RCU grace period (docs/BENCHMARKS.md).

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

/// Stack of the cloned child between `clone` and `execve`. The child's frames are small (it
/// makes a dozen system calls); a guard page below catches an overflow.
const STACK_SIZE: usize = 64 * 1024;

/// `clone3`'s number on x86_64 and aarch64 (both use the generic table for new calls).
const SYS_CLONE3: libc::c_long = 435;
/// Create the child in the cgroup named by `CloneArgs::cgroup` (include/uapi/linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, 88 bytes).
#[repr(C, align(8))]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

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

/// `clone3` failed because it (or `CLONE_INTO_CGROUP`) is missing here, not because of this
/// cgroup: ENOSYS (before Linux 5.3, or a seccomp filter), E2BIG (5.3–5.6 know a shorter
/// `clone_args`), EINVAL or EOPNOTSUPP (the flag unknown or refused). EPERM too: seccomp
/// profiles written before clone3 existed answer it with EPERM; should it really be a
/// permission problem, the fallback's own write reports it.
fn clone3_unusable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM)
    )
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

/// The raw `clone3` system call with `args`; in the child (on the stack `args` gives it, with
/// no Rust frame to return to) call `f(arg)` and `exit` with its result should it return. In
/// the parent: the child's pid, or -errno.
///
/// # Safety
/// `args` must describe a valid stack (`stack`, `stack_size`) that nothing else uses until
/// the child has exec'd or exited, and must include `CLONE_VM | CLONE_VFORK`: the child then
/// runs `f` on orchd's memory while this thread is suspended, so `f` must follow the rules of
/// [`child`] and `arg` must stay valid until this returns.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_run(
    args: &CloneArgs,
    f: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the parent path is one `syscall` (which clobbers rcx and r11, declared) whose
    // result comes back in rax; it touches no stack (`nostack`) and may write memory through
    // `args`' pointers, which the compiler must assume anyway (no `nomem`). The child path
    // starts with rsp = stack + stack_size (set by the kernel), 16-byte aligned because the
    // mapping's end is page-aligned, so the `call` leaves rsp ≡ 8 (mod 16) at `f`'s entry as
    // the SysV ABI requires; `arg` and `f` survive the system call in r12 and r13, callee-saved
    // registers not reserved by LLVM, copied into the child with the other registers. The
    // child never leaves the asm block: it ends with the `exit` system call (60), which ends
    // only that thread, and `ud2` is unreachable.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") SYS_CLONE3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") f as usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// See the x86_64 version.
///
/// # Safety
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
unsafe fn clone3_run(
    args: &CloneArgs,
    f: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> libc::c_long {
    let ret: libc::c_long;
    // SAFETY: the parent path is one `svc #0` (the kernel preserves every register but x0,
    // which returns the result); it touches no stack (`nostack`) and may write memory through
    // `args`' pointers, which the compiler must assume anyway (no `nomem`). The child path
    // starts with sp = stack + stack_size (set by the kernel), 16-byte aligned as AAPCS64
    // requires because the mapping's end is page-aligned; `arg` and `f` survive in x20 and x21,
    // callee-saved registers not reserved by LLVM (unlike x18, x19, x29). `blr` overwrites x30
    // only in the child, which never leaves the asm block: it ends with the `exit` system call
    // (93), which ends only that thread, and `brk` is unreachable.
    unsafe {
        core::arch::asm!(
            "svc #0",
            "cbnz x0, 2f",
            "mov x0, x20",
            "blr x21",
            "mov x8, #93",
            "svc #0",
            "brk #1",
            "2:",
            inlateout("x0") args as *const CloneArgs => ret,
            in("x1") std::mem::size_of::<CloneArgs>(),
            in("x8") SYS_CLONE3,
            in("x20") arg,
            in("x21") f as usize,
            options(nostack),
        );
    }
    ret
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
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};

    /// Launch `argv` with stdout on a pipe; returns (exit code, stdout).
    fn run(
        argv: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&Path>,
    ) -> Result<(i32, String), LaunchError> {
        run_with(&mut Launcher::new().unwrap(), argv, env, cwd, None)
    }

    /// [`run`] with a given Launcher, into the cgroup directory `cgroup` if any.
    fn run_with(
        l: &mut Launcher,
        argv: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&Path>,
        cgroup: Option<BorrowedFd<'_>>,
    ) -> Result<(i32, String), LaunchError> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let devnull = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let p = prepare(&argv, &env, cwd, None)?;
        let stdio = [devnull.as_raw_fd(), w.as_raw_fd(), devnull.as_raw_fd()];
        // A script another test thread has just written may still be open for writing in a
        // child cloned meanwhile (until that child's exec closes it): ETXTBSY, retried.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let pid = loop {
            match l.launch(&p, stdio, cgroup) {
                Err(LaunchError::Child(Step::Exec, e))
                    if e.raw_os_error() == Some(libc::ETXTBSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::yield_now();
                }
                r => break r?,
            }
        };
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        let code = match status {
            nix::sys::wait::WaitStatus::Exited(_, c) => c,
            other => panic!("{other:?}"),
        };
        Ok((code, out))
    }

    /// A cgroup of its own for one test, found as orchd finds its tree (`CgroupRoot`), and
    /// removed with its root (and anything left in them) at the end. None when not root.
    struct TestCgroup {
        root: crate::supervisor::cgroup::CgroupRoot,
        dir: std::path::PathBuf,
        fd: OwnedFd,
    }

    impl TestCgroup {
        fn new(test: &str) -> Option<TestCgroup> {
            if !nix::unistd::Uid::effective().is_root() {
                eprintln!("skipped: needs root for a cgroup of its own");
                return None;
            }
            let id = format!("launch-test.{}.{test}", std::process::id());
            let root = crate::supervisor::cgroup::CgroupRoot::detect(&id)
                .expect("a writable cgroup v2 tree (/sys/fs/cgroup or /sys/fs/cgroup/unified)");
            let dir = root.instance("svc.0.1").unwrap();
            let fd = OwnedFd::from(std::fs::File::open(&dir).unwrap());
            Some(TestCgroup { root, dir, fd })
        }

        /// The line a process in this cgroup reads in `/proc/self/cgroup` for the v2 tree.
        fn proc_line(&self) -> String {
            let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                .into_iter()
                .find(|m| self.dir.starts_with(m))
                .unwrap();
            format!("0::/{}", self.dir.strip_prefix(mount).unwrap().display())
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            self.root.remove_all();
        }
    }

    /// The v2 line of the cgroup lists printed by `script`, once per `cat /proc/self/cgroup`.
    fn v2_lines(out: &str) -> Vec<&str> {
        out.lines().filter(|l| l.starts_with("0::")).collect()
    }

    /// The service and a child it forks at once both read their cgroup.
    const CGROUP_OF_BOTH: &str = "cat /proc/self/cgroup; (cat /proc/self/cgroup)";

    #[test]
    fn clone3_starts_the_child_inside_its_cgroup() {
        let Some(cg) = TestCgroup::new("clone3") else {
            return;
        };
        let mut l = Launcher::new().unwrap();
        let (code, out) = run_with(
            &mut l,
            &["/bin/sh", "-c", CGROUP_OF_BOTH],
            &[],
            None,
            Some(cg.fd.as_fd()),
        )
        .unwrap();
        assert_eq!(code, 0);
        let want = cg.proc_line();
        assert_eq!(v2_lines(&out), [want.as_str(), want.as_str()], "{out}");
        // Linux 5.7+ (Debian 12 has 6.1): the fast path, not the fallback.
        assert_eq!(l.clone3, Clone3::Works);
        // And without a cgroup, the same Launcher leaves the child in orchd's.
        let (_, out) =
            run_with(&mut l, &["/bin/cat", "/proc/self/cgroup"], &[], None, None).unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(v2_lines(&out), v2_lines(&own));
    }

    #[test]
    fn without_clone3_the_child_joins_its_cgroup_before_it_runs() {
        let Some(cg) = TestCgroup::new("fallback") else {
            return;
        };
        let mut l = Launcher::new().unwrap();
        l.force_fallback();
        let (code, out) = run_with(
            &mut l,
            &["/bin/sh", "-c", CGROUP_OF_BOTH],
            &[],
            None,
            Some(cg.fd.as_fd()),
        )
        .unwrap();
        assert_eq!(code, 0);
        let want = cg.proc_line();
        assert_eq!(v2_lines(&out), [want.as_str(), want.as_str()], "{out}");
        assert_eq!(l.clone3, Clone3::Unavailable);
    }

    #[test]
    fn a_cgroup_that_is_gone_fails_the_spawn_in_both_modes() {
        let Some(cg) = TestCgroup::new("gone") else {
            return;
        };
        std::fs::remove_dir(&cg.dir).unwrap();
        for fallback in [false, true] {
            let mut l = Launcher::new().unwrap();
            if fallback {
                l.force_fallback();
            }
            let err = run_with(&mut l, &["/bin/true"], &[], None, Some(cg.fd.as_fd())).unwrap_err();
            assert!(matches!(err, LaunchError::Cgroup(_)), "{fallback}: {err:?}");
            // A missing cgroup is not a missing clone3.
            assert_ne!(l.clone3, Clone3::Works, "{fallback}");
            if !fallback {
                assert_eq!(l.clone3, Clone3::Untried);
            }
        }
    }

    fn status_field(status: &str, key: &str) -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"))
            .trim()
            .to_owned()
    }

    #[test]
    fn runs_with_exactly_the_given_env_cwd_and_stdout() {
        let (code, out) = run(
            &[
                "/bin/sh",
                "-c",
                "echo \"$GREETING $(pwd)\"; env | wc -l; exit 3",
            ],
            &[("GREETING", "hello")],
            Some(Path::new("/tmp")),
        )
        .unwrap();
        assert_eq!(code, 3);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "hello /tmp");
        // GREETING, plus what sh itself sets (PWD, and SHLVL on some shells): nothing of ours.
        assert!(lines[1].trim().parse::<u32>().unwrap() <= 3, "{out}");
    }

    #[test]
    fn a_bare_name_is_searched_in_the_childs_path() {
        let (code, out) = run(&["true"], &[("PATH", "/nonexistent:/bin:/usr/bin")], None).unwrap();
        assert_eq!((code, out.as_str()), (0, ""));
        let err = run(&["true"], &[("PATH", "/nonexistent:")], None).unwrap_err();
        assert_eq!(err.to_string(), "not found in PATH /nonexistent:");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tool"), "#!/bin/sh\n").unwrap();
        let path = dir.path().display().to_string();
        let err = run(&["tool"], &[("PATH", &path)], None).unwrap_err();
        assert_eq!(err.to_string(), format!("not executable in PATH {path}"));
    }

    #[test]
    fn failures_come_back_as_the_failing_steps_errno() {
        let err = run(&["/nonexistent/prog"], &[], None).unwrap_err();
        assert_eq!(err.to_string(), "No such file or directory (os error 2)");
        let err = run(&["/bin/true"], &[], Some(Path::new("/nonexistent"))).unwrap_err();
        assert_eq!(err.to_string(), "No such file or directory (os error 2)");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let err = run(&[script.to_str().unwrap()], &[], None).unwrap_err();
        assert_eq!(err.to_string(), "Permission denied (os error 13)");
        let err = run(&["/bin/echo", "a\0b"], &[], None).unwrap_err();
        assert_eq!(err.to_string(), "`a\0b` contains a NUL byte");
    }

    #[test]
    fn own_session_default_signals_and_an_empty_mask() {
        // This thread blocks SIGUSR1 and the test harness ignores SIGPIPE: neither may reach
        // the child.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let (code, out) = run(&["/bin/cat", "/proc/self/status"], &[], None).unwrap();
        assert_eq!(code, 0);
        assert_eq!(status_field(&out, "SigBlk:"), "0000000000000000");
        assert_eq!(status_field(&out, "SigIgn:"), "0000000000000000");
        let (_, stat) = run(&["/bin/cat", "/proc/self/stat"], &[], None).unwrap();
        // pid (1) and session (6) are equal: the child leads its own session.
        let after = stat.rsplit_once(") ").unwrap().1;
        let fields: Vec<&str> = after.split(' ').collect();
        let pid = stat.split(' ').next().unwrap();
        assert_eq!(fields[3], pid, "{stat}");
        // This thread's mask is back as it was.
        let mut now: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now) };
        assert_eq!(unsafe { libc::sigismember(&now, libc::SIGUSR1) }, 1);
        assert_eq!(unsafe { libc::sigismember(&now, libc::SIGTERM) }, 0);
    }

    #[test]
    fn a_script_without_a_shebang_runs_with_the_shell() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("plain");
        std::fs::write(&script, "echo \"ran with $# args: $1\"\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (code, out) = run(&[script.to_str().unwrap(), "one"], &[], None).unwrap();
        assert_eq!((code, out.as_str()), (0, "ran with 1 args: one\n"));
    }

    #[test]
    fn another_user_keeps_the_parent_death_signal_and_orchd_stays_dumpable() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root to change credentials");
            return;
        }
        // SAFETY: PR_GET_DUMPABLE reads a flag.
        let dumpable_before = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
        // The parent-death signal fires when the thread that created the child ends.
        let pid = std::thread::spawn(|| {
            let mut l = Launcher::new().unwrap();
            let creds = Creds {
                uid: Uid::from_raw(65534),
                gid: Gid::from_raw(65534),
                groups: vec![Gid::from_raw(65534)],
            };
            let p = prepare(
                &["/bin/sleep".into(), "1000".into()],
                &[],
                None,
                Some(&creds),
            )
            .unwrap();
            let null = std::fs::File::open("/dev/null").unwrap();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
            l.launch(&p, [fd, fd, fd], None).unwrap()
        })
        .join()
        .unwrap();
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Signaled(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
                false
            )
        );
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_DUMPABLE) },
            dumpable_before
        );
    }
}
