//! The http proxy's protocol handling against the real test backend: `Host` kept,
//! `X-Forwarded-For`/`X-Forwarded-Proto` added, upgrades tunnelled, HTTP/2 clients (h2c prior
//! knowledge) served, an IPv6 front, and a kept-alive client connection following a switch.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

const T: Duration = Duration::from_secs(30);

/// orchd with one http-proxied service (the python test backend) listening on `host` (an IP
/// literal, `[::1]` for IPv6) at a free port; waits until the proxy serves release v1 and returns
/// the listen address. The service ports come from one `free_ports` call (no two alike); the
/// front port is found free on `host` itself (free on 127.0.0.1 says nothing about ::1) and is
/// neither of them.
fn proxied(host: &str) -> (Setup, Orchd, String) {
    let [a, b] = free_ports(2)[..] else {
        unreachable!("free_ports(2) returns two ports")
    };
    let port = loop {
        let p = std::net::TcpListener::bind(format!("{host}:0"))
            .and_then(|l| l.local_addr())
            .expect("a free port on the front's address")
            .port();
        if p != a && p != b {
            break p;
        }
    };
    let listen = format!("{host}:{port}");
    let s = Setup::new();
    s.unit(
        "api",
        &format!(
            "exec = [\"python3\", \"{}/tests/support/backend.py\", \"{}\"]\nrelease = \"v1\"\n[health]\nhttp = \"http://127.0.0.1:{{port}}/health\"\ninterval = \"50ms\"\nstart_period = \"10s\"\n[deploy]\nlisten = \"{listen}\"\nports = [{}, {}]\nwatch = \"200ms\"\ndrain = \"1s\"\n",
            env!("CARGO_MANIFEST_DIR"),
            s.path().display(),
            a,
            b,
        ),
    );
    let o = s.start();
    o.wait_for("api healthy", T, || o.status("api")["health"] == "healthy");
    (s, o, listen)
}

/// One HTTP/1.1 request on a new connection (`Connection: close`): status line and body.
fn request(addr: &str, head: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(T)).unwrap();
    write!(s, "{head}Connection: close\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (headers, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    (
        headers.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[test]
fn host_is_kept_and_forwarded_headers_are_added() {
    let (_s, _o, listen) = proxied("127.0.0.1");
    let (status, body) = request(&listen, "GET /headers HTTP/1.1\r\nHost: shop.example\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let h: Value = serde_json::from_str(&body).expect("JSON headers");
    assert_eq!(h["host"], "shop.example");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    // A client behind another proxy: its chain is kept and extended.
    let (_, body) = request(
        &listen,
        "GET /headers HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 10.0.0.7\r\n",
    );
    let h: Value = serde_json::from_str(&body).expect("JSON headers");
    assert_eq!(h["x-forwarded-for"], "10.0.0.7, 127.0.0.1");
}

#[test]
fn upgrades_are_tunnelled_both_ways() {
    let (_s, _o, listen) = proxied("127.0.0.1");
    let mut s = TcpStream::connect(&listen).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    for msg in ["ping\n", "a longer message through the tunnel\n"] {
        s.write_all(msg.as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, msg);
    }
}

#[test]
fn http2_clients_are_served() {
    let (_s, _o, listen) = proxied("127.0.0.1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (version, body) = rt.block_on(async {
        use http_body_util::{BodyExt, Empty};
        let io =
            hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(&listen).await.unwrap());
        let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            io,
        )
        .await
        .expect("h2 handshake with the proxy");
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{listen}/"))
            .body(Empty::new())
            .unwrap();
        let resp = send.send_request(req).await.expect("h2 request");
        let version = resp.version();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (version, String::from_utf8_lossy(&body).into_owned())
    });
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(body, "v1\n");
}

/// The proxy tells HTTP/2 from HTTP/1 by peeking at the first bytes. A prior-knowledge client
/// whose preface arrives in pieces must still get HTTP/2, and HTTP/1 requests whose first byte
/// arrives alone HTTP/1, whether that byte rules HTTP/2 out ("G") or not ("P"). (The pauses
/// make the pieces arrive apart; the answers must be right either way.)
#[test]
fn a_protocol_is_recognised_from_its_first_bytes_however_they_arrive() {
    let (_s, _o, listen) = proxied("127.0.0.1");
    let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut c = TcpStream::connect(&listen).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    c.write_all(&preface[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.write_all(&preface[5..]).unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    let mut frame = [0u8; 9];
    c.read_exact(&mut frame)
        .expect("the server's first HTTP/2 frame");
    assert_eq!(
        frame[3], 4,
        "an HTTP/2 server starts with SETTINGS: {frame:?}"
    );

    // "G" can only be HTTP/1; "P" could still be the preface, so the proxy reads on.
    for (head, body) in [
        (&b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"[..], "v1\n"),
        (
            &b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"[..],
            "hello",
        ),
    ] {
        let mut c = TcpStream::connect(&listen).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        c.write_all(&head[..1]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.write_all(&head[1..]).unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("HTTP/1.1 200 OK"), "{all}");
        assert!(all.ends_with(&format!("\r\n\r\n{body}")), "{all}");
    }
}

#[test]
fn an_ipv6_front_serves() {
    assert!(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "this test needs an IPv6 loopback (::1) on this machine (CI has one)"
    );
    let (_s, _o, listen) = proxied("[::1]");
    let (status, body) = request(&listen, "GET / HTTP/1.1\r\nHost: t\r\n");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "v1\n")
    );
}

/// One response off a kept-alive connection: its status line and its body (by Content-Length).
fn read_response(r: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut line = String::new();
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (status.trim_end().to_owned(), body)
}

/// One request on a kept-alive connection: the body.
fn get_on(c: &mut TcpStream, r: &mut BufReader<TcpStream>) -> String {
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    String::from_utf8(read_response(r).1).unwrap()
}

#[test]
fn a_kept_alive_connection_follows_the_switch_on_its_next_request() {
    let (_s, o, listen) = proxied("127.0.0.1");
    let mut c = TcpStream::connect(&listen).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    assert_eq!(get_on(&mut c, &mut r), "v1\n");
    assert_eq!(get_on(&mut c, &mut r), "v1\n");
    let out = o.ctl(&["deploy", "api", "--release", "v2"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    // The same client connection: its next request goes to the new release.
    assert_eq!(get_on(&mut c, &mut r), "v2\n");
    let out = o.ctl(&["rollback", "api"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(get_on(&mut c, &mut r), "v1\n");
}

#[test]
fn large_bodies_pass_both_ways_on_a_kept_alive_connection() {
    let (_s, _o, listen) = proxied("127.0.0.1");
    let mut conn = TcpStream::connect(&listen).expect("connect to the proxy");
    conn.set_read_timeout(Some(T)).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut response = || read_response(&mut reader);
    // Several times over the same client connection (and so the same upstream connection):
    // an upload of 3 MiB echoed back, then a 5 MiB download, then a small request.
    for round in 0..3 {
        let upload: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        write!(
            conn,
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            upload.len()
        )
        .unwrap();
        conn.write_all(&upload).unwrap();
        let (status, body) = response();
        assert_eq!(status, "HTTP/1.1 200 OK", "round {round}");
        assert!(
            body == upload,
            "round {round}: the echo differs ({} bytes)",
            body.len()
        );
        let n = 5 * 1024 * 1024 + 7;
        write!(conn, "GET /big?n={n} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, body) = response();
        assert_eq!(status, "HTTP/1.1 200 OK", "round {round}");
        assert_eq!(body.len(), n, "round {round}");
        assert!(body.chunks(10).all(|c| b"0123456789".starts_with(c)));
        write!(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, body) = response();
        assert_eq!(
            (status.as_str(), body.as_slice()),
            ("HTTP/1.1 200 OK", &b"v1\n"[..])
        );
    }
}
