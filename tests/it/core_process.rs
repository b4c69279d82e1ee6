//! What a service process gets and what orchd does for it: reaping orphans, credentials,
//! environment, and output that floods without newlines.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn orphaned_grandchildren_are_reaped() {
    let s = Setup::new();
    let gc = s.file("grandchildren");
    // Five times: a child starts a grandchild in the background and exits at once, so the
    // grandchild is orphaned (re-parented to orchd, the subreaper) and exits a second later.
    s.unit(
        "spawner",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"for i in 1 2 3 4 5; do sh -c 'sleep 1 & echo $! >> {}'; done; exec sleep 1000\"]\n",
            gc.display()
        ),
    );
    let orchd = s.start();
    let me = orchd.pid();
    let pids: Vec<i32> = wait_some("5 grandchildren", T, || {
        let l = lines(&gc);
        (l.len() == 5).then(|| l.iter().map(|p| p.parse().unwrap()).collect())
    });
    wait_for("the grandchildren to be orphaned to orchd", T, || {
        pids.iter()
            .all(|&p| proc_stat(p).is_some_and(|(_, ppid)| ppid == me))
    });
    wait_for("the grandchildren to exit and be reaped", T, || {
        pids.iter().all(|&p| proc_stat(p).is_none())
    });
    wait_for("no zombie children of orchd", T, || {
        zombies_of(me).is_empty()
    });
    // The service itself is untouched.
    assert_eq!(orchd.state("spawner"), "running");
    assert_eq!(orchd.status("spawner")["restarts"], 0);
}

/// Create (once, idempotently, tolerating a concurrent run) user `orchtest` in supplementary
/// group `orchtestx`, and group `orchtestg`.
fn ensure_test_user() {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let run = |args: &[&str]| {
        // Failures (exists already, another process holds the lock) are retried by the caller.
        let _ = Command::new(args[0]).args(&args[1..]).output();
    };
    for g in ["orchtestg", "orchtestx"] {
        wait_for(&format!("group {g}"), T, || {
            if nix::unistd::Group::from_name(g).ok().flatten().is_none() {
                run(&["groupadd", "-f", g]);
            }
            nix::unistd::Group::from_name(g).ok().flatten().is_some()
        });
    }
    wait_for("user orchtest", T, || {
        if nix::unistd::User::from_name("orchtest")
            .ok()
            .flatten()
            .is_none()
        {
            run(&[
                "useradd",
                "-M",
                "-N",
                "-G",
                "orchtestx",
                "-s",
                "/bin/sh",
                "orchtest",
            ]);
        }
        nix::unistd::User::from_name("orchtest")
            .ok()
            .flatten()
            .is_some()
    });
    wait_for("orchtest in orchtestx", T, || {
        let member = nix::unistd::Group::from_name("orchtestx")
            .ok()
            .flatten()
            .is_some_and(|g| g.mem.iter().any(|m| m == "orchtest"));
        if !member {
            run(&["usermod", "-a", "-G", "orchtestx", "orchtest"]);
        }
        member
    });
}

#[test]
#[ignore = "needs root (creates users): scripts/test.sh runs it as root with --ignored"]
fn user_and_group_are_applied() {
    require_root("to create users");
    ensure_test_user();
    let uid = nix::unistd::User::from_name("orchtest")
        .unwrap()
        .unwrap()
        .uid
        .as_raw();
    let gid = nix::unistd::Group::from_name("orchtestg")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let extra = nix::unistd::Group::from_name("orchtestx")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let s = Setup::new();
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = s.file("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ids = out.join("id");
    s.unit(
        "unpriv",
        &format!(
            "user = \"orchtest\"\ngroup = \"orchtestg\"\nexec = [\"/bin/sh\", \"-c\", \"(id -u; id -g; id -G; echo $USER $HOME) > {}.tmp && mv {0}.tmp {0}; exec sleep 1000\"]\n",
            ids.display()
        ),
    );
    let orchd = s.start();
    let pid = orchd.wait_new_pid("unpriv", None, T);
    wait_for("the id output", T, || ids.exists());
    let got = lines(&ids);
    assert_eq!(got[0], uid.to_string(), "uid; {got:?}");
    assert_eq!(got[1], gid.to_string(), "gid; {got:?}");
    let groups: Vec<u32> = got[2]
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert!(
        groups.contains(&gid) && groups.contains(&extra),
        "groups {groups:?} should hold {gid} and {extra}"
    );
    assert!(!groups.contains(&0), "root's groups were kept: {groups:?}");
    // The same from the kernel's view of the running process.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:"), vec![uid.to_string(); 4]);
    assert_eq!(field("Gid:"), vec![gid.to_string(); 4]);
    // From the process itself: /proc/PID/environ can read empty while the shell execs sleep.
    let home = nix::unistd::User::from_name("orchtest")
        .unwrap()
        .unwrap()
        .dir;
    assert_eq!(got[3], format!("orchtest {}", home.display()), "{got:?}");
}

#[test]
fn a_flood_without_newlines_blocks_nothing() {
    let s = Setup::new();
    let marker = s.file("flood-done");
    // 200 MB without a single newline, then a marker: the marker appears only if orchd keeps
    // draining the pipe. What orchd may hold is bounded (the ring: 1000 lines of at most
    // 8 KiB; the hub's queue: 1024 lines), far below the flood: memory that grew with the
    // output would pass 190 MiB.
    s.unit(
        "flood",
        &format!(
            r#"exec = ["/bin/sh", "-c", "head -c 200000000 /dev/zero | tr '\\0' x; echo done > {}; exec sleep 1000"]"#,
            marker.display()
        ),
    );
    s.unit("quiet", "exec = [\"sleep\", \"1000\"]\n");
    let orchd = s.start();
    let me = orchd.pid();
    let mut max_rss = 0;
    let mut slowest = Duration::ZERO;
    let mut polls = 0;
    wait_for("the flood to get through", Duration::from_secs(60), || {
        let t0 = Instant::now();
        let out = orchd.ctl(&["--json", "status"]);
        slowest = slowest.max(t0.elapsed());
        assert!(out.status.success(), "status failed during the flood");
        polls += 1;
        max_rss = max_rss.max(rss_kib(me).unwrap_or(0));
        marker.exists()
    });
    // The guard is against a stall, not a slow answer on a loaded machine.
    assert!(
        slowest < Duration::from_secs(10),
        "orchctl status took {slowest:?} during the flood ({polls} polls)"
    );
    assert_eq!(orchd.state("quiet"), "running");
    assert_eq!(orchd.state("flood"), "running");
    let logs = orchd.json(&["logs", "flood", "-n", "20"]);
    let xs: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str())
        .filter(|l| l.starts_with('x'))
        .collect();
    assert!(!xs.is_empty(), "no flood lines in the log: {logs}");
    for l in &xs {
        assert_eq!(l.len(), 8192, "a line was not cut at 8192 bytes");
        assert!(l.bytes().all(|b| b == b'x'));
    }
    max_rss = max_rss.max(rss_kib(me).unwrap_or(0));
    eprintln!("orchd's largest RSS during the flood: {max_rss} KiB");
    assert!(
        max_rss < 96 * 1024,
        "orchd's RSS reached {max_rss} KiB during the flood"
    );
}

/// orchd's stderr is a pipe that nobody reads while a service floods lines: orchd's log drops
/// lines instead of stalling orchd, which keeps answering, and says how many it dropped.
#[test]
fn a_stderr_nobody_reads_stalls_nothing() {
    let s = Setup::new();
    // Three of them: more than orchd's two runtime threads, which a blocking log write of
    // each would hold. In bursts of 100 lines, which orchd's per-service log keeps up with, so
    // that all 9 000 lines reach orchd's own log: far more than its queue (1024) and the pipe
    // (~800) hold, so lines must be dropped there (a flood at full speed would mostly be
    // dropped before, by the per-service log, and might never fill the queue).
    let markers: Vec<_> = (0..3).map(|i| s.file(&format!("flood-done-{i}"))).collect();
    for (i, marker) in markers.iter().enumerate() {
        s.unit(
            &format!("chatty{i}"),
            &format!(
                r#"exec = ["/bin/sh", "-c", "for i in $(seq 30); do yes 'a line of output' | head -n 100; sleep 0.01; done; echo done > {}; exec sleep 1000"]"#,
                marker.display()
            ),
        );
    }
    s.write_config();
    let mut child = Command::new(ORCHD)
        .arg("--config")
        .arg(s.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let orchd = Orchd {
        child: Some(child),
        socket: s.socket(),
        log: s.file("unused.log"),
    };
    wait_for("orchd's socket", T, || {
        std::os::unix::net::UnixStream::connect(&orchd.socket).is_ok()
    });
    let mut slowest = Duration::ZERO;
    wait_for("the flood to get through", Duration::from_secs(60), || {
        let t0 = Instant::now();
        let out = orchd.ctl(&["status", "chatty0"]);
        slowest = slowest.max(t0.elapsed());
        assert!(out.status.success(), "status failed: {}", text(&out.stderr));
        markers.iter().all(|m| m.exists())
    });
    assert!(
        slowest < Duration::from_secs(10),
        "orchctl status took {slowest:?} while orchd's stderr was full"
    );
    // Now read it: the first line after the gap says what was lost.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("lines of this log were dropped") {
                let _ = tx.send(line);
                break;
            }
        }
    });
    let note = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("no note of dropped lines on orchd's stderr");
    assert!(
        note.starts_with("orchd: ")
            && note.ends_with(" lines of this log were dropped: stderr could not keep up"),
        "{note}"
    );
}

#[test]
fn environment_working_dir_port_and_release() {
    let s = Setup::new();
    let [listen, p1, p2] = free_ports(3)[..] else {
        unreachable!()
    };
    let units = s.path().join("units");
    std::fs::create_dir(units.join("wd")).unwrap();
    std::fs::write(
        units.join("app.env"),
        "# from the env file\nFROM_FILE=file\nOVERRIDDEN=file\nexport QUOTED=\"two words\"\n",
    )
    .unwrap();
    let env_out = s.file("env");
    let pwd_out = s.file("pwd");
    let args_out = s.file("args");
    s.unit(
        "app",
        &format!(
            r#"exec = ["/bin/sh", "-c", "env > {env}.tmp && mv {env}.tmp {env}; pwd > {pwd}; echo \"$0 $1\" > {args}; exec sleep 1000", "{{port}}", "{{release}}"]
working_dir = "wd"
env_file = "app.env"
env = {{ OVERRIDDEN = "unit", SUB = "p={{port}} r={{release}}" }}

[deploy]
listen = "127.0.0.1:{listen}"
ports = [{p1}, {p2}]
"#,
            env = env_out.display(),
            pwd = pwd_out.display(),
            args = args_out.display(),
        ),
    );
    let orchd = s.start();
    orchd.wait_new_pid("app", None, T);
    wait_for("the service's records", T, || {
        env_out.exists() && !lines(&args_out).is_empty()
    });
    let env: BTreeMap<String, String> = lines(&env_out)
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("PORT"), Some(p1.to_string().as_str()));
    assert_eq!(get("ORCH_RELEASE"), Some("current"));
    assert_eq!(get("ORCH_SERVICE"), Some("app"));
    assert_eq!(get("FROM_FILE"), Some("file"));
    assert_eq!(get("QUOTED"), Some("two words"));
    assert_eq!(
        get("OVERRIDDEN"),
        Some("unit"),
        "env must win over env_file"
    );
    assert_eq!(
        get("SUB"),
        Some(format!("p={p1} r=current").as_str()),
        "placeholders in env"
    );
    assert_eq!(
        lines(&pwd_out),
        vec![units.join("wd").display().to_string()],
        "working_dir is relative to the unit file"
    );
    assert_eq!(lines(&args_out), vec![format!("{p1} current")]);
    assert_eq!(orchd.status("app")["port"], p1);
}

/// The variables named by `password_env` hold SMTP passwords in orchd's environment: no service,
/// exec probe or switch command may inherit them, also when a reload names a new one.
#[test]
fn password_env_secrets_are_kept_from_services_and_probes() {
    let mut s = Setup::new();
    let channel = |name: &str, var: &str| {
        format!(
            "[[alerts.email]]\nname = \"{name}\"\nserver = \"127.0.0.1\"\nport = 1\ntls = \"none\"\nusername = \"orchd\"\npassword_env = \"{var}\"\nfrom = \"orchd@example.com\"\nto = [\"oncall@example.com\"]\n"
        )
    };
    s.extra_config = format!("[alerts]\n{}", channel("one", "ORCH_TEST_PW_ONE"));
    let (app_env, probe_env) = (s.file("app.env"), s.file("probe.env"));
    let dump =
        |path: &std::path::Path| format!("env > {p}.tmp && mv {p}.tmp {p}", p = path.display());
    s.unit(
        "app",
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"{}; exec sleep 1000\"]\n[health]\nexec = [\"/bin/sh\", \"-c\", \"{}\"]\ninterval = \"100ms\"\n",
            dump(&app_env),
            dump(&probe_env)
        ),
    );
    let orchd = s.start_with_env(&[
        ("ORCH_TEST_PW_ONE", "first-secret-value"),
        ("ORCH_TEST_PW_TWO", "second-secret-value"),
        ("ORCH_TEST_PLAIN", "plain-value"),
    ]);
    let seen = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    wait_for("the service's and the probe's environment", T, || {
        seen(&app_env).contains("ORCH_TEST_PLAIN=plain-value")
            && seen(&probe_env).contains("ORCH_TEST_PLAIN=plain-value")
    });
    for path in [&app_env, &probe_env] {
        let env = seen(path);
        assert!(!env.contains("ORCH_TEST_PW_ONE"), "{env}");
        assert!(!env.contains("first-secret-value"), "{env}");
        assert!(
            env.contains("ORCH_TEST_PW_TWO=second-secret-value"),
            "{env}"
        );
    }
    // A reload that names a second variable keeps that one from the next start too.
    s.extra_config = format!(
        "[alerts]\n{}{}",
        channel("one", "ORCH_TEST_PW_ONE"),
        channel("two", "ORCH_TEST_PW_TWO")
    );
    s.write_config();
    let out = orchd.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::remove_file(&app_env).unwrap();
    std::fs::remove_file(&probe_env).unwrap();
    let old = orchd.pid_of("app");
    assert!(orchd.ctl(&["restart", "app"]).status.success());
    orchd.wait_new_pid("app", old, T);
    wait_for(
        "the restarted service's and its probe's environment",
        T,
        || {
            seen(&app_env).contains("ORCH_TEST_PLAIN=plain-value")
                && seen(&probe_env).contains("ORCH_TEST_PLAIN=plain-value")
        },
    );
    for path in [&app_env, &probe_env] {
        let env = seen(path);
        assert!(!env.contains("secret-value"), "{env}");
    }
}

#[test]
fn a_start_that_cannot_run_says_why_and_the_rest_keep_running() {
    let s = Setup::new();
    let tool = s.file("not-executable");
    std::fs::write(&tool, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    s.unit(
        "missing",
        "exec = [\"/nonexistent/server\"]\n[restart]\npolicy = \"no\"\n",
    );
    s.unit(
        "nowhere",
        "exec = [\"/bin/sleep\", \"1000\"]\nworking_dir = \"/nonexistent-dir\"\n[restart]\npolicy = \"no\"\n",
    );
    s.unit(
        "notinpath",
        "exec = [\"no-such-tool-anywhere\"]\nenv = { PATH = \"/usr/bin:/bin\" }\n[restart]\npolicy = \"no\"\n",
    );
    s.unit(
        "denied",
        &format!(
            "exec = [\"{}\"]\n[restart]\npolicy = \"no\"\n",
            tool.display()
        ),
    );
    s.unit("fine", "exec = [\"/bin/sleep\", \"1000\"]\n");
    let orchd = s.start();
    let expect = [
        (
            "missing",
            "could not start: cannot run /nonexistent/server: No such file or directory (os error 2)",
        ),
        (
            "nowhere",
            "could not start: cannot enter working_dir /nonexistent-dir: No such file or directory (os error 2)",
        ),
        (
            "notinpath",
            "could not start: cannot run no-such-tool-anywhere: not found in PATH /usr/bin:/bin",
        ),
        (
            "denied",
            &format!(
                "could not start: cannot run {}: Permission denied (os error 13)",
                tool.display()
            ),
        ),
    ];
    for (name, reason) in expect {
        orchd.wait_for(&format!("{name} to fail"), T, || {
            orchd.state(name) == "failed"
        });
        assert_eq!(orchd.status(name)["reason"], reason, "{name}");
    }
    let events = orchd.events(100);
    let spawn_failed = events
        .iter()
        .filter(|e| e["kind"] == "spawn_failed")
        .count();
    assert_eq!(spawn_failed, 4, "{events:?}");
    orchd.wait_for("fine to run", T, || orchd.state("fine") == "running");
    // Nothing was left behind: no zombie of a failed exec.
    assert!(zombies_of(orchd.pid()).is_empty());
}
