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
use tokio_util::sync::CancellationToken;

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
    /// A panic in it is recorded in `parts` and it runs again on the same channel (its ring
    /// starts empty): the services' output pipes are never left without a reader.
    pub fn spawn(
        service: &str,
        journal: Option<Arc<Journal>>,
        parts: crate::guard::Parts,
    ) -> LogHub {
        let (tx, rx) = mpsc::channel(1024);
        let hub = LogHub {
            service: service.into(),
            tx,
        };
        let service = hub.service.clone();
        tokio::spawn(async move {
            let mut rx = rx;
            let part = format!("log of {service}");
            crate::guard::restarting(&part, parts, CancellationToken::new(), &mut rx, |rx| {
                Box::pin(run_hub(rx, service.clone(), journal.clone()))
            })
            .await;
        });
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
        let mut lines = LineSplitter::default();
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
            lines.push(&chunk[..n], |line| {
                self.emit(line, stream, pid, &mut dropped)
            });
        }
        lines.finish(|line| self.emit(line, stream, pid, &mut dropped));
        if dropped > 0 {
            self.note(
                pid,
                format!(
                    "[orchd] {dropped} lines of output were dropped: the log could not keep up"
                ),
            );
        }
    }

    fn emit(&self, line: &[u8], stream: Stream, pid: i32, dropped: &mut usize) {
        let text = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_string();
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

/// Cuts a byte stream into lines: at each newline, and every [`MAX_LINE`] bytes of a longer
/// line (every byte is kept). Holds at most one unfinished line.
#[derive(Debug, Default)]
struct LineSplitter {
    partial: Vec<u8>,
    /// The last piece was cut at [`MAX_LINE`] bytes: a newline right after it ends that piece,
    /// it does not make an empty line.
    cut: bool,
}

impl LineSplitter {
    /// Feed `data`; `emit` gets each finished line, without its newline.
    fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        if self.cut && data.first() == Some(&b'\n') {
            data = &data[1..];
        }
        self.cut = false;
        while !data.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let window = &data[..data.len().min(room)];
            if let Some(pos) = window.iter().position(|&b| b == b'\n') {
                self.line(&data[..pos], &mut emit);
                data = &data[pos + 1..];
            } else if data.len() >= room {
                self.line(&data[..room], &mut emit);
                data = &data[room..];
                match data.first() {
                    Some(b'\n') => data = &data[1..],
                    Some(_) => {}
                    None => self.cut = true,
                }
            } else {
                self.partial.extend_from_slice(data);
                data = &[];
            }
        }
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            // Give back the line buffer between bursts (Vec::new does not allocate).
            self.partial = Vec::new();
        }
    }

    /// The end of the stream: emit an unfinished last line.
    fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }

    fn line(&mut self, tail: &[u8], emit: &mut impl FnMut(&[u8])) {
        if self.partial.is_empty() {
            emit(tail);
        } else {
            self.partial.extend_from_slice(tail);
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

async fn run_hub(rx: &mut mpsc::Receiver<Cmd>, service: Arc<str>, journal: Option<Arc<Journal>>) {
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
        Journal::connect(std::path::Path::new("/run/systemd/journal/socket"))
            .ok()
            .map(Arc::new)
    }

    /// A journal writer to the native-protocol datagram socket at `path`.
    fn connect(path: &std::path::Path) -> std::io::Result<Journal> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.connect(path)?;
        socket.set_nonblocking(true)?;
        Ok(Journal { socket })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` to a splitter and returns the lines it emits (the unfinished end too).
    fn split(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        for c in chunks {
            s.push(c, |l| out.push(l.to_vec()));
        }
        s.finish(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_are_cut_at_newlines_across_chunks() {
        assert_eq!(
            split(&[b"one\ntw", b"o\n\nthr", b"ee"]),
            vec![
                b"one".to_vec(),
                b"two".to_vec(),
                b"".to_vec(),
                b"three".to_vec()
            ]
        );
    }

    #[test]
    fn a_long_line_is_cut_into_pieces_and_loses_no_byte() {
        let long: Vec<u8> = (0..2 * MAX_LINE + 100)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        // Whole, and in chunks of every awkward size.
        for chunk in [input.len(), 1, 7, 4096, MAX_LINE, MAX_LINE + 1] {
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            let lines = split(&chunks);
            assert_eq!(lines.len(), 4, "chunk {chunk}");
            assert_eq!(lines[0], long[..MAX_LINE], "chunk {chunk}");
            assert_eq!(lines[1], long[MAX_LINE..2 * MAX_LINE], "chunk {chunk}");
            assert_eq!(lines[2], long[2 * MAX_LINE..], "chunk {chunk}");
            assert_eq!(lines[3], b"next", "chunk {chunk}");
        }
    }

    #[test]
    fn a_line_of_exactly_max_line_bytes_is_one_line() {
        let line = vec![b'x'; MAX_LINE];
        let mut input = line.clone();
        input.extend_from_slice(b"\ny\n");
        // The newline in the same chunk, and in the next one.
        assert_eq!(split(&[&input]), vec![line.clone(), b"y".to_vec()]);
        assert_eq!(
            split(&[&input[..MAX_LINE], &input[MAX_LINE..]]),
            vec![line.clone(), b"y".to_vec()]
        );
        // Without a newline at all: 3 pieces, nothing lost.
        let flood = vec![b'z'; 3 * MAX_LINE];
        assert_eq!(
            split(&[&flood[..5000], &flood[5000..]]),
            vec![line.iter().map(|_| b'z').collect::<Vec<u8>>(); 3]
        );
    }

    #[tokio::test]
    async fn the_ring_keeps_the_last_thousand_lines() {
        let hub = LogHub::spawn("ring", None, crate::guard::Parts::default());
        for batch in 0..3 {
            for i in 0..500 {
                hub.note(1, format!("line {}", batch * 500 + i));
            }
            // The hub has handled every note before it answers (one queue, in order).
            hub.tail(1).await;
        }
        let lines = hub.tail(5000).await;
        assert_eq!(lines.len(), RING_LINES);
        assert_eq!(lines[0].line, "line 500");
        assert_eq!(lines[RING_LINES - 1].line, "line 1499");
        assert_eq!(lines[RING_LINES - 1].seq, 1500);
        assert_eq!(hub.tail(3).await.len(), 3);
    }

    #[test]
    fn journal_datagrams_carry_the_service_as_syslog_identifier() {
        let dir = std::env::temp_dir().join(format!("orch-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let _ = std::fs::remove_file(&path);
        let journald = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let journal = Journal::connect(&path).unwrap();
        let line = LogLine {
            time: now(),
            stream: Stream::Stdout,
            pid: 4242,
            line: "hello\nwith = and a newline".into(),
            seq: 1,
        };
        journal.send("api", &line);
        let mut buf = [0u8; 4096];
        let n = journald.recv(&mut buf).unwrap();
        let got = &buf[..n];
        let head = b"PRIORITY=6\nSYSLOG_IDENTIFIER=api\nSYSLOG_PID=4242\nMESSAGE\n";
        assert!(got.starts_with(head), "{:?}", String::from_utf8_lossy(got));
        let rest = &got[head.len()..];
        let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        assert_eq!(&rest[8..8 + len], line.line.as_bytes());
        assert_eq!(&rest[8 + len..], b"\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
