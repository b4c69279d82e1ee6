//! While a deploy runs (the guarded window), a request without a body whose backend failed
//! before a whole (small) response is sent again after waiting for a switch, and small
//! responses are read whole before they are passed on. Used by both paths in `forward`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;

use super::Backend;
use super::Ctx;
use super::body::Body;

/// Responses up to this size are read whole before they are passed on, so a backend that dies
/// mid-response is retried instead of handing the client a truncated body.
const BUFFER_MAX: u64 = 256 * 1024;

/// How long a retry waits for the proxy to be switched to another backend.
const RETRY_WAIT: Duration = Duration::from_secs(2);

/// An idempotent request without a body: if the upstream fails before a complete (small)
/// response, wait for a switch (a rollback or a restart is usually under way) and try again
/// (`again`, on the backend active then), twice at most.
pub(super) async fn with_retries<F, Fut>(
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

/// What it takes to send a bodyless request again: made before the first attempt, which
/// consumes the request.
///
/// The headers are kept as a plain list: one allocation per request instead of a cloned
/// `HeaderMap`'s two, for a copy that is almost never used.
pub(super) struct Template {
    method: http::Method,
    pub(super) uri: http::Uri,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Template {
    pub(super) fn of(p: &http::request::Parts) -> Template {
        let mut headers = Vec::with_capacity(p.headers.len());
        headers.extend(p.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        Template {
            method: p.method.clone(),
            uri: p.uri.clone(),
            headers,
        }
    }

    /// The request again (HTTP/1.1, no body), to `uri`.
    pub(super) fn request(&self, uri: http::Uri) -> Request<Body> {
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
