//! `GET /auth/check` for nginx `auth_request` (and any proxy with a sub-request check): 200 with
//! the identity headers for a valid bearer token or session cookie, 401 (with
//! `WWW-Authenticate: Bearer`) or 403 (an access rule) otherwise. The body is JSON either way.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{HttpState, browser, cookie, error_response, host, identity_headers, request_signals};
use crate::error::AuthError;

pub async fn check(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    // Two Authorization headers: which one the upstream reads is anyone's guess.
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return error_response(
            AuthError::InvalidArgument(
                "the request carries several Authorization headers; send exactly one".into(),
            ),
            true,
        );
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::domain::bearer_token)
        .map(String::from);
    let session = cookie(&headers, &browser::session_cookie_name(&s));
    // The original request's method, as the proxy forwards it (nginx:
    // `proxy_set_header X-Original-Method $request_method;`); without it, GET.
    let method = headers.get("x-original-method").and_then(|v| v.to_str().ok());
    let signals = request_signals(&headers, method, host(&headers));
    match s.auth.check_access(bearer.as_deref(), session.as_deref(), &signals).await {
        Ok(identity) => {
            let mut response = Json(
                json!({ "sub": identity.sub, "email": identity.email, "groups": identity.groups }),
            )
            .into_response();
            let h = response.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            for (name, value) in
                identity_headers(&s.auth.config().identity_header_prefix, &identity)
            {
                if let (Ok(name), Some(Ok(value))) =
                    (HeaderName::try_from(name), value.map(HeaderValue::try_from))
                {
                    h.insert(name, value);
                }
            }
            response
        }
        Err(e) => error_response(e, true),
    }
}
