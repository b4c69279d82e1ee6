//! Running probes on a schedule: http (reqwest, rustls), tcp connect, exec (through the one
//! spawner and reaper). Every probe is bounded by the unit's `timeout`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use rand::RngExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::ProbeResult;
use crate::supervisor::process::{SpawnSpec, Spawner, signal_group};

/// What to probe, with `{port}` and `{release}` already substituted.
#[derive(Debug, Clone)]
pub enum ProbeTarget {
    Http {
        url: String,
        expect_status: Option<Vec<u16>>,
        expect_body: Option<String>,
        headers: BTreeMap<String, String>,
        insecure: bool,
    },
    Tcp {
        addr: String,
    },
    /// The argv runs like the service: its environment, user, group and working directory.
    Exec {
        spec: SpawnSpec,
    },
}

/// HTTP clients shared by every prober (connection pools are per client).
#[derive(Clone)]
pub struct ProbeClients {
    http: Option<reqwest::Client>,
    insecure: Option<reqwest::Client>,
    spawner: Spawner,
}

fn client(insecure: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        // No idle connections kept: with many endpoints (1000 monitor-only units) a pooled
        // keep-alive connection each costs tens of MiB; a loopback or LAN connect per probe is cheap.
        .pool_max_idle_per_host(0)
        .danger_accept_invalid_certs(insecure)
        .user_agent(concat!(
            "orchd/",
            env!("CARGO_PKG_VERSION"),
            " health-check"
        ))
        .build()
}

impl ProbeClients {
    /// Needs a rustls crypto provider installed (orchd's main does it).
    pub fn new(spawner: Spawner) -> ProbeClients {
        let make = |insecure| match client(insecure) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client for health checks; http probes will fail");
                None
            }
        };
        ProbeClients {
            http: make(false),
            insecure: make(true),
            spawner,
        }
    }
}

/// Timing of a prober.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub interval: Duration,
    pub timeout: Duration,
}

/// One instance's prober task.
pub struct Prober;

impl Prober {
    /// Probe `target` every `interval` until `cancel`, sending `(tag, result)` on `results`.
    /// The first probe is jittered within the first interval (at most 1 s) so that many
    /// services started together don't probe in the same millisecond.
    pub fn spawn(
        target: ProbeTarget,
        schedule: Schedule,
        clients: ProbeClients,
        tag: u64,
        results: mpsc::Sender<(u64, ProbeResult)>,
        cancel: CancellationToken,
    ) {
        tokio::spawn(async move {
            let max_jitter = schedule.interval.min(Duration::from_secs(1)).as_millis() as u64;
            let jitter = Duration::from_millis(rand::rng().random_range(0..=max_jitter / 4));
            let mut tick = tokio::time::interval_at(Instant::now() + jitter, schedule.interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let result = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = run_probe(&target, schedule.timeout, &clients) => r,
                };
                if results.send((tag, result)).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Run one probe, never longer than `timeout`.
pub async fn run_probe(
    target: &ProbeTarget,
    timeout: Duration,
    clients: &ProbeClients,
) -> ProbeResult {
    let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let started = Instant::now();
    let outcome = match target {
        ProbeTarget::Exec { spec } => exec_probe(spec, timeout, &clients.spawner).await,
        _ => match tokio::time::timeout(timeout, net_probe(target, clients)).await {
            Ok(r) => r,
            Err(_) => Outcome::fail(
                None,
                format!("timed out after {}", humantime::format_duration(timeout)),
            ),
        },
    };
    ProbeResult {
        ok: outcome.ok,
        time,
        duration_ms: started.elapsed().as_millis() as u64,
        status: outcome.status,
        detail: outcome.detail,
    }
}

struct Outcome {
    ok: bool,
    status: Option<u16>,
    detail: String,
}

impl Outcome {
    fn fail(status: Option<u16>, detail: String) -> Outcome {
        Outcome {
            ok: false,
            status,
            detail,
        }
    }
}

async fn net_probe(target: &ProbeTarget, clients: &ProbeClients) -> Outcome {
    match target {
        ProbeTarget::Tcp { addr } => match tokio::net::TcpStream::connect(addr.as_str()).await {
            Ok(_) => Outcome {
                ok: true,
                status: None,
                detail: format!("connected to {addr}"),
            },
            Err(e) => Outcome::fail(None, format!("connect to {addr}: {e}")),
        },
        ProbeTarget::Http {
            url,
            expect_status,
            expect_body,
            headers,
            insecure,
        } => {
            let client = if *insecure {
                &clients.insecure
            } else {
                &clients.http
            };
            let Some(client) = client else {
                return Outcome::fail(None, "no HTTP client (see orchd's log)".into());
            };
            http_probe(
                client,
                url,
                expect_status.as_deref(),
                expect_body.as_deref(),
                headers,
            )
            .await
        }
        ProbeTarget::Exec { .. } => Outcome::fail(None, "exec probe on the network path".into()),
    }
}

async fn http_probe(
    client: &reqwest::Client,
    url: &str,
    expect_status: Option<&[u16]>,
    expect_body: Option<&str>,
    headers: &BTreeMap<String, String>,
) -> Outcome {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::fail(None, format!("GET {url}: {}", error_chain(&e))),
    };
    let code = resp.status().as_u16();
    let status_ok = match expect_status {
        Some(list) => list.contains(&code),
        None => (200..400).contains(&code),
    };
    if !status_ok {
        let want = match expect_status {
            Some(list) => list
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            None => "2xx or 3xx".into(),
        };
        return Outcome::fail(Some(code), format!("HTTP {code}, expected {want}"));
    }
    if let Some(needle) = expect_body {
        return match resp.text().await {
            Ok(body) if body.contains(needle) => Outcome {
                ok: true,
                status: Some(code),
                detail: format!("HTTP {code}, body matches"),
            },
            Ok(_) => Outcome::fail(
                Some(code),
                format!("HTTP {code}, body does not contain {needle:?}"),
            ),
            Err(e) => Outcome::fail(
                Some(code),
                format!("HTTP {code}, reading body: {}", error_chain(&e)),
            ),
        };
    }
    Outcome {
        ok: true,
        status: Some(code),
        detail: format!("HTTP {code}"),
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); add the sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

async fn exec_probe(spec: &SpawnSpec, timeout: Duration, spawner: &Spawner) -> Outcome {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spawned = match spawner.spawn(spec.clone(), tx).await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(None, e.to_string()),
    };
    let pid = spawned.pid;
    match tokio::time::timeout(timeout, rx.recv()).await {
        Ok(Some(exit)) => {
            // Whatever the probe left in its process group goes too.
            signal_group(pid, Signal::SIGKILL);
            match (exit.code, exit.signal) {
                (Some(0), _) => Outcome {
                    ok: true,
                    status: None,
                    detail: "exit status 0".into(),
                },
                (Some(c), _) => Outcome::fail(None, format!("exit status {c}")),
                (None, Some(sig)) => Outcome::fail(None, format!("killed by {}", sig.as_str())),
                (None, None) => Outcome::fail(None, "ended".into()),
            }
        }
        Ok(None) => Outcome::fail(None, "lost track of the probe process".into()),
        Err(_) => {
            signal_group(pid, Signal::SIGKILL);
            // The reaper collects it; wait briefly so the zombie is gone before the next probe.
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
            Outcome::fail(
                None,
                format!(
                    "timed out after {} (killed)",
                    humantime::format_duration(timeout)
                ),
            )
        }
    }
}
