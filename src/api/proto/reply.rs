//! The `result` of every command (docs/api.md, "Commands"), and the partial results of streams.
//!
//! The handler returns a [`Reply`]; the socket serializes it (through a `serde_json::Value`, so
//! keys come in name order as they always have), D-Bus maps it to its structs, and `orchctl`
//! reads it back with [`Reply::decode`]. The records inside (a service's status, a log line, an
//! event, a history entry, a silence) are the owning modules' own serializable types: their
//! serde form is the wire form, and they are re-exported here so clients name them from one place.

use serde::de::Error as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::deploy::{DeployReply, DeployStep};
pub use crate::alert::{ChannelReport, Silence};
pub use crate::event::Event;
pub use crate::guard::PartTrouble;
pub use crate::manager::ReloadReport;
pub use crate::manager::history::HistoryEntry;
pub use crate::supervisor::ServiceStatus;
pub use crate::supervisor::logs::LogLine;

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub services: Vec<ServiceStatus>,
    /// Parts of orchd that crashed since it started; absent while all is well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orchd_troubles: Vec<PartTrouble>,
}

/// `start`, `stop`, `restart`, `reset`; also the `detail` of their `failed` error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicesReply {
    pub services: Vec<ServiceStatus>,
}

/// `logs` without `follow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsReply {
    pub lines: Vec<LogLine>,
}

/// `events` without `follow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsReply {
    pub events: Vec<Event>,
}

/// `history`: oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryReply {
    pub history: Vec<HistoryEntry>,
    /// The release `orchctl rollback` would deploy; `null` (present) when none is known.
    pub rollback_to: Option<String>,
}

/// `alert-test`; also the `detail` of its `failed` error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertTestReply {
    pub channels: Vec<ChannelReport>,
}

/// `silence` (the new one) and `unsilence` (the one ended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SilenceReply {
    pub silence: Silence,
}

/// `silences`: the active ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SilencesReply {
    pub silences: Vec<Silence>,
}

/// The last line of a followed stream that orchd ended (`"service removed"`, `"orchd is
/// stopping"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    pub end: String,
}

/// The result of any command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(StatusReply),
    Services(ServicesReply),
    Logs(LogsReply),
    Events(EventsReply),
    Reload(ReloadReport),
    Deploy(DeployReply),
    History(HistoryReply),
    AlertTest(AlertTestReply),
    Silence(SilenceReply),
    Silences(SilencesReply),
    End(StreamEnd),
    /// A stream whose client went away: `null`, which nobody reads.
    Nothing,
}

/// `logs` and `events` end with their list, or (followed) with why orchd ended the stream.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrEnd<T> {
    List(T),
    End(StreamEnd),
}

impl<T> ListOrEnd<T> {
    fn into_reply(self, list: impl FnOnce(T) -> Reply) -> Reply {
        match self {
            ListOrEnd::List(l) => list(l),
            ListOrEnd::End(e) => Reply::End(e),
        }
    }
}

impl Reply {
    /// Read the `result` of command `cmd` (its wire name). The command decides the type: the
    /// results of `status` and `start` have the same shape.
    pub fn decode(cmd: &str, result: &Value) -> Result<Reply, serde_json::Error> {
        if result.is_null() {
            return Ok(Reply::Nothing);
        }
        Ok(match cmd {
            "status" => Reply::Status(StatusReply::deserialize(result)?),
            "start" | "stop" | "restart" | "reset" => {
                Reply::Services(ServicesReply::deserialize(result)?)
            }
            "logs" => ListOrEnd::deserialize(result)?.into_reply(Reply::Logs),
            "events" => ListOrEnd::deserialize(result)?.into_reply(Reply::Events),
            "reload" => Reply::Reload(ReloadReport::deserialize(result)?),
            "deploy" | "rollback" => Reply::Deploy(DeployReply::deserialize(result)?),
            "history" => Reply::History(HistoryReply::deserialize(result)?),
            "alert-test" => Reply::AlertTest(AlertTestReply::deserialize(result)?),
            "silence" | "unsilence" => Reply::Silence(SilenceReply::deserialize(result)?),
            "silences" => Reply::Silences(SilencesReply::deserialize(result)?),
            other => {
                return Err(serde_json::Error::custom(format!(
                    "no result type for command {other:?}"
                )));
            }
        })
    }
}

/// One item of a followed `logs` or `events` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamItem {
    /// `{"line": LogLine}`.
    Line(LogLine),
    /// `{"event": Event}`.
    Event(Event),
    /// `{"skipped": N}`: the reader fell behind and missed N.
    Skipped(u64),
}

/// A `"done": false` line: an item of a stream, or a deploy's step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Partial {
    Item(StreamItem),
    Step(DeployStep),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `line` as the result of `cmd`, serialize it as the socket does (through a
    /// `Value`), and require the same bytes.
    fn round_trip(cmd: &str, line: &str) -> Reply {
        let v: Value = serde_json::from_str(line).unwrap();
        let reply = Reply::decode(cmd, &v).unwrap_or_else(|e| panic!("{cmd}: {e}\n{line}"));
        assert_eq!(serde_json::to_value(&reply).unwrap().to_string(), line);
        reply
    }

    #[test]
    fn status_replies_round_trip() {
        let line = r#"{"services":[{"description":"Demo worker that needs the web server","health":"none","name":"worker","pid":28105,"ready":true,"release":"v1","restarts":0,"since":"2026-11-22T08:43:58Z","state":"running","want_up":true}]}"#;
        assert!(
            matches!(round_trip("status", line), Reply::Status(s) if s.orchd_troubles.is_empty())
        );
        assert!(matches!(round_trip("restart", line), Reply::Services(_)));
        let troubled = r#"{"orchd_troubles":[{"crashes":1,"last_panic":"boom","part":"alerter","running":true,"since":"2026-12-08T00:45:09Z"}],"services":[]}"#;
        let Reply::Status(s) = round_trip("status", troubled) else {
            panic!("not a status")
        };
        assert_eq!(s.orchd_troubles[0].part, "alerter");
        let probed = r#"{"services":[{"health":"unhealthy","last_failure":{"detail":"HTTP 503, expected 2xx or 3xx","duration_ms":3,"ok":false,"status":503,"time":"2026-11-22T08:50:01.123Z"},"name":"api","pid":null,"port":9000,"probes":[{"detail":"HTTP 503, expected 2xx or 3xx","duration_ms":3,"ok":false,"status":503,"time":"2026-11-22T08:50:01.123Z"}],"ready":false,"reason":"unhealthy","release":"v1","restarts":2,"since":"2026-11-22T08:50:01Z","state":"running","want_up":true}]}"#;
        round_trip("status", probed);
    }

    #[test]
    fn logs_and_events_round_trip() {
        let logs = r#"{"lines":[{"line":"oops, crashing","pid":29364,"seq":7,"stream":"stderr","time":"2026-11-22T08:44:07.859Z"}]}"#;
        assert!(matches!(round_trip("logs", logs), Reply::Logs(l) if l.lines[0].pid == 29364));
        let events = r#"{"events":[{"kind":"started","pid":29728,"release":"current","service":"flaky","time":"2026-11-22T08:44:09.679Z"},{"code":1,"kind":"exited","pid":28096,"service":"flaky","signal":null,"time":"2026-11-22T08:44:02.878Z"}]}"#;
        assert!(matches!(round_trip("events", events), Reply::Events(e) if e.events.len() == 2));
        let end = r#"{"end":"service removed"}"#;
        assert!(matches!(round_trip("logs", end), Reply::End(_)));
        assert!(matches!(
            round_trip("events", r#"{"end":"orchd is stopping"}"#),
            Reply::End(_)
        ));
        assert_eq!(Reply::decode("logs", &Value::Null).unwrap(), Reply::Nothing);
        assert_eq!(serde_json::to_value(Reply::Nothing).unwrap(), Value::Null);
    }

    #[test]
    fn reload_history_and_deploy_round_trip() {
        let reload = r#"{"added":["bad"],"dry_run":false,"notes":[],"removed":[],"restarted":["worker"],"unchanged":["migrate","web"],"updated":["flaky"]}"#;
        assert!(matches!(round_trip("reload", reload), Reply::Reload(r) if r.added == ["bad"]));
        let history = r#"{"history":[{"deploy_id":"api-1795340308709","duration_ms":2007,"finished":"2026-11-22T09:38:30.717Z","previous":"v3","reason":"rolled back by an operator","release":"v6","result":"rolled_back","rollback":false,"started":"2026-11-22T09:38:28Z","who":"uid 0 (root), pid 14477"}],"rollback_to":"v3"}"#;
        round_trip("history", history);
        let empty = r#"{"history":[],"rollback_to":null}"#;
        assert!(
            matches!(round_trip("history", empty), Reply::History(h) if h.rollback_to.is_none())
        );
        let result = r#"{"active":"v3","deploy_id":"api-1795340287967","duration_ms":5263,"previous":"v2","reason":null,"release":"v3","result":"succeeded","rollback":false}"#;
        round_trip("deploy", result);
        round_trip("rollback", result);
        round_trip(
            "deploy",
            r#"{"deploy_id":"api-1","detached":true,"release":"v2"}"#,
        );
    }

    #[test]
    fn alert_replies_round_trip() {
        let test = r#"{"channels":[{"channel":"oncall","delivered":true},{"channel":"slack","delivered":false,"error":"POST https://hooks.slack.com/…: HTTP 404 Not Found"}]}"#;
        round_trip("alert-test", test);
        let silence = r#"{"silence":{"created":"2026-01-01T00:00:00Z","held":[{"service":"api","summary":"api failed","time":"2026-01-01T00:10:00Z"}],"id":"s0a1b2c","reason":"migration","target":"api","until":"2026-01-01T02:00:00Z"}}"#;
        round_trip("silence", silence);
        round_trip("unsilence", silence);
        let list = r#"{"silences":[{"created":"2026-01-01T00:00:00Z","held":[],"id":"s1","target":"all","until":"2026-01-01T02:00:00Z"}]}"#;
        round_trip("silences", list);
    }

    #[test]
    fn stream_items_round_trip() {
        let lines = [
            r#"{"line":{"line":"starting","pid":29728,"seq":9,"stream":"stdout","time":"2026-11-22T08:44:09.680Z"}}"#,
            r#"{"skipped":12}"#,
            r#"{"event":{"kind":"stopped","service":"web","time":"2026-11-22T08:44:09.680Z"}}"#,
            r#"{"deploy_id":"api-1","elapsed_ms":6200,"release":"v1","step":"old_stopped"}"#,
        ];
        for line in lines {
            let p: Partial = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_value(&p).unwrap().to_string(), line);
        }
        let p: Partial = serde_json::from_str(lines[3]).unwrap();
        assert!(matches!(p, Partial::Step(_)), "{p:?}");
    }

    #[test]
    fn a_result_of_the_wrong_shape_is_an_error() {
        let v = serde_json::json!({ "lines": [] });
        assert!(Reply::decode("status", &v).is_err());
        assert!(Reply::decode("history", &v).is_err());
        assert!(Reply::decode("nope", &v).is_err());
    }
}
