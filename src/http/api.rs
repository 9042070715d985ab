//! The SPA flow over plain JSON, for front ends that do not speak gRPC:
//! `GET /api/login`, `POST /api/callback` (or `GET`), `GET /api/userinfo`.

use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{AppendHeaders, IntoResponse, Response},
};
use serde_json::json;

use super::{HttpState, browser, cookie, error_response, json_error, query_params};
use crate::{
    auth::{FinishLogin, LoginFinished, StartLogin},
    error::AuthError,
    secret::Secret,
};

/// `GET /api/login[?redirect_uri=&scope=&prompt=&login_hint=]` →
/// `{"login_url", "state", "expires_at", "binding"}`. The binding is also set as an HttpOnly
/// cookie, so a same-site front end does not have to keep it.
pub async fn login(State(s): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let result = async {
        let p = query_params(query.as_deref())?;
        s.auth
            .start_login(StartLogin {
                redirect_uri: p.get("redirect_uri").cloned(),
                return_to: None,
                scopes: p
                    .get("scope")
                    .map(|s| s.split(' ').filter(|s| !s.is_empty()).map(String::from).collect())
                    .unwrap_or_default(),
                prompt: p.get("prompt").cloned(),
                login_hint: p.get("login_hint").cloned(),
            })
            .await
    }
    .await;
    match result {
        Ok(started) => {
            let expires_at = chrono::DateTime::from_timestamp(started.expires_at, 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default();
            (
                AppendHeaders([
                    (header::SET_COOKIE, browser::login_cookie(&s, Some(&started.binding))),
                    (header::CACHE_CONTROL, "no-store".to_string()),
                ]),
                Json(json!({
                    "login_url": started.login_url,
                    "state": started.state,
                    "expires_at": expires_at,
                    "binding": started.binding.expose(),
                })),
            )
                .into_response()
        }
        Err(e) => error_response(e, true),
    }
}

/// `GET /api/callback?code=...&state=...[&binding=...][&redirect_uri=...][&iss=...]` → the
/// token response. The binding comes from the query or, failing that, from the cookie
/// `/api/login` set. Prefer `POST`: a query string ends up in access logs and browser history.
pub async fn callback(
    State(s): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match query_params(query.as_deref()) {
        Ok(p) => finish(&s, &headers, &p).await,
        Err(e) => error_response(e, true),
    }
}

/// The fields `POST /api/callback` accepts (those of the redirect, and the binding).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallbackBody {
    code: Option<String>,
    state: Option<String>,
    binding: Option<String>,
    redirect_uri: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `POST /api/callback` with a JSON body `{"code", "state", "binding"?, "redirect_uri"?, "iss"?}`
/// (or the redirect's `error`, `error_description`) → the token response; the code and the
/// binding stay out of URLs and access logs.
pub async fn callback_post(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return error_response(
            AuthError::InvalidArgument("send the callback as an application/json body".into()),
            true,
        );
    }
    let body: CallbackBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return error_response(
                AuthError::InvalidArgument(format!(
                    "the body is not the callback JSON object ({}): send {{\"code\", \"state\", \"binding\"}} as strings",
                    e.to_string().chars().take(200).collect::<String>()
                )),
                true,
            );
        }
    };
    let fields = [
        ("code", body.code),
        ("state", body.state),
        ("binding", body.binding),
        ("redirect_uri", body.redirect_uri),
        ("iss", body.iss),
        ("error", body.error),
        ("error_description", body.error_description),
    ];
    let p = fields.into_iter().filter_map(|(k, v)| Some((k.to_string(), v?))).collect();
    finish(&s, &headers, &p).await
}

/// Finishes a JSON-flow login from the callback's parameters.
async fn finish(
    s: &HttpState,
    headers: &HeaderMap,
    p: &std::collections::BTreeMap<String, String>,
) -> Response {
    let result = async {
        if let Some(error) = p.get("error") {
            return Err(provider_error(error, p.get("error_description")));
        }
        let binding = p
            .get("binding")
            .cloned()
            .or_else(|| cookie(headers, &browser::login_cookie_name(s)))
            .ok_or_else(|| {
                AuthError::InvalidArgument(
                    "`binding` is required: pass the binding /api/login returned (or keep its cookie)"
                        .into(),
                )
            })?;
        s.auth
            .finish_login(FinishLogin {
                code: Secret::new(p.get("code").cloned().unwrap_or_default()),
                state: p.get("state").cloned().unwrap_or_default(),
                binding: Secret::new(binding),
                redirect_uri: p.get("redirect_uri").cloned(),
                issuer: p.get("iss").cloned(),
                browser_session: false,
            })
            .await
    }
    .await;
    match result {
        Ok(done) => (
            AppendHeaders([
                (header::SET_COOKIE, browser::login_cookie(s, None)),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ]),
            Json(token_response(&done)),
        )
            .into_response(),
        Err(e) => error_response(e, true),
    }
}

/// The JSON token response shared by `/api/callback` and the JSON variant of the simple flow.
pub fn token_response(done: &LoginFinished) -> serde_json::Value {
    json!({
        "access_token": done.access_token.expose(),
        "token_type": "Bearer",
        "expires_in": done.expires_in,
        "user": done.profile,
        "session_id": done.session_id,
    })
}

/// A provider error on the redirect (`?error=access_denied&error_description=...`).
pub fn provider_error(error: &str, description: Option<&String>) -> AuthError {
    let clip = |s: &str| s.chars().take(300).collect::<String>();
    AuthError::Unauthenticated(format!(
        "the identity provider ended the sign-in with `{}`{}; start a new login",
        clip(error),
        description.map(|d| format!(": {}", clip(d))).unwrap_or_default()
    ))
}

/// `GET /api/userinfo[?refresh=true]` with `Authorization: Bearer <token>` or the browser
/// session cookie → the profile. Unauthenticated calls get a JSON 401, never a redirect.
pub async fn userinfo(
    State(s): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let refresh = match query_params(query.as_deref()) {
        Ok(p) => p.get("refresh").is_some_and(|v| v == "true" || v == "1"),
        Err(e) => return error_response(e, true),
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::domain::bearer_token)
        .map(String::from);
    let result = match (bearer, cookie(&headers, &browser::session_cookie_name(&s))) {
        (Some(token), _) => s.auth.user_info(&token, refresh).await,
        (None, Some(cookie)) => {
            s.auth.authenticate_cookie(&cookie).await.map(|(_, profile)| profile)
        }
        (None, None) => {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send `Authorization: Bearer <access_token>` or sign in with /authorization-code/login",
            );
        }
    };
    match result {
        Ok(profile) => {
            (AppendHeaders([(header::CACHE_CONTROL, "no-store")]), Json(profile)).into_response()
        }
        Err(e) => error_response(e, true),
    }
}
