//! Names that become part of a path or a command line: release names and service names.
//!
//! A release is substituted into `exec`, `working_dir` and `env` (`{release}`), so a name that
//! held `/` or `..` would lead a deploy out of the release directory — to any program on the
//! machine, run as the service's user. One rule, used by unit files, the socket API, D-Bus,
//! `rollback --to`, the supervisor and restored state alike.

/// Longest release name, in bytes.
pub const MAX_RELEASE_LEN: usize = 128;
/// Longest service name (the unit file's stem), in bytes.
pub const MAX_SERVICE_LEN: usize = 128;

/// What the rule for release names allows, for error messages.
pub const RELEASE_RULE: &str = "a release name is 1 to 128 bytes of any characters except `/`, \
     NUL and control characters, and is not `.` or `..` (e.g. \"v1.4.2\" or \"2026-12-08_abc123\")";

/// Why a release name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseNameError {
    #[error("invalid release name {0:?}: {RELEASE_RULE}")]
    Invalid(String),
    #[error("invalid release name ({0} bytes): {RELEASE_RULE}")]
    TooLong(usize),
}

/// Check a release name against the one rule (see [`RELEASE_RULE`]).
pub fn check_release(name: &str) -> Result<(), ReleaseNameError> {
    if name.len() > MAX_RELEASE_LEN {
        return Err(ReleaseNameError::TooLong(name.len()));
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c.is_control())
    {
        return Err(ReleaseNameError::Invalid(name.to_owned()));
    }
    Ok(())
}

/// Whether `name` is a valid service name: `[A-Za-z0-9_.@-]`, at most
/// [`MAX_SERVICE_LEN`] bytes, not `.` or `..`.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_LEN
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names() {
        for ok in [
            "v1",
            "current",
            "2026-12-08_abc123",
            "v1.2.3+build.4",
            "a b",
            "…",
            "..a",
            ".x",
        ] {
            assert_eq!(check_release(ok), Ok(()), "{ok}");
        }
        let long = "x".repeat(MAX_RELEASE_LEN);
        assert_eq!(check_release(&long), Ok(()));
        for bad in [
            "",
            ".",
            "..",
            "../../evil",
            "/x",
            "a/b",
            "a\0b",
            "a\nb",
            "a\tb",
            "\u{7f}",
            "a\u{85}b",
        ] {
            assert!(check_release(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_release("../../evil").unwrap_err().to_string(),
            "invalid release name \"../../evil\": a release name is 1 to 128 bytes of any \
             characters except `/`, NUL and control characters, and is not `.` or `..` \
             (e.g. \"v1.4.2\" or \"2026-12-08_abc123\")"
        );
        assert_eq!(
            check_release(&format!("{long}x")).unwrap_err(),
            ReleaseNameError::TooLong(129)
        );
    }

    #[test]
    fn service_names() {
        for ok in ["api", "web-1", "a.b", "x@y", "A_B"] {
            assert!(valid_service_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(!valid_service_name(bad), "{bad}");
        }
    }
}
