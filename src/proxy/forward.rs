//! Forwarding one http request: the backend it goes to (the connection's route), and the two
//! paths to it. An HTTP/1 request without a body goes through orchd's own client on the client
//! connection's kept upstream connection (`forward_lean`, the fast path); anything else (a
//! body, HTTP/2, an upgrade) through hyper's client and the worker's pool (`forward_pooled`).
//! Called by the http connection (`http_conn`) for each request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::Backend;
use super::Ctx;
use super::body::Body;
use super::http_conn::ClientConn;
use super::respond::{Refusal, bad_gateway, closing, guarded, plain};
use super::retry::{Template, with_retries};
use super::rewrite::{is_upgrade, lean_head, rewrite_fields, unknown_coding};
use super::stats::{GuardOwner, OpenGuard};
use super::upstream::{Upstream, UpstreamError};
use super::workers::client;

/// How long connecting to a backend may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Whether hyper's client failed because the client's request body did (a malformed chunk, a
/// connection closed mid-body): the client's fault, answered with 400, not the backend's.
fn request_body_failed(e: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<hyper::Error>())
        .is_some_and(|h| h.is_user() && std::error::Error::source(h).is_some())
}

/// The request rewritten for the active backend and hyper's client (absolute URI, its fields
/// as the one request rewrite makes them: [`rewrite_fields`]), or orchd's own answer.
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
    rewrite_fields(
        &mut parts.headers,
        &parts.uri,
        upgrade,
        backend,
        &conn.client,
    );
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

pub(super) async fn forward(
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
    let head = lean_head(&req, &conn.client, backend);
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
            tracing::info!(service = %conn.ctx.service, peer = %conn.client.addr, error = %e, "malformed request body from a client");
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

/// The request's path and query ("/" when it has none).
fn path_and_query(uri: &http::Uri) -> http::uri::PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
}

/// The request's path and query on `backend`, for hyper's client.
pub(super) fn upstream_uri(uri: &http::Uri, backend: Backend) -> Option<http::Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(http::uri::Authority::try_from(backend.addr.to_string()).ok()?);
    parts.path_and_query = Some(path_and_query(uri));
    http::Uri::from_parts(parts).ok()
}
