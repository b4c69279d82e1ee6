//! The switchable front of a deployed service: orchd holds the public `listen` socket for the
//! service's whole life and forwards to the active slot's backend port.
//!
//! - `http` mode (hyper): routing per *request*, so after a switch the next request on an
//!   existing client connection goes to the new release and clients never meet a connection
//!   the old release closed. Keep-alive, HTTP/2 from clients, WebSocket upgrades (tunnelled),
//!   `Host` kept, `X-Forwarded-For`/`X-Forwarded-Proto` added, kept-alive upstream connections.
//!   An idempotent request without a body whose upstream failed before a whole response is
//!   retried (twice at most, after waiting up to 2 s for a switch); responses up to 256 KiB
//!   are read whole first, so a dying backend never hands a client a truncated body.
//! - `tcp` mode: routing per connection; open connections stay on their slot until they close
//!   or the slot is drained.
//!
//! The supervisor owns the [`Proxy`] handle and switches it; the accept loop and connection
//! tasks read the active backend from a `watch` and count their slot's open connections and
//! in-flight requests in [`SlotStats`], which draining reads.
//!
//! Connections are served on the proxy's own threads (`workers`), one single-threaded tokio
//! runtime per CPU like nginx's worker processes: the accept loop hands each accepted
//! connection to the next worker, which serves it start to finish, so a request never crosses
//! threads. An HTTP/1 client connection keeps one upstream connection of its own, on which its
//! requests without a body go through orchd's own HTTP/1 client ([`super::upstream`]); requests
//! with a body, HTTP/2 streams and upgrades go through hyper's client and the worker's pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::upstream::{ResponseBody, Upstream, UpstreamError, is_hop_by_hop, tokens};
use crate::config::ProxyMode;

/// What a body's failure is passed on as.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where requests go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub slot: usize,
    pub addr: SocketAddr,
}

/// Open connections (tcp) and in-flight requests (http) per slot.
#[derive(Debug, Default)]
pub struct SlotStats {
    /// Per worker thread (and one for any other thread), each on its own cache line: a count
    /// every worker updated for every request would bounce between the CPUs.
    open: [PerWorker; MAX_WORKERS + 1],
    /// A deploy is under way: read small responses whole before passing them on.
    guarded: std::sync::atomic::AtomicBool,
    /// Cancelled to cut a slot's remaining tcp connections after its drain time.
    cut: [std::sync::Mutex<CancellationToken>; 2],
}

impl SlotStats {
    /// While a deploy runs, a backend that dies mid-response (a crash during the watch) must
    /// not hand clients a truncated body: small responses are read whole first and retried on
    /// failure. Outside deploys they stream (that copy costs a quarter of the throughput).
    pub fn set_guarded(&self, on: bool) {
        self.guarded.store(on, Ordering::SeqCst);
    }

    /// Connections or requests still using `slot`.
    pub fn open(&self, slot: usize) -> usize {
        self.open
            .iter()
            .map(|w| w.0[slot].load(Ordering::SeqCst))
            .sum()
    }

    fn cut_token(&self, slot: usize) -> CancellationToken {
        // The lock guards only the token swap; poisoning cannot leave it inconsistent.
        self.cut[slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// End every connection still open on `slot` (its drain time is over).
    pub fn cut(&self, slot: usize) {
        let mut guard = self.cut[slot].lock().unwrap_or_else(|p| p.into_inner());
        guard.cancel();
        *guard = CancellationToken::new();
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct PerWorker([AtomicUsize; 2]);

thread_local! {
    /// This thread's index into [`SlotStats::open`]: a worker's own, else the shared last one.
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_WORKERS) };
}

/// Counts one connection or request on a slot until dropped (on whatever thread).
struct OpenGuard {
    owner: GuardOwner,
    slot: usize,
    counter: usize,
}

/// What keeps the counts alive: a request holds its client connection (whose reference count
/// only its own worker touches), not the proxy-wide stats every worker would bounce.
enum GuardOwner {
    Stats(Arc<SlotStats>),
    Conn(Arc<ClientConn>),
}

impl GuardOwner {
    fn stats(&self) -> &SlotStats {
        match self {
            GuardOwner::Stats(s) => s,
            GuardOwner::Conn(c) => &c.ctx.stats,
        }
    }
}

impl OpenGuard {
    fn new(owner: GuardOwner, slot: usize) -> OpenGuard {
        let counter = WORKER_INDEX.get();
        owner.stats().open[counter].0[slot].fetch_add(1, Ordering::SeqCst);
        if let GuardOwner::Conn(c) = &owner {
            c.active.fetch_add(1, Ordering::Relaxed);
        }
        OpenGuard {
            owner,
            slot,
            counter,
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.owner.stats().open[self.counter].0[self.slot].fetch_sub(1, Ordering::SeqCst);
        if let GuardOwner::Conn(c) = &self.owner {
            c.active.fetch_sub(1, Ordering::Relaxed);
            c.activity.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The supervisor's handle on a running proxy.
pub struct Proxy {
    active: watch::Sender<Option<Backend>>,
    stats: Arc<SlotStats>,
    cancel: CancellationToken,
    pub listen: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Proxy {
    /// Bind `listen` and serve until the handle is dropped.
    pub async fn bind(
        listen: SocketAddr,
        mode: ProxyMode,
        service: &str,
        parts: crate::guard::Parts,
    ) -> std::io::Result<Proxy> {
        Proxy::bind_with_idle(listen, mode, service, CLIENT_IDLE, parts).await
    }

    /// [`Proxy::bind`], closing client connections idle for `client_idle` (see [`until_idle`]).
    pub async fn bind_with_idle(
        listen: SocketAddr,
        mode: ProxyMode,
        service: &str,
        client_idle: Duration,
        parts: crate::guard::Parts,
    ) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        // The port bound, should `listen` have asked for any (port 0).
        let listen = listener.local_addr().unwrap_or(listen);
        let (active, rx) = watch::channel(None);
        let stats = Arc::new(SlotStats::default());
        let cancel = CancellationToken::new();
        let ctx = Arc::new(Ctx {
            backend: rx,
            stats: stats.clone(),
            service: service.into(),
            client_idle,
        });
        // The public port must never stop accepting: a panic in the loop is recorded and the
        // loop runs again on the same listener.
        let loop_cancel = cancel.clone();
        tokio::spawn(async move {
            let mut listener = listener;
            let part = format!("proxy of {}", ctx.service);
            crate::guard::restarting(&part, parts, loop_cancel.clone(), &mut listener, |l| {
                Box::pin(accept_loop(l, mode, ctx.clone(), loop_cancel.clone()))
            })
            .await;
        });
        Ok(Proxy {
            active,
            stats,
            cancel,
            listen,
        })
    }

    /// Route new requests/connections to `backend` (None: answer 503 / close).
    pub fn switch(&self, backend: Option<Backend>) {
        self.active.send_replace(backend);
    }

    pub fn active(&self) -> Option<Backend> {
        *self.active.borrow()
    }

    pub fn stats(&self) -> &Arc<SlotStats> {
        &self.stats
    }
}

struct Ctx {
    backend: watch::Receiver<Option<Backend>>,
    stats: Arc<SlotStats>,
    service: String,
    /// How long a client connection may be idle ([`until_idle`]).
    client_idle: Duration,
}

/// The most proxy worker threads, whatever the number of CPUs.
const MAX_WORKERS: usize = 4;

/// The proxy's worker threads (one per CPU, at most [`MAX_WORKERS`]), started with the first
/// proxy. Each runs a single-threaded tokio runtime forever; connections are spawned onto them
/// through their handles. Should a thread or runtime fail to start, the workers that did start
/// are used, and with none the caller's runtime serves the connections.
fn workers() -> &'static [Handle] {
    static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();
    WORKERS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
        (0..n)
            .filter_map(|i| {
                let (tx, rx) = std::sync::mpsc::channel();
                let spawned = std::thread::Builder::new()
                    .name(format!("orch-proxy-{i}"))
                    .spawn(move || {
                        WORKER_INDEX.set(i);
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => {
                                let _ = tx.send(Ok(rt.handle().clone()));
                                rt.block_on(std::future::pending::<()>());
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                            }
                        }
                    });
                let started = spawned
                    .map_err(|e| e.to_string())
                    .and_then(|_| match rx.recv() {
                        Ok(Ok(handle)) => Ok(handle),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    });
                match started {
                    Ok(handle) => Some(handle),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a proxy worker thread; the others serve");
                        None
                    }
                }
            })
            .collect()
    })
}

thread_local! {
    /// Each worker's own upstream connection pool (its connections' tasks run on that worker).
    static CLIENT: Client<HttpConnector, Body> = http_client();
}

fn client() -> Client<HttpConnector, Body> {
    CLIENT.with(Client::clone)
}

fn http_client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(connector)
}

async fn accept_loop(
    listener: &TcpListener,
    mode: ProxyMode,
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
) {
    let mut next = 0;
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(service = %ctx.service, error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        // A child token per connection: every connection waiting on the one shared token
        // would lock that token's mutex from both workers on every wake-up.
        let cancel = cancel.child_token();
        let serve = move |stream: TcpStream| async move {
            match mode {
                ProxyMode::Tcp => tcp_connection(stream, &ctx, cancel).await,
                ProxyMode::Http => http_connection(stream, peer, ctx, cancel).await,
            }
        };
        let pool = workers();
        if pool.is_empty() {
            tokio::spawn(serve(stream));
            continue;
        }
        next = (next + 1) % pool.len();
        // Moved to the worker as a std socket: it registers with that worker's reactor there.
        match stream.into_std() {
            Ok(std) => {
                pool[next].spawn(async move {
                    match TcpStream::from_std(std) {
                        Ok(stream) => serve(stream).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "proxy worker cannot take a connection")
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "proxy cannot hand a connection to a worker"),
        }
    }
}

async fn tcp_connection(mut client: TcpStream, ctx: &Ctx, cancel: CancellationToken) {
    let Some(backend) = *ctx.backend.borrow() else {
        return;
    };
    let _open = OpenGuard::new(GuardOwner::Stats(ctx.stats.clone()), backend.slot);
    let cut = ctx.stats.cut_token(backend.slot).child_token();
    let mut upstream = match TcpStream::connect(backend.addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(service = %ctx.service, backend = %backend.addr, error = %e, "proxy cannot reach the backend");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        // The copy first: it is what wakes this task; the tokens are checked after it.
        biased;
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut.cancelled() => {}
        _ = cancel.cancelled() => {}
    }
}

async fn http_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
) {
    let mut route = ctx.backend.clone();
    let current = *route.borrow_and_update();
    let conn = Arc::new(ClientConn {
        ctx,
        peer,
        peer_value: HeaderValue::from_str(&peer.ip().to_string()).ok(),
        route: std::sync::Mutex::new((route, current)),
        upstream: std::sync::Mutex::new(None),
        cancel: cancel.clone(),
        activity: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
    });
    let client = conn.clone();
    let service = hyper::service::service_fn(move |req| forward(req, conn.clone()));
    // HTTP/1 unless the client may be starting HTTP/2's prior-knowledge preface: a peek (it
    // leaves the bytes in the socket) instead of the version-sniffing wrapper, which would
    // stay in the way of every read and every request of the connection.
    let mut head = [0u8; H2_PREFACE.len()];
    let first = tokio::time::timeout(client.ctx.client_idle, stream.peek(&mut head));
    let n = match cancel.run_until_cancelled(first).await {
        Some(Ok(Ok(n))) if n > 0 => n,
        _ => return, // cancelled, silent, closed or failed
    };
    let io = TokioIo::new(stream);
    if H2_PREFACE.starts_with(&head[..n]) {
        // The preface, or its first bytes so far: the auto builder reads on until it knows.
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection_with_upgrades(io, service);
        let serve = until_idle(conn, &client, |c| c.graceful_shutdown());
        // The connection first on every wake-up (it is what wakes it), then the token.
        cancel.run_until_cancelled(serve).await;
    } else {
        // Vectored writes (hyper's default): a flattened buffer would save a little per small
        // response but keep up to hyper's max buffer (~400 KiB) per connection after any large
        // body.
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades();
        let serve = until_idle(conn, &client, |c| c.graceful_shutdown());
        cancel.run_until_cancelled(serve).await;
    }
}

/// A client connection with no request in flight, and none begun or ended, for this long is
/// closed (checked once per period, so after one to two periods): idle keep-alive
/// connections, as nginx's `keepalive_timeout` closes them, and clients that never finish a
/// request head, as its `client_header_timeout` does.
const CLIENT_IDLE: Duration = Duration::from_secs(30);

/// Serve `conn` until it ends, or until it has been idle for a whole period: then shut it
/// down gracefully (hyper closes an idle HTTP/1 connection at once, finishes a response it is
/// still writing first, and sends HTTP/2 clients a GOAWAY), and drop it once it has stayed
/// idle for another whole period without ending.
///
/// One timer per connection, looked at when it fires, instead of hyper's header-read timer,
/// which allocates and registers a timer for every request (9 % more instructions per
/// request, measured with callgrind).
async fn until_idle<C: std::future::Future>(
    conn: C,
    client: &ClientConn,
    shutdown: impl Fn(std::pin::Pin<&mut C>),
) {
    let period = client.ctx.client_idle;
    let mut conn = std::pin::pin!(conn);
    let mut tick = std::pin::pin!(tokio::time::sleep(period));
    let mut seen = client.activity.load(Ordering::Relaxed);
    let (mut armed, mut shut) = (false, false);
    std::future::poll_fn(|cx| {
        // The connection first: it is what wakes this task nearly every time.
        if conn.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(());
        }
        // The timer is polled (this task's waker given to it) once per period; until it
        // fires and wakes the task, a look at its state is all each wake-up costs.
        if armed && !tick.is_elapsed() {
            return std::task::Poll::Pending;
        }
        // A poll refused for want of tokio's cooperative budget creates no timer the first
        // time: the timer is armed only by a poll that had budget.
        let budget = tokio::task::coop::has_budget_remaining();
        while tick.as_mut().poll(cx).is_ready() {
            let now = client.activity.load(Ordering::Relaxed);
            let idle = now == seen && client.active.load(Ordering::Relaxed) == 0;
            if idle && shut {
                return std::task::Poll::Ready(());
            }
            if idle {
                shutdown(conn.as_mut());
                shut = true;
                // Shutting down an idle connection ends it at once: poll it to find out.
                if conn.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
            }
            seen = now;
            tick.as_mut().reset(tokio::time::Instant::now() + period);
        }
        armed = budget;
        std::task::Poll::Pending
    })
    .await
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a client connection keeps between its requests.
struct ClientConn {
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    /// The client's address as an `X-Forwarded-For` value, made once.
    peer_value: Option<HeaderValue>,
    /// Where its requests go: the connection's own receiver of the proxy's switch, and the
    /// backend it last saw (a version check per request instead of a lock every worker shares).
    route: std::sync::Mutex<(watch::Receiver<Option<Backend>>, Option<Backend>)>,
    /// Its own upstream connection (HTTP/1 clients): their requests come one at a time, so one
    /// upstream connection serves them all, with no pool to check out from and return to.
    upstream: std::sync::Mutex<Option<(Backend, Upstream)>>,
    /// Cancelled when the proxy stops: also ends the connection's upgraded tunnels, which
    /// outlive the HTTP connection they came from.
    cancel: CancellationToken,
    /// Requests begun or ended, and those whose response is not yet all passed on: what tells
    /// an idle connection ([`until_idle`]).
    activity: AtomicUsize,
    active: AtomicUsize,
}

impl ClientConn {
    /// The active backend now: a switch is seen by the very next request.
    fn backend(&self) -> Option<Backend> {
        // Locked by this connection's requests only; poisoning cannot leave it inconsistent.
        let mut route = self.route.lock().unwrap_or_else(|p| p.into_inner());
        let (rx, current) = &mut *route;
        if rx.has_changed().unwrap_or(false) {
            *current = *rx.borrow_and_update();
        }
        *current
    }

    /// The upstream connection kept for `backend`, if any (one kept for another backend, from
    /// before a switch, is dropped: that closes it).
    fn take_upstream(&self, backend: Backend) -> Option<Upstream> {
        // Held for the swap only; poisoning cannot leave it inconsistent.
        let mut kept = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        match kept.take() {
            Some((b, up)) if b == backend => Some(up),
            _ => None,
        }
    }

    fn keep_upstream(&self, backend: Backend, up: Upstream) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = Some((backend, up));
    }

    /// A response of orchd's own client as the proxy passes it on: a body already read whole
    /// frees the connection for the next request at once; a longer one frees it when it ends.
    fn answer(self: &Arc<Self>, backend: Backend, resp: Response<ResponseBody>) -> Response<Body> {
        let (parts, mut body) = resp.into_parts();
        let body = match body.whole() {
            Some(bytes) => {
                if let Some(up) = body.take_reusable() {
                    self.keep_upstream(backend, up);
                }
                if bytes.is_empty() {
                    Body::Empty
                } else {
                    Body::full(bytes)
                }
            }
            None => Body::Upstream {
                inner: body,
                home: Some((self.clone(), backend)),
                _guard: None,
            },
        };
        Response::from_parts(parts, body)
    }
}

/// How long connecting to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Send a request without a body (its head serialized) to `backend` on the client connection's
/// own upstream connection, or on a new one if there is none or the backend closed it.
async fn send_lean(
    conn: &Arc<ClientConn>,
    backend: Backend,
    head: &[u8],
    idempotent: bool,
    head_request: bool,
) -> Result<Response<Body>, UpstreamError> {
    if let Some(up) = conn.take_upstream(backend) {
        if up.still_open() {
            match up.send(head, head_request).await {
                Ok(resp) => return Ok(conn.answer(backend, resp)),
                // The backend closed its kept connection as the request went out (its
                // keep-alive timeout, say): once more on a new connection, if that is safe.
                Err(e) if e.unsent() || (idempotent && e.before_response()) => {}
                Err(e) => return Err(e),
            }
        }
    }
    // Boxed: connecting happens once per client connection, not per request.
    let up = Box::pin(Upstream::connect(backend.addr, CONNECT_TIMEOUT)).await?;
    let resp = up.send(head, head_request).await?;
    Ok(conn.answer(backend, resp))
}

/// The forwarding headers orchd adds, as static names: inserting a `&str` name not in `http`'s
/// standard set copies it into a new allocation, and cloning that (the retry template) another.
static X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");

/// The fields a message's `Connection` header names: hop-by-hop too.
/// (Never `Host`, which the backend needs whatever the client says.)
fn connection_named(headers: &http::HeaderMap) -> Vec<header::HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| tokens(v.as_bytes()))
        .filter_map(|n| header::HeaderName::from_bytes(n).ok())
        .filter(|n| *n != header::HOST)
        .collect()
}

/// Append the request's `X-Forwarded-For` value to `out`: the values it came with (`prior`:
/// its fields, when it has that header), in order, empty ones left out, then the client's
/// address.
fn push_forwarded_for(out: &mut Vec<u8>, prior: Option<&http::HeaderMap>, conn: &ClientConn) {
    let values = prior.map(|headers| headers.get_all(&X_FORWARDED_FOR));
    for value in values.into_iter().flatten() {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    match &conn.peer_value {
        Some(v) => out.extend_from_slice(v.as_bytes()),
        None => out.extend_from_slice(conn.peer.ip().to_string().as_bytes()),
    }
}

/// The `Host` for a request that came without one (an HTTP/1.0 client): its URI's authority,
/// else the backend's address.
fn missing_host(uri: &http::Uri, backend: Backend) -> String {
    match uri.authority() {
        Some(auth) => auth.as_str().to_owned(),
        None => backend.addr.to_string(),
    }
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Most messages carry none: one pass over the names instead of a lookup for each.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut hop = connection_named(headers);
    hop.extend(headers.keys().filter(|n| is_hop_by_hop(n)).cloned());
    for h in &hop {
        headers.remove(h);
    }
}

fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// Whether orchd's own client takes the request: HTTP/1 without a body, not CONNECT and not
/// an upgrade (everything else goes through hyper's).
fn is_lean(req: &Request<Incoming>) -> bool {
    req.version() < http::Version::HTTP_2
        && hyper::body::Body::is_end_stream(req.body())
        && req.method() != http::Method::CONNECT
        && !is_upgrade(req)
}

/// The request's head for `backend`, serialized: its method and origin-form target, its fields
/// but the hop-by-hop ones, `Host` kept (or filled in), `X-Forwarded-For` extended with the
/// client's address and `X-Forwarded-Proto` set.
fn lean_head(req: &Request<Incoming>, conn: &ClientConn, backend: Backend) -> Vec<u8> {
    let headers = req.headers();
    let mut out = Vec::with_capacity(256 + 64 * headers.len());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let named = if headers.contains_key(header::CONNECTION) {
        connection_named(headers)
    } else {
        Vec::new()
    };
    let (mut host, mut forwarded_for) = (false, false);
    for (name, value) in headers {
        if *name == X_FORWARDED_FOR {
            // Looked up again only when there (most requests come without one).
            forwarded_for = true;
            continue;
        }
        if is_hop_by_hop(name) || *name == X_FORWARDED_PROTO || named.contains(name) {
            continue;
        }
        host |= *name == header::HOST;
        field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !host {
        field(
            &mut out,
            b"host",
            missing_host(req.uri(), backend).as_bytes(),
        );
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    push_forwarded_for(&mut out, forwarded_for.then_some(headers), conn);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
    out
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A client's request made ready for the backend, with what its response needs.
struct Outgoing {
    req: Request<Body>,
    backend: Backend,
    guard: OpenGuard,
    /// The client side of a requested protocol upgrade.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// For a retry: idempotent requests without a body.
    template: Option<Template>,
}

/// A request orchd answers itself instead of forwarding it.
enum Refusal {
    NoRelease,
    BadTarget,
    /// A transfer coding other than `chunked` alone (docs/smuggling.md).
    UnknownCoding,
}

impl Refusal {
    fn response(self) -> Response<Body> {
        match self {
            Refusal::NoRelease => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "no release of this service is running\n",
            ),
            Refusal::BadTarget => plain(StatusCode::BAD_REQUEST, "bad request target\n"),
            Refusal::UnknownCoding => closing(plain(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported Transfer-Encoding: send the body with chunked alone, or with Content-Length\n",
            )),
        }
    }
}

/// `resp`, after which the client connection is closed: the rest of what the client sent
/// cannot be told from a next request.
fn closing(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Whether a message's Transfer-Encoding is anything but one `chunked` coding. hyper frames a
/// request by its last coding, and orchd passes the body on dechunked: a coding before it
/// (`gzip, chunked`) or a second `chunked` would be lost on the way, and the backend would take
/// the bytes for what they are not. nginx answers 501 too.
fn unknown_coding(headers: &http::HeaderMap) -> bool {
    let mut fields = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = fields.next() else {
        return false;
    };
    let mut codings = tokens(first.as_bytes());
    let one_chunked = codings
        .next()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
    !(one_chunked && codings.next().is_none() && fields.next().is_none())
}

/// Whether hyper's client failed because the client's request body did (a malformed chunk, a
/// connection closed mid-body): the client's fault, answered with 400, not the backend's.
fn request_body_failed(e: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<hyper::Error>())
        .is_some_and(|h| h.is_user() && std::error::Error::source(h).is_some())
}

/// The request rewritten for the active backend and hyper's client (absolute URI, `Host` kept
/// or filled in, hop-by-hop headers dropped, `X-Forwarded-*` added), or orchd's own answer.
///
/// Synchronous on purpose: the future hyper keeps (and moves) per request then holds only
/// what crosses an `.await`, not every intermediate of the rewrite.
fn prepare(mut req: Request<Incoming>, conn: &Arc<ClientConn>) -> Result<Outgoing, Refusal> {
    let Some(backend) = conn.backend() else {
        return Err(Refusal::NoRelease);
    };
    if unknown_coding(req.headers()) {
        return Err(Refusal::UnknownCoding);
    }
    let guard = OpenGuard::new(GuardOwner::Conn(conn.clone()), backend.slot);
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let Some(uri) = upstream_uri(&parts.uri, backend) else {
        return Err(Refusal::BadTarget);
    };
    if parts.headers.get(header::HOST).is_none() {
        if let Ok(v) = HeaderValue::from_str(&missing_host(&parts.uri, backend)) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let upgrade_headers = upgrade.then(|| {
        (
            parts.headers.get(header::CONNECTION).cloned(),
            parts.headers.get(header::UPGRADE).cloned(),
        )
    });
    strip_hop_by_hop(&mut parts.headers);
    if let Some((conn, up)) = upgrade_headers {
        if let (Some(c), Some(u)) = (conn, up) {
            parts.headers.insert(header::CONNECTION, c);
            parts.headers.insert(header::UPGRADE, u);
        }
    }
    let xff = if parts.headers.contains_key(&X_FORWARDED_FOR) {
        let mut joined = Vec::new();
        push_forwarded_for(&mut joined, Some(&parts.headers), conn);
        HeaderValue::from_bytes(&joined).ok()
    } else {
        conn.peer_value.clone()
    };
    if let Some(v) = xff {
        parts.headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    parts
        .headers
        .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let bodyless = hyper::body::Body::is_end_stream(&body);
    let template =
        (bodyless && is_idempotent(&parts.method) && !upgrade).then(|| Template::of(&parts));
    Ok(Outgoing {
        req: Request::from_parts(parts, Body::streamed(body)),
        backend,
        guard,
        client_upgrade,
        template,
    })
}

async fn forward(
    req: Request<Incoming>,
    conn: Arc<ClientConn>,
) -> Result<Response<Body>, std::convert::Infallible> {
    conn.activity.fetch_add(1, Ordering::Relaxed);
    Ok(if is_lean(&req) {
        forward_lean(req, conn).await
    } else {
        // Boxed: the less common path's state is not part of every request's future.
        Box::pin(forward_pooled(req, conn)).await
    })
}

/// An HTTP/1 request without a body, through orchd's own client.
async fn forward_lean(req: Request<Incoming>, conn: Arc<ClientConn>) -> Response<Body> {
    let Some(backend) = conn.backend() else {
        return Refusal::NoRelease.response();
    };
    let guard = OpenGuard::new(GuardOwner::Conn(conn.clone()), backend.slot);
    let head = lean_head(&req, &conn, backend);
    let head_request = req.method() == http::Method::HEAD;
    let idempotent = is_idempotent(req.method());
    drop(req);
    let first = send_lean(&conn, backend, &head, idempotent, head_request).await;
    let ctx: &Ctx = &conn.ctx;
    // Outside a deploy's guarded window a response is streamed as it comes; otherwise a
    // failure, or a small response, goes through the retries.
    let resp = match first {
        Ok(r) if !idempotent || !ctx.stats.guarded.load(Ordering::Relaxed) => r,
        Err(e) if !idempotent || e.refused_answer() => {
            tracing::warn!(service = %ctx.service, backend = %backend.addr, error = %e, "proxy request failed");
            return bad_gateway();
        }
        first => {
            let first = first.map_err(|e| e.to_string());
            let again = |b| {
                let sent = send_lean(&conn, b, &head, true, head_request);
                async move { sent.await.map_err(|e| e.to_string()) }
            };
            // Boxed: the retry path's state (a switch wait, a buffered body) would otherwise
            // be part of every request's future.
            match Box::pin(with_retries(ctx, backend, first, again)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(service = %ctx.service, error = %e, "proxy request failed after retries");
                    return bad_gateway();
                }
            }
        }
    };
    resp.map(|body| body.with_guard(guard))
}

fn bad_gateway() -> Response<Body> {
    plain(StatusCode::BAD_GATEWAY, "the service did not answer\n")
}

/// Any other request (with a body, HTTP/2, an upgrade), through hyper's client and the
/// worker's pool.
async fn forward_pooled(req: Request<Incoming>, conn: Arc<ClientConn>) -> Response<Body> {
    let Outgoing {
        req,
        backend,
        guard,
        client_upgrade,
        template,
    } = match prepare(req, &conn) {
        Ok(out) => out,
        Err(refusal) => return refusal.response(),
    };
    // The pool's handle is dropped before the wait, not kept in this future.
    let pending = client().request(req);
    let first = match pending.await {
        Ok(resp) => Ok(resp),
        Err(e) if request_body_failed(&e) => {
            tracing::info!(service = %conn.ctx.service, peer = %conn.peer, error = %e, "malformed request body from a client");
            return closing(plain(
                StatusCode::BAD_REQUEST,
                "malformed or incomplete request body\n",
            ));
        }
        Err(e) => Err(e.to_string()),
    };
    let ctx: &Ctx = &conn.ctx;
    let mut resp = match first {
        Ok(r) if template.is_none() || !ctx.stats.guarded.load(Ordering::Relaxed) => r,
        first => {
            let Some(template) = template else {
                if let Err(e) = &first {
                    tracing::warn!(service = %ctx.service, backend = %backend.addr, error = %e, "proxy request failed");
                }
                return bad_gateway();
            };
            let first = first.map(|r| r.map(Body::streamed));
            let again = |b| {
                let req = upstream_uri(&template.uri, b).map(|uri| template.request(uri));
                async move {
                    let req = req.ok_or_else(|| "bad request target".to_string())?;
                    let resp = client().request(req).await.map_err(|e| e.to_string())?;
                    Ok(resp.map(Body::streamed))
                }
            };
            return match with_retries(ctx, backend, first, again).await {
                Ok(r) => guarded(r, guard),
                Err(e) => {
                    tracing::warn!(service = %ctx.service, error = %e, "proxy request failed after retries");
                    bad_gateway()
                }
            };
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let cancel = conn.cancel.clone();
            tokio::spawn(async move {
                let _guard = guard;
                let tunnel = async {
                    if let (Ok(c), Ok(b)) = (client_upgrade.await, backend_upgrade.await) {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(c),
                            &mut TokioIo::new(b),
                        )
                        .await;
                    }
                };
                cancel.run_until_cancelled(tunnel).await;
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, Body::Empty);
        }
        // A switch the client never asked for: what follows is no HTTP the client expects.
        tracing::warn!(service = %ctx.service, backend = %backend.addr, "the service switched protocols without being asked to; answering 502");
        return bad_gateway();
    }
    guarded(resp.map(Body::streamed), guard)
}

/// Responses up to this size are read whole before they are passed on, so a backend that dies
/// mid-response is retried instead of handing the client a truncated body.
const BUFFER_MAX: u64 = 256 * 1024;
/// How long a retry waits for the proxy to be switched to another backend.
const RETRY_WAIT: Duration = Duration::from_secs(2);

/// An idempotent request without a body: if the upstream fails before a complete (small)
/// response, wait for a switch (a rollback or a restart is usually under way) and try again
/// (`again`, on the backend active then), twice at most.
async fn with_retries<F, Fut>(
    ctx: &Ctx,
    mut backend: Backend,
    first: Result<Response<Body>, String>,
    mut again: F,
) -> Result<Response<Body>, String>
where
    F: FnMut(Backend) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Body>, String>>,
{
    let mut result = first;
    for attempt in 0..3 {
        let err = match result {
            Ok(resp) if !ctx.stats.guarded.load(Ordering::Relaxed) => return Ok(resp),
            Ok(resp) => match buffer_small(resp).await {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if attempt == 2 {
            return Err(err);
        }
        tracing::debug!(service = %ctx.service, backend = %backend.addr, error = %err, "upstream failed before a whole response; retrying");
        let mut rx = ctx.backend.clone();
        let _ = tokio::time::timeout(RETRY_WAIT, rx.wait_for(|b| b.is_some_and(|b| b != backend)))
            .await;
        let Some(now) = *ctx.backend.borrow() else {
            return Err(err);
        };
        backend = now;
        result = again(backend).await;
    }
    Err("no attempt left".into())
}

async fn buffer_small(resp: Response<Body>) -> Result<Response<Body>, String> {
    use hyper::body::Body as _;
    let small = resp.body().is_end_stream()
        || resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= BUFFER_MAX);
    if !small || matches!(resp.body(), Body::Full { .. } | Body::Empty) {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| format!("reading the response: {e}"))?
        .to_bytes();
    Ok(Response::from_parts(parts, Body::full(bytes)))
}

/// A response of hyper's client as the proxy passes it on (docs/smuggling.md): hop-by-hop
/// fields dropped, and framed as orchd's own client frames one. hyper's client accepts
/// what orchd's refuses, or passes on what would frame the client's copy differently:
/// a transfer coding other than `chunked` alone (read to the close and passed on still
/// encoded, its coding dropped) is a 502; a Content-Length next to chunked, or listed
/// ("2, 2", which hyper has checked are equal), would reach the client as it came.
fn guarded(resp: Response<Body>, guard: OpenGuard) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let headers = &mut parts.headers;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if unknown_coding(headers) {
            tracing::warn!(status = %parts.status, "the service answered with a Transfer-Encoding other than chunked; answering 502");
            return bad_gateway();
        }
        headers.remove(header::CONTENT_LENGTH);
    } else if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let plain = headers.get_all(header::CONTENT_LENGTH).iter().count() == 1
            && length.as_bytes().iter().all(u8::is_ascii_digit);
        if !plain {
            let first = tokens(length.as_bytes()).next().map(<[u8]>::to_vec);
            headers.remove(header::CONTENT_LENGTH);
            if let Some(v) = first.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
                headers.insert(header::CONTENT_LENGTH, v);
            }
        }
    }
    strip_hop_by_hop(headers);
    Response::from_parts(parts, body.with_guard(guard))
}

/// The request's path and query ("/" when it has none).
fn path_and_query(uri: &http::Uri) -> http::uri::PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
}

/// The request's path and query on `backend`, for hyper's client.
fn upstream_uri(uri: &http::Uri, backend: Backend) -> Option<http::Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(http::uri::Authority::try_from(backend.addr.to_string()).ok()?);
    parts.path_and_query = Some(path_and_query(uri));
    http::Uri::from_parts(parts).ok()
}

/// What it takes to send a bodyless request again: made before the first attempt, which
/// consumes the request.
///
/// The headers are kept as a plain list: one allocation per request instead of a cloned
/// `HeaderMap`'s two, for a copy that is almost never used.
struct Template {
    method: http::Method,
    uri: http::Uri,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Template {
    fn of(p: &http::request::Parts) -> Template {
        let mut headers = Vec::with_capacity(p.headers.len());
        headers.extend(p.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        Template {
            method: p.method.clone(),
            uri: p.uri.clone(),
            headers,
        }
    }

    /// The request again (HTTP/1.1, no body), to `uri`.
    fn request(&self, uri: http::Uri) -> Request<Body> {
        let mut req = Request::new(Body::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        headers.reserve(self.headers.len());
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        req
    }
}

/// Every body the proxy passes on or makes, without a box per message. A response's body
/// keeps its slot's in-flight count (`guard`) until it is fully sent (or dropped).
enum Body {
    /// A request body passed on, or a response streamed from the backend.
    Streamed {
        inner: Incoming,
        _guard: Option<OpenGuard>,
    },
    /// A response read from the backend by orchd's own client as it comes; the connection
    /// goes `home` to its client connection when the body ends cleanly.
    Upstream {
        inner: ResponseBody,
        home: Option<(Arc<ClientConn>, Backend)>,
        _guard: Option<OpenGuard>,
    },
    /// A response of orchd's own, or one read whole before it is passed on.
    Full {
        inner: Full<Bytes>,
        _guard: Option<OpenGuard>,
    },
    Empty,
}

impl Body {
    fn streamed(inner: Incoming) -> Body {
        Body::Streamed {
            inner,
            _guard: None,
        }
    }

    fn full(bytes: Bytes) -> Body {
        Body::Full {
            inner: Full::new(bytes),
            _guard: None,
        }
    }

    fn with_guard(self, guard: OpenGuard) -> Body {
        match self {
            Body::Streamed { inner, .. } => Body::Streamed {
                inner,
                _guard: Some(guard),
            },
            Body::Full { inner, .. } => Body::Full {
                inner,
                _guard: Some(guard),
            },
            Body::Upstream { inner, home, .. } => Body::Upstream {
                inner,
                home,
                _guard: Some(guard),
            },
            // Nothing left to send: the request is done.
            Body::Empty => Body::Empty,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Streamed { inner, .. } => std::pin::Pin::new(inner)
                .poll_frame(cx)
                .map_err(BoxError::from),
            Body::Upstream { inner, home, .. } => {
                let polled = std::pin::Pin::new(&mut *inner)
                    .poll_frame(cx)
                    .map_err(BoxError::from);
                if inner.is_end_stream() {
                    if let (Some((conn, backend)), Some(up)) = (home.take(), inner.take_reusable())
                    {
                        conn.keep_upstream(backend, up);
                    }
                }
                polled
            }
            Body::Full { inner, .. } => std::pin::Pin::new(inner)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Body::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Streamed { inner, .. } => inner.is_end_stream(),
            Body::Upstream { inner, .. } => inner.is_end_stream(),
            Body::Full { inner, .. } => inner.is_end_stream(),
            Body::Empty => true,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Streamed { inner, .. } => inner.size_hint(),
            Body::Upstream { inner, .. } => inner.size_hint(),
            Body::Full { inner, .. } => inner.size_hint(),
            Body::Empty => hyper::body::SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// How long a test waits for the proxy.
    const T: Duration = Duration::from_secs(10);

    /// A test backend on a loopback port: `handle(n, connection)` serves its n-th connection
    /// (from 0), each on a thread of its own.
    fn serve(handle: fn(usize, std::net::TcpStream)) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().flatten().enumerate() {
                std::thread::spawn(move || handle(i, conn));
            }
        });
        addr
    }

    /// An http proxy on a loopback port the kernel picks, routing to `backend` if given.
    async fn http_proxy(backend: Option<SocketAddr>) -> Proxy {
        let proxy = Proxy::bind(
            ([127, 0, 0, 1], 0).into(),
            ProxyMode::Http,
            "api",
            crate::guard::Parts::default(),
        )
        .await
        .unwrap();
        proxy.switch(backend.map(|addr| Backend { slot: 0, addr }));
        proxy
    }

    /// Send `request` (which asks for `Connection: close`) on a new connection; all the answer.
    async fn exchange(front: SocketAddr, request: &[u8]) -> String {
        let mut c = TcpStream::connect(front).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut all = String::new();
        tokio::time::timeout(T, c.read_to_string(&mut all))
            .await
            .expect("the proxy answers within 10 s")
            .unwrap();
        all
    }

    /// A keep-alive HTTP/1.1 backend answering every request with 200 "ok\n".
    fn backend() -> SocketAddr {
        serve(|_, conn| {
            let mut out = conn.try_clone().unwrap();
            let mut lines = BufReader::new(conn).lines();
            while let Some(Ok(line)) = lines.next() {
                if line.is_empty()
                    && out
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                        .is_err()
                {
                    return;
                }
            }
        })
    }

    /// A backend that closes its first connection after reading the request, without a byte
    /// of response, and answers later requests with their `Host`, `Accept` and
    /// `X-Forwarded-For` lines, in the order they came.
    fn backend_dropping_the_first_request() -> SocketAddr {
        serve(|i, conn| {
            let mut out = conn.try_clone().unwrap();
            let mut lines = BufReader::new(conn).lines();
            let mut seen = Vec::new();
            while let Some(Ok(line)) = lines.next() {
                if !line.is_empty() {
                    let lower = line.to_ascii_lowercase();
                    if ["host:", "accept:", "x-forwarded-for:"]
                        .iter()
                        .any(|h| lower.starts_with(h))
                    {
                        seen.push(lower);
                    }
                    continue;
                }
                if i == 0 {
                    return; // closes the connection: no response byte
                }
                let body = format!("{}\n", seen.join("|"));
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                if out.write_all(format!("{head}{body}").as_bytes()).is_err() {
                    return;
                }
                seen.clear();
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_get_whose_upstream_closed_before_answering_is_retried_with_its_headers() {
        let proxy = http_proxy(Some(backend_dropping_the_first_request())).await;
        let answer = exchange(
            proxy.listen,
            b"GET / HTTP/1.1\r\nHost: shop.example\r\nAccept: text/html\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.7\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\nhost: shop.example|accept: text/html|accept: */*|x-forwarded-for: 10.0.0.7, 127.0.0.1\n"),
            "{answer}"
        );
    }

    /// A backend that accepts any upgrade and then echoes what it reads.
    fn upgrading_backend() -> SocketAddr {
        serve(|_, conn| {
            let mut out = conn.try_clone().unwrap();
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let head =
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            let _ = std::io::copy(&mut reader, &mut out);
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upgraded_tunnel_ends_when_its_proxy_stops() {
        let proxy = http_proxy(Some(upgrading_backend())).await;
        let mut c = TcpStream::connect(proxy.listen).await.unwrap();
        c.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !seen.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(T, c.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed before the upgrade: {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(
            seen.starts_with(b"HTTP/1.1 101 "),
            "{}",
            String::from_utf8_lossy(&seen)
        );
        c.write_all(b"ping\n").await.unwrap();
        let n = tokio::time::timeout(T, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"ping\n", "the tunnel echoes");
        drop(proxy);
        let n = tokio::time::timeout(T, c.read(&mut buf))
            .await
            .expect("the tunnel is closed within 10 s of the proxy's end")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing more comes through the tunnel");
    }

    /// A backend answering by path, with the index of its connection in `x-conn`:
    /// `/chunked` a chunked body, `/head` (HEAD) a length and no body, `/echo` the request's
    /// fields as its body, `/early` a 103 before its answer, `/big` 100 000 bytes, `/close` an
    /// answer that closes the connection, `/then-close` one that closes it unannounced, `/bad`
    /// a malformed head, anything else a body cut short.
    fn backend_by_path() -> SocketAddr {
        serve(|i, conn| {
            let mut out = conn.try_clone().unwrap();
            let mut reader = BufReader::new(conn);
            let mut fields = Vec::new();
            let mut target = String::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let line = std::mem::take(&mut line).trim_end().to_owned();
                if target.is_empty() {
                    target = line;
                    continue;
                }
                if !line.is_empty() {
                    fields.push(line.to_ascii_lowercase());
                    continue;
                }
                // A request body (its length given): read, and shown by `/echo`.
                let length = fields
                    .iter()
                    .find_map(|f| f.strip_prefix("content-length: "))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut received = vec![0; length];
                if std::io::Read::read_exact(&mut reader, &mut received).is_err() {
                    return;
                }
                let target_path = target.split(' ').nth(1).unwrap_or("");
                let path = target_path.split('?').next().unwrap_or("").to_owned();
                let answer = match path.as_str() {
                    "/chunked" => format!(
                        "HTTP/1.1 200 OK\r\nx-conn: {i}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                    ),
                    "/head" => {
                        format!("HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 5\r\n\r\n")
                    }
                    "/echo" => {
                        let mut body = format!("{target}|{}", fields.join("|"));
                        if length > 0 {
                            body.push_str("|body: ");
                            body.push_str(&String::from_utf8_lossy(&received));
                        }
                        format!(
                            "HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    "/close" => format!(
                        "HTTP/1.1 200 OK\r\nx-conn: {i}\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
                    ),
                    "/bad" => "HTTP/1.1 abc\r\n\r\n".to_owned(),
                    "/early" => format!(
                        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 5\r\n\r\nlater"
                    ),
                    "/big" => format!(
                        "HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 100000\r\n\r\n{}",
                        "b".repeat(100_000)
                    ),
                    "/slow" => {
                        // A service taking its time: longer than two idle periods.
                        std::thread::sleep(IDLE * 3);
                        format!("HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 4\r\n\r\nslow")
                    }
                    "/then-close" => {
                        format!("HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 2\r\n\r\nok")
                    }
                    _ => format!("HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 10\r\n\r\nabc"),
                };
                let kept = ["/chunked", "/head", "/echo", "/early", "/big", "/slow"];
                if out.write_all(answer.as_bytes()).is_err() || !kept.contains(&path.as_str()) {
                    // `/then-close` too, although its answer says nothing about it: as a
                    // server's keep-alive timeout closes a connection between requests.
                    return;
                }
                target.clear();
                fields.clear();
            }
        })
    }

    /// A keep-alive client connection to the proxy (hyper's client, as a test tool).
    async fn client_connection(
        front: SocketAddr,
    ) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        watched_client_connection(front).await.0
    }

    /// [`client_connection`], and its task, which ends when the connection is closed.
    async fn watched_client_connection(
        front: SocketAddr,
    ) -> (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<()>,
    ) {
        let stream = TcpStream::connect(front).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (sender, task)
    }

    /// Status, `x-conn`, `content-length` and body of a request on `sender`, or the error.
    async fn ask(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        req: Request<Full<Bytes>>,
    ) -> Result<(u16, String, String, String), String> {
        let exchange = async {
            // Ready first: hyper's client refuses a request while the last one is finishing.
            sender.ready().await.map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let field = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let (status, conn, length) = (
                resp.status().as_u16(),
                field("x-conn"),
                field("content-length"),
            );
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((
                status,
                conn,
                length,
                String::from_utf8_lossy(&body).into_owned(),
            ))
        };
        tokio::time::timeout(T, exchange)
            .await
            .expect("an answer within 10 s")
    }

    /// [`ask`] a request without a body.
    async fn ask_bodyless(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        method: &str,
        path: &str,
    ) -> Result<(u16, String, String, String), String> {
        ask(
            sender,
            get(method, path).body(Full::new(Bytes::new())).unwrap(),
        )
        .await
    }

    fn get(method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", "shop.example")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_without_a_body_share_one_upstream_connection_whatever_the_framing() {
        let proxy = http_proxy(Some(backend_by_path())).await;
        let mut c = client_connection(proxy.listen).await;
        let chunked = ask_bodyless(&mut c, "GET", "/chunked").await;
        assert_eq!(
            chunked,
            Ok((200, "0".into(), "".into(), "hello world".into()))
        );
        let head = ask_bodyless(&mut c, "HEAD", "/head").await;
        assert_eq!(head, Ok((200, "0".into(), "5".into(), "".into())));
        let echo = get("DELETE", "/echo?x=1")
            .header("connection", "keep-alive, x-hop, host")
            .header("x-hop", "dropped")
            .header("keep-alive", "timeout=5")
            .header("accept", "a")
            .header("x-forwarded-for", "10.0.0.1")
            .header("accept", "b")
            .header("x-forwarded-for", "10.0.0.2")
            .header("x-forwarded-proto", "https")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, conn, _, fields) = ask(&mut c, echo).await.unwrap();
        assert_eq!((status, conn.as_str()), (200, "0"));
        assert_eq!(
            fields,
            "DELETE /echo?x=1 HTTP/1.1|host: shop.example|accept: a|accept: b|x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1|x-forwarded-proto: http"
        );
        let close = ask_bodyless(&mut c, "GET", "/close").await;
        assert_eq!(close, Ok((200, "0".into(), "2".into(), "ok".into())));
        // The backend closed that one: the next request goes on a new upstream connection.
        let next = ask_bodyless(&mut c, "GET", "/chunked").await;
        assert_eq!(next, Ok((200, "1".into(), "".into(), "hello world".into())));
        assert_eq!(proxy.stats().open(0), 0, "every request is counted out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_with_a_body_gets_the_same_forwarding_fields() {
        // Through hyper's client and the worker's pool, not orchd's own client.
        let proxy = http_proxy(Some(backend_by_path())).await;
        let mut c = client_connection(proxy.listen).await;
        let post = get("POST", "/echo")
            .header("connection", "keep-alive, x-hop, host")
            .header("x-hop", "dropped")
            .header("x-forwarded-for", "")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-proto", "https")
            .body(Full::new(Bytes::from_static(b"hi")))
            .unwrap();
        let (status, _, _, fields) = ask(&mut c, post).await.unwrap();
        assert_eq!(status, 200);
        let fields: Vec<&str> = fields.split('|').collect();
        assert_eq!(fields[0], "POST /echo HTTP/1.1");
        assert_eq!(fields.last(), Some(&"body: hi"));
        for expected in [
            "host: shop.example",
            "x-forwarded-for: 10.0.0.1, 127.0.0.1",
            "x-forwarded-proto: http",
        ] {
            assert!(fields.contains(&expected), "{expected:?} in {fields:?}");
        }
        assert!(
            !fields
                .iter()
                .any(|f| f.starts_with("x-hop") || f.starts_with("connection")),
            "{fields:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_answer_is_a_502_or_a_cut_connection_and_the_proxy_serves_on() {
        let proxy = http_proxy(Some(backend_by_path())).await;
        let mut c = client_connection(proxy.listen).await;
        // A POST (without a body) is not retried: the 502 comes at once.
        let bad = ask_bodyless(&mut c, "POST", "/bad").await;
        assert_eq!(
            bad,
            Ok((
                502,
                "".into(),
                "27".into(),
                "the service did not answer\n".into()
            ))
        );
        // The same client connection goes on.
        let ok = ask_bodyless(&mut c, "GET", "/chunked").await;
        assert_eq!(ok, Ok((200, "1".into(), "".into(), "hello world".into())));
        // A body cut short reaches the client as a cut connection, never as a whole answer.
        let cut = ask_bodyless(&mut c, "GET", "/cut").await;
        assert!(cut.is_err(), "{cut:?}");
        let mut c = client_connection(proxy.listen).await;
        let ok = ask_bodyless(&mut c, "GET", "/chunked").await;
        assert_eq!(ok.map(|r| r.3), Ok("hello world".into()));
        assert_eq!(proxy.stats().open(0), 0, "every request is counted out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_upstream_connection_the_backend_closed_is_replaced_unnoticed() {
        let proxy = http_proxy(Some(backend_by_path())).await;
        let mut c = client_connection(proxy.listen).await;
        let first = ask_bodyless(&mut c, "GET", "/then-close").await;
        assert_eq!(first, Ok((200, "0".into(), "2".into(), "ok".into())));
        // Whether the proxy sees the close before this request or only when its answer does
        // not come, the request is served on a new connection.
        let second = ask_bodyless(&mut c, "GET", "/then-close").await;
        assert_eq!(second, Ok((200, "1".into(), "2".into(), "ok".into())));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interim_answers_are_skipped_and_deploy_buffering_keeps_the_connection() {
        let proxy = http_proxy(Some(backend_by_path())).await;
        let mut c = client_connection(proxy.listen).await;
        let early = ask_bodyless(&mut c, "GET", "/early").await;
        assert_eq!(early, Ok((200, "0".into(), "5".into(), "later".into())));
        // During a deploy a small answer is read whole before it is passed on (more than one
        // read here); its connection then serves the next request.
        proxy.stats().set_guarded(true);
        let (status, conn, length, body) = ask_bodyless(&mut c, "GET", "/big").await.unwrap();
        assert_eq!(
            (status, conn.as_str(), length.as_str()),
            (200, "0", "100000")
        );
        assert!(body.len() == 100_000 && body.bytes().all(|b| b == b'b'));
        let next = ask_bodyless(&mut c, "GET", "/chunked").await;
        assert_eq!(next, Ok((200, "0".into(), "".into(), "hello world".into())));
        assert_eq!(proxy.stats().open(0), 0, "every request is counted out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http10_request_without_host_gets_the_backends_address() {
        let backend = backend_by_path();
        let proxy = http_proxy(Some(backend)).await;
        let answer = exchange(proxy.listen, b"GET /echo HTTP/1.0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
        assert!(
            answer.ends_with(&format!(
                "\r\n\r\nGET /echo HTTP/1.1|host: {backend}|x-forwarded-for: 127.0.0.1|x-forwarded-proto: http"
            )),
            "{answer}"
        );
    }

    /// Read from `c` until it is closed (true) or 10 s pass (false); what came.
    async fn read_to_close(c: &mut TcpStream) -> (bool, String) {
        let mut all = Vec::new();
        let closed = tokio::time::timeout(T, c.read_to_end(&mut all))
            .await
            .is_ok();
        (closed, String::from_utf8_lossy(&all).into_owned())
    }

    /// The idle period of the proxy in the idle test.
    const IDLE: Duration = Duration::from_millis(500);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_and_silent_clients_are_closed_but_busy_ones_never() {
        let proxy = Proxy::bind_with_idle(
            ([127, 0, 0, 1], 0).into(),
            ProxyMode::Http,
            "api",
            IDLE,
            crate::guard::Parts::default(),
        )
        .await
        .unwrap();
        proxy.switch(Some(Backend {
            slot: 0,
            addr: backend_by_path(),
        }));
        // Connected, and never a byte.
        let mut silent = TcpStream::connect(proxy.listen).await.unwrap();
        // A request head begun and never finished.
        let mut unfinished = TcpStream::connect(proxy.listen).await.unwrap();
        unfinished
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        // Requests more often than the idle period, for four periods: never cut.
        let (mut busy, busy_conn) = watched_client_connection(proxy.listen).await;
        let started = tokio::time::Instant::now();
        while started.elapsed() < IDLE * 4 {
            let r = ask_bodyless(&mut busy, "GET", "/chunked").await;
            assert_eq!(r, Ok((200, "0".into(), "".into(), "hello world".into())));
            tokio::time::sleep(IDLE / 2).await;
        }
        // A request answered after three periods, and another on the same connection most of
        // a period later: the idle clock starts at the end of an answer, not at its request.
        let (mut slow, slow_conn) = watched_client_connection(proxy.listen).await;
        let r = ask_bodyless(&mut slow, "GET", "/slow").await;
        assert_eq!(r.map(|r| r.3), Ok("slow".into()));
        tokio::time::sleep(IDLE * 9 / 10).await;
        let r = ask_bodyless(&mut slow, "GET", "/chunked").await;
        assert_eq!(r.map(|r| r.3), Ok("hello world".into()));
        assert_eq!(read_to_close(&mut silent).await, (true, String::new()));
        let (closed, answer) = read_to_close(&mut unfinished).await;
        assert!(closed && !answer.contains("200"), "{answer}");
        // Left idle now, the connections are closed.
        tokio::time::timeout(T, busy_conn)
            .await
            .expect("the idle busy connection is closed within 10 s")
            .unwrap();
        tokio::time::timeout(T, slow_conn)
            .await
            .expect("the idle slow connection is closed within 10 s")
            .unwrap();
        assert_eq!(proxy.stats().open(0), 0, "every request is counted out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_release_requests_get_503_and_the_front_stays_open() {
        const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let proxy = http_proxy(None).await;
        let answer = exchange(proxy.listen, GET).await;
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\nno release of this service is running\n"),
            "{answer}"
        );
        proxy.switch(Some(Backend {
            slot: 0,
            addr: backend(),
        }));
        let answer = exchange(proxy.listen, GET).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        assert_eq!(proxy.stats().open(0), 0, "the request is counted out");
    }
}
