//! Validation of one unit file: its serde mirror (`raw.rs`) into a [`Unit`], reporting
//! every problem with its position, plus what the cross-unit checks (`graph.rs`) need.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;

use super::diag::{Diagnostic, Pos, Report};
use super::health::health;
use super::lenient;
use super::raw::{RawDeploy, RawRestart, RawStop, RawUnit, S};
use super::template;
use super::unit::{DeployConfig, RestartConfig, StopConfig, SwitchMode, Unit};
use super::values::{duration, resolve, signal, socket_addr};

/// What a unit file may refer to outside itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct UnitCtx {
    /// Alert channel names defined in `orchd.toml`.
    pub channels: BTreeSet<String>,
}

/// A validated unit file. `unit` is `None` only when the file is not TOML at all.
pub(crate) struct UnitOutcome {
    pub unit: Option<Unit>,
    pub errors: Vec<Diagnostic>,
    pub links: Links,
}

/// Where the values that cross-unit checks look at were written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Links {
    /// `requires` then `after` entries.
    pub deps: Vec<(String, Pos)>,
    pub ports: Vec<(u16, Pos)>,
    pub listen: Option<(SocketAddr, Pos)>,
}

/// Validates the unit `name` from the text of its file at `path`.
pub(crate) fn validate_unit(name: &str, path: &Path, text: &str, ctx: &UnitCtx) -> UnitOutcome {
    let mut r = Report::new(path, text);
    if !super::names::valid_service_name(name) {
        r.whole(format!(
            "invalid unit name `{name}`: names may only contain A-Z, a-z, 0-9, `_`, `.`, `@` and `-`, \
             are at most 128 bytes, and are not `.` or `..`"
        ));
    }
    let parsed = lenient::parse::<RawUnit>(text);
    r.toml_all(&parsed.errors);
    let Some(raw) = parsed.value else {
        return UnitOutcome {
            unit: None,
            errors: r.errors,
            links: Links::default(),
        };
    };
    let mut v = UnitValidator {
        r,
        dropped: &parsed.dropped,
        links: Links::default(),
        has_port: raw.deploy.is_some() || parsed.dropped.contains("deploy"),
    };
    let unit = v.unit(name, path, raw, ctx);
    UnitOutcome {
        unit: Some(unit),
        errors: v.r.errors,
        links: v.links,
    }
}

pub(crate) struct UnitValidator<'a> {
    pub r: Report<'a>,
    pub dropped: &'a BTreeSet<String>,
    links: Links,
    /// Whether `{port}` has slot ports to stand for.
    has_port: bool,
}

impl UnitValidator<'_> {
    /// Checks the placeholders of a template string.
    pub fn template(&mut self, t: &S<String>) -> String {
        for e in template::check(t.get_ref(), self.has_port) {
            self.r.at(t.span(), e);
        }
        t.get_ref().clone()
    }

    /// A non-empty argv of templates.
    pub fn argv(&mut self, argv: S<Vec<S<String>>>, key: &str) -> Vec<String> {
        if argv.get_ref().is_empty() {
            let mut message = format!("`{key}` must not be empty");
            if key == "exec" {
                message.push_str(" (omit it for a monitor-only unit with [health])");
            }
            self.r.at(argv.span(), message);
        }
        argv.get_ref().iter().map(|a| self.template(a)).collect()
    }

    /// Reports a missing required key, unless it was there but already reported as bad.
    pub fn required(&mut self, key: &str, span: Range<usize>, message: &str) {
        if !self.dropped.contains(key) {
            self.r.at(span, message);
        }
    }

    fn unit(&mut self, name: &str, path: &Path, raw: RawUnit, ctx: &UnitCtx) -> Unit {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let exec = raw.exec.map(|e| self.argv(e, "exec"));
        let health = raw.health.map(|h| health(self, h));
        let monitor_unchecked = self.dropped.contains("exec") || self.dropped.contains("health");
        if exec.is_none() && health.is_none() && !monitor_unchecked {
            self.r
                .whole("a unit without `exec` is monitor-only and needs a [health] section");
        }
        let deps = |list: Option<Vec<S<String>>>, r: &Report<'_>, links: &mut Links| {
            let list = list.unwrap_or_default();
            for d in &list {
                links.deps.push((d.get_ref().clone(), r.pos(d.span())));
            }
            list.into_iter().map(S::into_inner).collect()
        };
        let requires = deps(raw.requires, &self.r, &mut self.links);
        let after = deps(raw.after, &self.r, &mut self.links);
        Unit {
            name: name.to_string(),
            path: path.to_path_buf(),
            description: raw.description,
            exec,
            working_dir: raw.working_dir.map(|w| self.template(&w)),
            release: self.release(raw.release),
            user: raw.user,
            group: raw.group,
            env: raw
                .env
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, self.template(&v)))
                .collect(),
            env_file: raw.env_file.map(|f| resolve(dir, &f)),
            requires,
            after,
            alert: raw.alert.map(|a| self.alert(a, ctx)),
            restart: self.restart(raw.restart.unwrap_or_default()),
            stop: self.stop(raw.stop.unwrap_or_default()),
            health,
            deploy: raw.deploy.map(|d| self.deploy(d)),
        }
    }

    fn release(&mut self, raw: Option<S<String>>) -> String {
        let Some(release) = raw else {
            return "current".to_string();
        };
        if let Err(e) = super::names::check_release(release.get_ref()) {
            self.r.at(release.span(), e.to_string());
        }
        release.into_inner()
    }

    fn alert(&mut self, raw: Vec<S<String>>, ctx: &UnitCtx) -> Vec<String> {
        for name in &raw {
            if !ctx.channels.contains(name.get_ref()) {
                let known: Vec<&str> = ctx.channels.iter().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "none are defined in orchd.toml".to_string()
                } else {
                    format!("known: {}", known.join(", "))
                };
                let message = format!("unknown alert channel `{}`; {known}", name.get_ref());
                self.r.at(name.span(), message);
            }
        }
        raw.into_iter().map(S::into_inner).collect()
    }

    fn restart(&mut self, raw: RawRestart) -> RestartConfig {
        let d = RestartConfig::default();
        let r = &mut self.r;
        let delay = duration(
            r,
            &raw.delay,
            d.delay,
            "restart.delay",
            super::bounds::RESTART_DELAY,
        );
        let max_delay = duration(
            r,
            &raw.max_delay,
            d.max_delay,
            "restart.max_delay",
            super::bounds::RESTART_MAX_DELAY,
        );
        if let Some(m) = &raw.max_delay {
            if max_delay < delay {
                let message = format!(
                    "restart.max_delay ({}) must not be less than restart.delay ({})",
                    humantime::format_duration(max_delay),
                    humantime::format_duration(delay)
                );
                r.at(m.span(), message);
            }
        }
        let multiplier = raw.multiplier.map_or(d.multiplier, |m| {
            let value = *m.get_ref();
            if !(1.0..=super::bounds::MULTIPLIER).contains(&value) {
                r.at(
                    m.span(),
                    format!(
                        "restart.multiplier must be between 1 and {}, got {value:?}",
                        super::bounds::MULTIPLIER
                    ),
                );
            }
            value
        });
        let jitter = raw.jitter.map_or(d.jitter, |j| {
            let value = *j.get_ref();
            if !(0.0..=1.0).contains(&value) {
                r.at(
                    j.span(),
                    format!("restart.jitter must be between 0 and 1, got {value}"),
                );
            }
            value
        });
        RestartConfig {
            policy: raw.policy.unwrap_or(d.policy),
            delay,
            max_delay,
            multiplier,
            jitter,
            reset_after: duration(
                r,
                &raw.reset_after,
                d.reset_after,
                "restart.reset_after",
                super::bounds::RESTART_WINDOW,
            ),
            burst: raw.burst.map_or(d.burst, |b| {
                let value = *b.get_ref();
                if value > super::bounds::BURST {
                    r.at(
                        b.span(),
                        format!(
                            "restart.burst must be at most {}, got {value}",
                            super::bounds::BURST
                        ),
                    );
                }
                value
            }),
            interval: duration(
                r,
                &raw.interval,
                d.interval,
                "restart.interval",
                super::bounds::RESTART_WINDOW,
            ),
        }
    }

    fn stop(&mut self, raw: RawStop) -> StopConfig {
        let d = StopConfig::default();
        StopConfig {
            signal: signal(&mut self.r, &raw.signal, d.signal),
            timeout: duration(
                &mut self.r,
                &raw.timeout,
                d.timeout,
                "stop.timeout",
                super::bounds::STOP_TIMEOUT,
            ),
        }
    }

    fn deploy(&mut self, raw: S<RawDeploy>) -> DeployConfig {
        let d = DeployConfig::default();
        let span = raw.span();
        let raw = raw.into_inner();
        let switch = raw.switch.as_ref().map_or(d.switch, |s| *s.get_ref());
        let listen = match &raw.listen {
            Some(l) => socket_addr(&mut self.r, l, "deploy.listen").inspect(|a| {
                self.links.listen = Some((*a, self.r.pos(l.span())));
            }),
            None if switch == SwitchMode::Proxy => {
                let message = "[deploy] needs `listen` (unless switch = \"command\")";
                self.required("deploy.listen", span.clone(), message);
                None
            }
            None => None,
        };
        let ports = self.ports(raw.ports, span);
        let switch_command = match (raw.switch_command, &raw.switch) {
            (Some(c), Some(s)) if *s.get_ref() == SwitchMode::Command => {
                Some(self.argv(c, "switch_command"))
            }
            (Some(c), _) => {
                let message = "`switch_command` is only used with switch = \"command\"";
                self.r.at(c.span(), message);
                None
            }
            (None, Some(s)) if *s.get_ref() == SwitchMode::Command => {
                let message = "switch = \"command\" needs `switch_command`";
                self.required("deploy.switch_command", s.span(), message);
                None
            }
            (None, _) => None,
        };
        let keep_releases = raw.keep_releases.map_or(d.keep_releases, |k| {
            if *k.get_ref() == 0 {
                self.r
                    .at(k.span(), "deploy.keep_releases must be at least 1");
            } else if *k.get_ref() > super::bounds::KEEP_RELEASES {
                let message = format!(
                    "deploy.keep_releases must be at most {}, got {}",
                    super::bounds::KEEP_RELEASES,
                    k.get_ref()
                );
                self.r.at(k.span(), message);
            }
            *k.get_ref()
        });
        DeployConfig {
            listen,
            proxy: raw.proxy.unwrap_or(d.proxy),
            ports,
            timeout: duration(
                &mut self.r,
                &raw.timeout,
                d.timeout,
                "deploy.timeout",
                super::bounds::DEPLOY_PHASE,
            ),
            watch: duration(
                &mut self.r,
                &raw.watch,
                d.watch,
                "deploy.watch",
                super::bounds::DEPLOY_PHASE,
            ),
            drain: duration(
                &mut self.r,
                &raw.drain,
                d.drain,
                "deploy.drain",
                super::bounds::DEPLOY_PHASE,
            ),
            keep_releases,
            switch,
            switch_command,
        }
    }

    fn ports(&mut self, raw: Option<S<Vec<S<u16>>>>, section: Range<usize>) -> [u16; 2] {
        let Some(raw) = raw else {
            let message = "[deploy] needs `ports`: the two slots' backend ports";
            self.required("deploy.ports", section, message);
            return [0, 0];
        };
        let values: Vec<u16> = raw.get_ref().iter().map(|p| *p.get_ref()).collect();
        let [a, b] = values[..] else {
            self.r
                .at(raw.span(), "deploy.ports must be exactly two ports");
            return [0, 0];
        };
        for p in raw.get_ref() {
            if *p.get_ref() == 0 {
                self.r
                    .at(p.span(), "deploy.ports: port 0 is not a valid slot port");
            } else {
                self.links.ports.push((*p.get_ref(), self.r.pos(p.span())));
            }
        }
        if a == b {
            self.r
                .at(raw.span(), "deploy.ports must be two different ports");
            self.links
                .ports
                .truncate(self.links.ports.len().saturating_sub(1));
        }
        [a, b]
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::load_unit_str;

    /// The diagnostics of unit `api` at `/u/api.toml`, as printed by `orchd --check`.
    fn errors(text: &str) -> Vec<String> {
        match load_unit_str("api", Path::new("/u/api.toml"), text, &["oncall", "slack"]) {
            Ok(unit) => panic!("expected errors, got {unit:?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_error_in_a_file_is_reported() {
        let text = "exec = [\"a\"]\n[restart]\npolcy = \"no\"\nburst = \"five\"\n\
                    delay = \"10 parsecs\"\n[stop]\nsignal = \"SIGFOO\"\n";
        assert_eq!(
            errors(text),
            [
                "/u/api.toml:3:1: unknown field `polcy`, expected one of `policy`, `delay`, \
                 `max_delay`, `multiplier`, `jitter`, `reset_after`, `burst`, `interval`",
                "/u/api.toml:4:9: invalid type: string \"five\", expected u32",
                "/u/api.toml:5:9: invalid duration \"10 parsecs\": unknown time unit \
                 \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, \
                 months, years (and few variations)",
                "/u/api.toml:7:10: unknown signal \"SIGFOO\": expected a name like \
                 \"SIGTERM\" or \"INT\"",
            ]
        );
    }

    #[test]
    fn empty_exec() {
        assert_eq!(
            errors("exec = []\n"),
            [
                "/u/api.toml:1:8: `exec` must not be empty (omit it for a monitor-only unit with [health])"
            ]
        );
    }

    #[test]
    fn monitor_only_needs_health() {
        assert_eq!(
            errors("description = \"x\"\n"),
            ["/u/api.toml:1:1: a unit without `exec` is monitor-only and needs a [health] section"]
        );
    }

    #[test]
    fn port_placeholder_needs_deploy_and_alert_channels_must_exist() {
        let text = "exec = [\"a\", \"--port={port}\"]\nalert = [\"oncall\", \"pager\"]\n\
                    env = { X = \"{foo}\" }\n";
        assert_eq!(
            errors(text),
            [
                "/u/api.toml:1:14: `{port}` needs a [deploy] section with ports",
                "/u/api.toml:2:20: unknown alert channel `pager`; known: oncall, slack",
                "/u/api.toml:3:13: unknown placeholder `{foo}`; known: {port}, {release}",
            ]
        );
    }

    #[test]
    fn health_and_deploy_rules() {
        let text = "exec = [\"a\"]\n[health]\ntcp = \"127.0.0.1:{port}\"\nexpect_status = [200]\n\
                    timeout = \"0s\"\nretries = 0\n[deploy]\nports = [9000, 9000]\n\
                    keep_releases = 0\n";
        assert_eq!(
            errors(text),
            [
                "/u/api.toml:4:17: `expect_status` only applies to `http` health checks",
                "/u/api.toml:5:11: health.timeout must be greater than 0",
                "/u/api.toml:6:11: health.retries must be at least 1",
                "/u/api.toml:7:1: [deploy] needs `listen` (unless switch = \"command\")",
                "/u/api.toml:8:9: deploy.ports must be two different ports",
                "/u/api.toml:9:17: deploy.keep_releases must be at least 1",
            ]
        );
    }

    #[test]
    fn health_needs_exactly_one_probe() {
        assert_eq!(
            errors("[health]\ninterval = \"1s\"\n"),
            ["/u/api.toml:1:1: [health] needs one of `http`, `tcp` or `exec`"]
        );
        assert_eq!(
            errors("[health]\nhttp = \"http://x/\"\ntcp = \"x:1\"\n"),
            ["/u/api.toml:3:7: [health] has both `http` and `tcp`: use one"]
        );
    }

    #[test]
    fn switch_command_rules() {
        let text = "exec = [\"a\"]\n[deploy]\nports = [1, 2]\nswitch = \"command\"\n";
        assert_eq!(
            errors(text),
            ["/u/api.toml:4:10: switch = \"command\" needs `switch_command`"]
        );
        let text = "exec = [\"a\"]\n[deploy]\nlisten = \"0.0.0.0:80\"\nports = [1, 2]\n\
                    switch_command = [\"x\"]\n";
        assert_eq!(
            errors(text),
            ["/u/api.toml:5:18: `switch_command` is only used with switch = \"command\""]
        );
    }

    #[test]
    fn restart_ranges() {
        let text = "exec = [\"a\"]\n[restart]\nmultiplier = 0.5\njitter = 1.5\n\
                    delay = \"5s\"\nmax_delay = \"1s\"\n";
        assert_eq!(
            errors(text),
            [
                "/u/api.toml:3:14: restart.multiplier must be between 1 and 100, got 0.5",
                "/u/api.toml:4:10: restart.jitter must be between 0 and 1, got 1.5",
                "/u/api.toml:6:13: restart.max_delay (1s) must not be less than restart.delay (5s)",
            ]
        );
    }

    #[test]
    fn bad_unit_name() {
        let errors = load_unit_str("a b", Path::new("/u/a b.toml"), "exec = [\"a\"]\n", &[]);
        assert_eq!(
            errors.map_err(|e| e[0].to_string()),
            Err(
                "/u/a b.toml:1:1: invalid unit name `a b`: names may only contain \
                 A-Z, a-z, 0-9, `_`, `.`, `@` and `-`, are at most 128 bytes, and are not \
                 `.` or `..`"
                    .to_string()
            )
        );
    }

    #[test]
    fn durations_and_counts_have_upper_bounds() {
        let huge = "\"500000000000y\"";
        let text = format!(
            "exec = [\"a\"]\n[restart]\ndelay = {huge}\nmax_delay = {huge}\nreset_after = {huge}\n\
             interval = {huge}\nmultiplier = 1e308\nburst = 4000000000\n[stop]\ntimeout = {huge}\n\
             [health]\ntcp = \"127.0.0.1:1\"\ninterval = {huge}\ntimeout = {huge}\n\
             start_period = {huge}\nretries = 4000000000\n[deploy]\nlisten = \"127.0.0.1:1\"\n\
             ports = [2, 3]\ntimeout = {huge}\nwatch = {huge}\ndrain = {huge}\n\
             keep_releases = 4000000000\n"
        );
        assert_eq!(
            errors(&text),
            [
                "/u/api.toml:3:9: restart.delay = \"500000000000y\" is too long: at most 1h is allowed",
                "/u/api.toml:4:13: restart.max_delay = \"500000000000y\" is too long: at most 24h is allowed",
                "/u/api.toml:5:15: restart.reset_after = \"500000000000y\" is too long: at most 30d is allowed",
                "/u/api.toml:6:12: restart.interval = \"500000000000y\" is too long: at most 30d is allowed",
                "/u/api.toml:7:14: restart.multiplier must be between 1 and 100, got 1e308",
                "/u/api.toml:8:9: restart.burst must be at most 10000, got 4000000000",
                "/u/api.toml:10:11: stop.timeout = \"500000000000y\" is too long: at most 24h is allowed",
                "/u/api.toml:13:12: health.interval = \"500000000000y\" is too long: at most 24h is allowed",
                "/u/api.toml:14:11: health.timeout = \"500000000000y\" is too long: at most 1h is allowed",
                "/u/api.toml:15:16: health.start_period = \"500000000000y\" is too long: at most 24h is allowed",
                "/u/api.toml:16:11: health.retries must be at most 1000, got 4000000000",
                "/u/api.toml:20:11: deploy.timeout = \"500000000000y\" is too long: at most 24h is allowed",
                "/u/api.toml:21:9: deploy.watch = \"500000000000y\" is too long: at most 24h is allowed",
                "/u/api.toml:22:9: deploy.drain = \"500000000000y\" is too long: at most 24h is allowed",
                "/u/api.toml:23:17: deploy.keep_releases must be at most 1000, got 4000000000",
            ]
        );
        assert_eq!(
            errors("exec = [\"a\"]\nrelease = \"../x\"\n"),
            [format!(
                "/u/api.toml:2:11: invalid release name \"../x\": {}",
                super::super::RELEASE_RULE
            )]
        );
    }

    #[test]
    fn syntax_error() {
        assert_eq!(
            errors("exec = [\"a\"]\nrequires = \n"),
            ["/u/api.toml:2:12: string values must be quoted, expected literal string"]
        );
    }

    #[test]
    fn monitor_only_unit_with_http_health() {
        let text = "[health]\nhttp = \"https://example.com/health\"\nexpect_status = 200\n\
                    headers = { Host = \"x\" }\n";
        let unit = load_unit_str("ext", Path::new("/u/ext.toml"), text, &[]);
        let unit = unit.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(unit.is_monitor_only());
        let health = unit.health.map(|h| h.check);
        let expected = crate::config::HealthCheck::Http {
            url: "https://example.com/health".into(),
            expect_status: Some(vec![200]),
            expect_body: None,
            headers: [("Host".to_string(), "x".to_string())].into(),
            insecure: false,
        };
        assert_eq!(health, Some(expected));
    }
}
