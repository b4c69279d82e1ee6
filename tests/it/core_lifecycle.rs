//! orchd's own life: persisted intent across restarts, dying without leaving services behind,
//! broken units, signals, and sd_notify.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn a_stopped_service_stays_stopped_across_orchd_restarts() {
    let s = Setup::new();
    s.unit("a", "exec = [\"sleep\", \"1000\"]\n");
    s.unit("svc", "exec = [\"sleep\", \"1000\"]\n");
    let mut orchd = s.start();
    orchd.wait_new_pid("a", None, T);
    orchd.wait_new_pid("svc", None, T);
    let out = orchd.ctl(&["stop", "svc"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(orchd.stop().success());

    let mut orchd = s.start();
    orchd.wait_new_pid("a", None, T);
    // Every supervisor starts at once: with `a` running, `svc` would be under way too.
    let st = orchd.status("svc");
    assert_eq!(st["state"], "inactive", "{st}");
    assert_eq!(st["want_up"], false, "{st}");
    assert_eq!(orchd.count_events("svc", "started"), 0);

    let out = orchd.ctl(&["start", "svc"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(orchd.state("svc"), "running");
    assert!(orchd.stop().success());

    let orchd = s.start();
    orchd.wait_new_pid("svc", None, T);
    orchd.wait_new_pid("a", None, T);
}

/// A state file that cannot be parsed (a disk that filled up, a hand edit) is moved aside with
/// a warning, and orchd starts from defaults: every service runs.
#[test]
fn a_corrupt_state_file_is_moved_aside_and_the_services_run() {
    let s = Setup::new();
    s.unit("svc", "exec = [\"sleep\", \"1000\"]\n");
    let state = s.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("state.json"), "{\"services\": {\"svc\": tru").unwrap();
    let orchd = s.start();
    orchd.wait_new_pid("svc", None, T);
    let aside: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(state.join(&aside[0])).unwrap(),
        "{\"services\": {\"svc\": tru",
        "the corrupt file must be kept as it was"
    );
    let log = orchd.log_text();
    assert!(
        log.contains("WARN")
            && log.contains("state file is corrupt; moved aside, starting from defaults"),
        "{log}"
    );
    // The state is written anew, and readable by the next orchd.
    let out = orchd.ctl(&["stop", "svc"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("state.json")).unwrap()).unwrap();
    assert!(json.is_object(), "{json}");
}

#[test]
fn sigkill_of_orchd_leaves_nothing_behind_after_the_next_start() {
    let s = Setup::new();
    let daemon_file = s.file("daemon.pid");
    s.unit("plain", "exec = [\"sleep\", \"1000\"]\n");
    // A daemon that leaves the process group with setsid, and a plain child in the group.
    s.unit(
        "forker",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"setsid sh -c 'echo $$ > {}; exec sleep 1000' & sleep 1000\"]\n",
            daemon_file.display()
        ),
    );
    let mut orchd = s.start();
    let plain = orchd.wait_new_pid("plain", None, T);
    let forker = orchd.wait_new_pid("forker", None, T);
    let daemon = wait_some("the daemon's pid", T, || read_pid(&daemon_file));
    let marker = env_of(plain, "ORCH_INSTANCE").expect("ORCH_INSTANCE in the service's env");
    let id = marker.split('/').next().unwrap().to_owned();
    let prefix = format!("ORCH_INSTANCE={id}/");
    // Everything of this orchd: plain, forker's shell and its sleep, the daemon.
    let first = wait_some("4 processes of the first orchd", T, || {
        let pids = pids_with_env(&prefix);
        (pids.len() >= 4).then_some(pids)
    });
    assert!(
        first.contains(&daemon),
        "{first:?} lacks the daemon {daemon}"
    );

    orchd.signal(Signal::SIGKILL);
    orchd.wait_exit(T);
    // PDEATHSIG: the main processes die with orchd.
    wait_for("the main processes to die with orchd", T, || {
        !alive(plain) && !alive(forker)
    });
    // The daemon escaped the group and PDEATHSIG: only the next orchd's sweep catches it.
    assert!(
        alive(daemon),
        "the daemon died early; the test shows nothing"
    );

    let orchd = s.start();
    wait_for("every process of the first orchd to be gone", T, || {
        first.iter().all(|&p| !alive(p))
    });
    let new_plain = orchd.wait_new_pid("plain", None, T);
    assert!(!first.contains(&new_plain));
}

#[test]
fn a_broken_unit_is_bad_setting_and_the_rest_run() {
    let s = Setup::new();
    s.unit("good", "exec = [\"sleep\", \"1000\"]\n");
    s.unit("broken", "exec = [\"sleep\", \"1000\"]\nrestrat = 1\n");
    let orchd = s.start();
    orchd.wait_new_pid("good", None, T);
    let st = orchd.status("broken");
    assert_eq!(st["state"], "bad-setting", "{st}");
    let file = s.path().join("units").join("broken.toml");
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("{}:2:1: unknown field `restrat`", file.display())),
        "reason: {reason}"
    );
    // orchctl start refuses it with the reason, exit 1.
    let out = orchd.ctl(&["start", "broken"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("restrat"),
        "{}",
        text(&out.stderr)
    );

    let out = orchd_check(&s.config_path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    let expected = format!(
        "{}:2:1: unknown field `restrat`, expected one of `description`, `exec`, `working_dir`, \
         `release`, `user`, `group`, `env`, `env_file`, `requires`, `after`, `alert`, \
         `restart`, `stop`, `health`, `deploy`",
        file.display()
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), [expected.as_str()]);
}

#[test]
fn orchd_check_accepts_the_demo_units() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("units/orchd.toml");
    let out = orchd_check(&config);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // The check saw every demo unit (a units_dir pointing elsewhere would pass vacuously).
    let dir = config.parent().unwrap().join("services");
    let units = std::fs::read_dir(&dir).unwrap().count();
    assert!(units >= 4, "{units} demo units");
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: configuration is valid ({units} unit(s) in {})\n",
            config.display(),
            dir.display()
        )
    );
}

/// `orchd --check` prints every error of every unit as FILE:LINE:COL: message, sorted, and
/// exits 2; each of the mistakes the issue names has its exact text here.
#[test]
fn orchd_check_prints_every_error_with_its_place() {
    let s = Setup::new();
    s.unit("wrongtype", "exec = \"sleep 1000\"\n")
        .unit(
            "baddur",
            "exec = [\"sleep\", \"1000\"]\n[restart]\ndelay = \"5 parsecs\"\n",
        )
        .unit("emptyexec", "exec = []\n")
        .unit(
            "unknowndep",
            "exec = [\"sleep\", \"1000\"]\nrequires = [\"nosuch\"]\n",
        )
        .unit(
            "cycle-a",
            "exec = [\"sleep\", \"1000\"]\nrequires = [\"cycle-b\"]\n",
        )
        .unit(
            "cycle-b",
            "exec = [\"sleep\", \"1000\"]\nafter = [\"cycle-a\"]\n",
        )
        .unit(
            "ports-a",
            "exec = [\"sleep\", \"1000\"]\n[deploy]\nlisten = \"127.0.0.1:9100\"\nports = [9101, 9102]\n",
        )
        .unit(
            "ports-b",
            "exec = [\"sleep\", \"1000\"]\n[deploy]\nlisten = \"127.0.0.1:9200\"\nports = [9102, 9103]\n",
        )
        .unit("unknownkey", "exec = [\"sleep\", \"1000\"]\nrestrat = 1\n")
        .unit("fine", "exec = [\"sleep\", \"1000\"]\n");
    s.write_config();
    let out = orchd_check(&s.config_path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let units = s.path().join("units");
    let at = |unit: &str| units.join(format!("{unit}.toml")).display().to_string();
    let expected = [
        format!(
            "{}:3:9: invalid duration \"5 parsecs\": unknown time unit \"parsecs\", supported \
             units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)",
            at("baddur")
        ),
        format!(
            "{}:2:13: dependency cycle: cycle-a -> cycle-b -> cycle-a",
            at("cycle-a")
        ),
        format!(
            "{}:2:10: dependency cycle: cycle-a -> cycle-b -> cycle-a",
            at("cycle-b")
        ),
        format!(
            "{}:1:8: `exec` must not be empty (omit it for a monitor-only unit with [health])",
            at("emptyexec")
        ),
        format!(
            "{}:4:16: port 9102 is also a slot port of unit `ports-b`",
            at("ports-a")
        ),
        format!(
            "{}:4:10: port 9102 is also a slot port of unit `ports-a`",
            at("ports-b")
        ),
        format!(
            "{}:2:13: unknown dependency `nosuch`: no unit file nosuch.toml in {}",
            at("unknowndep"),
            units.display()
        ),
        format!(
            "{}:2:1: unknown field `restrat`, expected one of `description`, `exec`, \
             `working_dir`, `release`, `user`, `group`, `env`, `env_file`, `requires`, `after`, \
             `alert`, `restart`, `stop`, `health`, `deploy`",
            at("unknownkey")
        ),
        format!(
            "{}:1:8: invalid type: string \"sleep 1000\", expected an array",
            at("wrongtype")
        ),
    ];
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), expected);
    assert_eq!(text(&out.stderr), "9 error(s)\n");
}

#[test]
fn sigint_stops_everything_and_exits_zero() {
    let s = Setup::new();
    s.unit("a", "exec = [\"sleep\", \"1000\"]\n");
    s.unit("b", "exec = [\"sleep\", \"1000\"]\nrequires = [\"a\"]\n");
    let mut orchd = s.start();
    let a = orchd.wait_new_pid("a", None, T);
    let b = orchd.wait_new_pid("b", None, T);
    orchd.signal(Signal::SIGINT);
    let status = orchd.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "orchd exited with {status:?}");
    assert!(!alive(a) && !alive(b));
    assert!(!s.socket().exists(), "socket file left behind");
    assert!(orchd.log_text().contains("stopping all services"));
    assert_eq!(
        orch_cgroup(&s),
        None,
        "orchd's cgroup directory left behind"
    );
}

#[test]
fn a_second_sigterm_cuts_a_slow_stop_short_and_leaves_nothing() {
    let s = Setup::new();
    let got_term = s.file("got-term");
    let child_file = s.file("child.pid");
    let script = s.file("stubborn.sh");
    // The main process notes SIGTERM and goes on; its child ignores SIGTERM altogether.
    std::fs::write(
        &script,
        format!(
            "trap 'echo term >> {got}' TERM\n(trap '' TERM; exec sleep 1000) &\necho $! > {child}\nwhile :; do sleep 0.05; done\n",
            got = got_term.display(),
            child = child_file.display()
        ),
    )
    .unwrap();
    s.unit(
        "stubborn",
        &format!(
            "exec = [\"/bin/sh\", \"{}\"]\n[stop]\ntimeout = \"30s\"\n",
            script.display()
        ),
    );
    let mut orchd = s.start();
    let main = orchd.wait_new_pid("stubborn", None, T);
    let child = wait_some("the child's pid", T, || read_pid(&child_file));
    orchd.signal(Signal::SIGTERM);
    orchd.wait_for("the service to get SIGTERM", T, || got_term.exists());
    assert!(alive(main) && alive(child));

    let t0 = Instant::now();
    orchd.signal(Signal::SIGTERM);
    orchd.wait_exit(T);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "orchd took {took:?} to exit after the second SIGTERM"
    );
    wait_for(
        "the service's processes to be gone",
        Duration::from_secs(2),
        || !alive(main) && !alive(child),
    );
    assert_eq!(
        orch_cgroup(&s),
        None,
        "orchd's cgroup directory left behind"
    );
}

/// Messages read from a notify socket until `until` returns true on one (or the deadline).
fn read_until(sock: &UnixDatagram, seen: &mut Vec<String>, until: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + T;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline - Instant::now()))
            .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.lines().any(&until);
        seen.push(msg);
        if done {
            return;
        }
    }
    panic!("notify message not seen within {T:?}; got {seen:?}");
}

#[test]
fn sd_notify_ready_watchdog_and_stopping() {
    let s = Setup::new();
    let path = s.file("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    s.unit("db", "exec = [\"sleep\", \"1000\"]\n");
    s.unit("api", "exec = [\"sleep\", \"1000\"]\nrequires = [\"db\"]\n");
    s.unit("web", "exec = [\"sleep\", \"1000\"]\nafter = [\"api\"]\n");
    let notify = path.display().to_string();
    let mut orchd = s.start_with_env(&[
        ("NOTIFY_SOCKET", notify.as_str()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let mut seen = Vec::new();
    read_until(&sock, &mut seen, |l| l == "READY=1");
    // At READY=1 every service's process exists.
    let kids = children(orchd.pid());
    assert_eq!(kids.len(), 3, "orchd's children at READY=1: {kids:?}");
    // The variables are orchd's, not its services'.
    assert_eq!(env_of(kids[0], "NOTIFY_SOCKET"), None);
    assert_eq!(env_of(kids[0], "WATCHDOG_USEC"), None);

    // WATCHDOG_USEC=200ms: pings every 100 ms; two more after READY=1.
    read_until(&sock, &mut seen, |l| l == "WATCHDOG=1");
    read_until(&sock, &mut seen, |l| l == "WATCHDOG=1");
    orchd.signal(Signal::SIGTERM);
    read_until(&sock, &mut seen, |l| l == "STOPPING=1");
    assert!(orchd.wait_exit(T).success());
}
