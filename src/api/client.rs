//! A client for orchd's socket, used by `orchctl` and the tests.

use std::path::{Path, PathBuf};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec};

use super::proto::{Command, Request, Response};

/// Errors talking to orchd.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach orchd at {path}: {source} (is orchd running? set --socket or ORCH_SOCKET)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection to orchd at {path} failed: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("orchd closed the connection before answering")]
    Closed,
    #[error("orchd sent a response that is not valid: {0}")]
    Protocol(String),
}

/// One connection to orchd.
pub struct Client {
    path: PathBuf,
    framed: Framed<UnixStream, LinesCodec>,
    next_id: u64,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.into(),
                source,
            })?;
        Ok(Client {
            path: path.into(),
            framed: Framed::new(stream, LinesCodec::new()),
            next_id: 1,
        })
    }

    /// Send a request; call [`Client::next`] for its response line(s).
    pub async fn send(&mut self, command: Command) -> Result<(), ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = serde_json::to_string(&Request {
            id: Value::from(id),
            command,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.framed.send(line).await.map_err(|e| self.io(e))
    }

    /// The next response line.
    pub async fn next(&mut self) -> Result<Response, ClientError> {
        let line = match self.framed.next().await {
            None => return Err(ClientError::Closed),
            Some(Err(e)) => return Err(self.io(e)),
            Some(Ok(line)) => line,
        };
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line}")))
    }

    /// Send a request and wait for its final response (for non-streaming commands).
    pub async fn call(&mut self, command: Command) -> Result<Response, ClientError> {
        self.send(command).await?;
        loop {
            let r = self.next().await?;
            if r.done {
                return Ok(r);
            }
        }
    }

    fn io(&self, e: tokio_util::codec::LinesCodecError) -> ClientError {
        let source = match e {
            tokio_util::codec::LinesCodecError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        };
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }
}
