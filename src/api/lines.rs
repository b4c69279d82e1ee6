//! Reading request lines off one socket connection, within deadlines and a memory bound.
//!
//! Used by the socket server (`socket.rs`) instead of a `FramedRead`, whose buffer keeps the
//! capacity of the longest line it ever held and which knows no deadline. Here a line must be
//! whole before its [`Deadlines`] pass, the buffer grows only as far as [`MAX_LINE`] and is
//! given back after a large line, and every change of its size is reported to the
//! connection's [`Slot`], which may evict the line to keep all unprivileged callers within
//! their budget.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::limits::Slot;
use super::proto::MAX_LINE;

/// The first read of a line takes this much buffer; it doubles as the line grows.
const FIRST_READ: usize = 4096;
/// A buffer bigger than this is replaced (not kept) once its line is handled.
const KEEP_CAPACITY: usize = 16 * 1024;
/// Freeing a buffer this big asks for a heap trim.
const LARGE: usize = 128 * 1024;

/// How long a connection may take to send a request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From the start of the wait (connect, or the previous answer) to the first byte.
    pub idle: Duration,
    /// From the first byte to the end of the line.
    pub line: Duration,
    /// From the start of the wait to the end of the line, whatever the first byte's time.
    pub whole: Duration,
}

/// One request line, or why there is none to handle.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Longer than [`MAX_LINE`]; it was discarded up to its newline.
    TooLong,
    NotUtf8,
}

/// Why reading ended; the connection is closed after it.
#[derive(Debug)]
pub enum End {
    /// The client closed its side with no partial line left.
    Closed,
    Io(std::io::Error),
    /// No byte of a new request within the idle time.
    Idle,
    /// A line was started but not finished in time; `received` bytes of it had arrived.
    Late {
        received: usize,
        limit: Duration,
    },
    /// The line was dropped to keep unprivileged callers within their buffer budget.
    Evicted {
        received: usize,
    },
}

/// Request lines from `R`, with a buffer that is accounted to `slot`.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// `buf[..scanned]` has no newline.
    scanned: usize,
    /// Bytes of an over-long line dropped so far (its rest is skipped up to its newline).
    discarded: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            scanned: 0,
            discarded: 0,
            eof: false,
        }
    }

    /// The next line, within `deadlines` from now.
    pub async fn next_line(&mut self, d: Deadlines, slot: &Slot) -> Result<Line, End> {
        let start = Instant::now();
        let whole = start + d.whole;
        let mut until = if self.received() > 0 {
            whole.min(start + d.line)
        } else {
            whole.min(start + d.idle)
        };
        loop {
            if let Some(line) = self.take_line(slot) {
                return Ok(line);
            }
            if self.eof {
                return self.at_eof(slot);
            }
            self.grow(slot);
            let was_empty = self.received() == 0;
            let read = tokio::select! {
                r = tokio::time::timeout_at(until, self.inner.read_buf(&mut self.buf)) => r,
                () = slot.evicted().cancelled() => return Err(self.evicted(slot)),
            };
            match read {
                Err(_) if self.received() == 0 => return Err(End::Idle),
                Err(_) => {
                    let limit = if until == whole { d.whole } else { d.line };
                    return Err(End::Late {
                        received: self.received(),
                        limit,
                    });
                }
                Ok(Err(e)) => return Err(End::Io(e)),
                Ok(Ok(0)) => self.eof = true,
                Ok(Ok(_)) if was_empty => until = whole.min(Instant::now() + d.line),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Wait until the client sends anything or closes (ends a stream). Cancel-safe.
    pub async fn input(&mut self) {
        if !self.buf.is_empty() || self.eof {
            return;
        }
        let mut byte = [0u8; 1];
        match self.inner.read(&mut byte).await {
            Ok(0) | Err(_) => self.eof = true,
            Ok(_) => self.buf.push(byte[0]),
        }
    }

    /// Bytes of the current, unfinished line received so far.
    fn received(&self) -> usize {
        self.buf.len() + self.discarded
    }

    /// Make room for the next read: double the buffer, up to one byte over the longest line
    /// (seeing that byte without a newline tells the line is too long).
    fn grow(&mut self, slot: &Slot) {
        if self.buf.capacity() - self.buf.len()
            >= FIRST_READ.min((MAX_LINE + 1).saturating_sub(self.buf.len()))
        {
            return;
        }
        let target = (self.buf.capacity() * 2).clamp(FIRST_READ, MAX_LINE + 1);
        self.buf
            .reserve_exact(target.saturating_sub(self.buf.len()));
        slot.hold(self.buf.capacity());
    }

    /// A whole line from the buffer, if there is one; too long lines are dropped as they come.
    fn take_line(&mut self, slot: &Slot) -> Option<Line> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                let line = if self.discarded > 0 {
                    self.discarded = 0;
                    Line::TooLong
                } else {
                    decode(&self.buf[..end])
                };
                self.consume(end + 1, slot);
                Some(line)
            }
            None if self.buf.len() > MAX_LINE || (self.discarded > 0 && !self.buf.is_empty()) => {
                self.discarded += self.buf.len();
                self.consume(self.buf.len(), slot);
                None
            }
            None => {
                self.scanned = self.buf.len();
                None
            }
        }
    }

    /// What is left when the client closed: a last line without its newline (as `LinesCodec`
    /// did), else the end.
    fn at_eof(&mut self, slot: &Slot) -> Result<Line, End> {
        if self.discarded > 0 {
            self.discarded = 0;
            return Ok(Line::TooLong);
        }
        if self.buf.is_empty() {
            return Err(End::Closed);
        }
        let line = decode(&self.buf);
        self.consume(self.buf.len(), slot);
        Ok(line)
    }

    fn evicted(&mut self, slot: &Slot) -> End {
        let received = self.received();
        self.discarded = 0;
        self.consume(self.buf.len(), slot);
        End::Evicted { received }
    }

    /// Drop `buf[..n]`; a large buffer is replaced by one just big enough for what is left.
    fn consume(&mut self, n: usize, slot: &Slot) {
        self.scanned = 0;
        let capacity = self.buf.capacity();
        if capacity > KEEP_CAPACITY {
            self.buf = self.buf[n..].to_vec();
            if capacity >= LARGE {
                slot.trim_heap_soon();
            }
        } else {
            self.buf.drain(..n);
        }
        slot.hold(self.buf.capacity());
    }
}

/// A line without its `\n` (and a `\r` before it), as UTF-8.
fn decode(bytes: &[u8]) -> Line {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => Line::Text(s.to_owned()),
        Err(_) => Line::NotUtf8,
    }
}
