//! Parsers for the string-typed values shared by `orchd.toml` and unit files: durations,
//! signals, socket addresses and relative paths. Each reports into the file's `Report`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::diag::Report;
use super::raw::{RawDuration, S};

/// A humantime duration (`"100ms"`, `"1m30s"`) of at most `max` for `key`, or `default` when
/// absent or invalid.
pub(crate) fn duration(
    r: &mut Report<'_>,
    raw: &RawDuration,
    default: Duration,
    key: &str,
    max: Duration,
) -> Duration {
    let Some(raw) = raw else {
        return default;
    };
    match humantime::parse_duration(raw.get_ref()) {
        Ok(d) if d > max => {
            r.at(
                raw.span(),
                format!(
                    "{key} = {:?} is too long: at most {} is allowed",
                    raw.get_ref(),
                    super::bounds::show(max)
                ),
            );
            default
        }
        Ok(d) => d,
        Err(e) => {
            r.at(
                raw.span(),
                format!("invalid duration {:?}: {e}", raw.get_ref()),
            );
            default
        }
    }
}

/// A signal by name, with or without the `SIG` prefix (`"SIGTERM"`, `"INT"`).
pub(crate) fn signal(r: &mut Report<'_>, raw: &Option<S<String>>, default: Signal) -> Signal {
    let Some(raw) = raw else {
        return default;
    };
    let name = raw.get_ref().trim().to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    match Signal::from_str(&name) {
        Ok(s) => s,
        Err(_) => {
            r.at(
                raw.span(),
                format!(
                    "unknown signal {:?}: expected a name like \"SIGTERM\" or \"INT\"",
                    raw.get_ref()
                ),
            );
            default
        }
    }
}

/// An `IP:PORT` socket address for `key`.
pub(crate) fn socket_addr(r: &mut Report<'_>, raw: &S<String>, key: &str) -> Option<SocketAddr> {
    match raw.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            r.at(
                raw.span(),
                format!(
                    "invalid {key} {:?}: expected IP:PORT, e.g. \"127.0.0.1:8000\"",
                    raw.get_ref()
                ),
            );
            None
        }
    }
}

/// `path` as written, or relative to `base` (the directory of the file that names it).
pub(crate) fn resolve(base: &Path, path: &str) -> PathBuf {
    base.join(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spanned(s: &str) -> Option<S<String>> {
        Some(S::new(0..s.len(), s.to_string()))
    }

    #[test]
    fn durations_and_their_errors() {
        let path = Path::new("x.toml");
        let mut r = Report::new(path, "");
        assert_eq!(
            duration(
                &mut r,
                &spanned("1m30s"),
                Duration::ZERO,
                "k",
                Duration::MAX
            ),
            Duration::from_secs(90)
        );
        assert_eq!(
            duration(
                &mut r,
                &spanned("10 parsecs"),
                Duration::ZERO,
                "k",
                Duration::MAX
            ),
            Duration::ZERO
        );
        assert_eq!(
            r.errors[0].to_string(),
            "x.toml:1:1: invalid duration \"10 parsecs\": unknown time unit \"parsecs\", \
             supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years \
             (and few variations)"
        );
        duration(
            &mut r,
            &spanned("500000000000y"),
            Duration::ZERO,
            "stop.timeout",
            Duration::from_secs(86400),
        );
        assert_eq!(
            r.errors[1].to_string(),
            "x.toml:1:1: stop.timeout = \"500000000000y\" is too long: at most 24h is allowed"
        );
    }

    #[test]
    fn signals_with_and_without_prefix() {
        let path = Path::new("x.toml");
        let mut r = Report::new(path, "");
        assert_eq!(
            signal(&mut r, &spanned("SIGINT"), Signal::SIGTERM),
            Signal::SIGINT
        );
        assert_eq!(
            signal(&mut r, &spanned("quit"), Signal::SIGTERM),
            Signal::SIGQUIT
        );
        assert_eq!(signal(&mut r, &None, Signal::SIGTERM), Signal::SIGTERM);
        assert!(r.errors.is_empty());
        signal(&mut r, &spanned("SIGFOO"), Signal::SIGTERM);
        assert_eq!(
            r.errors[0].message,
            "unknown signal \"SIGFOO\": expected a name like \"SIGTERM\" or \"INT\""
        );
    }
}
