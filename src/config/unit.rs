//! Typed unit files (`units_dir/NAME.toml`): what to run, how to restart, probe and deploy
//! it. Built by `validate_unit.rs`; read by the manager, supervisors, probers and deploys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

/// One service, validated. Strings documented as templates may hold `{port}` and
/// `{release}`; see [`super::substitute`].
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub name: String,
    pub path: PathBuf,
    pub description: Option<String>,
    /// argv templates; `None` for a monitor-only unit (which then has `health`).
    pub exec: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub release: String,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Values are templates.
    pub env: BTreeMap<String, String>,
    /// Absolute.
    pub env_file: Option<PathBuf>,
    pub requires: Vec<String>,
    pub after: Vec<String>,
    /// `None` means every channel.
    pub alert: Option<Vec<String>>,
    pub restart: RestartConfig,
    pub stop: StopConfig,
    pub health: Option<HealthConfig>,
    pub deploy: Option<DeployConfig>,
}

impl Default for Unit {
    fn default() -> Self {
        Unit {
            name: String::new(),
            path: PathBuf::new(),
            description: None,
            exec: None,
            working_dir: None,
            release: "current".to_string(),
            user: None,
            group: None,
            env: BTreeMap::new(),
            env_file: None,
            requires: Vec::new(),
            after: Vec::new(),
            alert: None,
            restart: RestartConfig::default(),
            stop: StopConfig::default(),
            health: None,
            deploy: None,
        }
    }
}

impl Unit {
    /// Whether changing from `self` to `new` (a reload) needs the process restarted.
    /// Everything does except the description, alert routing, health timing and
    /// `on_unhealthy`, and deploy timing and `keep_releases`.
    pub fn needs_restart(&self, new: &Unit) -> bool {
        self.restart_relevant() != new.restart_relevant()
    }

    /// A unit without `exec`: an external endpoint that is probed, never started.
    pub fn is_monitor_only(&self) -> bool {
        self.exec.is_none()
    }

    /// A copy with every field that can change live reset to a fixed value.
    fn restart_relevant(&self) -> Unit {
        let mut u = self.clone();
        u.description = None;
        u.alert = None;
        if let Some(h) = &mut u.health {
            let check = h.check.clone();
            *h = HealthConfig {
                check,
                ..HealthConfig::default()
            };
        }
        if let Some(d) = &mut u.deploy {
            let default = DeployConfig::default();
            d.timeout = default.timeout;
            d.watch = default.watch;
            d.drain = default.drain;
            d.keep_releases = default.keep_releases;
        }
        u
    }
}

/// `[restart]`: policy and backoff (DESIGN §2).
#[derive(Debug, Clone, PartialEq)]
pub struct RestartConfig {
    pub policy: RestartPolicy,
    pub delay: Duration,
    pub max_delay: Duration,
    /// At least 1.
    pub multiplier: f64,
    /// In `[0, 1]`.
    pub jitter: f64,
    pub reset_after: Duration,
    /// More than `burst` starts within `interval` → `failed`. 0 = no start limit.
    pub burst: u32,
    pub interval: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
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

/// When an exited service is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    #[default]
    OnFailure,
    Always,
}

/// `[stop]`: the signal sent to the process group, and how long until SIGKILL.
#[derive(Debug, Clone, PartialEq)]
pub struct StopConfig {
    pub signal: Signal,
    pub timeout: Duration,
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig {
            signal: Signal::SIGTERM,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[health]`: the probe and its schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub check: HealthCheck,
    pub interval: Duration,
    /// Greater than zero.
    pub timeout: Duration,
    /// Consecutive failures before unhealthy; at least 1.
    pub retries: u32,
    pub start_period: Duration,
    /// Consecutive successes before healthy; at least 1.
    pub success_threshold: u32,
    pub on_unhealthy: OnUnhealthy,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: HealthCheck::Tcp {
                addr: String::new(),
            },
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::ZERO,
            success_threshold: 1,
            on_unhealthy: OnUnhealthy::Restart,
        }
    }
}

/// The probe of a health check. Targets are templates.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheck {
    Http {
        url: String,
        /// `None`: any 2xx.
        expect_status: Option<Vec<u16>>,
        /// A substring the body must contain.
        expect_body: Option<String>,
        headers: BTreeMap<String, String>,
        /// Skip TLS certificate verification.
        insecure: bool,
    },
    Tcp {
        addr: String,
    },
    Exec {
        argv: Vec<String>,
    },
}

/// What happens when a running service turns unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnhealthy {
    #[default]
    Restart,
    Alert,
}

/// `[deploy]`: two slots behind orchd's proxy (DESIGN §4).
#[derive(Debug, Clone, PartialEq)]
pub struct DeployConfig {
    /// The public address; `None` only with `switch = "command"`.
    pub listen: Option<SocketAddr>,
    pub proxy: ProxyMode,
    /// The slots' backend ports: different and non-zero.
    pub ports: [u16; 2],
    pub timeout: Duration,
    pub watch: Duration,
    pub drain: Duration,
    /// At least 1.
    pub keep_releases: u32,
    pub switch: SwitchMode,
    /// argv templates; `Some` exactly when `switch` is [`SwitchMode::Command`].
    pub switch_command: Option<Vec<String>>,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            listen: None,
            proxy: ProxyMode::Http,
            ports: [0, 0],
            timeout: Duration::from_secs(60),
            watch: Duration::from_secs(60),
            drain: Duration::from_secs(30),
            keep_releases: 5,
            switch: SwitchMode::Proxy,
            switch_command: None,
        }
    }
}

/// How orchd's proxy forwards to the active slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    #[default]
    Http,
    Tcp,
}

/// Who moves traffic between slots: orchd's proxy, or a user command (e.g. a load
/// balancer reconfiguration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchMode {
    #[default]
    Proxy,
    Command,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit() -> Unit {
        Unit {
            name: "api".into(),
            exec: Some(vec!["/bin/api".into()]),
            health: Some(HealthConfig::default()),
            deploy: Some(DeployConfig {
                ports: [9000, 9001],
                ..DeployConfig::default()
            }),
            ..Unit::default()
        }
    }

    #[test]
    fn live_changes_do_not_need_a_restart() {
        let old = unit();
        let mut new = old.clone();
        new.description = Some("x".into());
        new.alert = Some(vec![]);
        if let Some(h) = &mut new.health {
            h.interval = Duration::from_secs(1);
            h.retries = 9;
            h.on_unhealthy = OnUnhealthy::Alert;
        }
        if let Some(d) = &mut new.deploy {
            d.watch = Duration::ZERO;
            d.keep_releases = 1;
        }
        assert!(!old.needs_restart(&new));
    }

    #[test]
    fn other_changes_need_a_restart() {
        let old = unit();
        let mut new = old.clone();
        new.env.insert("A".into(), "1".into());
        assert!(old.needs_restart(&new));
        let mut new = old.clone();
        new.deploy = None;
        assert!(old.needs_restart(&new));
        let mut new = old.clone();
        new.health = None;
        assert!(old.needs_restart(&new));
    }
}
