//! A response head from the backend: parsed with `httparse` once it is all in the connection's
//! buffer (interim 1xx responses skipped), its fields sliced out of the buffer without copies,
//! hop-by-hop ones dropped, and its body's framing decided (docs/smuggling.md). Called by
//! [`super::Upstream::send`].

use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use super::body::{Chunk, State};
use super::{MAX_HEAD, MAX_HEADERS, UpstreamError};
use crate::proxy::rewrite::{is_hop_by_hop, tokens};

/// The response's head, once it is all in `buf` (interim 1xx responses skipped), split off it.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<Head>, UpstreamError> {
    loop {
        // Where each field's name and value lie in the head, to slice them out of it once
        // it is split off the buffer (values then share its memory instead of copies).
        let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let (len, code, http10, count) =
            {
                let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut []);
                let len = match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut parsed, buf, &mut fields)
                {
                    Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
                    Ok(httparse::Status::Complete(_)) => return Err(UpstreamError::HeadTooLarge),
                    Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                        return Err(UpstreamError::HeadTooLarge);
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(e) => return Err(UpstreamError::Malformed(e.to_string())),
                };
                let base = buf.as_ptr() as usize;
                let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
                for (slot, field) in at.iter_mut().zip(parsed.headers.iter()) {
                    let name = offset(field.name.as_bytes());
                    let value = offset(field.value);
                    *slot = (
                        name,
                        name + field.name.len() as u32,
                        value,
                        value + field.value.len() as u32,
                    );
                }
                (
                    len,
                    parsed.code.unwrap_or(0),
                    parsed.version == Some(0),
                    parsed.headers.len(),
                )
            };
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamError::Malformed(format!("status code {code}")))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::UnaskedUpgrade);
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints…: the final response follows.
            buf.advance(len);
            continue;
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        // Content-Length: judged only if it frames the body (a HEAD's may be anything).
        let mut length: Option<Result<u64, &'static str>> = None;
        // How many Content-Length fields, and whether one is a list ("3, 3").
        let (mut length_fields, mut length_list) = (0, false);
        // Transfer-Encoding: how many fields, codings, and codings that are chunked.
        let (mut encodings, mut codings, mut chunked) = (0, 0, 0);
        let (mut close, mut keep_alive) = (false, false);
        let mut named = Vec::new();
        for &(ns, ne, vs, ve) in &at[..count] {
            let malformed = || UpstreamError::Malformed("invalid header field".into());
            let name =
                HeaderName::from_bytes(&head[ns as usize..ne as usize]).map_err(|_| malformed())?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
                .map_err(|_| malformed())?;
            if name == header::CONTENT_LENGTH {
                length_fields += 1;
                length_list |= value.as_bytes().contains(&b',');
                length = Some(match (length, parse_length(value.as_bytes())) {
                    (Some(Err(e)), _) | (_, Err(e)) => Err(e),
                    (Some(Ok(l)), Ok(n)) if l != n => Err("conflicting Content-Length fields"),
                    (_, Ok(n)) => Ok(n),
                });
            } else if name == header::TRANSFER_ENCODING {
                encodings += 1;
                for coding in tokens(value.as_bytes()) {
                    codings += 1;
                    chunked += usize::from(coding.eq_ignore_ascii_case(b"chunked"));
                }
                continue;
            } else if name == header::CONNECTION {
                for token in tokens(value.as_bytes()) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if let Ok(n) = HeaderName::from_bytes(token) {
                        named.push(n);
                    }
                }
                continue;
            } else if is_hop_by_hop(&name) {
                continue;
            }
            headers.append(name, value);
        }
        for n in &named {
            headers.remove(n);
        }
        // Any Transfer-Encoding field, even an empty one, rules out framing by length.
        let encoded = encodings > 0;
        let state = if head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            State::Length(0)
        } else if encoded {
            // RFC 9112 §6.1: chunked alone is what a proxy can pass on without knowing
            // the other codings, and HTTP/1.0 has no transfer codings at all.
            if http10 {
                return Err(UpstreamError::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 response".into(),
                ));
            }
            // One field: an empty one next to `chunked` may be read differently elsewhere.
            if encodings != 1 || codings != 1 || chunked != 1 {
                return Err(UpstreamError::Malformed(
                    "a Transfer-Encoding other than chunked".into(),
                ));
            }
            State::Chunked(Chunk::Size)
        } else {
            match length {
                Some(Ok(n)) => State::Length(n),
                Some(Err(e)) => return Err(UpstreamError::Malformed(e.into())),
                None => State::Eof,
            }
        };
        let both = encoded && length.is_some();
        if both {
            // Chunked framing wins, and the length must not reach the client (RFC 9112
            // §6.3): hyper would frame the body by it.
            headers.remove(header::CONTENT_LENGTH);
        } else if length_fields > 1 || length_list || matches!(length, Some(Err(_))) {
            // One plain length for hyper's server, which refuses repeated or listed ones
            // (a HEAD's or a 304's invalid one goes: it frames nothing).
            headers.remove(header::CONTENT_LENGTH);
            if let Some(Ok(n)) = length {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        // `close` always wins; HTTP/1.0 keeps a connection only when asked to. Both
        // framings at once is a smuggling attempt or a broken server: not trusted again.
        let kept = !close && (!http10 || keep_alive);
        return Ok(Some(Head {
            status,
            headers,
            state,
            reusable: kept && !both && state != State::Eof,
        }));
    }
}

/// A parsed response head.
pub(super) struct Head {
    pub(super) status: StatusCode,
    /// Its fields, hop-by-hop ones dropped.
    pub(super) headers: HeaderMap,
    /// How its body is framed.
    pub(super) state: State,
    /// The backend keeps the connection open after it.
    pub(super) reusable: bool,
}

/// A Content-Length value: digits, or a list of equal ones ("3, 3", as some servers merge).
fn parse_length(value: &[u8]) -> Result<u64, &'static str> {
    let bad = "invalid Content-Length";
    let mut length = None;
    for t in value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
        if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
            return Err(bad);
        }
        let n = t.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err(bad);
        }
        length = Some(n);
    }
    length.ok_or(bad)
}
