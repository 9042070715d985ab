//! authgate's own tokens: short-lived JWTs signed with an asymmetric key (ES256 by default,
//! EdDSA or RS256 by configuration), and the key ring that signs and verifies them.
//!
//! Keys come either from a PEM file (`signing_key_file`) or from the database, where they are
//! generated on first start and kept encrypted, so every replica signs and verifies with the same
//! set. The public halves are published as a JWKS.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

mod cache;
mod keys;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::jwk::JwkSet;
use serde::{Deserialize, Serialize};
use tracing::info;

use cache::VerifiedCache;
pub use keys::{KeyEntry, KeyRing};
use keys::{generate_key, key_context, key_from_pem, key_from_store};

use crate::{
    config::{SigningAlgorithm, TokenConfig},
    crypto::{Cipher, random_handle, sha256},
    domain::Profile,
    store::{Store, StoreError, StoredSigningKey},
};

/// The claims of an authgate JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The provider's subject identifier for the user.
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    /// Unique token id.
    pub jti: String,
    /// The authgate session this token belongs to; revoking the session revokes the token.
    pub sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Why a token was refused. Machine-readable (ValidateToken reports it) and safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token was signed by a key authgate does not know (kid)")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token's session has been revoked or has ended")]
    Revoked,
}

impl TokenRejection {
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Revoked => "revoked",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token would be longer than [`MAX_TOKEN_BYTES`] (the user's claims are too large).
    #[error(
        "the token would be {0} bytes, more than the {MAX_TOKEN_BYTES} an authgate token may have"
    )]
    TooLarge(usize),
}

/// The longest token authgate mints: it must fit the 8 KiB header line nginx (and most proxies)
/// accept by default as `Authorization: Bearer <token>`, and authgate's own verification limit
/// ([`MAX_VERIFIED_TOKEN_BYTES`]).
pub const MAX_TOKEN_BYTES: usize = 6144;
/// The longest token authgate will try to verify.
pub const MAX_VERIFIED_TOKEN_BYTES: usize = 8192;

/// Mints and verifies authgate JWTs.
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    ttl_secs: i64,
    algorithm: SigningAlgorithm,
    ring: RwLock<Arc<KeyRing>>,
    /// `Some` when keys live in the database (not a key file).
    store: Option<(Store, Cipher)>,
    rotation_interval_secs: i64,
    publish_ahead_secs: i64,
    cache: VerifiedCache,
    /// Seconds a token is still accepted after its `exp` (and before its `nbf`): the clock
    /// difference tolerated between replicas (`token_leeway`).
    leeway_secs: i64,
    /// When the key set was last re-read because of an unknown `kid` (rate limit).
    last_forced_reload: tokio::sync::Mutex<Option<Instant>>,
}

/// At most one forced key reload per this interval, however many unknown `kid`s arrive.
const FORCED_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

impl TokenIssuer {
    /// Loads the keys: from `key_file` if configured, else from the database (generating the
    /// first key if there is none).
    pub async fn load(
        issuer: String,
        config: &TokenConfig,
        store: &Store,
        cipher: &Cipher,
    ) -> Result<Self, KeyError> {
        let mut this = Self {
            issuer,
            audience: config.audience.clone(),
            ttl_secs: i64::try_from(config.ttl.as_secs()).unwrap_or(900),
            algorithm: config.algorithm,
            ring: RwLock::new(Arc::new(KeyRing::default())),
            store: None,
            rotation_interval_secs: config.key_rotation_interval.as_secs() as i64,
            publish_ahead_secs: config.key_publish_ahead.as_secs() as i64,
            cache: VerifiedCache::new(config.leeway.as_secs() as i64),
            leeway_secs: config.leeway.as_secs() as i64,
            last_forced_reload: tokio::sync::Mutex::new(None),
        };
        match &config.key_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    KeyError::Invalid(format!("cannot read {}: {e}", path.display()))
                })?;
                let entry = key_from_pem(config.algorithm, &pem)?;
                info!(kid = %entry.kid, alg = config.algorithm.as_str(), "signing key loaded from file");
                this.ring = RwLock::new(Arc::new(KeyRing::new(vec![Arc::new(entry)])));
            }
            None => {
                this.store = Some((store.clone(), cipher.clone()));
                this.reload().await?;
                if this.ring().signing_key(now()).is_none() {
                    this.add_key(now()).await?;
                    this.reload().await?;
                }
            }
        }
        Ok(this)
    }

    /// Whether tokens can be issued and checked now: a key in the set signs (and so verifies).
    pub fn keys_ready(&self) -> Result<(), String> {
        match self.ring().signing_key(now()) {
            Some(_) => Ok(()),
            None => Err("no signing key is active (see `authgate keys list`)".into()),
        }
    }

    fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.ring.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// An issuer with one freshly generated in-memory key and no database: for benchmarks and
    /// tests. Keys made this way are never published anywhere else.
    pub fn ephemeral(
        issuer: &str,
        audience: &str,
        ttl_secs: i64,
        algorithm: SigningAlgorithm,
    ) -> Result<Self, KeyError> {
        let (_, entry) = generate_key(algorithm, 0)?;
        Ok(Self {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            ttl_secs,
            algorithm,
            ring: RwLock::new(Arc::new(KeyRing::new(vec![Arc::new(entry)]))),
            store: None,
            rotation_interval_secs: i64::MAX / 4,
            publish_ahead_secs: 0,
            cache: VerifiedCache::new(0),
            leeway_secs: 0,
            last_forced_reload: tokio::sync::Mutex::new(None),
        })
    }

    /// Re-reads the key set from the database (no-op with a key file).
    pub async fn reload(&self) -> Result<(), KeyError> {
        let Some((store, cipher)) = &self.store else {
            return Ok(());
        };
        let stored = store.list_signing_keys(now()).await?;
        let mut keys = Vec::with_capacity(stored.len());
        for k in stored {
            keys.push(Arc::new(key_from_store(&k, cipher)?));
        }
        let next = Arc::new(KeyRing::new(keys));
        let previous =
            std::mem::replace(&mut *self.ring.write().unwrap_or_else(|e| e.into_inner()), next);
        // A removed key must stop verifying at once: forget every verification that may rest
        // on it (the cache does not record the kid; removals are rare).
        if previous.loses_keys_in(&self.ring()) {
            self.cache.clear();
            info!("a signing key was removed; verified-token cache cleared");
        }
        Ok(())
    }

    /// Re-reads the key set after an unknown `kid`, at most once per second; returns whether it
    /// did.
    pub async fn reload_for_unknown_kid(&self) -> Result<bool, KeyError> {
        let mut last = self.last_forced_reload.lock().await;
        if last.is_some_and(|t| t.elapsed() < FORCED_RELOAD_INTERVAL) || self.store.is_none() {
            return Ok(false);
        }
        *last = Some(Instant::now());
        self.reload().await?;
        Ok(true)
    }

    /// Rotation by command: a new key, published now, signing from `now + key_publish_ahead`.
    pub async fn rotate(&self) -> Result<(String, i64), KeyError> {
        let activates_at = now() + self.publish_ahead_secs;
        let kid = self.add_key(activates_at).await?;
        self.reload().await?;
        Ok((kid, activates_at))
    }

    /// Periodic upkeep on every replica: re-read the key set, schedule the next key when the
    /// newest reaches `key_rotation_interval` (published `key_publish_ahead` before it signs),
    /// and delete keys no token can still need.
    pub async fn maintain(&self) -> Result<(), KeyError> {
        let Some((store, _)) = &self.store else { return Ok(()) };
        self.reload().await?;
        let now = now();
        let ring = self.ring();
        let due = ring.newest().is_none_or(|k| {
            k.activates_at + self.rotation_interval_secs <= now + self.publish_ahead_secs
        });
        if ring.signing_key(now).is_none() {
            // Nothing may sign (every key was removed): a key that signs at once, rather than
            // no logins until a key published ahead activates. Other replicas pick it up on
            // their next reload, or at once on its unknown `kid`.
            self.add_key(now).await?;
        } else if due {
            let activates_at = ring
                .newest()
                .map_or(now, |k| k.activates_at + self.rotation_interval_secs)
                .max(now + self.publish_ahead_secs);
            self.add_key(activates_at).await?;
        }
        for kid in ring.expired(now, self.ttl_secs + self.leeway_secs) {
            store.delete_signing_key(&kid).await?;
            info!(%kid, "retired signing key deleted");
        }
        self.reload().await
    }

    /// Generates a key of the configured algorithm that starts signing at `activates_at`, and
    /// stores it (encrypted). Returns its kid.
    pub async fn add_key(&self, activates_at: i64) -> Result<String, KeyError> {
        let Some((store, cipher)) = &self.store else {
            return Err(KeyError::Invalid(
                "keys come from signing_key_file; rotate by replacing the file".into(),
            ));
        };
        let (der, entry) = generate_key(self.algorithm, activates_at)?;
        let record = StoredSigningKey {
            kid: entry.kid.clone(),
            algorithm: self.algorithm.as_str().to_string(),
            private_key: cipher.encrypt(&der, &key_context(&entry.kid)),
            public_jwk: serde_json::to_string(&entry.jwk)
                .map_err(|e| KeyError::Invalid(e.to_string()))?,
            created_at: now(),
            activates_at,
            retires_at: None,
            expires_at: None,
        };
        store.insert_signing_key(&record).await?;
        info!(kid = %entry.kid, alg = self.algorithm.as_str(), activates_at, "signing key generated");
        Ok(entry.kid)
    }

    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The public keys, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        self.ring().jwks()
    }

    /// Mints a token for a session; it never outlives the session.
    pub fn mint(
        &self,
        session_id: &str,
        profile: &Profile,
        session_expires_at: i64,
    ) -> Result<(String, Claims), KeyError> {
        let now = now();
        let ring = self.ring();
        let key = ring
            .signing_key(now)
            .ok_or_else(|| KeyError::Invalid("no signing key is active".into()))?;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: profile.sub.clone(),
            exp: (now + self.ttl_secs).min(session_expires_at),
            iat: now,
            nbf: now,
            jti: random_handle(16),
            sid: session_id.to_string(),
            email: profile.email.clone(),
            email_verified: profile.email_verified,
            name: profile.name.clone(),
            preferred_username: profile.preferred_username.clone(),
            groups: profile.groups.clone().unwrap_or_default(),
        };
        let payload = serde_json::to_vec(&claims).map_err(|e| KeyError::Invalid(e.to_string()))?;
        let token = key.sign_jws(&payload)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(KeyError::TooLarge(token.len()));
        }
        Ok((token, claims))
    }

    /// [`Self::verify`] with a cache of tokens already verified. Does not check revocation.
    pub fn verify_cached(&self, token: &str) -> Result<Arc<Claims>, TokenRejection> {
        let key = sha256(token.as_bytes());
        let now = now();
        if let Some(cached) = self.cache.get(&key, now) {
            return cached;
        }
        let claims = Arc::new(self.verify(token)?);
        self.cache.insert(key, Arc::clone(&claims), token.len(), now);
        Ok(claims)
    }

    /// Forgets every cached verification (after the key set changed).
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// Drops the cached verifications of tokens that have expired.
    pub fn purge_cache(&self) {
        self.cache.purge_expired(now());
    }

    /// Entries in the verified-token cache and the bytes charged for them.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    /// Verifies signature, `iss`, `aud`, `exp` and `nbf` (RFC 7515/7519, RFC 8725): the `alg`
    /// must be the one of the key named by `kid` — never `none`, never HMAC — and no `crit`
    /// extension is accepted. Does not check revocation.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenRejection> {
        if token.len() > MAX_VERIFIED_TOKEN_BYTES {
            return Err(TokenRejection::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenRejection::Malformed);
        };
        let header: JoseHeader = B64
            .decode(header_b64)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(TokenRejection::Malformed)?;
        if header.crit.is_some() {
            return Err(TokenRejection::Malformed);
        }
        let ring = self.ring();
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| ring.get(kid))
            .ok_or(TokenRejection::UnknownKey)?;
        if header.alg != key.alg_name() {
            return Err(TokenRejection::BadSignature);
        }
        let signature = B64.decode(signature_b64).map_err(|_| TokenRejection::Malformed)?;
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        if !key.verify(signing_input.as_bytes(), &signature) {
            return Err(TokenRejection::BadSignature);
        }
        let claims: Claims = B64
            .decode(payload_b64)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(TokenRejection::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenRejection::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(TokenRejection::WrongAudience);
        }
        // RFC 7519 §4.1.4-5: refused from `exp` on, accepted from `nbf` on, each widened by
        // the leeway.
        let now = now();
        if now >= claims.exp + self.leeway_secs {
            return Err(TokenRejection::Expired);
        }
        if now + self.leeway_secs < claims.nbf {
            return Err(TokenRejection::NotYetValid);
        }
        Ok(claims)
    }
}

/// The JOSE header members authgate looks at.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_outlive_their_session_and_cached_checks_agree() {
        let issuer = issuer_with(SigningAlgorithm::Es256);
        let (token, claims) = issuer.mint("sid", &profile(), now() + 60).unwrap();
        assert_eq!(claims.exp, claims.iat + 60);
        let first = issuer.verify_cached(&token).unwrap();
        let second = issuer.verify_cached(&token).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "the second check is served from the cache");
        let mut tampered = token.clone();
        tampered.push('x');
        assert!(issuer.verify_cached(&tampered).is_err());
    }

    #[test]
    fn retired_keys_expire_after_the_last_token_they_signed() {
        let entry = |kid: &str, activates_at: i64| {
            let (_, mut e) = generate_key(SigningAlgorithm::Es256, activates_at).unwrap();
            e.kid = kid.into();
            Arc::new(e)
        };
        let now = 1_000_000;
        let ring = KeyRing::new(vec![
            entry("old", now - 10_000),
            entry("current", now - 100),
            entry("next", now + 50),
        ]);
        assert_eq!(ring.signing_key(now).unwrap().kid, "current");
        assert_eq!(ring.jwks().keys.len(), 3, "the next key is published before it signs");
        assert_eq!(ring.retired_at(0, now), Some(now - 100));
        assert_eq!(ring.retired_at(1, now), None, "next has not activated yet");
        // "old" retired 100 s ago: still needed with a 900 s token lifetime, gone with 10 s.
        assert!(ring.expired(now, 900).is_empty());
        assert_eq!(ring.expired(now, 10), vec!["old".to_string()]);
        assert_eq!(ring.signing_key(now + 60).unwrap().kid, "next");
    }

    fn issuer_with(alg: SigningAlgorithm) -> TokenIssuer {
        TokenIssuer::ephemeral("https://authgate.example.com", "authgate", 900, alg).unwrap()
    }

    fn profile() -> Profile {
        Profile {
            sub: "00u1".into(),
            email: Some("a@example.com".into()),
            groups: Some(vec!["admins".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn es256_and_eddsa_tokens_round_trip() {
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let issuer = issuer_with(alg);
            let (token, claims) = issuer.mint("sid-1", &profile(), i64::MAX).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(
                format!("{:?}", header.alg),
                alg.as_str().to_uppercase().replace("EDDSA", "EdDSA")
            );
            assert!(header.kid.is_some());
            let verified = issuer.verify(&token).unwrap();
            assert_eq!(verified, claims);
            assert_eq!(verified.sid, "sid-1");
            assert_eq!(verified.groups, vec!["admins"]);
            assert_eq!(verified.exp - verified.iat, 900);
            let jwks = issuer.jwks();
            assert_eq!(jwks.keys.len(), 1);
            assert_eq!(jwks.keys[0].common.key_id, header.kid);
        }
    }

    #[test]
    fn tampered_foreign_and_malformed_tokens_are_rejected() {
        let issuer = issuer_with(SigningAlgorithm::Es256);
        let other = issuer_with(SigningAlgorithm::Es256);
        let (token, _) = issuer.mint("sid", &profile(), i64::MAX).unwrap();

        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(issuer.verify(&parts.join(".")).is_err());

        let (foreign, _) = other.mint("sid", &profile(), i64::MAX).unwrap();
        assert_eq!(issuer.verify(&foreign), Err(TokenRejection::UnknownKey));
        assert_eq!(issuer.verify("not-a-jwt"), Err(TokenRejection::Malformed));
        assert_eq!(issuer.verify(""), Err(TokenRejection::Malformed));
    }

    #[test]
    fn alg_none_and_hmac_confusion_are_rejected() {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
        let issuer = issuer_with(SigningAlgorithm::Es256);
        let (token, _) = issuer.mint("sid", &profile(), i64::MAX).unwrap();
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let none_header = B64.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#));
        assert!(issuer.verify(&format!("{none_header}.{payload}.")).is_err());

        // HS256 "signed" with the public key as the secret.
        let jwk_json = serde_json::to_string(&issuer.jwks().keys[0]).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid);
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(jwk_json.as_bytes()),
        )
        .unwrap();
        assert_eq!(issuer.verify(&forged), Err(TokenRejection::BadSignature));
    }

    #[test]
    fn wrong_audience_issuer_and_expiry_are_told_apart() {
        let issuer = issuer_with(SigningAlgorithm::Es256);
        let ring = issuer.ring();
        let key = ring.signing_key(now()).unwrap();
        let (_, mut claims) = issuer.mint("sid", &profile(), i64::MAX).unwrap();
        let sign = |c: &Claims| key.sign_jws(&serde_json::to_vec(c).unwrap()).unwrap();
        claims.aud = "someone-else".into();
        assert_eq!(issuer.verify(&sign(&claims)), Err(TokenRejection::WrongAudience));
        claims.aud = "authgate".into();
        claims.iss = "https://evil.example.com".into();
        assert_eq!(issuer.verify(&sign(&claims)), Err(TokenRejection::WrongIssuer));
        claims.iss = "https://authgate.example.com".into();
        claims.exp = now() - 3600;
        assert_eq!(issuer.verify(&sign(&claims)), Err(TokenRejection::Expired));
        claims.exp = now() + 3600;
        claims.nbf = now() + 600;
        assert_eq!(issuer.verify(&sign(&claims)), Err(TokenRejection::NotYetValid));
    }
}
