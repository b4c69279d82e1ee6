//! The Unix-socket server: one task per connection, JSON lines, peer credentials on every one.
//!
//! The listener owns the socket file: it refuses to start when another orchd answers on it,
//! replaces a stale file left by a crash, and makes it 0666 in a 0755 directory (authorization
//! is by `SO_PEERCRED`, see `auth.rs`). Limits (docs/api.md, "Connection limits"): who may hold
//! how many connections is `limits.rs`; each request line must arrive whole within
//! [`REQUEST_DEADLINE`] (callers without full rights: of connecting or of the previous answer;
//! others may idle [`ADMIN_IDLE`] first), and `lines.rs` bounds the memory a line may take.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use serde_json::Value;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedWrite, LinesCodec};
use tokio_util::sync::CancellationToken;

use super::auth::{self, Caller, Rights};
use super::handler::{self, Context};
use super::limits::{Limits, Slot};
use super::lines::{Deadlines, End, Line, LineReader};
use super::proto::{ApiError, ErrorCode, MAX_LINE, Partial, Response, parse_request};
use crate::config::ApiConfig;

pub use super::limits::MAX_CONNECTIONS;

/// A request line must be whole this long after its first byte; for callers without full
/// rights, this long after connecting or after the previous answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Callers with full rights may keep an idle connection open this long between requests.
pub const ADMIN_IDLE: Duration = Duration::from_secs(300);
/// A goodbye (refusal, deadline) to a client that does not read is given up after this.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);
/// A write buffer bigger than this is released after its response (a `logs` answer can be
/// megabytes; the connection may then idle for minutes).
const KEEP_WRITE_CAPACITY: usize = 64 * 1024;

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
    listener: &UnixListener,
    path: PathBuf,
    api: Arc<ApiConfig>,
    ctx: Context,
    cancel: CancellationToken,
) {
    let limits = Limits::new();
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
        let (api, ctx, cancel, limits) = (api.clone(), ctx.clone(), cancel.clone(), limits.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = admit(stream, &api, &ctx, &limits) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

/// Who is calling, and may they have a connection? Then serve it.
async fn admit(stream: UnixStream, api: &ApiConfig, ctx: &Context, limits: &Limits) {
    let caller = match stream.peer_cred() {
        Ok(c) => Caller::from_peer(c.uid(), c.gid(), c.pid()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
            return;
        }
    };
    let rights = auth::rights(api, &caller);
    let slot = match limits.admit(&caller, rights == Rights::All) {
        Ok(slot) => slot,
        Err(refusal) => {
            tracing::warn!(uid = caller.uid, user = %caller.user, pid = ?caller.pid, reason = %refusal.0, "connection refused");
            let (_, w) = stream.into_split();
            let e = ApiError::new(ErrorCode::Unavailable, refusal.0);
            farewell(&mut FramedWrite::new(w, LinesCodec::new()), e).await;
            return;
        }
    };
    // Every line logged while serving it names the caller.
    let span = tracing::info_span!("connection", uid = caller.uid, pid = ?caller.pid);
    tracing::Instrument::instrument(connection(stream, &caller, &rights, &slot, ctx), span).await;
}

/// Send a last error line (bounded in time: the client may not read) before closing.
async fn farewell(w: &mut Writer, e: ApiError) {
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, send(w, &Response::err(Value::Null, e))).await;
}

type Writer = FramedWrite<tokio::net::unix::OwnedWriteHalf, LinesCodec>;

async fn send(w: &mut Writer, r: &Response) -> bool {
    let ok = match serde_json::to_string(r) {
        Ok(line) => w.send(line).await.is_ok(),
        Err(_) => false,
    };
    if w.write_buffer().capacity() > KEEP_WRITE_CAPACITY {
        *w.write_buffer_mut() = bytes::BytesMut::new();
    }
    ok
}

fn deadlines(slot: &Slot) -> Deadlines {
    if slot.privileged() {
        Deadlines {
            idle: ADMIN_IDLE,
            line: REQUEST_DEADLINE,
            whole: ADMIN_IDLE + REQUEST_DEADLINE,
        }
    } else {
        Deadlines {
            idle: REQUEST_DEADLINE,
            line: REQUEST_DEADLINE,
            whole: REQUEST_DEADLINE,
        }
    }
}

/// The next request line, or `None` when the connection is to be closed (the client was told
/// why where it is owed an answer).
async fn next_line(
    lines: &mut LineReader<OwnedReadHalf>,
    w: &mut Writer,
    caller: &Caller,
    slot: &Slot,
) -> Option<String> {
    let message = match lines.next_line(deadlines(slot), slot).await {
        Ok(Line::Text(line)) => return Some(line),
        Ok(Line::TooLong) => format!("request line longer than {MAX_LINE} bytes"),
        Ok(Line::NotUtf8) => "bad JSON: request line is not valid UTF-8".to_owned(),
        Err(end) => {
            ended(end, w, caller).await;
            return None;
        }
    };
    let e = ApiError::new(ErrorCode::BadRequest, message);
    // Answered; the connection goes on with the next line.
    if send(w, &Response::err(Value::Null, e)).await {
        Some(String::new())
    } else {
        None
    }
}

/// Tell the client why its connection is closed, where there is something to tell.
async fn ended(end: End, w: &mut Writer, caller: &Caller) {
    let e = match end {
        End::Closed | End::Io(_) | End::Idle => return,
        End::Late { received, limit } => {
            tracing::info!(uid = caller.uid, user = %caller.user, pid = ?caller.pid, received, "request line not complete in time; closing the connection");
            ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "request line not complete within {} ({received} bytes received, no newline); \
                     send each request as one line at once; closing the connection",
                    humantime::format_duration(limit)
                ),
            )
        }
        End::Evicted { received } => {
            tracing::warn!(uid = caller.uid, user = %caller.user, pid = ?caller.pid, received, "partial request dropped: unprivileged buffer budget exceeded");
            ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "request dropped: unfinished request lines of users without full rights \
                     hold more than {} MiB together, and this one was the largest ({received} \
                     bytes, no newline yet); send each request as one line at once; closing the \
                     connection",
                    super::limits::UNPRIVILEGED_BUFFER_BUDGET / (1024 * 1024)
                ),
            )
        }
    };
    farewell(w, e).await;
}

async fn connection(
    stream: UnixStream,
    caller: &Caller,
    rights: &Rights,
    slot: &Slot,
    ctx: &Context,
) {
    let (r, w) = stream.into_split();
    let mut lines = LineReader::new(r);
    let mut w: Writer = FramedWrite::new(w, LinesCodec::new());
    loop {
        let Some(line) = next_line(&mut lines, &mut w, caller, slot).await else {
            return;
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
        drop(line);
        if let Err(e) = rights.check(&req.command, caller) {
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
        let (ptx, mut prx) = mpsc::channel::<Partial>(64);
        let fut = handler::execute(ctx, rights, caller, req.command, ptx);
        tokio::pin!(fut);
        let result = loop {
            tokio::select! {
                res = &mut fut => break res,
                Some(p) = prx.recv() => {
                    if !send(&mut w, &Response::of_partial(req.id.clone(), &p)).await {
                        return;
                    }
                }
                // A streaming client ends the stream by closing (or by sending anything).
                () = lines.input(), if streaming => return,
            }
        };
        while let Ok(p) = prx.try_recv() {
            let _ = send(&mut w, &Response::of_partial(req.id.clone(), &p)).await;
        }
        let resp = match result {
            Ok(reply) => Response::reply(req.id, &reply),
            Err(e) => Response::err(req.id, e),
        };
        if !send(&mut w, &resp).await {
            return;
        }
    }
}
