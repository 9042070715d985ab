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

/// Every RPC and route authgate serves and the listener it belongs on (with an internal
/// listener configured). The README's "Listeners" table is this list.
pub const PLACEMENT: &[(&str, Placement)] = &[
    ("/authgate.v1.AuthService/GetLoginUrl", Placement::Public),
    ("/authgate.v1.AuthService/ExchangeCode", Placement::Public),
    ("/authgate.v1.AuthService/GetUserInfo", Placement::Public),
    ("/authgate.v1.AuthService/RefreshSession", Placement::Public),
    ("/authgate.v1.AuthService/Logout", Placement::Public),
    ("/authgate.v1.AuthService/ValidateToken", Placement::Internal),
    ("/authgate.v1.AuthService/GetJwks", Placement::Internal),
    ("/envoy.service.auth.v3.Authorization/Check", Placement::Internal),
    ("/grpc.health.v1.Health/Check", Placement::Internal),
    ("/grpc.health.v1.Health/Watch", Placement::Internal),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Placement::Both),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Placement::Both),
    ("/", Placement::Public),
    ("/authorization-code/login", Placement::Public),
    ("/authorization-code/callback", Placement::Public),
    ("/authorization-code/logout", Placement::Public),
    ("/api/login", Placement::Public),
    ("/api/callback", Placement::Public),
    ("/api/userinfo", Placement::Public),
    ("/backchannel-logout", Placement::Public),
    ("/auth/check", Placement::Internal),
    ("/metrics", Placement::Internal),
    ("/readyz", Placement::Internal),
    ("/healthz", Placement::Both),
    ("/.well-known/jwks.json", Placement::Both),
    ("/.well-known/openid-configuration", Placement::Both),
];

/// Streaming RPCs: no server deadline (a health Watch lives as long as its client wants).
const STREAMING: &[&str] = &[
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

fn placement(path: &str) -> Option<Placement> {
    PLACEMENT.iter().find(|(p, _)| *p == path).map(|(_, placement)| *placement)
}

fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Refuses what this listener does not serve, saying which listener does.
pub async fn gate(State(role): State<Role>, request: Request, next: Next) -> Response {
    let wrong = match (role, placement(request.uri().path())) {
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
        let mut response = status.into_http::<axum::body::Body>();
        // grpc-web callers reach this before the grpc-web translation: answer in their type
        // (a trailers-only response, which grpc-web reads from the headers).
        if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
            if content_type.as_bytes().starts_with(b"application/grpc-web") {
                response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
            }
        }
        response
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
    let streaming = STREAMING.contains(&request.uri().path());
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
    fn every_listed_route_has_one_placement() {
        for (i, (path, _)) in PLACEMENT.iter().enumerate() {
            assert!(PLACEMENT[i + 1..].iter().all(|(p, _)| p != path), "{path} listed twice");
        }
        assert_eq!(placement("/metrics"), Some(Placement::Internal));
        assert_eq!(placement("/api/login"), Some(Placement::Public));
        assert_eq!(placement("/no/such/route"), None);
    }
}
