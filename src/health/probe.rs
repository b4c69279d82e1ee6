//! Running probes on a schedule: http (plain `http://` straight on hyper's HTTP/1 connection,
//! `https://` through reqwest and rustls), tcp connect, exec (through the one spawner and
//! reaper). Every probe is bounded by the unit's `timeout`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use nix::sys::signal::Signal;
use rand::RngExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::ProbeResult;
use crate::process::{SpawnSpec, Spawner, signal_group};

/// What to probe, with `{port}` and `{release}` already substituted.
#[derive(Debug, Clone)]
pub enum ProbeTarget {
    Http {
        url: String,
        expect_status: Option<Vec<u16>>,
        expect_body: Option<String>,
        headers: BTreeMap<String, String>,
        insecure: bool,
        /// The same request parsed once, for a plain `http://` URL (see [`PlainHttp`]).
        plain: Option<Arc<PlainHttp>>,
    },
    Tcp {
        addr: String,
    },
    /// The argv runs like the service: its environment, user, group and working directory.
    Exec {
        spec: SpawnSpec,
    },
}

impl ProbeTarget {
    /// An http target; a plain `http://` URL is parsed here once, not at every probe.
    pub fn http(
        url: String,
        expect_status: Option<Vec<u16>>,
        expect_body: Option<String>,
        headers: BTreeMap<String, String>,
        insecure: bool,
    ) -> ProbeTarget {
        let plain = PlainHttp::parse(&url, &headers).map(Arc::new);
        ProbeTarget::Http {
            url,
            expect_status,
            expect_body,
            headers,
            insecure,
            plain,
        }
    }
}

const USER_AGENT_VALUE: &str = concat!("orchd/", env!("CARGO_PKG_VERSION"), " health-check");

/// The most of a response body read for `expect_body`.
const MAX_BODY: usize = 1024 * 1024;

/// A plain `http://` probe, parsed once: a fresh connection per probe (as curl from cron, Consul
/// and the kubelet do, so a server that stops accepting connections is seen as down), one
/// HTTP/1.1 GET with `Connection: close` on hyper's connection directly. No connection pool,
/// no per-probe URL parsing, no socket options and no `shutdown(2)`: with 1000 endpoints probed
/// every second this is most of orchd's CPU (docs/BENCHMARKS.md, issue 4). TLS, user info in
/// the URL and anything this parse does not take go through reqwest instead.
#[derive(Debug)]
pub struct PlainHttp {
    /// Host name or address, IPv6 without brackets.
    host: String,
    port: u16,
    path: Uri,
    /// `Host`, `User-Agent` and the unit's `headers`.
    headers: HeaderMap,
}

impl PlainHttp {
    fn parse(url: &str, headers: &BTreeMap<String, String>) -> Option<PlainHttp> {
        let uri: Uri = url.parse().ok()?;
        if uri.scheme_str() != Some("http") {
            return None;
        }
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None; // user info: reqwest turns it into basic auth
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let path = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .ok()?;
        let mut map = HeaderMap::new();
        map.insert(HOST, HeaderValue::from_str(authority.as_str()).ok()?);
        map.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        // One request per connection, said up front (as Go's http client does for the kubelet's
        // and Consul's probes): the server closes, and keeps no idle connection for us.
        map.insert(CONNECTION, HeaderValue::from_static("close"));
        for (k, v) in headers {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            );
        }
        Some(PlainHttp {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            path,
            headers: map,
        })
    }
}

/// HTTP clients shared by every prober (connection pools are per client). The reqwest clients
/// (https probes) are built at their first use: plain http probes don't need them, and a daemon
/// without https probes never loads the TLS roots.
#[derive(Clone)]
pub struct ProbeClients {
    http: Arc<std::sync::OnceLock<Option<reqwest::Client>>>,
    insecure: Arc<std::sync::OnceLock<Option<reqwest::Client>>>,
    spawner: Spawner,
    /// Where a prober that panicked is recorded (it runs again).
    parts: crate::guard::Parts,
}

fn client(insecure: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        // No idle connections kept: with many endpoints (1000 monitor-only units) a pooled
        // keep-alive connection each costs tens of MiB; a loopback or LAN connect per probe is cheap.
        .pool_max_idle_per_host(0)
        .danger_accept_invalid_certs(insecure)
        .user_agent(USER_AGENT_VALUE)
        .build()
}

impl ProbeClients {
    /// Needs a rustls crypto provider installed (orchd's main does it) before an https probe.
    pub fn new(spawner: Spawner, parts: crate::guard::Parts) -> ProbeClients {
        ProbeClients {
            http: Arc::default(),
            insecure: Arc::default(),
            spawner,
            parts,
        }
    }

    fn reqwest(&self, insecure: bool) -> Option<&reqwest::Client> {
        let cell = if insecure { &self.insecure } else { &self.http };
        cell.get_or_init(|| match client(insecure) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client for health checks; https probes will fail");
                None
            }
        })
        .as_ref()
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
        results: mpsc::Sender<(u64, Box<ProbeResult>)>,
        cancel: CancellationToken,
    ) {
        // A panic in a probe must not leave the health of a service frozen: recorded, and
        // the prober runs again.
        tokio::spawn(async move {
            let parts = clients.parts.clone();
            let mut state = (target, clients, results);
            crate::guard::restarting("a health prober", parts, cancel.clone(), &mut state, |s| {
                Box::pin(probe_loop(s, schedule, tag, cancel.clone()))
            })
            .await;
        });
    }
}

async fn probe_loop(
    (target, clients, results): &mut (
        ProbeTarget,
        ProbeClients,
        mpsc::Sender<(u64, Box<ProbeResult>)>,
    ),
    schedule: Schedule,
    tag: u64,
    cancel: CancellationToken,
) {
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
            r = run_probe(target, schedule.timeout, clients) => r,
        };
        if results.send((tag, Box::new(result))).await.is_err() {
            return;
        }
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
            plain,
        } => {
            if let Some(plain) = plain {
                return plain_http_probe(
                    plain,
                    url,
                    expect_status.as_deref(),
                    expect_body.as_deref(),
                )
                .await;
            }
            let Some(client) = clients.reqwest(*insecure) else {
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

/// What a response needs to pass: `expect_status` (or 2xx/3xx) and `expect_body` as a substring.
fn judge(
    code: u16,
    body: Option<Result<String, String>>,
    expect_status: Option<&[u16]>,
    expect_body: Option<&str>,
) -> Outcome {
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
    match (expect_body, body) {
        (Some(needle), Some(Ok(body))) if body.contains(needle) => Outcome {
            ok: true,
            status: Some(code),
            detail: format!("HTTP {code}, body matches"),
        },
        (Some(needle), Some(Ok(_))) => Outcome::fail(
            Some(code),
            format!("HTTP {code}, body does not contain {needle:?}"),
        ),
        (Some(_), Some(Err(e))) => {
            Outcome::fail(Some(code), format!("HTTP {code}, reading body: {e}"))
        }
        _ => Outcome {
            ok: true,
            status: Some(code),
            detail: format!("HTTP {code}"),
        },
    }
}

async fn plain_http_probe(
    t: &PlainHttp,
    url: &str,
    expect_status: Option<&[u16]>,
    expect_body: Option<&str>,
) -> Outcome {
    let stream = match tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await {
        Ok(s) => s,
        Err(e) => {
            return Outcome::fail(
                None,
                format!("GET {url}: connect to {}:{}: {e}", t.host, t.port),
            );
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        TokioIo::new(stream),
    )
    .await
    {
        Ok(pair) => pair,
        Err(e) => return Outcome::fail(None, format!("GET {url}: {}", error_chain(&e))),
    };
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = t.path.clone();
    *req.headers_mut() = t.headers.clone();
    let read_body = expect_body.is_some();
    let exchange = async move {
        let resp = sender.send_request(req).await?;
        let code = resp.status();
        let body = if read_body {
            Some(
                match Limited::new(resp.into_body(), MAX_BODY).collect().await {
                    Ok(b) => Ok(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
                    Err(e) => Err(error_chain(&*e)),
                },
            )
        } else {
            None
        };
        Ok::<(StatusCode, _), hyper::Error>((code, body))
    };
    // The connection runs beside the exchange; once the response is in, both are dropped and
    // the socket closed (no shutdown(2) first: close sends the same FIN).
    let mut conn = std::pin::pin!(conn.without_shutdown());
    let mut exchange = std::pin::pin!(exchange);
    let result = tokio::select! {
        r = &mut exchange => r,
        c = &mut conn => match c {
            Err(e) => Err(e),
            Ok(_) => exchange.await,
        },
    };
    match result {
        Ok((code, body)) => judge(code.as_u16(), body, expect_status, expect_body),
        Err(e) => Outcome::fail(None, format!("GET {url}: {}", error_chain(&e))),
    }
}

async fn http_probe(
    client: &reqwest::Client,
    url: &str,
    expect_status: Option<&[u16]>,
    expect_body: Option<&str>,
    headers: &BTreeMap<String, String>,
) -> Outcome {
    let mut req = client.get(url).header(CONNECTION, "close");
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            // The URL may carry a password: shown without it, and not through reqwest's error.
            let shown = shown_url(url);
            return Outcome::fail(
                None,
                format!("GET {shown}: {}", error_chain(&e.without_url())),
            );
        }
    };
    let code = resp.status().as_u16();
    let body = match expect_body {
        Some(_) => Some(read_capped(resp).await),
        None => None,
    };
    judge(code, body, expect_status, expect_body)
}

/// `url` for messages: user info (`http://user:password@host/`) is never shown.
fn shown_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}…@{}", &url[..start], &url[start + at + 1..]).into(),
        None => url.into(),
    }
}

/// A response body as text, at most [`MAX_BODY`] of it (as the plain http path reads it).
async fn read_capped(mut resp: reqwest::Response) -> Result<String, String> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if buf.len() + chunk.len() > MAX_BODY {
            return Err("length limit exceeded".into());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Option<PlainHttp> {
        PlainHttp::parse(url, &BTreeMap::new())
    }

    #[test]
    fn plain_http_urls_are_parsed_once() {
        let p = parse("http://127.0.0.1:8080/health?deep=1").expect("plain");
        assert_eq!((p.host.as_str(), p.port), ("127.0.0.1", 8080));
        assert_eq!(p.path, "/health?deep=1");
        assert_eq!(p.headers[HOST], "127.0.0.1:8080");
        assert_eq!(p.headers[USER_AGENT], USER_AGENT_VALUE);
        assert_eq!(p.headers[CONNECTION], "close");

        let p = parse("http://[::1]:9000").expect("plain");
        assert_eq!((p.host.as_str(), p.port), ("::1", 9000));
        assert_eq!(p.path, "/");

        let p = parse("http://db.internal/").expect("plain");
        assert_eq!((p.host.as_str(), p.port), ("db.internal", 80));
        assert_eq!(p.headers[HOST], "db.internal");
    }

    #[test]
    fn unit_headers_go_into_the_request_and_may_replace_host() {
        let headers = BTreeMap::from([
            ("Host".to_string(), "api.example.com".to_string()),
            ("X-Probe".to_string(), "orch".to_string()),
        ]);
        let p = PlainHttp::parse("http://127.0.0.1:80/", &headers).expect("plain");
        assert_eq!(p.headers[HOST], "api.example.com");
        assert_eq!(p.headers["x-probe"], "orch");
    }

    #[test]
    fn tls_user_info_and_odd_headers_are_left_to_reqwest() {
        assert!(parse("https://127.0.0.1:8443/").is_none());
        assert!(parse("http://user:pw@127.0.0.1/").is_none());
        assert!(parse("not a url").is_none());
        let bad = BTreeMap::from([("X-Bad".to_string(), "a\nb".to_string())]);
        assert!(PlainHttp::parse("http://127.0.0.1/", &bad).is_none());
    }

    #[test]
    fn passwords_in_probe_urls_are_never_shown() {
        assert_eq!(
            shown_url("https://ops:s3cret@db.internal:8443/health?x=a@b"),
            "https://…@db.internal:8443/health?x=a@b"
        );
        assert_eq!(shown_url("http://127.0.0.1/h@x"), "http://127.0.0.1/h@x");
        assert_eq!(shown_url("not a url"), "not a url");
    }

    #[test]
    fn responses_are_judged_by_status_and_body() {
        assert!(judge(204, None, None, None).ok);
        assert!(judge(302, None, None, None).ok);
        let o = judge(500, None, None, None);
        assert_eq!(o.detail, "HTTP 500, expected 2xx or 3xx");
        assert!(!judge(200, None, Some(&[204, 205]), None).ok);
        let o = judge(200, Some(Ok("ready: v2".into())), None, Some("v2"));
        assert_eq!((o.ok, o.detail.as_str()), (true, "HTTP 200, body matches"));
        let o = judge(200, Some(Ok("ready: v1".into())), None, Some("v2"));
        assert_eq!(o.detail, "HTTP 200, body does not contain \"v2\"");
    }
}
