//! What one client may hold of a node: connections, a silent request body,
//! the request line.
//!
//! * **Connections.** At most `max_connections` are served at once. The
//!   next [`OVERFLOW`] are still answered, cleanly: `503` with the
//!   protocol's JSON error, `Retry-After: 1` and `Connection: close`
//!   (clients retry 5xx with backoff, on another node if they have one),
//!   then closed after a short lingering read so the answer is not lost
//!   to a reset. Past those, a connection is closed at accept, with a log
//!   line (at most one a second): answering costs a task and a buffer,
//!   and a flood must not get them.
//! * **Silent bodies.** A request body that sends nothing for
//!   `body_idle_timeout_secs` while its handler waits for it fails: the
//!   chunk commits nothing (the protocol's "body ended early") and hyper
//!   closes the connection. Only waiting counts, so a slow but live upload
//!   is never cut off, and time the handler spends on the disk is not
//!   charged to the client.
//! * **The request line.** A path and query longer than [`MAX_URI`] get
//!   `414` with the JSON error. Header limits are hyper's (64 KiB of head,
//!   100 headers: `431`), as is the time to send the head
//!   (`header_timeout_secs`, on every request of a keep-alive connection).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use upline_proto::ErrorBody;

use crate::render::RequestId;

/// Longest path and query served. An object name is at most 1024 bytes,
/// 3072 percent-encoded; a bucket, a context and the parameters add less
/// than 300.
pub const MAX_URI: usize = 8192;

/// Connections past the limit that still get their `503`.
pub const OVERFLOW: usize = 64;

/// How long an over-the-limit connection may take to send its request head.
const OVERFLOW_WAIT: Duration = Duration::from_secs(2);

/// Counts connections against `max_connections`.
pub struct ConnLimit {
    served: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
    /// Connections closed at accept since the last log line about them.
    dropped: AtomicU64,
    last_log: std::sync::Mutex<Option<Instant>>,
}

/// What to do with a new connection.
pub enum Admit {
    /// Serve it; the permit is its place, freed when it is dropped.
    Serve(OwnedSemaphorePermit),
    /// Answer its first request 503 and close it.
    Refuse(OwnedSemaphorePermit),
    /// Close it now.
    Close,
}

impl ConnLimit {
    pub fn new(max: usize) -> Self {
        Self {
            served: Arc::new(Semaphore::new(max.max(1))),
            overflow: Arc::new(Semaphore::new(OVERFLOW)),
            dropped: AtomicU64::new(0),
            last_log: std::sync::Mutex::new(None),
        }
    }

    /// Connections being served now.
    pub fn open(&self, max: usize) -> usize {
        max.max(1) - self.served.available_permits()
    }

    pub fn admit(&self) -> Admit {
        if let Ok(p) = self.served.clone().try_acquire_owned() {
            return Admit::Serve(p);
        }
        if let Ok(p) = self.overflow.clone().try_acquire_owned() {
            tracing::info!("connection limit reached: answering 503");
            return Admit::Refuse(p);
        }
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            self.dropped.store(0, Ordering::Relaxed);
            tracing::warn!(
                dropped,
                "connection limit and overflow full: closing new connections at accept"
            );
        }
        Admit::Close
    }
}

/// Serves one over-the-limit connection: its first request gets 503, then
/// the connection is closed (lingering, see `accept.rs`).
pub async fn refuse<I>(io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(|_req| async {
        let rid = RequestId::new();
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new(
                &rid.0,
                "too many connections to this node; retry shortly".to_owned(),
            )),
        )
            .into_response();
        let h = resp.headers_mut();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        if let Ok(v) = HeaderValue::from_str(&rid.0) {
            h.insert("x-request-id", v);
        }
        Ok::<_, std::convert::Infallible>(resp)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(OVERFLOW_WAIT)
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    // The whole exchange, however slow the client: the place is borrowed.
    let _ = tokio::time::timeout(2 * OVERFLOW_WAIT, conn).await;
}

/// Whether a request line passes [`MAX_URI`] (answered `414`).
pub fn uri_too_long(uri: &axum::http::Uri) -> bool {
    uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_URI
}

/// A request body that fails when its reader has waited `idle` for a byte.
pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    /// Armed while the reader waits (the last poll was `Pending`).
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            waiting: None,
        }
    }
}

/// The error a silent body ends with.
fn silent(idle: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no request body bytes for {} s", idle.as_secs_f64()),
    )
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.waiting = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let sleep = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(sleep.as_mut().poll(cx));
                this.waiting = None;
                Poll::Ready(Some(Err(silent(idle).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_serves_then_refuses_then_closes() {
        let l = ConnLimit::new(2);
        let a = l.admit();
        let b = l.admit();
        assert!(matches!(a, Admit::Serve(_)) && matches!(b, Admit::Serve(_)));
        assert_eq!(l.open(2), 2);
        let refused: Vec<_> = (0..OVERFLOW).map(|_| l.admit()).collect();
        assert!(refused.iter().all(|r| matches!(r, Admit::Refuse(_))));
        assert!(matches!(l.admit(), Admit::Close));
        drop(a);
        assert!(matches!(l.admit(), Admit::Serve(_)));
    }

    #[test]
    fn long_request_lines_are_refused() {
        let ok: axum::http::Uri = format!("/b/{}?offset=0", "a".repeat(MAX_URI - 20))
            .parse()
            .unwrap();
        let long: axum::http::Uri = format!("/b/{}?offset=0", "a".repeat(MAX_URI)).parse().unwrap();
        assert!(!uri_too_long(&ok));
        assert!(uri_too_long(&long));
    }
}
