//! Generated inputs: orch's framing decisions against a strict reading of RFC 9112, against
//! `httparse` (the chunk-size line) and against hyper's client (which must decode the same
//! body from every response orch accepts). Seeded: a failure names its input and repeats.
use super::body::{Chunk, chunk_size};
use super::*;
use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;
use rand::{RngExt, SeedableRng, rngs::StdRng};

const CASES: usize = 3000;

fn pick<T: Copy>(rng: &mut StdRng, from: &[T]) -> T {
    from[rng.random_range(0..from.len())]
}

/// The chunk-size rule, written out: 1 to 16 hex digits, optional spaces or tabs, an
/// optional extension (`;` and any bytes but CR and LF), CRLF.
fn reference_chunk_size(buf: &[u8]) -> Option<(usize, u64)> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let size = u64::from_str_radix(std::str::from_utf8(&buf[..digits]).ok()?, 16).ok()?;
    let mut at = digits;
    at += buf[at..]
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    if buf.get(at) == Some(&b';') {
        at += buf[at..]
            .iter()
            .take_while(|&&b| b != b'\r' && b != b'\n')
            .count();
    }
    (buf.get(at..at + 2) == Some(b"\r\n")).then_some((at + 2, size))
}

#[test]
fn chunk_size_lines_are_read_as_the_rule_says_and_as_httparse_does() {
    let mut rng = StdRng::seed_from_u64(14);
    let parts: &[&[u8]] = &[
        b"0",
        b"5",
        b"a",
        b"F",
        b"ffffffffffffffff",
        b"10000000000000000",
        b"+",
        b"-",
        b"0x",
        b" ",
        b"\t",
        b";",
        b";a=b",
        b";q=\"x;y\"",
        b"\"",
        b"\n",
        b"\r",
        b"\0",
        b"\x7f",
        b"z",
        b"00000000000000001",
    ];
    let ends: &[&[u8]] = &[b"\r\n", b"\n", b"\r", b"\r\r\n", b" \r\n", b""];
    for _ in 0..CASES {
        let mut line = Vec::new();
        for _ in 0..rng.random_range(1..5) {
            let part: &[u8] = pick(&mut rng, parts);
            line.extend_from_slice(part);
        }
        let end: &[u8] = pick(&mut rng, ends);
        line.extend_from_slice(end);
        line.extend_from_slice(b"ab\r\n");
        let shown = String::from_utf8_lossy(&line).into_owned();
        let ours = chunk_size(&line);
        assert_eq!(
            ours.ok().flatten(),
            reference_chunk_size(&line),
            "{shown:?}: {ours:?}"
        );
        if let Ok(Some((used, size))) = ours {
            let theirs = httparse::parse_chunk_size(&line);
            assert_eq!(
                theirs,
                Ok(httparse::Status::Complete((used, size))),
                "{shown:?}"
            );
        }
        // Cut anywhere, a line is incomplete or wrong: never another size.
        let cut = rng.random_range(1..=line.len());
        if let Ok(Some(r)) = chunk_size(&line[..cut]) {
            assert_eq!(
                Some(r),
                reference_chunk_size(&line),
                "{shown:?} cut at {cut}"
            );
        }
    }
}

/// How the body of a response head is framed, as RFC 9112 §6.3 says, orch's strictness
/// added (docs/smuggling.md): `None` for a head orch must refuse.
fn reference_state(
    fields: &[(&str, &str)],
    http10: bool,
    status: u16,
    head: bool,
) -> Option<State> {
    if head || status == 204 || status == 304 {
        return Some(State::Length(0));
    }
    let named = |n: &'static str| {
        fields
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| *v)
    };
    let codings: Vec<&str> = named("transfer-encoding").collect();
    if !codings.is_empty() {
        let one: Vec<_> = codings
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        return (!http10
            && codings.len() == 1
            && one.len() == 1
            && one[0].eq_ignore_ascii_case("chunked"))
        .then_some(State::Chunked(Chunk::Size));
    }
    let mut length = None;
    for v in named("content-length") {
        for t in v.split(',').map(str::trim) {
            if t.is_empty() || t.len() > 19 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = t.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    Some(length.map_or(State::Eof, State::Length))
}

/// What hyper's client decodes from `response` (the connection closed after it).
async fn hyper_reads(response: Vec<u8>, head: bool) -> Result<(u16, Vec<u8>), String> {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(
            hyper_util::rt::TokioIo::new(client),
        )
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        let mut request = [0u8; 256];
        let _ = server.read(&mut request).await;
        let _ = server.write_all(&response).await;
        let _ = server.shutdown().await;
    });
    let method = if head {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let req = http::Request::builder()
        .method(method)
        .uri("/")
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body.to_vec()))
}

#[tokio::test(flavor = "current_thread")]
async fn response_heads_are_framed_as_the_rfc_says_and_as_hyper_reads_them() {
    let mut rng = StdRng::seed_from_u64(9112);
    let lengths = [
        "5",
        "0",
        "5, 5",
        "5, 6",
        "+5",
        "-1",
        "",
        "abc",
        "0x5",
        "005",
        "99999999999999999999",
    ];
    let codings = [
        "chunked",
        "Chunked",
        "chunked, identity",
        "identity, chunked",
        "gzip, chunked",
        "gzip",
        ",",
        "chunked, chunked",
    ];
    let connections = [
        "close",
        "keep-alive",
        "close, keep-alive",
        "x-hop",
        "upgrade",
    ];
    let statuses = [200, 201, 204, 304, 404, 500];
    for case in 0..CASES / 3 {
        let http10 = rng.random_bool(0.2);
        let status = pick(&mut rng, &statuses);
        let head_request = rng.random_bool(0.1);
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            fields.push(match rng.random_range(0..4) {
                0 => ("Content-Length", pick(&mut rng, &lengths)),
                1 => ("Transfer-Encoding", pick(&mut rng, &codings)),
                2 => ("Connection", pick(&mut rng, &connections)),
                _ => ("X-Other", "v"),
            });
        }
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut bytes = format!("{version} {status} X\r\n").into_bytes();
        if rng.random_bool(0.1) {
            bytes = format!("HTTP/1.1 100 Continue\r\n\r\n{version} {status} X\r\n").into_bytes();
        }
        for (n, v) in &fields {
            bytes.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        let shown = String::from_utf8_lossy(&bytes).into_owned();
        let mut buf = BytesMut::from(&bytes[..]);
        let ours = parse_head(&mut buf, head_request);
        let want = reference_state(&fields, http10, status, head_request);
        let head = match (ours, want) {
            (Ok(Some(head)), Some(state)) if head.state == state => head,
            (Err(_), None) => continue,
            (ours, want) => panic!(
                "case {case}: {shown:?} (HEAD {head_request}): orch {:?}, want {want:?}",
                ours.map(|h| h.map(|h| h.state))
            ),
        };
        // What the client gets: no hop-by-hop field, at most one plain length, none
        // next to chunks.
        assert!(
            !head.headers.contains_key(header::TRANSFER_ENCODING)
                && !head.headers.contains_key(header::CONNECTION),
            "{shown:?}"
        );
        let passed: Vec<_> = head
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .collect();
        assert!(
            passed.len() <= 1
                && passed
                    .iter()
                    .all(|v| v.as_bytes().iter().all(u8::is_ascii_digit)),
            "{shown:?}: {passed:?}"
        );
        if matches!(head.state, State::Chunked(_)) {
            assert!(passed.is_empty(), "{shown:?}");
        }
        // hyper's client, given the body as orch frames it, decodes the same body.
        let data: Vec<u8> = (0..rng.random_range(0..40))
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let (mut response, body) = (
            bytes.clone(),
            match head.state {
                State::Length(n) => (0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>(),
                _ => data.clone(),
            },
        );
        match head.state {
            State::Chunked(_) => {
                if !body.is_empty() {
                    response.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                    response.extend_from_slice(&body);
                    response.extend_from_slice(b"\r\n");
                }
                response.extend_from_slice(b"0\r\n\r\n");
            }
            _ => response.extend_from_slice(&body),
        }
        match hyper_reads(response, head_request).await {
            Ok((s, b)) => {
                assert_eq!(s, status, "{shown:?}");
                assert_eq!(
                    b, body,
                    "case {case}: hyper reads another body from {shown:?}"
                );
            }
            // hyper refuses a few heads orch takes (a listed length on a 304, say): never
            // the other way round with a different meaning, which is what matters.
            Err(e) => assert!(
                fields.iter().any(|(n, _)| *n == "Content-Length")
                    && head.state == State::Length(0),
                "case {case}: hyper refuses {shown:?} ({e}), orch takes it as {:?}",
                head.state
            ),
        }
    }
}
