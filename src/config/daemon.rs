//! Typed `orchd.toml`: the API socket and its access rules, alert channels, metrics.
//! Built by `validate_daemon.rs`; read by the daemon's api, alert and metrics tasks.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The daemon's own settings (`orchd.toml`). All paths are absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Absolute path of `orchd.toml`.
    pub path: PathBuf,
    pub units_dir: PathBuf,
    pub state_dir: PathBuf,
    pub api: ApiConfig,
    pub alerts: AlertsConfig,
    pub metrics: Option<MetricsConfig>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            path: PathBuf::from("/etc/orch/orchd.toml"),
            units_dir: PathBuf::from("/etc/orch/units"),
            state_dir: PathBuf::from("/var/lib/orch"),
            api: ApiConfig::default(),
            alerts: AlertsConfig::default(),
            metrics: None,
        }
    }
}

/// `[api]`: who may talk to orchd, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub socket: PathBuf,
    /// `None` when set to `""`: only root and orchd's own user have full rights.
    pub socket_group: Option<String>,
    pub readonly_groups: Vec<String>,
    pub dbus: DbusMode,
    pub grants: Vec<Grant>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            socket: PathBuf::from("/run/orch/orchd.sock"),
            socket_group: Some("orch".to_string()),
            readonly_groups: Vec::new(),
            dbus: DbusMode::System,
            grants: Vec::new(),
        }
    }
}

/// Which D-Bus bus orchd serves its API on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbusMode {
    #[default]
    System,
    Session,
    Off,
}

/// `[[api.grant]]`: narrower rights for one user or group.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub principal: Principal,
    /// Validated against [`GRANT_COMMANDS`].
    pub commands: Vec<String>,
    /// Service names; `"*"` means all.
    pub services: Vec<String>,
}

/// Who a [`Grant`] is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User(String),
    Group(String),
}

/// The API commands a grant may name.
pub const GRANT_COMMANDS: &[&str] = &[
    "status",
    "logs",
    "events",
    "history",
    "start",
    "stop",
    "restart",
    "reset",
    "deploy",
    "rollback",
    "reload",
    "alert-test",
    "silence",
    "silences",
    "unsilence",
];

/// `[alerts]`: channels and the repeat policy.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    pub repeat_interval: Duration,
    pub email: Vec<EmailChannel>,
    pub webhook: Vec<WebhookChannel>,
}

impl DaemonConfig {
    /// The environment variables that hold secrets (`password_env`): kept from services.
    pub fn secret_env_names(&self) -> Vec<String> {
        self.alerts
            .email
            .iter()
            .filter_map(|e| match &e.password {
                Some(SecretSource::Env(name)) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            repeat_interval: Duration::from_secs(3600),
            email: Vec::new(),
            webhook: Vec::new(),
        }
    }
}

impl AlertsConfig {
    /// Names of all channels, email then webhook, in file order.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        let email = self.email.iter().map(|c| c.name.as_str());
        email.chain(self.webhook.iter().map(|c| c.name.as_str()))
    }
}

/// `[[alerts.email]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailChannel {
    pub name: String,
    pub server: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    pub from: String,
    pub to: Vec<String>,
}

/// How the SMTP connection is secured. `None` is accepted for loopback servers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Starttls,
    Tls,
    None,
}

/// Where a password is read from at send time; the value itself is never in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `password_file`: absolute path.
    File(PathBuf),
    /// `password_env`: an environment variable of orchd.
    Env(String),
}

/// `[[alerts.webhook]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookChannel {
    pub name: String,
    pub url: Secret,
    pub format: WebhookFormat,
    pub secret_file: Option<PathBuf>,
}

/// The body shape a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
    Discord,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// A URL whose path and query are a credential (webhook tokens live there). `Debug` and
/// `Display` show only `scheme://host[:port]/…`; [`Secret::expose`] gives the full text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(url: impl Into<String>) -> Self {
        Secret(url.into())
    }

    /// The full URL, for the one place that sends to it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn redacted(&self) -> String {
        let (scheme, rest) = match self.0.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => return "…".to_string(),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        // Credentials in the authority (`user:pass@host`) are secret too.
        let authority = &rest[..end];
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        format!("{scheme}://{host}/…")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_shows_only_scheme_and_host() {
        let s = Secret::new("https://hooks.slack.com:8443/services/T0/B0/xyz?token=1");
        assert_eq!(s.to_string(), "https://hooks.slack.com:8443/…");
        assert_eq!(
            format!("{s:?}"),
            "Secret(\"https://hooks.slack.com:8443/…\")"
        );
        assert_eq!(
            s.expose(),
            "https://hooks.slack.com:8443/services/T0/B0/xyz?token=1"
        );
        assert_eq!(Secret::new("http://u:p@h/x").to_string(), "http://h/…");
        assert_eq!(Secret::new("garbage").to_string(), "…");
    }
}
