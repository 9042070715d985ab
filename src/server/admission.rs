//! Admission control and rate limits: the first thing every request meets, and the cheapest
//! place to refuse it.
//!
//! - **Concurrency budgets, per listener.** Login-class requests (logins, sessions, the browser
//!   routes) and check-class requests (ValidateToken, Envoy Check, `/auth/check`, keys, health,
//!   metrics) each have their own budget (`max_concurrent_logins`, `max_concurrent_checks`). A
//!   request over its budget is not queued: it is answered at once with `UNAVAILABLE` / `503`
//!   and `Retry-After: 1` — and an Envoy Check with a denial carrying 503, since Envoy would turn
//!   a gRPC error into a 403. A login flood therefore cannot take the checks' budget.
//! - **Per-client limits on the unauthenticated writes** (login starts and callbacks), keyed by
//!   the client address ([`client_address`]: the peer, or what a trusted proxy says; IPv6 by
//!   /64): a rate (`login_rate_per_client`, GCRA via `governor`), the login attempts one client
//!   may have started within `attempt_ttl` (`max_pending_attempts_per_client`), and the
//!   attempts pending on the replica (`max_pending_attempts`). Over any of them:
//!   `RESOURCE_EXHAUSTED` / `429` with `Retry-After`. The keyed state is pruned every 10 s.
//!
//! Every limit lives in this replica's memory: with N replicas behind a load balancer a client
//! gets up to N times a per-client limit, and the "global" pending cap is per replica.
//! Refusals are counted in `authgate_requests_refused_total{listener, limit}`.

use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderValue, Method, header},
    response::Response,
};
use bytes::Bytes;
use governor::{Quota, RateLimiter, clock::Clock};
use ipnet::IpNet;
use pin_project_lite::pin_project;

use super::{
    GuardedBody, IpKey,
    layers::{self, Class, Limit},
};
use crate::{auth::Authenticator, config::AdmissionConfig, error::AuthError};

type KeyedLimiter = governor::DefaultKeyedRateLimiter<IpKey>;

/// The per-client limits, shared by every listener of the replica.
pub struct ClientLimits {
    config: AdmissionConfig,
    rate: Option<KeyedLimiter>,
    pending: Option<KeyedLimiter>,
    auth: Arc<Authenticator>,
}

impl ClientLimits {
    pub fn new(config: AdmissionConfig, attempt_ttl: Duration, auth: Arc<Authenticator>) -> Self {
        let rate = NonZeroU32::new(config.login_rate_per_client).map(|rate| {
            let burst = NonZeroU32::new(config.login_burst_per_client).unwrap_or(rate);
            RateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst))
        });
        let pending = NonZeroU32::new(config.max_pending_attempts_per_client).and_then(|n| {
            let period = attempt_ttl.checked_div(n.get()).filter(|p| !p.is_zero())?;
            Quota::with_period(period).map(|q| RateLimiter::dashmap(q.allow_burst(n)))
        });
        Self { config, rate, pending, auth }
    }

    /// Checks (and charges) the limits a request to `limit`-kind route is subject to.
    fn check(&self, limit: Limit, client: IpAddr) -> Result<(), AuthError> {
        if limit == Limit::None {
            return Ok(());
        }
        let key = IpKey::of(client);
        if limit == Limit::Start && self.config.max_pending_attempts > 0 {
            let pending = self.auth.pending_attempts();
            if pending >= self.config.max_pending_attempts {
                return Err(AuthError::Limited {
                    limit: "max_pending_attempts",
                    message: format!(
                        "authgate holds {pending} unfinished logins, its max_pending_attempts; they expire within attempt_ttl: retry in a minute"
                    ),
                    retry_after_secs: 60,
                });
            }
        }
        if let Some(rate) = &self.rate
            && let Err(not_until) = rate.check_key(&key)
        {
            let wait = whole_seconds(not_until.wait_time_from(rate.clock().now()));
            return Err(AuthError::Limited {
                limit: "login_rate_per_client",
                message: format!(
                    "too many login requests from this client address: login_rate_per_client allows {} a second (bursts of {}); retry in {wait} s",
                    self.config.login_rate_per_client, self.config.login_burst_per_client
                ),
                retry_after_secs: wait,
            });
        }
        if limit == Limit::Start
            && let Some(pending) = &self.pending
            && let Err(not_until) = pending.check_key(&key)
        {
            let wait = whole_seconds(not_until.wait_time_from(pending.clock().now()));
            return Err(AuthError::Limited {
                limit: "max_pending_attempts_per_client",
                message: format!(
                    "this client address started {} logins within attempt_ttl, its max_pending_attempts_per_client; finish one, or retry in {wait} s",
                    self.config.max_pending_attempts_per_client
                ),
                retry_after_secs: wait,
            });
        }
        Ok(())
    }

    /// Forgets clients whose limits are back to their initial state (run every 10 s).
    pub fn prune(&self) {
        for limiter in self.rate.iter().chain(self.pending.iter()) {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Client addresses tracked (both limiters).
    pub fn tracked(&self) -> usize {
        self.rate.iter().chain(self.pending.iter()).map(KeyedLimiter::len).sum()
    }

    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.config.trusted_proxies
    }
}

/// A wait in whole seconds for `Retry-After`: rounded up, and at least 1 — the moment the
/// limiter named may already have passed when the answer is written (a busy machine), and
/// "retry in 0 s" would invite the caller to hammer.
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The client's address: the peer's, unless the peer is a trusted proxy — then Envoy's
/// `x-envoy-external-address`, or the rightmost `X-Forwarded-For` entry that is not itself a
/// trusted proxy. (Entries further left were written by whoever the client is, and prove
/// nothing.)
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
    let peer = canonical(peer);
    if !is_trusted(peer) {
        return peer;
    }
    if let Some(ip) = headers
        .get("x-envoy-external-address")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return canonical(ip);
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else { return client };
        for hop in value.rsplit(',') {
            match parse_hop(hop.trim()) {
                Some(ip) if !is_trusted(ip) => return ip,
                Some(ip) => client = ip,
                None => return client,
            }
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`[v6]:port`, `v4:port`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|s| s.ip()).map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

/// A concurrency budget: requests in flight and the most allowed.
struct Budget {
    in_flight: AtomicUsize,
    max: usize,
}

impl Budget {
    fn try_enter(self: &Arc<Self>) -> Option<Permit> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit(Arc::clone(self)))
    }
}

/// A place in a budget, given back when dropped.
struct Permit(Arc<Budget>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one listener admits: its two budgets, and the replica's per-client limits.
pub struct Admission {
    listener: &'static str,
    logins: Arc<Budget>,
    checks: Arc<Budget>,
    limits: Arc<ClientLimits>,
    /// Browser origins allowed by CORS: refusals carry the CORS headers too, so a SPA can read
    /// the status and `Retry-After` (the CORS layer sits behind admission).
    origins: Vec<HeaderValue>,
}

impl Admission {
    pub fn new(
        listener: &'static str,
        config: &AdmissionConfig,
        limits: Arc<ClientLimits>,
        origins: &[String],
    ) -> Arc<Self> {
        let budget = |max| Arc::new(Budget { in_flight: AtomicUsize::new(0), max });
        Arc::new(Self {
            listener,
            logins: budget(config.max_concurrent_logins),
            checks: budget(config.max_concurrent_checks),
            limits,
            origins: origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect(),
        })
    }

    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// Requests in flight in each budget (logins, checks).
    pub fn in_flight(&self) -> (usize, usize) {
        (
            self.logins.in_flight.load(Ordering::Relaxed),
            self.checks.in_flight.load(Ordering::Relaxed),
        )
    }

    fn refuse(&self, request: &Request, path: &str, limit: &'static str, e: AuthError) -> Response {
        crate::metrics::inc(
            "authgate_requests_refused_total",
            &[("listener", self.listener), ("limit", limit)],
        );
        let headers = request.headers();
        let mut response = if path == "/envoy.service.auth.v3.Authorization/Check" {
            let retry = e.retry_after_secs().unwrap_or(1);
            grpc_message(&crate::grpc::overloaded_check_response(e.to_string(), retry))
        } else if layers::is_grpc_request(headers) {
            layers::grpc_error(crate::grpc::status_from(e), headers)
        } else {
            crate::http::error_response(e, crate::http::answers_json(path, headers))
        };
        if let Some(origin) = headers.get(header::ORIGIN)
            && self.origins.iter().any(|o| o == origin)
        {
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(
                    "grpc-status,grpc-message,grpc-status-details-bin,retry-after",
                ),
            );
            h.append(header::VARY, HeaderValue::from_static("origin"));
        }
        response
    }
}

/// A gRPC response carrying one message and `grpc-status: 0` trailers.
fn grpc_message(message: &impl prost::Message) -> Response {
    use http_body::Frame;
    let encoded = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + encoded.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&encoded);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: [Result<Frame<Bytes>, Infallible>; 2] =
        [Ok(Frame::data(Bytes::from(framed))), Ok(Frame::trailers(trailers))];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let mut response = Response::new(Body::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// The tower layer that puts [`Admission`] in front of a listener's router.
#[derive(Clone)]
pub struct AdmissionLayer(pub Arc<Admission>);

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService { inner, admission: Arc::clone(&self.0) }
    }
}

#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S> tower::Service<Request> for AdmissionService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Admitted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // CORS preflights are answered from configuration alone: never refused.
        if request.method() == Method::OPTIONS {
            return Admitted::Inner {
                future: self.inner.call(request),
                permit: None,
                streaming: false,
            };
        }
        let a = &self.admission;
        let path = request.uri().path();
        let route = layers::find(path);
        let class = route.map_or(Class::Login, |r| r.class);
        let (budget, budget_name) = match class {
            Class::Login => (&a.logins, "max_concurrent_logins"),
            Class::Check => (&a.checks, "max_concurrent_checks"),
        };
        let Some(permit) = budget.try_enter() else {
            let e = AuthError::Overloaded {
                message: format!(
                    "authgate is at its {budget_name} ({} requests in flight on the {} listener); retry in a second",
                    budget.max, a.listener
                ),
                retry_after_secs: 1,
            };
            let path = path.to_string();
            return Admitted::Refused { response: Some(a.refuse(&request, &path, budget_name, e)) };
        };
        let limit = route.map_or(Limit::None, |r| r.limit);
        if limit != Limit::None {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
            let client = client_address(peer, request.headers(), a.limits.trusted_proxies());
            if let Err(e) = a.limits.check(limit, client) {
                let name = match &e {
                    AuthError::Limited { limit, .. } => *limit,
                    _ => "other",
                };
                let path = path.to_string();
                return Admitted::Refused { response: Some(a.refuse(&request, &path, name, e)) };
            }
        }
        let streaming = route.is_some_and(|r| r.streaming);
        Admitted::Inner { future: self.inner.call(request), permit: Some(permit), streaming }
    }
}

pin_project! {
    /// The response to an admitted request (holding its budget until it is done: the response
    /// for a unary call, the whole stream for a streaming one), or a refusal.
    #[project = AdmittedProj]
    pub enum Admitted<F> {
        Inner { #[pin] future: F, permit: Option<Permit>, streaming: bool },
        Refused { response: Option<Response> },
    }
}

impl<F> Future for Admitted<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdmittedProj::Inner { future, permit, streaming } => {
                let response = std::task::ready!(future.poll(cx))?;
                let permit = permit.take();
                if *streaming {
                    // A stream keeps its place until it ends.
                    return Poll::Ready(Ok(
                        response.map(|body| Body::new(GuardedBody::new(body, permit)))
                    ));
                }
                drop(permit);
                Poll::Ready(Ok(response))
            }
            AdmittedProj::Refused { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_default()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        assert_eq!(whole_seconds(Duration::ZERO), 1, "a wait that has just run out");
        assert_eq!(whole_seconds(Duration::from_millis(200)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_client_address_comes_from_trusted_proxies_only() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let client = |peer: &str, h: &[(&str, &str)]| {
            client_address(peer.parse().unwrap(), &headers(h), &trusted).to_string()
        };
        // An untrusted peer: its headers are ignored.
        assert_eq!(client("203.0.113.9", &[("x-forwarded-for", "198.51.100.1")]), "203.0.113.9");
        // A trusted proxy: the rightmost untrusted hop.
        assert_eq!(
            client("10.0.0.2", &[("x-forwarded-for", "1.2.3.4, 198.51.100.1, 10.0.0.7")]),
            "198.51.100.1"
        );
        // Several headers are one list, in order.
        assert_eq!(
            client("10.0.0.2", &[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "10.1.1.1")]),
            "1.2.3.4"
        );
        // Envoy's own answer wins.
        assert_eq!(
            client(
                "::1",
                &[("x-envoy-external-address", "198.51.100.7"), ("x-forwarded-for", "1.1.1.1")]
            ),
            "198.51.100.7"
        );
        // Ports, IPv4-mapped peers, garbage.
        assert_eq!(client("10.0.0.2", &[("x-forwarded-for", "[2001:db8::5]:443")]), "2001:db8::5");
        assert_eq!(
            client("::ffff:10.0.0.2", &[("x-forwarded-for", "198.51.100.1:80")]),
            "198.51.100.1"
        );
        assert_eq!(client("10.0.0.2", &[("x-forwarded-for", "nonsense")]), "10.0.0.2");
        assert_eq!(client("10.0.0.2", &[]), "10.0.0.2");
    }

    #[test]
    fn budgets_admit_up_to_their_size() {
        let budget = Arc::new(Budget { in_flight: AtomicUsize::new(0), max: 2 });
        let a = budget.try_enter().unwrap();
        let _b = budget.try_enter().unwrap();
        assert!(budget.try_enter().is_none());
        drop(a);
        assert!(budget.try_enter().is_some());
    }
}
