//! Unit tests of orchd's own client against one-connection test backends: every framing read
//! to its end, connections kept only when they can be, broken responses as errors.

use super::*;
use http::HeaderMap;
use http_body_util::BodyExt;
use std::io::{Read, Write};

const T: Duration = Duration::from_secs(10);

/// A backend for one connection: it reads a request head, answers `response` (all at
/// once, or a byte per write to make the client parse it in pieces), then closes the
/// connection if `close`, else waits for the client to close it.
fn backend(response: &'static [u8], bytewise: bool, close: bool) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_nodelay(true).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        if bytewise {
            for b in response {
                if conn.write_all(std::slice::from_ref(b)).is_err() {
                    return;
                }
            }
        } else if conn.write_all(response).is_err() {
            return;
        }
        if !close {
            let _ = conn.read(&mut byte);
        }
    });
    addr
}

/// What the client made of a response: status, fields, body, and whether the connection
/// came back for another request; or the error.
async fn fetch(
    response: &'static [u8],
    head_request: bool,
    bytewise: bool,
    close: bool,
) -> Result<(u16, HeaderMap, Vec<u8>, bool), UpstreamError> {
    let addr = backend(response, bytewise, close);
    let exchange = async {
        let up = Upstream::connect(addr, T).await?;
        let method: &[u8] = if head_request { b"HEAD" } else { b"GET" };
        let request = [method, b" / HTTP/1.1\r\nhost: t\r\n\r\n"].concat();
        let resp = up.send(&request, head_request).await?;
        let (parts, mut body) = resp.into_parts();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(bytes) = frame?.into_data() {
                data.extend_from_slice(&bytes);
            }
        }
        Ok((
            parts.status.as_u16(),
            parts.headers,
            data,
            body.take_reusable().is_some(),
        ))
    };
    tokio::time::timeout(T, exchange)
        .await
        .expect("the exchange ends within 10 s")
}

#[tokio::test]
async fn every_framing_is_read_to_its_end_and_the_connection_kept_only_when_it_can_be() {
    /// (response, HEAD request, backend closes after it, status, body, connection kept)
    type Case = (&'static [u8], bool, bool, u16, &'static [u8], bool);
    let cases: &[Case] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            false,
            false,
            200,
            b"hello",
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n",
            false,
            false,
            200,
            b"hello world",
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
            false,
            false,
            200,
            b"0123456789",
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
            false,
            true,
            200,
            b"until the end",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 2\r\n\r\nok",
            false,
            false,
            200,
            b"ok",
            false,
        ),
        (
            // Without a body, a Content-Length is passed on whatever it says.
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            true,
            false,
            200,
            b"",
            true,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false,
            false,
            304,
            b"",
            true,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
            false,
            200,
            b"ok",
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            false,
            false,
            200,
            b"ok",
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            false,
            false,
            200,
            b"ok",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            true,
            false,
            200,
            b"",
            true,
        ),
        (
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            false,
            false,
            204,
            b"",
            true,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
            304,
            b"",
            true,
        ),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
            false,
            false,
            201,
            b"new",
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
            false,
            false,
            200,
            b"abc",
            true,
        ),
        (
            // Both framings: chunked wins and the connection is not trusted again.
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            false,
            false,
            200,
            b"hi",
            false,
        ),
    ];
    for &(response, head_request, close, status, body, kept) in cases {
        for bytewise in [false, true] {
            let shown = String::from_utf8_lossy(response);
            let (s, headers, b, k) = fetch(response, head_request, bytewise, close)
                .await
                .unwrap_or_else(|e| panic!("{shown:?} (bytewise {bytewise}): {e}"));
            assert_eq!(s, status, "{shown:?}");
            assert_eq!(b, body, "{shown:?} (bytewise {bytewise})");
            assert_eq!(k, kept, "connection kept after {shown:?}");
            for hop in ["transfer-encoding", "connection"] {
                assert!(!headers.contains_key(hop), "{hop} passed on: {shown:?}");
            }
            // At most one Content-Length, a plain number: hyper's server refuses others.
            let lengths: Vec<_> = headers.get_all("content-length").iter().collect();
            assert!(
                lengths.len() <= 1
                    && lengths
                        .iter()
                        .all(|v| v.as_bytes().iter().all(u8::is_ascii_digit)),
                "{lengths:?} after {shown:?}"
            );
            if shown.contains("chunked") {
                // The body is framed by its chunks; a length next to them must not reach
                // the client, whose answer would be framed by it.
                assert!(!headers.contains_key("content-length"), "{shown:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_connection_with_bytes_past_the_response_is_not_used_again() {
    // One write, so the client reads it whole: the extra bytes are there with the body.
    let (_, _, body, kept) = fetch(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        false,
        false,
        false,
    )
    .await
    .unwrap();
    assert_eq!(body, b"ok");
    assert!(!kept);
}

#[tokio::test]
async fn fields_keep_their_order_and_those_connection_names_are_dropped() {
    let (_, headers, body, kept) = fetch(
        b"HTTP/1.1 200 OK\r\nConnection: x-hop, keep-alive\r\nKeep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nX-Hop: secret\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
        false,
        false,
        false,
    )
    .await
    .unwrap();
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(headers.len(), 3, "{headers:?}");
    assert!(body.is_empty());
    assert!(kept);
}

#[tokio::test]
async fn broken_responses_are_errors_that_say_what_was_wrong() {
    let large = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "v".repeat(70_000));
    let large: &'static [u8] = large.into_bytes().leak();
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("X-F{i}: v\r\n"))
        .collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    let many: &'static [u8] = many.into_bytes().leak();
    // (response, the error's message, sending again is safe for an idempotent request)
    let cases: &[(&[u8], &str, bool)] = &[
        (b"", "closed the connection without answering", true),
        (
            b"HTTP/1.1 200 OK\r\nContent-Le",
            "ended within its head",
            false,
        ),
        (b"HTTP/1.1 abc OK\r\n\r\n", "malformed response head", false),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
            "invalid Content-Length",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "conflicting Content-Length",
            false,
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            "switched protocols without being asked",
            false,
        ),
        (large, "larger than 64 KiB", false),
        (many, "too many headers", false),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            "closed the connection 7 bytes before the end of its response body",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "missing chunk size",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
            "invalid chunk size",
            false,
        ),
        (
            // An empty line is not a last chunk.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n\r\n",
            "missing chunk size",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\nx\r\n0\r\n\r\n",
            "not ended by CRLF",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "a Transfer-Encoding other than chunked",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw bytes",
            "a Transfer-Encoding other than chunked",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "a Transfer-Encoding other than chunked",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\nContent-Length: 2\r\n\r\nok",
            "a Transfer-Encoding other than chunked",
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 response",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
            "no CRLF after chunk data",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            "closed within the chunked body",
            false,
        ),
    ];
    for &(response, message, retry) in cases {
        let shown = String::from_utf8_lossy(&response[..response.len().min(80)]);
        let e = fetch(response, false, false, true)
            .await
            .err()
            .unwrap_or_else(|| panic!("{shown:?} was taken for a response"));
        assert!(e.to_string().contains(message), "{shown:?}: {e}");
        assert_eq!(e.before_response(), retry, "{shown:?}: {e}");
    }
}

#[tokio::test]
async fn a_kept_connection_the_backend_closed_is_seen_as_closed() {
    let addr = backend(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, true);
    let up = Upstream::connect(addr, T).await.unwrap();
    assert!(up.still_open(), "a fresh connection is open");
    let resp = up.send(b"GET / HTTP/1.1\r\n\r\n", false).await.unwrap();
    let up = resp.into_body().take_reusable().expect("kept");
    // The backend closes after answering: once its FIN is in, the connection is unfit.
    tokio::time::timeout(T, up.stream.readable())
        .await
        .expect("the close arrives within 10 s")
        .unwrap();
    assert!(!up.still_open());
}
