//! authgate's own accept loop: every listener is served from here, on `hyper-util`, because
//! tonic's server has no HTTP/1 settings, no connection cap and retries failed accepts without
//! pause. What it guarantees, per listener:
//!
//! - at most `max_connections` open connections (and `max_connections_per_ip` from one client
//!   address, IPv6 counted by /64); a connection beyond either is closed at once;
//! - a failed `accept` (out of file descriptors, say) backs off from 10 ms to 1 s instead of
//!   spinning, and the soft open-file limit is raised to the hard one at start
//!   ([`raise_fd_limit`]), with the caps lowered to fit under it ([`fit_to_fd_limit`]);
//! - a request head must arrive within `header_read_timeout` of its first byte (a new
//!   connection's first bytes count as a head), and a connection with no request in flight for
//!   `idle_timeout` is closed — HTTP/1 at once, HTTP/2 with GOAWAY ([`connection`]);
//! - explicit HTTP/1 and HTTP/2 limits: head size, concurrent streams, header list size,
//!   keep-alive pings, and the reset-flood limits of the `h2` crate;
//! - a graceful stop: no new connections, every connection told to finish, and after
//!   `shutdown_timeout` whatever is left is closed.
//!
//! Request-level limits (deadlines, body and message sizes, which listener serves what) are
//! layers on the router: [`layers`].

pub mod admission;
mod connection;
pub mod layers;
pub mod tls;

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info, warn};

use crate::config::{ListenerLimits, TransportConfig};

/// HTTP/2 streams a client may reset before the server has even looked at them; beyond this
/// the connection is closed (the `h2` crate's defence against the "rapid reset" attack,
/// CVE-2023-44487). hyper's default, set here explicitly so it cannot drift.
const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may have to reset because the client misbehaved, before it closes the
/// connection with ENHANCE_YOUR_CALM. Also the `h2` default, set explicitly.
const HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// How long a connection asked to close (idle, or at shutdown after its grace) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Backoff after a failed accept (EMFILE, ENFILE, ENOBUFS...).
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// File descriptors kept free for everything but client connections: database pool, provider
/// calls, the listeners themselves, files.
const FD_RESERVE: usize = 256;

/// One listener's name (a metrics label), limits and live counters.
pub struct ListenerStats {
    pub name: &'static str,
    pub limits: ListenerLimits,
    open: AtomicUsize,
    /// Open connections per client address key; only kept when a per-IP cap is set.
    per_ip: Mutex<HashMap<IpKey, usize>>,
}

/// A client address as the per-IP cap counts it: IPv4 as is, IPv6 by its /64 (one host
/// usually holds a whole /64), IPv4-mapped IPv6 as IPv4. IPv4 keys are even, IPv6 keys odd.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IpKey(u128);

impl IpKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4)) << 1),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4)) << 1),
                None => Self((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
            },
        }
    }
}

impl ListenerStats {
    pub fn new(name: &'static str, limits: ListenerLimits) -> Arc<Self> {
        Arc::new(Self { name, limits, open: AtomicUsize::new(0), per_ip: Mutex::default() })
    }

    /// Open connections right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a connection slot, or says which cap refused it.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err("max_connections");
        }
        let key = (self.limits.max_connections_per_ip > 0).then(|| IpKey::of(ip));
        if let Some(key) = key {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_ip.entry(key).or_insert(0);
            if *count >= self.limits.max_connections_per_ip {
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err("max_connections_per_ip");
            }
            *count += 1;
        }
        Ok(Slot { stats: Arc::clone(self), key })
    }
}

/// An open connection's place under the caps; given back when the connection ends.
struct Slot {
    stats: Arc<ListenerStats>,
    key: Option<IpKey>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut per_ip = self.stats.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_ip.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&key);
                }
            }
        }
        self.stats.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds `guard` until the body is done with (sent in full, or dropped):
/// a request stays counted as in flight, or keeps its place in a budget, for exactly as long as
/// its response is being sent.
pub struct GuardedBody<G> {
    body: axum::body::Body,
    _guard: G,
}

impl<G> GuardedBody<G> {
    pub fn new(body: axum::body::Body, guard: G) -> Self {
        Self { body, _guard: guard }
    }
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The timeouts every connection of every listener uses.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub shutdown: Duration,
    pub max_age: Option<Duration>,
}

impl From<&TransportConfig> for Timeouts {
    fn from(t: &TransportConfig) -> Self {
        Self {
            header_read: t.header_read_timeout,
            idle: t.idle_timeout,
            shutdown: t.shutdown_timeout,
            max_age: t.max_connection_age,
        }
    }
}

/// The HTTP/1 and HTTP/2 settings of one listener.
fn http_builder(
    limits: &ListenerLimits,
    transport: &TransportConfig,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // authgate enforces its own head timeout (from the first byte, see `connection`), so
        // that an idle keep-alive connection can stay open longer than a slow head.
        .header_read_timeout(None)
        .keep_alive(true)
        .half_close(false)
        // hyper reads the head into this buffer; a head that does not fit gets 431.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(transport.http2_keepalive_interval)
        .keep_alive_timeout(transport.http2_keepalive_timeout)
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS);
    builder
}

/// Serves `router` on `listener` until `shutdown` turns true, then drains: every connection is
/// asked to finish, and after `shutdown_timeout` the rest are closed.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    stats: Arc<ListenerStats>,
    tls: Option<Arc<tls::TlsListener>>,
    transport: &TransportConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(http_builder(&stats.limits, transport));
    let timeouts = Timeouts::from(transport);
    let local = listener.local_addr().ok();
    let mut backoff = ACCEPT_BACKOFF_START;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = ACCEPT_BACKOFF_START;
                pair
            }
            // The client gave up between SYN and accept: nothing wrong with us.
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                crate::metrics::inc("authgate_accept_errors_total", &[("listener", stats.name)]);
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warn!(listener = stats.name, error = %e, retry_in = ?backoff, "accepting connections failed; backing off (out of file descriptors? see max_connections)");
                    last_warning = Some(Instant::now());
                }
                tokio::select! {
                    () = stopped(&mut shutdown) => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let slot = match stats.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                crate::metrics::inc(
                    "authgate_connections_refused_total",
                    &[("listener", stats.name), ("reason", cap)],
                );
                debug!(listener = stats.name, %peer, cap, "connection refused: at the cap");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let peer = connection::Peer { remote: peer, local };
        let (router, builder, name, stop) =
            (router.clone(), Arc::clone(&builder), stats.name, shutdown.clone());
        match &tls {
            None => {
                tokio::spawn(connection::serve(
                    stream,
                    tls::ClientCheck::default(),
                    peer,
                    router,
                    builder,
                    timeouts,
                    name,
                    stop,
                    slot,
                ));
            }
            // The handshake runs on the connection's task (holding its slot), not here.
            Some(tls) => {
                let tls = Arc::clone(tls);
                tokio::spawn(async move {
                    match tls.handshake(stream).await {
                        Ok((stream, client)) => {
                            connection::serve(
                                stream, client, peer, router, builder, timeouts, name, stop, slot,
                            )
                            .await;
                        }
                        Err(failure) => {
                            crate::metrics::inc(
                                "authgate_tls_handshake_failures_total",
                                &[("listener", name), ("reason", failure.label())],
                            );
                            debug!(listener = name, peer = %peer.remote, reason = failure.label(), "TLS handshake did not complete");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    let deadline = Instant::now() + timeouts.shutdown + CLOSE_GRACE;
    while stats.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if stats.open() > 0 {
        info!(
            listener = stats.name,
            open = stats.open(),
            "connections still open after shutdown_timeout; closing them"
        );
    }
}

/// Pending connections the kernel queues for a listener before it drops SYNs (tokio's default
/// is 128: too few for a burst of clients, or for riding out a moment without descriptors).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listener with SO_REUSEADDR (a restart does not wait for TIME_WAIT) and a backlog of
/// [`LISTEN_BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves a listener on a runtime of its own, on threads of its own (`authgate-internal`), so
/// that the operating system schedules its requests apart from the main runtime's: a flood of
/// login work queues up there, not in front of the fleet's checks. With
/// `internal_realtime_priority`, those threads run at realtime priority ([`raise_to_realtime`]).
/// Resolves when the listener has stopped.
pub fn serve_on_own_runtime(
    listener: TcpListener,
    router: axum::Router,
    stats: Arc<ListenerStats>,
    tls: Option<Arc<tls::TlsListener>>,
    transport: TransportConfig,
    shutdown: watch::Receiver<bool>,
) -> io::Result<tokio::sync::oneshot::Receiver<()>> {
    // Re-registered with the new runtime's reactor, so that its readiness does not wait on the
    // main runtime either.
    let listener = listener.into_std()?;
    let threads = std::thread::available_parallelism().map_or(2, usize::from).clamp(1, 4);
    let realtime = transport.internal_realtime_priority;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads).thread_name("authgate-internal").enable_all();
    if realtime {
        // Every thread of the runtime, workers and blocking pool alike; the accepting thread
        // below says whether the system allowed it (it answers all of them alike).
        builder.on_thread_start(|| {
            let _ = raise_to_realtime();
        });
    }
    let runtime = builder.build()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("authgate-internal-main".into()).spawn(move || {
        if realtime {
            match raise_to_realtime() {
                Ok(()) => info!("the internal listener's threads run at realtime priority (SCHED_RR 1)"),
                Err(e) => warn!(
                    error = %e,
                    "internal_realtime_priority is set, but the system refused realtime priority: grant CAP_SYS_NICE, or an RLIMIT_RTPRIO of at least 1 (`docker run --ulimit rtprio=1`, systemd `LimitRTPRIO=1`); the internal listener runs at normal priority"
                ),
            }
        }
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => serve(listener, router, stats, tls, &transport, shutdown).await,
                Err(e) => warn!(error = %e, "the internal listener could not start"),
            }
        });
        // Whatever the listener left running (connections past their grace) ends here.
        runtime.shutdown_timeout(CLOSE_GRACE);
        let _ = done_tx.send(());
    })?;
    Ok(done_rx)
}

/// Puts the calling thread in the realtime round-robin class at its lowest priority
/// (`SCHED_RR` 1): whenever it has work it runs before every normal thread on the machine —
/// login work, the database, other processes — instead of waiting for their time slices. Threads
/// it starts do not inherit this (`SCHED_RESET_ON_FORK`). Refused without CAP_SYS_NICE or an
/// `RLIMIT_RTPRIO` of at least 1; elsewhere than Linux, unsupported.
///
/// The kernel still bounds realtime threads as a whole (`sched_rt_runtime_us`: 95 % of each
/// second by default), and the internal listener's work by its own budgets
/// (`max_concurrent_checks`).
pub fn raise_to_realtime() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: with pid 0, sched_setscheduler sets the calling thread's policy only; `param`
        // lives across the call.
        let policy = libc::SCHED_RR | libc::SCHED_RESET_ON_FORK;
        if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    Err(io::Error::new(io::ErrorKind::Unsupported, "realtime priority is set on Linux only"))
}

/// Lowers the calling thread's scheduling priority (nice +5): the main runtime's workers call it
/// when an internal listener runs beside them, so that under a saturating login load the
/// operating system runs the fleet's checks first. Lowering one's own priority needs no
/// privilege; where it fails nothing changes.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority only read and set the calling thread's attributes.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, 5);
    }
}

/// Resolves once shutdown has been asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Accept errors that concern one connection only (retry at once).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Raises the soft open-file limit to the hard limit (where the system allows) and returns the
/// soft limit now in force.
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<usize> {
    None
}

/// Lowers the connection caps so that, together with a reserve for the database pool and the
/// provider, they fit under the open-file limit: a full listener then refuses connections
/// cleanly instead of failing `accept` (and, with it, every other listener).
pub fn fit_to_fd_limit(
    fd_limit: usize,
    reserve: usize,
    caps: &mut [&mut ListenerLimits],
) -> Option<String> {
    let available = fd_limit.saturating_sub(FD_RESERVE + reserve).max(caps.len());
    let wanted: usize = caps.iter().map(|c| c.max_connections).sum();
    if wanted <= available {
        return None;
    }
    let mut lowered = Vec::new();
    for cap in caps.iter_mut() {
        let share = (cap.max_connections as u128 * available as u128 / wanted as u128) as usize;
        lowered.push(format!("{} -> {}", cap.max_connections, share.max(1)));
        cap.max_connections = share.max(1);
    }
    Some(format!(
        "the open-file limit is {fd_limit}: connection caps lowered ({}) to keep {} descriptors for the database and the provider; raise `ulimit -n` to allow more",
        lowered.join(", "),
        FD_RESERVE + reserve
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize) -> ListenerLimits {
        ListenerLimits {
            max_connections: max,
            max_connections_per_ip: per_ip,
            max_header_bytes: 16384,
            http2_max_concurrent_streams: 100,
        }
    }

    #[test]
    fn caps_admit_and_release() {
        let stats = ListenerStats::new("public", limits(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = stats.admit(a).unwrap();
        let s2 = stats.admit(a).unwrap();
        assert_eq!(stats.admit(a).err(), Some("max_connections_per_ip"));
        let s3 = stats.admit(b).unwrap();
        assert_eq!(stats.admit(b).err(), Some("max_connections"));
        assert_eq!(stats.open(), 3);
        drop((s1, s2, s3));
        assert_eq!(stats.open(), 0);
        assert!(stats.per_ip.lock().unwrap().is_empty(), "the per-IP table is pruned");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a = IpKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = IpKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = IpKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            IpKey::of("::ffff:192.0.2.1".parse().unwrap()),
            IpKey::of("192.0.2.1".parse().unwrap())
        );
        assert_ne!(IpKey::of("::".parse().unwrap()), IpKey::of("0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn caps_are_lowered_to_fit_the_fd_limit() {
        let (mut public, mut internal) = (limits(10_000, 0), limits(10_000, 0));
        assert!(fit_to_fd_limit(1_048_576, 16, &mut [&mut public, &mut internal]).is_none());
        let message = fit_to_fd_limit(1024, 16, &mut [&mut public, &mut internal]).unwrap();
        assert!(message.contains("1024"), "{message}");
        assert!(public.max_connections + internal.max_connections <= 1024 - FD_RESERVE - 16);
        assert!(public.max_connections > 300);
    }
}
