//! An http-mode client connection: hyper's server side (HTTP/1, or HTTP/2 on prior
//! knowledge), the idle timer that closes idle and silent clients, and [`ClientConn`], what the
//! connection keeps between its requests (its route, its own upstream connection). Started by
//! the accept loop (`super`); each request goes to `forward`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::body::Body;
use super::forward::forward;
use super::rewrite::ClientAddr;
use super::upstream::{ResponseBody, Upstream};
use super::{Backend, Ctx};

pub(super) async fn http_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
) {
    let mut route = ctx.backend.clone();
    let current = *route.borrow_and_update();
    let conn = Arc::new(ClientConn {
        ctx,
        client: ClientAddr::new(peer),
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
pub(super) const CLIENT_IDLE: Duration = Duration::from_secs(30);

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
pub(super) struct ClientConn {
    pub(super) ctx: Arc<Ctx>,
    /// The client's address (`X-Forwarded-For`).
    pub(super) client: ClientAddr,
    /// Where its requests go: the connection's own receiver of the proxy's switch, and the
    /// backend it last saw (a version check per request instead of a lock every worker shares).
    route: std::sync::Mutex<(watch::Receiver<Option<Backend>>, Option<Backend>)>,
    /// Its own upstream connection (HTTP/1 clients): their requests come one at a time, so one
    /// upstream connection serves them all, with no pool to check out from and return to.
    upstream: std::sync::Mutex<Option<(Backend, Upstream)>>,
    /// Cancelled when the proxy stops: also ends the connection's upgraded tunnels, which
    /// outlive the HTTP connection they came from.
    pub(super) cancel: CancellationToken,
    /// Requests begun or ended, and those whose response is not yet all passed on: what tells
    /// an idle connection ([`until_idle`]).
    pub(super) activity: AtomicUsize,
    pub(super) active: AtomicUsize,
}

impl ClientConn {
    /// The active backend now: a switch is seen by the very next request.
    pub(super) fn backend(&self) -> Option<Backend> {
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
    pub(super) fn take_upstream(&self, backend: Backend) -> Option<Upstream> {
        // Held for the swap only; poisoning cannot leave it inconsistent.
        let mut kept = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        match kept.take() {
            Some((b, up)) if b == backend => Some(up),
            _ => None,
        }
    }

    pub(super) fn keep_upstream(&self, backend: Backend, up: Upstream) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = Some((backend, up));
    }

    /// A response of orchd's own client as the proxy passes it on: a body already read whole
    /// frees the connection for the next request at once; a longer one frees it when it ends.
    pub(super) fn answer(
        self: &Arc<Self>,
        backend: Backend,
        resp: Response<ResponseBody>,
    ) -> Response<Body> {
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
