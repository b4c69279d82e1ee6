//! Reading `orchd.toml` and `units_dir/*.toml` from disk and running every validation
//! stage over them: the public [`load`] and [`check`] of the config module.

use crate::files::read_bounded_string;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::diag::Diagnostic;
use super::graph;
use super::unit::Unit;
use super::validate_daemon::{self, validate_daemon};
use super::validate_unit::{self, Links, UnitCtx, validate_unit};
use super::{Config, UnitEntry};

/// Loads `orchd.toml` at `config_path` and every `units_dir/*.toml`. Fails only when
/// `orchd.toml` is unreadable or invalid, or `units_dir` unreadable; a broken unit
/// becomes [`UnitEntry::Bad`].
pub fn load(config_path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let (daemon, errors) = load_daemon(config_path)?;
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        units: load_units(&daemon)?,
        daemon: daemon.config,
    })
}

/// Every problem in the config and all units, sorted (none = valid), and how many units were
/// read, for `orchd --check`.
/// Unlike [`load`], units are still checked when `orchd.toml` has errors, as long as
/// `units_dir` itself could be read from it.
pub fn check(config_path: &Path) -> CheckReport {
    let mut report = CheckReport::default();
    let (daemon, mut all) = match load_daemon(config_path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            report.errors = errors;
            return report;
        }
    };
    report.units_dir = daemon.config.units_dir.clone();
    if daemon.units_dir_ok {
        match load_units(&daemon) {
            Ok(units) => {
                report.units = units.len();
                all.extend(
                    Config {
                        daemon: daemon.config,
                        units,
                    }
                    .diagnostics(),
                )
            }
            Err(errors) => all.extend(errors),
        }
    }
    all.sort();
    report.errors = all;
    report
}

/// What `orchd --check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Every error, sorted by file and place.
    pub errors: Vec<Diagnostic>,
    /// The unit files read.
    pub units: usize,
    pub units_dir: PathBuf,
}

/// Largest `orchd.toml` or unit file read.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Reads and validates `orchd.toml`; `Err` only when it cannot be read.
fn load_daemon(
    config_path: &Path,
) -> Result<(validate_daemon::DaemonOutcome, Vec<Diagnostic>), Vec<Diagnostic>> {
    let path = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let text = read_bounded_string(&path, MAX_CONFIG_FILE).map_err(|e| {
        vec![Diagnostic::whole_file(
            &path,
            format!("cannot read config file: {e}"),
        )]
    })?;
    let mut daemon = validate_daemon(&path, &text);
    let errors = std::mem::take(&mut daemon.errors);
    Ok((daemon, errors))
}

fn load_units(
    daemon: &validate_daemon::DaemonOutcome,
) -> Result<BTreeMap<String, UnitEntry>, Vec<Diagnostic>> {
    let dir = &daemon.config.units_dir;
    let unreadable = |e: std::io::Error| {
        vec![
            daemon
                .units_dir_at
                .diag(format!("cannot read units_dir {}: {e}", dir.display())),
        ]
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        // Every `*.toml` is a unit: a symlink that leads nowhere (dangling, looping) or to
        // something that is not a file is an error with its path, never "the unit was
        // removed" (which would stop a running service at the next reload).
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            continue;
        }
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text =
            read_bounded_string(&path, MAX_CONFIG_FILE).map_err(|e| match entry.file_type() {
                Ok(t) if t.is_symlink() && e.kind() == std::io::ErrorKind::NotFound => {
                    std::io::Error::new(e.kind(), "a symlink to a file that does not exist")
                }
                Ok(t) if t.is_symlink() && e.raw_os_error() == Some(libc::ELOOP) => {
                    std::io::Error::new(e.kind(), "a symlink loop")
                }
                _ => e,
            });
        files.push(UnitFile { name, path, text });
    }
    let ctx = UnitCtx {
        channels: daemon.channels.clone(),
    };
    Ok(build_units(files, dir, &ctx))
}

/// One unit file as read from disk.
pub(crate) struct UnitFile {
    pub name: String,
    pub path: PathBuf,
    pub text: std::io::Result<String>,
}

/// Validates unit files, each on its own and then across each other.
pub(crate) fn build_units(
    files: Vec<UnitFile>,
    units_dir: &Path,
    ctx: &UnitCtx,
) -> BTreeMap<String, UnitEntry> {
    let mut parsed = BTreeMap::new();
    let mut links = BTreeMap::new();
    for f in files {
        let outcome = match &f.text {
            Ok(text) => validate_unit(&f.name, &f.path, text, ctx),
            Err(e) => validate_unit::UnitOutcome {
                unit: None,
                errors: vec![Diagnostic::whole_file(
                    &f.path,
                    format!("cannot read unit file: {e}"),
                )],
                links: Links::default(),
            },
        };
        links.insert(f.name.clone(), outcome.links);
        parsed.insert(f.name, (f.path, outcome.unit, outcome.errors));
    }
    let mut cross = graph::cross_check(&links, units_dir);
    parsed
        .into_iter()
        .map(|(name, (path, unit, mut errors))| {
            errors.extend(cross.remove(&name).unwrap_or_default());
            let entry = match unit {
                Some(unit) if errors.is_empty() => UnitEntry::Ok(Arc::new(unit)),
                _ => {
                    errors.sort();
                    UnitEntry::Bad { path, errors }
                }
            };
            (name, entry)
        })
        .collect()
}

/// Validates one unit file's text on its own, against the alert `channels` of
/// `orchd.toml`, without the checks across units. For tools and tests.
pub fn load_unit_str(
    name: &str,
    path: &Path,
    text: &str,
    channels: &[&str],
) -> Result<Unit, Vec<Diagnostic>> {
    let ctx = UnitCtx {
        channels: channels.iter().map(|c| c.to_string()).collect(),
    };
    let outcome = validate_unit(name, path, text, &ctx);
    match outcome.unit {
        Some(unit) if outcome.errors.is_empty() => Ok(unit),
        _ => {
            let mut errors = outcome.errors;
            errors.sort();
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use super::*;
    use crate::config::*;

    /// The samples of DESIGN §3, verbatim.
    const ORCHD: &str = r#"
units_dir = "units"            # *.toml; the service name is the file stem
state_dir = "/var/lib/orch"
[api]
socket = "/run/orch/orchd.sock"
socket_group = "orch"
readonly_groups = []
dbus = "system"
[[api.grant]]
group = "ci"
commands = ["deploy", "rollback", "status", "history"]
services = ["api", "web"]
[alerts]
repeat_interval = "1h"
[[alerts.email]]
name = "oncall"
server = "smtp.example.com"
port = 587
tls = "starttls"
username = "orchd"
password_file = "/etc/orch/smtp.pass"
from = "orchd <orchd@example.com>"
to = ["oncall@example.com"]
[[alerts.webhook]]
name = "slack"
url = "https://hooks.slack.com/services/…"
format = "slack"
secret_file = "/etc/orch/hook.key"
[metrics]
listen = "127.0.0.1:9321"
"#;

    const API: &str = r#"
description = "Public API"
exec = ["/opt/api/{release}/bin/api", "--port", "{port}"]
working_dir = "/opt/api/{release}"
release = "current"
user = "api"
group = "api"
env = { RUST_LOG = "info" }
env_file = "/etc/orch/api.env"
requires = ["db"]
after = ["cache"]
alert = ["oncall", "slack"]
[restart]
policy = "on-failure"
delay = "100ms"
max_delay = "30s"
multiplier = 2.0
jitter = 0.1
reset_after = "60s"
burst = 5
interval = "60s"
[stop]
signal = "SIGTERM"
timeout = "10s"
[health]
http = "http://127.0.0.1:{port}/health"
interval = "5s"
timeout = "2s"
retries = 3
start_period = "10s"
on_unhealthy = "restart"
[deploy]
listen = "0.0.0.0:8000"
proxy = "http"
ports = [9000, 9001]
timeout = "60s"
watch = "60s"
drain = "30s"
keep_releases = 5
"#;

    fn setup(units: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("units")).expect("units dir");
        std::fs::write(dir.path().join("orchd.toml"), ORCHD).expect("write orchd.toml");
        for (name, text) in units {
            std::fs::write(dir.path().join("units").join(name), text).expect("write unit");
        }
        dir
    }

    fn expected_api(units: &Path) -> Unit {
        Unit {
            name: "api".into(),
            path: units.join("api.toml"),
            description: Some("Public API".into()),
            exec: Some(vec![
                "/opt/api/{release}/bin/api".into(),
                "--port".into(),
                "{port}".into(),
            ]),
            working_dir: Some("/opt/api/{release}".into()),
            release: "current".into(),
            user: Some("api".into()),
            group: Some("api".into()),
            env: [("RUST_LOG".to_string(), "info".to_string())].into(),
            env_file: Some("/etc/orch/api.env".into()),
            requires: vec!["db".into()],
            after: vec!["cache".into()],
            alert: Some(vec!["oncall".into(), "slack".into()]),
            restart: RestartConfig {
                burst: 5,
                ..RestartConfig::default()
            },
            stop: StopConfig {
                signal: Signal::SIGTERM,
                timeout: Duration::from_secs(10),
            },
            health: Some(HealthConfig {
                check: HealthCheck::Http {
                    url: "http://127.0.0.1:{port}/health".into(),
                    expect_status: None,
                    expect_body: None,
                    headers: BTreeMap::new(),
                    insecure: false,
                },
                start_period: Duration::from_secs(10),
                ..HealthConfig::default()
            }),
            deploy: Some(DeployConfig {
                listen: Some(([0, 0, 0, 0], 8000).into()),
                ports: [9000, 9001],
                ..DeployConfig::default()
            }),
        }
    }

    #[test]
    fn design_samples_load_to_typed_values() {
        let monitor = "[health]\ntcp = \"10.0.0.5:5432\"\n";
        let units = [
            ("api.toml", API),
            ("db.toml", monitor),
            ("cache.toml", "exec = [\"c\"]\n"),
        ];
        let dir = setup(&units);
        std::fs::write(dir.path().join("units/README"), "not a unit").expect("write");
        let config = load(&dir.path().join("orchd.toml")).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(config.diagnostics(), vec![]);
        let d = &config.daemon;
        let units_dir = dir.path().join("units");
        assert_eq!(d.path, dir.path().join("orchd.toml"));
        assert_eq!(d.units_dir, units_dir);
        assert_eq!(d.state_dir, Path::new("/var/lib/orch"));
        assert_eq!(d.api.socket_group.as_deref(), Some("orch"));
        assert_eq!(d.api.dbus, DbusMode::System);
        let grant = Grant {
            principal: Principal::Group("ci".into()),
            commands: ["deploy", "rollback", "status", "history"]
                .map(String::from)
                .into(),
            services: vec!["api".into(), "web".into()],
        };
        assert_eq!(d.api.grants, [grant]);
        assert_eq!(d.alerts.repeat_interval, Duration::from_secs(3600));
        let email = EmailChannel {
            name: "oncall".into(),
            server: "smtp.example.com".into(),
            port: 587,
            tls: TlsMode::Starttls,
            username: Some("orchd".into()),
            password: Some(SecretSource::File("/etc/orch/smtp.pass".into())),
            from: "orchd <orchd@example.com>".into(),
            to: vec!["oncall@example.com".into()],
        };
        assert_eq!(d.alerts.email, [email]);
        let hook = &d.alerts.webhook[0];
        assert_eq!(hook.url.expose(), "https://hooks.slack.com/services/…");
        assert_eq!(hook.url.to_string(), "https://hooks.slack.com/…");
        assert_eq!(hook.format, WebhookFormat::Slack);
        assert_eq!(
            hook.secret_file.as_deref(),
            Some(Path::new("/etc/orch/hook.key"))
        );
        assert_eq!(
            d.metrics,
            Some(MetricsConfig {
                listen: ([127, 0, 0, 1], 9321).into()
            })
        );

        assert_eq!(config.units.len(), 3);
        let expected = UnitEntry::Ok(Arc::new(expected_api(&units_dir)));
        assert_eq!(config.units.get("api"), Some(&expected));
        match config.units.get("db") {
            Some(UnitEntry::Ok(db)) => assert!(db.is_monitor_only()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_units_stay_visible_and_check_reports_everything() {
        let units = [
            ("api.toml", API),
            ("cache.toml", "exec = [\"c\"]\n[restart]\npolcy = 1\n"),
        ];
        let dir = setup(&units);
        let path = dir.path().join("orchd.toml");
        let config = load(&path).unwrap_or_else(|e| panic!("{e:?}"));
        let units_dir = dir.path().join("units");
        let expected = [
            format!(
                "{}:10:13: unknown dependency `db`: no unit file db.toml in {}",
                units_dir.join("api.toml").display(),
                units_dir.display()
            ),
            format!(
                "{}:3:1: unknown field `polcy`, expected one of `policy`, `delay`, `max_delay`, \
                 `multiplier`, `jitter`, `reset_after`, `burst`, `interval`",
                units_dir.join("cache.toml").display()
            ),
        ];
        let shown: Vec<String> = config
            .diagnostics()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, expected);
        assert!(matches!(
            config.units.get("api"),
            Some(UnitEntry::Bad { .. })
        ));

        // A bad orchd.toml fails the load; --check still reports the units too.
        std::fs::write(&path, format!("bogus = 1{ORCHD}")).expect("write");
        let daemon_error = format!(
            "{}:1:1: unknown field `bogus`, expected one of `units_dir`, `state_dir`, `api`, \
             `alerts`, `metrics`",
            path.display()
        );
        let err = load(&path).map(|_| ()).map_err(|e| e[0].to_string());
        assert_eq!(err, Err(daemon_error.clone()));
        let shown: Vec<String> = check(&path)
            .errors
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut all = vec![daemon_error];
        all.extend(expected);
        all.sort();
        assert_eq!(shown, all);
    }

    #[test]
    fn unreadable_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("orchd.toml");
        let err = load(&path).map(|_| ()).map_err(|e| e[0].to_string());
        let expected = format!(
            "{}:1:1: cannot read config file: No such file or directory (os error 2)",
            path.display()
        );
        assert_eq!(err, Err(expected));
        std::fs::write(&path, "\nunits_dir = \"nope\"\n").expect("write");
        let err = load(&path).map(|_| ()).map_err(|e| e[0].to_string());
        let expected = format!(
            "{}:2:13: cannot read units_dir {}: No such file or directory (os error 2)",
            path.display(),
            dir.path().join("nope").display()
        );
        assert_eq!(err, Err(expected));
    }
}
