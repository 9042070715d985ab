//! Turning the provider client's failures into [`ProviderError`]s (never with a token or a
//! response body in the message), and timing every call into the metrics.

use openidconnect::{RequestTokenError, StandardErrorResponse, core::CoreErrorResponseType};
use serde::Serialize;

use crate::provider::ProviderError;

/// Times a call to the provider and counts its failure, by endpoint.
pub(super) async fn observed<T, E>(
    endpoint: &'static str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = crate::metrics::timed(
        "authgate_provider_request_duration_seconds",
        &[("endpoint", endpoint)],
        call,
    )
    .await;
    if result.is_err() {
        crate::metrics::inc("authgate_provider_errors_total", &[("endpoint", endpoint)]);
    }
    result
}

/// The `sid` claim is not modelled by openidconnect; read it from the (already verified) payload.
pub(super) fn claims_sid<T: Serialize>(id_token: &T) -> Option<String> {
    let compact = serde_json::to_value(id_token).ok()?;
    let payload = compact.as_str()?.split('.').nth(1)?;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("sid")?.as_str().map(str::to_string)
}

/// An error and its sources on one line (reqwest hides the useful part in a source).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub(super) fn token_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, StandardErrorResponse<CoreErrorResponseType>>,
) -> ProviderError {
    match e {
        RequestTokenError::ServerResponse(r) => ProviderError::Rejected {
            error: r.error().to_string(),
            description: r.error_description().cloned(),
        },
        RequestTokenError::Request(inner) => {
            ProviderError::Unreachable(format!("token request failed: {}", error_chain(&inner)))
        }
        // The body may hold tokens: never include it.
        RequestTokenError::Parse(inner, _body) => ProviderError::BadResponse(format!(
            "the token response does not parse (at {})",
            inner.path()
        )),
        RequestTokenError::Other(msg) => {
            ProviderError::BadResponse(format!("token endpoint: {msg}"))
        }
    }
}

pub(super) fn id_token_error(e: openidconnect::ClaimsVerificationError) -> ProviderError {
    use openidconnect::{ClaimsVerificationError as E, SignatureVerificationError as S};
    ProviderError::InvalidIdToken(match e {
        E::Expired(m) => format!("expired or outside the allowed clock skew: {m}"),
        E::InvalidAudience(m) => format!("wrong audience: {m}"),
        E::InvalidIssuer(m) => format!("wrong issuer: {m}"),
        E::InvalidNonce(_) => "nonce does not match the login attempt".into(),
        E::InvalidSubject(m) => format!("wrong subject: {m}"),
        E::SignatureVerification(S::NoMatchingKey) => {
            "signed by a key that is not in the provider's JWKS".into()
        }
        E::SignatureVerification(S::DisallowedAlg(m)) => format!("algorithm not allowed: {m}"),
        E::SignatureVerification(S::NoSignature) => "unsigned (alg none)".into(),
        E::SignatureVerification(other) => format!("signature check failed: {other}"),
        other => other.to_string(),
    })
}
