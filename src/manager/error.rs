//! Why the manager refused or could not answer a request. The API maps these to its wire errors
//! and exit codes (`api::error`); the texts are what `orchctl` prints (tests compare them).

/// A request the manager could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// The manager task is gone (orchd is stopping).
    #[error("orchd is shutting down")]
    ShuttingDown,
    /// Names that are not services; `known` lists every service there is.
    #[error("no such service: {}; known services: {}", unknown.join(", "), known.join(", "))]
    NoSuchService {
        unknown: Vec<String>,
        known: Vec<String>,
    },
    /// A control command (start, stop, …) named no service.
    #[error("name at least one service")]
    NoServiceNamed,
    /// A start or restart of a service whose unit file is invalid; `errors` are its diagnostics.
    #[error("{service} has an invalid unit file; fix it and run `orchctl reload`:\n{errors}")]
    InvalidUnit { service: String, errors: String },
    /// Logs of a service whose unit file is invalid: it never had a process.
    #[error("{service} has an invalid unit file and never ran; see `orchctl status {service}`")]
    NeverRan { service: String },
    /// A deploy or rollback of a service whose unit file is invalid.
    #[error("{service} has an invalid unit file; fix it and run `orchctl reload` first")]
    NotDeployable { service: String },
    /// A reload found errors in orchd.toml or a unit (every `FILE:LINE:COL: message`); nothing
    /// was changed.
    #[error("configuration is invalid; nothing was changed:\n{}", errors.join("\n"))]
    InvalidConfig { errors: Vec<String> },
    /// A reload would move `units_dir` or `state_dir`, which only a restart of orchd applies.
    #[error("units_dir or state_dir changed: restart orchd to apply that; nothing was changed")]
    DirsChanged,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_and_what_to_do() {
        let e = ManagerError::NoSuchService {
            unknown: vec!["apu".into()],
            known: vec!["api".into(), "web".into()],
        };
        assert_eq!(
            e.to_string(),
            "no such service: apu; known services: api, web"
        );
        let e = ManagerError::InvalidConfig {
            errors: vec!["a.toml:1:1: x".into(), "b.toml:2:1: y".into()],
        };
        assert_eq!(
            e.to_string(),
            "configuration is invalid; nothing was changed:\na.toml:1:1: x\nb.toml:2:1: y"
        );
        let e = ManagerError::NeverRan {
            service: "db".into(),
        };
        assert_eq!(
            e.to_string(),
            "db has an invalid unit file and never ran; see `orchctl status db`"
        );
    }
}
