//! Health checks against real servers on loopback: http, tcp and exec probes, start_period,
//! retries, restart vs alert, readiness of dependencies, monitor-only units.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::receiver::{Receiver, free_port};
use crate::stub::{HttpStub, Mode, TlsStub};
use crate::util::*;

const T: Duration = Duration::from_secs(10);

fn health_of(o: &Orchd, name: &str) -> String {
    o.status(name)["health"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The detail of `name`'s last failed probe ("" if none).
fn failure_detail(o: &Orchd, name: &str) -> String {
    o.status(name)["last_failure"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn wait_health(o: &Orchd, name: &str, want: &str) {
    let mut last = String::new();
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        last = health_of(o, name);
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "{name}: health {want} not reached (last {last})\n{}",
        o.log_text()
    );
}

fn probes(o: &Orchd, name: &str) -> Vec<Value> {
    o.status(name)["probes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn http_unit(url: &str, extra: &str) -> String {
    format!(
        "exec = [\"sleep\", \"1000\"]\n[restart]\ndelay = \"10ms\"\n[health]\nhttp = \"{url}\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nretries = 2\n{extra}"
    )
}

#[test]
fn start_period_suppresses_early_failures() {
    let stub = HttpStub::start(Mode::Error);
    let s = Setup::new();
    s.unit("api", &http_unit(&stub.url(), "start_period = \"30s\"\n"));
    let o = s.start();
    let pid = o.wait_new_pid("api", None, T);
    wait_for("three failed probes", T, || {
        probes(&o, "api")
            .iter()
            .filter(|p| p["ok"] == false)
            .count()
            >= 3
    });
    let st = o.status("api");
    assert_eq!(st["health"], "starting", "{st}");
    assert_eq!(st["last_failure"]["status"], 500);
    assert_eq!(
        st["last_failure"]["detail"],
        "HTTP 500, expected 2xx or 3xx"
    );
    assert_eq!(st["ready"], false);
    stub.set(Mode::Ok);
    wait_health(&o, "api", "healthy");
    assert_eq!(o.pid_of("api"), Some(pid));
    assert_eq!(o.status("api")["restarts"], 0);
}

#[test]
fn retries_failures_make_it_unhealthy_then_restart_then_healthy() {
    let stub = HttpStub::start(Mode::Ok);
    let s = Setup::new();
    s.unit("api", &http_unit(&stub.url(), ""));
    let o = s.start();
    let pid = o.wait_new_pid("api", None, T);
    wait_health(&o, "api", "healthy");
    assert_eq!(o.status("api")["ready"], true);
    stub.set(Mode::WrongBody);
    // WrongBody is still 200: only expect_body would catch it, so it stays healthy …
    wait_for("probes of the wrong body", T, || stub.hits() > 3);
    stub.set(Mode::Error);
    let new = o.wait_new_pid("api", Some(pid), T);
    assert_ne!(new, pid);
    let events = o.events(100);
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"unhealthy"), "{kinds:?}");
    let unhealthy = events.iter().find(|e| e["kind"] == "unhealthy").unwrap();
    assert_eq!(unhealthy["probe"]["status"], 500);
    stub.set(Mode::Ok);
    wait_health(&o, "api", "healthy");
    assert!(o.status("api")["restarts"].as_u64().unwrap() >= 1);
}

#[test]
fn expect_body_and_expect_status_narrow_success() {
    let stub = HttpStub::start(Mode::WrongBody);
    let s = Setup::new();
    s.unit(
        "api",
        &http_unit(
            &stub.url(),
            "expect_body = \"ok\"\non_unhealthy = \"alert\"\n",
        ),
    );
    s.unit(
        "teapot",
        &http_unit(
            &stub.url(),
            "expect_status = [500]\non_unhealthy = \"alert\"\n",
        ),
    );
    let o = s.start();
    wait_health(&o, "api", "unhealthy");
    assert_eq!(
        o.status("api")["last_failure"]["detail"],
        "HTTP 200, body does not contain \"ok\""
    );
    stub.set(Mode::Error);
    wait_health(&o, "teapot", "healthy");
}

#[test]
fn alert_mode_does_not_restart() {
    let stub = HttpStub::start(Mode::Ok);
    let s = Setup::new();
    s.unit("api", &http_unit(&stub.url(), "on_unhealthy = \"alert\"\n"));
    let o = s.start();
    let pid = o.wait_new_pid("api", None, T);
    wait_health(&o, "api", "healthy");
    stub.set(Mode::Error);
    wait_health(&o, "api", "unhealthy");
    let st = o.status("api");
    assert_eq!(st["pid"], pid);
    assert_eq!(st["state"], "running");
    assert_eq!(st["restarts"], 0);
    assert_eq!(st["ready"], false);
    stub.set(Mode::Ok);
    wait_health(&o, "api", "healthy");
}

#[test]
fn dependent_starts_only_after_its_dependency_is_healthy() {
    let stub = HttpStub::start(Mode::Error);
    let s = Setup::new();
    let stamp = s.file("api-started");
    s.unit("db", &http_unit(&stub.url(), "start_period = \"60s\"\n"));
    s.unit(
        "api",
        &format!("exec = [\"/bin/sh\", \"-c\", \"date +%s%N > {}; exec sleep 1000\"]\nrequires = [\"db\"]\n", stamp.display()),
    );
    let o = s.start();
    o.wait_new_pid("db", None, T);
    wait_for("db to be probed a few times", T, || stub.hits() >= 3);
    let st = o.status("api");
    assert_eq!(st["state"], "starting");
    assert_eq!(st["reason"], "waiting for db (running, health starting)");
    assert!(!stamp.exists());
    let released = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    stub.set(Mode::Ok);
    o.wait_new_pid("api", None, T);
    let started: u128 = wait_some("api's start stamp", T, || {
        std::fs::read_to_string(&stamp).ok()?.trim().parse().ok()
    });
    assert!(started >= released, "api started before db was healthy");
}

#[test]
fn dependent_fails_with_a_reason_if_its_dependency_never_becomes_healthy() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = Setup::new();
    s.unit(
        "db",
        &format!("exec = [\"sleep\", \"1000\"]\n[health]\ntcp = \"127.0.0.1:{port}\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nretries = 2\non_unhealthy = \"alert\"\n"),
    );
    s.unit("api", "exec = [\"sleep\", \"1000\"]\nrequires = [\"db\"]\n");
    let o = s.start();
    o.wait_state("api", "failed", T);
    assert_eq!(
        o.status("api")["reason"],
        "dependency db did not become healthy within 300ms (health unhealthy)"
    );
    assert_eq!(health_of(&o, "db"), "unhealthy");
    assert!(
        o.status("db")["last_failure"]["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("connect to 127.0.0.1:{port}: "))
    );
    // The dependency recovers: the dependent starts by itself.
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    o.wait_state("api", "running", T);
}

#[test]
fn a_hanging_endpoint_does_not_delay_other_probes() {
    let hang = HttpStub::start(Mode::Hang);
    let ok = HttpStub::start(Mode::Ok);
    let s = Setup::new();
    s.unit("slow", &format!("exec = [\"sleep\", \"1000\"]\n[health]\nhttp = \"{}\"\ninterval = \"100ms\"\ntimeout = \"700ms\"\non_unhealthy = \"alert\"\n", hang.url()));
    s.unit("fast", &format!("exec = [\"sleep\", \"1000\"]\n[health]\nhttp = \"{}\"\ninterval = \"100ms\"\ntimeout = \"700ms\"\n", ok.url()));
    let o = s.start();
    wait_for("the hanging probe to start", T, || hang.hits() >= 1);
    let before = ok.hits();
    let t0 = Instant::now();
    wait_for("five fast probes", T, || ok.hits() >= before + 5);
    assert!(
        t0.elapsed() < Duration::from_millis(650),
        "fast probes took {:?} while another hung",
        t0.elapsed()
    );
    let failure = wait_some("the hanging probe's timeout", T, || {
        let f = o.status("slow")["last_failure"].clone();
        (!f.is_null()).then_some(f)
    });
    assert_eq!(failure["detail"], "timed out after 700ms");
    assert!(failure["duration_ms"].as_u64().unwrap() < 1000, "{failure}");
}

#[test]
fn exec_probe_past_its_timeout_is_killed_with_its_group() {
    let s = Setup::new();
    let pidfile = s.file("probe.pid");
    s.unit(
        "api",
        &format!(
            "exec = [\"sleep\", \"1000\"]\n[health]\nexec = [\"/bin/sh\", \"-c\", \"sleep 100 & echo $! > {}; wait\"]\ninterval = \"1s\"\ntimeout = \"300ms\"\non_unhealthy = \"alert\"\n",
            pidfile.display()
        ),
    );
    let o = s.start();
    let failure = wait_some("the exec probe to time out", T, || {
        let f = o.status("api")["last_failure"].clone();
        (!f.is_null()).then_some(f)
    });
    assert_eq!(failure["detail"], "timed out after 300ms (killed)");
    let grandchild = wait_some("the probe's child pid", T, || read_pid(&pidfile));
    wait_for("the probe's process group to be gone", T, || {
        !alive(grandchild)
    });
}

#[test]
fn exec_probe_sees_the_service_environment() {
    let s = Setup::new();
    s.unit(
        "api",
        "exec = [\"sleep\", \"1000\"]\nrelease = \"v7\"\nenv = { CHECK = \"yes\" }\n[health]\nexec = [\"/bin/sh\", \"-c\", \"test \\\"$ORCH_RELEASE/$CHECK\\\" = v7/yes\"]\ninterval = \"100ms\"\n",
    );
    // With an env_file, the probe's environment is built off the runtime's threads.
    std::fs::write(s.path().join("units").join("web.env"), "FROM_FILE=file\n").unwrap();
    s.unit(
        "web",
        "exec = [\"sleep\", \"1000\"]\nenv_file = \"web.env\"\n[health]\nexec = [\"/bin/sh\", \"-c\", \"test \\\"$FROM_FILE\\\" = file\"]\ninterval = \"100ms\"\n",
    );
    let o = s.start();
    wait_health(&o, "api", "healthy");
    assert_eq!(o.status("api")["last_probe"]["detail"], "exit status 0");
    wait_health(&o, "web", "healthy");
    assert_eq!(o.status("web")["last_probe"]["detail"], "exit status 0");
}

#[test]
fn tcp_probe_follows_a_port_that_opens_and_closes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = Setup::new();
    s.unit(
        "edge",
        &format!("[health]\ntcp = \"127.0.0.1:{port}\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nretries = 1\n"),
    );
    let o = s.start();
    wait_health(&o, "edge", "healthy");
    drop(listener);
    wait_health(&o, "edge", "unhealthy");
    let _again = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    wait_health(&o, "edge", "healthy");
}

#[test]
fn monitor_only_unit_turns_unhealthy_and_back() {
    let stub = HttpStub::start(Mode::Ok);
    let s = Setup::new();
    s.unit("vendor", &format!("description = \"the vendor API\"\n[health]\nhttp = \"{}\"\ninterval = \"100ms\"\nretries = 1\n", stub.url()));
    let o = s.start();
    wait_health(&o, "vendor", "healthy");
    let st = o.status("vendor");
    assert_eq!(st["state"], "running");
    assert!(st["pid"].is_null());
    stub.set(Mode::Error);
    wait_health(&o, "vendor", "unhealthy");
    assert_eq!(o.state("vendor"), "running");
    stub.set(Mode::Ok);
    wait_health(&o, "vendor", "healthy");
    let events = o.events(100);
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["service"] == "vendor")
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["healthy", "unhealthy", "healthy"]);
}

#[test]
fn http_probe_sends_the_path_host_and_unit_headers() {
    let rx = Receiver::start(&[]);
    let s = Setup::new();
    s.unit(
        "edge",
        &format!(
            "[health]\nhttp = \"{}\"\ninterval = \"100ms\"\nheaders = {{ \"X-Probe-Token\" = \"t-1\" }}\n",
            rx.url("/ready?deep=1")
        ),
    );
    let o = s.start();
    wait_health(&o, "edge", "healthy");
    let hit = rx.hits().into_iter().next().expect("a probe request");
    assert_eq!(hit.path, "/ready?deep=1");
    assert_eq!(hit.headers["host"], format!("127.0.0.1:{}", rx.port));
    assert_eq!(hit.headers["x-probe-token"], "t-1");
    assert!(hit.headers["user-agent"].starts_with("orchd/"), "{hit:?}");
    assert_eq!(hit.headers["connection"], "close");
}

#[test]
fn http_probe_of_a_closed_port_says_connection_refused() {
    let port = free_port();
    let s = Setup::new();
    s.unit(
        "gone",
        &format!(
            "[health]\nhttp = \"http://127.0.0.1:{port}/health\"\ninterval = \"100ms\"\nretries = 1\n"
        ),
    );
    let o = s.start();
    wait_health(&o, "gone", "unhealthy");
    let detail = failure_detail(&o, "gone");
    assert!(
        detail.starts_with(&format!(
            "GET http://127.0.0.1:{port}/health: connect to 127.0.0.1:{port}: Connection refused"
        )),
        "{detail}"
    );
}

#[test]
fn https_probe_of_a_self_signed_endpoint_needs_insecure() {
    let tls = TlsStub::start();
    let s = Setup::new();
    let unit = |extra: &str| {
        format!(
            "[health]\nhttp = \"{}\"\ninterval = \"100ms\"\nretries = 1\n{extra}",
            tls.url()
        )
    };
    s.unit("lax", &unit("insecure = true\n"));
    s.unit("strict", &unit(""));
    let o = s.start();
    wait_health(&o, "lax", "healthy");
    wait_health(&o, "strict", "unhealthy");
    let detail = failure_detail(&o, "strict");
    assert!(
        detail.starts_with(&format!("GET {}: ", tls.url())) && detail.contains("certificate"),
        "{detail}"
    );
    assert_eq!(o.status("lax")["last_probe"]["detail"], "HTTP 200");
}

#[test]
fn a_password_in_a_probe_url_reaches_neither_status_nor_log() {
    let port = free_port();
    let s = Setup::new();
    s.unit(
        "db",
        &format!(
            "[health]\nhttp = \"http://ops:s3cret@127.0.0.1:{port}/health\"\ninterval = \"100ms\"\nretries = 1\n"
        ),
    );
    let o = s.start();
    wait_health(&o, "db", "unhealthy");
    let detail = failure_detail(&o, "db");
    assert!(
        detail.starts_with(&format!("GET http://…@127.0.0.1:{port}/health: ")),
        "{detail}"
    );
    let all = text(&o.ctl(&["--json", "status", "db"]).stdout);
    assert!(!all.contains("s3cret"), "{all}");
    assert!(!o.log_text().contains("s3cret"), "{}", o.log_text());
}
