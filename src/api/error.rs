//! The one place where the errors of the modules below the API become wire errors
//! ([`ApiError`]: a code, which `orchctl` maps to its exit code, and the message).

use super::proto::{ApiError, ErrorCode};
use crate::alert::AlertError;
use crate::manager::ManagerError;

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let code = match &e {
            ManagerError::ShuttingDown => ErrorCode::Unavailable,
            ManagerError::NoSuchService { .. } => ErrorCode::NotFound,
            ManagerError::NoServiceNamed => ErrorCode::BadRequest,
            ManagerError::InvalidUnit { .. }
            | ManagerError::NeverRan { .. }
            | ManagerError::NotDeployable { .. } => ErrorCode::Failed,
            ManagerError::InvalidConfig { .. } | ManagerError::DirsChanged => ErrorCode::Invalid,
        };
        let mut api = ApiError::new(code, e.to_string());
        if let ManagerError::InvalidConfig { errors } = e {
            // Every diagnostic on its own, for scripts (docs/api.md: `detail.errors`).
            api.detail = Some(serde_json::json!({ "errors": errors }));
        }
        api
    }
}

impl From<AlertError> for ApiError {
    fn from(e: AlertError) -> Self {
        let code = match &e {
            AlertError::Gone => ErrorCode::Unavailable,
            AlertError::TooManySilences { .. } => ErrorCode::Busy,
            AlertError::NoSuchSilence { .. } | AlertError::NoSuchChannel { .. } => {
                ErrorCode::NotFound
            }
            AlertError::NoChannels => ErrorCode::Failed,
        };
        ApiError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_errors_keep_their_codes() {
        let cases = [
            (ManagerError::ShuttingDown, ErrorCode::Unavailable, 1),
            (
                ManagerError::NoSuchService {
                    unknown: vec!["x".into()],
                    known: vec![],
                },
                ErrorCode::NotFound,
                2,
            ),
            (ManagerError::NoServiceNamed, ErrorCode::BadRequest, 2),
            (
                ManagerError::NeverRan {
                    service: "db".into(),
                },
                ErrorCode::Failed,
                1,
            ),
            (ManagerError::DirsChanged, ErrorCode::Invalid, 2),
        ];
        for (e, code, exit) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.code, api.code.exit_code()), (code, exit), "{api}");
            assert_eq!(api.detail, None);
        }
    }

    #[test]
    fn an_invalid_config_lists_every_error_as_detail() {
        let e = ManagerError::InvalidConfig {
            errors: vec!["u.toml:3:1: unknown field `polcy`".into()],
        };
        let api = ApiError::from(e);
        assert_eq!(api.code, ErrorCode::Invalid);
        assert_eq!(
            serde_json::to_string(&api).unwrap(),
            r#"{"code":"invalid","message":"configuration is invalid; nothing was changed:\nu.toml:3:1: unknown field `polcy`","detail":{"errors":["u.toml:3:1: unknown field `polcy`"]}}"#
        );
    }

    #[test]
    fn alert_errors_keep_their_codes() {
        let cases = [
            (AlertError::Gone, ErrorCode::Unavailable),
            (AlertError::TooManySilences { max: 3 }, ErrorCode::Busy),
            (
                AlertError::NoSuchSilence { id: "s".into() },
                ErrorCode::NotFound,
            ),
            (
                AlertError::NoSuchChannel {
                    channel: "c".into(),
                    known: "none configured".into(),
                },
                ErrorCode::NotFound,
            ),
            (AlertError::NoChannels, ErrorCode::Failed),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let api = ApiError::from(e);
            assert_eq!((api.code, api.message), (code, text));
        }
    }
}
