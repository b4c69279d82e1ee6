//! The proxy's own HTTP/1.1 client, for its most common request: an HTTP/1 request without a
//! body (GET, HEAD, DELETE…) on a client connection's kept upstream connection.
//!
//! hyper's client is built for any use: a request crosses a channel to a connection task, and
//! the response body another channel back. A proxy forwarding one request at a time on its own
//! connection needs neither, so this client writes the request head the proxy serialized,
//! parses the response head with `httparse` (`head`), and hands hyper's server a body that
//! reads the backend's socket directly (`body`: content-length, chunked or close-delimited
//! framing; no body for HEAD, 1xx, 204 and 304). When a body ends cleanly on a connection the
//! backend keeps open, the connection goes back to the client connection for its next request.
//!
//! Everything else (request bodies, upgrades, HTTP/2 streams) goes through hyper's client.
//! Used by `forward` (sending) and `http_conn` (keeping the connection between requests).

mod body;
mod head;

#[cfg(test)]
mod generated;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use http::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use body::ResponseBody;
use body::State;
use head::{Head, parse_head};

/// The largest response head (and chunked trailer section) accepted: hyper's default, too.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// A read asks for at least this much room.
const MIN_READ: usize = 4 * 1024;
/// The longest chunk-size line (with its extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// What a read buffer grows by.
const READ_SIZE: usize = 16 * 1024;

/// What went wrong talking to a backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the service at {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("cannot connect to the service at {addr}: no answer within {}s", timeout.as_secs())]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("cannot send the request to the service: {0}")]
    Unsent(io::Error),
    #[error("the service closed the connection without answering")]
    Closed,
    #[error("reading the service's response: {0}")]
    Read(io::Error),
    #[error("the service's response ended within its head")]
    TruncatedHead,
    #[error("malformed response head from the service: {0}")]
    Malformed(String),
    #[error("the service's response head is larger than {} KiB", MAX_HEAD / 1024)]
    HeadTooLarge,
    #[error("the service switched protocols without being asked to")]
    UnaskedUpgrade,
    #[error("malformed chunked body from the service: {0}")]
    BadChunk(&'static str),
    #[error("the service closed the connection {0} bytes before the end of its response body")]
    ClosedMidBody(u64),
}

impl UpstreamError {
    /// The request never reached the backend whole: sending it again is safe for any request.
    pub fn unsent(&self) -> bool {
        matches!(self, UpstreamError::Unsent(_))
    }

    /// The connection ended before a byte of response: the backend may or may not have acted
    /// on the request, so only an idempotent one may be sent again.
    pub fn before_response(&self) -> bool {
        matches!(self, UpstreamError::Unsent(_) | UpstreamError::Closed)
    }

    /// The backend answered, with a head orchd refuses: asking again would only get the same
    /// answer (and act on the request again), so it is not retried.
    pub fn refused_answer(&self) -> bool {
        matches!(
            self,
            UpstreamError::Malformed(_)
                | UpstreamError::HeadTooLarge
                | UpstreamError::UnaskedUpgrade
        )
    }
}

/// An HTTP/1.1 connection to a backend, with what was read past the last response.
pub struct Upstream {
    stream: TcpStream,
    buf: BytesMut,
}

impl Upstream {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Upstream, UpstreamError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Err(_) => return Err(UpstreamError::ConnectTimeout { addr, timeout }),
        };
        let _ = stream.set_nodelay(true);
        Ok(Upstream {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        })
    }

    /// Whether a kept connection is still fit for a request: the backend has neither closed it
    /// nor sent anything since the last response. Costs no system call while the reactor has
    /// seen nothing arrive on it.
    pub fn still_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Send a serialized request head (a request without a body) and read the response head.
    /// `head_request`: it was a HEAD request, whose response has no body whatever it says.
    pub async fn send(
        mut self,
        request: &[u8],
        head_request: bool,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        self.stream
            .write_all(request)
            .await
            .map_err(UpstreamError::Unsent)?;
        let mut received = false;
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse_head(&mut self.buf, head_request)? {
                    let Head {
                        status,
                        headers,
                        state,
                        reusable,
                    } = head;
                    let mut body = ResponseBody {
                        up: Some(self),
                        state,
                        reusable,
                    };
                    if body.state == State::Length(0) {
                        body.finish();
                    }
                    let mut response = Response::new(body);
                    *response.status_mut() = status;
                    *response.headers_mut() = headers;
                    return Ok(response);
                }
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ {
                self.buf.reserve(READ_SIZE);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) if received => return Err(UpstreamError::TruncatedHead),
                Ok(0) => return Err(UpstreamError::Closed),
                Ok(_) => received = true,
                Err(e) if !received && is_reset(&e) => return Err(UpstreamError::Closed),
                Err(e) => return Err(UpstreamError::Read(e)),
            }
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}
