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

#[test]
fn a_daemon_forked_at_once_with_setsid_and_no_environment_ends_with_each_stop() {
    if !nix::unistd::Uid::effective().is_root() {
        // Without a cgroup (orchd not root) only the process group and the environment
        // marker remain, and this daemon leaves both: a documented limit of that mode.
        eprintln!("skipped: needs root, for orchd's cgroups");
        return;
    }
    let s = Setup::new();
    // A copy of sleep under this test's own path: its argv[0] finds the daemon in /proc, and
    // nothing else on the machine has it.
    let daemon = s.file("escapee-sleep");
    std::fs::copy("/bin/sleep", &daemon).unwrap();
    std::fs::set_permissions(&daemon, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _cleanup = KillLeftovers(daemon.clone());
    s.unit(
        "escaper",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"(env -i setsid sh -c '{} 1000' &); exec sleep 1000\"]\n",
            daemon.display()
        ),
    );
    let orchd = s.start();
    assert!(
        orch_cgroup(&s).is_some(),
        "orchd found no writable cgroup v2 tree"
    );
    for i in 0..RESTARTS {
        let pids = wait_some("the service's daemon", T, || {
            Some(running(&daemon)).filter(|p| !p.is_empty())
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
        Some(running(&daemon)).filter(|p| !p.is_empty())
    });
    let out = orchd.ctl(&["stop", "escaper"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(orchd.state("escaper"), "inactive");
    assert_eq!(running(&daemon), Vec::<i32>::new(), "left after the stop");
}
