//! Issue 14's defects, each through the real binaries: release names that are paths, durations
//! past their bounds (files and requests), a rollback to a release that never ran, unit files
//! that are dangling or looping symlinks, unsafe state and socket directories, and the modes
//! of state, history and outbox files.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

const T: Duration = Duration::from_secs(20);
const RULE: &str = "a release name is 1 to 128 bytes of any characters except `/`, NUL and \
                    control characters, and is not `.` or `..`";

/// One request line over the socket, its last response line.
fn raw(o: &Orchd, req: &Value) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(&o.socket).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut last = Value::Null;
    for line in BufReader::new(s).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let done = v["done"] == true;
        last = v;
        if done {
            break;
        }
    }
    last
}

/// A deploy grant only: a release like `../../evil` would run any program as the service's
/// user. Refused as a usage error (exit 2) by orchctl, the socket and rollback --to; the
/// service runs on untouched.
#[test]
fn release_names_that_are_paths_are_refused() {
    let s = Setup::new();
    s.unit(
        "app",
        "exec = [\"/bin/sh\", \"-c\", \"exec sleep 1000\", \"{release}\"]\nrelease = \"v1\"\n",
    );
    let o = s.start();
    o.wait_state("app", "running", T);
    let pid = o.pid_of("app");
    for bad in ["../../evil", "/x", "..", ".", ""] {
        let out = o.ctl(&["deploy", "app", "--release", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("invalid release name {bad:?}")),
            "{err}"
        );
        assert!(err.contains(RULE), "{err}");
        let out = o.ctl(&["rollback", "app", "--to", bad]);
        assert_eq!(out.status.code(), Some(2), "rollback --to {bad:?}");
        assert!(text(&out.stderr).contains(RULE));
    }
    let long = "x".repeat(129);
    let out = o.ctl(&["deploy", "app", "--release", &long]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid release name (129 bytes)"));
    for bad in ["a\nb", "a\u{0}b", "v1\u{1b}[2J", "x/../../y"] {
        let r = raw(
            &o,
            &serde_json::json!({"id": 1, "cmd": "deploy", "args": {"service": "app", "release": bad}}),
        );
        assert_eq!(r["error"]["code"], "bad_request", "{bad:?}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().contains(RULE));
    }
    assert_eq!(o.pid_of("app"), pid, "the service was not touched");
    assert_eq!(o.status("app")["release"], "v1");
    assert!(!o.log_text().contains("deploy started"));
}

/// Durations past their bounds: `--check` names the line; requests get a usage error and the
/// alerter and the service's supervisor go on (they panicked on the overflow before).
#[test]
fn durations_past_their_bounds_are_refused_and_nothing_dies() {
    let s = Setup::new();
    s.unit(
        "app",
        "exec = [\"sleep\", \"1000\"]\nrelease = \"v1\"\n[stop]\ntimeout = \"500000000000y\"\n",
    );
    s.write_config();
    let out = orchd_check(&s.config_path());
    assert_eq!(out.status.code(), Some(2));
    let unit = s.path().join("units/app.toml");
    assert!(
        text(&out.stdout).contains(&format!(
            "{}:4:11: stop.timeout = \"500000000000y\" is too long: at most 24h is allowed",
            unit.display()
        )),
        "{}",
        text(&out.stdout)
    );
    s.unit("app", "exec = [\"sleep\", \"1000\"]\nrelease = \"v1\"\n");
    let o = s.start();
    o.wait_state("app", "running", T);
    let pid = o.pid_of("app");

    let out = o.ctl(&["silence", "all", "--for", "500000000000y"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("bad --for: \"500000000000y\" is too long: at most 366d is allowed"),
        "{}",
        text(&out.stderr)
    );
    let out = o.ctl(&["silence", "all", "--for", "366d"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The alerter answers.
    let v = o.json(&["silences"]);
    assert_eq!(v["silences"].as_array().unwrap().len(), 1, "{v}");

    let out = o.ctl(&[
        "deploy",
        "app",
        "--release",
        "v2",
        "--timeout",
        "500000000000y",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bad --timeout: \"500000000000y\" is too long: at most 24h"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(o.pid_of("app"), pid);
    // The supervisor answers: a stop works and ends inactive.
    let out = o.ctl(&["stop", "app"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(o.state("app"), "inactive");
    assert!(!alive(pid.unwrap()));
}

/// `rollback --to R` for a service without `[deploy]`, where R cannot start: exit 1 and
/// `failed`, and the release that ran before runs again.
#[test]
fn a_rollback_to_a_release_that_never_ran_fails() {
    let s = Setup::new();
    s.unit(
        "worker",
        "exec = [\"/bin/sh\", \"-c\", \"test \\\"$ORCH_RELEASE\\\" != w9 && exec sleep 1000; exit 3\"]\nrelease = \"w1\"\n",
    );
    let o = s.start();
    o.wait_state("worker", "running", T);
    let out = o.ctl(&["deploy", "worker", "--release", "w2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = o.ctl(&["--json", "rollback", "worker", "--to", "w9"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let last: Value = text(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap();
    assert_eq!(last["result"], "failed", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("the rollback did not happen (w2 runs again)"),
        "{last}"
    );
    o.wait_for("w2 to run again", T, || {
        let st = o.status("worker");
        st["state"] == "running" && st["release"] == "w2"
    });
    // A rollback to a release that works still succeeds.
    let out = o.ctl(&["rollback", "worker", "--to", "w1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A unit file that is a dangling or looping symlink is an error with its path: `--check`
/// says so and a reload changes nothing (it used to read as "removed" and stop the service).
#[test]
fn unit_symlinks_that_lead_nowhere_are_errors() {
    let s = Setup::new();
    s.unit("app", "exec = [\"sleep\", \"1000\"]\n");
    let o = s.start();
    o.wait_state("app", "running", T);
    let pid = o.pid_of("app");
    let unit = s.path().join("units/app.toml");
    std::fs::remove_file(&unit).unwrap();
    std::os::unix::fs::symlink(s.path().join("nowhere.toml"), &unit).unwrap();
    let out = orchd_check(&s.config_path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stdout).contains(&format!(
            "{}:1:1: cannot read unit file: a symlink to a file that does not exist",
            unit.display()
        )),
        "{}",
        text(&out.stdout)
    );
    let out = o.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("a symlink to a file that does not exist"));
    let looping = s.path().join("units/loop.toml");
    std::os::unix::fs::symlink(&looping, &looping).unwrap();
    let out = orchd_check(&s.config_path());
    assert!(
        text(&out.stdout).contains(&format!(
            "{}:1:1: cannot read unit file: a symlink loop",
            looping.display()
        )),
        "{}",
        text(&out.stdout)
    );
    let fifo = s.path().join("units/fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = orchd_check(&s.config_path());
    assert!(
        text(&out.stdout).contains(&format!(
            "{}:1:1: cannot read unit file: not a regular file",
            fifo.display()
        )),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(o.pid_of("app"), pid, "the service runs on");
    assert_eq!(o.state("app"), "running");
}

/// Run orchd, which must exit at once; killed (and the test fails) if it runs on.
fn orchd_that_must_refuse(s: &Setup) -> std::process::Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_orchd"))
        .arg("--config")
        .arg(s.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let deadline = std::time::Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("orchd did not refuse to start within {T:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// orchd refuses a state_dir or socket directory that other users may write to, and keeps
/// state, history and outbox private (0700 directories, 0600 files).
#[test]
fn state_is_private_and_unsafe_directories_are_refused() {
    let s = Setup::new();
    std::fs::create_dir(s.path().join("state")).unwrap();
    std::fs::set_permissions(
        s.path().join("state"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    s.unit("app", "exec = [\"sleep\", \"1000\"]\nrelease = \"v1\"\n");
    s.write_config();
    let out = orchd_that_must_refuse(&s);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!(
            "refusing to use state_dir {}: it is writable by other users (mode 0777); `chmod go-w",
            s.path().join("state").display()
        )),
        "{}",
        text(&out.stderr)
    );
    std::fs::set_permissions(
        s.path().join("state"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // The socket's directory: the test dir itself.
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = orchd_that_must_refuse(&s);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("refusing to use the socket's directory"),
        "{}",
        text(&out.stderr)
    );
    assert!(!s.socket().exists());
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // A webhook nobody answers keeps an alert in the outbox.
    let mut s = s;
    let port = free_ports(1)[0];
    s.extra_config = format!(
        "[alerts]\n[[alerts.webhook]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{port}/x\"\n"
    );
    let o = s.start();
    o.wait_state("app", "running", T);
    assert!(
        o.ctl(&["deploy", "app", "--release", "v2"])
            .status
            .success()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(o.pid_of("app").unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let outbox = s.path().join("state/outbox");
    wait_for("an alert in the outbox", T, || {
        std::fs::read_dir(&outbox).is_ok_and(|mut d| d.next().is_some())
    });
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    let state = s.path().join("state");
    assert_eq!(
        mode(&state),
        0o700,
        "state_dir was 0755 and is made private"
    );
    assert_eq!(mode(&state.join("state.json")), 0o600);
    assert_eq!(mode(&state.join("history")), 0o700);
    assert_eq!(mode(&state.join("history/app.json")), 0o600);
    assert_eq!(mode(&outbox), 0o700);
    for f in std::fs::read_dir(&outbox).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
    // No temp file is ever left, and none follows a planted symlink.
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");
}

/// A panic in a service's supervisor kills the service's processes (nothing runs
/// unsupervised), shows it `failed` with the reason, alerts, and is listed by `status`; a
/// restart gives it a new supervisor. A panic in the alerter restarts it. (The panics are
/// injected by `ORCHD_TEST_PANIC`, which only debug builds read.)
#[test]
fn crashed_parts_are_contained_reported_and_restarted() {
    let hook = crate::receiver::Receiver::start(&[]);
    let mut s = Setup::new();
    s.extra_config = format!(
        "[alerts]\n[[alerts.webhook]]\nname = \"hook\"\nurl = \"{}\"\nformat = \"json\"\n",
        hook.url("/hook")
    );
    let child = s.file("child.pid");
    s.unit(
        "app",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"sleep 1000 & echo $! > {}; exec sleep 1000\"]\n",
            child.display()
        ),
    );
    s.unit("other", "exec = [\"sleep\", \"1000\"]\n");
    let o = s.start_with_env(&[("ORCHD_TEST_PANIC", "supervisor:app,alerter")]);
    o.wait_state("app", "running", T);
    o.wait_state("other", "running", T);
    let (pid, other) = (o.pid_of("app").unwrap(), o.pid_of("other"));
    let grandchild = wait_some("the child's pid", T, || read_pid(&child));

    let out = o.ctl(&["reset", "app"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    o.wait_state("app", "failed", T);
    let st = o.status("app");
    let reason = st["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("orchd's supervisor of app crashed (test panic requested by ORCHD_TEST_PANIC); its processes were killed; `orchctl restart app` supervises it again"),
        "{reason}"
    );
    wait_for("the service's processes to be killed", T, || {
        !alive(pid) && !alive(grandchild)
    });
    let v = o.json(&["status"]);
    let troubles = v["orchd_troubles"].as_array().expect("orchd_troubles");
    assert_eq!(troubles[0]["part"], "supervisor of app", "{v}");
    assert_eq!(troubles[0]["running"], false);
    let human = text(&o.ctl(&["status"]).stdout);
    assert!(
        human.contains("orchd: supervisor of app crashed once"),
        "{human}"
    );
    assert!(human.contains("NOT RUNNING"), "{human}");
    wait_for("the alert of the crash", T, || {
        hook.hits()
            .iter()
            .any(|h| String::from_utf8_lossy(&h.body).contains("supervisor of app crashed"))
    });
    assert_eq!(o.pid_of("other"), other, "the other service runs on");

    let out = o.ctl(&["restart", "app"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(o.state("app"), "running");
    assert_ne!(o.pid_of("app"), Some(pid));
    let v = o.json(&["status"]);
    assert_eq!(v["orchd_troubles"][0]["running"], true, "{v}");

    // The alerter: alert-test panics it; it is started again and answers.
    let out = o.ctl(&["alert-test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the alerter did not answer"),
        "{}",
        text(&out.stderr)
    );
    o.wait_for("the alerter to answer again", T, || {
        o.ctl(&["silences"]).status.success()
    });
    let v = o.json(&["status"]);
    let alerter = v["orchd_troubles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["part"] == "alerter")
        .cloned()
        .expect("the alerter's crash is listed");
    assert_eq!(alerter["running"], true);
    assert_eq!(alerter["crashes"], 1);
    // It still alerts: a crash of `other` reaches the hook.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(other.unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("an alert from the restarted alerter", T, || {
        hook.hits()
            .iter()
            .any(|h| String::from_utf8_lossy(&h.body).contains("\"other\""))
    });
    assert!(o.log_text().contains("a part of orchd crashed"));
}
