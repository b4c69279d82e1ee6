//! The control plane through the real orchctl: commands, output, exit codes, auth, reload,
//! and garbage on the socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

const T: Duration = Duration::from_secs(10);

fn sleeper(s: &Setup, name: &str) {
    s.unit(name, "exec = [\"sleep\", \"1000\"]\n");
}

#[test]
fn status_json_has_the_contract_fields_and_human_output_is_a_table() {
    let s = Setup::new();
    sleeper(&s, "api");
    let orchd = s.start();
    let pid = orchd.wait_new_pid("api", None, T);
    let v = orchd.json(&["status"]);
    let svc = &v["services"][0];
    for field in [
        "name", "state", "health", "pid", "release", "restarts", "since",
    ] {
        assert!(svc.get(field).is_some(), "status --json lacks {field}: {v}");
    }
    assert_eq!(svc["name"], "api");
    assert_eq!(svc["state"], "running");
    assert_eq!(svc["health"], "none");
    assert_eq!(svc["pid"], pid);
    assert_eq!(svc["release"], "current");
    let out = orchd.ctl(&["status"]);
    assert!(out.status.success());
    let text = text(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        [
            "NAME", "STATE", "HEALTH", "PID", "RELEASE", "RESTARTS", "SINCE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        ["api", "running", "none", &pid.to_string(), "current", "0"]
    );
    assert!(!text.contains('\x1b'), "colours on a pipe: {text:?}");
}

#[test]
fn exit_codes() {
    let s = Setup::new();
    sleeper(&s, "api");
    s.unit("broken", "exec = [\"false\"]\n[restart]\npolicy = \"no\"\n");
    s.unit(
        "needs-broken",
        "exec = [\"sleep\", \"1000\"]\nrequires = [\"broken\"]\n",
    );
    let orchd = s.start();
    orchd.wait_new_pid("api", None, T);
    // 0: done
    let out = orchd.ctl(&["restart", "api"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // 1: the operation failed (the service failed: its dependency is failed)
    orchd.wait_state("broken", "failed", T);
    let out = orchd.ctl(&["restart", "needs-broken"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("needs-broken is failed: dependency broken is failed"),
        "{err}"
    );
    // 2: usage, unknown service
    assert_eq!(orchd.ctl(&["start"]).status.code(), Some(2));
    assert_eq!(orchd.ctl(&["frobnicate"]).status.code(), Some(2));
    let out = orchd.ctl(&["stop", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("no such service: nope; known services: api, broken, needs-broken"),
        "{}",
        text(&out.stderr)
    );
    // 1: a rollback with no history to go back to
    let out = orchd.ctl(&["rollback", "api"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no previous release of api is known"),
        "{}",
        text(&out.stderr)
    );
    // 3: cannot reach orchd, naming the socket
    let missing = s.file("nothing-here.sock");
    let out = Command::new(ORCHCTL)
        .arg("--socket")
        .arg(&missing)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains(&missing.display().to_string()),
        "{}",
        text(&out.stderr)
    );
    // ORCH_SOCKET is honoured
    let out = Command::new(ORCHCTL)
        .env("ORCH_SOCKET", s.socket())
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn start_stop_restart_reset() {
    let s = Setup::new();
    sleeper(&s, "api");
    s.unit(
        "crashy",
        "exec = [\"false\"]\n[restart]\ndelay = \"10ms\"\nburst = 2\ninterval = \"1m\"\n",
    );
    let orchd = s.start();
    let pid = orchd.wait_new_pid("api", None, T);
    let v = orchd.json(&["stop", "api"]);
    assert_eq!(v["services"][0]["state"], "inactive");
    assert!(!alive(pid));
    let v = orchd.json(&["start", "api"]);
    assert_eq!(v["services"][0]["state"], "running");
    let pid2 = v["services"][0]["pid"].as_i64().unwrap() as i32;
    let v = orchd.json(&["restart", "api"]);
    assert_ne!(v["services"][0]["pid"].as_i64().unwrap() as i32, pid2);
    orchd.wait_state("crashy", "failed", T);
    let out = orchd.ctl(&["--json", "reset", "crashy"]);
    // reset starts it again; it fails again at the start limit, which is reported.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v.get("error").is_some() || v["services"][0]["state"] != "failed",
        "{v}"
    );
    let starts = orchd.count_events("crashy", "started");
    assert!(
        starts >= 3,
        "reset did not start crashy again: {starts} starts"
    );
}

#[test]
fn logs_tail_and_follow() {
    let s = Setup::new();
    let trigger = s.file("trigger");
    s.unit(
        "talker",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"for i in 1 2 3 4 5; do echo line $i; done; while true; do if [ -e {t} ]; then rm {t}; echo MARK; fi; sleep 0.01; done\"]\n",
            t = trigger.display()
        ),
    );
    let orchd = s.start();
    orchd.wait_new_pid("talker", None, T);
    wait_for("five lines", T, || {
        text(&orchd.ctl(&["logs", "talker"]).stdout).contains("line 5")
    });
    let out = orchd.ctl(&["logs", "talker", "-n", "2"]);
    let t = text(&out.stdout);
    let got: Vec<&str> = t.lines().map(|l| l.rsplit("] ").next().unwrap()).collect();
    assert_eq!(got, ["line 4", "line 5"]);
    let v = orchd.json(&["logs", "talker", "-n", "1"]);
    assert_eq!(v["lines"][0]["line"], "line 5");
    assert_eq!(v["lines"][0]["stream"], "stdout");

    let mut follow = Command::new(ORCHCTL)
        .arg("--socket")
        .arg(s.socket())
        .args(["logs", "talker", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // A line printed after the call reaches the follower. Touch the trigger until it shows up
    // (the follower may not have subscribed yet when the first MARK is printed).
    let found = wait_some("MARK through logs -f", T, || {
        if !trigger.exists() {
            std::fs::write(&trigger, b"").unwrap();
        }
        rx.recv_timeout(Duration::from_millis(50))
            .ok()
            .filter(|l| l.ends_with("MARK"))
    });
    assert!(found.ends_with("] MARK"), "{found}");
    follow.kill().unwrap();
    follow.wait().unwrap();
}

#[test]
fn events_follow_sees_a_restart() {
    let s = Setup::new();
    sleeper(&s, "api");
    let orchd = s.start();
    orchd.wait_new_pid("api", None, T);
    let mut follow = Command::new(ORCHCTL)
        .arg("--socket")
        .arg(s.socket())
        .args(["--json", "events", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ev = wait_some("a started event through events -f", T, || {
        let out = orchd.ctl(&["restart", "api"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        rx.recv_timeout(Duration::from_millis(200))
            .ok()
            .filter(|l| l.contains("\"started\""))
    });
    let v: serde_json::Value = serde_json::from_str(&ev).unwrap();
    assert_eq!(v["event"]["service"], "api");
    follow.kill().unwrap();
    follow.wait().unwrap();
}

#[test]
fn reload_applies_only_what_changed() {
    let s = Setup::new();
    sleeper(&s, "same");
    sleeper(&s, "gone");
    s.unit("changed", "exec = [\"sleep\", \"1000\"]\n");
    s.unit("described", "exec = [\"sleep\", \"1000\"]\n");
    let orchd = s.start();
    let same = orchd.wait_new_pid("same", None, T);
    let gone = orchd.wait_new_pid("gone", None, T);
    let changed = orchd.wait_new_pid("changed", None, T);
    let described = orchd.wait_new_pid("described", None, T);

    s.remove_unit("gone");
    s.unit("changed", "exec = [\"sleep\", \"2000\"]\n");
    s.unit(
        "described",
        "description = \"now with words\"\nexec = [\"sleep\", \"1000\"]\n",
    );
    sleeper(&s, "added");

    let plan = orchd.json(&["reload", "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["added"], serde_json::json!(["added"]));
    assert_eq!(plan["removed"], serde_json::json!(["gone"]));
    assert_eq!(plan["restarted"], serde_json::json!(["changed"]));
    assert_eq!(plan["updated"], serde_json::json!(["described"]));
    assert_eq!(plan["unchanged"], serde_json::json!(["same"]));
    assert_eq!(
        orchd.pid_of("gone"),
        Some(gone),
        "dry run changed something"
    );

    let out = orchd.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.contains("added      added") && t.contains("restarted  changed"),
        "{t}"
    );
    orchd.wait_new_pid("added", None, T);
    orchd.wait_new_pid("changed", Some(changed), T);
    wait_for("the removed service to stop", T, || !alive(gone));
    assert_eq!(orchd.pid_of("same"), Some(same));
    assert_eq!(orchd.pid_of("described"), Some(described));
    assert_eq!(orchd.status("described")["description"], "now with words");
    let out = orchd.ctl(&["status", "gone"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn reload_with_a_broken_unit_changes_nothing() {
    let s = Setup::new();
    sleeper(&s, "a");
    sleeper(&s, "b");
    let orchd = s.start();
    let a = orchd.wait_new_pid("a", None, T);
    let b = orchd.wait_new_pid("b", None, T);
    s.unit("a", "exec = [\"sleep\", \"2000\"]\n");
    s.unit(
        "b",
        "exec = [\"sleep\", \"1000\"]\n[restart]\npolcy = \"always\"\n",
    );
    let out = orchd.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let b_path = s.path().join("units/b.toml");
    assert!(
        err.contains("configuration is invalid; nothing was changed"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:3:1: unknown field `polcy`", b_path.display())),
        "{err}"
    );
    assert_eq!(orchd.pid_of("a"), Some(a));
    assert_eq!(orchd.pid_of("b"), Some(b));
    // SIGHUP takes the same path and also keeps everything.
    orchd.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the refused reload in the log", T, || {
        orchd.log_text().contains("reload refused")
    });
    assert_eq!(orchd.pid_of("a"), Some(a));
}

/// Make the test dir reachable for an unprivileged client (the socket itself is 0666).
fn open_dir(s: &Setup) {
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn as_user(s: &Setup, uid: u32, groups: &str, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg("--regid=65534")
        .arg(if groups.is_empty() {
            "--clear-groups".to_owned()
        } else {
            format!("--groups={groups}")
        })
        .arg(ORCHCTL)
        .arg("--socket")
        .arg(s.socket())
        .args(args)
        .output()
        .unwrap()
}

fn ensure_group(name: &str) -> u32 {
    let _ = Command::new("groupadd").arg("-f").arg(name).status();
    nix::unistd::Group::from_name(name)
        .unwrap()
        .expect("group exists")
        .gid
        .as_raw()
}

#[test]
#[ignore = "needs root (switches users): scripts/test.sh runs it as root with --ignored"]
fn unauthorized_readonly_and_granted_callers() {
    require_root("to switch users");
    let ro = ensure_group("orchtest-ro");
    let s = Setup {
        extra_config: "[api]\nsocket = \"orchd.sock\"\nsocket_group = \"\"\ndbus = \"off\"\nreadonly_groups = [\"orchtest-ro\"]\n\n[[api.grant]]\nuser = \"nobody\"\ncommands = [\"restart\", \"status\"]\nservices = [\"granted\"]\n".into(),
        ..Setup::new()
    };
    sleeper(&s, "granted");
    sleeper(&s, "other");
    open_dir(&s);
    let orchd = s.start();
    let g = orchd.wait_new_pid("granted", None, T);
    let o = orchd.wait_new_pid("other", None, T);

    // nobody may restart what it is granted …
    let out = as_user(&s, 65534, "", &["restart", "granted"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    orchd.wait_new_pid("granted", Some(g), T);
    // … and nothing else.
    let out = as_user(&s, 65534, "", &["restart", "other"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("permission denied: uid 65534 (nobody)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(orchd.pid_of("other"), Some(o));
    let out = as_user(&s, 65534, "", &["reload"]);
    assert_eq!(out.status.code(), Some(4));
    // Its status shows only what it was granted.
    let out = as_user(&s, 65534, "", &["--json", "status"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["services"].as_array().unwrap().len(), 1, "{v}");

    // A uid with no rights at all.
    let out = as_user(&s, 65533, "", &["status"]);
    assert_eq!(out.status.code(), Some(4));
    let out = as_user(&s, 65533, "", &["stop", "other"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(orchd.log_text().contains("permission denied"));

    // readonly_groups: may read, not write.
    let out = as_user(&s, 65533, &ro.to_string(), &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = as_user(&s, 65533, &ro.to_string(), &["logs", "other"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = as_user(&s, 65533, &ro.to_string(), &["stop", "other"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(orchd.state("other"), "running");
}

fn raw_request(sock: &std::path::Path, line: &[u8]) -> String {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    c.write_all(line).unwrap();
    let mut r = BufReader::new(c);
    let mut resp = String::new();
    r.read_line(&mut resp).unwrap();
    resp
}

#[test]
fn garbage_on_the_socket_leaves_orchd_healthy() {
    let s = Setup::new();
    sleeper(&s, "api");
    let orchd = s.start();
    let pid = orchd.wait_new_pid("api", None, T);
    let sock = s.socket();

    let r = raw_request(&sock, b"this is not json\n");
    assert!(
        r.contains("\"code\":\"bad_request\"") && r.contains("bad JSON"),
        "{r}"
    );
    let r = raw_request(&sock, b"{\"id\":9,\"cmd\":\"explode\"}\n");
    assert!(
        r.contains("\"id\":9") && r.contains("unknown_command"),
        "{r}"
    );
    let r = raw_request(
        &sock,
        b"{\"id\":1,\"cmd\":\"start\",\"args\":{\"services\":42}}\n",
    );
    assert!(r.contains("bad arguments for \\\"start\\\""), "{r}");

    // random bytes, including invalid UTF-8
    let mut c = UnixStream::connect(&sock).unwrap();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = c.write_all(&noise);
    let _ = c.write_all(b"\n");
    drop(c);

    // a 2 MiB line gets an error, and the connection still works afterwards
    let mut c = UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let big = vec![b'x'; 2 * 1024 * 1024];
    c.write_all(&big).unwrap();
    c.write_all(b"\n{\"id\":2,\"cmd\":\"status\"}\n").unwrap();
    let mut r = BufReader::new(c);
    let mut first = String::new();
    r.read_line(&mut first).unwrap();
    assert!(first.contains("longer than 1048576 bytes"), "{first}");
    let mut second = String::new();
    r.read_line(&mut second).unwrap();
    assert!(
        second.contains("\"id\":2") && second.contains("\"services\""),
        "{second}"
    );

    // half a JSON object, then disconnect
    let mut c = UnixStream::connect(&sock).unwrap();
    c.write_all(b"{\"id\":3,\"cmd\":\"sta").unwrap();
    drop(c);

    // 500 connections at once
    let conns: Vec<UnixStream> = (0..500)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let mut extra = UnixStream::connect(&sock).unwrap();
    extra.set_read_timeout(Some(T)).unwrap();
    let mut buf = String::new();
    let _ = extra.read_to_string(&mut buf);
    assert!(buf.contains("too many connections"), "{buf}");
    drop(conns);

    wait_for("status to answer again", T, || {
        orchd.ctl(&["status"]).status.success()
    });
    assert_eq!(orchd.pid_of("api"), Some(pid));
    assert!(alive(orchd.pid()));
}

#[test]
fn a_second_orchd_on_the_same_socket_refuses_to_start() {
    let s = Setup::new();
    sleeper(&s, "api");
    let orchd = s.start();
    let pid = orchd.wait_new_pid("api", None, T);
    let out = Command::new(ORCHD)
        .arg("--config")
        .arg(s.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("another orchd is already listening on"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(orchd.pid_of("api"), Some(pid));
}

#[test]
fn stale_socket_file_is_replaced() {
    let s = Setup::new();
    sleeper(&s, "api");
    let l = std::os::unix::net::UnixListener::bind(s.socket()).unwrap();
    drop(l); // the file stays, nobody listens: what a crash leaves
    let orchd = s.start();
    orchd.wait_new_pid("api", None, T);
    let mode = std::fs::metadata(s.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
}

#[test]
fn completions_and_man_page() {
    let out = Command::new(ORCHCTL)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("complete -F _orchctl"),
        "{}",
        text(&out.stdout)
    );
    let out = Command::new(ORCHCTL).arg("man").output().unwrap();
    assert!(out.status.success());
    assert!(
        text(&out.stdout).starts_with(".ie"),
        "{}",
        &text(&out.stdout)[..80.min(out.stdout.len())]
    );
    assert!(text(&out.stdout).contains("orchctl"));
}

#[test]
fn reload_that_fixes_a_bad_unit_releases_its_dependents() {
    let s = Setup::new();
    s.unit(
        "db",
        "exec = [\"sleep\", \"1000\"]\n[restart]\npolcy = \"always\"\n",
    );
    s.unit("api", "exec = [\"sleep\", \"1000\"]\nrequires = [\"db\"]\n");
    let o = s.start();
    assert_eq!(o.state("db"), "bad-setting");
    o.wait_state("api", "failed", T);
    assert_eq!(o.status("api")["reason"], "dependency db is bad-setting");
    s.unit(
        "db",
        "exec = [\"sleep\", \"1000\"]\n[restart]\npolicy = \"always\"\n",
    );
    let out = o.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    o.wait_new_pid("db", None, T);
    o.wait_new_pid("api", None, T);
}

#[test]
fn reload_of_a_changed_release_runs_the_new_release() {
    let s = Setup::new();
    s.unit("api", "exec = [\"/bin/sh\", \"-c\", \"echo release=$ORCH_RELEASE; exec sleep 1000\"]\nrelease = \"v1\"\n");
    let o = s.start();
    let pid = o.wait_new_pid("api", None, T);
    s.unit("api", "exec = [\"/bin/sh\", \"-c\", \"echo release=$ORCH_RELEASE; exec sleep 1000\"]\nrelease = \"v2\"\n");
    assert!(o.ctl(&["reload"]).status.success());
    o.wait_new_pid("api", Some(pid), T);
    assert_eq!(o.status("api")["release"], "v2");
    wait_for("the v2 process's output", T, || {
        text(&o.ctl(&["logs", "api"]).stdout).contains("release=v2")
    });
}

#[test]
fn stopping_a_monitor_only_unit_is_immediate() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = Setup::new();
    s.unit(
        "edge",
        &format!("[health]\ntcp = \"127.0.0.1:{port}\"\ninterval = \"100ms\"\n"),
    );
    let o = s.start();
    o.wait_state("edge", "running", T);
    let t0 = std::time::Instant::now();
    let out = o.ctl(&["stop", "edge"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t0.elapsed()
    );
    assert_eq!(o.state("edge"), "inactive");
    assert_eq!(o.status("edge")["health"], "none");
    assert!(o.ctl(&["start", "edge"]).status.success());
}

/// A stuck orchd (here: stopped with SIGSTOP) does not hang orchctl: it gives up after
/// `--reply-timeout` with exit 3 and says why; once orchd runs again it answers.
#[test]
fn a_stuck_orchd_does_not_hang_orchctl() {
    let s = Setup::new();
    sleeper(&s, "web");
    let orchd = s.start();
    orchd.wait_new_pid("web", None, T);
    orchd.signal(nix::sys::signal::Signal::SIGSTOP);
    let started = std::time::Instant::now();
    let out = orchd.ctl(&["--reply-timeout", "500ms", "status"]);
    let took = started.elapsed();
    orchd.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "orchctl: orchd at {} did not answer within 500ms: it may be stuck (see its log: \
             journalctl -u orchd); --reply-timeout sets the wait\n",
            s.socket().display()
        )
    );
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    let out = orchd.ctl(&["status", "web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
