//! The request head as the backend gets it: hop-by-hop fields and those `Connection` names
//! dropped, `Host` kept (or filled in), `X-Forwarded-For` extended with the client's address,
//! `X-Forwarded-Proto` set; and the framing rules a message must meet (one `chunked` coding).
//! Used by both forwarding paths in `forward` and by orchd's own client (`upstream`).

use http::Request;
use http::header::{self, HeaderName};
use hyper::body::Incoming;

use super::Backend;
use super::http_conn::ClientConn;

/// The forwarding headers orchd adds, as static names: inserting a `&str` name not in `http`'s
/// standard set copies it into a new allocation, and cloning that (the retry template) another.
pub(super) static X_FORWARDED_FOR: header::HeaderName =
    header::HeaderName::from_static("x-forwarded-for");
pub(super) static X_FORWARDED_PROTO: header::HeaderName =
    header::HeaderName::from_static("x-forwarded-proto");

/// The fields a message's `Connection` header names: hop-by-hop too.
/// (Never `Host`, which the backend needs whatever the client says.)
pub(super) fn connection_named(headers: &http::HeaderMap) -> Vec<header::HeaderName> {
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
pub(super) fn push_forwarded_for(
    out: &mut Vec<u8>,
    prior: Option<&http::HeaderMap>,
    conn: &ClientConn,
) {
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
pub(super) fn missing_host(uri: &http::Uri, backend: Backend) -> String {
    match uri.authority() {
        Some(auth) => auth.as_str().to_owned(),
        None => backend.addr.to_string(),
    }
}

pub(super) fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
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

/// The request's head for `backend`, serialized: its method and origin-form target, its fields
/// but the hop-by-hop ones, `Host` kept (or filled in), `X-Forwarded-For` extended with the
/// client's address and `X-Forwarded-Proto` set.
pub(super) fn lean_head(req: &Request<Incoming>, conn: &ClientConn, backend: Backend) -> Vec<u8> {
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

pub(super) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// Whether a message's Transfer-Encoding is anything but one `chunked` coding. hyper frames a
/// request by its last coding, and orchd passes the body on dechunked: a coding before it
/// (`gzip, chunked`) or a second `chunked` would be lost on the way, and the backend would take
/// the bytes for what they are not. nginx answers 501 too.
pub(super) fn unknown_coding(headers: &http::HeaderMap) -> bool {
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

/// Connection-level fields, which describe one hop and are not passed on.
pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The comma-separated tokens of a field value, trimmed.
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}
