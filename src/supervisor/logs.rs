//! Service output: pipes read line by line into a per-service ring buffer and the system log.
//!
//! One [`LogHub`] task per service owns the ring (last [`RING_LINES`] lines) and a broadcast of
//! new lines for `orchctl logs -f`. Pipe readers never wait on the hub: when it is behind they
//! drop lines and count them, so a service writing megabytes per second never blocks on its pipe.
//! A line longer than [`MAX_LINE`] bytes without a newline is cut there, so memory stays bounded.
//! Each line also goes to journald with the service name as `SYSLOG_IDENTIFIER` (when orchd runs
//! under systemd) or to orchd's stderr log.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Lines kept per service.
pub const RING_LINES: usize = 1000;
/// Longest line kept whole; longer output is split at this many bytes.
pub const MAX_LINE: usize = 8192;

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of service output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// RFC 3339 UTC.
    pub time: String,
    pub stream: Stream,
    pub pid: i32,
    pub line: String,
    /// Position in the service's log (assigned by the hub), so a follower can skip what the
    /// tail it printed first already had.
    #[serde(default)]
    pub seq: u64,
}

/// Lines are boxed: every slot of the hub's queue is as large as the largest command.
enum Cmd {
    Line(Box<LogLine>),
    Tail {
        n: usize,
        reply: oneshot::Sender<Vec<LogLine>>,
    },
    Follow {
        reply: oneshot::Sender<broadcast::Receiver<LogLine>>,
    },
}

/// Lines a follower may fall behind before it is told it skipped some.
const FOLLOW_BUFFER: usize = 1024;

/// Cheap-clone handle to one service's log hub.
#[derive(Clone, Debug)]
pub struct LogHub {
    service: Arc<str>,
    tx: mpsc::Sender<Cmd>,
}

impl LogHub {
    /// Start the hub task for `service`; it ends when every handle is dropped.
    pub fn spawn(service: &str, journal: Option<Arc<Journal>>) -> LogHub {
        let (tx, rx) = mpsc::channel(1024);
        let hub = LogHub {
            service: service.into(),
            tx,
        };
        tokio::spawn(run_hub(rx, hub.service.clone(), journal));
        hub
    }

    /// The last `n` lines (at most [`RING_LINES`]).
    pub async fn tail(&self, n: usize) -> Vec<LogLine> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Tail { n, reply }).await.is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    /// New lines from now on; `None` if the hub is gone.
    pub async fn follow(&self) -> Option<broadcast::Receiver<LogLine>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Follow { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Record a line orchd itself writes into the service's log (e.g. `"[orchd] started"`).
    pub fn note(&self, pid: i32, text: String) {
        let _ = self.tx.try_send(Cmd::Line(Box::new(LogLine {
            time: now(),
            stream: Stream::Stderr,
            pid,
            line: text,
            seq: 0,
        })));
    }

    /// Read `fd` (a pipe from the service) until EOF, in its own task.
    /// The handle ends when the pipe is drained (EOF).
    pub fn attach(&self, fd: OwnedFd, stream: Stream, pid: i32) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                Ok(pipe) => hub.read_pipe(pipe, stream, pid).await,
                Err(e) => {
                    tracing::warn!(service = %hub.service, error = %e, "cannot read service output")
                }
            }
        })
    }

    async fn read_pipe(&self, pipe: tokio::net::unix::pipe::Receiver, stream: Stream, pid: i32) {
        let mut partial: Vec<u8> = Vec::new();
        let mut dropped = 0usize;
        loop {
            if pipe.readable().await.is_err() {
                break;
            }
            // The chunk lives only between awaits, so an idle service's reader task holds no
            // buffer: 100 quiet services cost no 64 KiB each.
            let mut chunk = [0u8; 16 * 1024];
            let n = match pipe.try_read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            };
            self.split_lines(&chunk[..n], &mut partial, stream, pid, &mut dropped);
            if partial.is_empty() {
                // Give back the line buffer between bursts (Vec::new does not allocate).
                partial = Vec::new();
            }
        }
        if !partial.is_empty() {
            self.emit(&mut partial, stream, pid, &mut dropped);
        }
        if dropped > 0 {
            self.note(
                pid,
                format!(
                    "[orchd] {dropped} lines of output were dropped: the log could not keep up"
                ),
            );
        }
    }

    /// Cut `data` into lines (at newlines, or every [`MAX_LINE`] bytes), carrying the unfinished
    /// rest in `partial`.
    fn split_lines(
        &self,
        data: &[u8],
        partial: &mut Vec<u8>,
        stream: Stream,
        pid: i32,
        dropped: &mut usize,
    ) {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let take = (MAX_LINE - partial.len().min(MAX_LINE)).min(pos);
            partial.extend_from_slice(&rest[..take]);
            self.emit(partial, stream, pid, dropped);
            rest = &rest[pos + 1..];
        }
        while !rest.is_empty() {
            let take = (MAX_LINE - partial.len()).min(rest.len());
            partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if partial.len() >= MAX_LINE {
                self.emit(partial, stream, pid, dropped);
            }
        }
    }

    fn emit(&self, partial: &mut Vec<u8>, stream: Stream, pid: i32, dropped: &mut usize) {
        let text = String::from_utf8_lossy(partial)
            .trim_end_matches('\r')
            .to_string();
        partial.clear();
        if *dropped > 0 {
            // Say what was lost only once there is room for the note and the line after it;
            // else a full channel would fill the ring with notes.
            if self.tx.capacity() < 2 {
                *dropped += 1;
                return;
            }
            let note = format!(
                "[orchd] {dropped} lines of output were dropped: the log could not keep up"
            );
            let line = LogLine {
                time: now(),
                stream: Stream::Stderr,
                pid,
                line: note,
                seq: 0,
            };
            if self.tx.try_send(Cmd::Line(Box::new(line))).is_ok() {
                *dropped = 0;
            }
        }
        let line = LogLine {
            time: now(),
            stream,
            pid,
            line: text,
            seq: 0,
        };
        if self.tx.try_send(Cmd::Line(Box::new(line))).is_err() {
            *dropped += 1;
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

async fn run_hub(mut rx: mpsc::Receiver<Cmd>, service: Arc<str>, journal: Option<Arc<Journal>>) {
    let mut ring: VecDeque<LogLine> = VecDeque::new();
    let mut seq: u64 = 0;
    // Created on the first `logs -f`: a broadcast buffer per idle service would cost memory.
    let mut follow: Option<broadcast::Sender<LogLine>> = None;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Line(line) => {
                let mut line = *line;
                seq += 1;
                line.seq = seq;
                match &journal {
                    Some(j) => j.send(&service, &line),
                    None => {
                        tracing::info!(target: "service", service = %service, pid = line.pid, "{}", line.line)
                    }
                }
                if ring.len() == RING_LINES {
                    ring.pop_front();
                }
                if let Some(f) = &follow {
                    if f.send(line.clone()).is_err() {
                        follow = None;
                    }
                }
                ring.push_back(line);
            }
            Cmd::Tail { n, reply } => {
                let skip = ring.len().saturating_sub(n);
                let _ = reply.send(ring.iter().skip(skip).cloned().collect());
            }
            Cmd::Follow { reply } => {
                let f = follow.get_or_insert_with(|| broadcast::channel(FOLLOW_BUFFER).0);
                let _ = reply.send(f.subscribe());
            }
        }
    }
}

/// Writes service lines to journald's native socket with the service as `SYSLOG_IDENTIFIER`.
#[derive(Debug)]
pub struct Journal {
    socket: std::os::unix::net::UnixDatagram,
}

impl Journal {
    /// Connect when orchd's stderr is the journal (`JOURNAL_STREAM` set) and the socket exists.
    pub fn detect() -> Option<Arc<Journal>> {
        std::env::var_os("JOURNAL_STREAM")?;
        let socket = std::os::unix::net::UnixDatagram::unbound().ok()?;
        socket.connect("/run/systemd/journal/socket").ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(Arc::new(Journal { socket }))
    }

    fn send(&self, service: &str, line: &LogLine) {
        let priority = match line.stream {
            Stream::Stdout => 6,
            Stream::Stderr => 5,
        };
        let mut msg = Vec::with_capacity(line.line.len() + 96);
        msg.extend_from_slice(
            format!(
                "PRIORITY={priority}\nSYSLOG_IDENTIFIER={service}\nSYSLOG_PID={}\n",
                line.pid
            )
            .as_bytes(),
        );
        // MESSAGE in the length-prefixed form, which allows any byte in the value.
        msg.extend_from_slice(b"MESSAGE\n");
        msg.extend_from_slice(&(line.line.len() as u64).to_le_bytes());
        msg.extend_from_slice(line.line.as_bytes());
        msg.push(b'\n');
        // Non-blocking: if journald is behind, the line still sits in the ring buffer.
        let _ = self.socket.send(&msg);
    }
}
