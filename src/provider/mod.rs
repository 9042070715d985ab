//! The identity provider: what authgate needs from an OpenID Connect provider, behind a trait so
//! the core does not care which provider (or which fake, in benchmarks) it talks to.
//!
//! [`oidc::OidcProvider`] is the real implementation (discovery, JWKS cache, PKCE, code exchange,
//! ID-token validation, userinfo), built on the `openidconnect` crate.

pub mod oidc;

use std::sync::Arc;

use async_trait::async_trait;
use url::Url;

use crate::{domain::Profile, secret::Secret};

/// Everything that goes into the provider's authorization URL.
pub struct AuthorizationRequest<'a> {
    pub redirect_uri: &'a str,
    pub state: &'a str,
    pub nonce: &'a str,
    /// The PKCE verifier; the S256 challenge derived from it goes into the URL.
    pub pkce_verifier: &'a str,
    /// Scopes besides the configured ones.
    pub extra_scopes: &'a [String],
    pub prompt: Option<&'a str>,
    pub login_hint: Option<&'a str>,
}

/// What redeeming an authorization code yields: a validated identity and the provider's tokens.
pub struct ProviderLogin {
    pub profile: Profile,
    pub tokens: ProviderTokens,
    /// The provider's session id (`sid` claim of the ID token), for back-channel logout.
    pub provider_sid: Option<String>,
}

/// The provider's tokens. authgate keeps them server-side, encrypted; they never reach the SPA.
pub struct ProviderTokens {
    pub access_token: Secret<String>,
    pub refresh_token: Option<Secret<String>>,
    pub id_token: Option<Secret<String>>,
    /// When the access token expires (unix seconds), if the provider said.
    pub expires_at: Option<i64>,
}

/// What refreshing at the provider yields.
pub struct ProviderRefresh {
    /// The new tokens (the refresh token the provider rotated to, or the old one). Store them
    /// whatever `profile` says: the provider may already have retired the old refresh token.
    /// `id_token` is set only when the refreshed ID token validated.
    pub tokens: ProviderTokens,
    /// The user as the provider sees them now: userinfo over the refreshed ID token's claims;
    /// `Ok(None)` when the provider offers neither. An error (userinfo failed, the refreshed
    /// ID token is invalid) means the user's current profile is unknown.
    pub profile: Result<Option<Profile>, ProviderError>,
}

/// The claims of a validated back-channel logout token that select the sessions to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutTarget {
    /// The provider's session id, when the token names one.
    pub sid: Option<String>,
    /// The user, when the token names one.
    pub sub: Option<String>,
    /// The token's unique id (for replay detection).
    pub jti: String,
    /// Until when the `jti` must be remembered (unix seconds).
    pub remember_until: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Discovery has not succeeded yet (start-up, or the provider was down from the start).
    #[error("the identity provider is not available yet: {0}")]
    NotReady(String),
    /// A call to the provider failed at the network level or timed out.
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    /// The provider answered with an OAuth error (e.g. `invalid_grant`).
    #[error("the identity provider rejected the request: {error}{}", description.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected { error: String, description: Option<String> },
    /// The ID token (or userinfo response) failed validation.
    #[error("the identity provider's ID token is not valid: {0}")]
    InvalidIdToken(String),
    /// The provider answered something unusable (not JSON, missing fields).
    #[error("the identity provider sent an unusable response: {0}")]
    BadResponse(String),
}

#[async_trait]
pub trait IdentityProvider: Send + Sync + 'static {
    /// The provider's issuer, as configured.
    fn issuer(&self) -> &str;

    /// Whether discovery has completed.
    fn is_ready(&self) -> bool;

    /// Builds the authorization URL (`response_type=code`, PKCE S256, state, nonce, scopes).
    fn authorization_url(&self, request: &AuthorizationRequest<'_>) -> Result<Url, ProviderError>;

    /// Redeems an authorization code at the token endpoint, validates the ID token against the
    /// nonce, and completes a thin profile from the userinfo endpoint.
    async fn redeem_code(
        &self,
        code: &Secret<String>,
        pkce_verifier: &Secret<String>,
        redirect_uri: &str,
        nonce: &Secret<String>,
    ) -> Result<ProviderLogin, ProviderError>;

    /// Reads the profile from the userinfo endpoint; its `sub` must equal `expected_subject`.
    async fn user_info(
        &self,
        access_token: &Secret<String>,
        expected_subject: &str,
    ) -> Result<Profile, ProviderError>;

    /// A readiness probe: the discovery document answers.
    async fn check(&self) -> Result<(), ProviderError>;

    /// Notified when the provider's state changes (discovery succeeded or failed), so that
    /// readiness follows at once instead of at the next periodic check.
    fn state_changed(&self) -> Arc<tokio::sync::Notify>;

    /// Redeems a provider refresh token (the provider may rotate it), validates a refreshed
    /// ID token (same issuer, audience and `subject`) and reads the user's current profile.
    async fn refresh(
        &self,
        refresh_token: &Secret<String>,
        subject: &str,
    ) -> Result<ProviderRefresh, ProviderError>;

    /// Revokes a provider refresh token at the revocation endpoint (RFC 7009). `Ok` when the
    /// provider has no revocation endpoint.
    async fn revoke_refresh_token(
        &self,
        refresh_token: &Secret<String>,
    ) -> Result<(), ProviderError>;

    /// The provider's RP-initiated logout URL, if it has an `end_session_endpoint`.
    fn end_session_url(
        &self,
        id_token_hint: Option<&Secret<String>>,
        post_logout_redirect_uri: Option<&str>,
        state: Option<&str>,
    ) -> Option<Url>;

    /// Validates a back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.6):
    /// signature with the provider's JWKS, `iss`, `aud`, `iat`, `exp`, the logout event, no
    /// `nonce`, and `sid` and/or `sub`. Replay detection (`jti`) is the caller's.
    async fn validate_logout_token(&self, token: &str) -> Result<LogoutTarget, ProviderError>;
}
