//! Zero-downtime deploys through the real proxy, under continuous load: back-to-back deploys,
//! a release that never becomes healthy, a crash during the watch (automatic rollback), instant
//! and late rollbacks, history and the persisted release, SIGTERM mid-deploy, tcp mode, the
//! restart strategy and an external switch command.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::load::{Load, Tally};
use crate::util::*;

const T: Duration = Duration::from_secs(30);

fn backend() -> String {
    format!("{}/tests/support/backend.py", env!("CARGO_MANIFEST_DIR"))
}

struct Ports {
    listen: u16,
    a: u16,
    b: u16,
}

/// Three different free ports (one `free_ports` call: two separate probes can return the same
/// port, which made `deploy.ports` invalid about once in a few hundred runs).
fn ports() -> Ports {
    let [listen, a, b] = free_ports(3)[..] else {
        unreachable!("free_ports(3) returns three ports")
    };
    Ports { listen, a, b }
}

fn api_unit(s: &Setup, p: &Ports, mode: &str, watch: &str) -> String {
    format!(
        "exec = [\"python3\", \"{}\", \"{}\"]\nrelease = \"v1\"\n[health]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nretries = 2\nstart_period = \"5s\"\n[deploy]\nlisten = \"127.0.0.1:{}\"\nproxy = \"{mode}\"\nports = [{}, {}]\ntimeout = \"10s\"\nwatch = \"{watch}\"\ndrain = \"2s\"\n",
        backend(),
        s.path().display(),
        p.listen,
        p.a,
        p.b
    )
}

fn deploy(o: &Orchd, release: &str) -> (Option<i32>, Vec<Value>) {
    let out = o.ctl(&["--json", "deploy", "api", "--release", release]);
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code(), lines)
}

/// Run orchctl with `args` in a thread (a deploy that waits while the test acts).
fn in_background(
    sock: std::path::PathBuf,
    args: &[&str],
) -> std::thread::JoinHandle<std::process::Output> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    std::thread::spawn(move || {
        std::process::Command::new(ORCHCTL)
            .arg("--socket")
            .arg(sock)
            .args(&args)
            .output()
            .unwrap()
    })
}

fn result_of(lines: &[Value]) -> Value {
    lines.last().cloned().unwrap_or(Value::Null)
}

fn assert_clean(t: &Tally, what: &str) {
    assert!(
        t.failures.is_empty(),
        "{what}: {} failed requests, first: {:?}",
        t.failures.len(),
        &t.failures[..t.failures.len().min(5)]
    );
    assert!(
        t.answers.len() > 20,
        "{what}: only {} answers: is the load running?",
        t.answers.len()
    );
}

fn wait_serving(p: &Ports, release: &str) {
    wait_for(&format!("the proxy to serve {release}"), T, || {
        std::net::TcpStream::connect(("127.0.0.1", p.listen)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            body.ends_with(&format!("\r\n\r\n{release}\n"))
        })
    });
}

#[test]
fn ten_back_to_back_deploys_under_load_fail_no_request() {
    let s = Setup::new();
    let p = ports();
    s.unit("api", &api_unit(&s, &p, "http", "200ms"));
    let o = s.start();
    wait_serving(&p, "v1");
    let load = Load::start(p.listen, 4, 2);
    let mut switched_at = Vec::new();
    for i in 2..=11 {
        let release = format!("v{i}");
        let (code, lines) = deploy(&o, &release);
        let r = result_of(&lines);
        assert_eq!(
            code,
            Some(0),
            "deploy {release}: {lines:?}\n{}",
            o.log_text()
        );
        assert_eq!(r["result"], "succeeded");
        assert_eq!(r["release"], release.as_str());
        assert_eq!(r["previous"], format!("v{}", i - 1));
        // Reported only once recorded: the state file already names the new release, and
        // the history has its entry, the moment the client hears "succeeded".
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.path().join("state/state.json")).unwrap())
                .unwrap();
        assert_eq!(state["services"]["api"]["release"], release.as_str());
        let history: serde_json::Value = serde_json::from_slice(
            &std::fs::read(s.path().join("state/history/api.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            history.as_array().unwrap().last().unwrap()["release"],
            release.as_str()
        );
        let steps: Vec<&str> = lines.iter().filter_map(|l| l["step"].as_str()).collect();
        assert_eq!(
            steps,
            [
                "deploying",
                "started",
                "healthy",
                "switched",
                "watching",
                "old_stopped"
            ]
        );
        switched_at.push((Instant::now(), release));
    }
    let tally = load.finish();
    assert_clean(&tally, "10 deploys");
    // After each deploy finished, every new connection is answered by that release or a later one.
    for (at, release) in &switched_at {
        let n: u32 = release[1..].parse().unwrap();
        let stale: Vec<&str> = tally
            .answers
            .iter()
            .filter(|a| a.fresh && a.at > *at)
            .filter(|a| a.release[1..].parse::<u32>().unwrap_or(0) < n)
            .map(|a| a.release.as_str())
            .collect();
        assert!(
            stale.is_empty(),
            "after {release} was active, new connections got {stale:?}"
        );
    }
    let h = o.json(&["history", "api"]);
    assert_eq!(
        h["history"].as_array().unwrap().len(),
        5,
        "keep_releases bounds the history"
    );
    assert_eq!(h["rollback_to"], "v10");
    assert_eq!(o.status("api")["release"], "v11");
}

#[test]
fn a_release_that_never_becomes_healthy_is_not_switched_to() {
    let s = Setup::new();
    let p = ports();
    let unit =
        api_unit(&s, &p, "http", "200ms").replace("timeout = \"10s\"", "timeout = \"1500ms\"");
    s.unit("api", &unit);
    std::fs::write(s.file("fail-health-v2"), b"").unwrap();
    let o = s.start();
    wait_serving(&p, "v1");
    let load = Load::start(p.listen, 2, 1);
    let (code, lines) = deploy(&o, "v2");
    let tally = load.finish();
    assert_eq!(code, Some(1), "{lines:?}");
    let r = result_of(&lines);
    assert_eq!(r["result"], "failed");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("release v2 was not ready within 1s 500ms"),
        "{r}"
    );
    assert_clean(&tally, "failed deploy");
    assert!(
        tally.answers.iter().all(|a| a.release == "v1"),
        "a v2 answer got through"
    );
    assert_eq!(o.status("api")["release"], "v1");
    let h = o.json(&["history", "api"]);
    assert_eq!(h["history"][0]["result"], "failed");
    assert!(o.events(200).iter().any(|e| e["kind"] == "deploy_failed"));
}

#[test]
fn a_crash_during_the_watch_rolls_back_automatically() {
    let s = Setup::new();
    let p = ports();
    s.unit("api", &api_unit(&s, &p, "http", "30s"));
    let o = s.start();
    wait_serving(&p, "v1");
    let load = Load::start(p.listen, 3, 1);
    wait_for("the load to run", T, || load.count() > 20);
    let ctl = in_background(s.socket(), &["--json", "deploy", "api", "--release", "v2"]);
    wait_for("v2 to be switched to", T, || {
        o.status("api")["release"] == "v2"
    });
    let before = load.count();
    wait_for("requests to reach v2", T, || load.count() > before + 20);
    std::fs::write(s.file("crash-v2"), b"").unwrap();
    let out = ctl.join().unwrap();
    let tally = load.finish();
    assert_eq!(out.status.code(), Some(1));
    let last: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["result"], "rolled_back", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("release v2 stopped during the watch"),
        "{last}"
    );
    assert_clean(&tally, "rollback after a crash");
    assert_eq!(o.status("api")["release"], "v1");
    wait_serving(&p, "v1");
}

#[test]
fn instant_and_late_rollbacks() {
    let s = Setup::new();
    let p = ports();
    s.unit("api", &api_unit(&s, &p, "http", "30s"));
    let o = s.start();
    wait_serving(&p, "v1");
    let load = Load::start(p.listen, 2, 1);
    let sock = s.socket();
    let ctl = in_background(sock, &["--json", "deploy", "api", "--release", "v2"]);
    wait_for("v2 to be switched to", T, || {
        o.status("api")["release"] == "v2"
    });
    // Instant: the previous release still runs (we are inside the watch), so it is a switch.
    let t0 = Instant::now();
    let out = o.ctl(&["--json", "rollback", "api"]);
    let took = t0.elapsed();
    let r: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(r["result"], "rolled_back", "{r}");
    assert!(
        took < Duration::from_secs(1),
        "instant rollback took {took:?}"
    );
    assert_eq!(ctl.join().unwrap().status.code(), Some(1));
    assert_eq!(o.status("api")["release"], "v1");

    // A full deploy, then a late rollback: a deploy of the previous release.
    let quick = api_unit(&s, &p, "http", "100ms");
    s.unit("api", &quick);
    assert!(o.ctl(&["reload"]).status.success());
    let (code, _) = deploy(&o, "v3");
    assert_eq!(code, Some(0));
    let out = o.ctl(&["--json", "rollback", "api"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(r["result"], "succeeded");
    assert_eq!(r["release"], "v1");
    assert_eq!(r["rollback"], true);
    let tally = load.finish();
    assert_clean(&tally, "rollbacks");
    assert_eq!(o.status("api")["release"], "v1");
}

#[test]
fn a_second_deploy_is_refused_while_one_runs() {
    let s = Setup::new();
    let p = ports();
    s.unit("api", &api_unit(&s, &p, "http", "30s"));
    let o = s.start();
    wait_serving(&p, "v1");
    let sock = s.socket();
    let first = in_background(sock, &["deploy", "api", "--release", "v2"]);
    wait_for("the first deploy to be running", T, || {
        o.status("api")
            .get("deploying")
            .is_some_and(|d| !d.is_null())
    });
    let out = o.ctl(&["deploy", "api", "--release", "v3"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("a deploy of api is already running")
            && err.contains("started by uid 0 (root)"),
        "{err}"
    );
    // A rollback cancels the running deploy: it succeeds, the deploy ends rolled back.
    let out = o.ctl(&["rollback", "api"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let first = first.join().unwrap();
    assert_eq!(first.status.code(), Some(1));
    assert!(
        text(&first.stdout).contains("ROLLED BACK"),
        "{}",
        text(&first.stdout)
    );
    assert_eq!(o.status("api")["release"], "v1");
}

#[test]
fn the_last_good_release_comes_back_after_a_restart_of_orchd() {
    let s = Setup::new();
    let p = ports();
    s.unit("api", &api_unit(&s, &p, "http", "100ms"));
    let mut o = s.start();
    wait_serving(&p, "v1");
    assert_eq!(deploy(&o, "v2").0, Some(0));
    assert!(o.stop().success());
    let o = s.start();
    wait_serving(&p, "v2");
    assert_eq!(o.status("api")["release"], "v2");
}

#[test]
fn sigterm_in_the_middle_of_a_deploy_leaves_a_consistent_state() {
    let s = Setup::new();
    let p = ports();
    s.unit("api", &api_unit(&s, &p, "http", "30s"));
    let mut o = s.start();
    wait_serving(&p, "v1");
    let sock = s.socket();
    let ctl = in_background(sock, &["--json", "deploy", "api", "--release", "v2"]);
    wait_for("v2 to be switched to", T, || {
        o.status("api")["release"] == "v2"
    });
    assert!(o.stop().success(), "{}", o.log_text());
    let _ = ctl.join();
    // v2 never finished its watch: v1 is the release that comes back.
    let o = s.start();
    wait_serving(&p, "v1");
    assert_eq!(o.status("api")["release"], "v1");
    assert_eq!(deploy(&o, "v3").0, None.or(Some(0)));
}

#[test]
fn tcp_mode_deploys_without_refusing_connections() {
    let s = Setup::new();
    let p = ports();
    s.unit("api", &api_unit(&s, &p, "tcp", "200ms"));
    let o = s.start();
    wait_serving(&p, "v1");
    // tcp mode routes per connection: use new connections (keep-alive ones drain with the old).
    let load = Load::start(p.listen, 0, 4);
    for r in ["v2", "v3"] {
        let (code, lines) = deploy(&o, r);
        assert_eq!(code, Some(0), "{lines:?}");
    }
    let tally = load.finish();
    assert_clean(&tally, "tcp deploys");
    wait_serving(&p, "v3");
}

#[test]
fn a_service_without_deploy_is_deployed_by_restart_and_rolled_back_on_failure() {
    let s = Setup::new();
    s.unit(
        "worker",
        "exec = [\"/bin/sh\", \"-c\", \"test $ORCH_RELEASE != bad || exit 3; exec sleep 1000\"]\nrelease = \"w1\"\n",
    );
    let o = s.start();
    o.wait_new_pid("worker", None, T);
    let out = o.ctl(&["--json", "deploy", "worker", "--release", "w2"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(o.status("worker")["release"], "w2");
    let out = o.ctl(&["--json", "deploy", "worker", "--release", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(r["result"], "rolled_back", "{r}");
    o.wait_state("worker", "running", T);
    assert_eq!(o.status("worker")["release"], "w2");
}

#[test]
fn an_external_switch_command_points_the_front_at_the_new_port() {
    let s = Setup::new();
    let p = ports();
    let record = s.file("switched-to");
    let unit = format!(
        "exec = [\"python3\", \"{}\", \"{}\"]\nrelease = \"v1\"\n[health]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ninterval = \"50ms\"\nstart_period = \"5s\"\n[deploy]\nswitch = \"command\"\nswitch_command = [\"/bin/sh\", \"-c\", \"echo {{port}} > {}\"]\nports = [{}, {}]\nwatch = \"100ms\"\n",
        backend(),
        s.path().display(),
        record.display(),
        p.a,
        p.b
    );
    s.unit("api", &unit);
    let mut o = s.start();
    o.wait_new_pid("api", None, T);
    // At start the front is pointed at the running release.
    wait_for("the switch command at start", T, || {
        std::fs::read_to_string(&record).is_ok_and(|r| r.trim() == p.a.to_string())
    });
    let (code, lines) = deploy(&o, "v2");
    assert_eq!(code, Some(0), "{lines:?}");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap().trim(),
        p.b.to_string()
    );
    // After a restart of orchd the release runs on the first slot again: the front follows.
    assert!(o.stop().success());
    let o = s.start();
    o.wait_new_pid("api", None, T);
    wait_for("the front to follow the restarted release", T, || {
        std::fs::read_to_string(&record).is_ok_and(|r| r.trim() == p.a.to_string())
    });
    assert_eq!(o.status("api")["release"], "v2");
}
