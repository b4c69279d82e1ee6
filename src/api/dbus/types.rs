//! The typed values of the D-Bus API (docs/dbus.md "Types"): the API's replies as D-Bus
//! structs, and its errors as named D-Bus errors. D-Bus has no null: an absent text is `""`.

use serde::{Deserialize, Serialize};
use zbus::{DBusError, Type};

use crate::api::proto::{
    ApiError, DeployReply, ErrorCode, HistoryEntry, ReloadReport, ServiceStatus,
};

/// One service as D-Bus returns it: `(sssisus)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ServiceInfo {
    pub name: String,
    /// A state name of DESIGN §2 (`running`, `backoff`, `bad-setting`, …).
    pub state: String,
    /// `none`, `starting`, `healthy` or `unhealthy`.
    pub health: String,
    /// The main process, 0 when there is none.
    pub pid: i32,
    pub release: String,
    pub restarts: u32,
    /// When the service entered its current state, RFC 3339 UTC.
    pub since: String,
}

impl From<&ServiceStatus> for ServiceInfo {
    fn from(s: &ServiceStatus) -> Self {
        ServiceInfo {
            name: s.name.clone(),
            state: s.state.as_str().to_owned(),
            health: s.health.as_str().to_owned(),
            pid: s.pid.unwrap_or(0),
            release: s.release.clone(),
            restarts: s.restarts,
            since: s.since.clone(),
        }
    }
}

/// What a reload did (or would do): `(basasasasasas)`, the fields of the socket's `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ReloadInfo {
    pub dry_run: bool,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub notes: Vec<String>,
}

impl From<ReloadReport> for ReloadInfo {
    fn from(r: ReloadReport) -> Self {
        ReloadInfo {
            dry_run: r.dry_run,
            added: r.added,
            removed: r.removed,
            restarted: r.restarted,
            updated: r.updated,
            unchanged: r.unchanged,
            notes: r.notes,
        }
    }
}

/// How a deploy or rollback ended, or that a detached one began: `(ssssstsbb)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct DeployInfo {
    pub deploy_id: String,
    /// `succeeded`, `failed` or `rolled_back`; `""` when detached.
    pub result: String,
    pub release: String,
    /// `""` when detached.
    pub previous: String,
    /// `""` when detached.
    pub active: String,
    pub duration_ms: u64,
    /// Why it did not succeed; `""` on success.
    pub reason: String,
    pub rollback: bool,
    /// Accepted and going on (`detach`): follow `DeployFinished`.
    pub detached: bool,
}

impl From<DeployReply> for DeployInfo {
    fn from(r: DeployReply) -> Self {
        match r {
            DeployReply::Finished(f) => DeployInfo {
                deploy_id: f.deploy_id,
                result: f.result.as_str().to_owned(),
                release: f.release,
                previous: f.previous,
                active: f.active,
                duration_ms: f.duration_ms,
                reason: f.reason.unwrap_or_default(),
                rollback: f.rollback,
                detached: false,
            },
            DeployReply::Detached(d) => DeployInfo {
                deploy_id: d.deploy_id,
                result: String::new(),
                release: d.release,
                previous: String::new(),
                active: String::new(),
                duration_ms: 0,
                reason: String::new(),
                rollback: false,
                detached: d.detached,
            },
        }
    }
}

/// One deploy of a service's history: `(sssssstssb)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct HistoryInfo {
    pub deploy_id: String,
    pub release: String,
    pub previous: String,
    /// `succeeded`, `failed` or `rolled_back`.
    pub result: String,
    /// RFC 3339 UTC.
    pub started: String,
    /// RFC 3339 UTC.
    pub finished: String,
    pub duration_ms: u64,
    /// The caller's uid, user and pid.
    pub who: String,
    /// Why it did not succeed; `""` on success.
    pub reason: String,
    pub rollback: bool,
}

impl From<HistoryEntry> for HistoryInfo {
    fn from(e: HistoryEntry) -> Self {
        HistoryInfo {
            deploy_id: e.deploy_id,
            release: e.release,
            previous: e.previous,
            result: e.result,
            started: e.started,
            finished: e.finished,
            duration_ms: e.duration_ms,
            who: e.who,
            reason: e.reason.unwrap_or_default(),
            rollback: e.rollback,
        }
    }
}

/// The error replies of `io.orchd.Manager1`: `io.orchd.Manager1.Error.<Code>` with the
/// handler's message; one variant per [`ErrorCode`].
#[derive(Debug, DBusError)]
#[zbus(prefix = "io.orchd.Manager1.Error")]
pub enum Manager1Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    BadRequest(String),
    UnknownCommand(String),
    NotFound(String),
    Invalid(String),
    PermissionDenied(String),
    Failed(String),
    NotSupported(String),
    Busy(String),
    Unavailable(String),
}

impl From<ApiError> for Manager1Error {
    fn from(e: ApiError) -> Self {
        let m = e.message;
        match e.code {
            ErrorCode::BadRequest => Manager1Error::BadRequest(m),
            ErrorCode::UnknownCommand => Manager1Error::UnknownCommand(m),
            ErrorCode::NotFound => Manager1Error::NotFound(m),
            ErrorCode::Invalid => Manager1Error::Invalid(m),
            ErrorCode::PermissionDenied => Manager1Error::PermissionDenied(m),
            ErrorCode::Failed => Manager1Error::Failed(m),
            ErrorCode::NotSupported => Manager1Error::NotSupported(m),
            ErrorCode::Busy => Manager1Error::Busy(m),
            ErrorCode::Unavailable => Manager1Error::Unavailable(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::State;

    #[test]
    fn the_structs_have_the_documented_signatures() {
        assert_eq!(ServiceInfo::SIGNATURE, "(sssisus)");
        assert_eq!(ReloadInfo::SIGNATURE, "(basasasasasas)");
        assert_eq!(DeployInfo::SIGNATURE, "(ssssstsbb)");
        assert_eq!(HistoryInfo::SIGNATURE, "(sssssstssb)");
    }

    #[test]
    fn service_info_is_a_flat_struct() {
        let mut s = ServiceStatus::new("api", "current");
        let info = ServiceInfo::from(&s);
        assert_eq!(
            (info.state.as_str(), info.health.as_str(), info.pid),
            ("inactive", "none", 0)
        );
        s.pid = Some(42);
        s.state = State::BadSetting;
        let info = ServiceInfo::from(&s);
        assert_eq!((info.state.as_str(), info.pid), ("bad-setting", 42));
    }

    #[test]
    fn deploy_replies_become_deploy_info() {
        let line = r#"{"active":"v2","deploy_id":"api-1","duration_ms":5263,"previous":"v3","reason":"crashed during the watch","release":"v3","result":"rolled_back","rollback":false}"#;
        let info = DeployInfo::from(serde_json::from_str::<DeployReply>(line).unwrap());
        assert_eq!(
            (
                info.result.as_str(),
                info.reason.as_str(),
                info.duration_ms,
                info.detached
            ),
            ("rolled_back", "crashed during the watch", 5263, false)
        );
        let line = r#"{"deploy_id":"api-2","detached":true,"release":"v4"}"#;
        let info = DeployInfo::from(serde_json::from_str::<DeployReply>(line).unwrap());
        assert_eq!(
            (
                info.deploy_id.as_str(),
                info.result.as_str(),
                info.release.as_str(),
                info.detached
            ),
            ("api-2", "", "v4", true)
        );
    }

    #[test]
    fn history_entries_have_no_null() {
        let line = r#"{"deploy_id":"api-1","duration_ms":2007,"finished":"2026-11-22T09:38:30.717Z","previous":"v3","release":"v6","result":"succeeded","rollback":false,"started":"2026-11-22T09:38:28Z","who":"uid 0 (root), pid 14477"}"#;
        let info = HistoryInfo::from(serde_json::from_str::<HistoryEntry>(line).unwrap());
        assert_eq!(
            (info.result.as_str(), info.reason.as_str()),
            ("succeeded", "")
        );
    }

    #[test]
    fn api_errors_become_named_dbus_errors() {
        let cases = [
            (ErrorCode::PermissionDenied, "PermissionDenied"),
            (ErrorCode::NotFound, "NotFound"),
            (ErrorCode::NotSupported, "NotSupported"),
            (ErrorCode::Failed, "Failed"),
            (ErrorCode::BadRequest, "BadRequest"),
            (ErrorCode::UnknownCommand, "UnknownCommand"),
            (ErrorCode::Invalid, "Invalid"),
            (ErrorCode::Busy, "Busy"),
            (ErrorCode::Unavailable, "Unavailable"),
        ];
        for (code, name) in cases {
            let e = Manager1Error::from(ApiError::new(code, "why"));
            assert_eq!(
                zbus::DBusError::name(&e).as_str(),
                format!("io.orchd.Manager1.Error.{name}")
            );
            assert_eq!(zbus::DBusError::description(&e), Some("why"));
        }
    }
}
