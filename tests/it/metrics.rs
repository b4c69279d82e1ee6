//! The Prometheus endpoint (`[metrics] listen`), scraped over real HTTP and checked with the
//! Prometheus project's own parser (python3-prometheus-client).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

const T: Duration = Duration::from_secs(10);

/// One HTTP/1.1 request on a new connection: (status code, head, body).
fn http(port: u16, request: &str) -> (u16, String, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    conn.set_read_timeout(Some(T)).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, head.to_owned(), body.to_owned())
}

fn scrape(port: u16) -> String {
    let (code, head, body) = http(
        port,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    body
}

/// The exposition parsed by the reference parser: `name type samples` per family.
fn parse_with_prometheus_client(exposition: &str) -> Vec<String> {
    let mut py = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(
            "import sys\n\
             from prometheus_client.parser import text_string_to_metric_families\n\
             for f in text_string_to_metric_families(sys.stdin.read()):\n\
             \x20   print(f.name, f.type, len(f.samples))\n",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (apt-get install python3-prometheus-client)");
    py.stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the exposition: {}\n{exposition}",
        text(&out.stderr)
    );
    text(&out.stdout).lines().map(str::to_owned).collect()
}

fn has(body: &str, sample: &str) -> bool {
    body.lines().any(|l| l == sample)
}

#[test]
fn metrics_show_states_health_exits_and_restarts() {
    let port = free_ports(1)[0];
    let mut s = Setup::new();
    s.extra_config = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    s.unit(
        "web",
        "exec = [\"sleep\", \"1000\"]\n[restart]\ndelay = \"0s\"\n",
    )
    .unit(
        "crashy",
        "exec = [\"/bin/sh\", \"-c\", \"exit 3\"]\n[restart]\npolicy = \"no\"\n",
    )
    .unit(
        "probed",
        "exec = [\"sleep\", \"1000\"]\n[health]\nexec = [\"true\"]\ninterval = \"100ms\"\n",
    )
    .unit("broken", "exec = [\"sleep\", \"1000\"]\nrestrat = 1\n");
    let orchd = s.start();
    let web = orchd.wait_new_pid("web", None, T);
    orchd.wait_state("crashy", "failed", T);
    orchd.wait_for("probed to be healthy", T, || {
        orchd.status("probed")["health"] == "healthy"
    });

    let mut body = String::new();
    orchd.wait_for("the failure in the metrics", T, || {
        body = scrape(port);
        has(&body, "orch_service_failed_total{service=\"crashy\"} 1")
            && has(&body, "orch_service_starts_total{service=\"web\"} 1")
            && has(&body, "orch_service_healthy{service=\"probed\"} 1")
    });
    let families = parse_with_prometheus_client(&body);
    for family in [
        "orch_service_state gauge 32",
        "orch_service_starts counter 4",
        "orch_service_exits counter 1",
        "orch_service_deploys counter 12",
        "process_cpu_seconds counter 1",
    ] {
        assert!(
            families.iter().any(|f| f == family),
            "{family}: {families:?}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    for sample in [
        format!("orch_build_info{{version=\"{version}\"}} 1"),
        "orch_service_state{service=\"web\",state=\"running\"} 1".into(),
        "orch_service_state{service=\"web\",state=\"failed\"} 0".into(),
        "orch_service_state{service=\"crashy\",state=\"failed\"} 1".into(),
        "orch_service_state{service=\"broken\",state=\"bad-setting\"} 1".into(),
        "orch_service_up{service=\"web\"} 1".into(),
        "orch_service_up{service=\"crashy\"} 0".into(),
        "orch_service_ready{service=\"probed\"} 1".into(),
        "orch_service_healthy{service=\"probed\"} 1".into(),
        "orch_service_probe_success{service=\"probed\"} 1".into(),
        "orch_service_release_info{service=\"web\",release=\"current\"} 1".into(),
        "orch_service_starts_total{service=\"web\"} 1".into(),
        "orch_service_starts_total{service=\"broken\"} 0".into(),
        "orch_service_exits_total{service=\"crashy\",status=\"3\"} 1".into(),
        "orch_service_failed_total{service=\"crashy\"} 1".into(),
        "orch_service_deploys_total{service=\"web\",result=\"succeeded\"} 0".into(),
        "orch_events_missed_total 0".into(),
    ] {
        assert!(has(&body, &sample), "missing `{sample}` in\n{body}");
    }
    // A service without a health check has no health sample.
    assert!(
        !body.contains("orch_service_healthy{service=\"web\"}"),
        "{body}"
    );

    // A crash and its restart show in the scrapes (the counters follow the events a moment
    // after the status).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(web), Signal::SIGKILL).unwrap();
    orchd.wait_new_pid("web", Some(web), T);
    let mut body = String::new();
    orchd.wait_for("the restart in the metrics", T, || {
        body = scrape(port);
        has(&body, "orch_service_starts_total{service=\"web\"} 2")
    });
    for sample in [
        "orch_service_starts_total{service=\"web\"} 2",
        "orch_service_exits_total{service=\"web\",status=\"SIGKILL\"} 1",
        "orch_service_restarts{service=\"web\"} 1",
        "orch_service_up{service=\"web\"} 1",
    ] {
        assert!(has(&body, sample), "missing `{sample}` in\n{body}");
    }
    let rss = body
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("orchd's RSS");
    assert!(rss > 1 << 20, "orchd's RSS {rss} bytes");
}

#[test]
fn metrics_refuse_what_they_do_not_serve_and_go_on() {
    let port = free_ports(1)[0];
    let mut s = Setup::new();
    s.extra_config = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    s.unit("web", "exec = [\"sleep\", \"1000\"]\n");
    let orchd = s.start();
    orchd.wait_new_pid("web", None, T);

    let (code, _, body) = http(
        port,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (code, body.as_str()),
        (404, "not found: the metrics are at /metrics\n")
    );
    let (code, head, _) = http(
        port,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 405);
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );
    let (code, head, body) = http(
        port,
        "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200, "{head}");
    assert_eq!(body, "", "a HEAD answer has no body");
    let (code, _, _) = http(port, "this is not http\r\n\r\n");
    assert_eq!(code, 400);
    assert!(has(&scrape(port), "orch_service_up{service=\"web\"} 1"));
    assert_eq!(orchd.state("web"), "running");
}

#[test]
fn a_metrics_port_in_use_is_an_error_and_the_services_run() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut s = Setup::new();
    s.extra_config = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    s.unit("web", "exec = [\"sleep\", \"1000\"]\n");
    let orchd = s.start();
    orchd.wait_new_pid("web", None, T);
    orchd.wait_for("the error in orchd's log", T, || {
        orchd.log_text().contains(&format!(
            "cannot listen for metrics on 127.0.0.1:{port}: Address already in use (os error 98); \
             orchd runs on without them"
        ))
    });
    assert_eq!(orchd.state("web"), "running");
}

#[test]
fn alert_deliveries_are_counted_per_channel() {
    let good = crate::receiver::Receiver::start(&[]);
    let refusing = crate::receiver::Receiver::start(&[404]);
    // Nothing listens there: every attempt fails and the alert waits in the outbox to retry.
    let down = crate::receiver::free_port();
    let port = free_ports(1)[0];
    let mut s = Setup::new();
    let hook = |name: &str, url: String| {
        format!("[[alerts.webhook]]\nname = \"{name}\"\nurl = \"{url}\"\nformat = \"json\"\n")
    };
    s.extra_config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[alerts]\n{}{}{}",
        hook("good", good.url("/hook")),
        hook("refusing", refusing.url("/hook")),
        hook("down", format!("http://127.0.0.1:{down}/hook")),
    );
    s.unit(
        "job",
        "exec = [\"sh\", \"-c\", \"echo about to fail; exit 7\"]\n[restart]\npolicy = \"no\"\n",
    );
    let orchd = s.start();
    orchd.wait_state("job", "failed", T);

    let expected = [
        "orch_alerts_delivered_total{channel=\"good\"} 1",
        "orch_alert_delivery_failures_total{channel=\"good\"} 0",
        "orch_alerts_pending{channel=\"good\"} 0",
        "orch_alerts_delivered_total{channel=\"refusing\"} 0",
        "orch_alert_delivery_failures_total{channel=\"refusing\"} 1",
        "orch_alerts_dropped_total{channel=\"refusing\"} 1",
        "orch_alerts_pending{channel=\"refusing\"} 0",
        "orch_alerts_delivered_total{channel=\"down\"} 0",
        "orch_alerts_dropped_total{channel=\"down\"} 0",
        "orch_alerts_pending{channel=\"down\"} 1",
    ];
    let mut body = String::new();
    orchd.wait_for("the deliveries in the metrics", T, || {
        body = scrape(port);
        expected.iter().all(|sample| has(&body, sample))
            && body.lines().any(|l| {
                l.strip_prefix("orch_alert_delivery_failures_total{channel=\"down\"} ")
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n >= 1)
            })
    });
    assert_eq!(good.hits().len(), 1);
    assert_eq!(good.hits()[0].json()["event"], "failed");
    let families = parse_with_prometheus_client(&body);
    for family in [
        "orch_alerts_delivered counter 3",
        "orch_alert_delivery_failures counter 3",
        "orch_alerts_dropped counter 3",
        "orch_alerts_pending gauge 3",
    ] {
        assert!(
            families.iter().any(|f| f == family),
            "{family}: {families:?}"
        );
    }
}
