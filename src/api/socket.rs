//! The Unix-socket server: one task per connection, JSON lines, peer credentials on every one.
//!
//! The listener owns the socket file: it refuses to start when another orchd answers on it,
//! replaces a stale file left by a crash, and makes it 0666 in a 0755 directory (authorization
//! is by `SO_PEERCRED`, see `auth.rs`). Limits: [`MAX_LINE`] per request, [`MAX_CONNECTIONS`]
//! at once, [`IDLE_TIMEOUT`] between requests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use super::auth::{self, Caller};
use super::handler::{self, Context};
use super::proto::{ApiError, ErrorCode, MAX_LINE, Response, parse_request};
use crate::config::ApiConfig;

/// Connections served at once; more get an error and are closed.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection with no request for this long is closed (streams are exempt).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors binding the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "another orchd is already listening on {0}; stop it first or set a different [api] socket"
    )]
    InUse(PathBuf),
    #[error("cannot create the socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bind the socket file, replacing a stale one.
pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| SocketError::Dir {
                path: dir.into(),
                source,
            })?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(SocketError::InUse(path.into()));
        }
        tracing::info!(path = %path.display(), "removing stale socket file");
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.into(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|source| {
        SocketError::Bind {
            path: path.into(),
            source,
        }
    })?;
    Ok(listener)
}

/// Accept connections until `cancel`; removes the socket file on the way out.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    api: Arc<ApiConfig>,
    ctx: Context,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let (api, ctx, cancel) = (api.clone(), ctx.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = connection(stream, &api, &ctx) => {}
                _ = cancel.cancelled() => {}
            }
            drop(permit);
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn refuse(stream: UnixStream) {
    let mut w = FramedWrite::new(stream, LinesCodec::new());
    let e = ApiError::new(
        ErrorCode::Unavailable,
        format!("too many connections (limit {MAX_CONNECTIONS}); try again"),
    );
    let _ = send(&mut w, &Response::err(Value::Null, e)).await;
}

type Writer = FramedWrite<tokio::net::unix::OwnedWriteHalf, LinesCodec>;

/// A bad line: reported to the client, and the connection goes on with the next line.
#[derive(Debug)]
enum BadLine {
    TooLong,
    NotUtf8,
}

/// `LinesCodec` with a length limit whose per-line errors are items, not stream errors (a
/// `FramedRead` ends at its first error; one oversized request must not end the connection).
struct RequestCodec(LinesCodec);

impl tokio_util::codec::Decoder for RequestCodec {
    type Item = Result<String, BadLine>;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        lift(self.0.decode(buf))
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        lift(self.0.decode_eof(buf))
    }
}

fn lift(
    r: Result<Option<String>, LinesCodecError>,
) -> Result<Option<Result<String, BadLine>>, std::io::Error> {
    match r {
        Ok(line) => Ok(line.map(Ok)),
        Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Err(BadLine::TooLong))),
        // LinesCodec has consumed the line before it checks UTF-8.
        Err(LinesCodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Ok(Some(Err(BadLine::NotUtf8)))
        }
        Err(LinesCodecError::Io(e)) => Err(e),
    }
}

async fn send(
    w: &mut FramedWrite<impl tokio::io::AsyncWrite + Unpin, LinesCodec>,
    r: &Response,
) -> bool {
    match serde_json::to_string(r) {
        Ok(line) => w.send(line).await.is_ok(),
        Err(_) => false,
    }
}

async fn connection(stream: UnixStream, api: &ApiConfig, ctx: &Context) {
    let caller = match stream.peer_cred() {
        Ok(c) => Caller::from_peer(c.uid(), c.gid(), c.pid()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
            return;
        }
    };
    let rights = auth::rights(api, &caller);
    let (r, w) = stream.into_split();
    let mut lines = FramedRead::new(r, RequestCodec(LinesCodec::new_with_max_length(MAX_LINE)));
    let mut w: Writer = FramedWrite::new(w, LinesCodec::new());
    loop {
        let next = match tokio::time::timeout(IDLE_TIMEOUT, lines.next()).await {
            Err(_) | Ok(None) => return,
            Ok(Some(next)) => next,
        };
        let line = match next {
            Ok(Ok(line)) => line,
            Ok(Err(bad)) => {
                let message = match bad {
                    BadLine::TooLong => format!("request line longer than {MAX_LINE} bytes"),
                    BadLine::NotUtf8 => "bad JSON: request line is not valid UTF-8".to_owned(),
                };
                let e = ApiError::new(ErrorCode::BadRequest, message);
                if !send(&mut w, &Response::err(Value::Null, e)).await {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        if line.trim().is_empty() {
            continue;
        }
        let req = match parse_request(line.as_bytes()) {
            Ok(req) => req,
            Err((id, e)) => {
                if !send(&mut w, &Response::err(id, e)).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = rights.check(&req.command, &caller) {
            tracing::warn!(uid = caller.uid, user = %caller.user, pid = ?caller.pid, cmd = req.command.name(), "permission denied");
            if !send(&mut w, &Response::err(req.id, e)).await {
                return;
            }
            continue;
        }
        if !super::proto::READ_ONLY.contains(&req.command.name()) {
            tracing::info!(uid = caller.uid, user = %caller.user, pid = ?caller.pid, cmd = req.command.name(), services = ?req.command.services(), "request");
        }
        let streaming = handler::is_streaming(&req.command);
        let (ptx, mut prx) = mpsc::channel::<Value>(64);
        let fut = handler::execute(ctx, &rights, &caller, req.command, ptx);
        tokio::pin!(fut);
        let result = loop {
            tokio::select! {
                res = &mut fut => break res,
                Some(p) = prx.recv() => {
                    if !send(&mut w, &Response::partial(req.id.clone(), p)).await {
                        return;
                    }
                }
                // A streaming client ends the stream by closing (or by sending anything).
                _ = lines.next(), if streaming => return,
            }
        };
        while let Ok(p) = prx.try_recv() {
            let _ = send(&mut w, &Response::partial(req.id.clone(), p)).await;
        }
        let resp = match result {
            Ok(v) => Response::ok(req.id, v),
            Err(e) => Response::err(req.id, e),
        };
        if !send(&mut w, &resp).await {
            return;
        }
    }
}
