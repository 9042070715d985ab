//! Session use cases for the fleet: validate a token (the hot path: memory only), refresh a
//! session with a single-use handle (with reuse detection), log out, and back-channel logout
//! from the provider.

use std::sync::Arc;

use tracing::{info, warn};
use url::Url;

use super::{Authenticator, HANDLE_BYTES, mint_error, session_context};
use crate::{
    crypto::{Cipher, random_handle, sha256},
    domain::{Profile, parse_handle},
    error::AuthError,
    provider::ProviderError,
    revocation::Revocation,
    secret::Secret,
    store::{RefreshUse, Rotation, SessionRecord},
    tokens::{Claims, TokenRejection, now},
};

/// Longest token ValidateToken accepts.
const MAX_TOKEN_LEN: usize = 8192;
const MAX_STATE_LEN: usize = 512;

/// How many successors a refresh within the grace follows to the newest one.
const MAX_GRACE_HOPS: usize = 8;

/// The context the refresh grace seals a successor handle under.
const GRACE_CONTEXT: &str = "refresh-grace";

/// The cipher that seals a handle's successor for its grace: its key derives from the used
/// handle, which is stored only hashed, so the sealed successor opens only for whoever presents
/// that handle again.
fn grace_cipher(handle: &str) -> Cipher {
    let mut input = b"authgate refresh grace\0".to_vec();
    input.extend_from_slice(handle.as_bytes());
    Cipher::new(&Secret::new(sha256(&input)))
}

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
                    Some(s) if s.is_live(now(), self.idle_timeout_secs()) => Ok(claims),
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
    pub(super) async fn revoke(&self, session_id: &str) -> Result<(), AuthError> {
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
    ///
    /// With a provider refresh token, the session is refreshed at the provider first — by one
    /// replica at a time (the session's refresh lease) — and the access rules are applied to the
    /// user's profile as the provider now sees it, failing closed when it cannot say. Only the
    /// provider's `invalid_grant` (or access now denied) ends the session; any other failure
    /// leaves the session and the handle as they were, with the provider's rotated tokens kept.
    /// The handle rotation is atomic: the new handle exists exactly when the old one is used.
    ///
    /// `from_cookie`: the handle came in the refresh cookie (cookie mode). Only then does a used
    /// handle presented again within `refresh_grace` get the successor already issued for it
    /// (two tabs, a retried request) instead of revoking the session.
    #[tracing::instrument(skip_all)]
    pub async fn refresh_session(
        &self,
        handle: &Secret<String>,
        from_cookie: bool,
    ) -> Result<Refreshed, AuthError> {
        let handle =
            parse_handle("refresh_token", handle.expose()).map_err(AuthError::InvalidArgument)?;
        let hash = sha256(handle.as_bytes());
        let session_id = match self.store.find_refresh_handle(&hash).await? {
            RefreshUse::Fresh(id) => id,
            RefreshUse::NotFound => {
                return Err(AuthError::Unauthenticated(
                    "unknown refresh_token; sign in again".into(),
                ));
            }
            RefreshUse::Reused(id) => {
                return self.used_again(&id, &handle, &hash, from_cookie).await;
            }
        };
        let mut session =
            self.store.get_session(&session_id).await?.ok_or(AuthError::SessionEnded)?;
        if !session.is_live(now(), self.idle_timeout_secs()) {
            return Err(AuthError::SessionEnded);
        }
        let stored: Profile = serde_json::from_str(&session.profile)
            .map_err(|e| AuthError::Internal(format!("stored profile does not parse: {e}")))?;

        // At the provider at most once per provider_refresh_min_interval (since sign-in or the
        // last refresh there): reloads and tabs refresh from the stored profile in between.
        let checked = session.provider_checked_at.unwrap_or(session.created_at);
        let due = now() - checked >= self.config.provider_refresh_min_interval.as_secs() as i64;
        let at_provider = match (self.config.refresh_at_provider, &session.provider_refresh_token) {
            (true, Some(sealed)) if due => Some(self.decrypt(&session, "refresh", sealed)?),
            _ => None,
        };
        let (profile, lease) = match at_provider {
            None => (stored, None),
            Some(provider_refresh) => {
                let lease = random_handle(16);
                // The provider's calls (token, JWKS, userinfo) each end within the timeout.
                let hold = 3 * self.config.provider.timeout.as_secs() as i64 + 5;
                if !self
                    .store
                    .acquire_refresh_lease(&session.id, &lease, now() + hold, now())
                    .await?
                {
                    return Err(AuthError::Overloaded {
                        message: "this session is being refreshed by another request; retry in a second with the same refresh_token".into(),
                        retry_after_secs: 1,
                    });
                }
                match self.refresh_at_provider(&mut session, &stored, &provider_refresh).await {
                    Ok(profile) => (profile, Some(lease)),
                    Err(e) => {
                        self.give_back_lease(&session, &lease).await;
                        return Err(e);
                    }
                }
            }
        };
        // The access rules, on the profile as the provider now sees it (or as stored, when the
        // session cannot be refreshed at the provider: the rules may have changed).
        self.revoke_unless_allowed(&session.id, &profile).await?;
        // A profile or token too large keeps the session: once the administrator narrows the
        // claims, the same handle works again.
        session.profile = match self.profile_json(&profile) {
            Ok(json) => json,
            Err(e) => return Err(self.abandon(&session, lease.as_deref(), e).await),
        };
        let (token, claims) = match self.tokens.mint(&session.id, &profile, session.expires_at) {
            Ok(minted) => minted,
            Err(e) => return Err(self.abandon(&session, lease.as_deref(), mint_error(e)).await),
        };
        let next = Secret::new(random_handle(HANDLE_BYTES));
        let next_hash = sha256(next.expose().as_bytes());
        let grace = self.grace_enabled(from_cookie).then(|| {
            let sealed = grace_cipher(&handle).encrypt(next.expose().as_bytes(), GRACE_CONTEXT);
            (sealed, now() + self.config.refresh_grace.as_secs_f64().ceil() as i64)
        });
        let grace = grace.as_ref().map(|(sealed, until)| (sealed.as_slice(), *until));
        let rotation = match self
            .store
            .rotate_refresh_handle(&hash, &next_hash, &session, lease.as_deref(), grace, now())
            .await
        {
            Ok(rotation) => rotation,
            Err(e) => return Err(self.abandon(&session, lease.as_deref(), e.into()).await),
        };
        match rotation {
            Rotation::Rotated => Ok(Refreshed {
                access_token: Secret::new(token),
                claims,
                refresh_token: next,
                profile,
            }),
            Rotation::HandleUsed => self.used_again(&session.id, &handle, &hash, from_cookie).await,
            Rotation::SessionChanged => Err(AuthError::SessionEnded),
        }
    }

    fn grace_enabled(&self, from_cookie: bool) -> bool {
        from_cookie && !self.config.refresh_grace.is_zero()
    }

    /// A used refresh handle came back. From the refresh cookie and within its grace: the
    /// successor already issued for it, with a fresh access token. Otherwise a replay: the
    /// session is revoked (RFC 9700 section 4.14.2).
    async fn used_again(
        &self,
        session_id: &str,
        handle: &str,
        hash: &[u8],
        from_cookie: bool,
    ) -> Result<Refreshed, AuthError> {
        if self.grace_enabled(from_cookie) {
            // Follow the successors to the newest, still unused handle: the browser keeps one
            // cookie for all its tabs, so handing back an older successor would overwrite a
            // newer one. Every hop was issued later than the one before, so its grace lasts
            // longer; a bounded number of hops.
            let (mut current, mut current_hash) = (handle.to_string(), hash.to_vec());
            for _ in 0..MAX_GRACE_HOPS {
                let Some(sealed) = self.store.refresh_successor(&current_hash, now()).await? else {
                    break;
                };
                let Some(next) = grace_cipher(&current)
                    .decrypt(&sealed, GRACE_CONTEXT)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                else {
                    break;
                };
                let next_hash = sha256(next.as_bytes()).to_vec();
                match self.store.find_refresh_handle(&next_hash).await? {
                    RefreshUse::Fresh(_) => {
                        return self.successor(session_id, Secret::new(next)).await;
                    }
                    RefreshUse::Reused(_) => (current, current_hash) = (next, next_hash),
                    RefreshUse::NotFound => break,
                }
            }
        }
        Err(self.reuse_detected(session_id).await)
    }

    /// The answer of a refresh within the grace: the successor handle already issued and a
    /// fresh access token for the session as stored (no provider call: the refresh that issued
    /// the successor just made it).
    async fn successor(
        &self,
        session_id: &str,
        next: Secret<String>,
    ) -> Result<Refreshed, AuthError> {
        let session = self.store.get_session(session_id).await?.ok_or(AuthError::SessionEnded)?;
        if !session.is_live(now(), self.idle_timeout_secs()) {
            return Err(AuthError::SessionEnded);
        }
        let profile: Profile = serde_json::from_str(&session.profile)
            .map_err(|e| AuthError::Internal(format!("stored profile does not parse: {e}")))?;
        self.revoke_unless_allowed(&session.id, &profile).await?;
        let (token, claims) =
            self.tokens.mint(&session.id, &profile, session.expires_at).map_err(mint_error)?;
        info!(sid = %session.id, "a used refresh cookie came back within its grace: the successor already issued is returned");
        Ok(Refreshed { access_token: Secret::new(token), claims, refresh_token: next, profile })
    }

    /// Applies the access rules to a session's current profile: a user they no longer allow
    /// loses the session (revoked everywhere) and gets the rule's refusal.
    pub(super) async fn revoke_unless_allowed(
        &self,
        session_id: &str,
        profile: &Profile,
    ) -> Result<(), AuthError> {
        let Err(denied) = self.config.access.check_profile(profile) else { return Ok(()) };
        self.revoke(session_id).await?;
        info!(sid = %session_id, error = %denied, "access no longer allowed; session revoked");
        Err(denied)
    }

    /// A used refresh handle came back: the session is revoked (RFC 9700 §4.14.2).
    async fn reuse_detected(&self, session_id: &str) -> AuthError {
        if let Err(e) = self.revoke(session_id).await {
            return e;
        }
        warn!(sid = %session_id, "refresh handle reuse detected; session revoked");
        AuthError::Unauthenticated(
            "this refresh_token was already used, so the session has been revoked as a precaution (RFC 9700 section 4.14.2); sign in again".into(),
        )
    }

    /// Refreshes at the provider: the rotated tokens go into `session` (sealed) as soon as the
    /// provider returns them; returns the user's current profile. `invalid_grant` revokes the
    /// session; every other failure leaves it alone.
    async fn refresh_at_provider(
        &self,
        session: &mut SessionRecord,
        stored: &Profile,
        provider_refresh: &Secret<String>,
    ) -> Result<Profile, AuthError> {
        let refreshed = match self.provider.refresh(provider_refresh, &session.subject).await {
            Ok(refreshed) => refreshed,
            Err(ProviderError::Rejected { error, description }) if error == "invalid_grant" => {
                self.revoke(&session.id).await?;
                info!(sid = %session.id, "provider refused the refresh (invalid_grant); session revoked");
                return Err(AuthError::Unauthenticated(format!(
                    "the identity provider no longer accepts this session (invalid_grant{}); sign in again",
                    description.map(|d| format!(": {d}")).unwrap_or_default()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let tokens = &refreshed.tokens;
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
        session.provider_checked_at = Some(now());
        match refreshed.profile {
            Ok(Some(mut fresh)) => {
                fresh.sub = stored.sub.clone();
                Ok(fresh)
            }
            // The provider offers neither userinfo nor a refreshed ID token.
            Ok(None) => Ok(stored.clone()),
            Err(e) => {
                warn!(sid = %session.id, error = %e, "the user's profile could not be re-read after the provider refresh; no token issued");
                Err(e.into())
            }
        }
    }

    /// A refresh that stops short of rotating the handle: the lease (if held) is given back
    /// with the provider's tokens kept; returns `e`.
    async fn abandon(
        &self,
        session: &SessionRecord,
        lease: Option<&str>,
        e: AuthError,
    ) -> AuthError {
        if let Some(lease) = lease {
            self.give_back_lease(session, lease).await;
        }
        e
    }

    /// Ends this request's refresh lease, keeping the provider tokens now in `session`
    /// (best effort: a lease that cannot be given back lapses by itself).
    async fn give_back_lease(&self, session: &SessionRecord, lease: &str) {
        if let Err(e) = self.store.end_refresh_lease(session, lease).await {
            warn!(sid = %session.id, error = %e, "could not end the refresh lease; it lapses by itself");
        }
    }

    /// The idle timeout, in seconds.
    pub(crate) fn idle_timeout_secs(&self) -> i64 {
        i64::try_from(self.config.session_idle_timeout.as_secs()).unwrap_or(i64::MAX)
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

    /// The cross-site rule ([`super::csrf`]) for a cookie route that changes state whether or
    /// not the cookie came along (logout also clears the cookie: a forged one would sign the
    /// user out).
    pub fn check_cross_site(
        &self,
        signals: &super::csrf::RequestSignals<'_>,
    ) -> Result<(), AuthError> {
        self.csrf.check(signals)
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

    /// Logout for a browser session cookie. The transport first refuses a cross-site request
    /// ([`Self::check_cross_site`]).
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
        let at = now();
        let Some(ids) = self
            .store
            .revoke_for_logout_token(
                &target.jti,
                target.remember_until,
                target.sid.as_deref(),
                target.sub.as_deref(),
                at,
            )
            .await?
        else {
            return Err(AuthError::InvalidArgument(
                "this logout token was already used (jti replay)".into(),
            ));
        };
        for id in &ids {
            self.revocations.add(id, at);
        }
        info!(revoked = ids.len(), "back-channel logout");
        Ok(ids.len())
    }
}
