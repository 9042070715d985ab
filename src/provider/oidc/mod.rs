//! The real provider client: OpenID Connect discovery (re-read every
//! `provider_discovery_interval`), a JWKS cached as its `Cache-Control` says and refetched at
//! once when a token from the token endpoint names an unknown `kid` (one fetch in flight however
//! many logins wait; rate-limited only where untrusted input asks), PKCE S256 authorization
//! URLs, code exchange with `client_secret_basic` or `client_secret_post`, ID-token validation
//! (OIDC Core 3.1.3.7, RFC 8725) at login and on refresh (§12.2), and userinfo.
//!
//! The HTTP client follows no redirects (SSRF), every call has a timeout, and no response body
//! larger than `provider_max_response_bytes` is read ([`http`]).

use std::{
    borrow::Cow,
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::Utc;
use openidconnect::{
    AccessToken, AccessTokenHash, AdditionalClaims, AdditionalProviderMetadata, AuthType,
    AuthenticationFlow, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl,
    LoginHint, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata,
    RedirectUrl, RefreshToken, Scope, StandardErrorResponse, StandardTokenResponse,
    SubjectIdentifier, TokenResponse, UserInfoError,
    core::{
        CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
        CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey, CoreJsonWebKeySet,
        CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
        CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
        CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
    },
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use url::Url;

use super::{
    AuthorizationRequest, IdentityProvider, LogoutTarget, ProviderError, ProviderLogin,
    ProviderRefresh, ProviderTokens,
};
use crate::{
    config::{ClientAuthMethod, ProviderConfig},
    domain::Profile,
    secret::Secret,
};

mod errors;
mod http;
mod keys;
mod logout;

use errors::{claims_sid, error_chain, id_token_error, observed, token_error};
use http::ProviderHttp;
use keys::{Keys, Trigger};

/// The `groups` claim (Okta, `oidc-provider` and most IdPs use a string array).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupsClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
}
impl AdditionalClaims for GroupsClaim {}

/// Discovery fields beyond OIDC Core that authgate uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type TokenFields = IdTokenFields<
    GroupsClaim,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type ProviderTokenResponse = StandardTokenResponse<TokenFields, CoreTokenType>;
type ProviderIdToken = openidconnect::IdToken<
    GroupsClaim,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

type OidcClient = Client<
    GroupsClaim,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    ProviderTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointMaybeSet,
>;

/// ID token signature algorithms authgate accepts (never `none`, never HMAC).
const ASYMMETRIC_ALGS: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// An ID token older than this (by `iat`) is refused even if not yet expired.
const MAX_ID_TOKEN_AGE: Duration = Duration::from_secs(600);
/// Discovery retry backoff bounds.
const DISCOVERY_BACKOFF_START: Duration = Duration::from_millis(500);
/// Capped low so that a provider that comes back is found (and readiness follows) within a
/// second: a failing provider is asked about once a second per replica.
const DISCOVERY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What discovery produced.
struct Discovered {
    client: OidcClient,
    metadata: Metadata,
    /// The provider's advertised ID-token algorithms, intersected with [`ASYMMETRIC_ALGS`].
    allowed_algs: Vec<CoreJwsSigningAlgorithm>,
    /// When this discovery document was read (re-read every `provider_discovery_interval`).
    at: Instant,
}

/// The ID token kind being verified: at login the nonce must be the attempt's; on refresh
/// (OIDC Core 12.2) the subject must be the session's, and the nonce — which a refreshed token
/// should not carry — is not compared (authgate keeps no nonce after login).
enum Expect<'a> {
    Login { nonce: &'a Nonce },
    Refresh { subject: &'a str },
}

pub struct OidcProvider {
    config: ProviderConfig,
    http: ProviderHttp,
    discovered: RwLock<Option<Arc<Discovered>>>,
    /// The last discovery failure, reported while not ready.
    last_error: RwLock<String>,
    /// The provider's keys, swapped whole on every fetch.
    jwks: RwLock<Arc<Keys>>,
    /// Held while the JWKS is fetched (one fetch in flight); holds when untrusted input last
    /// made authgate refetch.
    jwks_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// Guards against two discovery loops.
    started: Mutex<bool>,
    /// Notified when discovery or the keys' upkeep succeeds or fails (readiness follows it).
    state_changed: Arc<tokio::sync::Notify>,
}

impl OidcProvider {
    pub fn new(config: ProviderConfig) -> Result<Arc<Self>, ProviderError> {
        let http = ProviderHttp::new(&config)?;
        Ok(Arc::new(Self {
            config,
            http,
            discovered: RwLock::new(None),
            last_error: RwLock::new("discovery has not run yet".into()),
            jwks: RwLock::new(Arc::new(Keys::empty())),
            jwks_fetch: tokio::sync::Mutex::new(None),
            started: Mutex::new(false),
            state_changed: Arc::new(tokio::sync::Notify::new()),
        }))
    }

    /// Runs discovery until it succeeds, with exponential backoff, then keeps the provider's
    /// metadata and keys current: the JWKS again when its `Cache-Control` lifetime runs out,
    /// discovery every `provider_discovery_interval` (a failure keeps what was known and is
    /// retried with backoff). Returns at once if the loop is already running. The loop ends
    /// when the provider is dropped.
    pub fn spawn_discovery(self: &Arc<Self>) {
        {
            let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
            if *started {
                return;
            }
            *started = true;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = DISCOVERY_BACKOFF_START;
            loop {
                let Some(this) = Weak::upgrade(&weak) else { return };
                let due = this.next_upkeep();
                drop(this);
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                let Some(this) = Weak::upgrade(&weak) else { return };
                let outcome = this.upkeep().await;
                this.state_changed.notify_one();
                match outcome {
                    Ok(()) => backoff = DISCOVERY_BACKOFF_START,
                    Err(e) => {
                        let ready = this.is_ready();
                        warn!(issuer = %this.config.issuer, error = %e, retry_in = ?backoff, ready, "provider discovery or JWKS refresh failed");
                        if !ready {
                            *this.last_error.write().unwrap_or_else(|e| e.into_inner()) =
                                e.to_string();
                        }
                        drop(this);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(DISCOVERY_BACKOFF_MAX);
                    }
                }
            }
        });
    }

    /// When the metadata or the keys are next due (`None`: now).
    fn next_upkeep(&self) -> Option<Instant> {
        let d = self.discovered().ok()?;
        let discovery_due = d.at + self.config.discovery_interval;
        Some(discovery_due.min(self.keys().expires_at()))
    }

    /// Whatever is due: discovery (with the JWKS), or the JWKS alone.
    async fn upkeep(&self) -> Result<(), ProviderError> {
        match self.discovered() {
            Ok(d) if Instant::now() < d.at + self.config.discovery_interval => {
                let _single = self.jwks_fetch.lock().await;
                if Instant::now() >= self.keys().expires_at() {
                    self.fetch_jwks(d.metadata.jwks_uri()).await?;
                }
                Ok(())
            }
            _ => self.discover().await,
        }
    }

    /// The provider's keys as last fetched.
    fn keys(&self) -> Arc<Keys> {
        Arc::clone(&self.jwks.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fetches the discovery document and the JWKS and builds the client.
    #[tracing::instrument(skip_all, fields(issuer = %self.config.issuer))]
    pub async fn discover(&self) -> Result<(), ProviderError> {
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| ProviderError::NotReady(format!("issuer_url is not a URL: {e}")))?;
        let metadata = self.fetch_metadata(&issuer).await?;
        let token_url = metadata.token_endpoint().cloned().ok_or_else(|| {
            ProviderError::BadResponse("the discovery document has no token_endpoint".into())
        })?;
        let allowed_algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|alg| ASYMMETRIC_ALGS.contains(alg))
            .cloned()
            .collect();
        if allowed_algs.is_empty() {
            return Err(ProviderError::BadResponse(
                "the provider advertises no asymmetric ID token signing algorithm authgate accepts (RS*, PS*, ES256, ES384, EdDSA)".into(),
            ));
        }
        let client: OidcClient = Client::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.config.client_secret.expose().clone())),
        )
        .set_token_uri(token_url)
        .set_auth_type(match self.config.client_auth_method {
            ClientAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
            ClientAuthMethod::ClientSecretPost => AuthType::RequestBody,
        });
        {
            let _single = self.jwks_fetch.lock().await;
            self.fetch_jwks(metadata.jwks_uri()).await?;
        }
        let first = !self.is_ready();
        *self.discovered.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(Discovered { client, metadata, allowed_algs, at: Instant::now() }));
        if first {
            info!("provider discovery complete");
        } else {
            tracing::debug!("provider discovery re-read");
        }
        Ok(())
    }

    fn discovered(&self) -> Result<Arc<Discovered>, ProviderError> {
        self.discovered.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(|| {
            ProviderError::NotReady(format!(
                "discovery of {} has not succeeded yet (last error: {})",
                self.config.issuer,
                self.last_error.read().unwrap_or_else(|e| e.into_inner())
            ))
        })
    }

    /// The provider's `end_session_endpoint`, if it advertises one.
    pub fn end_session_endpoint(&self) -> Option<String> {
        self.discovered().ok()?.metadata.additional_metadata().end_session_endpoint.clone()
    }

    /// Refetches the JWKS because a token named a key that the set of generation `seen` lacks.
    /// Coalesced: callers queue behind the one fetch in flight, and whoever finds the set
    /// replaced since `seen` uses the new one without fetching. A [`Trigger::Untrusted`]
    /// refetch runs at most once per [`keys::UNTRUSTED_REFETCH_INTERVAL`].
    async fn refetch_jwks(
        &self,
        discovered: &Discovered,
        seen: u64,
        trigger: Trigger,
    ) -> Result<(), ProviderError> {
        let mut untrusted_at = self.jwks_fetch.lock().await;
        if self.keys().generation != seen {
            return Ok(());
        }
        if trigger == Trigger::Untrusted {
            if untrusted_at.is_some_and(|t| t.elapsed() < keys::UNTRUSTED_REFETCH_INTERVAL) {
                return Ok(());
            }
            *untrusted_at = Some(Instant::now());
        }
        self.fetch_jwks(discovered.metadata.jwks_uri()).await
    }

    /// Client authentication for the calls authgate makes by hand (revocation).
    fn authenticate(
        &self,
        request: reqwest::RequestBuilder,
        form: &mut Vec<(&str, String)>,
    ) -> reqwest::RequestBuilder {
        match self.config.client_auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: form-urlencode the id and secret before base64.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                request.basic_auth(
                    enc(&self.config.client_id),
                    Some(enc(self.config.client_secret.expose())),
                )
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push(("client_id", self.config.client_id.clone()));
                form.push(("client_secret", self.config.client_secret.expose().clone()));
                request
            }
        }
    }

    /// Verifies an ID token from the token endpoint; a `kid` the cached JWKS lacks makes
    /// authgate refetch it (trusted: the token came over a connection authgate opened) and
    /// verify again.
    async fn verify_fetched_id_token(
        &self,
        discovered: &Discovered,
        id_token: &ProviderIdToken,
        expect: Expect<'_>,
        access_token: &AccessToken,
    ) -> Result<(Profile, Option<String>), ProviderError> {
        let keys = self.keys();
        match self.verify_id_token(discovered, &keys.set, id_token, &expect, access_token) {
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider rotated its keys: refetch (or use the set another login just
                // fetched) and verify again.
                self.refetch_jwks(discovered, keys.generation, Trigger::Trusted).await?;
                let keys = self.keys();
                self.verify_id_token(discovered, &keys.set, id_token, &expect, access_token)
            }
            other => other,
        }
        .map_err(id_token_error)
    }

    fn verify_id_token(
        &self,
        discovered: &Discovered,
        jwks: &CoreJsonWebKeySet,
        id_token: &ProviderIdToken,
        expect: &Expect<'_>,
        access_token: &AccessToken,
    ) -> Result<(Profile, Option<String>), openidconnect::ClaimsVerificationError> {
        use openidconnect::ClaimsVerificationError as E;
        let jwks = jwks.clone();
        let skew = chrono::Duration::from_std(self.config.clock_skew).unwrap_or_default();
        let max_age = chrono::Duration::from_std(MAX_ID_TOKEN_AGE).unwrap_or_default();
        // A public-client verifier: it holds no client secret, so HMAC-signed tokens can never
        // verify; the algorithm allow-list excludes them and `none` anyway.
        let verifier = openidconnect::IdTokenVerifier::new_public_client(
            ClientId::new(self.config.client_id.clone()),
            IssuerUrl::new(self.config.issuer.clone())
                .map_err(|e| E::Other(format!("issuer_url is not a URL: {e}")))?,
            jwks,
        )
        .set_allowed_algs(discovered.allowed_algs.iter().cloned())
        .set_time_fn(move || Utc::now() - skew)
        .set_issue_time_verifier_fn(move |iat| {
            let now = Utc::now();
            if iat > now + skew {
                Err(format!("issued in the future (iat {iat})"))
            } else if iat < now - max_age - skew {
                Err(format!("issued too long ago (iat {iat})"))
            } else {
                Ok(())
            }
        });
        let claims = match expect {
            Expect::Login { nonce } => id_token.claims(&verifier, *nonce)?,
            Expect::Refresh { subject } => {
                let claims = id_token.claims(&verifier, |_: Option<&Nonce>| Ok(()))?;
                if claims.subject().as_str() != *subject {
                    return Err(E::InvalidSubject(format!(
                        "the refreshed ID token is for subject `{}`, not the session's",
                        claims.subject().as_str()
                    )));
                }
                claims
            }
        };

        // OIDC Core 3.1.3.7 steps 4-5, which openidconnect leaves to the caller.
        let client_id = &self.config.client_id;
        match claims.authorized_party() {
            Some(azp) if azp.as_str() != client_id => {
                return Err(E::InvalidAudience(format!(
                    "azp `{}` is not this client",
                    azp.as_str()
                )));
            }
            None if claims.audiences().len() > 1 => {
                return Err(E::InvalidAudience("several audiences but no azp claim".into()));
            }
            _ => {}
        }
        // OIDC Core 3.1.3.8: at_hash, when present, must match the access token.
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token.signing_alg().map_err(E::SignatureVerification)?;
            let key = id_token.signing_key(&verifier).map_err(E::SignatureVerification)?;
            let actual = AccessTokenHash::from_token(access_token, alg, key)
                .map_err(|e| E::Other(format!("cannot compute at_hash: {e}")))?;
            if actual != *expected {
                return Err(E::Other("at_hash does not match the access token".into()));
            }
        }

        let localized = |c: Option<&openidconnect::LocalizedClaim<_>>| {
            c.and_then(|c| c.get(None)).map(|v: &openidconnect::EndUserName| v.to_string())
        };
        let profile = Profile {
            sub: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified(),
            name: localized(claims.name()),
            given_name: claims.given_name().and_then(|c| c.get(None)).map(|v| v.to_string()),
            family_name: claims.family_name().and_then(|c| c.get(None)).map(|v| v.to_string()),
            preferred_username: claims.preferred_username().map(|u| u.to_string()),
            groups: claims.additional_claims().groups.clone(),
        };
        let sid = claims_sid(id_token);
        Ok((profile, sid))
    }
}

#[async_trait]
impl IdentityProvider for OidcProvider {
    fn issuer(&self) -> &str {
        &self.config.issuer
    }

    fn is_ready(&self) -> bool {
        self.discovered.read().map(|d| d.is_some()).unwrap_or(false)
    }

    fn authorization_url(&self, r: &AuthorizationRequest<'_>) -> Result<Url, ProviderError> {
        let d = self.discovered()?;
        let redirect = RedirectUrl::new(r.redirect_uri.to_string())
            .map_err(|e| ProviderError::BadResponse(format!("redirect URI: {e}")))?;
        let verifier = PkceCodeVerifier::new(r.pkce_verifier.to_string());
        let (state, nonce) = (r.state.to_string(), r.nonce.to_string());
        let mut request = d
            .client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier))
            .set_redirect_uri(Cow::Owned(redirect));
        for scope in self.config.scopes.iter().chain(r.extra_scopes) {
            if scope != "openid" {
                request = request.add_scope(Scope::new(scope.clone()));
            }
        }
        if let Some(hint) = r.login_hint {
            request = request.set_login_hint(LoginHint::new(hint.to_string()));
        }
        if let Some(prompt) = r.prompt {
            request = request.add_prompt(match prompt {
                "none" => CoreAuthPrompt::None,
                "login" => CoreAuthPrompt::Login,
                "consent" => CoreAuthPrompt::Consent,
                "select_account" => CoreAuthPrompt::SelectAccount,
                other => CoreAuthPrompt::Extension(other.to_string()),
            });
        }
        Ok(request.url().0)
    }

    #[tracing::instrument(skip_all)]
    async fn redeem_code(
        &self,
        code: &Secret<String>,
        pkce_verifier: &Secret<String>,
        redirect_uri: &str,
        nonce: &Secret<String>,
    ) -> Result<ProviderLogin, ProviderError> {
        let d = self.discovered()?;
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| ProviderError::BadResponse(format!("redirect URI: {e}")))?;
        let exchange = d
            .client
            .exchange_code(AuthorizationCode::new(code.expose().clone()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose().clone()))
            .set_redirect_uri(Cow::Owned(redirect));
        let response =
            observed("token", exchange.request_async(&self.http)).await.map_err(token_error)?;
        let id_token = response.id_token().ok_or_else(|| {
            ProviderError::BadResponse(
                "the token response has no id_token (is the `openid` scope granted to this client?)"
                    .into(),
            )
        })?;
        let nonce = Nonce::new(nonce.expose().clone());
        let (mut profile, provider_sid) = self
            .verify_fetched_id_token(
                &d,
                id_token,
                Expect::Login { nonce: &nonce },
                response.access_token(),
            )
            .await?;

        let access_token = Secret::new(response.access_token().secret().clone());
        if profile.is_thin() && d.client.user_info_url().is_some() {
            let full = self.user_info(&access_token, &profile.sub).await?;
            profile.merge_from(full);
        }
        let expires_at = response
            .expires_in()
            .map(|d| Utc::now().timestamp() + i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
        Ok(ProviderLogin {
            profile,
            provider_sid,
            tokens: ProviderTokens {
                access_token,
                refresh_token: response.refresh_token().map(|t| Secret::new(t.secret().clone())),
                id_token: Some(Secret::new(id_token.to_string())),
                expires_at,
            },
        })
    }

    #[tracing::instrument(skip_all)]
    async fn user_info(
        &self,
        access_token: &Secret<String>,
        expected_subject: &str,
    ) -> Result<Profile, ProviderError> {
        let d = self.discovered()?;
        let request = d
            .client
            .user_info(
                AccessToken::new(access_token.expose().clone()),
                Some(SubjectIdentifier::new(expected_subject.to_string())),
            )
            .map_err(|_| {
                ProviderError::BadResponse("the provider has no userinfo_endpoint".into())
            })?;
        let claims: openidconnect::UserInfoClaims<GroupsClaim, CoreGenderClaim> =
            observed("userinfo", request.request_async(&self.http)).await.map_err(|e| match e {
                UserInfoError::ClaimsVerification(inner) => ProviderError::InvalidIdToken(format!(
                    "userinfo does not belong to the signed-in user: {inner}"
                )),
                UserInfoError::Request(inner) => ProviderError::Unreachable(format!(
                    "userinfo request failed: {}",
                    error_chain(&inner)
                )),
                UserInfoError::Response(status, _, _) if status.as_u16() == 401 => {
                    ProviderError::Rejected {
                        error: "invalid_token".into(),
                        description: Some("the provider no longer accepts its access token".into()),
                    }
                }
                UserInfoError::Response(status, _, _) => {
                    ProviderError::BadResponse(format!("userinfo answered HTTP {status}"))
                }
                UserInfoError::Parse(inner) => ProviderError::BadResponse(format!(
                    "userinfo does not parse (at {})",
                    inner.path()
                )),
                other => ProviderError::BadResponse(format!("userinfo failed: {other}")),
            })?;
        Ok(Profile {
            sub: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified(),
            name: claims.name().and_then(|c| c.get(None)).map(|v| v.to_string()),
            given_name: claims.given_name().and_then(|c| c.get(None)).map(|v| v.to_string()),
            family_name: claims.family_name().and_then(|c| c.get(None)).map(|v| v.to_string()),
            preferred_username: claims.preferred_username().map(|u| u.to_string()),
            groups: claims.additional_claims().groups.clone(),
        })
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(
        &self,
        refresh_token: &Secret<String>,
        subject: &str,
    ) -> Result<ProviderRefresh, ProviderError> {
        let d = self.discovered()?;
        let token = RefreshToken::new(refresh_token.expose().clone());
        let refresh = d.client.exchange_refresh_token(&token);
        let response = observed("token_refresh", refresh.request_async(&self.http))
            .await
            .map_err(token_error)?;
        let expires_at = response
            .expires_in()
            .map(|d| Utc::now().timestamp() + i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
        let mut tokens = ProviderTokens {
            access_token: Secret::new(response.access_token().secret().clone()),
            // Providers that do not rotate return no new refresh token: keep using the old one.
            refresh_token: Some(Secret::new(
                response
                    .refresh_token()
                    .map(|t| t.secret().clone())
                    .unwrap_or_else(|| refresh_token.expose().clone()),
            )),
            id_token: None,
            expires_at,
        };
        // A refreshed ID token is validated like the first (OIDC Core 12.2: same iss, aud and
        // sub); only a valid one is kept (it is later sent as `id_token_hint`).
        let mut claims = None;
        if let Some(id_token) = response.id_token() {
            let expect = Expect::Refresh { subject };
            match self.verify_fetched_id_token(&d, id_token, expect, response.access_token()).await
            {
                Ok((profile, _)) => {
                    tokens.id_token = Some(Secret::new(id_token.to_string()));
                    claims = Some(profile);
                }
                Err(e) => return Ok(ProviderRefresh { tokens, profile: Err(e) }),
            }
        }
        // The user's current profile: userinfo, over what the refreshed ID token says.
        let profile = if d.client.user_info_url().is_some() {
            self.user_info(&tokens.access_token, subject).await.map(|full| {
                let mut profile = claims
                    .unwrap_or_else(|| Profile { sub: subject.to_string(), ..Default::default() });
                profile.merge_from(full);
                Some(profile)
            })
        } else {
            Ok(claims)
        };
        Ok(ProviderRefresh { tokens, profile })
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_refresh_token(
        &self,
        refresh_token: &Secret<String>,
    ) -> Result<(), ProviderError> {
        let d = self.discovered()?;
        let Some(endpoint) = d.metadata.additional_metadata().revocation_endpoint.clone() else {
            return Ok(());
        };
        let mut form = vec![
            ("token", refresh_token.expose().clone()),
            ("token_type_hint", "refresh_token".to_string()),
        ];
        let mut trace = ::http::HeaderMap::new();
        crate::telemetry::inject_current(&mut trace);
        let request =
            self.authenticate(self.http.client().post(&endpoint).headers(trace), &mut form);
        let response = observed("revocation", request.form(&form).send()).await.map_err(|e| {
            ProviderError::Unreachable(format!("revocation request failed: {}", error_chain(&e)))
        })?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            status => Err(ProviderError::BadResponse(format!("revocation answered HTTP {status}"))),
        }
    }

    fn end_session_url(
        &self,
        id_token_hint: Option<&Secret<String>>,
        post_logout_redirect_uri: Option<&str>,
        state: Option<&str>,
    ) -> Option<Url> {
        let endpoint = self.end_session_endpoint()?;
        let mut url = Url::parse(&endpoint).ok()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                q.append_pair("id_token_hint", hint.expose());
            }
            q.append_pair("client_id", &self.config.client_id);
            if let Some(uri) = post_logout_redirect_uri {
                q.append_pair("post_logout_redirect_uri", uri);
            }
            if let Some(state) = state {
                q.append_pair("state", state);
            }
        }
        Some(url)
    }

    async fn validate_logout_token(&self, token: &str) -> Result<LogoutTarget, ProviderError> {
        self.check_logout_token(token).await
    }

    fn state_changed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.state_changed)
    }

    async fn check(&self) -> Result<(), ProviderError> {
        if !self.is_ready() {
            return Err(self
                .discovered()
                .err()
                .unwrap_or_else(|| ProviderError::NotReady("discovery has not completed".into())));
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let response = observed("discovery_probe", self.http.client().get(url).send())
            .await
            .map_err(|e| ProviderError::Unreachable(error_chain(&e)))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ProviderError::BadResponse(format!(
                "discovery answered HTTP {}",
                response.status()
            )))
        }
    }
}
