//! `orchctl`'s output: aligned human tables and lines, or JSON for scripts.
//!
//! Colours only when stdout is a terminal and `NO_COLOR` is unset (decided by the caller).

use std::io::Write;

use serde_json::Value;

use crate::api::proto::ApiError;
use crate::supervisor::{Health, ServiceStatus};

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
            println!("{}", serde_json::json!({ "error": e }));
        }
        eprintln!("orchctl: {}", e.message);
    }

    /// One line of a stream.
    pub fn partial(&self, _cmd: &str, v: &Value) {
        if self.json {
            println!("{v}");
        } else if let Some(line) = v.get("line") {
            println!("{}", log_line(line));
        } else if let Some(ev) = v.get("event") {
            println!("{}", event_line(ev));
        } else if let Some(n) = v.get("skipped") {
            println!("… {n} skipped (output was faster than this reader)");
        } else if v.get("step").is_some() {
            println!("{}", deploy_step(v));
        }
        let _ = std::io::stdout().flush();
    }

    /// The final result of a command.
    pub fn result(&self, cmd: &str, v: &Value) {
        if self.json {
            if !v.is_null() {
                println!("{v}");
            }
            return;
        }
        match cmd {
            "status" => {
                print!("{}", self.status_table(v));
                for t in v
                    .get("orchd_troubles")
                    .cloned()
                    .and_then(|t| serde_json::from_value::<Vec<crate::guard::PartTrouble>>(t).ok())
                    .unwrap_or_default()
                {
                    println!("{} {t}", self.paint("orchd:", "failed"));
                }
            }
            "start" | "stop" | "restart" | "reset" => print!("{}", self.status_table(v)),
            "logs" => {
                for l in v
                    .get("lines")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    println!("{}", log_line(l));
                }
            }
            "events" => {
                for e in v
                    .get("events")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    println!("{}", event_line(e));
                }
            }
            "reload" => print!("{}", reload_text(v)),
            "deploy" | "rollback" => println!("{}", deploy_result(v)),
            "history" => print!("{}", history_text(v)),
            "alert-test" => print!("{}", alert_test_text(v)),
            "silence" | "unsilence" => print!("{}", silence_text(cmd, v)),
            "silences" => print!("{}", silences_text(v)),
            _ => {
                if !v.is_null() {
                    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
                }
            }
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
    pub fn status_table(&self, v: &Value) -> String {
        let list: Vec<ServiceStatus> = v
            .get("services")
            .cloned()
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
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
        for (r, s) in rows.iter().zip(&list) {
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

fn log_line(l: &Value) -> String {
    let s = |k: &str| l.get(k).and_then(Value::as_str).unwrap_or("");
    format!(
        "{} [{}] {}",
        s("time"),
        l.get("pid").and_then(Value::as_i64).unwrap_or(0),
        s("line")
    )
}

fn event_line(e: &Value) -> String {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let mut details: Vec<String> = Vec::new();
    if let Some(obj) = e.as_object() {
        for (k, v) in obj {
            if !matches!(k.as_str(), "time" | "service" | "kind") && !v.is_null() {
                let v = v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string());
                details.push(format!("{k}={v}"));
            }
        }
    }
    format!(
        "{} {} {} {}",
        s("time"),
        s("service"),
        s("kind"),
        details.join(" ")
    )
    .trim_end()
    .to_owned()
}

fn reload_text(v: &Value) -> String {
    let mut out = String::new();
    let dry = v.get("dry_run").and_then(Value::as_bool).unwrap_or(false);
    out.push_str(if dry {
        "reload plan (dry run, nothing changed):\n"
    } else {
        "reloaded:\n"
    });
    for key in ["added", "removed", "restarted", "updated", "unchanged"] {
        let names: Vec<&str> = v
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let list = if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(", ")
        };
        out.push_str(&format!("  {key:<10} {list}\n"));
    }
    for n in v
        .get("notes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        out.push_str(&format!("  note: {n}\n"));
    }
    out
}

fn alert_test_text(v: &Value) -> String {
    let mut out = String::new();
    for c in v
        .get("channels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = c.get("channel").and_then(Value::as_str).unwrap_or("?");
        match c.get("error").and_then(Value::as_str) {
            None => out.push_str(&format!("{name}: delivered\n")),
            Some(e) => out.push_str(&format!("{name}: error: {e}\n")),
        }
    }
    out
}

fn silence_line(s: &Value) -> String {
    let f = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("-");
    let mut line = format!("{}  {}  until {}", f("id"), f("target"), f("until"));
    let held = s.get("held").and_then(Value::as_array).map_or(0, Vec::len);
    if held > 0 {
        line.push_str(&format!("  ({held} held back)"));
    }
    if let Some(r) = s.get("reason").and_then(Value::as_str) {
        line.push_str(&format!("  reason: {r}"));
    }
    line
}

fn silence_text(cmd: &str, v: &Value) -> String {
    let s = v.get("silence").cloned().unwrap_or(Value::Null);
    let verb = if cmd == "silence" {
        "silenced"
    } else {
        "ended"
    };
    format!("{verb}: {}\n", silence_line(&s))
}

fn silences_text(v: &Value) -> String {
    let list: Vec<&Value> = v
        .get("silences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if list.is_empty() {
        return "no active silences\n".to_owned();
    }
    list.iter().map(|s| silence_line(s) + "\n").collect()
}

fn ms_text(v: &Value, key: &str) -> String {
    let ms = v.get(key).and_then(Value::as_u64).unwrap_or(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// One line per deploy step, as it happens.
fn deploy_step(v: &Value) -> String {
    let s = |k: &str| {
        v.get(k)
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .unwrap_or_default()
    };
    match s("step").as_str() {
        "deploying" => format!(
            "deploying {} (previous {}, {})",
            s("release"),
            s("previous"),
            s("strategy")
        ),
        "started" => match v.get("port").and_then(Value::as_u64) {
            Some(port) => format!("started {} on port {port} (pid {})", s("release"), s("pid")),
            None => format!("started {} (pid {})", s("release"), s("pid")),
        },
        "healthy" => format!("{} is ready after {}", s("release"), ms_text(v, "after_ms")),
        "switched" => format!(
            "switched: new requests go to {} on port {}",
            s("release"),
            s("port")
        ),
        "watching" => format!("watching {} for {}", s("release"), ms_text(v, "for_ms")),
        "old_stopped" => format!("old release {} stopped", s("release")),
        other => format!("{other}: {v}"),
    }
}

/// The final line of a deploy or rollback.
fn deploy_result(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    if v.get("detached").is_some() {
        return format!(
            "deploy {} of {} started; follow it with `orchctl events -f`",
            s("deploy_id"),
            s("release")
        );
    }
    let took = ms_text(v, "duration_ms");
    match s("result").as_str() {
        "succeeded" => format!(
            "deploy {} succeeded: {} is active (took {took})",
            s("deploy_id"),
            s("release")
        ),
        "rolled_back" => format!(
            "deploy {} ROLLED BACK: {} serves again; {}",
            s("deploy_id"),
            s("previous"),
            s("reason")
        ),
        _ => format!(
            "deploy {} FAILED: {} still serves; {}",
            s("deploy_id"),
            s("previous"),
            s("reason")
        ),
    }
}

/// `orchctl history SVC`: newest first.
fn history_text(v: &Value) -> String {
    let mut out =
        String::from("FINISHED                  RELEASE  PREVIOUS  RESULT       DURATION  WHO\n");
    for e in v
        .get("history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .rev()
    {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        out.push_str(&format!(
            "{:<25} {:<8} {:<9} {:<12} {:<9} {}\n",
            s("finished"),
            s("release"),
            s("previous"),
            s("result"),
            ms_text(e, "duration_ms"),
            s("who")
        ));
        if let Some(r) = e.get("reason").and_then(Value::as_str) {
            out.push_str(&format!("  └ {r}\n"));
        }
    }
    if let Some(p) = v.get("rollback_to").and_then(Value::as_str) {
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
        assert_eq!(
            alert_test_text(&v),
            "oncall: delivered\nslack: error: POST https://hooks.slack.com/…: HTTP 404 Not Found\n"
        );
        let s = serde_json::json!({"id":"s0a1b2c","target":"api","until":"2026-01-01T02:00:00Z","reason":"migration","held":[{}]});
        assert_eq!(
            silence_text("silence", &serde_json::json!({ "silence": s })),
            "silenced: s0a1b2c  api  until 2026-01-01T02:00:00Z  (1 held back)  reason: migration\n"
        );
        assert_eq!(
            silences_text(&serde_json::json!({"silences":[]})),
            "no active silences\n"
        );
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
        let t = Output::new(false, false).status_table(&v);
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
