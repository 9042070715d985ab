//! The use cases, knowing nothing of gRPC or HTTP: start a login, finish it, read the user
//! (here), and validate, refresh and end sessions ([`session`]). The transports in `grpc` and
//! `http` convert their requests into these calls and map [`AuthError`] to their own statuses.

mod access;
pub mod csrf;
mod pending;
mod session;

use std::sync::Arc;

use tracing::{info, warn};

use crate::{
    config::Config,
    crypto::{Cipher, constant_time_eq, random_handle, sha256},
    domain::{MAX_CODE_LEN, Profile, RedirectUri, is_scope_token, parse_handle},
    error::AuthError,
    metrics,
    provider::{AuthorizationRequest, IdentityProvider},
    revocation::{Revocation, Revocations},
    secret::Secret,
    store::{Batcher, Consumed, LoginAttempt, RefreshUse, SessionRecord, Store, StoreError},
    tokens::{Claims, TokenIssuer, now},
};

pub use access::Identity;
pub use pending::PendingAttempts;
pub use session::Refreshed;

/// Bytes of entropy in state, nonce, PKCE verifier, binding and refresh handles (256 bits; 43
/// characters).
pub(crate) const HANDLE_BYTES: usize = 32;
const MAX_EXTRA_SCOPES: usize = 16;
const MAX_LOGIN_HINT_LEN: usize = 256;
const PROMPTS: &[&str] = &["none", "login", "consent", "select_account"];
/// How long a login keeps retrying the write of its new session through a database fault.
const SESSION_WRITE_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// What GetLoginUrl asks for.
#[derive(Debug, Default)]
pub struct StartLogin {
    pub redirect_uri: Option<String>,
    /// Server-side flow: where to send the browser afterwards (must be allow-listed).
    pub return_to: Option<String>,
    pub scopes: Vec<String>,
    pub prompt: Option<String>,
    pub login_hint: Option<String>,
}

/// A started login.
pub struct LoginStarted {
    pub login_url: String,
    pub state: String,
    /// The user-agent binding secret; only its hash is stored.
    pub binding: Secret<String>,
    pub expires_at: i64,
}

/// What ExchangeCode brings back from the redirect.
pub struct FinishLogin {
    pub code: Secret<String>,
    pub state: String,
    pub binding: Secret<String>,
    pub redirect_uri: Option<String>,
    /// The `iss` parameter of the redirect (RFC 9207), when the provider sent one.
    pub issuer: Option<String>,
    /// Server-side flow: also issue a browser session cookie.
    pub browser_session: bool,
}

/// A finished login: authgate's token and the user.
pub struct LoginFinished {
    pub access_token: Secret<String>,
    pub expires_in: i64,
    pub claims: Claims,
    pub profile: Profile,
    pub session_id: String,
    /// The browser session cookie value, when asked for (only its hash is stored).
    pub cookie: Option<Secret<String>>,
    /// Where the server-side flow sends the browser next.
    pub return_to: Option<String>,
    /// The first single-use refresh handle (only its hash is stored).
    pub refresh_token: Secret<String>,
    /// When the session ends at the latest.
    pub session_expires_at: i64,
}

/// The login service. Cheap to share (`Arc`).
pub struct Authenticator {
    config: Arc<Config>,
    store: Store,
    provider: Arc<dyn IdentityProvider>,
    tokens: Arc<TokenIssuer>,
    cipher: Cipher,
    revocations: Arc<Revocations>,
    /// Group commit for the three writes of every login (see [`Batcher`]).
    writes: Writes,
    /// Login attempts pending on this replica (for `/metrics`: no table scan).
    pending: PendingAttempts,
    /// The cross-site rule for cookie-authenticated requests.
    csrf: csrf::CsrfPolicy,
}

/// The batched writes of the login path.
struct Writes {
    attempts: Batcher<LoginAttempt, ()>,
    consumes: Batcher<(Vec<u8>, Vec<u8>), Consumed>,
    sessions: Batcher<(SessionRecord, Vec<u8>), ()>,
}

impl Writes {
    fn start(store: &Store, pool_size: u32) -> Self {
        // Attempt inserts: one batch at a time gives the largest batches and, measured, the
        // lowest tail latency. Consumes and sessions: an eighth of the pool each, so plain
        // queries always find a connection.
        let in_flight = (pool_size / 8).max(1) as usize;
        let (a, c, s) = (store.clone(), store.clone(), store.clone());
        Self {
            attempts: Batcher::start(1, move |batch: Vec<LoginAttempt>| {
                let store = a.clone();
                Box::pin(async move {
                    store.insert_attempts(&batch).await.map(|()| vec![(); batch.len()])
                })
            }),
            consumes: Batcher::start(in_flight, move |batch: Vec<(Vec<u8>, Vec<u8>)>| {
                let store = c.clone();
                Box::pin(async move { store.consume_attempts(&batch).await })
            }),
            sessions: Batcher::start(in_flight, move |batch: Vec<(SessionRecord, Vec<u8>)>| {
                let store = s.clone();
                Box::pin(async move {
                    store.insert_sessions(&batch).await.map(|()| vec![(); batch.len()])
                })
            }),
        }
    }
}

impl Authenticator {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        provider: Arc<dyn IdentityProvider>,
        tokens: Arc<TokenIssuer>,
        cipher: Cipher,
        revocations: Arc<Revocations>,
    ) -> Self {
        let writes = Writes::start(&store, config.database_max_connections);
        let public_origin = config.public_url.origin().ascii_serialization();
        let csrf = csrf::CsrfPolicy::new(
            std::iter::once(public_origin.as_str())
                .chain(config.cors_allowed_origins.iter().map(String::as_str)),
            config.csrf_all_methods,
        );
        Self {
            csrf,
            config,
            store,
            provider,
            tokens,
            cipher,
            revocations,
            writes,
            pending: PendingAttempts::default(),
        }
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    pub fn tokens(&self) -> &Arc<TokenIssuer> {
        &self.tokens
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn provider(&self) -> &Arc<dyn IdentityProvider> {
        &self.provider
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Login attempts started on this replica and neither exchanged here nor expired.
    pub fn pending_attempts(&self) -> u64 {
        self.pending.count(now())
    }

    /// Resolves a requested redirect URI against the allow-list (exact match); empty means the
    /// first configured one.
    fn allowed_redirect_uri(&self, requested: Option<&str>) -> Result<RedirectUri, AuthError> {
        let allowed = &self.config.redirect_uris;
        match requested.filter(|s| !s.is_empty()) {
            None => allowed
                .first()
                .cloned()
                .ok_or_else(|| AuthError::Internal("no redirect_uris configured".into())),
            Some(uri) => {
                if uri.len() > crate::domain::MAX_URL_LEN {
                    return Err(AuthError::InvalidArgument(format!(
                        "redirect_uri is longer than {} characters",
                        crate::domain::MAX_URL_LEN
                    )));
                }
                allowed
                    .iter()
                    .find(|a| a.as_str() == uri)
                    .cloned()
                    .ok_or_else(|| AuthError::RedirectUriNotAllowed(uri.to_string()))
            }
        }
    }

    /// Starts a login: stores a fresh attempt and returns the provider's authorization URL.
    #[tracing::instrument(skip_all)]
    pub async fn start_login(&self, request: StartLogin) -> Result<LoginStarted, AuthError> {
        let started = self.start_login_inner(request).await;
        if started.is_ok() {
            metrics::inc("authgate_logins_started_total", &[]);
        }
        started
    }

    async fn start_login_inner(&self, request: StartLogin) -> Result<LoginStarted, AuthError> {
        let redirect_uri = self.allowed_redirect_uri(request.redirect_uri.as_deref())?;
        let return_to = match request.return_to.filter(|r| !r.is_empty()) {
            None => None,
            Some(r) if self.config.post_login_redirect_urls.contains(&r) => Some(r),
            Some(r) => {
                return Err(AuthError::InvalidArgument(format!(
                    "return_to `{}` is not allowed; use one of the configured post_login_redirect_urls exactly",
                    r.chars().take(200).collect::<String>()
                )));
            }
        };
        if request.scopes.len() > MAX_EXTRA_SCOPES {
            return Err(AuthError::InvalidArgument(format!(
                "at most {MAX_EXTRA_SCOPES} extra scopes may be requested"
            )));
        }
        if let Some(bad) = request.scopes.iter().find(|s| !is_scope_token(s)) {
            return Err(AuthError::InvalidArgument(format!(
                "scope `{}` is not a valid scope token (letters, digits and _-.:/ only)",
                bad.chars().take(64).collect::<String>()
            )));
        }
        let prompt = request.prompt.filter(|p| !p.is_empty());
        if let Some(p) = &prompt
            && !p.split(' ').all(|one| PROMPTS.contains(&one))
        {
            return Err(AuthError::InvalidArgument(
                "prompt must be none, login, consent or select_account".into(),
            ));
        }
        let login_hint = request.login_hint.filter(|h| !h.is_empty());
        if let Some(h) = &login_hint
            && (h.len() > MAX_LOGIN_HINT_LEN || h.chars().any(char::is_control))
        {
            return Err(AuthError::InvalidArgument(format!(
                "login_hint must be at most {MAX_LOGIN_HINT_LEN} characters with no control characters"
            )));
        }

        let state = random_handle(HANDLE_BYTES);
        let nonce = random_handle(HANDLE_BYTES);
        let pkce_verifier = random_handle(HANDLE_BYTES);
        let binding = random_handle(HANDLE_BYTES);
        // Build the URL first: if the provider is not ready nothing is written.
        let login_url = self.provider.authorization_url(&AuthorizationRequest {
            redirect_uri: redirect_uri.as_str(),
            state: &state,
            nonce: &nonce,
            pkce_verifier: &pkce_verifier,
            extra_scopes: &request.scopes,
            prompt: prompt.as_deref(),
            login_hint: login_hint.as_deref(),
        })?;
        let created_at = now();
        let expires_at = created_at + self.config.attempt_ttl.as_secs() as i64;
        self.writes
            .attempts
            .call(LoginAttempt {
                state_hash: sha256(state.as_bytes()).to_vec(),
                binding_hash: sha256(binding.as_bytes()).to_vec(),
                nonce,
                pkce_verifier,
                redirect_uri: redirect_uri.as_str().to_string(),
                return_to,
                created_at,
                expires_at,
            })
            .await?;
        self.pending.started(expires_at, created_at);
        Ok(LoginStarted {
            login_url: login_url.into(),
            state,
            binding: Secret::new(binding),
            expires_at,
        })
    }

    /// Finishes a login: consumes the attempt exactly once, redeems the code, validates the ID
    /// token, opens a session and mints authgate's token.
    #[tracing::instrument(skip_all)]
    pub async fn finish_login(&self, request: FinishLogin) -> Result<LoginFinished, AuthError> {
        let finished = self.finish_login_inner(request).await;
        match &finished {
            Ok(_) => metrics::inc("authgate_logins_completed_total", &[]),
            Err(e) => metrics::inc("authgate_logins_failed_total", &[("reason", e.reason_code())]),
        }
        finished
    }

    async fn finish_login_inner(&self, request: FinishLogin) -> Result<LoginFinished, AuthError> {
        let code = request.code.expose();
        if code.is_empty() {
            return Err(AuthError::InvalidArgument(
                "`code` is required: pass the code query parameter from the redirect".into(),
            ));
        }
        if code.len() > MAX_CODE_LEN || !code.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::InvalidArgument(format!(
                "`code` must be at most {MAX_CODE_LEN} printable ASCII characters"
            )));
        }
        let state = parse_handle("state", &request.state).map_err(AuthError::InvalidArgument)?;
        let binding = parse_handle("binding", request.binding.expose()).map_err(|e| {
            AuthError::InvalidArgument(format!("{e}; pass the binding GetLoginUrl returned"))
        })?;
        if let Some(iss) = request.issuer.as_deref().filter(|i| !i.is_empty())
            && iss != self.config.provider.issuer
        {
            return Err(AuthError::Unauthenticated(
                    "the `iss` that came back with the code is not the configured provider's issuer: the response may come from another provider (mix-up, RFC 9207); start a new login".into(),
                ));
        }
        let requested_redirect = request.redirect_uri.filter(|r| !r.is_empty());
        if let Some(r) = &requested_redirect {
            // Only allow-listed URIs can match an attempt; say so precisely.
            self.allowed_redirect_uri(Some(r))?;
        }

        let attempt = match self
            .writes
            .consumes
            .call((sha256(state.as_bytes()).to_vec(), sha256(binding.as_bytes()).to_vec()))
            .await?
        {
            Consumed::Attempt(a) => {
                self.pending.finished(a.expires_at);
                a
            }
            Consumed::WrongBinding => return Err(AuthError::BindingMismatch),
            Consumed::NotFound => return Err(AuthError::AttemptNotFound),
        };
        // Defence in depth: the store matched on the hash; compare again in constant time.
        if !constant_time_eq(&attempt.binding_hash, &sha256(binding.as_bytes())) {
            return Err(AuthError::BindingMismatch);
        }
        if attempt.expires_at < now() {
            return Err(AuthError::AttemptExpired);
        }
        if requested_redirect.is_some_and(|r| r != attempt.redirect_uri) {
            return Err(AuthError::RedirectUriMismatch);
        }

        let login = self
            .provider
            .redeem_code(
                &request.code,
                &Secret::new(attempt.pkce_verifier),
                &attempt.redirect_uri,
                &Secret::new(attempt.nonce),
            )
            .await?;

        if let Err(denied) = self.config.access.check_profile(&login.profile) {
            info!(sub = %login.profile.sub, error = %denied, "login refused");
            return Err(denied);
        }

        let session_id = random_handle(24);
        let cookie = request.browser_session.then(|| Secret::new(random_handle(HANDLE_BYTES)));
        let refresh_token = Secret::new(random_handle(HANDLE_BYTES));
        let created_at = now();
        let seal = |field: &str, value: &Secret<String>| {
            self.cipher.encrypt_secret(value, &session_context(&session_id, field))
        };
        let record = SessionRecord {
            id: session_id.clone(),
            subject: login.profile.sub.clone(),
            profile: self.profile_json(&login.profile)?,
            provider_access_token: Some(seal("access", &login.tokens.access_token)),
            provider_refresh_token: login.tokens.refresh_token.as_ref().map(|t| seal("refresh", t)),
            provider_id_token: login.tokens.id_token.as_ref().map(|t| seal("id", t)),
            provider_sid: login.provider_sid.clone(),
            provider_token_expires_at: login.tokens.expires_at,
            created_at,
            expires_at: created_at + self.config.session_max_age.as_secs() as i64,
            revoked_at: None,
            cookie_hash: cookie.as_ref().map(|c| sha256(c.expose().as_bytes()).to_vec()),
            last_used_at: None,
            provider_checked_at: None,
        };
        // Minted before the session is stored: a profile too large for a token writes nothing.
        let (token, claims) =
            self.tokens.mint(&session_id, &login.profile, record.expires_at).map_err(mint_error)?;
        self.write_session(&record, sha256(refresh_token.expose().as_bytes()).to_vec()).await?;
        info!(sub = %login.profile.sub, sid = %session_id, "login completed");
        Ok(LoginFinished {
            access_token: Secret::new(token),
            expires_in: claims.exp - claims.iat,
            claims,
            profile: login.profile,
            session_id,
            cookie,
            return_to: attempt.return_to,
            refresh_token,
            session_expires_at: record.expires_at,
        })
    }

    /// Writes a new session and its first refresh handle. By now the attempt is consumed and the
    /// code redeemed at the provider — neither can be undone — so a transient database failure
    /// (a connection cut, a restart, a busy SQLite file) is retried for up to
    /// [`SESSION_WRITE_RETRY`] before the login is given up. A retry that finds the session
    /// already there with this very handle (the first write committed, its answer was lost)
    /// has succeeded.
    async fn write_session(
        &self,
        record: &SessionRecord,
        handle_hash: Vec<u8>,
    ) -> Result<(), AuthError> {
        let give_up = std::time::Instant::now() + SESSION_WRITE_RETRY;
        let mut pause = std::time::Duration::from_millis(50);
        let mut retried = false;
        loop {
            match self.writes.sessions.call((record.clone(), handle_hash.clone())).await {
                Err(StoreError::Unavailable(e)) if std::time::Instant::now() + pause < give_up => {
                    warn!(sid = %record.id, error = %e, "writing a new session failed; retrying");
                    metrics::inc("authgate_session_write_retries_total", &[]);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(500));
                    retried = true;
                }
                Err(StoreError::Duplicate(e)) if retried => {
                    return match self.store.find_refresh_handle(&handle_hash).await? {
                        RefreshUse::Fresh(sid) if sid == record.id => Ok(()),
                        _ => Err(StoreError::Duplicate(e).into()),
                    };
                }
                result => return Ok(result?),
            }
        }
    }

    /// Verifies an authgate token and loads its live session.
    pub async fn authenticate(&self, bearer: &str) -> Result<(Claims, SessionRecord), AuthError> {
        let claims = self
            .tokens
            .verify_cached(bearer)
            .map_err(|r| AuthError::Unauthenticated(format!("{r}; sign in again")))?;
        if self.revocations.check(&claims.sid) == Revocation::Revoked {
            return Err(AuthError::SessionEnded);
        }
        let session = self.store.get_session(&claims.sid).await?.ok_or(AuthError::SessionEnded)?;
        if !session.is_live(now(), self.idle_timeout_secs()) {
            return Err(AuthError::SessionEnded);
        }
        Ok(((*claims).clone(), session))
    }

    /// The live session behind a browser session cookie, and its profile.
    pub async fn authenticate_cookie(
        &self,
        cookie: &str,
    ) -> Result<(SessionRecord, Profile), AuthError> {
        let handle = parse_handle("session cookie", cookie).map_err(|_| {
            AuthError::Unauthenticated("the session cookie is malformed; sign in again".into())
        })?;
        let session = self
            .store
            .get_session_by_cookie(&sha256(handle.as_bytes()))
            .await?
            .ok_or(AuthError::SessionEnded)?;
        let now = now();
        if !session.is_live(now, self.idle_timeout_secs()) {
            return Err(AuthError::SessionEnded);
        }
        // A browser session is kept alive by its use (its checks), recorded at most once a
        // minute (or a tenth of the idle timeout) so that checks do not each write.
        let every = (self.idle_timeout_secs() / 10).clamp(1, 60);
        if session.last_used_at.unwrap_or(session.created_at) + every <= now {
            self.store.touch_session(&session.id, now).await?;
        }
        let profile = serde_json::from_str(&session.profile)
            .map_err(|e| AuthError::Internal(format!("stored profile does not parse: {e}")))?;
        Ok((session, profile))
    }

    /// The profile of the token's user; with `refresh`, re-read from the provider and stored.
    #[tracing::instrument(skip_all, fields(refresh))]
    pub async fn user_info(&self, bearer: &str, refresh: bool) -> Result<Profile, AuthError> {
        let (claims, session) = self.authenticate(bearer).await?;
        let stored: Profile = serde_json::from_str(&session.profile)
            .map_err(|e| AuthError::Internal(format!("stored profile does not parse: {e}")))?;
        if !refresh {
            return Ok(stored);
        }
        let sealed = session
            .provider_access_token
            .as_deref()
            .ok_or_else(|| AuthError::Internal("session has no provider access token".into()))?;
        let access_token = self
            .cipher
            .decrypt_secret(sealed, &session_context(&session.id, "access"))
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let mut fresh = self.provider.user_info(&access_token, &claims.sub).await?;
        fresh.sub = stored.sub.clone();
        self.revoke_unless_allowed(&session.id, &fresh).await?;
        self.store.update_session_profile(&session.id, &self.profile_json(&fresh)?, None).await?;
        Ok(fresh)
    }
}

/// The associated data that binds an encrypted provider token to its session and field.
pub(crate) fn session_context(session_id: &str, field: &str) -> String {
    format!("session:{session_id}:{field}")
}

/// The largest profile a session stores (JSON).
pub const MAX_PROFILE_BYTES: usize = 16 * 1024;

impl Authenticator {
    /// The profile as stored with a session, refused (with what to change) when authgate could
    /// not carry it: more groups than `max_token_groups`, or larger than [`MAX_PROFILE_BYTES`].
    pub(crate) fn profile_json(&self, profile: &Profile) -> Result<String, AuthError> {
        let groups = profile.groups.as_ref().map_or(0, Vec::len);
        let max_groups = self.config.tokens.max_groups;
        if groups > max_groups {
            return Err(AuthError::ProfileTooLarge(format!(
                "the user belongs to {groups} groups, more than max_token_groups ({max_groups}) lets authgate carry in a token; narrow the groups claim at the provider (an Okta groups claim filter, say) or raise max_token_groups"
            )));
        }
        let json =
            serde_json::to_string(profile).map_err(|e| AuthError::Internal(e.to_string()))?;
        if json.len() > MAX_PROFILE_BYTES {
            return Err(AuthError::ProfileTooLarge(format!(
                "the user's profile is {} bytes, more than the {MAX_PROFILE_BYTES} authgate keeps per session; ask the provider's administrator to release fewer or shorter claims",
                json.len()
            )));
        }
        Ok(json)
    }
}

/// A token that could not be minted: a profile too large for a token is the user's (their
/// administrator's) to fix; anything else is internal.
pub(crate) fn mint_error(e: crate::tokens::KeyError) -> AuthError {
    match e {
        crate::tokens::KeyError::TooLarge(bytes) => AuthError::ProfileTooLarge(format!(
            "the user's claims make a {bytes}-byte token, more than the {} an authgate token may have (proxies such as nginx refuse longer Authorization headers); narrow the groups claim at the provider",
            crate::tokens::MAX_TOKEN_BYTES
        )),
        other => AuthError::Internal(other.to_string()),
    }
}
