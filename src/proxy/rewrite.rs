//! The request head as the backend gets it: hop-by-hop fields and those `Connection` names
//! dropped, `Host` kept (or filled in), `X-Forwarded-For` extended with the client's address,
//! `X-Forwarded-Proto` set; and the framing rules a message must meet (one `chunked` coding).
//! Used by both forwarding paths in `forward` and by orchd's own client (`upstream`).

use std::net::SocketAddr;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Uri};
use hyper::body::Incoming;

use super::Backend;

/// The forwarding headers orchd adds, as static names: inserting a `&str` name not in `http`'s
/// standard set copies it into a new allocation, and cloning that (the retry template) another.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The fields a message's `Connection` header names: hop-by-hop too.
/// (Never `Host`, which the backend needs whatever the client says.)
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| tokens(v.as_bytes()))
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .filter(|n| *n != header::HOST)
        .collect()
}

/// The value orchd sets `X-Forwarded-Proto` to (a macro: the serialized head writes it as part
/// of one literal).
macro_rules! forwarded_proto {
    () => {
        "http"
    };
}

/// The client's address, and the same as an `X-Forwarded-For` value (made once per connection).
pub(super) struct ClientAddr {
    pub(super) addr: SocketAddr,
    value: Option<HeaderValue>,
}

impl ClientAddr {
    pub(super) fn new(addr: SocketAddr) -> ClientAddr {
        ClientAddr {
            addr,
            value: HeaderValue::from_str(&addr.ip().to_string()).ok(),
        }
    }
}

/// What becomes of one field of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It goes on as it came.
    Pass,
    /// It does not: hop-by-hop, named by `Connection`, or one orchd sets (`X-Forwarded-Proto`).
    Drop,
    /// An `X-Forwarded-For` value: kept, ahead of the client's address, in orchd's own field.
    ForwardedFor,
}

/// The request rewrite's view of one request: the fields its `Connection` header names.
struct Policy {
    /// Empty for a request without `Connection` (most: no allocation).
    named: Vec<HeaderName>,
}

impl Policy {
    fn of(headers: &HeaderMap) -> Policy {
        let named = if headers.contains_key(header::CONNECTION) {
            connection_named(headers)
        } else {
            Vec::new()
        };
        Policy { named }
    }

    /// The rule for each field. A field `Connection` names is hop-by-hop too (RFC 9110
    /// §7.6.1), `X-Forwarded-For` included; never `Host` ([`connection_named`]).
    #[inline]
    fn fate(&self, name: &HeaderName) -> Fate {
        if *name == X_FORWARDED_FOR {
            return if self.named.contains(name) {
                Fate::Drop
            } else {
                Fate::ForwardedFor
            };
        }
        if is_hop_by_hop(name) || *name == X_FORWARDED_PROTO || self.named.contains(name) {
            Fate::Drop
        } else {
            Fate::Pass
        }
    }
}

/// Where the rewrite of a request head goes: serialized for orchd's own client
/// ([`Serialized`]), or edited in place for hyper's ([`Edits`]).
trait Sink {
    /// A field of the request that goes on as it came, in its order.
    fn pass(&mut self, name: &HeaderName, value: &HeaderValue);
    /// A field of the request that does not go on.
    fn remove(&mut self, name: &HeaderName);
    /// A field orchd sets (after the request's own fields).
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    /// `X-Forwarded-For` (the values the request came with, `prior`, then the client's
    /// address) and `X-Forwarded-Proto`, last.
    fn forwarded(&mut self, prior: Option<&HeaderMap>, client: &ClientAddr);
}

/// The one request-head rewrite both forwarding paths apply: every field but the hop-by-hop
/// ones and those `Connection` names; `Host` kept, or filled in ([`missing_host`]); for a
/// protocol `upgrade`, its first `Connection` and `Upgrade` fields; `X-Forwarded-For` extended
/// with the client's address; `X-Forwarded-Proto` set.
#[inline]
fn rewrite<S: Sink>(
    headers: &HeaderMap,
    uri: &Uri,
    upgrade: bool,
    backend: Backend,
    client: &ClientAddr,
    sink: &mut S,
) {
    let policy = Policy::of(headers);
    let (mut host, mut forwarded_for) = (false, false);
    for (name, value) in headers {
        match policy.fate(name) {
            Fate::Pass => {
                host |= *name == header::HOST;
                sink.pass(name, value);
            }
            Fate::Drop => sink.remove(name),
            // Looked up again only when there (most requests come without one).
            Fate::ForwardedFor => forwarded_for = true,
        }
    }
    if !host {
        if let Ok(v) = HeaderValue::from_str(&missing_host(uri, backend)) {
            sink.set(header::HOST, v);
        }
    }
    if upgrade {
        if let (Some(c), Some(u)) = (
            headers.get(header::CONNECTION),
            headers.get(header::UPGRADE),
        ) {
            sink.set(header::CONNECTION, c.clone());
            sink.set(header::UPGRADE, u.clone());
        }
    }
    sink.forwarded(forwarded_for.then_some(headers), client);
}

/// The rewrite as the bytes of a request head.
struct Serialized<'a>(&'a mut Vec<u8>);

impl Sink for Serialized<'_> {
    #[inline]
    fn pass(&mut self, name: &HeaderName, value: &HeaderValue) {
        field(self.0, name.as_str().as_bytes(), value.as_bytes());
    }

    #[inline]
    fn remove(&mut self, _: &HeaderName) {}

    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        field(self.0, name.as_str().as_bytes(), value.as_bytes());
    }

    #[inline]
    fn forwarded(&mut self, prior: Option<&HeaderMap>, client: &ClientAddr) {
        self.0.extend_from_slice(b"x-forwarded-for: ");
        push_forwarded_for(self.0, prior, client);
        self.0.extend_from_slice(
            concat!("\r\nx-forwarded-proto: ", forwarded_proto!(), "\r\n").as_bytes(),
        );
    }
}

/// The rewrite as edits of the request's own header map, applied once it has been read:
/// nothing is allocated for a request that loses no field.
#[derive(Default)]
struct Edits {
    removed: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    forwarded_for: Option<HeaderValue>,
}

impl Sink for Edits {
    #[inline]
    fn pass(&mut self, _: &HeaderName, _: &HeaderValue) {}

    fn remove(&mut self, name: &HeaderName) {
        if !self.removed.contains(name) {
            self.removed.push(name.clone());
        }
    }

    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.set.push((name, value));
    }

    fn forwarded(&mut self, prior: Option<&HeaderMap>, client: &ClientAddr) {
        self.forwarded_for = match (prior, &client.value) {
            (None, Some(v)) => Some(v.clone()),
            _ => {
                let mut joined = Vec::new();
                push_forwarded_for(&mut joined, prior, client);
                HeaderValue::from_bytes(&joined).ok()
            }
        };
    }
}

impl Edits {
    fn apply(self, headers: &mut HeaderMap) {
        for name in &self.removed {
            headers.remove(name);
        }
        for (name, value) in self.set {
            headers.insert(name, value);
        }
        if let Some(v) = self.forwarded_for {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(forwarded_proto!()),
        );
    }
}

/// The request's head for `backend` and orchd's own client, serialized: its method and
/// origin-form target, then its fields as [`rewrite`] makes them (a request for this client
/// is never an upgrade).
pub(super) fn lean_head<B>(req: &Request<B>, client: &ClientAddr, backend: Backend) -> Vec<u8> {
    let headers = req.headers();
    let mut out = Vec::with_capacity(256 + 64 * headers.len());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    rewrite(
        headers,
        req.uri(),
        false,
        backend,
        client,
        &mut Serialized(&mut out),
    );
    out.extend_from_slice(b"\r\n");
    out
}

/// The request's fields for `backend` and hyper's client, as [`rewrite`] makes them, edited
/// in place.
pub(super) fn rewrite_fields(
    headers: &mut HeaderMap,
    uri: &Uri,
    upgrade: bool,
    backend: Backend,
    client: &ClientAddr,
) {
    let mut edits = Edits::default();
    rewrite(headers, uri, upgrade, backend, client, &mut edits);
    edits.apply(headers);
}

/// Append the request's `X-Forwarded-For` value to `out`: the values it came with (`prior`:
/// its fields, when it has that header), in order, empty ones left out, then the client's
/// address.
fn push_forwarded_for(out: &mut Vec<u8>, prior: Option<&HeaderMap>, client: &ClientAddr) {
    let values = prior.map(|headers| headers.get_all(&X_FORWARDED_FOR));
    for value in values.into_iter().flatten() {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    match &client.value {
        Some(v) => out.extend_from_slice(v.as_bytes()),
        None => out.extend_from_slice(client.addr.ip().to_string().as_bytes()),
    }
}

/// The `Host` for a request that came without one (an HTTP/1.0 client): its URI's authority,
/// else the backend's address.
fn missing_host(uri: &Uri, backend: Backend) -> String {
    match uri.authority() {
        Some(auth) => auth.as_str().to_owned(),
        None => backend.addr.to_string(),
    }
}

/// A response's fields without the hop-by-hop ones and those its `Connection` names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
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
pub(super) fn unknown_coding(headers: &HeaderMap) -> bool {
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

#[cfg(test)]
mod tests;
