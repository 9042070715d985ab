//! One connection: hyper serves it (HTTP/1.1 or HTTP/2, told apart by the preface) while a
//! watchdog enforces authgate's two connection timeouts, which hyper cannot express:
//!
//! - **head timeout**: once the first byte of a request head (or of a new connection) arrives,
//!   the whole head must follow within `header_read_timeout`, else the connection is closed.
//!   hyper's own HTTP/1 header timer starts as soon as a keep-alive connection goes idle, which
//!   would make the idle timeout and the head timeout the same number;
//! - **idle timeout**: a connection with no request in flight for `idle_timeout` is asked to
//!   close (HTTP/1 at once; HTTP/2 with GOAWAY, so clients retry nothing) and closed for good
//!   [`CLOSE_GRACE`](super::CLOSE_GRACE) later.
//!
//! The byte stream and the request/response lifecycle feed a [`Tracker`] of plain atomics: the
//! read path costs one atomic load per read once the protocol is known.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::extract::ConnectInfo;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Notify, watch},
    time::Instant,
};
use tower::ServiceExt;
use tracing::debug;

use super::{CLOSE_GRACE, GuardedBody, Slot, Timeouts, tls::ClientCheck};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The two ends of a connection, put on every request (axum's `ConnectInfo`, tonic's
/// `TcpConnectInfo`) so handlers can see the client address.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub remote: SocketAddr,
    pub local: Option<SocketAddr>,
}

/// What the watchdog needs to know about a connection, updated from the I/O and the requests.
struct Tracker {
    epoch: Instant,
    /// Requests whose response has not been fully sent (or dropped) yet.
    in_flight: AtomicU32,
    /// Milliseconds since `epoch` when the last request finished (or the connection opened).
    idle_since_ms: AtomicU64,
    /// Milliseconds since `epoch`, plus one, when the first byte of a head not yet complete
    /// arrived; 0 when no head is being read.
    head_started_ms: AtomicU64,
    /// The connection speaks HTTP/2 (its heads are frames; only the idle timeout applies).
    h2: AtomicBool,
    /// Wakes the watchdog when a head starts (its deadline moved closer).
    wake: Notify,
}

impl Tracker {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            // A new connection is "reading its first head" from the start: a client that
            // connects and sends nothing is held to the head timeout, not the idle timeout.
            head_started_ms: AtomicU64::new(1),
            h2: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Bytes arrived. Once the protocol is known this is one atomic load.
    fn on_bytes(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.h2.load(Ordering::Relaxed)
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms.store(self.now_ms() + 1, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    fn on_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
        self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(0, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// When the watchdog must look again, and what expires then.
    fn deadline(&self, timeouts: &Timeouts) -> (Instant, Option<Expiry>) {
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head != 0 && !self.h2.load(Ordering::Relaxed) {
            return (self.at(head - 1) + timeouts.header_read, Some(Expiry::HeadTimeout));
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let idle = self.idle_since_ms.load(Ordering::Relaxed);
            return (self.at(idle) + timeouts.idle, Some(Expiry::Idle));
        }
        // Busy: look again later; by then the request may have finished.
        (Instant::now() + timeouts.idle, None)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    HeadTimeout,
    Idle,
}

/// One request in flight; dropped when its response has been sent (or abandoned).
struct InFlight(Arc<Tracker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let tracker = &self.0;
        if tracker.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            tracker.idle_since_ms.store(tracker.now_ms(), Ordering::Relaxed);
        }
    }
}

/// The TCP stream, watched: it tells the tracker when bytes arrive and which protocol the
/// first 24 bytes announce.
struct WatchedStream<S> {
    inner: S,
    tracker: Arc<Tracker>,
    /// Bytes of the HTTP/2 preface matched so far; `u8::MAX` once the protocol is known.
    preface: u8,
}

impl<S> WatchedStream<S> {
    fn saw(&mut self, bytes: &[u8]) {
        if self.preface != u8::MAX {
            for &b in bytes {
                let at = usize::from(self.preface);
                if H2_PREFACE[at] != b {
                    self.preface = u8::MAX;
                    break;
                }
                self.preface += 1;
                if usize::from(self.preface) == H2_PREFACE.len() {
                    self.preface = u8::MAX;
                    self.tracker.on_h2();
                    return;
                }
            }
        }
        self.tracker.on_bytes();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && buf.filled().len() > before
        {
            let filled = buf.filled();
            this.saw(&filled[before..]);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The per-connection service hyper calls: marks the request in flight until its response body
/// is done, adds the peer address, and hands the request to the router.
#[derive(Clone)]
struct ConnectionService {
    router: axum::Router,
    tracker: Arc<Tracker>,
    peer: Peer,
    client: ClientCheck,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<GuardedBody<InFlight>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let in_flight = self.tracker.request_started();
        if let Some(refusal) = &self.client.refusal {
            let response = refuse_client(refusal, request.headers());
            return Box::pin(
                async move { Ok(response.map(|body| GuardedBody::new(body, in_flight))) },
            );
        }
        let extensions = request.extensions_mut();
        if let Some(identity) = &self.client.identity {
            extensions.insert(Arc::clone(identity));
        }
        extensions.insert(ConnectInfo(self.peer.remote));
        extensions.insert(tonic::transport::server::TcpConnectInfo {
            local_addr: self.peer.local,
            remote_addr: Some(self.peer.remote),
        });
        let response = self.router.clone().oneshot(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| GuardedBody::new(body, in_flight)))
        })
    }
}

/// A client the listener's allow-list refuses: PERMISSION_DENIED for gRPC, 403 otherwise.
fn refuse_client(reason: &str, headers: &http::HeaderMap) -> Response<axum::body::Body> {
    if super::layers::is_grpc_request(headers) {
        return super::layers::grpc_error(tonic::Status::permission_denied(reason), headers);
    }
    crate::http::json_error(http::StatusCode::FORBIDDEN, "client_not_allowed", reason)
}

/// Serves one accepted connection (plain TCP, or TLS after its handshake) until it ends, times
/// out, or shutdown closes it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve<S>(
    stream: S,
    client: ClientCheck,
    peer: Peer,
    router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    timeouts: Timeouts,
    listener: &'static str,
    mut shutdown: watch::Receiver<bool>,
    // Held until the connection is gone (parameters drop after the body's locals).
    _slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tracker = Arc::new(Tracker::new());
    let io =
        TokioIo::new(WatchedStream { inner: stream, tracker: Arc::clone(&tracker), preface: 0 });
    let service = ConnectionService { router, tracker: Arc::clone(&tracker), peer, client };
    let mut conn = std::pin::pin!(builder.serve_connection(io, service));
    // Set once the connection has been asked to close: it is dropped (closed) at this time.
    let mut closing: Option<Instant> = None;
    let mut stopping = *shutdown.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
        closing = Some(Instant::now() + CLOSE_GRACE);
    }
    // `max_connection_age`: asked to close once old, its requests allowed to finish.
    let aged = tokio::time::sleep(timeouts.max_age.unwrap_or(Duration::MAX / 4));
    let mut aged = std::pin::pin!(aged);
    loop {
        let (deadline, expiry) = match closing {
            Some(at) => (at, None),
            None => tracker.deadline(&timeouts),
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(listener, peer = %peer.remote, error = %e, "connection ended with an error");
                }
                break;
            }
            () = tokio::time::sleep_until(deadline) => {
                if closing.is_some() {
                    debug!(listener, peer = %peer.remote, "connection closed: it did not finish in time");
                    break;
                }
                // The deadline may have moved since it was computed (a request started).
                let (now_deadline, now_expiry) = tracker.deadline(&timeouts);
                if now_expiry != expiry || now_deadline > Instant::now() {
                    continue;
                }
                match now_expiry {
                    Some(Expiry::HeadTimeout) => {
                        crate::metrics::inc(
                            "authgate_connections_closed_total",
                            &[("listener", listener), ("reason", "header_read_timeout")],
                        );
                        debug!(listener, peer = %peer.remote, "connection closed: request head not received within header_read_timeout");
                        break;
                    }
                    Some(Expiry::Idle) => {
                        crate::metrics::inc(
                            "authgate_connections_closed_total",
                            &[("listener", listener), ("reason", "idle_timeout")],
                        );
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + CLOSE_GRACE);
                    }
                    None => {}
                }
            }
            () = tracker.wake.notified() => {}
            () = &mut aged, if closing.is_none() && timeouts.max_age.is_some() => {
                crate::metrics::inc(
                    "authgate_connections_closed_total",
                    &[("listener", listener), ("reason", "max_connection_age")],
                );
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + timeouts.shutdown);
            }
            _ = shutdown.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + timeouts.shutdown);
            }
        }
    }
}
