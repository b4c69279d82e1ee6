//! The serde mirror of `orchd.toml` and unit files: the exact key names (a contract, see
//! DESIGN §3), `deny_unknown_fields` everywhere, and `Spanned` on every value that
//! validation checks so its errors point at the value. Every field is optional so that
//! `lenient.rs` can probe keys one at a time; required keys are enforced in validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::daemon::{DbusMode, TlsMode, WebhookFormat};
use super::unit::{OnUnhealthy, ProxyMode, RestartPolicy, SwitchMode};

pub(crate) type S<T> = Spanned<T>;
/// A humantime duration string such as `"1m30s"`.
pub(crate) type RawDuration = Option<S<String>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    pub units_dir: Option<S<String>>,
    pub state_dir: Option<S<String>>,
    pub api: Option<RawApi>,
    pub alerts: Option<RawAlerts>,
    pub metrics: Option<S<RawMetrics>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub socket: Option<S<String>>,
    pub socket_group: Option<String>,
    pub readonly_groups: Option<Vec<String>>,
    pub dbus: Option<DbusMode>,
    pub grant: Option<Vec<S<RawGrant>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGrant {
    pub user: Option<String>,
    pub group: Option<String>,
    pub commands: Option<Vec<S<String>>>,
    pub services: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlerts {
    pub repeat_interval: RawDuration,
    pub email: Option<Vec<S<RawEmail>>>,
    pub webhook: Option<Vec<S<RawWebhook>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEmail {
    pub name: Option<S<String>>,
    pub server: Option<S<String>>,
    pub port: Option<u16>,
    pub tls: Option<S<TlsMode>>,
    pub username: Option<String>,
    pub password_file: Option<S<String>>,
    pub password_env: Option<S<String>>,
    pub from: Option<String>,
    pub to: Option<S<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub name: Option<S<String>>,
    pub url: Option<S<String>>,
    pub format: Option<WebhookFormat>,
    pub secret_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub listen: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUnit {
    pub description: Option<String>,
    pub exec: Option<S<Vec<S<String>>>>,
    pub working_dir: Option<S<String>>,
    pub release: Option<S<String>>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub env: Option<BTreeMap<String, S<String>>>,
    pub env_file: Option<String>,
    pub requires: Option<Vec<S<String>>>,
    pub after: Option<Vec<S<String>>>,
    pub alert: Option<Vec<S<String>>>,
    pub restart: Option<RawRestart>,
    pub stop: Option<RawStop>,
    pub health: Option<S<RawHealth>>,
    pub deploy: Option<S<RawDeploy>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRestart {
    pub policy: Option<RestartPolicy>,
    pub delay: RawDuration,
    pub max_delay: RawDuration,
    pub multiplier: Option<S<f64>>,
    pub jitter: Option<S<f64>>,
    pub reset_after: RawDuration,
    pub burst: Option<S<u32>>,
    pub interval: RawDuration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStop {
    pub signal: Option<S<String>>,
    pub timeout: RawDuration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub http: Option<S<String>>,
    pub tcp: Option<S<String>>,
    pub exec: Option<S<Vec<S<String>>>>,
    pub expect_status: Option<S<StatusList>>,
    pub expect_body: Option<S<String>>,
    pub headers: Option<S<BTreeMap<String, String>>>,
    pub insecure: Option<S<bool>>,
    pub interval: RawDuration,
    pub timeout: RawDuration,
    pub retries: Option<S<u32>>,
    pub start_period: RawDuration,
    pub success_threshold: Option<S<u32>>,
    pub on_unhealthy: Option<OnUnhealthy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeploy {
    pub listen: Option<S<String>>,
    pub proxy: Option<ProxyMode>,
    pub ports: Option<S<Vec<S<u16>>>>,
    pub timeout: RawDuration,
    pub watch: RawDuration,
    pub drain: RawDuration,
    pub keep_releases: Option<S<u32>>,
    pub switch: Option<S<SwitchMode>>,
    pub switch_command: Option<S<Vec<S<String>>>>,
}

/// `expect_status = 200` or `expect_status = [200, 204]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusList(pub Vec<u16>);

impl<'de> Deserialize<'de> for StatusList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = StatusList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an HTTP status code or an array of them")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusList, E> {
                u16::try_from(v).map(|s| StatusList(vec![s])).map_err(|_| {
                    E::invalid_value(serde::de::Unexpected::Signed(v), &"an HTTP status code")
                })
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusList, E> {
                u16::try_from(v).map(|s| StatusList(vec![s])).map_err(|_| {
                    E::invalid_value(serde::de::Unexpected::Unsigned(v), &"an HTTP status code")
                })
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StatusList, A::Error> {
                let mut codes = Vec::new();
                while let Some(code) = seq.next_element::<u16>()? {
                    codes.push(code);
                }
                Ok(StatusList(codes))
            }
        }
        d.deserialize_any(Visitor)
    }
}
