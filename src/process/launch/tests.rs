//! Tests of `launch.rs` with real child processes: environment, working directory, `PATH`
//! search, errors per step, session and signals, credentials, and the cgroup a child starts in
//! (with `clone3` and with the fallback).

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
    root: crate::process::cgroup::CgroupRoot,
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
        let root = crate::process::cgroup::CgroupRoot::detect(&id)
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
    let (_, out) = run_with(&mut l, &["/bin/cat", "/proc/self/cgroup"], &[], None, None).unwrap();
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
