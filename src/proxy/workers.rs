//! The proxy's own threads: one single-threaded tokio runtime per CPU (at most
//! [`MAX_WORKERS`]), started with the first proxy; the accept loop (`super`) hands connections
//! to them. Each worker also keeps its own pool for hyper's client, which `forward` uses.

use std::sync::OnceLock;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Handle;

use super::body::Body;
use super::forward::CONNECT_TIMEOUT;
use super::stats::WORKER_INDEX;

/// The most proxy worker threads, whatever the number of CPUs.
pub(super) const MAX_WORKERS: usize = 4;

/// The proxy's worker threads (one per CPU, at most [`MAX_WORKERS`]), started with the first
/// proxy. Each runs a single-threaded tokio runtime forever; connections are spawned onto them
/// through their handles. Should a thread or runtime fail to start, the workers that did start
/// are used, and with none the caller's runtime serves the connections.
pub(super) fn pool() -> &'static [Handle] {
    static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();
    WORKERS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
        (0..n)
            .filter_map(|i| {
                let (tx, rx) = std::sync::mpsc::channel();
                let spawned = std::thread::Builder::new()
                    .name(format!("orch-proxy-{i}"))
                    .spawn(move || {
                        WORKER_INDEX.set(i);
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => {
                                let _ = tx.send(Ok(rt.handle().clone()));
                                rt.block_on(std::future::pending::<()>());
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                            }
                        }
                    });
                let started = spawned
                    .map_err(|e| e.to_string())
                    .and_then(|_| match rx.recv() {
                        Ok(Ok(handle)) => Ok(handle),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    });
                match started {
                    Ok(handle) => Some(handle),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a proxy worker thread; the others serve");
                        None
                    }
                }
            })
            .collect()
    })
}

thread_local! {
    /// Each worker's own upstream connection pool (its connections' tasks run on that worker).
    static CLIENT: Client<HttpConnector, Body> = http_client();
}

pub(super) fn client() -> Client<HttpConnector, Body> {
    CLIENT.with(Client::clone)
}

fn http_client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(connector)
}
