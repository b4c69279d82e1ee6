//! Request smuggling and response splitting: hostile HTTP/1 framing in both directions through
//! the real http proxy (in process, on loopback TCP), each input with the decision the proxy
//! must take. A raw backend records exactly which requests reach it, parsed strictly; the
//! property checked throughout is that the backend never sees a request the proxy did not see
//! as one, and that a client never gets a response to a request it did not send.
//! docs/smuggling.md has the same table, next to nginx's decisions.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch::config::ProxyMode;
use orch::proxy::{Backend, Proxy};

/// How long any one wait may take.
const T: Duration = Duration::from_secs(5);

/// A proxy on a loopback port in front of `backend`, with the runtime that runs it.
fn proxy_to(backend: SocketAddr) -> (tokio::runtime::Runtime, Proxy) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let proxy = rt
        .block_on(Proxy::bind(
            ([127, 0, 0, 1], 0).into(),
            ProxyMode::Http,
            "smuggling",
            orch::guard::Parts::default(),
        ))
        .unwrap();
    proxy.switch(Some(Backend {
        slot: 0,
        addr: backend,
    }));
    (rt, proxy)
}

/// What a strict HTTP/1.1 reader made of a message head: its first line, its fields (names in
/// lower case) and the head's length; `Err` for anything RFC 9112 does not allow.
type Head = (String, Vec<(String, Vec<u8>)>, usize);

/// Parse a head strictly: CRLF line endings only, no obs-fold, no space before a colon, no
/// control bytes. `Ok(None)` while it is incomplete.
fn strict_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return match buf.iter().position(|&b| b == b'\n') {
            Some(i) if i == 0 || buf[i - 1] != b'\r' => Err("bare LF".into()),
            _ => Ok(None),
        };
    };
    let text = &buf[..end];
    if text.contains(&b'\n') && text.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r')
        || text.starts_with(b"\n")
    {
        return Err("bare LF".into());
    }
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| Some(l.strip_suffix(b"\r").unwrap_or(l)));
    let first = match lines.next() {
        Some(Some(l)) => String::from_utf8_lossy(l).into_owned(),
        _ => return Err("no start line".into()),
    };
    let mut fields = Vec::new();
    for line in lines {
        let line = line.ok_or("bare LF")?;
        if line
            .iter()
            .any(|&b| b == b'\r' || (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(format!(
                "control byte in {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or("field without colon")?;
        let name = &line[..colon];
        if name.is_empty()
            || !name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
        {
            return Err(format!(
                "bad field name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        fields.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            line[colon + 1..].trim_ascii().to_vec(),
        ));
    }
    Ok(Some((first, fields, end + 4)))
}

/// How a message's body is framed, strictly: one plain Content-Length, or exactly
/// `Transfer-Encoding: chunked` and no Content-Length; `Err` for anything ambiguous.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

fn strict_framing(fields: &[(String, Vec<u8>)], none: Framing) -> Result<Framing, String> {
    let get = |n: &str| -> Vec<&[u8]> {
        fields
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_slice())
            .collect()
    };
    let lengths = get("content-length");
    let codings = get("transfer-encoding");
    match (&lengths[..], &codings[..]) {
        ([], []) => Ok(none),
        ([l], []) if !l.is_empty() && l.len() < 19 && l.iter().all(u8::is_ascii_digit) => {
            Ok(Framing::Length(
                String::from_utf8_lossy(l)
                    .parse()
                    .map_err(|e| format!("{e}"))?,
            ))
        }
        ([], [c]) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
        _ => Err(format!(
            "ambiguous framing: content-length {:?}, transfer-encoding {:?}",
            lengths
                .iter()
                .map(|v| String::from_utf8_lossy(v))
                .collect::<Vec<_>>(),
            codings
                .iter()
                .map(|v| String::from_utf8_lossy(v))
                .collect::<Vec<_>>(),
        )),
    }
}

/// A strict chunked body at the start of `buf`: its data and its length in `buf`, `Ok(None)`
/// while incomplete. Chunk sizes are hex digits (at most 16), extensions are skipped, each
/// line ends with CRLF, trailers are allowed.
fn strict_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "bad chunk size line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        if line.iter().any(|&b| b == b'\n' || b == b'\r') {
            return Err("bare CR or LF in a chunk size line".into());
        }
        let size = u64::from_str_radix(&String::from_utf8_lossy(size), 16).unwrap() as usize;
        at += eol + 2;
        if size == 0 {
            // Trailer fields until an empty line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((data, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        data.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("no CRLF after chunk data".into());
        }
        at += size + 2;
    }
}

/// One message read strictly from the front of `buf`: head, body, length used.
/// `Ok(None)` while incomplete (`eof`: no more bytes will come).
fn strict_message(
    buf: &[u8],
    none: Framing,
    bodyless: bool,
    eof: bool,
) -> Result<Option<(Head, Vec<u8>, usize)>, String> {
    let Some(head) = strict_head(buf)? else {
        return Ok(None);
    };
    let at = head.2;
    // A response's status: 1xx, 204 and 304 have no body.
    let status = head.0.strip_prefix("HTTP/1.").and_then(|l| l.get(2..5));
    let bodyless = bodyless
        || none == Framing::Close
            && status.is_some_and(|s| s.starts_with('1') || s == "204" || s == "304");
    let framing = if bodyless {
        Framing::Length(0)
    } else {
        strict_framing(&head.1, none)?
    };
    let body = match framing {
        Framing::Length(n) if buf.len() >= at + n => Some((buf[at..at + n].to_vec(), at + n)),
        Framing::Length(_) => None,
        Framing::Chunked => strict_chunked(&buf[at..])?.map(|(d, n)| (d, at + n)),
        Framing::Close if eof => Some((buf[at..].to_vec(), buf.len())),
        Framing::Close => None,
    };
    Ok(body.map(|(b, n)| (head, b, n)))
}

/// What the recording backend saw on all its connections.
#[derive(Default)]
struct Seen {
    /// Every request parsed, as "METHOD TARGET body=BODY".
    requests: Vec<String>,
    /// Bytes a strict parser refused (a connection is closed at the first).
    errors: Vec<String>,
}

/// A scripted answer, and whether the backend closes the connection after it.
type Script = (&'static [u8], bool);

/// The recording backend: parses requests strictly and answers each with 200 and
/// "METHOD TARGET body=BODY". `/early` is answered as soon as its head is in, before its body.
/// Any other target answers with `response`, when given (`/probe` never).
fn recording_backend(response: Option<Script>) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || backend_connection(conn, response, &record));
        }
    });
    (addr, seen)
}

fn backend_connection(mut conn: TcpStream, response: Option<Script>, seen: &Mutex<Seen>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut answered_early = false;
    loop {
        match strict_message(&buf, Framing::Length(0), false, false) {
            Ok(Some(((line, _, _), body, used))) => {
                let target = line.split(' ').nth(1).unwrap_or_default().to_owned();
                let text = format!(
                    "{} {target} body={}",
                    line.split(' ').next().unwrap_or_default(),
                    String::from_utf8_lossy(&body)
                );
                seen.lock().unwrap().requests.push(text.clone());
                buf.drain(..used);
                let (answer, close) = match response {
                    Some((r, close)) if target != "/probe" => (r.to_vec(), close),
                    _ => {
                        let mut a =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len())
                                .into_bytes();
                        a.extend_from_slice(text.as_bytes());
                        (a, false)
                    }
                };
                if std::mem::take(&mut answered_early) {
                    continue;
                }
                if conn.write_all(&answer).is_err() || close {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                seen.lock()
                    .unwrap()
                    .errors
                    .push(format!("{e} in {:?}", String::from_utf8_lossy(&buf)));
                return;
            }
        }
        if !answered_early {
            if let Ok(Some((line, _, _))) = strict_head(&buf) {
                if line.starts_with("POST /early ") {
                    answered_early = true;
                    let a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly";
                    if conn.write_all(a).is_err() {
                        return;
                    }
                }
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if std::env::var("SMUG_DEBUG").is_ok() {
                    eprintln!("backend got {:?}", String::from_utf8_lossy(&buf));
                }
            }
        }
    }
}

/// A response as the client read it: status and body, or `cut` when the connection ended
/// within its body.
#[derive(Debug, PartialEq)]
enum Got {
    Answer(u16, String),
    Cut(u16),
}

/// Read the responses on `c` until `want` have come (or, with `want` None, until it closes);
/// and whether it closed. 1xx responses are listed too. `head_of`: the n-th response answers a
/// HEAD request.
fn read_responses(
    c: &mut TcpStream,
    want: Option<usize>,
    buf: &mut Vec<u8>,
) -> Result<(Vec<Got>, bool), String> {
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    let mut eof = false;
    let mut chunk = [0u8; 65536];
    loop {
        loop {
            let parsed = strict_message(buf, Framing::Close, false, eof);
            let status = |line: &str| {
                line.split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            };
            match parsed {
                Ok(Some(((line, _, _), body, used))) => {
                    let s = status(&line);
                    got.push(Got::Answer(s, String::from_utf8_lossy(&body).into_owned()));
                    buf.drain(..used);
                }
                Ok(None) if eof && !buf.is_empty() => {
                    let line = String::from_utf8_lossy(buf)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    got.push(Got::Cut(status(&line)));
                    buf.clear();
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(format!(
                        "the proxy sent a malformed response ({e}): {:?}",
                        String::from_utf8_lossy(buf)
                    ));
                }
            }
        }
        if eof || want.is_some_and(|w| got.len() >= w) {
            return Ok((got, eof));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let late = || {
            format!(
                "no answer (or close) within {T:?}; got {got:?} and {:?}",
                String::from_utf8_lossy(buf)
            )
        };
        if left.is_zero() {
            return Err(late());
        }
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut chunk) {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => eof = true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(late()),
            Err(e) => return Err(format!("reading from the proxy: {e}; got {got:?}")),
        }
    }
}

/// A probe on the same connection: proves the proxy and the backend still agree on where
/// each message begins (it gets its own answer, not a leftover).
/// A probe request and its answer.
type Probe = (&'static [u8], &'static str);
/// One without a body (orchd's own client serves it).
const PROBE: Probe = (
    b"GET /probe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "GET /probe body=",
);
/// One with a body (hyper's client serves it).
const POST_PROBE: Probe = (
    b"POST /probe HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    "POST /probe body=x",
);

/// What the client must get for a row: these responses, then the connection closed
/// (`Closed`) or still in step (`Open`: the probe is answered in turn).
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    Closed,
    Open,
}

/// Send `input` (then, if given, `then` after the first answer) and check the client got
/// `expect` and the connection ended as `after` says.
fn exchange(
    front: SocketAddr,
    input: &[u8],
    then: Option<&[u8]>,
    expect: &[Got],
    after: After,
    probe: Probe,
) -> Result<(), String> {
    let mut c = TcpStream::connect(front).unwrap();
    c.write_all(input).unwrap();
    let mut buf = Vec::new();
    let mut got = Vec::new();
    if let Some(then) = then {
        let (first, _) = read_responses(&mut c, Some(1), &mut buf)?;
        got.extend(first);
        c.write_all(then).unwrap();
    }
    let want = expect.len() - got.len();
    let (rest, mut closed) = read_responses(&mut c, Some(want), &mut buf)?;
    got.extend(rest);
    if after == After::Open && !closed {
        // A write may fail if the proxy closed meanwhile: that shows in what is read.
        let _ = c.write_all(probe.0);
    }
    let (rest, eof) =
        read_responses(&mut c, None, &mut buf).map_err(|e| format!("after {got:?}: {e}"))?;
    got.extend(rest);
    closed |= eof;
    let mut wanted: Vec<_> = expect
        .iter()
        .map(|g| match g {
            Got::Answer(s, b) => Got::Answer(*s, b.clone()),
            Got::Cut(s) => Got::Cut(*s),
        })
        .collect();
    if after == After::Open {
        wanted.push(Got::Answer(200, probe.1.into()));
    }
    let dropped = wanted == [Got::Cut(0)] && (got.is_empty() || matches!(got[..], [Got::Cut(_)]));
    let same = dropped
        || got.len() == wanted.len()
            && got.iter().zip(&wanted).all(|(g, w)| match (g, w) {
                // "*": any body (orchd's or hyper's own text for a refusal).
                (Got::Answer(s, _), Got::Answer(t, b)) if b == "*" => s == t,
                _ => g == w,
            });
    if !same {
        return Err(format!("got {got:?}, want {wanted:?}"));
    }
    assert!(closed);
    Ok(())
}

fn ok(body: &str) -> Got {
    Got::Answer(200, body.into())
}

fn refused(status: u16) -> Got {
    Got::Answer(status, "*".into())
}

/// One hostile input and the decision the proxy must take.
struct Row {
    what: &'static str,
    input: &'static [u8],
    /// Sent after the first response (the body of an `Expect: 100-continue` request, or the
    /// rest of one the backend answered early).
    then: Option<&'static [u8]>,
    expect: Vec<Got>,
    after: After,
    /// The requests the backend must see, in order (the probe's added for `Open`).
    backend: &'static [&'static str],
}

/// Every row's input sent on a new connection; every failure listed at the end.
fn run_rows(rows: Vec<Row>, front: SocketAddr, seen: &Mutex<Seen>) {
    let mut failures = Vec::new();
    for row in rows {
        let before = seen.lock().unwrap().requests.len();
        let mut result = exchange(front, row.input, row.then, &row.expect, row.after, PROBE);
        let mut want: Vec<String> = row.backend.iter().map(|s| s.to_string()).collect();
        if row.after == After::Open {
            want.push(PROBE.1.into());
        }
        let got = seen.lock().unwrap().requests[before..].to_vec();
        let errors = std::mem::take(&mut seen.lock().unwrap().errors);
        if !errors.is_empty() {
            result = result.and(Err(format!(
                "the backend refused what it was sent: {errors:?}"
            )));
        }
        if result.is_ok() && got != want {
            result = Err(format!("the backend saw {got:?}, want {want:?}"));
        }
        if let Err(e) = result {
            failures.push(format!("{}: {e}", row.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn row(
    what: &'static str,
    input: &'static [u8],
    expect: Vec<Got>,
    after: After,
    backend: &'static [&'static str],
) -> Row {
    Row {
        what,
        input,
        then: None,
        expect,
        after,
        backend,
    }
}

#[test]
fn hostile_requests_are_refused_or_passed_on_with_one_meaning() {
    let (backend, seen) = recording_backend(None);
    let (_rt, proxy) = proxy_to(backend);
    use After::*;
    let long_extension: &'static [u8] = format!(
        "POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
        "x".repeat(20_000)
    )
    .into_bytes()
    .leak();
    let rows = vec![
        // Both framings: RFC 9112 §6.3 lets a server take the chunked one, drop the length
        // and close after; hyper does, so the pipelined request is never read.
        row(
            "Content-Length and Transfer-Encoding",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![ok("POST /a body=")],
            Closed,
            &["POST /a body="],
        ),
        row(
            "Transfer-Encoding before Content-Length",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 41\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![ok("POST /a body=")],
            Closed,
            &["POST /a body="],
        ),
        row(
            "Content-Length: 5, 5",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "Content-Length 5 twice",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            vec![ok("POST /a body=hello")],
            Open,
            &["POST /a body=hello"],
        ),
        row(
            "Content-Length: 0, 0 without a body",
            b"GET /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0, 0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "Content-Length: 5, 6",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "Content-Length 5 and 6",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row("Content-Length: +5", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", vec![refused(400)], Closed, &[]),
        row("Content-Length: -1", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", vec![refused(400)], Closed, &[]),
        row("Content-Length: 0x5", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello", vec![refused(400)], Closed, &[]),
        row(
            "Content-Length over u64",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551616\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "Transfer-Encoding: chunked, identity",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "Transfer-Encoding: identity, chunked",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            vec![refused(501)],
            Closed,
            &[],
        ),
        row(
            "Transfer-Encoding: gzip, chunked",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            vec![refused(501)],
            Closed,
            &[],
        ),
        row(
            "Transfer-Encoding chunked twice",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            vec![refused(501)],
            Closed,
            &[],
        ),
        row(
            "Transfer-Encoding: gzip",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nhello",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "Transfer-Encoding: chunked in HTTP/1.0",
            b"POST /a HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "Transfer-Encoding: Chunked (case)",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            vec![ok("POST /a body=hello")],
            Open,
            &["POST /a body=hello"],
        ),
        row(
            "obs-fold",
            b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "obs-fold hiding a Transfer-Encoding",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nX-A: a\r\n\tTransfer-Encoding: chunked\r\n\r\nhello",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "bare LF line endings",
            b"POST /lf HTTP/1.1\nHost: t\nContent-Length: 5\n\nhello",
            vec![ok("POST /lf body=hello")],
            Open,
            &["POST /lf body=hello"],
        ),
        row("bare CR", b"GET /a HTTP/1.1\rHost: t\r\n\r\n", vec![refused(400)], Closed, &[]),
        row("NUL in a value", b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n", vec![refused(400)], Closed, &[]),
        row("NUL in a name", b"GET /a HTTP/1.1\r\nHost: t\r\nX\0A: b\r\n\r\n", vec![refused(400)], Closed, &[]),
        row("control byte in a value", b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", vec![refused(400)], Closed, &[]),
        row("DEL in a value", b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\x7fb\r\n\r\n", vec![refused(400)], Closed, &[]),
        row("control byte in a name", b"GET /a HTTP/1.1\r\nHost: t\r\nX\x01A: b\r\n\r\n", vec![refused(400)], Closed, &[]),
        row(
            "space before the colon",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "space before the colon of Transfer-Encoding",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "a chunk size over u64",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "a chunk size with +",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "a chunk size with -",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "a chunk size with 0x",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "chunk extensions",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b;c\r\nhello\r\n1;q=\"x;y=z\"\r\n!\r\n0;end\r\n\r\n",
            vec![ok("POST /a body=hello!")],
            Open,
            &["POST /a body=hello!"],
        ),
        row(
            "a bare LF in a chunk extension",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nGET /smuggled HTTP/1.1\r\nhello\r\n0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row("a 20 KB chunk extension", long_extension, vec![refused(400)], Closed, &[]),
        row(
            "no CRLF after chunk data",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            vec![refused(400)],
            Closed,
            &[],
        ),
        row(
            "trailers",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\nContent-Length: 44\r\n\r\n",
            vec![ok("POST /a body=hello")],
            Open,
            &["POST /a body=hello"],
        ),
        row(
            "HTTP/1.0 keep-alive",
            b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            vec![ok("GET /k body=")],
            Open,
            &["GET /k body="],
        ),
        row("HTTP/1.0 without keep-alive", b"GET /k HTTP/1.0\r\n\r\n", vec![ok("GET /k body=")], Closed, &["GET /k body="]),
        row(
            "Connection: keep-alive, then close",
            b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\nConnection: close\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![ok("GET /a body=")],
            Closed,
            &["GET /a body="],
        ),
        row(
            "HTTP/1.0 keep-alive, then close",
            b"GET /a HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![ok("GET /a body=")],
            Closed,
            &["GET /a body="],
        ),
        row(
            "a request in a body, pipelined",
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![ok("POST /a body=GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"), ok("GET /b body=")],
            Open,
            &["POST /a body=GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n", "GET /b body="],
        ),
        row(
            "a request in a chunked body, pipelined",
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n23\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
            vec![ok("POST /a body=GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"), ok("GET /b body=")],
            Open,
            &["POST /a body=GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n", "GET /b body="],
        ),
        Row {
            what: "Expect: 100-continue",
            input: b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            then: Some(b"hello"),
            expect: vec![Got::Answer(100, String::new()), ok("POST /c body=hello")],
            after: Open,
            backend: &["POST /c body=hello"],
        },
        Row {
            what: "an answer before the request's body ends",
            input: b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 41\r\n\r\nhello",
            then: Some(b" GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"),
            expect: vec![ok("early")],
            after: Open,
            backend: &["POST /early body=hello GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"],
        },
    ];
    run_rows(rows, proxy.listen, &seen);
    let seen = seen.lock().unwrap();
    assert!(
        seen.errors.is_empty(),
        "the backend was sent what a strict parser refuses: {:?}",
        seen.errors
    );
    assert!(
        !seen
            .requests
            .iter()
            .any(|r| r.split(' ').nth(1) == Some("/smuggled")),
        "a smuggled request reached the backend: {:?}",
        seen.requests
    );
}

/// The connection closed with a response cut short, or before any of it: a body that
/// turns out malformed after its head was passed on. (Which one depends on whether the
/// proxy had written the head when the bad bytes came.)
fn dropped() -> Got {
    Got::Cut(0)
}

/// One hostile response and what the client must get for it, through both of the proxy's
/// clients: orchd's own (a request without a body) and hyper's (a request with one).
struct ResponseRow {
    what: &'static str,
    response: &'static [u8],
    /// The backend closes the connection after it.
    close: bool,
    expect: Got,
    after: After,
}

fn response_row(
    what: &'static str,
    response: &'static [u8],
    expect: Got,
    after: After,
) -> ResponseRow {
    ResponseRow {
        what,
        response,
        close: false,
        expect,
        after,
    }
}

#[test]
fn hostile_responses_are_refused_or_passed_on_with_one_meaning() {
    use After::*;
    let long_extension: &'static [u8] = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;{}\r\nhello\r\n0\r\n\r\n",
        "x".repeat(20_000)
    )
    .into_bytes()
    .leak();
    let chunked_head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bad_chunks = [
        "10000000000000001\r\nx\r\n0\r\n\r\n",
        "+2\r\nhi\r\n0\r\n\r\n",
        "-2\r\nhi\r\n0\r\n\r\n",
        "0x2\r\nhi\r\n0\r\n\r\n",
        "2;a\nb\r\nhi\r\n0\r\n\r\n",
        "2\r\nhiXX0\r\n\r\n",
        "2\nhi\r\n0\r\n\r\n",
    ];
    let mut rows = vec![
        response_row(
            "Content-Length and Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            ok("hi"),
            Open,
        ),
        response_row("Content-Length: 2, 2", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi", ok("hi"), Open),
        response_row(
            "Content-Length 2 twice",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
            ok("hi"),
            Open,
        ),
        response_row("Content-Length: 2, 3", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nhi!", refused(502), Open),
        response_row(
            "Content-Length 2 and 3",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!",
            refused(502),
            Open,
        ),
        response_row("Content-Length: +2", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi", refused(502), Open),
        response_row("Content-Length: -1", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhi", refused(502), Open),
        response_row("Content-Length: 0x2", b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nhi", refused(502), Open),
        ResponseRow {
            what: "Transfer-Encoding: chunked, identity",
            response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            close: true,
            expect: refused(502),
            after: Open,
        },
        response_row(
            "Transfer-Encoding: identity, chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            refused(502),
            Open,
        ),
        ResponseRow {
            what: "Transfer-Encoding: gzip",
            response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhi",
            close: true,
            expect: refused(502),
            after: Open,
        },
        response_row(
            "Transfer-Encoding chunked twice",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            refused(502),
            Open,
        ),
        response_row(
            "Transfer-Encoding: chunked in HTTP/1.0",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            refused(502),
            Open,
        ),
        response_row("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nhi", refused(502), Open),
        response_row(
            "space before the colon",
            b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nhi",
            refused(502),
            Open,
        ),
        response_row("NUL in a value", b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nhi", refused(502), Open),
        response_row(
            "control byte in a value",
            b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nhi",
            refused(502),
            Open,
        ),
        response_row("NUL in a name", b"HTTP/1.1 200 OK\r\nX\0A: b\r\nContent-Length: 2\r\n\r\nhi", refused(502), Open),
        response_row("NUL in the reason", b"HTTP/1.1 200 O\0K\r\nContent-Length: 2\r\n\r\nhi", refused(502), Open),
        response_row("a four-digit status", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nhi", refused(502), Open),
        response_row("bare LF line endings", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", ok("hi"), Open),
        response_row(
            "chunk extensions",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b;c\r\nhi\r\n1;q=\"x;y\"\r\n!\r\n0;end\r\n\r\n",
            ok("hi!"),
            Open,
        ),
        response_row("a 20 KB chunk extension", long_extension, dropped(), Closed),
        response_row(
            "trailers",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\nContent-Length: 9\r\n\r\n",
            ok("hi"),
            Open,
        ),
        response_row(
            "HTTP/1.0 keep-alive",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
            ok("hi"),
            Open,
        ),
        response_row("HTTP/1.0 without keep-alive", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", ok("hi"), Open),
        ResponseRow {
            what: "a body until the close",
            response: b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
            close: true,
            expect: ok("until the close"),
            after: Open,
        },
        response_row(
            "a second response after the body",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
            ok("hi"),
            Open,
        ),
        response_row(
            "a body after a 204",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\nsmuggled",
            Got::Answer(204, String::new()),
            Open,
        ),
        response_row(
            "interim answers",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
            ok("hi"),
            Open,
        ),
        response_row(
            "an upgrade nobody asked for",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            refused(502),
            Open,
        ),
        ResponseRow {
            what: "a body cut short",
            response: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhi",
            close: true,
            expect: dropped(),
            after: Closed,
        },
    ];
    for chunk in bad_chunks {
        let response = format!("{chunked_head}{chunk}").into_bytes().leak();
        rows.push(response_row(chunk, response, dropped(), Closed));
    }
    let (_, seen) = recording_backend(None);
    let (_rt, proxy) = proxy_to(SocketAddr::from(([127, 0, 0, 1], 9)));
    let mut failures = Vec::new();
    for row in rows {
        let (backend, _) = recording_backend(Some((row.response, row.close)));
        proxy.switch(Some(Backend {
            slot: 0,
            addr: backend,
        }));
        let lean = b"GET /r HTTP/1.1\r\nHost: t\r\n\r\n";
        let pooled = b"POST /r HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx";
        for (path, request, probe) in [
            ("no body", &lean[..], PROBE),
            ("a body", &pooled[..], POST_PROBE),
        ] {
            let expect = [match &row.expect {
                Got::Answer(s, b) => Got::Answer(*s, b.clone()),
                Got::Cut(s) => Got::Cut(*s),
            }];
            if let Err(e) = exchange(proxy.listen, request, None, &expect, row.after, probe) {
                failures.push(format!("{:?} (request with {path}): {e}", row.what));
            }
        }
    }
    drop(seen);
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
