//! The wire protocol shared by the socket server, the D-Bus adapter and `orchctl`.
//!
//! One JSON object per line each way (*contract*, DESIGN §5). A request has `id`, `cmd` and
//! `args`; a response echoes `id` and has `result` or `error {code, message}`; the last line of
//! a response has `"done": true` (streaming commands send earlier lines with `"done": false`).
//!
//! Here: requests ([`Command`]), errors ([`ApiError`]) and the response line ([`Response`]);
//! `reply.rs` has every command's result type ([`Reply`]) and the partial results of streams
//! ([`Partial`]); `deploy.rs` the wire form of a deploy's steps and result.

mod deploy;
mod reply;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use deploy::{
    DeployDetached, DeployOutcome, DeployReply, DeployResult, DeployStep, DeployStepKind,
    DeployStrategy,
};
pub use reply::{
    AlertTestReply, ChannelReport, Event, EventsReply, HistoryEntry, HistoryReply, LogLine,
    LogsReply, PartTrouble, Partial, ReloadReport, Reply, ServiceStatus, ServicesReply, Silence,
    SilenceReply, SilencesReply, StatusReply, StreamEnd, StreamItem,
};

/// Longest request line accepted.
pub const MAX_LINE: usize = 1024 * 1024;

/// Every command, with its typed arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "cmd",
    content = "args",
    rename_all = "kebab-case",
    deny_unknown_fields
)]
pub enum Command {
    Status {
        #[serde(default)]
        services: Vec<String>,
    },
    Start {
        services: Vec<String>,
    },
    Stop {
        services: Vec<String>,
    },
    Restart {
        services: Vec<String>,
    },
    Reset {
        services: Vec<String>,
    },
    Logs {
        service: String,
        #[serde(default = "default_lines")]
        n: usize,
        #[serde(default)]
        follow: bool,
    },
    Events {
        #[serde(default)]
        follow: bool,
        #[serde(default = "default_lines")]
        n: usize,
    },
    Reload {
        #[serde(default)]
        dry_run: bool,
    },
    Deploy {
        service: String,
        release: String,
        #[serde(default)]
        timeout: Option<String>,
        #[serde(default)]
        detach: bool,
    },
    Rollback {
        service: String,
        #[serde(default)]
        to: Option<String>,
    },
    History {
        service: String,
    },
    AlertTest {
        #[serde(default)]
        channel: Option<String>,
    },
    Silence {
        target: String,
        #[serde(rename = "for")]
        duration: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Silences {},
    Unsilence {
        id: String,
    },
}

fn default_lines() -> usize {
    50
}

/// Command names, as on the wire and in `[[api.grant]] commands`.
pub const COMMANDS: &[&str] = &[
    "status",
    "start",
    "stop",
    "restart",
    "reset",
    "logs",
    "events",
    "reload",
    "deploy",
    "rollback",
    "history",
    "alert-test",
    "silence",
    "silences",
    "unsilence",
];

/// Commands a `readonly_groups` member may run.
pub const READ_ONLY: &[&str] = &["status", "logs", "events", "history", "silences"];

impl Command {
    /// The wire name of the command.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status { .. } => "status",
            Command::Start { .. } => "start",
            Command::Stop { .. } => "stop",
            Command::Restart { .. } => "restart",
            Command::Reset { .. } => "reset",
            Command::Logs { .. } => "logs",
            Command::Events { .. } => "events",
            Command::Reload { .. } => "reload",
            Command::Deploy { .. } => "deploy",
            Command::Rollback { .. } => "rollback",
            Command::History { .. } => "history",
            Command::AlertTest { .. } => "alert-test",
            Command::Silence { .. } => "silence",
            Command::Silences {} => "silences",
            Command::Unsilence { .. } => "unsilence",
        }
    }

    /// The services the command acts on (for `[[api.grant]]` checks); empty = daemon-wide.
    pub fn services(&self) -> Vec<String> {
        match self {
            Command::Status { services }
            | Command::Start { services }
            | Command::Stop { services }
            | Command::Restart { services }
            | Command::Reset { services } => services.clone(),
            Command::Logs { service, .. }
            | Command::Deploy { service, .. }
            | Command::Rollback { service, .. }
            | Command::History { service } => vec![service.clone()],
            Command::Silence { target, .. } if target != "all" => vec![target.clone()],
            _ => vec![],
        }
    }
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub id: Value,
    #[serde(flatten)]
    pub command: Command,
}

/// Error codes in `error.code`; `orchctl` maps them to exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, wrong argument types, a line too long. Exit 2.
    BadRequest,
    /// A `cmd` orchd doesn't know. Exit 2.
    UnknownCommand,
    /// No such service. Exit 2.
    NotFound,
    /// The configuration is invalid (reload). Exit 2.
    Invalid,
    /// The caller may not do this. Exit 4.
    PermissionDenied,
    /// The operation ran and failed (a service failed, a deploy failed). Exit 1.
    Failed,
    /// This orchd doesn't implement the command yet. Exit 1.
    NotSupported,
    /// Another operation holds the service (e.g. a deploy). Exit 1.
    Busy,
    /// orchd is overloaded or shutting down. Exit 1.
    Unavailable,
}

impl ErrorCode {
    /// The `orchctl` exit code for this error (DESIGN §5).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::UnknownCommand
            | ErrorCode::NotFound
            | ErrorCode::Invalid => 2,
            ErrorCode::PermissionDenied => 4,
            ErrorCode::Failed
            | ErrorCode::NotSupported
            | ErrorCode::Busy
            | ErrorCode::Unavailable => 1,
        }
    }
}

/// `error` in a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Extra structured detail (e.g. every config error of a failed reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            detail: None,
        }
    }
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    pub done: bool,
}

impl Response {
    pub fn ok(id: Value, result: Value) -> Self {
        Response {
            id,
            result: Some(result),
            error: None,
            done: true,
        }
    }
    pub fn partial(id: Value, result: Value) -> Self {
        Response {
            id,
            result: Some(result),
            error: None,
            done: false,
        }
    }
    /// The last line of a response, carrying `reply`.
    pub fn reply(id: Value, reply: &Reply) -> Self {
        match encode(reply) {
            Ok(result) => Response::ok(id, result),
            Err(e) => Response::err(id, e),
        }
    }
    /// A `"done": false` line carrying `partial`.
    pub fn of_partial(id: Value, partial: &Partial) -> Self {
        match encode(partial) {
            Ok(result) => Response::partial(id, result),
            Err(e) => Response::err(id, e),
        }
    }
    pub fn err(id: Value, error: ApiError) -> Self {
        Response {
            id,
            result: None,
            error: Some(error),
            done: true,
        }
    }
}

/// A typed result as the JSON value the line carries (objects keep their keys in name order).
fn encode(v: &impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| {
        ApiError::new(
            ErrorCode::Failed,
            format!("orchd cannot encode its answer: {e}; this is a bug, please report it"),
        )
    })
}

/// Parse one request line, mapping every failure to the error response it deserves.
pub fn parse_request(line: &[u8]) -> Result<Request, (Value, ApiError)> {
    let raw: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            ApiError::new(ErrorCode::BadRequest, format!("bad JSON: {e}")),
        )
    })?;
    let id = raw.get("id").cloned().unwrap_or(Value::Null);
    let Some(obj) = raw.as_object() else {
        return Err((
            id,
            ApiError::new(ErrorCode::BadRequest, "a request must be a JSON object"),
        ));
    };
    let Some(cmd) = obj.get("cmd").and_then(Value::as_str) else {
        return Err((
            id,
            ApiError::new(ErrorCode::BadRequest, "missing \"cmd\" (a string)"),
        ));
    };
    if !COMMANDS.contains(&cmd) {
        let msg = format!("unknown command \"{cmd}\"; known: {}", COMMANDS.join(", "));
        return Err((id, ApiError::new(ErrorCode::UnknownCommand, msg)));
    }
    let args = match obj.get("args") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(a) => a.clone(),
    };
    let tagged = serde_json::json!({ "cmd": cmd, "args": args });
    let command: Command = serde_json::from_value(tagged).map_err(|e| {
        (
            id.clone(),
            ApiError::new(
                ErrorCode::BadRequest,
                format!("bad arguments for \"{cmd}\": {e}"),
            ),
        )
    })?;
    Ok(Request { id, command })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_status_request() {
        let r = parse_request(br#"{"id":7,"cmd":"status","args":{"services":["api"]}}"#).unwrap();
        assert_eq!(r.id, serde_json::json!(7));
        assert_eq!(
            r.command,
            Command::Status {
                services: vec!["api".into()]
            }
        );
    }

    #[test]
    fn args_may_be_omitted() {
        let r = parse_request(br#"{"id":"a","cmd":"silences"}"#).unwrap();
        assert_eq!(r.command, Command::Silences {});
    }

    #[test]
    fn errors_are_classified() {
        let (_, e) = parse_request(b"{nope").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.starts_with("bad JSON: "), "{}", e.message);
        let (id, e) = parse_request(br#"{"id":1,"cmd":"explode"}"#).unwrap_err();
        assert_eq!(
            (id, e.code),
            (serde_json::json!(1), ErrorCode::UnknownCommand)
        );
        let (_, e) =
            parse_request(br#"{"id":1,"cmd":"start","args":{"services":"api"}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(
            e.message
                .starts_with("bad arguments for \"start\": invalid type"),
            "{}",
            e.message
        );
        let (_, e) = parse_request(br#"[1,2]"#).unwrap_err();
        assert_eq!(e.message, "a request must be a JSON object");
    }

    #[test]
    fn request_round_trips() {
        let r = Request {
            id: serde_json::json!(3),
            command: Command::Reload { dry_run: true },
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"id":3,"cmd":"reload","args":{"dry_run":true}}"#);
        assert_eq!(parse_request(line.as_bytes()).unwrap(), r);
    }
}
