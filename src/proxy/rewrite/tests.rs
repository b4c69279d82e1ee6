//! The request rewrite on a table of heads, through both of its sinks: what orchd's own
//! client sends and what hyper's client is given must be the same fields.

use super::*;

/// A head's fields as `name: value` lines, sorted (hyper's map does not keep their order).
fn sorted(lines: impl Iterator<Item = String>) -> Vec<String> {
    let mut lines: Vec<String> = lines.collect();
    lines.sort();
    lines
}

/// The fields of a serialized head (after its request line), sorted; and its request line.
fn serialized_fields(head: &[u8]) -> (String, Vec<String>) {
    let text = std::str::from_utf8(head).unwrap();
    let text = text
        .strip_suffix("\r\n\r\n")
        .expect("a head ends with an empty line");
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap().to_owned();
    (request_line, sorted(lines.map(str::to_owned)))
}

fn map_fields(headers: &HeaderMap) -> Vec<String> {
    sorted(
        headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap())),
    )
}

/// What the row shows, the target, an upgrade, the request's fields, the backend's fields.
type Row<'a> = (
    &'a str,
    &'a str,
    bool,
    &'a [(&'a str, &'a str)],
    &'a [&'a str],
);

#[test]
fn both_forwarding_paths_rewrite_a_head_alike() {
    let client = ClientAddr::new("192.0.2.7:5000".parse().unwrap());
    let backend = Backend {
        slot: 1,
        addr: "127.0.0.1:8001".parse().unwrap(),
    };
    let rows: &[Row] = &[
        (
            "plain fields go on, forwarding fields added",
            "/a?b=1",
            false,
            &[("host", "shop.example"), ("accept", "a"), ("accept", "b")],
            &[
                "host: shop.example",
                "accept: a",
                "accept: b",
                "x-forwarded-for: 192.0.2.7",
                "x-forwarded-proto: http",
            ],
        ),
        (
            "hop-by-hop fields and those Connection names are dropped, Host never",
            "/",
            false,
            &[
                ("host", "t"),
                ("connection", "keep-alive, x-hop, host"),
                ("x-hop", "dropped"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("trailer", "x-t"),
                ("proxy-authorization", "Basic eA=="),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "h2c"),
                ("x-kept", "yes"),
            ],
            &[
                "host: t",
                "x-kept: yes",
                "x-forwarded-for: 192.0.2.7",
                "x-forwarded-proto: http",
            ],
        ),
        (
            "X-Forwarded-For values kept in order, empty ones left out; the proto is orchd's",
            "/",
            false,
            &[
                ("host", "t"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", ""),
                ("x-forwarded-for", " 10.0.0.2 "),
                ("x-forwarded-proto", "https"),
            ],
            &[
                "host: t",
                "x-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7",
                "x-forwarded-proto: http",
            ],
        ),
        (
            "an X-Forwarded-For that Connection names is hop-by-hop: only the client's address",
            "/",
            false,
            &[
                ("host", "t"),
                ("connection", "x-forwarded-for, x-forwarded-proto"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-proto", "https"),
            ],
            &[
                "host: t",
                "x-forwarded-for: 192.0.2.7",
                "x-forwarded-proto: http",
            ],
        ),
        (
            "without Host: the backend's address",
            "/x",
            false,
            &[("accept", "*/*")],
            &[
                "accept: */*",
                "host: 127.0.0.1:8001",
                "x-forwarded-for: 192.0.2.7",
                "x-forwarded-proto: http",
            ],
        ),
        (
            "without Host, an absolute target: its authority",
            "http://shop.example:8080/x?y=1",
            false,
            &[],
            &[
                "host: shop.example:8080",
                "x-forwarded-for: 192.0.2.7",
                "x-forwarded-proto: http",
            ],
        ),
        (
            "an upgrade keeps its first Connection and Upgrade fields, drops what they name",
            "/ws",
            true,
            &[
                ("host", "t"),
                ("connection", "Upgrade, x-hop"),
                ("upgrade", "websocket"),
                ("x-hop", "dropped"),
                ("connection", "keep-alive"),
                ("sec-websocket-key", "k"),
            ],
            &[
                "host: t",
                "connection: Upgrade, x-hop",
                "upgrade: websocket",
                "sec-websocket-key: k",
                "x-forwarded-for: 192.0.2.7",
                "x-forwarded-proto: http",
            ],
        ),
    ];
    for &(row, target, upgrade, fields, want) in rows {
        let mut req = Request::builder().method("GET").uri(target);
        for &(n, v) in fields {
            req = req.header(n, v);
        }
        let req = req.body(()).unwrap();
        let want = sorted(want.iter().map(|s| (*s).to_owned()));

        let mut head = Vec::new();
        let mut serialized = Serialized(&mut head);
        rewrite(
            req.headers(),
            req.uri(),
            upgrade,
            backend,
            &client,
            &mut serialized,
        );
        head.extend_from_slice(b"\r\n");
        let (_, lean) = serialized_fields(&[b"GET / HTTP/1.1\r\n", &head[..]].concat());
        assert_eq!(lean, want, "{row}: serialized");

        let mut headers = req.headers().clone();
        rewrite_fields(&mut headers, req.uri(), upgrade, backend, &client);
        assert_eq!(map_fields(&headers), want, "{row}: edited in place");

        if !upgrade {
            let (request_line, lean) = serialized_fields(&lean_head(&req, &client, backend));
            let path = req.uri().path_and_query().unwrap().as_str();
            assert_eq!(request_line, format!("GET {path} HTTP/1.1"), "{row}");
            assert_eq!(lean, want, "{row}: lean_head");
        }
    }
}
