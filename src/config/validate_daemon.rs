//! Validation of `orchd.toml`: its serde mirror (`raw.rs`) into a [`DaemonConfig`],
//! reporting every problem with its position. Called by `load` in `mod.rs`.

use std::collections::BTreeSet;
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
    /// Every alert channel name written, even of a channel with errors, so that units
    /// naming it do not also get "unknown alert channel" from `check`.
    pub channels: BTreeSet<String>,
}

/// Validates the text of `orchd.toml`; `path` is absolute.
pub(crate) fn validate_daemon(path: &Path, text: &str) -> DaemonOutcome {
    let mut r = Report::new(path, text);
    let parsed = lenient::parse::<RawDaemon>(text);
    r.toml_all(&parsed.errors);
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
            channels: BTreeSet::new(),
        };
    };
    let mut v = Validator {
        r,
        base,
        dropped: &parsed.dropped,
        channels: BTreeSet::new(),
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
    let mut errors = v.r.errors;
    errors.sort();
    DaemonOutcome {
        config,
        errors,
        units_dir_ok: !parsed.dropped.contains("units_dir"),
        units_dir_at,
        channels: v.channels,
    }
}

struct Validator<'a> {
    r: Report<'a>,
    base: &'a Path,
    dropped: &'a BTreeSet<String>,
    /// Every channel name written, valid channel or not.
    channels: BTreeSet<String>,
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
        let seen = |r: &mut Report<'_>, names: &mut BTreeSet<String>, name: &Option<S<String>>| {
            let Some(name) = name else {
                return;
            };
            if !names.insert(name.get_ref().clone()) {
                let message = format!(
                    "duplicate channel name `{}`: channel names must be unique across \
                     [[alerts.email]] and [[alerts.webhook]]",
                    name.get_ref()
                );
                r.at(name.span(), message);
            }
        };
        let mut email = Vec::new();
        for (i, e) in raw.email.unwrap_or_default().into_iter().enumerate() {
            seen(&mut self.r, &mut self.channels, &e.get_ref().name);
            email.extend(self.email(i, e));
        }
        let mut webhook = Vec::new();
        for (i, w) in raw.webhook.unwrap_or_default().into_iter().enumerate() {
            seen(&mut self.r, &mut self.channels, &w.get_ref().name);
            webhook.extend(self.webhook(i, w));
        }
        AlertsConfig {
            repeat_interval: duration(
                &mut self.r,
                &raw.repeat_interval,
                default.repeat_interval,
                "alerts.repeat_interval",
                super::bounds::REPEAT_INTERVAL,
            ),
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
        if let Some(to) = raw.to.as_ref().filter(|to| to.get_ref().is_empty()) {
            self.r.at(to.span(), "`to` must list at least one address");
        }
        let to = raw.to.map(S::into_inner);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let out = validate_daemon(Path::new("/etc/orch/orchd.toml"), text);
        out.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn tls_none_is_for_loopback_only() {
        let email = |server: &str| {
            format!(
                "[[alerts.email]]\nname = \"m\"\nserver = \"{server}\"\ntls = \"none\"\n\
                 from = \"a@b\"\nto = [\"c@d\"]\n"
            )
        };
        assert_eq!(
            errors(&email("smtp.example.com")),
            [
                "/etc/orch/orchd.toml:4:7: tls = \"none\" is only allowed to a loopback server \
              (localhost, 127.0.0.0/8, ::1), not \"smtp.example.com\""
            ]
        );
        for server in ["localhost", "127.0.0.2", "::1", "[::1]"] {
            assert_eq!(errors(&email(server)), Vec::<String>::new(), "{server}");
        }
    }

    #[test]
    fn channels_and_grants() {
        let text = "[api]\nbogus = 1\n[[api.grant]]\nuser = \"u\"\ngroup = \"g\"\n\
                    commands = [\"deploy\", \"nuke\"]\nservices = [\"*\"]\n\
                    [[alerts.email]]\nname = \"x\"\nserver = \"s\"\nfrom = \"f\"\nto = []\n\
                    password_file = \"p\"\npassword_env = \"E\"\n\
                    [[alerts.webhook]]\nname = \"x\"\nurl = \"ftp://secret\"\n";
        assert_eq!(
            errors(text),
            [
                "/etc/orch/orchd.toml:2:1: unknown field `bogus`, expected one of `socket`, \
                 `socket_group`, `readonly_groups`, `dbus`, `grant`",
                "/etc/orch/orchd.toml:3:1: a grant has both `user` and `group`: write one \
                 [[api.grant]] for each",
                "/etc/orch/orchd.toml:6:23: unknown command `nuke` in grant; known: status, \
                 logs, events, history, start, stop, restart, reset, deploy, rollback, reload, \
                 alert-test, silence, silences, unsilence",
                "/etc/orch/orchd.toml:12:6: `to` must list at least one address",
                "/etc/orch/orchd.toml:14:16: set either `password_file` or `password_env`, \
                 not both",
                "/etc/orch/orchd.toml:16:8: duplicate channel name `x`: channel names must be \
                 unique across [[alerts.email]] and [[alerts.webhook]]",
                "/etc/orch/orchd.toml:17:7: webhook `url` must be an http:// or https:// URL \
                 with a host",
            ]
        );
    }

    #[test]
    fn required_keys_and_metrics() {
        let text = "[[alerts.webhook]]\nname = \"w\"\n[metrics]\nlisten = \"nowhere\"\n";
        assert_eq!(
            errors(text),
            [
                "/etc/orch/orchd.toml:1:1: [[alerts.webhook]] needs `url`",
                "/etc/orch/orchd.toml:4:10: invalid metrics.listen \"nowhere\": expected \
                 IP:PORT, e.g. \"127.0.0.1:8000\"",
            ]
        );
    }

    #[test]
    fn defaults_and_relative_paths() {
        let out = validate_daemon(Path::new("/etc/orch/orchd.toml"), "");
        assert!(out.errors.is_empty());
        let c = out.config;
        assert_eq!(c.units_dir, Path::new("/etc/orch/units"));
        assert_eq!(c.state_dir, Path::new("/var/lib/orch"));
        assert_eq!(c.api, ApiConfig::default());
        assert_eq!(c.alerts.repeat_interval.as_secs(), 3600);
        assert_eq!(c.metrics, None);
        let text = "units_dir = \"u\"\nstate_dir = \"../s\"\n[api]\nsocket = \"x.sock\"\n\
                    socket_group = \"\"\n";
        let c = validate_daemon(Path::new("/etc/orch/orchd.toml"), text).config;
        assert_eq!(c.units_dir, Path::new("/etc/orch/u"));
        assert_eq!(c.state_dir, Path::new("/etc/orch/../s"));
        assert_eq!(c.api.socket, Path::new("/etc/orch/x.sock"));
        assert_eq!(c.api.socket_group, None);
    }
}
