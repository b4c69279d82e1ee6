//! Containment (issue 14, defect 3): a daemon that leaves the process group with `setsid` and
//! wipes its environment right after the service starts must still end with every stop.
//! Before the fix, orchd moved a new process into its cgroup only after the spawn, and a child
//! forked in that moment stayed outside the cgroup, unmarked, and outlived the stop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(10);

/// Restarts tried; the test fails at the first one that leaves the old daemon running (on the
/// old code that happened within the first few here, loaded machine or not).
const RESTARTS: usize = 30;

/// Living processes whose argv[0] is `program`.
fn running(program: &Path) -> Vec<i32> {
    let want = program.as_os_str().as_encoded_bytes();
    all_pids()
        .into_iter()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).next() == Some(want))
                && alive(pid)
        })
        .collect()
}

/// SIGKILLs what is left of `program` when the test ends, passed or not: an escaped daemon
/// has no one else to end it.
struct KillLeftovers(PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        for pid in running(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The unit of the issue: a child that leaves the session and wipes its environment at once.
fn escaper(s: &Setup) -> (PathBuf, KillLeftovers) {
    // A copy of sleep under this test's own path: its argv[0] finds the daemon in /proc, and
    // nothing else on the machine has it.
    let daemon = s.file("escapee-sleep");
    std::fs::copy("/bin/sleep", &daemon).unwrap();
    std::fs::set_permissions(&daemon, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.unit(
        "escaper",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"(env -i setsid sh -c '{} 1000' &); exec sleep 1000\"]\n",
            daemon.display()
        ),
    );
    (daemon.clone(), KillLeftovers(daemon))
}

/// Restart the escaper `RESTARTS` times and stop it: after each, nothing of the old instance
/// may run.
fn restart_and_stop_leave_nothing(s: &Setup, orchd: &Orchd, daemon: &Path) {
    // orchd answers on its socket before it has necessarily made its cgroup root.
    wait_some("orchd's cgroup v2 tree (as root)", T, || orch_cgroup(s));
    for i in 0..RESTARTS {
        let pids = wait_some("the service's daemon", T, || {
            Some(running(daemon)).filter(|p| !p.is_empty())
        });
        if i == 0 {
            // What makes it hard: out of the service's session, and no marker to find it by.
            let main = orchd.wait_new_pid("escaper", None, T);
            let session = |pid: i32| nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid)));
            assert_ne!(session(pids[0]).ok(), session(main).ok());
            assert_eq!(env_of(pids[0], "ORCH_INSTANCE"), None);
        }
        let out = orchd.ctl(&["restart", "escaper"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // `restart` answers once the old instance is gone: all of it.
        let left: Vec<i32> = pids.into_iter().filter(|&p| alive(p)).collect();
        assert!(
            left.is_empty(),
            "restart {}: the daemon of the stopped instance still runs: {left:?}",
            i + 1
        );
    }
    wait_some("the last instance's daemon", T, || {
        Some(running(daemon)).filter(|p| !p.is_empty())
    });
    let out = orchd.ctl(&["stop", "escaper"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(orchd.state("escaper"), "inactive");
    assert_eq!(running(daemon), Vec::<i32>::new(), "left after the stop");
}

/// Without a cgroup (orchd not root) only the process group and the environment marker
/// remain, and this daemon leaves both: a documented limit of that mode. So these tests need
/// root, for orchd's cgroups.
const NEEDS_CGROUPS: &str = "for orchd's cgroups";

#[test]
#[ignore = "needs root (orchd's cgroups): scripts/test.sh runs it as root with --ignored"]
fn a_daemon_forked_at_once_with_setsid_and_no_environment_ends_with_each_stop() {
    require_root(NEEDS_CGROUPS);
    let s = Setup::new();
    let (daemon, _cleanup) = escaper(&s);
    let orchd = s.start();
    restart_and_stop_leave_nothing(&s, &orchd, &daemon);
    assert!(
        orchd
            .log_text()
            .contains("service processes start inside their cgroup")
    );
}

/// The same where `clone3` is refused (a seccomp filter answering ENOSYS, as container
/// profiles written before clone3 did): orchd falls back to the child joining its cgroup
/// before it runs anything, says so once, and nothing escapes either.
#[test]
#[ignore = "needs root (orchd's cgroups): scripts/test.sh runs it as root with --ignored"]
fn without_clone3_a_daemon_forked_at_once_ends_with_each_stop_too() {
    require_root(NEEDS_CGROUPS);
    let s = Setup::new();
    let (daemon, _cleanup) = escaper(&s);
    s.write_config();
    let log = s.path().join("orchd-noclone3.log");
    let mut cmd = std::process::Command::new(ORCHD);
    cmd.arg("--config")
        .arg(s.config_path())
        .env("ORCH_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: between fork and exec `refuse_clone3` only fills an array on its stack and makes
    // two prctl system calls: no allocation, no lock, nothing another thread could hold.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(refuse_clone3);
    }
    let orchd = Orchd {
        child: Some(cmd.spawn().unwrap()),
        socket: s.socket(),
        log,
    };
    wait_for("orchd's socket", T, || {
        std::os::unix::net::UnixStream::connect(&orchd.socket).is_ok()
    });
    restart_and_stop_leave_nothing(&s, &orchd, &daemon);
    let log = orchd.log_text();
    assert_eq!(
        log.matches("clone3(CLONE_INTO_CGROUP) is not available")
            .count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("cannot start the process in its cgroup"),
        "{log}"
    );
}

/// Install a seccomp filter that answers `clone3` (435 on x86_64 and aarch64) with ENOSYS.
fn refuse_clone3() -> std::io::Result<()> {
    const LD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let filter = [
        // seccomp_data.nr is at offset 0.
        libc::sock_filter {
            code: LD_NR,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JEQ,
            jt: 0,
            jf: 1,
            k: 435,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with a filter program that points to `filter`, alive for the call.
    let ok = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
