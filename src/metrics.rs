//! The Prometheus endpoint (`[metrics] listen`): every service's state, health, restarts and
//! deploys, and orchd's own process figures, in the text exposition format (version 0.0.4).
//!
//! One task owns the counters (starts, exits, deploys, …): it counts the events of the bus and
//! publishes the totals as a `watch` snapshot. The alert deliveries keep their own counters per
//! channel (`alert::Stats`, also a `watch`). A scrape asks the manager for the current statuses
//! (as `orchctl status` does) and renders them with both. Nothing here is on a service's path:
//! a slow, absent or misbehaving scraper costs the services nothing.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::alert::DeliveryStats;
use crate::event::{Event, EventBus, EventKind};
use crate::health::ProbeResult;
use crate::manager::ManagerHandle;
use crate::supervisor::{Health, ServiceStatus, State};

/// Scrapers served at once; more connections are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// A request head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection (kept alive across scrapes) is closed after this; the scraper reconnects.
const CONNECTION_TIME: Duration = Duration::from_secs(120);
/// How long a scrape waits for the manager's answer.
const STATUS_WAIT: Duration = Duration::from_secs(5);
/// How long a connection past [`CONNECTION_TIME`] may take to finish the answer it is sending.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// The media type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state, in the order of the contract.
const STATES: [State; 8] = [
    State::Inactive,
    State::Starting,
    State::Running,
    State::Stopping,
    State::Backoff,
    State::Failed,
    State::Exited,
    State::BadSetting,
];

/// Totals of one service's events since orchd started.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ServiceCounters {
    pub starts: u64,
    /// By how the process ended: its exit status ("0", "1", …) or the signal ("SIGKILL").
    pub exits: BTreeMap<String, u64>,
    pub spawn_failures: u64,
    pub failed: u64,
    pub unhealthy: u64,
    pub deploys_succeeded: u64,
    pub deploys_failed: u64,
    pub rollbacks: u64,
}

/// Totals of every service's events since orchd started.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counters {
    pub services: BTreeMap<String, ServiceCounters>,
    /// Events the counting task missed because it fell behind the bus.
    pub events_missed: u64,
}

impl Counters {
    /// Count one event.
    pub fn count(&mut self, ev: &Event) {
        let s = self.services.entry(ev.service.clone()).or_default();
        match &ev.kind {
            EventKind::Started { .. } => s.starts += 1,
            EventKind::Exited { code, signal, .. } => {
                let how = match (signal, code) {
                    (Some(sig), _) => sig.clone(),
                    (None, Some(code)) => code.to_string(),
                    (None, None) => "unknown".to_owned(),
                };
                *s.exits.entry(how).or_default() += 1;
            }
            EventKind::SpawnFailed { .. } => s.spawn_failures += 1,
            EventKind::Failed { .. } => s.failed += 1,
            EventKind::Unhealthy { .. } => s.unhealthy += 1,
            // A late `orchctl rollback` is a deploy of the previous release: it succeeds or
            // fails like any other. `rolled_back` is a deploy undone in its watch window.
            EventKind::DeploySucceeded { .. } => s.deploys_succeeded += 1,
            EventKind::RolledBack { .. } => s.rollbacks += 1,
            EventKind::DeployFailed { .. } => s.deploys_failed += 1,
            EventKind::Backoff { .. }
            | EventKind::Stopped
            | EventKind::Healthy { .. }
            | EventKind::DeployStarted { .. }
            | EventKind::Switched { .. } => {}
        }
    }
}

/// Start counting the events of `bus` (subscribe before services start, so none is missed);
/// the receiver always holds the latest totals.
pub fn spawn_counters(
    bus: &EventBus,
    cancel: CancellationToken,
    parts: crate::guard::Parts,
) -> watch::Receiver<Counters> {
    let (tx, rx) = watch::channel(Counters::default());
    let mut events = bus.subscribe();
    tokio::spawn(async move {
        let part_cancel = cancel.clone();
        crate::guard::restarting(
            "metrics counters",
            parts,
            part_cancel,
            &mut events,
            |events| {
                let (tx, cancel) = (tx.clone(), cancel.clone());
                Box::pin(async move {
                    loop {
                        let ev = tokio::select! {
                            ev = events.recv() => ev,
                            _ = cancel.cancelled() => break,
                        };
                        match ev {
                            Ok(ev) => tx.send_modify(|c| c.count(&ev)),
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tx.send_modify(|c| c.events_missed += n)
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                        }
                    }
                })
            },
        )
        .await;
    });
    rx
}

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Asked for the statuses.
    pub manager: ManagerHandle,
    /// The event counters ([`spawn_counters`]).
    pub counters: watch::Receiver<Counters>,
    /// The alert delivery counters.
    pub alerts: watch::Receiver<DeliveryStats>,
}

/// Serve `GET /metrics` on `listener` until `cancel`.
pub async fn serve(listener: &TcpListener, sources: Sources, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cancel.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: don't spin.
                tracing::warn!(error = %e, "metrics: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics: too many connections; closing a new one");
            continue;
        };
        let (sources, cancel) = (sources.clone(), cancel.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(answer(&req, &sources).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = tokio::time::sleep(CONNECTION_TIME) => {}
                _ = cancel.cancelled() => {}
            }
            // Time is up: finish the answer being sent (if any), then close.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        });
    }
}

async fn answer<B>(req: &Request<B>, sources: &Sources) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    match (path, readable) {
        ("/metrics", true) => {
            // The manager does not answer while it stops every service at shutdown.
            match tokio::time::timeout(STATUS_WAIT, sources.manager.status(Vec::new())).await {
                Ok(Ok(statuses)) => {
                    let process = ProcessStats::read();
                    let alerts = sources.alerts.borrow().clone();
                    let text = render(&statuses, &sources.counters.borrow(), &alerts, &process);
                    reply(StatusCode::OK, CONTENT_TYPE, text)
                }
                Ok(Err(e)) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("orchd cannot answer: {e}\n"),
                ),
                Err(_) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "orchd is busy (shutting down?): no status within 5 s\n".into(),
                ),
            }
        }
        ("/", true) => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "orchd: the metrics are at /metrics\n".into(),
        ),
        ("/metrics" | "/", false) => {
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET and HEAD\n".into(),
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// orchd's own process figures, from `/proc/self`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
}

impl ProcessStats {
    /// Read them now (missing figures are 0).
    pub fn read() -> ProcessStats {
        let mut p = ProcessStats::default();
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&t| t > 0)
            .unwrap_or(100) as f64;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .filter(|&p| p > 0)
            .unwrap_or(4096) as u64;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command (which may hold spaces), from field 3 (state) on.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
            if let (Some(utime), Some(stime)) = (field(14), field(15)) {
                p.cpu_seconds = (utime + stime) as f64 / tick;
            }
            if let Some(rss) = field(24) {
                p.resident_bytes = rss * page;
            }
            static BOOT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
            let boot = *BOOT.get_or_init(|| {
                std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("btime "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
            });
            if let (Some(start), Some(boot)) = (field(22), boot) {
                p.start_time_seconds = boot as f64 + start as f64 / tick;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            p.open_fds = fds.count() as u64;
        }
        p
    }
}

/// The text exposition of `statuses`, `counters`, the `alerts` delivery counters and orchd's
/// `process` figures. Counters of services no longer configured are left out.
pub fn render(
    statuses: &[ServiceStatus],
    counters: &Counters,
    alerts: &DeliveryStats,
    process: &ProcessStats,
) -> String {
    let mut out = Out(String::with_capacity(256 + statuses.len() * 1024));
    out.family("orch_build_info", "gauge", "orchd's version; always 1.");
    out.sample(
        "orch_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    render_states(&mut out, statuses);
    render_health(&mut out, statuses);
    render_counters(&mut out, statuses, counters);
    render_alerts(&mut out, alerts);
    render_process(&mut out, process);
    out.0
}

/// What `orchctl status` shows: state, readiness, restarts, release, deploy.
fn render_states(out: &mut Out, statuses: &[ServiceStatus]) {
    out.family(
        "orch_service_state",
        "gauge",
        "1 for the state the service is in, 0 for the others.",
    );
    for s in statuses {
        for state in STATES {
            let labels = [("service", s.name.as_str()), ("state", state.as_str())];
            out.sample("orch_service_state", &labels, u8::from(s.state == state));
        }
    }
    type Gauge = fn(&ServiceStatus) -> u32;
    let gauges: [(&str, &str, Gauge); 4] = [
        (
            "orch_service_up",
            "1 while the service is running (its state is running).",
            |s| u32::from(s.state == State::Running),
        ),
        (
            "orch_service_ready",
            "1 while the service is running and healthy (or has no health check).",
            |s| u32::from(s.ready),
        ),
        (
            "orch_service_restarts",
            "Restarts since the operator last started, restarted or reset the service.",
            |s| s.restarts,
        ),
        (
            "orch_service_deploy_in_progress",
            "1 while a deploy of the service is under way.",
            |s| u32::from(s.deploying.is_some()),
        ),
    ];
    for (name, help, get) in gauges {
        out.family(name, "gauge", help);
        for s in statuses {
            out.sample(name, &[("service", &s.name)], get(s));
        }
    }
    out.family(
        "orch_service_state_change_timestamp_seconds",
        "gauge",
        "When the service entered its current state, in seconds since the Unix epoch.",
    );
    for s in statuses {
        if let Some(since) = unix_seconds(&s.since) {
            let name = "orch_service_state_change_timestamp_seconds";
            out.sample(name, &[("service", &s.name)], since);
        }
    }
    out.family(
        "orch_service_release_info",
        "gauge",
        "The release the service runs (serves); always 1.",
    );
    for s in statuses {
        let labels = [
            ("service", s.name.as_str()),
            ("release", s.release.as_str()),
        ];
        out.sample("orch_service_release_info", &labels, 1);
    }
}

/// Health checks: the verdict and the last probe.
fn render_health(out: &mut Out, statuses: &[ServiceStatus]) {
    out.family(
        "orch_service_healthy",
        "gauge",
        "Health of a service with a health check: 1 healthy, 0 unhealthy (absent while unknown).",
    );
    for s in statuses {
        let healthy = match s.health {
            Health::Healthy => 1,
            Health::Unhealthy => 0,
            Health::None | Health::Starting => continue,
        };
        out.sample("orch_service_healthy", &[("service", &s.name)], healthy);
    }
    type OfProbe = fn(&ProbeResult) -> f64;
    let last_probe: [(&str, &str, OfProbe); 2] = [
        (
            "orch_service_probe_success",
            "Whether the last health probe succeeded (absent before the first).",
            |p| f64::from(u8::from(p.ok)),
        ),
        (
            "orch_service_probe_duration_seconds",
            "How long the last health probe took.",
            |p| p.duration_ms as f64 / 1000.0,
        ),
    ];
    for (name, help, get) in last_probe {
        out.family(name, "gauge", help);
        for s in statuses {
            if let Some(p) = &s.last_probe {
                out.sample(name, &[("service", &s.name)], get(p));
            }
        }
    }
}

/// The event counters, for the services configured now.
fn render_counters(out: &mut Out, statuses: &[ServiceStatus], counters: &Counters) {
    let zero = ServiceCounters::default();
    let of = |s: &ServiceStatus| counters.services.get(&s.name).unwrap_or(&zero);
    type Count = fn(&ServiceCounters) -> u64;
    let totals: [(&str, &str, Count); 4] = [
        (
            "orch_service_starts_total",
            "Processes of the service started since orchd started.",
            |c| c.starts,
        ),
        (
            "orch_service_spawn_failures_total",
            "Starts that could not run the service's command at all.",
            |c| c.spawn_failures,
        ),
        (
            "orch_service_failed_total",
            "Times the service was marked failed with a failed event (start limit, a failure \
             with restart policy no, a failed dependency).",
            |c| c.failed,
        ),
        (
            "orch_service_unhealthy_total",
            "Times the service's health checks turned it unhealthy.",
            |c| c.unhealthy,
        ),
    ];
    for (name, help, get) in totals {
        out.family(name, "counter", help);
        for s in statuses {
            out.sample(name, &[("service", &s.name)], get(of(s)));
        }
    }
    out.family(
        "orch_service_exits_total",
        "counter",
        "Ends of the service's main process, by exit status or signal; planned stops included.",
    );
    for s in statuses {
        for (how, n) in &of(s).exits {
            let labels = [("service", s.name.as_str()), ("status", how.as_str())];
            out.sample("orch_service_exits_total", &labels, n);
        }
    }
    out.family(
        "orch_service_deploys_total",
        "counter",
        "Deploys of the service by result: succeeded, failed, rolled_back (undone in the watch \
         window).",
    );
    for s in statuses {
        let c = of(s);
        for (result, n) in [
            ("succeeded", c.deploys_succeeded),
            ("failed", c.deploys_failed),
            ("rolled_back", c.rollbacks),
        ] {
            let labels = [("service", s.name.as_str()), ("result", result)];
            out.sample("orch_service_deploys_total", &labels, n);
        }
    }
    out.family(
        "orch_events_missed_total",
        "counter",
        "Events the metrics missed because they fell behind (their counters are low by as many).",
    );
    out.sample("orch_events_missed_total", &[], counters.events_missed);
}

/// The alert deliveries, per channel (configured now, or with deliveries since orchd started).
fn render_alerts(out: &mut Out, alerts: &DeliveryStats) {
    type Of = fn(&crate::alert::ChannelStats) -> u64;
    let families: [(&str, &str, &str, Of); 4] = [
        (
            "orch_alerts_delivered_total",
            "counter",
            "Alerts delivered, by channel.",
            |c| c.delivered,
        ),
        (
            "orch_alert_delivery_failures_total",
            "counter",
            "Delivery attempts that failed, by channel (each retry counts).",
            |c| c.failed_attempts,
        ),
        (
            "orch_alerts_dropped_total",
            "counter",
            "Alerts given up, by channel: a permanent error, or retried for 24 h.",
            |c| c.dropped,
        ),
        (
            "orch_alerts_pending",
            "gauge",
            "Deliveries under way, by channel: being attempted or waiting to retry (in the outbox).",
            |c| c.pending,
        ),
    ];
    for (name, kind, help, get) in families {
        out.family(name, kind, help);
        for (channel, c) in alerts {
            out.sample(name, &[("channel", channel)], get(c));
        }
    }
}

/// orchd's own process, named as every Prometheus client library names it.
fn render_process(out: &mut Out, p: &ProcessStats) {
    out.family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    );
    out.sample("process_cpu_seconds_total", &[], p.cpu_seconds);
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_bytes as f64,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds as f64,
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, "gauge", help);
        out.sample(name, &[], value);
    }
}

/// An RFC 3339 time in seconds since the epoch.
fn unix_seconds(rfc3339: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
}

/// The exposition being written.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: State) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            state,
            health: Health::None,
            pid: None,
            release: "v1".into(),
            restarts: 0,
            since: "2026-11-22T10:00:00.500Z".into(),
            reason: None,
            waiting_on: vec![],
            want_up: true,
            ready: state == State::Running,
            port: None,
            description: None,
            last_probe: None,
            last_failure: None,
            probes: vec![],
            deploying: None,
            slots: vec![],
        }
    }

    fn event(service: &str, kind: EventKind) -> Event {
        Event {
            service: service.into(),
            time: String::new(),
            kind,
            facts: None,
        }
    }

    #[test]
    fn events_are_counted_by_kind_and_status() {
        let mut c = Counters::default();
        let exited = |code: Option<i32>, signal: Option<&str>| EventKind::Exited {
            pid: 1,
            code,
            signal: signal.map(str::to_owned),
        };
        for kind in [
            EventKind::Started {
                pid: 1,
                release: "v1".into(),
            },
            exited(Some(1), None),
            exited(Some(1), None),
            exited(None, Some("SIGKILL")),
            EventKind::Failed { reason: "x".into() },
            EventKind::Stopped,
        ] {
            c.count(&event("api", kind));
        }
        let api = &c.services["api"];
        assert_eq!(api.starts, 1);
        assert_eq!(api.failed, 1);
        assert_eq!(
            api.exits,
            BTreeMap::from([("1".to_owned(), 2), ("SIGKILL".to_owned(), 1)])
        );
    }

    #[test]
    fn label_values_are_escaped_and_counters_of_removed_services_left_out() {
        let mut s = status("api", State::Running);
        s.release = "v\"2\\\nx".into();
        let mut counters = Counters::default();
        counters.count(&event(
            "gone",
            EventKind::Started {
                pid: 1,
                release: "v1".into(),
            },
        ));
        let text = render(
            &[s],
            &counters,
            &DeliveryStats::new(),
            &ProcessStats::default(),
        );
        assert!(
            text.lines()
                .any(|l| l == r#"orch_service_release_info{service="api",release="v\"2\\\nx"} 1"#),
            "{text}"
        );
        assert!(text.contains(
            "orch_service_state_change_timestamp_seconds{service=\"api\"} 1795341600.5\n"
        ));
        assert!(!text.contains("gone"), "{text}");
        // Every line is a comment or `name{labels} value`, and no series comes twice.
        let mut series = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or_default();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.insert(name), "{name} twice");
        }
    }

    #[test]
    fn alert_deliveries_show_per_channel() {
        let alerts = DeliveryStats::from([(
            "on\"call".to_owned(),
            crate::alert::ChannelStats {
                delivered: 3,
                failed_attempts: 2,
                dropped: 1,
                pending: 1,
            },
        )]);
        let text = render(&[], &Counters::default(), &alerts, &ProcessStats::default());
        for line in [
            "# TYPE orch_alerts_delivered_total counter",
            r#"orch_alerts_delivered_total{channel="on\"call"} 3"#,
            r#"orch_alert_delivery_failures_total{channel="on\"call"} 2"#,
            r#"orch_alerts_dropped_total{channel="on\"call"} 1"#,
            "# TYPE orch_alerts_pending gauge",
            r#"orch_alerts_pending{channel="on\"call"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

    #[test]
    fn deploys_are_counted_once_by_result() {
        let mut c = Counters::default();
        let ended = |rollback: bool| EventKind::DeploySucceeded {
            deploy_id: "d".into(),
            release: "v2".into(),
            previous: "v1".into(),
            duration_ms: 1,
            who: "ci".into(),
            rollback,
        };
        for kind in [
            ended(false),
            // `orchctl rollback` after the deploy ended: a deploy of v1 that succeeded.
            ended(true),
            EventKind::DeployFailed {
                deploy_id: "d".into(),
                release: "v3".into(),
                previous: "v1".into(),
                reason: "x".into(),
                duration_ms: 1,
                who: "ci".into(),
            },
            EventKind::RolledBack {
                deploy_id: "d".into(),
                release: "v4".into(),
                to: "v1".into(),
                reason: "x".into(),
                duration_ms: 1,
                who: "orchd".into(),
            },
        ] {
            c.count(&event("api", kind));
        }
        let api = &c.services["api"];
        assert_eq!(
            (api.deploys_succeeded, api.deploys_failed, api.rollbacks),
            (2, 1, 1)
        );
        let text = render(
            &[status("api", State::Running)],
            &c,
            &DeliveryStats::new(),
            &ProcessStats::default(),
        );
        for line in [
            "orch_service_deploys_total{service=\"api\",result=\"succeeded\"} 2",
            "orch_service_deploys_total{service=\"api\",result=\"failed\"} 1",
            "orch_service_deploys_total{service=\"api\",result=\"rolled_back\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
