//! A response body read from the backend's socket as hyper's server asks for it, framed by
//! content-length, chunks (strict chunk-size lines, trailers dropped) or the connection's close;
//! when it ends cleanly on a connection the backend keeps, the connection can be used again.
//! Made by [`super::Upstream::send`]; passed on by the proxy's `body`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use hyper::body::{Frame, SizeHint};

use super::{MAX_CHUNK_LINE, MAX_HEAD, MAX_HEADERS, MIN_READ, READ_SIZE, Upstream, UpstreamError};

/// The chunk-size line at the start of `buf`: its length and the size, `Ok(None)` while it is
/// incomplete. Strict: 1 to 16 hex digits (no sign, no `0x`), then optional whitespace and
/// extensions (skipped, whatever they hold but CR and LF), ended by CRLF.
pub(super) fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    // httparse reads an empty line as size 0 and lets a bare LF into an extension; a
    // chunk-size line here is hex digits and ends with CRLF.
    match buf.first() {
        None => return Ok(None),
        Some(b) if !b.is_ascii_hexdigit() => return Err("missing chunk size"),
        Some(_) => {}
    }
    match httparse::parse_chunk_size(buf) {
        Ok(httparse::Status::Complete((used, size))) => {
            let line = &buf[..used];
            if line.len() < 2
                || line[line.len() - 2] != b'\r'
                || line[..line.len() - 1].contains(&b'\n')
            {
                return Err("chunk-size line not ended by CRLF");
            }
            Ok(Some((used, size)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_CHUNK_LINE => {
            Err("chunk-size line too long")
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err("invalid chunk size"),
    }
}

/// Where a response body is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// This many bytes left (content-length, or none for HEAD, 204, 304).
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Within a chunk's data: this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: at the trailer section (dropped: the client never asked for it).
    Trailers,
}

/// A response body read from the backend's socket as hyper's server asks for it.
pub struct ResponseBody {
    /// The connection, until the body is done (and after, if it can serve another request).
    pub(super) up: Option<Upstream>,
    pub(super) state: State,
    /// The backend keeps the connection open after this response.
    pub(super) reusable: bool,
}

impl ResponseBody {
    /// The whole body, if it is already read (a short content-length response, or none).
    pub fn whole(&mut self) -> Option<Bytes> {
        let n = match self.state {
            State::Done => return Some(Bytes::new()),
            State::Length(n) => n,
            _ => return None,
        };
        let up = self.up.as_mut()?;
        if (up.buf.len() as u64) < n {
            return None;
        }
        let bytes = up.buf.split_to(n as usize).freeze();
        self.finish();
        Some(bytes)
    }

    /// The connection, once the body is done and the backend keeps it open for another request.
    pub fn take_reusable(&mut self) -> Option<Upstream> {
        if self.state == State::Done && self.reusable {
            self.up.take()
        } else {
            None
        }
    }

    pub(super) fn finish(&mut self) {
        self.state = State::Done;
        // Bytes past the response before another request: a confused backend; not reused.
        if !self.reusable || self.up.as_ref().is_some_and(|up| !up.buf.is_empty()) {
            self.reusable = false;
            self.up = None;
        }
    }

    /// Read more of the body into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(up: &mut Upstream, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if up.buf.capacity() - up.buf.len() < MIN_READ {
            up.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut up.stream), cx, &mut up.buf)
    }
}

type BodyResult = Option<Result<Frame<Bytes>, UpstreamError>>;

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        loop {
            let Some(up) = this.up.as_mut() else {
                return Poll::Ready(None);
            };
            let data = |up: &mut Upstream, n: usize| -> BodyResult {
                Some(Ok(Frame::data(up.buf.split_to(n).freeze())))
            };
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) | State::Chunked(Chunk::Data(left)) if !up.buf.is_empty() => {
                    let n = (up.buf.len() as u64).min(left);
                    let frame = data(up, n as usize);
                    match this.state {
                        // The last bytes: done now, so hyper (which asks `is_end_stream` after
                        // each frame) need not poll again and the connection is free at once.
                        State::Length(_) if n == left => this.finish(),
                        State::Length(_) => this.state = State::Length(left - n),
                        _ if n == left => this.state = State::Chunked(Chunk::DataEnd),
                        _ => this.state = State::Chunked(Chunk::Data(left - n)),
                    }
                    return Poll::Ready(frame);
                }
                State::Eof if !up.buf.is_empty() => {
                    let n = up.buf.len();
                    return Poll::Ready(data(up, n));
                }
                State::Chunked(Chunk::Size) if !up.buf.is_empty() => match chunk_size(&up.buf) {
                    Ok(Some((used, size))) => {
                        up.buf.advance(used);
                        this.state = State::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    Ok(None) => {}
                    Err(why) => return Poll::Ready(Some(Err(UpstreamError::BadChunk(why)))),
                },
                State::Chunked(Chunk::DataEnd) if up.buf.len() >= 2 => {
                    if &up.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(UpstreamError::BadChunk(
                            "no CRLF after chunk data",
                        ))));
                    }
                    up.buf.advance(2);
                    this.state = State::Chunked(Chunk::Size);
                    continue;
                }
                State::Chunked(Chunk::Trailers) if !up.buf.is_empty() => {
                    let bad = |why| Poll::Ready(Some(Err(UpstreamError::BadChunk(why))));
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&up.buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            up.buf.advance(used);
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(httparse::Status::Partial) if up.buf.len() >= MAX_HEAD => {
                            return bad("trailer section too large");
                        }
                        Ok(httparse::Status::Partial) => {}
                        Err(httparse::Error::TooManyHeaders) => {
                            return bad("too many trailer fields");
                        }
                        Err(_) => return bad("malformed trailer section"),
                    }
                }
                // Nothing (or not enough) buffered for the state: read on.
                _ => {}
            }
            match ready!(ResponseBody::poll_fill(up, cx)) {
                Ok(0) => {
                    return Poll::Ready(match this.state {
                        State::Eof => {
                            this.reusable = false;
                            this.finish();
                            None
                        }
                        State::Length(left) => Some(Err(UpstreamError::ClosedMidBody(left))),
                        _ => Some(Err(UpstreamError::BadChunk(
                            "the connection closed within the chunked body",
                        ))),
                    });
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(UpstreamError::Read(e)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A length of 0 never lasts: `send` and the last bytes' poll finish the body.
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
