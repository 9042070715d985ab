//! The plain-HTTP routes served beside gRPC on the same listener — thin adapters over the same
//! core ([`crate::auth`]):
//!
//! - the server-side ("simple") flow, [`browser`]: `GET /authorization-code/login` (302 to the
//!   provider, attempt bound to an HttpOnly cookie) and `GET /authorization-code/callback`
//!   (exchange, HttpOnly session cookie, 302 to the post-login URL — or JSON when asked);
//! - the JSON SPA flow, [`api`]: `GET /api/login`, `GET /api/callback`, `GET /api/userinfo`;
//! - the nginx `auth_request` check, [`check`]: `GET /auth/check`;
//! - keys and logout for the fleet, [`keys`]: `GET /.well-known/jwks.json`,
//!   `GET /.well-known/openid-configuration`, `POST /backchannel-logout`;
//! - liveness and readiness: `GET /healthz`, `GET /readyz`.
//!
//! Errors are JSON (`{"error": "...", "message": "..."}`) or, for a browser navigating, a small
//! HTML page — always with the status that fits, never a 500 for bad input, and never a redirect
//! for an unauthenticated fetch.

mod api;
mod browser;
mod check;
mod keys;

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;
use tokio::sync::watch;

use crate::{
    auth::Authenticator,
    error::{AuthError, ErrorKind},
    health::Readiness,
};

/// Shared state of the HTTP routes.
#[derive(Clone)]
pub struct HttpState {
    pub auth: Arc<Authenticator>,
    pub readiness: watch::Receiver<Readiness>,
    /// Every listener's live counters, for the connection gauges.
    pub listeners: Arc<Vec<Arc<crate::server::ListenerStats>>>,
    /// Every listener's admission budgets, and the per-client limits, for their gauges.
    pub admissions: Arc<Vec<Arc<crate::server::admission::Admission>>>,
    pub client_limits: Arc<crate::server::admission::ClientLimits>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(browser::home))
        .route("/authorization-code/login", get(browser::login))
        .route("/authorization-code/callback", get(browser::callback))
        .route("/authorization-code/logout", post(browser::logout))
        .route("/api/login", get(api::login))
        .route("/api/callback", get(api::callback).post(api::callback_post))
        .route("/api/userinfo", get(api::userinfo))
        .route("/auth/check", get(check::check))
        .route("/.well-known/jwks.json", get(keys::jwks))
        .route("/.well-known/openid-configuration", get(keys::openid_configuration))
        .route("/backchannel-logout", post(keys::backchannel_logout))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/readyz/login", get(readyz_login))
        .with_state(state)
}

/// A JSON error body: `{"error": "<code>", "message": "<what to fix>"}`.
pub fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let mut response =
        (status, Json(json!({ "error": code, "message": message.into() }))).into_response();
    decorate_error(&mut response);
    response
}

/// An HTML error page for a browser that navigated here.
fn html_error(status: StatusCode, title: &str, message: &str) -> Response {
    let body = page(
        title,
        &format!(
            "<p>{}</p><p><a href=\"/authorization-code/login\">Start a new sign-in</a></p>",
            escape(message)
        ),
    );
    let mut response = (status, Html(body)).into_response();
    decorate_error(&mut response);
    response
}

fn decorate_error(response: &mut Response) {
    let status = response.status();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"authgate\""),
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        headers.entry(header::RETRY_AFTER).or_insert(HeaderValue::from_static("5"));
    }
}

/// The HTTP status for each class of error.
fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition => StatusCode::BAD_REQUEST,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The one place core errors become HTTP responses (JSON or, for navigations, HTML).
pub fn error_response(e: AuthError, as_json: bool) -> Response {
    let (kind, message) = e.classify();
    e.log(kind);
    let status = http_status(kind);
    let code = match &e {
        AuthError::Overloaded { .. } => "overloaded",
        AuthError::Limited { .. } => "rate_limited",
        _ => kind.as_str(),
    };
    let mut response = if as_json {
        json_error(status, code, message)
    } else {
        html_error(status, "Sign-in failed", &message)
    };
    if let Some(secs) = e.retry_after_secs()
        && let Ok(value) = HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Whether the caller wants JSON rather than a page: an `Accept: application/json`, an XHR, or a
/// `fetch()` (which browsers mark with `Sec-Fetch-Mode: cors|same-origin`).
pub fn wants_json(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, needle: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains(needle))
    };
    has(header::ACCEPT, "application/json")
        || has(header::HeaderName::from_static("x-requested-with"), "xmlhttprequest")
        || has(header::HeaderName::from_static("sec-fetch-mode"), "cors")
        || has(header::HeaderName::from_static("sec-fetch-mode"), "same-origin")
}

/// Whether an error on `path` is answered as JSON: always, but on the pages a browser navigates
/// to (`/`, `/authorization-code/*`), where only a caller that asks for JSON gets it.
pub fn answers_json(path: &str, headers: &HeaderMap) -> bool {
    let page = path == "/" || path.starts_with("/authorization-code/");
    !page || wants_json(headers)
}

/// Longest query string accepted.
const MAX_QUERY_LEN: usize = 16 * 1024;

/// Parses a query string into single-valued parameters; a repeated parameter is an error (it
/// would be ambiguous which one is checked).
pub fn query_params(raw: Option<&str>) -> Result<BTreeMap<String, String>, AuthError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > MAX_QUERY_LEN {
        return Err(AuthError::InvalidArgument(format!(
            "the query string is longer than {MAX_QUERY_LEN} bytes"
        )));
    }
    let mut params = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if params.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(AuthError::InvalidArgument(format!(
                "query parameter `{}` is given more than once",
                k.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(params)
}

/// The value of a request cookie.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| cookie_in(v, name))
}

/// What a request's headers say about where it came from (the CSRF rule's input), for a
/// request with this method sent to this host.
pub fn request_signals<'a>(
    headers: &'a HeaderMap,
    method: Option<&'a str>,
    host: Option<&'a str>,
) -> crate::auth::csrf::RequestSignals<'a> {
    use crate::auth::csrf::{CSRF_HEADER, RequestSignals};
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    RequestSignals::from_headers(method, host, text, headers.contains_key(CSRF_HEADER))
}

/// The host a request was sent to: `X-Forwarded-Host` (a proxy's, for a gateway sub-request),
/// else `Host`.
pub fn host(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').next().unwrap_or(v).trim())
}

/// The value of cookie `name` in one `Cookie` header value.
pub fn cookie_in(header: &str, name: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
}

/// The identity headers a gateway check adds: `<prefix>sub`, `<prefix>email`, `<prefix>groups`
/// (comma-separated, kept as it was: ambiguous when a group contains a comma) and
/// `<prefix>groups-json` (a JSON array of strings, every non-ASCII character `\u`-escaped: one
/// unambiguous, header-safe reading). `None` means the header must be removed (a client could
/// have sent it). Values that are not visible ASCII are percent-encoded.
pub fn identity_headers(
    prefix: &str,
    identity: &crate::auth::Identity,
) -> [(String, Option<String>); 4] {
    let encode = |v: &str| {
        if v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            v.to_string()
        } else {
            url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
        }
    };
    [
        (format!("{prefix}sub"), Some(encode(&identity.sub))),
        (format!("{prefix}email"), identity.email.as_deref().map(encode)),
        (
            format!("{prefix}groups"),
            (!identity.groups.is_empty()).then(|| encode(&identity.groups.join(","))),
        ),
        (format!("{prefix}groups-json"), Some(ascii_json(&identity.groups))),
    ]
}

/// A JSON array of strings in printable ASCII only: `serde_json` escapes quotes, backslashes
/// and control characters; every other non-ASCII character becomes `\uXXXX` (UTF-16).
pub fn ascii_json(items: &[String]) -> String {
    let json = serde_json::to_string(items).unwrap_or_else(|_| "[]".into());
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Minimal HTML escaping for text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}}</style>\
         </head><body><main><h1>{t}</h1>{body}</main></body></html>",
        t = escape(title)
    )
}

/// The fallback for unknown paths (set after merging with the gRPC router).
pub async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Prometheus metrics: the recorded counters and histograms, plus state read now.
async fn metrics(State(state): State<HttpState>) -> Response {
    use crate::metrics::{Gauge, render};
    let store = state.auth.store();
    let mut gauges = Vec::new();
    let gauge = |name, help, labels: Vec<(&'static str, String)>, value: f64| Gauge {
        name,
        help,
        labels,
        value,
    };
    // Kept in memory: a scrape costs no table scan.
    gauges.push(gauge(
        "authgate_pending_login_attempts",
        "Login attempts started on this replica and neither exchanged here nor expired (an upper bound).",
        vec![],
        state.auth.pending_attempts() as f64,
    ));
    let (open, idle, max) = store.pool_stats();
    let pool = "Database pool connections, by state.";
    gauges.push(gauge(
        "authgate_db_pool_connections",
        pool,
        vec![("state", "in_use".into())],
        f64::from(open.saturating_sub(idle)),
    ));
    gauges.push(gauge(
        "authgate_db_pool_connections",
        pool,
        vec![("state", "idle".into())],
        f64::from(idle),
    ));
    gauges.push(gauge(
        "authgate_db_pool_max_connections",
        "Database pool size limit.",
        vec![],
        f64::from(max),
    ));
    for listener in state.listeners.iter() {
        gauges.push(gauge(
            "authgate_open_connections",
            "Open client connections, by listener.",
            vec![("listener", listener.name.into())],
            listener.open() as f64,
        ));
        gauges.push(gauge(
            "authgate_max_connections",
            "The connection cap, by listener.",
            vec![("listener", listener.name.into())],
            listener.limits.max_connections as f64,
        ));
    }
    for admission in state.admissions.iter() {
        let (logins, checks) = admission.in_flight();
        for (budget, value) in [("logins", logins), ("checks", checks)] {
            gauges.push(gauge(
                "authgate_requests_in_flight",
                "Requests in flight, by listener and budget (max_concurrent_logins, max_concurrent_checks).",
                vec![("listener", admission.listener().into()), ("budget", budget.into())],
                value as f64,
            ));
        }
    }
    gauges.push(gauge(
        "authgate_rate_limited_clients_tracked",
        "Client addresses the per-client limits currently track (pruned every 10 s).",
        vec![],
        state.client_limits.tracked() as f64,
    ));
    let (ready, login_ready) = {
        let r = state.readiness.borrow();
        (r.can_validate(), r.can_log_in())
    };
    gauges.push(gauge(
        "authgate_ready",
        "1 when tokens can be issued and checked (database reachable, a signing key active).",
        vec![],
        if ready { 1.0 } else { 0.0 },
    ));
    gauges.push(gauge(
        "authgate_login_ready",
        "1 when logins can also run (the provider is discovered and answers).",
        vec![],
        if login_ready { 1.0 } else { 0.0 },
    ));
    gauges.push(gauge(
        "authgate_revoked_sessions_tracked",
        "Recently revoked sessions this replica knows of.",
        vec![],
        state.auth.revocations().len() as f64,
    ));
    gauges.push(gauge(
        "authgate_revocation_set_overflowed",
        "1 when more sessions were revoked within the token lifetime than the set holds (validations then ask the database).",
        vec![],
        if state.auth.revocations().is_overflowed() { 1.0 } else { 0.0 },
    ));
    let (entries, bytes) = state.auth.tokens().cache_usage();
    gauges.push(gauge(
        "authgate_token_cache_entries",
        "Verified tokens cached.",
        vec![],
        entries as f64,
    ));
    gauges.push(gauge(
        "authgate_token_cache_bytes",
        "Bytes charged to the verified-token cache (bounded at 32 MiB).",
        vec![],
        bytes as f64,
    ));
    gauges.push(gauge(
        "authgate_signing_keys_published",
        "Keys in the JWKS.",
        vec![],
        state.auth.tokens().jwks().keys.len() as f64,
    ));
    gauges.push(gauge(
        "authgate_build_info",
        "Build information.",
        vec![("version", env!("CARGO_PKG_VERSION").into())],
        1.0,
    ));
    let mut response = render(&gauges).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Liveness: the process answers.
async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Readiness to validate (the readiness probe): the database answers and a signing key is
/// active. The body reports both parts.
async fn readyz(State(state): State<HttpState>) -> Response {
    readiness_answer(&state, Readiness::can_validate)
}

/// Readiness to log in: also the provider is discovered and answers.
async fn readyz_login(State(state): State<HttpState>) -> Response {
    readiness_answer(&state, Readiness::can_log_in)
}

/// 200 when `ready` holds, else 503; the body reports both parts either way.
fn readiness_answer(state: &HttpState, ready: fn(&Readiness) -> bool) -> Response {
    let r = state.readiness.borrow().clone();
    let status = if ready(&r) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(r.to_json())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_or_oversized_query_parameters_are_refused() {
        assert_eq!(query_params(Some("a=1&b=2")).unwrap()["b"], "2");
        assert!(query_params(Some("state=1&state=2")).is_err());
        assert!(query_params(Some(&"a".repeat(MAX_QUERY_LEN + 1))).is_err());
        assert!(query_params(None).unwrap().is_empty());
    }

    #[test]
    fn groups_json_is_unambiguous_and_header_safe() {
        let groups: Vec<String> =
            ["admins", "a,b", "quote\"d", "Ünïcödé", "emoji 🦀", "tab\t"].map(String::from).into();
        let json = ascii_json(&groups);
        assert!(json.bytes().all(|b| (0x20..0x7f).contains(&b)), "{json}");
        assert!(HeaderValue::from_str(&json).is_ok());
        let back: Vec<String> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, groups, "reads back exactly, commas and all");
        assert_eq!(ascii_json(&[]), "[]");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("x=1; authgate_login=abc"));
        headers.append(header::COOKIE, HeaderValue::from_static("authgate_login_other=zzz"));
        assert_eq!(cookie(&headers, "authgate_login").as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
