//! What the client gets when orchd answers itself (no release: 503, no answer: 502, a bad
//! target: 400, an unknown transfer coding: 501), and a backend's response as the client gets
//! it through hyper's client (framed as orchd's own client frames one). Used by `forward`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::Body;
use super::rewrite::{strip_hop_by_hop, tokens, unknown_coding};
use super::stats::OpenGuard;

pub(super) fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::full(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A request orchd answers itself instead of forwarding it.
pub(super) enum Refusal {
    NoRelease,
    BadTarget,
    /// A transfer coding other than `chunked` alone (docs/smuggling.md).
    UnknownCoding,
}

impl Refusal {
    pub(super) fn response(self) -> Response<Body> {
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
pub(super) fn closing(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

pub(super) fn bad_gateway() -> Response<Body> {
    plain(StatusCode::BAD_GATEWAY, "the service did not answer\n")
}

/// A response of hyper's client as the proxy passes it on (docs/smuggling.md): hop-by-hop
/// fields dropped, and framed as orchd's own client frames one. hyper's client accepts
/// what orchd's refuses, or passes on what would frame the client's copy differently:
/// a transfer coding other than `chunked` alone (read to the close and passed on still
/// encoded, its coding dropped) is a 502; a Content-Length next to chunked, or listed
/// ("2, 2", which hyper has checked are equal), would reach the client as it came.
pub(super) fn guarded(resp: Response<Body>, guard: OpenGuard) -> Response<Body> {
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
