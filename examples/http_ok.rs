//! A fast HTTP/1.1 backend for the proxy benchmarks (issue 6): answers every request with
//! 200 and the body "$ORCH_RELEASE\n" ("ok\n" without it), keep-alive, `X-Release` header.
//!
//! usage: http_ok [PORT]        (default: $PORT, as orchd sets it for a slot)
//!
//! Run by `bench/run.sh deploy proxy rollback` as the `api` service's release. SIGTERM has its
//! default action: the process dies at once and the kernel closes every open connection, like a
//! server that drops its keep-alive connections abruptly when stopped (the worst case for a
//! proxy during a deploy). Two tokio worker threads (the machine has 2 cores).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse()?,
        None => std::env::var("PORT")?.parse()?,
    };
    let release = std::env::var("ORCH_RELEASE").unwrap_or_else(|_| "ok".into());
    let body = Bytes::from(format!("{release}\n"));
    let release = http::HeaderValue::from_str(&release)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        println!("http_ok listening on {port}");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (body, release) = (body.clone(), release.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let mut r = Response::new(Full::new(body.clone()));
                    r.headers_mut().insert("x-release", release.clone());
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
