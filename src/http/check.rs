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

use super::{HttpState, browser, cookie, error_response, identity_headers};

pub async fn check(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::domain::bearer_token)
        .map(String::from);
    let session = cookie(&headers, &browser::session_cookie_name(&s));
    match s.auth.check_access(bearer.as_deref(), session.as_deref()).await {
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
