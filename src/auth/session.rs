//! Session use cases for the fleet: validate a token (the hot path: memory only), refresh a
//! session with a single-use handle (with reuse detection), log out, and back-channel logout
//! from the provider.

use std::sync::Arc;

use tracing::{info, warn};
use url::Url;

use super::{Authenticator, HANDLE_BYTES, mint_error, session_context};
use crate::{
    crypto::{random_handle, sha256},
    domain::{Profile, parse_handle},
    error::AuthError,
    provider::ProviderError,
    revocation::Revocation,
    secret::Secret,
    store::{RefreshUse, SessionRecord},
    tokens::{Claims, TokenRejection, now},
};

/// Longest token ValidateToken accepts.
const MAX_TOKEN_LEN: usize = 8192;
const MAX_STATE_LEN: usize = 512;

/// A refreshed session.
pub struct Refreshed {
    pub access_token: Secret<String>,
    pub claims: Claims,
    pub refresh_token: Secret<String>,
    pub profile: Profile,
}

impl Authenticator {
    /// Checks a token for another service: `Ok(Ok(claims))` when valid, `Ok(Err(reason))` when
    /// not. Answers from memory (verified-token cache and the revocation set).
    pub async fn validate_token(
        &self,
        token: &str,
    ) -> Result<Result<Arc<Claims>, TokenRejection>, AuthError> {
        if token.is_empty() {
            return Err(AuthError::InvalidArgument("`token` is required".into()));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidArgument(format!(
                "`token` is longer than {MAX_TOKEN_LEN} characters"
            )));
        }
        let mut verdict = self.tokens.verify_cached(token);
        // Another replica may have just generated a key: re-read the set once (rate-limited).
        if verdict == Err(TokenRejection::UnknownKey)
            && self.tokens.reload_for_unknown_kid().await.unwrap_or(false)
        {
            verdict = self.tokens.verify_cached(token);
        }
        let verdict = match verdict {
            Ok(claims) => match self.revocations.check(&claims.sid) {
                Revocation::NotRevoked => Ok(claims),
                Revocation::Revoked => Err(TokenRejection::Revoked),
                // The set overflowed and does not hold this session: the database knows.
                Revocation::Unknown => match self.store.get_session(&claims.sid).await? {
                    Some(s) if s.revoked_at.is_none() && s.expires_at > now() => Ok(claims),
                    _ => Err(TokenRejection::Revoked),
                },
            },
            other => other,
        };
        let result = verdict.as_ref().map_or_else(|r| r.code(), |_| "valid");
        crate::metrics::inc("authgate_token_validations_total", &[("result", result)]);
        Ok(verdict)
    }

    /// Revokes a session everywhere: in the database (every replica picks it up within
    /// `revocation_sync_interval`) and in this replica's set at once.
    async fn revoke(&self, session_id: &str) -> Result<(), AuthError> {
        let at = now();
        self.store.revoke_session(session_id, at).await?;
        self.revocations.add(session_id, at);
        Ok(())
    }

    fn decrypt(
        &self,
        session: &SessionRecord,
        field: &str,
        sealed: &[u8],
    ) -> Result<Secret<String>, AuthError> {
        self.cipher
            .decrypt_secret(sealed, &session_context(&session.id, field))
            .map_err(|e| AuthError::Internal(e.to_string()))
    }

    /// Trades a refresh handle for a new token and handle. A used handle presented again revokes
    /// the session (RFC 9700 §4.14.2).
    #[tracing::instrument(skip_all)]
    pub async fn refresh_session(&self, handle: &Secret<String>) -> Result<Refreshed, AuthError> {
        let handle =
            parse_handle("refresh_token", handle.expose()).map_err(AuthError::InvalidArgument)?;
        let hash = sha256(handle.as_bytes());
        let session_id = match self.store.use_refresh_handle(&hash, now()).await? {
            RefreshUse::Fresh(id) => id,
            RefreshUse::NotFound => {
                return Err(AuthError::Unauthenticated(
                    "unknown refresh_token; sign in again".into(),
                ));
            }
            RefreshUse::Reused(id) => {
                self.revoke(&id).await?;
                warn!(sid = %id, "refresh handle reuse detected; session revoked");
                return Err(AuthError::Unauthenticated(
                    "this refresh_token was already used, so the session has been revoked as a precaution (RFC 9700 section 4.14.2); sign in again".into(),
                ));
            }
        };
        let mut session =
            self.store.get_session(&session_id).await?.ok_or(AuthError::SessionEnded)?;
        if session.revoked_at.is_some() || session.expires_at <= now() {
            return Err(AuthError::SessionEnded);
        }
        let mut profile: Profile = serde_json::from_str(&session.profile)
            .map_err(|e| AuthError::Internal(format!("stored profile does not parse: {e}")))?;

        if let (true, Some(sealed)) =
            (self.config.refresh_at_provider, session.provider_refresh_token.clone())
        {
            let provider_refresh = self.decrypt(&session, "refresh", &sealed)?;
            match self.provider.refresh(&provider_refresh).await {
                Ok(tokens) => {
                    // The user may have changed (groups) or been disabled since sign-in.
                    match self.provider.user_info(&tokens.access_token, &session.subject).await {
                        Ok(mut fresh) => {
                            fresh.sub = profile.sub.clone();
                            profile = fresh;
                        }
                        Err(e) => {
                            warn!(error = %e, "userinfo after refresh failed; keeping the stored profile")
                        }
                    }
                    let seal = |field: &str, v: &Secret<String>| {
                        self.cipher.encrypt_secret(v, &session_context(&session.id, field))
                    };
                    session.provider_access_token = Some(seal("access", &tokens.access_token));
                    if let Some(rt) = &tokens.refresh_token {
                        session.provider_refresh_token = Some(seal("refresh", rt));
                    }
                    if let Some(id) = &tokens.id_token {
                        session.provider_id_token = Some(seal("id", id));
                    }
                    session.provider_token_expires_at = tokens.expires_at;
                    // A profile too large to carry keeps the stored one; the provider's
                    // (possibly rotated) tokens are stored all the same.
                    let fitted = self.profile_json(&profile);
                    if let Ok(json) = &fitted {
                        session.profile = json.clone();
                    }
                    if !self.store.update_session_tokens(&session).await? {
                        return Err(AuthError::SessionEnded);
                    }
                    if let Err(e) = fitted {
                        // Not a reason to end the session: once the administrator narrows the
                        // claims, the same handle works again.
                        self.store.release_refresh_handle(&hash).await?;
                        return Err(e);
                    }
                }
                Err(ProviderError::Rejected { error, description }) => {
                    self.revoke(&session.id).await?;
                    info!(sid = %session.id, %error, "provider refused the refresh; session revoked");
                    return Err(AuthError::Unauthenticated(format!(
                        "the identity provider no longer accepts this session ({error}{}); sign in again",
                        description.map(|d| format!(": {d}")).unwrap_or_default()
                    )));
                }
                Err(e) => {
                    // Not the client's fault: let it retry with the same handle.
                    self.store.release_refresh_handle(&hash).await?;
                    return Err(e.into());
                }
            }
        }

        let (token, claims) = match self.tokens.mint(&session.id, &profile, session.expires_at) {
            Ok(minted) => minted,
            Err(e) => {
                self.store.release_refresh_handle(&hash).await?;
                return Err(mint_error(e));
            }
        };
        let next = Secret::new(random_handle(HANDLE_BYTES));
        self.store
            .insert_refresh_handle(&sha256(next.expose().as_bytes()), &session.id, now())
            .await?;
        Ok(Refreshed { access_token: Secret::new(token), claims, refresh_token: next, profile })
    }

    /// Checks Logout's optional parameters against the configuration.
    fn logout_target(
        &self,
        post_logout_redirect_uri: Option<String>,
        state: Option<String>,
    ) -> Result<(Option<String>, Option<String>), AuthError> {
        let allowed = &self.config.post_logout_redirect_uris;
        let uri = match post_logout_redirect_uri.filter(|u| !u.is_empty()) {
            None => allowed.first().cloned(),
            Some(u) if allowed.contains(&u) => Some(u),
            Some(u) => {
                return Err(AuthError::InvalidArgument(format!(
                    "post_logout_redirect_uri `{}` is not allowed; use one of the configured post_logout_redirect_uris exactly",
                    u.chars().take(200).collect::<String>()
                )));
            }
        };
        let state = state.filter(|s| !s.is_empty());
        if state
            .as_ref()
            .is_some_and(|s| s.len() > MAX_STATE_LEN || s.chars().any(char::is_control))
        {
            return Err(AuthError::InvalidArgument(format!(
                "state must be at most {MAX_STATE_LEN} characters with no control characters"
            )));
        }
        Ok((uri, state))
    }

    /// Ends a session: revoked everywhere, the provider refresh token revoked at the provider
    /// (best effort), and the provider's end-session URL returned.
    async fn end_session(
        &self,
        session: &SessionRecord,
        post_logout_redirect_uri: Option<&str>,
        state: Option<&str>,
    ) -> Result<Option<Url>, AuthError> {
        self.revoke(&session.id).await?;
        if let Some(sealed) = &session.provider_refresh_token {
            let token = self.decrypt(session, "refresh", sealed)?;
            if let Err(e) = self.provider.revoke_refresh_token(&token).await {
                warn!(sid = %session.id, error = %e, "could not revoke the provider refresh token");
            }
        }
        let id_token = match &session.provider_id_token {
            Some(sealed) => Some(self.decrypt(session, "id", sealed)?),
            None => None,
        };
        info!(sid = %session.id, sub = %session.subject, "logged out");
        Ok(self.provider.end_session_url(id_token.as_ref(), post_logout_redirect_uri, state))
    }

    /// Logout for a bearer token.
    #[tracing::instrument(skip_all)]
    pub async fn logout(
        &self,
        bearer: &str,
        post_logout_redirect_uri: Option<String>,
        state: Option<String>,
    ) -> Result<Option<Url>, AuthError> {
        let (uri, state) = self.logout_target(post_logout_redirect_uri, state)?;
        let (_, session) = self.authenticate(bearer).await?;
        self.end_session(&session, uri.as_deref(), state.as_deref()).await
    }

    /// Logout for a browser session cookie.
    #[tracing::instrument(skip_all)]
    pub async fn logout_cookie(&self, cookie: &str) -> Result<Option<Url>, AuthError> {
        let (uri, _) = self.logout_target(None, None)?;
        let (session, _) = self.authenticate_cookie(cookie).await?;
        self.end_session(&session, uri.as_deref(), None).await
    }

    /// OpenID Connect Back-Channel Logout: validates the provider's logout token, refuses a
    /// replayed `jti`, and revokes the matching sessions. Returns how many were revoked.
    #[tracing::instrument(skip_all)]
    pub async fn backchannel_logout(&self, logout_token: &str) -> Result<usize, AuthError> {
        if logout_token.is_empty() {
            return Err(AuthError::InvalidArgument("`logout_token` is required".into()));
        }
        let target = self.provider.validate_logout_token(logout_token).await?;
        if !self.store.remember_logout_jti(&target.jti, target.remember_until).await? {
            return Err(AuthError::InvalidArgument(
                "this logout token was already used (jti replay)".into(),
            ));
        }
        let at = now();
        let ids = self
            .store
            .revoke_sessions_by_provider(target.sid.as_deref(), target.sub.as_deref(), at)
            .await?;
        for id in &ids {
            self.revocations.add(id, at);
        }
        info!(revoked = ids.len(), "back-channel logout");
        Ok(ids.len())
    }
}
