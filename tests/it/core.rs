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
    // `stop` answers once the service is `inactive`, and that is once nothing of it runs.
    assert_eq!(orchd.state("forker"), "inactive");
    assert!(
        !alive(daemon),
        "the daemonized grandchild outlived the stop"
    );
}

/// The stop timeout is the whole group's: children that shut down gracefully after the main
/// process has exited get their time, and one that ignores the stop signal is killed when
/// the timeout ends, before the stop is reported done.
#[test]
fn stop_gives_the_whole_group_its_timeout_then_kills_what_is_left() {
    let s = Setup::new();
    let (graceful, stubborn, ready) = (s.file("graceful"), s.file("stubborn.pid"), s.file("ready"));
    let script = s.file("group.sh");
    std::fs::write(
        &script,
        format!(
            r#"/bin/sh -c "trap 'sleep 0.3; echo done > {graceful}; exit 0' TERM; echo up > {graceful}.ready; while :; do sleep 0.05; done" &
/bin/sh -c "trap '' TERM; echo \$\$ > {stubborn}; while :; do sleep 0.05; done" &
trap 'exit 0' TERM
echo up > {ready}
while :; do sleep 0.05; done
"#,
            graceful = graceful.display(),
            stubborn = stubborn.display(),
            ready = ready.display(),
        ),
    )
    .unwrap();
    s.unit(
        "group",
        &format!(
            "exec = [\"/bin/sh\", \"{}\"]\n[stop]\ntimeout = \"1500ms\"\n",
            script.display()
        ),
    );
    let orchd = s.start();
    let main = orchd.wait_new_pid("group", None, T);
    let graceful_ready = s.file("graceful.ready");
    wait_for("the service and its children", T, || {
        ready.exists() && graceful_ready.exists()
    });
    let stubborn = wait_some("the stubborn child's pid", T, || read_pid(&stubborn));
    let started = std::time::Instant::now();
    let out = orchd.ctl(&["stop", "group"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(orchd.state("group"), "inactive");
    assert!(
        !alive(main) && !alive(stubborn),
        "a process outlived the stop"
    );
    assert_eq!(
        lines(&graceful),
        ["done"],
        "the graceful child was killed before it finished"
    );
    assert!(
        took >= Duration::from_millis(1400),
        "the stop ended after {took:?}, before the stubborn child's timeout"
    );
    assert!(
        orchd
            .log_text()
            .contains("processes of the service outlived the stop timeout; killing them"),
        "{}",
        orchd.log_text()
    );
    // The main process exited on SIGTERM at once: its exit says so (no SIGKILL).
    let events = orchd.events(1000);
    let exited = events.iter().find(|e| e["kind"] == "exited").unwrap();
    assert_eq!(exited["code"], 0, "{exited}");
}

/// Shutdown stops dependents before what they require, each level once the one above is down:
/// the slowest to stop (web, at the top) still goes first.
#[test]
fn shutdown_stops_in_reverse_dependency_order() {
    let s = Setup::new();
    let (order, ready) = (s.file("order"), s.file("ready"));
    let unit = |name: &str, pause: &str, requires: &str| {
        format!(
            "exec = [\"/bin/sh\", \"-c\", \"trap 'sleep {pause}; echo {name} >> {order}; exit 0' TERM; echo {name} >> {ready}; while :; do sleep 0.05; done\"]\n{requires}",
            order = order.display(),
            ready = ready.display()
        )
    };
    s.unit("db", &unit("db", "0", ""))
        .unit("api", &unit("api", "0", "requires = [\"db\"]\n"))
        .unit("web", &unit("web", "0.3", "requires = [\"api\"]\n"))
        .unit("cron", &unit("cron", "0", "after = [\"web\"]\n"));
    let mut orchd = s.start();
    wait_for("every service's TERM trap", T, || lines(&ready).len() == 4);
    let status = orchd.stop();
    assert!(status.success(), "orchd exited with {status:?}");
    assert_eq!(lines(&order), ["cron", "web", "api", "db"]);
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
