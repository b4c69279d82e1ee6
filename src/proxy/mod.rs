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
//! requests without a body go through orchd's own HTTP/1 client (`upstream`); requests
//! with a body, HTTP/2 streams and upgrades go through hyper's client and the worker's pool.
//!
//! One request, phase by phase (the shape of pingora's `ProxyHttp`), one file each:
//!
//! - this file: the [`Proxy`] handle (bind, switch, stats) and the accept loop;
//! - `workers`: the proxy's own threads, and each one's pool for hyper's client;
//! - `tcp`: a tcp-mode connection;
//! - `http_conn`: an http-mode client connection (hyper's server side, the idle timer, the
//!   connection's route and its kept upstream connection);
//! - `forward`: choosing the backend and the two forwarding paths (orchd's own client, hyper's);
//! - `rewrite`: the request head as the backend gets it (one policy for both paths), and the
//!   framing rules a message must meet;
//! - `respond`: orchd's own answers (503, 502, 400, 501) and the response as the client gets it;
//! - `retry`: retries and read-whole buffering while a deploy runs;
//! - `body`: every body the proxy passes on, with its slot's in-flight count;
//! - `stats`: the per-slot counts draining reads ([`SlotStats`]);
//! - `upstream`: orchd's own HTTP/1 client (`head`: the response head, `body`: its framing).

mod body;
mod forward;
mod http_conn;
mod respond;
mod retry;
mod rewrite;
mod stats;
mod tcp;
mod upstream;
mod workers;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyMode;
pub use stats::SlotStats;

/// Where requests go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub slot: usize,
    pub addr: SocketAddr,
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
        Proxy::bind_with_idle(listen, mode, service, http_conn::CLIENT_IDLE, parts).await
    }

    /// [`Proxy::bind`], closing client connections idle for `client_idle` (see
    /// `http_conn::until_idle`).
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
                ProxyMode::Tcp => tcp::tcp_connection(stream, &ctx, cancel).await,
                ProxyMode::Http => http_conn::http_connection(stream, peer, ctx, cancel).await,
            }
        };
        let pool = workers::pool();
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
