//! What other services need to trust authgate's tokens without calling it, and the provider's
//! back-channel logout: `GET /.well-known/jwks.json`, `GET /.well-known/openid-configuration`,
//! `POST /backchannel-logout`.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{HttpState, error_response};
use crate::error::{AuthError, ErrorKind};

/// JWKS caches may keep keys this long; new keys are published `key_publish_ahead` (default
/// 10 min) before they sign, which is longer.
const JWKS_MAX_AGE: &str = "public, max-age=300";

pub async fn jwks(State(s): State<HttpState>) -> Response {
    let mut response = Json(s.auth.tokens().jwks()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(JWKS_MAX_AGE));
    response
}

/// authgate's issuer metadata: enough for any JWT library to find the keys from the `iss`.
pub async fn openid_configuration(State(s): State<HttpState>) -> Response {
    let issuer = s.auth.tokens().issuer().to_string();
    let algs: Vec<String> = s
        .auth
        .tokens()
        .jwks()
        .keys
        .iter()
        .filter_map(|k| serde_json::to_value(k).ok()?.get("alg")?.as_str().map(String::from))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut response = Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": algs,
        "subject_types_supported": ["public"],
        "response_types_supported": ["code"],
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response
}

/// `POST /backchannel-logout` (OpenID Connect Back-Channel Logout 1.0 §2.5): a form with
/// `logout_token`. 200 when accepted (even if no session matched), 400 with an OAuth-style
/// error body when the token is invalid or replayed.
pub async fn backchannel_logout(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let result = async {
        if !form_type {
            return Err(AuthError::InvalidArgument(
                "send the logout_token as an application/x-www-form-urlencoded body".into(),
            ));
        }
        let token = url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "logout_token")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        s.auth.backchannel_logout(&token).await
    }
    .await;
    let mut response = match result {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => match e.classify() {
            // The spec's answer for a token that does not validate is 400 invalid_request.
            (ErrorKind::InvalidArgument | ErrorKind::Unauthenticated, message) => {
                tracing::info!(error = %e, "back-channel logout refused");
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "error": "invalid_request", "error_description": message })),
                )
                    .into_response()
            }
            _ => error_response(e, true),
        },
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
