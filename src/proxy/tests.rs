//! Tests of the http proxy against loopback test backends: retries, upgrades, the own client's
//! kept connection and framings, forwarding fields on both paths, idle clients, 503 without a
//! release.

use super::*;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::io::{BufRead, BufReader, Write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a test waits for the proxy.
const T: Duration = Duration::from_secs(10);

/// A test backend on a loopback port: `handle(n, connection)` serves its n-th connection
/// (from 0), each on a thread of its own.
fn serve(handle: fn(usize, std::net::TcpStream)) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().flatten().enumerate() {
            std::thread::spawn(move || handle(i, conn));
        }
    });
    addr
}

/// An http proxy on a loopback port the kernel picks, routing to `backend` if given.
async fn http_proxy(backend: Option<SocketAddr>) -> Proxy {
    let proxy = Proxy::bind(
        ([127, 0, 0, 1], 0).into(),
        ProxyMode::Http,
        "api",
        crate::guard::Parts::default(),
    )
    .await
    .unwrap();
    proxy.switch(backend.map(|addr| Backend { slot: 0, addr }));
    proxy
}

/// Send `request` (which asks for `Connection: close`) on a new connection; all the answer.
async fn exchange(front: SocketAddr, request: &[u8]) -> String {
    let mut c = TcpStream::connect(front).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(T, c.read_to_string(&mut all))
        .await
        .expect("the proxy answers within 10 s")
        .unwrap();
    all
}

/// A keep-alive HTTP/1.1 backend answering every request with 200 "ok\n".
fn backend() -> SocketAddr {
    serve(|_, conn| {
        let mut out = conn.try_clone().unwrap();
        let mut lines = BufReader::new(conn).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.is_empty()
                && out
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                    .is_err()
            {
                return;
            }
        }
    })
}

/// A backend that closes its first connection after reading the request, without a byte
/// of response, and answers later requests with their `Host`, `Accept` and
/// `X-Forwarded-For` lines, in the order they came.
fn backend_dropping_the_first_request() -> SocketAddr {
    serve(|i, conn| {
        let mut out = conn.try_clone().unwrap();
        let mut lines = BufReader::new(conn).lines();
        let mut seen = Vec::new();
        while let Some(Ok(line)) = lines.next() {
            if !line.is_empty() {
                let lower = line.to_ascii_lowercase();
                if ["host:", "accept:", "x-forwarded-for:"]
                    .iter()
                    .any(|h| lower.starts_with(h))
                {
                    seen.push(lower);
                }
                continue;
            }
            if i == 0 {
                return; // closes the connection: no response byte
            }
            let body = format!("{}\n", seen.join("|"));
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            if out.write_all(format!("{head}{body}").as_bytes()).is_err() {
                return;
            }
            seen.clear();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_upstream_closed_before_answering_is_retried_with_its_headers() {
    let proxy = http_proxy(Some(backend_dropping_the_first_request())).await;
    let answer = exchange(
        proxy.listen,
        b"GET / HTTP/1.1\r\nHost: shop.example\r\nAccept: text/html\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.7\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nhost: shop.example|accept: text/html|accept: */*|x-forwarded-for: 10.0.0.7, 127.0.0.1\n"),
        "{answer}"
    );
}

/// A backend that accepts any upgrade and then echoes what it reads.
fn upgrading_backend() -> SocketAddr {
    serve(|_, conn| {
        let mut out = conn.try_clone().unwrap();
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let head =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        let _ = std::io::copy(&mut reader, &mut out);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_tunnel_ends_when_its_proxy_stops() {
    let proxy = http_proxy(Some(upgrading_backend())).await;
    let mut c = TcpStream::connect(proxy.listen).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the upgrade: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    c.write_all(b"ping\n").await.unwrap();
    let n = tokio::time::timeout(T, c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping\n", "the tunnel echoes");
    drop(proxy);
    let n = tokio::time::timeout(T, c.read(&mut buf))
        .await
        .expect("the tunnel is closed within 10 s of the proxy's end")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing more comes through the tunnel");
}

/// A backend answering by path, with the index of its connection in `x-conn`:
/// `/chunked` a chunked body, `/head` (HEAD) a length and no body, `/echo` the request's
/// fields as its body, `/early` a 103 before its answer, `/big` 100 000 bytes, `/close` an
/// answer that closes the connection, `/then-close` one that closes it unannounced, `/bad`
/// a malformed head, anything else a body cut short.
fn backend_by_path() -> SocketAddr {
    serve(|i, conn| {
        let mut out = conn.try_clone().unwrap();
        let mut reader = BufReader::new(conn);
        let mut fields = Vec::new();
        let mut target = String::new();
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            let line = std::mem::take(&mut line).trim_end().to_owned();
            if target.is_empty() {
                target = line;
                continue;
            }
            if !line.is_empty() {
                fields.push(line.to_ascii_lowercase());
                continue;
            }
            // A request body (its length given): read, and shown by `/echo`.
            let length = fields
                .iter()
                .find_map(|f| f.strip_prefix("content-length: "))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            let mut received = vec![0; length];
            if std::io::Read::read_exact(&mut reader, &mut received).is_err() {
                return;
            }
            let target_path = target.split(' ').nth(1).unwrap_or("");
            let path = target_path.split('?').next().unwrap_or("").to_owned();
            let answer = match path.as_str() {
                "/chunked" => format!(
                    "HTTP/1.1 200 OK\r\nx-conn: {i}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                ),
                "/head" => {
                    format!("HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 5\r\n\r\n")
                }
                "/echo" => {
                    let mut body = format!("{target}|{}", fields.join("|"));
                    if length > 0 {
                        body.push_str("|body: ");
                        body.push_str(&String::from_utf8_lossy(&received));
                    }
                    format!(
                        "HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
                "/close" => format!(
                    "HTTP/1.1 200 OK\r\nx-conn: {i}\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
                ),
                "/bad" => "HTTP/1.1 abc\r\n\r\n".to_owned(),
                "/early" => format!(
                    "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 5\r\n\r\nlater"
                ),
                "/big" => format!(
                    "HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 100000\r\n\r\n{}",
                    "b".repeat(100_000)
                ),
                "/slow" => {
                    // A service taking its time: longer than two idle periods.
                    std::thread::sleep(IDLE * 3);
                    format!("HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 4\r\n\r\nslow")
                }
                "/then-close" => {
                    format!("HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 2\r\n\r\nok")
                }
                _ => format!("HTTP/1.1 200 OK\r\nx-conn: {i}\r\nContent-Length: 10\r\n\r\nabc"),
            };
            let kept = ["/chunked", "/head", "/echo", "/early", "/big", "/slow"];
            if out.write_all(answer.as_bytes()).is_err() || !kept.contains(&path.as_str()) {
                // `/then-close` too, although its answer says nothing about it: as a
                // server's keep-alive timeout closes a connection between requests.
                return;
            }
            target.clear();
            fields.clear();
        }
    })
}

/// A keep-alive client connection to the proxy (hyper's client, as a test tool).
async fn client_connection(
    front: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    watched_client_connection(front).await.0
}

/// [`client_connection`], and its task, which ends when the connection is closed.
async fn watched_client_connection(
    front: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = TcpStream::connect(front).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

/// Status, `x-conn`, `content-length` and body of a request on `sender`, or the error.
async fn ask(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(u16, String, String, String), String> {
    let exchange = async {
        // Ready first: hyper's client refuses a request while the last one is finishing.
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let field = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (status, conn, length) = (
            resp.status().as_u16(),
            field("x-conn"),
            field("content-length"),
        );
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            conn,
            length,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    };
    tokio::time::timeout(T, exchange)
        .await
        .expect("an answer within 10 s")
}

/// [`ask`] a request without a body.
async fn ask_bodyless(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
) -> Result<(u16, String, String, String), String> {
    ask(
        sender,
        get(method, path).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

fn get(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.example")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_body_share_one_upstream_connection_whatever_the_framing() {
    let proxy = http_proxy(Some(backend_by_path())).await;
    let mut c = client_connection(proxy.listen).await;
    let chunked = ask_bodyless(&mut c, "GET", "/chunked").await;
    assert_eq!(
        chunked,
        Ok((200, "0".into(), "".into(), "hello world".into()))
    );
    let head = ask_bodyless(&mut c, "HEAD", "/head").await;
    assert_eq!(head, Ok((200, "0".into(), "5".into(), "".into())));
    let echo = get("DELETE", "/echo?x=1")
        .header("connection", "keep-alive, x-hop, host")
        .header("x-hop", "dropped")
        .header("keep-alive", "timeout=5")
        .header("accept", "a")
        .header("x-forwarded-for", "10.0.0.1")
        .header("accept", "b")
        .header("x-forwarded-for", "10.0.0.2")
        .header("x-forwarded-proto", "https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, conn, _, fields) = ask(&mut c, echo).await.unwrap();
    assert_eq!((status, conn.as_str()), (200, "0"));
    assert_eq!(
        fields,
        "DELETE /echo?x=1 HTTP/1.1|host: shop.example|accept: a|accept: b|x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.1|x-forwarded-proto: http"
    );
    let close = ask_bodyless(&mut c, "GET", "/close").await;
    assert_eq!(close, Ok((200, "0".into(), "2".into(), "ok".into())));
    // The backend closed that one: the next request goes on a new upstream connection.
    let next = ask_bodyless(&mut c, "GET", "/chunked").await;
    assert_eq!(next, Ok((200, "1".into(), "".into(), "hello world".into())));
    assert_eq!(proxy.stats().open(0), 0, "every request is counted out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_gets_the_same_forwarding_fields() {
    // Through hyper's client and the worker's pool, not orchd's own client.
    let proxy = http_proxy(Some(backend_by_path())).await;
    let mut c = client_connection(proxy.listen).await;
    let post = get("POST", "/echo")
        .header("connection", "keep-alive, x-hop, host")
        .header("x-hop", "dropped")
        .header("x-forwarded-for", "")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-forwarded-proto", "https")
        .body(Full::new(Bytes::from_static(b"hi")))
        .unwrap();
    let (status, _, _, fields) = ask(&mut c, post).await.unwrap();
    assert_eq!(status, 200);
    let fields: Vec<&str> = fields.split('|').collect();
    assert_eq!(fields[0], "POST /echo HTTP/1.1");
    assert_eq!(fields.last(), Some(&"body: hi"));
    for expected in [
        "host: shop.example",
        "x-forwarded-for: 10.0.0.1, 127.0.0.1",
        "x-forwarded-proto: http",
    ] {
        assert!(fields.contains(&expected), "{expected:?} in {fields:?}");
    }
    assert!(
        !fields
            .iter()
            .any(|f| f.starts_with("x-hop") || f.starts_with("connection")),
        "{fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_answer_is_a_502_or_a_cut_connection_and_the_proxy_serves_on() {
    let proxy = http_proxy(Some(backend_by_path())).await;
    let mut c = client_connection(proxy.listen).await;
    // A POST (without a body) is not retried: the 502 comes at once.
    let bad = ask_bodyless(&mut c, "POST", "/bad").await;
    assert_eq!(
        bad,
        Ok((
            502,
            "".into(),
            "27".into(),
            "the service did not answer\n".into()
        ))
    );
    // The same client connection goes on.
    let ok = ask_bodyless(&mut c, "GET", "/chunked").await;
    assert_eq!(ok, Ok((200, "1".into(), "".into(), "hello world".into())));
    // A body cut short reaches the client as a cut connection, never as a whole answer.
    let cut = ask_bodyless(&mut c, "GET", "/cut").await;
    assert!(cut.is_err(), "{cut:?}");
    let mut c = client_connection(proxy.listen).await;
    let ok = ask_bodyless(&mut c, "GET", "/chunked").await;
    assert_eq!(ok.map(|r| r.3), Ok("hello world".into()));
    assert_eq!(proxy.stats().open(0), 0, "every request is counted out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_upstream_connection_the_backend_closed_is_replaced_unnoticed() {
    let proxy = http_proxy(Some(backend_by_path())).await;
    let mut c = client_connection(proxy.listen).await;
    let first = ask_bodyless(&mut c, "GET", "/then-close").await;
    assert_eq!(first, Ok((200, "0".into(), "2".into(), "ok".into())));
    // Whether the proxy sees the close before this request or only when its answer does
    // not come, the request is served on a new connection.
    let second = ask_bodyless(&mut c, "GET", "/then-close").await;
    assert_eq!(second, Ok((200, "1".into(), "2".into(), "ok".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_are_skipped_and_deploy_buffering_keeps_the_connection() {
    let proxy = http_proxy(Some(backend_by_path())).await;
    let mut c = client_connection(proxy.listen).await;
    let early = ask_bodyless(&mut c, "GET", "/early").await;
    assert_eq!(early, Ok((200, "0".into(), "5".into(), "later".into())));
    // During a deploy a small answer is read whole before it is passed on (more than one
    // read here); its connection then serves the next request.
    proxy.stats().set_guarded(true);
    let (status, conn, length, body) = ask_bodyless(&mut c, "GET", "/big").await.unwrap();
    assert_eq!(
        (status, conn.as_str(), length.as_str()),
        (200, "0", "100000")
    );
    assert!(body.len() == 100_000 && body.bytes().all(|b| b == b'b'));
    let next = ask_bodyless(&mut c, "GET", "/chunked").await;
    assert_eq!(next, Ok((200, "0".into(), "".into(), "hello world".into())));
    assert_eq!(proxy.stats().open(0), 0, "every request is counted out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_gets_the_backends_address() {
    let backend = backend_by_path();
    let proxy = http_proxy(Some(backend)).await;
    let answer = exchange(proxy.listen, b"GET /echo HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 "), "{answer}");
    assert!(
        answer.ends_with(&format!(
            "\r\n\r\nGET /echo HTTP/1.1|host: {backend}|x-forwarded-for: 127.0.0.1|x-forwarded-proto: http"
        )),
        "{answer}"
    );
}

/// Read from `c` until it is closed (true) or 10 s pass (false); what came.
async fn read_to_close(c: &mut TcpStream) -> (bool, String) {
    let mut all = Vec::new();
    let closed = tokio::time::timeout(T, c.read_to_end(&mut all))
        .await
        .is_ok();
    (closed, String::from_utf8_lossy(&all).into_owned())
}

/// The idle period of the proxy in the idle test.
const IDLE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_clients_are_closed_but_busy_ones_never() {
    let proxy = Proxy::bind_with_idle(
        ([127, 0, 0, 1], 0).into(),
        ProxyMode::Http,
        "api",
        IDLE,
        crate::guard::Parts::default(),
    )
    .await
    .unwrap();
    proxy.switch(Some(Backend {
        slot: 0,
        addr: backend_by_path(),
    }));
    // Connected, and never a byte.
    let mut silent = TcpStream::connect(proxy.listen).await.unwrap();
    // A request head begun and never finished.
    let mut unfinished = TcpStream::connect(proxy.listen).await.unwrap();
    unfinished
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    // Requests more often than the idle period, for four periods: never cut.
    let (mut busy, busy_conn) = watched_client_connection(proxy.listen).await;
    let started = tokio::time::Instant::now();
    while started.elapsed() < IDLE * 4 {
        let r = ask_bodyless(&mut busy, "GET", "/chunked").await;
        assert_eq!(r, Ok((200, "0".into(), "".into(), "hello world".into())));
        tokio::time::sleep(IDLE / 2).await;
    }
    // A request answered after three periods, and another on the same connection most of
    // a period later: the idle clock starts at the end of an answer, not at its request.
    let (mut slow, slow_conn) = watched_client_connection(proxy.listen).await;
    let r = ask_bodyless(&mut slow, "GET", "/slow").await;
    assert_eq!(r.map(|r| r.3), Ok("slow".into()));
    tokio::time::sleep(IDLE * 9 / 10).await;
    let r = ask_bodyless(&mut slow, "GET", "/chunked").await;
    assert_eq!(r.map(|r| r.3), Ok("hello world".into()));
    assert_eq!(read_to_close(&mut silent).await, (true, String::new()));
    let (closed, answer) = read_to_close(&mut unfinished).await;
    assert!(closed && !answer.contains("200"), "{answer}");
    // Left idle now, the connections are closed.
    tokio::time::timeout(T, busy_conn)
        .await
        .expect("the idle busy connection is closed within 10 s")
        .unwrap();
    tokio::time::timeout(T, slow_conn)
        .await
        .expect("the idle slow connection is closed within 10 s")
        .unwrap();
    assert_eq!(proxy.stats().open(0), 0, "every request is counted out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_release_requests_get_503_and_the_front_stays_open() {
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let proxy = http_proxy(None).await;
    let answer = exchange(proxy.listen, GET).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nno release of this service is running\n"),
        "{answer}"
    );
    proxy.switch(Some(Backend {
        slot: 0,
        addr: backend(),
    }));
    let answer = exchange(proxy.listen, GET).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    assert_eq!(proxy.stats().open(0), 0, "the request is counted out");
}
