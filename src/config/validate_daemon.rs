//! Validation of `orchd.toml`: its serde mirror (`raw.rs`) into a [`DaemonConfig`],
//! reporting every problem with its position. Called by `load` in `mod.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::daemon::{
    AlertsConfig, ApiConfig, DaemonConfig, EmailChannel, GRANT_COMMANDS, Grant, MetricsConfig,
    Principal, Secret, SecretSource, TlsMode, WebhookChannel,
};
use super::diag::{Diagnostic, Pos, Report};
use super::lenient;
use super::raw::{RawAlerts, RawApi, RawDaemon, RawEmail, RawGrant, RawWebhook, S};
use super::values::{duration, resolve, socket_addr};

/// A validated (possibly partially) `orchd.toml`.
pub(crate) struct DaemonOutcome {
    pub config: DaemonConfig,
    pub errors: Vec<Diagnostic>,
    /// Whether `units_dir` can be trusted enough to go on and check the units.
    pub units_dir_ok: bool,
    /// Where `units_dir` was set, for errors about reading it.
    pub units_dir_at: Pos,
}

/// Validates the text of `orchd.toml`; `path` is absolute.
pub(crate) fn validate_daemon(path: &Path, text: &str) -> DaemonOutcome {
    let mut r = Report::new(path, text);
    let parsed = lenient::parse::<RawDaemon>(text);
    for e in &parsed.errors {
        r.toml(e);
    }
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut config = DaemonConfig {
        path: path.to_path_buf(),
        units_dir: base.join("units"),
        ..DaemonConfig::default()
    };
    let Some(raw) = parsed.value else {
        return DaemonOutcome {
            config,
            errors: r.errors,
            units_dir_ok: false,
            units_dir_at: Pos::start_of(path),
        };
    };
    let mut v = Validator {
        r,
        base,
        dropped: &parsed.dropped,
    };
    let mut units_dir_at = Pos::start_of(path);
    if let Some(dir) = &raw.units_dir {
        config.units_dir = resolve(base, dir.get_ref());
        units_dir_at = v.r.pos(dir.span());
    }
    if let Some(dir) = &raw.state_dir {
        config.state_dir = resolve(base, dir.get_ref());
    }
    config.api = v.api(raw.api.unwrap_or_default());
    config.alerts = v.alerts(raw.alerts.unwrap_or_default());
    config.metrics = raw.metrics.and_then(|m| {
        let span = m.span();
        match m.into_inner().listen {
            Some(listen) => socket_addr(&mut v.r, &listen, "metrics.listen")
                .map(|listen| MetricsConfig { listen }),
            None => {
                v.required("metrics.listen", span, "[metrics] needs `listen`");
                None
            }
        }
    });
    DaemonOutcome {
        config,
        errors: v.r.errors,
        units_dir_ok: !parsed.dropped.contains("units_dir"),
        units_dir_at,
    }
}

struct Validator<'a> {
    r: Report<'a>,
    base: &'a Path,
    dropped: &'a BTreeSet<String>,
}

impl Validator<'_> {
    /// Reports a missing required key, unless it was there but already reported as bad.
    fn required(&mut self, key: &str, span: std::ops::Range<usize>, message: &str) {
        if !self.dropped.contains(key) {
            self.r.at(span, message);
        }
    }

    fn api(&mut self, raw: RawApi) -> ApiConfig {
        let default = ApiConfig::default();
        ApiConfig {
            socket: raw
                .socket
                .map_or(default.socket, |s| resolve(self.base, s.get_ref())),
            socket_group: match raw.socket_group {
                Some(g) if g.is_empty() => None,
                Some(g) => Some(g),
                None => default.socket_group,
            },
            readonly_groups: raw.readonly_groups.unwrap_or_default(),
            dbus: raw.dbus.unwrap_or_default(),
            grants: raw
                .grant
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .filter_map(|(i, g)| self.grant(i, g))
                .collect(),
        }
    }

    fn grant(&mut self, i: usize, raw: S<RawGrant>) -> Option<Grant> {
        let span = raw.span();
        let raw = raw.into_inner();
        let principal = match (raw.user, raw.group) {
            (Some(u), None) => Some(Principal::User(u)),
            (None, Some(g)) => Some(Principal::Group(g)),
            (Some(_), Some(_)) => {
                self.r.at(
                    span.clone(),
                    "a grant has both `user` and `group`: write one [[api.grant]] for each",
                );
                None
            }
            (None, None) => {
                let (u, g) = (
                    format!("api.grant.{i}.user"),
                    format!("api.grant.{i}.group"),
                );
                if !self.dropped.contains(&u) && !self.dropped.contains(&g) {
                    self.r.at(span.clone(), "a grant needs `user` or `group`");
                }
                None
            }
        };
        let mut commands = Vec::new();
        for c in raw.commands.iter().flatten() {
            if GRANT_COMMANDS.contains(&c.get_ref().as_str()) {
                commands.push(c.get_ref().clone());
            } else {
                let known = GRANT_COMMANDS.join(", ");
                let message = format!("unknown command `{}` in grant; known: {known}", c.get_ref());
                self.r.at(c.span(), message);
            }
        }
        if raw.commands.is_none() {
            let message = "a grant needs `commands`";
            self.required(&format!("api.grant.{i}.commands"), span.clone(), message);
        }
        if raw.services.is_none() {
            let message = "a grant needs `services` (service names, or \"*\" for all)";
            self.required(&format!("api.grant.{i}.services"), span, message);
        }
        Some(Grant {
            principal: principal?,
            commands,
            services: raw.services.unwrap_or_default(),
        })
    }

    fn alerts(&mut self, raw: RawAlerts) -> AlertsConfig {
        let default = AlertsConfig::default();
        let mut names: BTreeMap<String, ()> = BTreeMap::new();
        let mut seen = |r: &mut Report<'_>, name: &Option<S<String>>| {
            if let Some(name) = name {
                if names.insert(name.get_ref().clone(), ()).is_some() {
                    r.at(
                        name.span(),
                        format!(
                            "duplicate channel name `{}`: channel names must be unique across \
                             [[alerts.email]] and [[alerts.webhook]]",
                            name.get_ref()
                        ),
                    );
                }
            }
        };
        let mut email = Vec::new();
        for (i, e) in raw.email.unwrap_or_default().into_iter().enumerate() {
            seen(&mut self.r, &e.get_ref().name);
            email.extend(self.email(i, e));
        }
        let mut webhook = Vec::new();
        for (i, w) in raw.webhook.unwrap_or_default().into_iter().enumerate() {
            seen(&mut self.r, &w.get_ref().name);
            webhook.extend(self.webhook(i, w));
        }
        AlertsConfig {
            repeat_interval: duration(&mut self.r, &raw.repeat_interval, default.repeat_interval),
            email,
            webhook,
        }
    }

    /// A required string key of a channel table.
    fn channel_key<T>(
        &mut self,
        value: Option<T>,
        path: String,
        span: &std::ops::Range<usize>,
        table: &str,
        key: &str,
    ) -> Option<T> {
        if value.is_none() {
            self.required(&path, span.clone(), &format!("{table} needs `{key}`"));
        }
        value
    }

    fn email(&mut self, i: usize, raw: S<RawEmail>) -> Option<EmailChannel> {
        let span = raw.span();
        let raw = raw.into_inner();
        let key = |k: &str| format!("alerts.email.{i}.{k}");
        let t = "[[alerts.email]]";
        let name = raw.name.map(S::into_inner);
        let name = self.channel_key(name, key("name"), &span, t, "name");
        let server = raw.server.as_ref().map(|s| s.get_ref().clone());
        let server = self.channel_key(server, key("server"), &span, t, "server");
        let from = self.channel_key(raw.from, key("from"), &span, t, "from");
        let to = match raw.to {
            Some(to) if to.get_ref().is_empty() => {
                self.r.at(to.span(), "`to` must list at least one address");
                None
            }
            to => to.map(S::into_inner),
        };
        let to = self.channel_key(to, key("to"), &span, t, "to");
        let tls = raw
            .tls
            .as_ref()
            .map_or(TlsMode::default(), |t| *t.get_ref());
        if let (Some(t), Some(server)) = (&raw.tls, &server) {
            if *t.get_ref() == TlsMode::None && !is_loopback(server) {
                let message = format!(
                    "tls = \"none\" is only allowed to a loopback server \
                     (localhost, 127.0.0.0/8, ::1), not {server:?}"
                );
                self.r.at(t.span(), message);
            }
        }
        let password = match (raw.password_file, raw.password_env) {
            (Some(_), Some(env)) => {
                let message = "set either `password_file` or `password_env`, not both";
                self.r.at(env.span(), message);
                None
            }
            (Some(f), None) => Some(SecretSource::File(resolve(self.base, f.get_ref()))),
            (None, Some(env)) => Some(SecretSource::Env(env.into_inner())),
            (None, None) => None,
        };
        Some(EmailChannel {
            name: name?,
            server: server?,
            port: raw.port.unwrap_or(587),
            tls,
            username: raw.username,
            password,
            from: from?,
            to: to?,
        })
    }

    fn webhook(&mut self, i: usize, raw: S<RawWebhook>) -> Option<WebhookChannel> {
        let span = raw.span();
        let raw = raw.into_inner();
        let t = "[[alerts.webhook]]";
        let name = raw.name.map(S::into_inner);
        let name = self.channel_key(name, format!("alerts.webhook.{i}.name"), &span, t, "name");
        let url = match raw.url {
            Some(url) if !is_http_url(url.get_ref()) => {
                // Never echo the URL: it is a secret.
                let message = "webhook `url` must be an http:// or https:// URL with a host";
                self.r.at(url.span(), message);
                None
            }
            Some(url) => Some(Secret::new(url.into_inner())),
            None => {
                let message = format!("{t} needs `url`");
                self.required(&format!("alerts.webhook.{i}.url"), span, &message);
                None
            }
        };
        Some(WebhookChannel {
            name: name?,
            url: url?,
            format: raw.format.unwrap_or_default(),
            secret_file: raw
                .secret_file
                .map(|f| -> PathBuf { resolve(self.base, &f) }),
        })
    }
}

fn is_loopback(server: &str) -> bool {
    let host = server.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| !r.starts_with(['/', '?', '#']) && !r.is_empty())
}
