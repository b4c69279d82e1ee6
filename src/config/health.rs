//! Validation of a unit's `[health]` section: exactly one probe (`http`, `tcp` or
//! `exec`), http-only options only with `http`, and sane timing. Used by
//! `validate_unit.rs`.

use super::raw::{RawHealth, S};
use super::unit::{HealthCheck, HealthConfig};
use super::validate_unit::UnitValidator;
use super::values::duration;

/// Validates `[health]`.
pub(crate) fn health(v: &mut UnitValidator<'_>, raw: S<RawHealth>) -> HealthConfig {
    let d = HealthConfig::default();
    let span = raw.span();
    let raw = raw.into_inner();
    let check = check(v, &raw, span);
    let interval = positive(
        v,
        &raw.interval,
        d.interval,
        "health.interval",
        super::bounds::HEALTH_PERIOD,
    );
    let timeout = positive(
        v,
        &raw.timeout,
        d.timeout,
        "health.timeout",
        super::bounds::HEALTH_TIMEOUT,
    );
    HealthConfig {
        check,
        interval,
        timeout,
        retries: at_least_one(v, &raw.retries, d.retries, "health.retries"),
        start_period: duration(
            &mut v.r,
            &raw.start_period,
            d.start_period,
            "health.start_period",
            super::bounds::HEALTH_PERIOD,
        ),
        success_threshold: at_least_one(
            v,
            &raw.success_threshold,
            d.success_threshold,
            "health.success_threshold",
        ),
        on_unhealthy: raw.on_unhealthy.unwrap_or(d.on_unhealthy),
    }
}

fn check(v: &mut UnitValidator<'_>, raw: &RawHealth, span: std::ops::Range<usize>) -> HealthCheck {
    let kinds: Vec<(&str, std::ops::Range<usize>)> = [
        ("http", raw.http.as_ref().map(S::span)),
        ("tcp", raw.tcp.as_ref().map(S::span)),
        ("exec", raw.exec.as_ref().map(S::span)),
    ]
    .into_iter()
    .filter_map(|(k, s)| Some((k, s?)))
    .collect();
    match &kinds[..] {
        [] => {
            let unchecked = ["health.http", "health.tcp", "health.exec"]
                .iter()
                .any(|k| v.dropped.contains(*k));
            if !unchecked {
                v.r.at(span, "[health] needs one of `http`, `tcp` or `exec`");
            }
        }
        [_] => {}
        [(first, _), rest @ ..] => {
            for (other, s) in rest {
                let message = format!("[health] has both `{first}` and `{other}`: use one");
                v.r.at(s.clone(), message);
            }
        }
    }
    if let Some(url) = &raw.http {
        return HealthCheck::Http {
            url: v.template(url),
            expect_status: raw.expect_status.as_ref().map(|s| s.get_ref().0.clone()),
            expect_body: raw.expect_body.as_ref().map(|b| b.get_ref().clone()),
            headers: raw
                .headers
                .as_ref()
                .map(|h| h.get_ref().clone())
                .unwrap_or_default(),
            insecure: raw.insecure.as_ref().is_some_and(|i| *i.get_ref()),
        };
    }
    let http_only = [
        ("expect_status", raw.expect_status.as_ref().map(S::span)),
        ("expect_body", raw.expect_body.as_ref().map(S::span)),
        ("headers", raw.headers.as_ref().map(S::span)),
        ("insecure", raw.insecure.as_ref().map(S::span)),
    ];
    for (key, s) in http_only {
        if let Some(s) = s {
            v.r.at(s, format!("`{key}` only applies to `http` health checks"));
        }
    }
    if let Some(addr) = &raw.tcp {
        HealthCheck::Tcp {
            addr: v.template(addr),
        }
    } else if let Some(argv) = &raw.exec {
        HealthCheck::Exec {
            argv: v.argv(argv.clone(), "health.exec"),
        }
    } else {
        HealthConfig::default().check
    }
}

fn positive(
    v: &mut UnitValidator<'_>,
    raw: &Option<S<String>>,
    default: std::time::Duration,
    key: &str,
    max: std::time::Duration,
) -> std::time::Duration {
    let value = duration(&mut v.r, raw, default, key, max);
    if let Some(s) = raw {
        if value.is_zero() && humantime::parse_duration(s.get_ref()).is_ok() {
            v.r.at(s.span(), format!("{key} must be greater than 0"));
        }
    }
    value
}

fn at_least_one(v: &mut UnitValidator<'_>, raw: &Option<S<u32>>, default: u32, key: &str) -> u32 {
    match raw {
        Some(n) if *n.get_ref() == 0 => {
            v.r.at(n.span(), format!("{key} must be at least 1"));
            0
        }
        Some(n) if *n.get_ref() > super::bounds::PROBE_COUNT => {
            let max = super::bounds::PROBE_COUNT;
            v.r.at(
                n.span(),
                format!("{key} must be at most {max}, got {}", n.get_ref()),
            );
            max
        }
        Some(n) => *n.get_ref(),
        None => default,
    }
}
