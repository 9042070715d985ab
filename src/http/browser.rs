//! The server-side ("simple") flow for browsers: `GET /authorization-code/login` and
//! `GET /authorization-code/callback`, with the attempt bound to the browser by an HttpOnly
//! cookie and the resulting session held in another. `GET /` shows who is signed in.

use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use super::{
    HttpState, api, cookie, error_response, escape, host, page, query_params, request_signals,
    wants_json,
};
use crate::{
    auth::{FinishLogin, StartLogin},
    error::AuthError,
    secret::Secret,
};

use crate::config::{LOGIN_COOKIE, SESSION_COOKIE};

fn cookie_name(s: &HttpState, base: &str) -> String {
    s.auth.config().cookie_name(base)
}

pub fn login_cookie_name(s: &HttpState) -> String {
    cookie_name(s, LOGIN_COOKIE)
}

pub fn session_cookie_name(s: &HttpState) -> String {
    cookie_name(s, SESSION_COOKIE)
}

/// `Set-Cookie` for a cookie; `None` deletes it. HttpOnly, SameSite=Lax (it must survive the
/// top-level redirect back from the provider), Secure over https.
fn set_cookie(s: &HttpState, base: &str, value: Option<&Secret<String>>, max_age: u64) -> String {
    let secure = if s.auth.config().secure_cookies() { "; Secure" } else { "" };
    match value {
        Some(v) => format!(
            "{}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
            cookie_name(s, base),
            v.expose()
        ),
        None => {
            format!("{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}", cookie_name(s, base))
        }
    }
}

pub fn login_cookie(s: &HttpState, binding: Option<&Secret<String>>) -> String {
    set_cookie(s, LOGIN_COOKIE, binding, s.auth.config().attempt_ttl.as_secs())
}

fn session_cookie(s: &HttpState, handle: Option<&Secret<String>>) -> String {
    set_cookie(s, SESSION_COOKIE, handle, s.auth.config().session_max_age.as_secs())
}

fn header_value(text: &str) -> Result<HeaderValue, AuthError> {
    HeaderValue::from_str(text).map_err(|_| AuthError::Internal("unencodable header value".into()))
}

/// `GET /authorization-code/login[?return_to=&prompt=&login_hint=]` → 302 to the provider.
pub async fn login(
    State(s): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let p = query_params(query.as_deref())?;
        let started = s
            .auth
            .start_login(StartLogin {
                redirect_uri: Some(s.auth.config().http_callback_url.as_str().to_string()),
                return_to: p.get("return_to").cloned(),
                scopes: Vec::new(),
                prompt: p.get("prompt").cloned(),
                login_hint: p.get("login_hint").cloned(),
            })
            .await?;
        let mut response = StatusCode::FOUND.into_response();
        let h = response.headers_mut();
        h.insert(header::LOCATION, header_value(&started.login_url)?);
        h.insert(header::SET_COOKIE, header_value(&login_cookie(&s, Some(&started.binding)))?);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok::<_, AuthError>(response)
    }
    .await;
    result.unwrap_or_else(|e| error_response(e, wants_json(&headers)))
}

/// `GET /authorization-code/callback?code=...&state=...` → session cookie and 302 to the
/// post-login URL (or the JSON token response when the request asks for JSON).
pub async fn callback(
    State(s): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let as_json = wants_json(&headers);
    let result = async {
        let p = query_params(query.as_deref())?;
        if let Some(error) = p.get("error") {
            return Err(api::provider_error(error, p.get("error_description")));
        }
        let binding = cookie(&headers, &login_cookie_name(&s)).ok_or_else(|| {
            AuthError::InvalidArgument(
                "the sign-in cookie is missing: start the sign-in at /authorization-code/login in this browser, with cookies enabled".into(),
            )
        })?;
        let done = s
            .auth
            .finish_login(FinishLogin {
                code: Secret::new(p.get("code").cloned().unwrap_or_default()),
                state: p.get("state").cloned().unwrap_or_default(),
                binding: Secret::new(binding),
                redirect_uri: Some(s.auth.config().http_callback_url.as_str().to_string()),
                issuer: p.get("iss").cloned(),
                browser_session: true,
            })
            .await?;
        let mut response = if as_json {
            Json(api::token_response(&done)).into_response()
        } else {
            let target = done
                .return_to
                .clone()
                .or_else(|| s.auth.config().post_login_redirect_urls.first().cloned())
                .unwrap_or_else(|| "/".into());
            let mut r = StatusCode::FOUND.into_response();
            r.headers_mut().insert(header::LOCATION, header_value(&target)?);
            r
        };
        let h = response.headers_mut();
        h.append(header::SET_COOKIE, header_value(&session_cookie(&s, done.cookie.as_ref()))?);
        h.append(header::SET_COOKIE, header_value(&login_cookie(&s, None))?);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok::<_, AuthError>(response)
    }
    .await;
    result.unwrap_or_else(|e| error_response(e, as_json))
}

/// `POST /authorization-code/logout`: ends the cookie session (revoked everywhere, provider
/// refresh token revoked), clears the cookie and sends the browser to the provider's
/// end-session URL (or answers `{"end_session_url": ...}` to a fetch). A POST, so that a
/// cross-site page cannot log the user out (the SameSite=Lax cookie is not sent with it).
pub async fn logout(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let as_json = wants_json(&headers);
    let result = async {
        // Refused before anything, cookie or not: the answer clears the cookie, so a forged
        // logout would sign the user out even where SameSite keeps the cookie from coming.
        s.auth.check_cross_site(&request_signals(&headers, Some("POST"), host(&headers)))?;
        let url = match cookie(&headers, &session_cookie_name(&s)) {
            Some(c) => match s.auth.logout_cookie(&c).await {
                Ok(url) => url.map(String::from),
                // Already ended: logging out again is not an error.
                Err(AuthError::SessionEnded | AuthError::Unauthenticated(_)) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let target = url
            .clone()
            .or_else(|| s.auth.config().post_logout_redirect_uris.first().cloned())
            .unwrap_or_else(|| "/".into());
        let mut response = if as_json {
            Json(serde_json::json!({ "end_session_url": url })).into_response()
        } else {
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut().insert(header::LOCATION, header_value(&target)?);
            r
        };
        let h = response.headers_mut();
        h.append(header::SET_COOKIE, header_value(&session_cookie(&s, None))?);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok::<_, AuthError>(response)
    }
    .await;
    result.unwrap_or_else(|e| error_response(e, as_json))
}

/// `GET /`: who is signed in through the browser session cookie (the default post-login page).
pub async fn home(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let body = match cookie(&headers, &session_cookie_name(&s)) {
        Some(c) => match s.auth.authenticate_cookie(&c).await {
            Ok((_, profile)) => format!(
                "<p id=\"signed-in\">Signed in as <strong>{}</strong> ({}).</p><p>Groups: {}</p>\
                 <form method=\"post\" action=\"/authorization-code/logout\"><button id=\"sign-out\">Sign out</button></form>",
                escape(profile.name.as_deref().unwrap_or(&profile.sub)),
                escape(profile.email.as_deref().unwrap_or("no email")),
                escape(&profile.groups.unwrap_or_default().join(", ")),
            ),
            Err(AuthError::Store(e)) => {
                return error_response(AuthError::Store(e), wants_json(&headers));
            }
            Err(_) => signed_out(),
        },
        None => signed_out(),
    };
    let mut response = Html(page("authgate", &body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn signed_out() -> String {
    "<p id=\"signed-out\">Not signed in.</p><p><a href=\"/authorization-code/login\">Sign in</a></p>".into()
}
