//! Request-level limits, as middleware on the router of each listener:
//!
//! - [`gate`]: with an internal listener, each RPC and route is served on one listener only
//!   (the fleet's checks, metrics and readiness on the internal one, logins on the public one);
//!   asking the wrong listener gets an answer that says where to go;
//! - [`grpc_limits`]: a deadline for every unary RPC (`request_timeout`, or the caller's shorter
//!   `grpc-timeout`; streaming RPCs keep only the caller's), and an oversized message answered
//!   with `RESOURCE_EXHAUSTED` naming the limit;
//! - [`http_limits`]: the same deadline for the plain HTTP routes (`503`), and the body limit
//!   (`413`) before a byte of an oversized body is read.

use std::time::Duration;

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::http::json_error;

/// Which part of the API a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The only listener: everything.
    All,
    /// Logins, sessions and the browser routes.
    Public,
    /// The fleet's checks, metrics and readiness.
    Internal,
}

/// Where an RPC or route lives when both listeners are in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Public,
    Internal,
    Both,
}

/// Which concurrency budget a request draws on (see [`super::admission`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Logins, sessions and the browser routes: they write, and they wait on the provider.
    Login,
    /// The fleet's checks, keys, health and metrics: answered from memory, and kept answering
    /// under a login flood.
    Check,
}

/// Which per-client limits a request is subject to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    None,
    /// An unauthenticated write that stores a login attempt: rate limit and pending caps.
    Start,
    /// An unauthenticated write that redeems one: rate limit.
    Callback,
}

/// One RPC or route authgate serves.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    pub path: &'static str,
    pub placement: Placement,
    pub class: Class,
    pub limit: Limit,
    /// A streaming RPC: no server deadline (a health Watch lives as long as its client wants).
    pub streaming: bool,
}

const fn route(path: &'static str, placement: Placement, class: Class, limit: Limit) -> Route {
    Route { path, placement, class, limit, streaming: false }
}

const fn stream(path: &'static str, placement: Placement) -> Route {
    Route { path, placement, class: Class::Check, limit: Limit::None, streaming: true }
}

use Class::{Check, Login};
use Placement::{Both, Internal, Public};

/// Every RPC and route authgate serves: the listener it belongs on (with an internal listener
/// configured), its budget and its limits. The README's "Listeners and limits" tables are this
/// list. Anything else is answered 404 / UNIMPLEMENTED, in the login budget.
pub const ROUTES: &[Route] = &[
    route("/authgate.v1.AuthService/GetLoginUrl", Public, Login, Limit::Start),
    route("/authgate.v1.AuthService/ExchangeCode", Public, Login, Limit::Callback),
    route("/authgate.v1.AuthService/GetUserInfo", Public, Login, Limit::None),
    route("/authgate.v1.AuthService/RefreshSession", Public, Login, Limit::None),
    route("/authgate.v1.AuthService/Logout", Public, Login, Limit::None),
    route("/authgate.v1.AuthService/ValidateToken", Internal, Check, Limit::None),
    route("/authgate.v1.AuthService/GetJwks", Internal, Check, Limit::None),
    route("/envoy.service.auth.v3.Authorization/Check", Internal, Check, Limit::None),
    route("/grpc.health.v1.Health/Check", Internal, Check, Limit::None),
    stream("/grpc.health.v1.Health/Watch", Internal),
    stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Both),
    stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Both),
    route("/", Public, Login, Limit::None),
    route("/authorization-code/login", Public, Login, Limit::Start),
    route("/authorization-code/callback", Public, Login, Limit::Callback),
    route("/authorization-code/logout", Public, Login, Limit::None),
    route("/api/login", Public, Login, Limit::Start),
    route("/api/callback", Public, Login, Limit::Callback),
    route("/api/userinfo", Public, Login, Limit::None),
    route("/backchannel-logout", Public, Login, Limit::None),
    route("/auth/check", Internal, Check, Limit::None),
    route("/metrics", Internal, Check, Limit::None),
    route("/readyz", Internal, Check, Limit::None),
    route("/readyz/login", Internal, Check, Limit::None),
    route("/healthz", Both, Check, Limit::None),
    route("/.well-known/jwks.json", Both, Check, Limit::None),
    route("/.well-known/openid-configuration", Both, Check, Limit::None),
];

/// The route a path names, if authgate serves it.
pub fn find(path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.path.len() == path.len() && r.path == path)
}

/// Whether a path names an RPC (as opposed to an HTTP route).
pub fn is_rpc_path(path: &str) -> bool {
    path.starts_with("/authgate.") || path.starts_with("/envoy.") || path.starts_with("/grpc.")
}

fn is_grpc(request: &Request) -> bool {
    is_grpc_request(request.headers())
}

/// Whether a request is gRPC or grpc-web (by its content type).
pub fn is_grpc_request(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A gRPC error answered outside tonic (a trailers-only response). grpc-web callers reach the
/// middleware before the grpc-web translation: they are answered in their own content type,
/// which grpc-web reads from the headers.
pub fn grpc_error(status: tonic::Status, request: &http::HeaderMap) -> Response {
    let mut response = status.into_http::<axum::body::Body>();
    if let Some(content_type) = request.get(header::CONTENT_TYPE)
        && content_type.as_bytes().starts_with(b"application/grpc-web")
    {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
    }
    response
}

/// Refuses what this listener does not serve, saying which listener does.
pub async fn gate(State(role): State<Role>, request: Request, next: Next) -> Response {
    let wrong = match (role, find(request.uri().path()).map(|r| r.placement)) {
        (Role::Public, Some(Placement::Internal)) => {
            Some("internal listener (internal_listen_addr)")
        }
        (Role::Internal, Some(Placement::Public)) => Some("public listener (listen_addr)"),
        _ => None,
    };
    let Some(other) = wrong else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if is_grpc(&request) {
        let status = tonic::Status::unimplemented(format!(
            "{} is served only on authgate's {other}",
            path.trim_start_matches('/')
        ));
        grpc_error(status, request.headers())
    } else {
        json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{path} is served only on authgate's {other}"),
        )
    }
}

/// Deadline and message-size answers for gRPC (inside the grpc-web translation, so grpc-web
/// callers get the same statuses).
pub async fn grpc_limits(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let streaming = find(request.uri().path()).is_some_and(|r| r.streaming);
    let asked = request.headers().get("grpc-timeout").and_then(parse_grpc_timeout);
    let server = (!streaming).then_some(limit);
    let (deadline, by_caller) = match (asked, server) {
        (Some(a), Some(s)) if a < s => (Some(a), true),
        (Some(a), None) => (Some(a), true),
        (_, s) => (s, false),
    };
    let response = match deadline {
        None => next.run(request).await,
        Some(deadline) => match tokio::time::timeout(deadline, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                let message = if by_caller {
                    "the caller's grpc-timeout expired before authgate finished".to_string()
                } else {
                    format!(
                        "authgate did not finish within its request_timeout ({}); the identity provider or the database may be slow; retry shortly",
                        humanize(limit)
                    )
                };
                return tonic::Status::deadline_exceeded(message).into_http();
            }
        },
    };
    too_large_as_resource_exhausted(response)
}

/// tonic answers an oversized request message with OUT_OF_RANGE; gRPC's convention (and
/// authgate's: a cap is RESOURCE_EXHAUSTED) is RESOURCE_EXHAUSTED, with the limit named.
fn too_large_as_resource_exhausted(response: Response) -> Response {
    let out_of_range = response.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    if !out_of_range {
        return response;
    }
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    if !status.message().starts_with("Error, decoded message length too large") {
        return response;
    }
    let detail = status.message().trim_start_matches("Error, decoded message length too large: ");
    tonic::Status::resource_exhausted(format!(
        "the request message is too large ({detail}; settings max_message_bytes / ext_authz_max_message_bytes)"
    ))
    .into_http()
}

/// Parses the gRPC `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The body limit and the deadline of the plain HTTP routes.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

pub async fn http_limits(
    State(limits): State<HttpLimits>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than {} bytes (max_body_bytes)",
                limits.max_body_bytes
            ),
        );
    }
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "authgate did not finish within its request_timeout ({}); the identity provider or the database may be slow; retry shortly",
                humanize(limits.request_timeout)
            ),
        )
        .into_response(),
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        let parse = |s: &str| parse_grpc_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None, "at most 8 digits");
        assert_eq!(parse("5"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("-5S"), None);
    }

    #[test]
    fn every_listed_route_is_listed_once() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(ROUTES[i + 1..].iter().all(|o| o.path != r.path), "{} listed twice", r.path);
        }
        assert_eq!(find("/metrics").map(|r| r.placement), Some(Placement::Internal));
        assert_eq!(
            find("/api/login").map(|r| (r.placement, r.limit)),
            Some((Placement::Public, Limit::Start))
        );
        assert!(find("/grpc.health.v1.Health/Watch").unwrap().streaming);
        assert_eq!(find("/no/such/route"), None);
    }
}
