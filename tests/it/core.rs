//! Supervision against real processes: restart, backoff, stop, containment, shutdown.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn restarts_after_sigkill() {
    let s = Setup::new();
    s.unit(
        "sleeper",
        "exec = [\"sleep\", \"1000\"]\n[restart]\ndelay = \"10ms\"\n",
    );
    let orchd = s.start();
    let first = orchd.wait_new_pid("sleeper", None, T);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
    let second = orchd.wait_new_pid("sleeper", Some(first), T);
    assert_ne!(first, second);
    let st = orchd.status("sleeper");
    assert_eq!(st["restarts"], 1);
    assert!(!alive(first));
}

#[test]
fn clean_exit_under_on_failure_is_exited() {
    let s = Setup::new();
    s.unit("once", "exec = [\"true\"]\n");
    let orchd = s.start();
    orchd.wait_state("once", "exited", T);
    assert_eq!(orchd.status("once")["restarts"], 0);
}

#[test]
fn stop_escalates_to_sigkill_when_sigterm_is_ignored() {
    let s = Setup::new();
    let ready = s.file("ready");
    s.unit(
        "stubborn",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"trap '' TERM; echo up > {}; while true; do sleep 0.05; done\"]\n[stop]\ntimeout = \"300ms\"\n",
            ready.display()
        ),
    );
    let orchd = s.start();
    let pid = orchd.wait_new_pid("stubborn", None, T);
    wait_for("the trap to be set", T, || ready.exists());
    let started = std::time::Instant::now();
    let out = orchd.ctl(&["stop", "stubborn"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "stopped after {took:?}, before the stop timeout"
    );
    assert_eq!(orchd.state("stubborn"), "inactive");
    assert!(!alive(pid));
    let events = orchd.events(1000);
    let exited = events.iter().find(|e| e["kind"] == "exited").unwrap();
    assert_eq!(exited["signal"], "SIGKILL");
}

#[test]
fn stop_leaves_no_double_forked_daemon_behind() {
    let s = Setup::new();
    let pidfile = s.file("daemon.pid");
    // The grandchild double-forks out of the process group with setsid and lives on.
    s.unit(
        "forker",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"setsid sh -c 'echo $$ > {}; exec sleep 1000' & sleep 1000\"]\n",
            pidfile.display()
        ),
    );
    let orchd = s.start();
    orchd.wait_new_pid("forker", None, T);
    let daemon = wait_some("the daemon's pid", T, || read_pid(&pidfile));
    assert!(alive(daemon));
    let out = orchd.ctl(&["stop", "forker"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for("the daemonized grandchild to be gone", T, || !alive(daemon));
}

#[test]
fn sigterm_stops_everything_and_exits_zero() {
    let s = Setup::new();
    s.unit("a", "exec = [\"sleep\", \"1000\"]\n");
    s.unit("b", "exec = [\"sleep\", \"1000\"]\nrequires = [\"a\"]\n");
    let mut orchd = s.start();
    let a = orchd.wait_new_pid("a", None, T);
    let b = orchd.wait_new_pid("b", None, T);
    let status = orchd.stop();
    assert!(
        status.success(),
        "orchd exited with {status:?}\n{}",
        orchd.log_text()
    );
    assert!(!alive(a) && !alive(b));
    assert!(!s.socket().exists(), "socket file left behind");
}
