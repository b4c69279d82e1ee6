//! TEMPORARY stub of the config types (replaced by the real module from the `config` branch).
#![allow(missing_docs)]
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}
impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub units: BTreeMap<String, UnitEntry>,
}
#[derive(Debug, Clone, PartialEq)]
pub enum UnitEntry {
    Ok(Arc<Unit>),
    Bad {
        path: PathBuf,
        errors: Vec<Diagnostic>,
    },
}
pub fn load(_config_path: &Path) -> Result<Config, Vec<Diagnostic>> {
    Err(vec![])
}
impl Config {
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        vec![]
    }
}
pub fn check(_p: &Path) -> Vec<Diagnostic> {
    vec![]
}
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub path: PathBuf,
    pub units_dir: PathBuf,
    pub state_dir: PathBuf,
    pub api: ApiConfig,
    pub alerts: AlertsConfig,
    pub metrics: Option<MetricsConfig>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub readonly_groups: Vec<String>,
    pub dbus: DbusMode,
    pub grants: Vec<Grant>,
}
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DbusMode {
    System,
    Session,
    Off,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub principal: Principal,
    pub commands: Vec<String>,
    pub services: Vec<String>,
}
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    User(String),
    Group(String),
}
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AlertsConfig {
    pub repeat_interval: Duration,
}
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub name: String,
    pub path: PathBuf,
    pub description: Option<String>,
    pub exec: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub release: String,
    pub user: Option<String>,
    pub group: Option<String>,
    pub env: BTreeMap<String, String>,
    pub env_file: Option<PathBuf>,
    pub requires: Vec<String>,
    pub after: Vec<String>,
    pub alert: Option<Vec<String>>,
    pub restart: RestartConfig,
    pub stop: StopConfig,
    pub health: Option<HealthConfig>,
    pub deploy: Option<DeployConfig>,
}
impl Unit {
    pub fn needs_restart(&self, new: &Unit) -> bool {
        self != new
    }
    pub fn is_monitor_only(&self) -> bool {
        self.exec.is_none()
    }
}
#[derive(Debug, Clone, PartialEq)]
pub struct RestartConfig {
    pub policy: RestartPolicy,
    pub delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    pub jitter: f64,
    pub reset_after: Duration,
    pub burst: u32,
    pub interval: Duration,
}
impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::OnFailure,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.1,
            reset_after: Duration::from_secs(60),
            burst: 0,
            interval: Duration::from_secs(60),
        }
    }
}
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RestartPolicy {
    No,
    OnFailure,
    Always,
}
#[derive(Debug, Clone, PartialEq)]
pub struct StopConfig {
    pub signal: nix::sys::signal::Signal,
    pub timeout: Duration,
}
impl Default for StopConfig {
    fn default() -> Self {
        Self {
            signal: nix::sys::signal::Signal::SIGTERM,
            timeout: Duration::from_secs(10),
        }
    }
}
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub interval: Duration,
}
#[derive(Debug, Clone, PartialEq)]
pub struct DeployConfig {
    pub listen: Option<SocketAddr>,
    pub ports: [u16; 2],
}
pub fn substitute(template: &str, port: Option<u16>, release: &str) -> String {
    let mut s = template.replace("{release}", release);
    if let Some(p) = port {
        s = s.replace("{port}", &p.to_string());
    }
    s
}
