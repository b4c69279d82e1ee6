//! What an alert says: the [`Alert`] record (stored in the outbox, sent as the `json` webhook
//! schema) and its plain-text rendering for email and chat.
//!
//! Built by the Alerter task from a policy notice plus the service's status and last output
//! lines; rendered by `email.rs` and `webhook.rs`. Never contains a secret.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Version of the `json` webhook schema; bumped only on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// How many lines of the service's output an alert carries.
pub const OUTPUT_LINES: usize = 20;

/// What an alert is about (`event` in the JSON schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// Gave up restarting (start limit, or a failure with `policy = "no"`).
    Failed,
    /// Exited unexpectedly and is being restarted (a crash loop is one incident).
    Crashed,
    /// Health checks failed.
    Unhealthy,
    /// A deploy did not become healthy; nothing was switched.
    DeployFailed,
    /// A deploy was rolled back.
    RolledBack,
    /// Healthy or running again after an incident.
    Recovered,
    /// A silence ended; summarises what it held back.
    SilenceEnded,
    /// `orchctl alert-test`.
    Test,
}

impl AlertEvent {
    /// The word in the subject line.
    pub fn label(self) -> &'static str {
        match self {
            AlertEvent::Failed | AlertEvent::Crashed => "FAILED",
            AlertEvent::Unhealthy => "UNHEALTHY",
            AlertEvent::DeployFailed => "DEPLOY FAILED",
            AlertEvent::RolledBack => "ROLLED BACK",
            AlertEvent::Recovered => "RECOVERED",
            AlertEvent::SilenceEnded => "silence ended",
            AlertEvent::Test => "TEST",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            AlertEvent::Failed | AlertEvent::Crashed | AlertEvent::DeployFailed => {
                Severity::Critical
            }
            AlertEvent::Unhealthy | AlertEvent::RolledBack => Severity::Warning,
            AlertEvent::Recovered => Severity::Ok,
            AlertEvent::SilenceEnded | AlertEvent::Test => Severity::Info,
        }
    }
}

/// `severity` in the JSON schema; also the colour of chat messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Warning,
    Ok,
    Info,
}

/// One alert, as stored in the outbox and sent with `format = "json"` (documented in
/// `docs/alerts.md`: keep the two in step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub schema: u32,
    /// Unique per alert; the same across channels and retries (receivers may dedup on it).
    pub id: String,
    pub host: String,
    pub service: String,
    pub event: AlertEvent,
    pub severity: Severity,
    /// `[host] service LABEL: details`, short enough for a phone lock screen.
    pub subject: String,
    /// The subject without the host.
    pub summary: String,
    /// RFC 3339 UTC.
    pub time: String,
    /// The same instant in orchd's local time zone, `YYYY-MM-DD HH:MM:SS +hh:mm`.
    pub time_local: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    /// Restarts so far in this incident (the service's restart counter).
    pub restarts: u32,
    /// The delay before the next restart, when one is scheduled.
    pub backoff_ms: Option<u64>,
    pub reason: Option<String>,
    /// The last health-probe result, e.g. `HTTP 500, expected 2xx or 3xx after 3 ms`.
    pub last_probe: Option<String>,
    /// The active release.
    pub release: Option<String>,
    /// Similar alerts held back (by `repeat_interval` or a silence) since the last one sent.
    pub held_back: u32,
    /// For `recovered`: how long the service was down, in seconds.
    pub down_secs: Option<u64>,
    /// The last lines of the service's output, oldest first.
    pub output: Vec<String>,
    /// Commands to investigate from a shell on the host.
    pub investigate: Vec<String>,
}

/// The facts an alert is built from (everything but host, id and time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub restarts: u32,
    pub backoff_ms: Option<u64>,
    pub reason: Option<String>,
    pub last_probe: Option<String>,
    pub release: Option<String>,
    pub held_back: u32,
    pub down: Option<Duration>,
    pub output: Vec<String>,
}

impl Alert {
    /// Build an alert stamped `time` (RFC 3339 UTC).
    pub fn new(host: &str, service: &str, event: AlertEvent, facts: Facts, time: &str) -> Alert {
        let summary = format!("{service} {}: {}", event.label(), details(event, &facts));
        let investigate = if event == AlertEvent::Test {
            vec!["orchctl status".to_owned()]
        } else {
            vec![
                format!("orchctl status {service}"),
                format!("orchctl logs {service} -n 100"),
                "orchctl events -n 50".to_owned(),
            ]
        };
        Alert {
            schema: SCHEMA_VERSION,
            id: format!("{:016x}", rand::random::<u64>()),
            host: host.to_owned(),
            service: service.to_owned(),
            event,
            severity: event.severity(),
            subject: format!("[{host}] {summary}"),
            summary,
            time: time.to_owned(),
            time_local: local_time(time),
            exit_code: facts.exit_code,
            signal: facts.signal,
            restarts: facts.restarts,
            backoff_ms: facts.backoff_ms,
            reason: facts.reason,
            last_probe: facts.last_probe,
            release: facts.release,
            held_back: facts.held_back,
            down_secs: facts.down.map(|d| d.as_secs()),
            output: facts.output,
            investigate,
        }
    }

    /// `exited 1` / `killed by SIGKILL`, when known.
    pub fn exit_text(&self) -> Option<String> {
        exit_text(self.exit_code, self.signal.as_deref())
    }

    /// The key facts as `(label, value)` pairs, in display order (shared by all renderers).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("Host", self.host.clone()),
            ("Service", self.service.clone()),
            ("Event", event_name(self.event)),
            (
                "Time",
                format!("{} UTC ({} local)", self.time, self.time_local),
            ),
        ];
        if let Some(e) = self.exit_text() {
            f.push(("Exit", e));
        }
        if self.restarts > 0 || self.backoff_ms.is_some() {
            let mut r = self.restarts.to_string();
            if let Some(ms) = self.backoff_ms {
                r.push_str(&format!(
                    ", next try in {}",
                    human(Duration::from_millis(ms))
                ));
            }
            f.push(("Restarts", r));
        }
        if let Some(r) = &self.reason {
            f.push(("Reason", r.clone()));
        }
        if let Some(p) = &self.last_probe {
            f.push(("Last probe", p.clone()));
        }
        if let Some(r) = &self.release {
            f.push(("Release", r.clone()));
        }
        if let Some(d) = self.down_secs {
            f.push(("Down for", human(Duration::from_secs(d))));
        }
        if self.held_back > 0 {
            f.push((
                "Held back",
                format!("{} similar alert(s) since the last one", self.held_back),
            ));
        }
        f
    }

    /// The plain-text body (email; also the basis of chat messages).
    pub fn text(&self) -> String {
        let mut out = format!("{}\n\n", self.summary);
        for (k, v) in self.fields() {
            out.push_str(&format!("{:<12} {v}\n", format!("{k}:")));
        }
        if !self.output.is_empty() {
            out.push_str(&format!("\nLast {} lines of output:\n", self.output.len()));
            for l in &self.output {
                out.push_str(&format!("  {l}\n"));
            }
        }
        out.push_str("\nInvestigate:\n");
        for c in &self.investigate {
            out.push_str(&format!("  {c}\n"));
        }
        out
    }
}

fn event_name(e: AlertEvent) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn exit_text(code: Option<i32>, signal: Option<&str>) -> Option<String> {
    match (code, signal) {
        (_, Some(s)) => Some(format!("killed by {s}")),
        (Some(c), None) => Some(format!("exited {c}")),
        (None, None) => None,
    }
}

/// The part of the subject after the label.
fn details(event: AlertEvent, f: &Facts) -> String {
    let exit = exit_text(f.exit_code, f.signal.as_deref());
    let parts: Vec<String> = match event {
        AlertEvent::Failed => {
            let why = f
                .reason
                .as_deref()
                .map(|r| r.split(';').next().unwrap_or(r).trim().to_owned());
            let mut p: Vec<String> = exit.or(why).into_iter().collect();
            if f.restarts > 0 {
                p.push(format!("gave up after {} restarts", f.restarts));
            } else {
                p.push("not restarting".to_owned());
            }
            p
        }
        AlertEvent::Crashed => {
            let mut p: Vec<String> = exit.or(f.reason.clone()).into_iter().collect();
            p.push(format!("restarting (restart {})", f.restarts));
            p
        }
        AlertEvent::Unhealthy => vec![
            f.last_probe
                .clone()
                .unwrap_or_else(|| "health check failed".into()),
        ],
        AlertEvent::Recovered => vec![match f.down {
            Some(d) => format!("up again after {} down", human(d)),
            None => "up again".to_owned(),
        }],
        AlertEvent::SilenceEnded => vec![format!("{} alert(s) were held back", f.held_back)],
        AlertEvent::Test => vec!["test alert from orchctl alert-test".to_owned()],
        AlertEvent::DeployFailed | AlertEvent::RolledBack => f.reason.clone().into_iter().collect(),
    };
    parts.join(", ")
}

/// "450ms", "12s", "3m12s", "2h05m".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// An RFC 3339 time in the local zone; the input unchanged if it does not parse.
pub fn local_time(rfc3339: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        Err(_) => rfc3339.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Alert {
        let facts = Facts {
            exit_code: Some(1),
            restarts: 5,
            reason: Some("exited 1; gave up after 5 restarts (start limit)".into()),
            release: Some("v7".into()),
            output: vec!["connecting to db".into(), "db: connection refused".into()],
            ..Facts::default()
        };
        Alert::new(
            "prod-vm-1",
            "api",
            AlertEvent::Failed,
            facts,
            "2026-11-22T08:00:00Z",
        )
    }

    #[test]
    fn subject_reads_on_a_lock_screen() {
        let a = failed();
        assert_eq!(
            a.subject,
            "[prod-vm-1] api FAILED: exited 1, gave up after 5 restarts"
        );
        let crash = Facts {
            signal: Some("SIGSEGV".into()),
            restarts: 3,
            backoff_ms: Some(400),
            ..Facts::default()
        };
        let c = Alert::new(
            "h",
            "web",
            AlertEvent::Crashed,
            crash,
            "2026-11-22T08:00:00Z",
        );
        assert_eq!(
            c.subject,
            "[h] web FAILED: killed by SIGSEGV, restarting (restart 3)"
        );
        let rec = Facts {
            down: Some(Duration::from_secs(133)),
            ..Facts::default()
        };
        let r = Alert::new(
            "h",
            "web",
            AlertEvent::Recovered,
            rec,
            "2026-11-22T08:00:00Z",
        );
        assert_eq!(r.subject, "[h] web RECOVERED: up again after 2m13s down");
    }

    #[test]
    fn body_has_facts_output_and_commands() {
        let t = failed().text();
        assert!(
            t.starts_with("api FAILED: exited 1, gave up after 5 restarts\n\n"),
            "{t}"
        );
        assert!(t.contains("Exit:        exited 1\n"), "{t}");
        assert!(t.contains("Release:     v7\n"), "{t}");
        assert!(t.contains("Time:        2026-11-22T08:00:00Z UTC ("), "{t}");
        assert!(
            t.contains("Last 2 lines of output:\n  connecting to db\n  db: connection refused\n"),
            "{t}"
        );
        assert!(t.contains("  orchctl logs api -n 100\n"), "{t}");
    }
}
