//! Every body the proxy passes on or makes, in one enum instead of a box per message: a
//! streamed one (hyper's), one read by orchd's own client (whose connection goes home to its
//! client connection when it ends), a whole one, none. A response's body holds its slot's
//! in-flight count until it is all sent. Made by `forward`, `retry` and `respond`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;

use super::Backend;
use super::http_conn::ClientConn;
use super::stats::OpenGuard;
use super::upstream::ResponseBody;

/// What a body's failure is passed on as.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the proxy passes on or makes, without a box per message. A response's body
/// keeps its slot's in-flight count (`guard`) until it is fully sent (or dropped).
pub(super) enum Body {
    /// A request body passed on, or a response streamed from the backend.
    Streamed {
        inner: Incoming,
        _guard: Option<OpenGuard>,
    },
    /// A response read from the backend by orchd's own client as it comes; the connection
    /// goes `home` to its client connection when the body ends cleanly.
    Upstream {
        inner: ResponseBody,
        home: Option<(Arc<ClientConn>, Backend)>,
        _guard: Option<OpenGuard>,
    },
    /// A response of orchd's own, or one read whole before it is passed on.
    Full {
        inner: Full<Bytes>,
        _guard: Option<OpenGuard>,
    },
    Empty,
}

impl Body {
    pub(super) fn streamed(inner: Incoming) -> Body {
        Body::Streamed {
            inner,
            _guard: None,
        }
    }

    pub(super) fn full(bytes: Bytes) -> Body {
        Body::Full {
            inner: Full::new(bytes),
            _guard: None,
        }
    }

    pub(super) fn with_guard(self, guard: OpenGuard) -> Body {
        match self {
            Body::Streamed { inner, .. } => Body::Streamed {
                inner,
                _guard: Some(guard),
            },
            Body::Full { inner, .. } => Body::Full {
                inner,
                _guard: Some(guard),
            },
            Body::Upstream { inner, home, .. } => Body::Upstream {
                inner,
                home,
                _guard: Some(guard),
            },
            // Nothing left to send: the request is done.
            Body::Empty => Body::Empty,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Streamed { inner, .. } => std::pin::Pin::new(inner)
                .poll_frame(cx)
                .map_err(BoxError::from),
            Body::Upstream { inner, home, .. } => {
                let polled = std::pin::Pin::new(&mut *inner)
                    .poll_frame(cx)
                    .map_err(BoxError::from);
                if inner.is_end_stream() {
                    if let (Some((conn, backend)), Some(up)) = (home.take(), inner.take_reusable())
                    {
                        conn.keep_upstream(backend, up);
                    }
                }
                polled
            }
            Body::Full { inner, .. } => std::pin::Pin::new(inner)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Body::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Streamed { inner, .. } => inner.is_end_stream(),
            Body::Upstream { inner, .. } => inner.is_end_stream(),
            Body::Full { inner, .. } => inner.is_end_stream(),
            Body::Empty => true,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Streamed { inner, .. } => inner.size_hint(),
            Body::Upstream { inner, .. } => inner.size_hint(),
            Body::Full { inner, .. } => inner.size_hint(),
            Body::Empty => hyper::body::SizeHint::with_exact(0),
        }
    }
}
