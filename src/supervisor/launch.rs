//! Starting one process without copying orchd: `clone(CLONE_VM | CLONE_VFORK)`, as glibc's
//! `posix_spawn` does, plus what `posix_spawn` cannot do (parent-death signal, supplementary
//! groups, uid/gid).
//!
//! A plain `fork` copies orchd's page tables and the child's `exec` tears them down again:
//! about 0.4 ms each way for orchd's ~10 MB, on every start and restart. With `CLONE_VM` the
//! child borrows orchd's memory and a small stack of its own until it calls `execve`, and the
//! forking thread sleeps until then (`CLONE_VFORK`). That child may therefore only make plain
//! system calls on data prepared before the clone: no allocation, no locks, no glibc function
//! that broadcasts to "all threads" (glibc's `setuid`/`setgid`/`setgroups` do, so the raw system
//! calls are used). Every other thread of orchd keeps running meanwhile.

use std::cell::Cell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect};
use nix::unistd::{Gid, Uid};

/// Stack of the cloned child between `clone` and `execve`. The child's frames are small (it
/// calls a dozen system calls); a guard page below catches an overflow.
const STACK_SIZE: usize = 64 * 1024;
const GUARD: usize = 4096;

/// Credentials resolved before the clone (NSS lookups are not async-signal-safe).
#[derive(Debug)]
pub(super) struct Creds {
    pub(super) uid: Uid,
    pub(super) gid: Gid,
    pub(super) groups: Vec<Gid>,
}

/// What the child needs, all prepared before the clone; the child only reads it, and writes its
/// errno into `error` when a step fails.
struct ChildArgs<'a> {
    path: &'a CStr,
    argv: &'a [*const c_char],
    envp: &'a [*const c_char],
    cwd: Option<&'a CStr>,
    /// uid, gid and supplementary groups to take, if any.
    creds: Option<(libc::uid_t, libc::gid_t, &'a [libc::gid_t])>,
    /// orchd's pid: if the child's parent is not orchd any more, orchd died meanwhile.
    parent: libc::pid_t,
    /// Become stdin, stdout, stderr.
    stdio: [RawFd; 3],
    /// The step that failed and its errno (errno 0: none). Written by the child, read by the
    /// parent after `clone` returned, which `CLONE_VFORK` orders after the child's exec or exit.
    error: Cell<(Step, c_int)>,
}

/// A step of the child that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// setsid, prctl, the stdio fds: orchd's side of the setup.
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
}

// SAFETY: the mapping is owned by the Launcher alone; moving it to another thread is moving
// ownership of plain memory.
unsafe impl Send for Launcher {}

impl Launcher {
    pub(super) fn new() -> io::Result<Launcher> {
        let len = std::num::NonZeroUsize::new(STACK_SIZE + GUARD).ok_or(io::ErrorKind::Other)?;
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
        unsafe { mprotect(base, GUARD, ProtFlags::PROT_NONE) }?;
        Ok(Launcher { base })
    }

    /// Start `argv` (argv[0] resolved through `PATH` as `execvp` does, taken from `env` when it
    /// sets one) with exactly `env`, in its own session, with default signal dispositions, an
    /// empty signal mask and `stdio` as fds 0–2. Returns the child's pid once it has exec'd;
    /// a failure of any step (exec included) is returned as that step's errno, and the child
    /// is reaped.
    pub(super) fn launch(
        &mut self,
        argv: &[String],
        env: &[(String, String)],
        cwd: Option<&Path>,
        creds: Option<&Creds>,
        stdio: [RawFd; 3],
    ) -> Result<libc::pid_t, LaunchError> {
        let program = argv.first().map(String::as_str).unwrap_or_default();
        let path = resolve(program, env)?;
        let argv_c = argv
            .iter()
            .map(|a| cstring(a))
            .collect::<Result<Vec<_>, _>>()?;
        let envp_c = env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd_c = cwd
            .map(|d| CString::new(d.as_os_str().as_bytes()))
            .transpose()
            .map_err(|_| LaunchError::Nul(cwd.unwrap_or(Path::new("")).display().to_string()))?;
        let argv_p: Vec<*const c_char> = argv_c
            .iter()
            .map(|c| c.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let envp_p: Vec<*const c_char> = envp_c
            .iter()
            .map(|c| c.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let groups: Vec<libc::gid_t> = creds
            .map(|c| c.groups.iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        let args = ChildArgs {
            path: &path,
            argv: &argv_p,
            envp: &envp_p,
            cwd: cwd_c.as_deref(),
            creds: creds.map(|c| (c.uid.as_raw(), c.gid.as_raw(), groups.as_slice())),
            parent: nix::unistd::getpid().as_raw(),
            stdio,
            error: Cell::new((Step::Setup, 0)),
        };
        // SAFETY: `base + GUARD + STACK_SIZE` is the (16-byte aligned: page aligned) end of the
        // mapping this Launcher owns; stacks grow down on x86_64 and aarch64.
        let stack_top = unsafe {
            self.base
                .as_ptr()
                .cast::<u8>()
                .add(GUARD + STACK_SIZE)
                .cast::<c_void>()
        };
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigfillset and pthread_sigmask write only the sets passed to them. Blocking
        // every signal in this thread before the clone means the child starts with them
        // blocked, so none of orchd's handlers can run in the child (on orchd's memory) before
        // it has reset them to the default.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        // SAFETY: `child` runs on the stack above (owned by `self`, borrowed mutably for this
        // call) and reads `args`, which outlives the clone: with CLONE_VFORK this thread is
        // suspended until the child has exec'd or exited, after which it touches neither.
        // `child` only makes async-signal-safe system calls (see its comment). SIGCHLD makes it
        // an ordinary child for the reaper.
        let pid = unsafe {
            libc::clone(
                child,
                stack_top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&args as *const ChildArgs).cast_mut().cast::<c_void>(),
            )
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        if pid < 0 {
            return Err(LaunchError::Clone(clone_error));
        }
        match args.error.get() {
            (_, 0) => Ok(pid),
            (step, errno) => {
                // The child has exited (status 127): reap it here, as the caller holds the pid
                // registry lock the reaper needs.
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                Err(LaunchError::Child(
                    step,
                    io::Error::from_raw_os_error(errno),
                ))
            }
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, which no child uses any more.
        let _ = unsafe { nix::sys::mman::munmap(self.base, STACK_SIZE + GUARD) };
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
    /// A step in the child failed: which, and its errno.
    #[error("{1}")]
    Child(Step, io::Error),
}

fn cstring(s: &str) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::Nul(s.to_owned()))
}

/// `execvp`'s lookup, done before the clone: a name with a `/` is used as is, anything else
/// is searched in the `PATH` of the child's environment, else orchd's, else the default.
fn resolve(program: &str, env: &[(String, String)]) -> Result<CString, LaunchError> {
    if program.is_empty() {
        return Err(LaunchError::NotFound(io::Error::new(
            io::ErrorKind::NotFound,
            "empty program name",
        )));
    }
    if program.contains('/') {
        return cstring(program);
    }
    let own = std::env::var("PATH").ok();
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .or(own.as_deref())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let mut denied = false;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let c = CString::new(candidate.as_os_str().as_bytes())
            .map_err(|_| LaunchError::Nul(candidate.display().to_string()))?;
        // SAFETY: access() reads the NUL-terminated path only.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 {
            return Ok(c);
        }
        denied = true;
    }
    let (kind, what) = if denied {
        (io::ErrorKind::PermissionDenied, "not executable")
    } else {
        (io::ErrorKind::NotFound, "not found")
    };
    Err(LaunchError::NotFound(io::Error::new(
        kind,
        format!("{what} in PATH {path}"),
    )))
}

/// The cloned child, between `clone` and `execve`, on orchd's memory.
///
/// It may only make system calls that neither allocate nor lock nor touch other threads:
/// setsid, prctl, getppid, rt_sigaction, dup2, fcntl, chdir, the raw setgroups,
/// setgid and setuid system calls, sigprocmask, execve and _exit; and it only reads `ChildArgs`
/// except for its `error` cell. All signals are blocked on entry (see `launch`).
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&ChildArgs` passed to clone, alive until the parent resumes.
    let args = unsafe { &*(arg.cast_const().cast::<ChildArgs>()) };
    // SAFETY (whole block): each call is a plain system call wrapper on values prepared by
    // the parent; see the function comment.
    unsafe {
        // Own session and process group: stop signals go to the whole group.
        if libc::setsid() < 0 {
            fail(args, Step::Setup);
        }
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
            // orchd died between clone and prctl: don't run unsupervised.
            libc::_exit(1);
        }
        // Default dispositions: handlers are reset by exec anyway, ignored signals are not.
        // The raw system call, as glibc's `signal` refuses its reserved signals (32, 33),
        // which orchd may have ignored too. An all-zero kernel `struct sigaction` is SIG_DFL
        // with no flags and an empty mask, whatever the architecture's layout.
        let default = [0u64; 4];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    default.as_ptr(),
                    std::ptr::null_mut::<c_void>(),
                    8usize,
                );
            }
        }
        for (target, &fd) in args.stdio.iter().enumerate() {
            let target = target as c_int;
            if fd == target {
                // Already in place (orchd was started with that fd closed): keep it across exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    fail(args, Step::Setup);
                }
            } else if libc::dup2(fd, target) < 0 {
                fail(args, Step::Setup);
            }
        }
        if let Some(dir) = args.cwd
            && libc::chdir(dir.as_ptr()) < 0
        {
            fail(args, Step::Chdir);
        }
        if let Some((uid, gid, groups)) = args.creds {
            // The raw system calls: glibc's wrappers would signal every thread of "the
            // process", which for this child means orchd's threads.
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0
                || libc::syscall(libc::SYS_setgid, gid) < 0
                || libc::syscall(libc::SYS_setuid, uid) < 0
            {
                fail(args, Step::Credentials);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(args.path.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
        fail(args, Step::Exec)
    }
}

/// Record errno for the parent and end the child.
fn fail(args: &ChildArgs, step: Step) -> ! {
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL);
    args.error
        .set((step, if errno == 0 { libc::EINVAL } else { errno }));
    // SAFETY: _exit ends only this child, without running orchd's exit handlers.
    unsafe { libc::_exit(127) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsRawFd, OwnedFd};

    /// Launch `argv` with stdout on a pipe; returns (exit code, stdout).
    fn run(
        argv: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&Path>,
    ) -> Result<(i32, String), LaunchError> {
        let mut l = Launcher::new().unwrap();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let devnull = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let pid = l.launch(
            &argv,
            &env,
            cwd,
            None,
            [devnull.as_raw_fd(), w.as_raw_fd(), devnull.as_raw_fd()],
        )?;
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
}
