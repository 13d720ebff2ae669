//! The life of one accepted connection: its place under the connection
//! limit, its TLS handshake when TLS is on, then hyper serving the router
//! (every request body under the idle timeout) — or, past the limit, the
//! `503` of [`crate::limits`].
//!
//! Two things hyper does not do are done here:
//!
//! * **An idle connection is closed** when no request has been in flight
//!   for the header timeout. hyper times the head of each HTTP/1 request,
//!   but not the bytes it reads first to tell HTTP/1 from HTTP/2, nor an
//!   HTTP/2 connection between requests: a client that connected and said
//!   nothing (or one byte) held its place forever.
//! * **Closes linger**: when a connection ends, its socket is shut for
//!   writing and read (and dropped) for up to [`LINGER`] before it is
//!   closed. Closing a socket with unread bytes makes the kernel send a
//!   reset, and a client's kernel that gets the reset throws away the
//!   answer it had not read yet — the 400 of a refused body, hyper's 431.
//!   The connection keeps its place until then.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tower::ServiceExt;

use crate::handlers::ConnInfo;
use crate::limits::{Admit, ConnLimit, IdleBody};

/// How long a closing connection's late bytes are read and dropped.
pub const LINGER: Duration = Duration::from_secs(2);

/// What every connection of a node is served with.
pub struct Acceptor {
    pub builder: auto::Builder<TokioExecutor>,
    pub router: Router,
    pub limit: ConnLimit,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Longest TLS handshake (the header timeout: both are the time a
    /// client takes before it has asked anything).
    pub handshake_timeout: Duration,
    pub body_idle: Duration,
}

impl Acceptor {
    /// Takes a new connection: serves it, refuses it or closes it.
    /// `watcher` is taken at accept, so a graceful shutdown waits for it.
    pub fn take(&self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        let (admit, permit) = match self.limit.admit() {
            Admit::Serve(p) => (true, p),
            Admit::Refuse(p) => (false, p),
            Admit::Close => return,
        };
        let _ = stream.set_nodelay(true);
        let info = stream.local_addr().ok().map(|local| ConnInfo { local, peer });
        let stream = Linger {
            inner: Some((stream, permit)),
        };
        let conn = Conn {
            info,
            idle: self.handshake_timeout,
            builder: self.builder.clone(),
            router: self.router.clone(),
            body_idle: self.body_idle,
            watcher,
            admit,
        };
        let tls = self.tls.clone();
        let handshake = self.handshake_timeout;
        tokio::spawn(async move {
            match tls {
                None => conn.run(stream).await,
                Some(tls) => match tokio::time::timeout(handshake, tls.accept(stream)).await {
                    Ok(Ok(s)) => conn.run(s).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

/// One admitted connection, before its I/O is known (plain or TLS).
struct Conn {
    info: Option<ConnInfo>,
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    body_idle: Duration,
    /// Longest time with no request in flight.
    idle: Duration,
    watcher: Watcher,
    /// Serve it (or answer 503).
    admit: bool,
}

impl Conn {
    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            info,
            builder,
            router,
            body_idle,
            idle,
            watcher,
            admit,
        } = self;
        if !admit {
            return crate::limits::refuse(io).await;
        }
        let activity = Arc::new(Activity::default());
        let active = activity.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            if let Some(info) = info {
                req.extensions_mut().insert(info);
            }
            let guard = InFlight::enter(active.clone());
            let answer = router
                .clone()
                .oneshot(req.map(|b| axum::body::Body::new(IdleBody::new(b, body_idle))));
            async move {
                let resp = answer.await?;
                Ok::<_, std::convert::Infallible>(resp.map(|body| {
                    axum::body::Body::new(Tracked {
                        inner: body,
                        _guard: guard,
                    })
                }))
            }
        });
        let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), svc).into_owned());
        tokio::select! {
            ended = conn => if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            },
            () = activity.idle_for(idle) => tracing::debug!("idle connection closed"),
        }
    }
}

/// Requests in flight on one connection, and when that last changed.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    changed: Notify,
}

impl Activity {
    /// Resolves once no request has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            if tokio::time::timeout(idle, changed).await.is_err() {
                return;
            }
        }
    }
}

/// One request in flight, from its head to the end of its answer's body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        a.changed.notify_waiters();
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request in flight until it is sent.
struct Tracked {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An accepted socket and its place under the limit; dropped, it lingers
/// (see the module doc) and only then closes and frees the place.
struct Linger {
    inner: Option<(TcpStream, OwnedSemaphorePermit)>,
}

impl Linger {
    fn io(&mut self) -> &mut TcpStream {
        &mut self.inner.as_mut().expect("a socket until dropped").0
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let Some((mut s, permit)) = self.inner.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let _permit = permit;
            if s.shutdown().await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 16 * 1024];
            let _ = tokio::time::timeout(LINGER, async {
                let mut left = 8usize << 20;
                while left > 0 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            })
            .await;
        });
    }
}

impl AsyncRead for Linger {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Linger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.io()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_flush(cx)
    }

    /// Only flushes: the write side is shut when the socket is dropped,
    /// before the lingering read (hyper shuts it right before dropping).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_flush(cx)
    }
}
