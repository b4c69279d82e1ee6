//! `orchctl`'s output: aligned human tables and lines, or JSON for scripts.
//!
//! Colours only when stdout is a terminal and `NO_COLOR` is unset (decided by the caller).

use std::io::Write;

use serde::Deserialize;
use serde_json::Value;

use crate::api::proto::{
    AlertTestReply, ApiError, DeployReply, DeployStep, DeployStepKind, Event, HistoryReply,
    LogLine, Partial, ReloadReport, Reply, ServiceStatus, Silence, StreamItem,
};
use crate::supervisor::Health;

/// How to print.
pub struct Output {
    json: bool,
    color: bool,
}

impl Output {
    pub fn new(json: bool, color: bool) -> Self {
        Output { json, color }
    }

    /// An error response: to stderr (JSON on stdout with `--json`, so scripts can read it).
    pub fn error(&self, e: &ApiError) {
        if self.json {
            /// `{"error": {…}}`, as docs/api.md shows it.
            #[derive(serde::Serialize)]
            struct ErrorLine<'a> {
                error: &'a ApiError,
            }
            if let Ok(line) = serde_json::to_value(ErrorLine { error: e }) {
                println!("{line}");
            }
        }
        eprintln!("orchctl: {}", e.message);
    }

    /// One line of a stream: as received with `--json`, else read and printed for humans.
    pub fn partial(&self, raw: &Value) -> Result<(), serde_json::Error> {
        if self.json {
            println!("{raw}");
        } else {
            match Partial::deserialize(raw)? {
                Partial::Item(StreamItem::Line(line)) => println!("{}", log_line(&line)),
                Partial::Item(StreamItem::Event(ev)) => println!("{}", event_line(&ev)),
                Partial::Item(StreamItem::Skipped(n)) => {
                    println!("… {n} skipped (output was faster than this reader)")
                }
                Partial::Step(step) => println!("{}", deploy_step(&step)),
            }
        }
        let _ = std::io::stdout().flush();
        Ok(())
    }

    /// The final result of command `cmd`: printed as received with `--json`, else read and
    /// printed for humans. Returns it read, for the exit code.
    pub fn result(&self, cmd: &str, raw: &Value) -> Result<Reply, serde_json::Error> {
        let reply = Reply::decode(cmd, raw);
        if self.json {
            if !raw.is_null() {
                println!("{raw}");
            }
            return reply;
        }
        let reply = reply?;
        print!("{}", self.human(cmd, &reply));
        Ok(reply)
    }

    /// The human form of a result.
    fn human(&self, cmd: &str, reply: &Reply) -> String {
        match reply {
            Reply::Status(r) => {
                let mut out = self.status_table(&r.services);
                for t in &r.orchd_troubles {
                    out.push_str(&format!("{} {t}\n", self.paint("orchd:", "failed")));
                }
                out
            }
            Reply::Services(r) => self.status_table(&r.services),
            Reply::Logs(r) => r.lines.iter().map(|l| log_line(l) + "\n").collect(),
            Reply::Events(r) => r.events.iter().map(|e| event_line(e) + "\n").collect(),
            Reply::Reload(r) => reload_text(r),
            Reply::Deploy(r) => deploy_result(r) + "\n",
            Reply::History(r) => history_text(r),
            Reply::AlertTest(r) => alert_test_text(r),
            Reply::Silence(r) => silence_text(cmd, &r.silence),
            Reply::Silences(r) => silences_text(&r.silences),
            Reply::End(_) | Reply::Nothing => String::new(),
        }
    }

    fn paint(&self, text: &str, state: &str) -> String {
        if !self.color {
            return text.to_owned();
        }
        let code = match state {
            "running" | "healthy" => "32",
            "failed" | "bad-setting" | "unhealthy" => "31",
            "backoff" | "starting" | "stopping" => "33",
            _ => return text.to_owned(),
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// The aligned `status` table; reasons follow on indented lines.
    pub fn status_table(&self, list: &[ServiceStatus]) -> String {
        let header = [
            "NAME", "STATE", "HEALTH", "PID", "RELEASE", "RESTARTS", "SINCE",
        ];
        let rows: Vec<[String; 7]> = list
            .iter()
            .map(|s| {
                [
                    s.name.clone(),
                    s.state.as_str().to_owned(),
                    s.health.as_str().to_owned(),
                    s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    if s.release.is_empty() {
                        "-".into()
                    } else {
                        s.release.clone()
                    },
                    s.restarts.to_string(),
                    age(&s.since),
                ]
            })
            .collect();
        let mut width = header.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line =
            |cells: &[String; 7], out: &mut String, paint: &dyn Fn(usize, &str) -> String| {
                let mut parts = Vec::new();
                for (i, c) in cells.iter().enumerate() {
                    let pad = width[i] - c.chars().count();
                    parts.push(format!("{}{}", paint(i, c), " ".repeat(pad)));
                }
                out.push_str(parts.join("  ").trim_end());
                out.push('\n');
            };
        line(&header.map(str::to_owned), &mut out, &|_, c| c.to_owned());
        for (r, s) in rows.iter().zip(list) {
            line(r, &mut out, &|i, c| {
                if i == 1 || i == 2 {
                    self.paint(c, c)
                } else {
                    c.to_owned()
                }
            });
            if let Some(reason) = &s.reason {
                for l in reason.lines() {
                    out.push_str(&format!("  └ {l}\n"));
                }
            }
            if let Some(f) = s
                .last_failure
                .as_ref()
                .filter(|_| s.health != Health::Healthy)
            {
                out.push_str(&format!("  └ last failed probe {}: {f}\n", f.time));
            }
            if list.len() == 1 && !s.probes.is_empty() {
                out.push_str("  probes (oldest first):\n");
                for p in &s.probes {
                    let mark = if p.ok { "ok  " } else { "FAIL" };
                    out.push_str(&format!("    {} {mark} {p}\n", p.time));
                }
            }
        }
        out
    }
}

/// "3m12s" since an RFC 3339 time; "-" if unparseable.
pub fn age(since: &str) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(since) else {
        return "-".into();
    };
    let secs = std::time::SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    short_duration(secs)
}

/// Compact duration: "45s", "3m12s", "2h05m", "3d04h".
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn log_line(l: &LogLine) -> String {
    format!("{} [{}] {}", l.time, l.pid, l.line)
}

/// `TIME SERVICE KIND field=value…`: the fields of the kind in name order, as JSON shows them
/// (strings bare), nulls left out.
fn event_line(e: &Event) -> String {
    let mut kind = String::new();
    let mut details: Vec<String> = Vec::new();
    if let Ok(Value::Object(fields)) = serde_json::to_value(&e.kind) {
        for (k, v) in fields {
            match (k.as_str(), v) {
                ("kind", Value::String(name)) => kind = name,
                (_, Value::Null) => {}
                (_, Value::String(text)) => details.push(format!("{k}={text}")),
                (_, v) => details.push(format!("{k}={v}")),
            }
        }
    }
    format!("{} {} {kind} {}", e.time, e.service, details.join(" "))
        .trim_end()
        .to_owned()
}

fn reload_text(r: &ReloadReport) -> String {
    let mut out = String::new();
    out.push_str(if r.dry_run {
        "reload plan (dry run, nothing changed):\n"
    } else {
        "reloaded:\n"
    });
    for (key, names) in [
        ("added", &r.added),
        ("removed", &r.removed),
        ("restarted", &r.restarted),
        ("updated", &r.updated),
        ("unchanged", &r.unchanged),
    ] {
        let list = if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(", ")
        };
        out.push_str(&format!("  {key:<10} {list}\n"));
    }
    for n in &r.notes {
        out.push_str(&format!("  note: {n}\n"));
    }
    out
}

fn alert_test_text(r: &AlertTestReply) -> String {
    let mut out = String::new();
    for c in &r.channels {
        match &c.error {
            None => out.push_str(&format!("{}: delivered\n", c.channel)),
            Some(e) => out.push_str(&format!("{}: error: {e}\n", c.channel)),
        }
    }
    out
}

fn silence_line(s: &Silence) -> String {
    let mut line = format!("{}  {}  until {}", s.id, s.target, s.until);
    if !s.held.is_empty() {
        line.push_str(&format!("  ({} held back)", s.held.len()));
    }
    if let Some(r) = &s.reason {
        line.push_str(&format!("  reason: {r}"));
    }
    line
}

fn silence_text(cmd: &str, s: &Silence) -> String {
    let verb = if cmd == "silence" {
        "silenced"
    } else {
        "ended"
    };
    format!("{verb}: {}\n", silence_line(s))
}

fn silences_text(list: &[Silence]) -> String {
    if list.is_empty() {
        return "no active silences\n".to_owned();
    }
    list.iter().map(|s| silence_line(s) + "\n").collect()
}

fn ms_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// One line per deploy step, as it happens.
fn deploy_step(step: &DeployStep) -> String {
    match &step.kind {
        DeployStepKind::Deploying {
            release,
            previous,
            strategy,
        } => format!(
            "deploying {release} (previous {previous}, {})",
            strategy.as_str()
        ),
        DeployStepKind::Started {
            release,
            pid,
            port: Some(port),
            ..
        } => format!("started {release} on port {port} (pid {pid})"),
        DeployStepKind::Started { release, pid, .. } => format!("started {release} (pid {pid})"),
        DeployStepKind::Healthy { release, after_ms } => {
            format!("{release} is ready after {}", ms_text(*after_ms))
        }
        DeployStepKind::Switched { release, port } => format!(
            "switched: new requests go to {release} on port {}",
            port.map_or_else(|| "-".to_owned(), |p| p.to_string())
        ),
        DeployStepKind::Watching { release, for_ms } => {
            format!("watching {release} for {}", ms_text(*for_ms))
        }
        DeployStepKind::OldStopped { release } => format!("old release {release} stopped"),
    }
}

/// The final line of a deploy or rollback.
fn deploy_result(r: &DeployReply) -> String {
    use crate::api::proto::DeployOutcome;
    let f = match r {
        DeployReply::Detached(d) => {
            return format!(
                "deploy {} of {} started; follow it with `orchctl events -f`",
                d.deploy_id, d.release
            );
        }
        DeployReply::Finished(f) => f,
    };
    let took = ms_text(f.duration_ms);
    let reason = f.reason.as_deref().unwrap_or("");
    match f.result {
        DeployOutcome::Succeeded => format!(
            "deploy {} succeeded: {} is active (took {took})",
            f.deploy_id, f.release
        ),
        DeployOutcome::RolledBack => format!(
            "deploy {} ROLLED BACK: {} serves again; {reason}",
            f.deploy_id, f.previous
        ),
        DeployOutcome::Failed => format!(
            "deploy {} FAILED: {} still serves; {reason}",
            f.deploy_id, f.previous
        ),
    }
}

/// `orchctl history SVC`: newest first.
fn history_text(h: &HistoryReply) -> String {
    let mut out =
        String::from("FINISHED                  RELEASE  PREVIOUS  RESULT       DURATION  WHO\n");
    for e in h.history.iter().rev() {
        out.push_str(&format!(
            "{:<25} {:<8} {:<9} {:<12} {:<9} {}\n",
            e.finished,
            e.release,
            e.previous,
            e.result,
            ms_text(e.duration_ms),
            e.who
        ));
        if let Some(r) = &e.reason {
            out.push_str(&format!("  └ {r}\n"));
        }
    }
    if let Some(p) = &h.rollback_to {
        out.push_str(&format!("`orchctl rollback` would go back to {p}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_output() {
        let v = serde_json::json!({"channels":[{"channel":"oncall","delivered":true},{"channel":"slack","delivered":false,"error":"POST https://hooks.slack.com/…: HTTP 404 Not Found"}]});
        let v: AlertTestReply = serde_json::from_value(v).unwrap();
        assert_eq!(
            alert_test_text(&v),
            "oncall: delivered\nslack: error: POST https://hooks.slack.com/…: HTTP 404 Not Found\n"
        );
        let s = serde_json::json!({"id":"s0a1b2c","target":"api","created":"2026-01-01T00:00:00Z","until":"2026-01-01T02:00:00Z","reason":"migration","held":[{"time":"2026-01-01T00:10:00Z","service":"api","summary":"api failed"}]});
        let s: Silence = serde_json::from_value(s).unwrap();
        assert_eq!(
            silence_text("silence", &s),
            "silenced: s0a1b2c  api  until 2026-01-01T02:00:00Z  (1 held back)  reason: migration\n"
        );
        assert_eq!(silences_text(&[]), "no active silences\n");
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(192), "3m12s");
        assert_eq!(short_duration(7500), "2h05m");
        assert_eq!(short_duration(90000), "1d01h");
    }

    #[test]
    fn table_is_aligned_with_reasons() {
        let v = serde_json::json!({"services":[
            {"name":"api","state":"running","health":"none","pid":42,"release":"v1","restarts":0,"since":"2000-01-01T00:00:00Z","want_up":true,"ready":true},
            {"name":"worker-long","state":"failed","health":"none","pid":null,"release":"current","restarts":5,"since":"bad","reason":"gave up","want_up":true,"ready":false}
        ]});
        let v: crate::api::proto::ServicesReply = serde_json::from_value(v).unwrap();
        let t = Output::new(false, false).status_table(&v.services);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME         STATE    HEALTH  PID  RELEASE  RESTARTS  SINCE"
        );
        assert!(
            lines[1].starts_with("api          running  none    42   v1       0         "),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "worker-long  failed   none    -    current  5         -"
        );
        assert_eq!(lines[3], "  └ gave up");
    }
}
