//! Building a process's argv, working directory and environment from its unit.
//!
//! Pure apart from reading the unit's `env_file` (re-read at every start, like systemd does) and
//! looking up its `user`; [`build_blocking`] does those off the async workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Unit, substitute};

use crate::process::SpawnSpec;

/// Variables of orchd's own environment that must not leak into services.
const SCRUBBED: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
    "INVOCATION_ID",
    "ORCH_INSTANCE",
    "ORCH_RELEASE",
    "ORCH_SERVICE",
    "PORT",
];

/// orchd's own environment as services inherit it: without the variables orchd itself uses
/// ([`SCRUBBED`]) and without those named by `password_env` (they hold secrets), now or by any
/// configuration since orchd started. Read once at start; every spawn copies the snapshot.
#[derive(Clone, Debug)]
pub struct ServiceEnv {
    vars: Arc<watch::Sender<EnvVars>>,
}

/// A shared list of environment variables.
pub type EnvVars = Arc<[(String, String)]>;

impl ServiceEnv {
    /// orchd's environment now, less `secrets` (variable names) and [`SCRUBBED`].
    pub fn new(secrets: &[String]) -> ServiceEnv {
        ServiceEnv {
            vars: Arc::new(watch::Sender::new(Self::read(secrets))),
        }
    }

    /// Also keep out `secrets` (a reload may name others). A variable kept out once stays out:
    /// a channel removed or renamed by a reload leaves its (perhaps still valid) password in
    /// orchd's environment.
    pub fn update(&self, secrets: &[String]) {
        let vars: EnvVars = self
            .vars()
            .iter()
            .filter(|(k, _)| !secrets.contains(k))
            .cloned()
            .collect();
        self.vars.send_replace(vars);
    }

    fn read(secrets: &[String]) -> EnvVars {
        std::env::vars()
            .filter(|(k, _)| !SCRUBBED.contains(&k.as_str()) && !secrets.contains(k))
            .collect()
    }

    /// The variables, as of the last read.
    pub fn vars(&self) -> EnvVars {
        self.vars.borrow().clone()
    }
}

/// Errors building a spawn spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading env_file {path}: {source}")]
    EnvFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected KEY=VALUE in env_file")]
    EnvLine { path: PathBuf, line: usize },
    #[error("unknown user `{0}`: create it or fix `user` in the unit")]
    UnknownUser(String),
    #[error("looking up `{name}`: {source}")]
    UserLookup { name: String, source: nix::Error },
    #[error("building the process's environment failed: {0}")]
    Panicked(String),
    #[error("unit has no exec (monitor-only)")]
    NoExec,
}

/// Which instance to start: its port (for `{port}`/`PORT`), release and identity marker.
#[derive(Debug, Clone)]
pub struct InstanceParams {
    pub port: Option<u16>,
    pub release: String,
    /// `ORCH_INSTANCE` value; lets orchd find the instance's processes without a cgroup.
    pub marker: String,
    pub cgroup: Option<PathBuf>,
    /// orchd's environment, as services inherit it.
    pub env: EnvVars,
}

/// The spawn spec running `exec` (the unit's own when `None`) in `unit`'s environment:
/// [`build_argv`], where reading `env_file` or looking up `user` (NSS: perhaps LDAP) may block:
/// on a blocking thread then, inline otherwise.
pub async fn build_blocking(
    unit: &Arc<Unit>,
    exec: Option<&[String]>,
    p: InstanceParams,
) -> Result<SpawnSpec, SpecError> {
    let exec = exec.or(unit.exec.as_deref()).ok_or(SpecError::NoExec)?;
    if unit.user.is_none() && unit.env_file.is_none() {
        return build_argv(unit, exec, &p);
    }
    let (unit, exec) = (unit.clone(), exec.to_vec());
    tokio::task::spawn_blocking(move || build_argv(&unit, &exec, &p))
        .await
        .unwrap_or_else(|e| Err(SpecError::Panicked(e.to_string())))
}

/// A spawn spec running `exec` (templates) in `unit`'s environment: the service's own command,
/// or an exec health probe.
pub fn build_argv(
    unit: &Unit,
    exec: &[String],
    p: &InstanceParams,
) -> Result<SpawnSpec, SpecError> {
    let argv = exec
        .iter()
        .map(|a| substitute(a, p.port, &p.release))
        .collect();
    let base = unit.path.parent().unwrap_or(Path::new("/"));
    let cwd = unit
        .working_dir
        .as_ref()
        .map(|w| base.join(substitute(w, p.port, &p.release)));
    let mut env: Vec<(String, String)> = p.env.to_vec();
    if let Some(name) = &unit.user {
        // The spawn looks the user up again for its ids; a failed lookup here must not start
        // the process with orchd's HOME and USER.
        let user = nix::unistd::User::from_name(name)
            .map_err(|source| SpecError::UserLookup {
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| SpecError::UnknownUser(name.clone()))?;
        set(&mut env, "HOME", user.dir.display().to_string());
        set(&mut env, "USER", user.name.clone());
        set(&mut env, "LOGNAME", user.name.clone());
        set(&mut env, "SHELL", user.shell.display().to_string());
    }
    if let Some(file) = &unit.env_file {
        let path = base.join(file);
        for (k, v) in read_env_file(&path)? {
            set(&mut env, &k, v);
        }
    }
    for (k, v) in &unit.env {
        set(&mut env, k, substitute(v, p.port, &p.release));
    }
    if let Some(port) = p.port {
        set(&mut env, "PORT", port.to_string());
    }
    set(&mut env, "ORCH_RELEASE", p.release.clone());
    set(&mut env, "ORCH_SERVICE", unit.name.clone());
    set(&mut env, "ORCH_INSTANCE", p.marker.clone());
    Ok(SpawnSpec {
        argv,
        cwd,
        env,
        user: unit.user.clone(),
        group: unit.group.clone(),
        cgroup: p.cgroup.clone(),
        capture_output: true,
    })
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key.to_owned(), value)),
    }
}

/// Largest `env_file` read.
pub const MAX_ENV_FILE: u64 = 1024 * 1024;

/// Parse a systemd-style environment file: `KEY=VALUE` lines, `#` comments, optional `export `
/// and matching single or double quotes around the value.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, SpecError> {
    let text = crate::state::read_bounded_string(path, MAX_ENV_FILE).map_err(|source| {
        SpecError::EnvFile {
            path: path.to_owned(),
            source,
        }
    })?;
    parse_env(&text).map_err(|line| SpecError::EnvLine {
        path: path.to_owned(),
        line,
    })
}

fn parse_env(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line.split_once('=').ok_or(i + 1)?;
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(i + 1);
        }
        let v = v.trim();
        let v = match (v.chars().next(), v.chars().last()) {
            (Some(q @ ('"' | '\'')), Some(e)) if q == e && v.len() >= 2 => &v[1..v.len() - 1],
            _ => v,
        };
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_forms() {
        let text = "# comment\nA=1\nexport B=\"two words\"\nC='x=y'\n\nD=\n";
        let got = parse_env(text).unwrap();
        let want = [("A", "1"), ("B", "two words"), ("C", "x=y"), ("D", "")];
        assert_eq!(got, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn env_file_bad_line_is_reported_with_its_number() {
        assert_eq!(parse_env("A=1\njunk\n"), Err(2));
        assert_eq!(parse_env("BAD-KEY=1\n"), Err(1));
    }
}
