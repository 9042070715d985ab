//! Back-channel logout tokens: validated per OpenID Connect Back-Channel Logout 1.0 §2.6 against
//! the provider's JWKS (which `openidconnect` does not model for these tokens).

use chrono::Utc;

use super::{MAX_ID_TOKEN_AGE, OidcProvider, keys::Trigger};
use crate::provider::{LogoutTarget, ProviderError};

impl OidcProvider {
    /// The provider's JWKS in `jsonwebtoken`'s form, for tokens openidconnect does not model
    /// (back-channel logout tokens), and its generation.
    fn jwk_set(&self) -> Result<(jsonwebtoken::jwk::JwkSet, u64), ProviderError> {
        let keys = self.keys();
        let set =
            serde_json::to_value(&keys.set).and_then(serde_json::from_value).map_err(|e| {
                ProviderError::BadResponse(format!("the provider's JWKS is unusable: {e}"))
            })?;
        Ok((set, keys.generation))
    }

    /// Validates a back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.6).
    #[tracing::instrument(skip_all)]
    pub(super) async fn check_logout_token(
        &self,
        token: &str,
    ) -> Result<LogoutTarget, ProviderError> {
        const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
        let invalid = |m: &str| ProviderError::InvalidIdToken(format!("logout token: {m}"));
        let d = self.discovered()?;
        if token.len() > 16 * 1024 {
            return Err(invalid("longer than 16 KiB"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("not a JWT"))?;
        // §2.4 recommends `logout+jwt`; providers also send `JWT` (Okta, Keycloak) or nothing.
        // The `application/` prefix may be spelled out (RFC 7515 §4.1.9).
        if let Some(typ) = &header.typ {
            let typ = typ.to_ascii_lowercase();
            let typ = typ.strip_prefix("application/").unwrap_or(&typ);
            if typ != "logout+jwt" && typ != "jwt" {
                return Err(invalid("typ must be logout+jwt or JWT (or absent)"));
            }
        }
        let alg_name = serde_json::to_value(header.alg)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let allowed = d.allowed_algs.iter().any(|a| {
            serde_json::to_value(a).ok().and_then(|v| v.as_str().map(String::from)).as_deref()
                == Some(alg_name.as_str())
        });
        if !allowed {
            return Err(invalid(&format!("algorithm `{alg_name}` is not allowed")));
        }
        let find_key = |set: &jsonwebtoken::jwk::JwkSet| match &header.kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let (set, generation) = self.jwk_set()?;
        let jwk = match find_key(&set) {
            Some(k) => k,
            None => {
                // Anyone can send a logout token: a refetch for an unknown kid is rate-limited.
                self.refetch_jwks(&d, generation, Trigger::Untrusted).await?;
                find_key(&self.jwk_set()?.0)
                    .ok_or_else(|| invalid("signed by a key that is not in the provider's JWKS"))?
            }
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|_| invalid("unusable key"))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.client_id]);
        // §2.4: `exp` is required (it bounds how long the `jti` must be remembered).
        validation.set_required_spec_claims(&["iss", "aud", "exp"]);
        validation.leeway = self.config.clock_skew.as_secs();
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                invalid(match e.kind() {
                    K::InvalidIssuer => "wrong issuer",
                    K::InvalidAudience => "wrong audience",
                    K::ExpiredSignature => "expired",
                    K::InvalidSignature => "bad signature",
                    K::MissingRequiredClaim(claim) => match claim.as_str() {
                        "exp" => "missing exp",
                        "iss" => "missing iss",
                        _ => "missing aud",
                    },
                    _ => "does not verify",
                })
            })?
            .claims;
        let now = Utc::now().timestamp();
        let skew = self.config.clock_skew.as_secs() as i64;
        let iat =
            claims.get("iat").and_then(|v| v.as_i64()).ok_or_else(|| invalid("missing iat"))?;
        if iat > now + skew || iat < now - MAX_ID_TOKEN_AGE.as_secs() as i64 - skew {
            return Err(invalid("iat is outside the accepted window"));
        }
        if !claims.get("events").and_then(|e| e.get(EVENT)).is_some_and(|v| v.is_object()) {
            return Err(invalid("the events claim lacks the back-channel logout event"));
        }
        if claims.get("nonce").is_some() {
            return Err(invalid("a logout token must not contain a nonce"));
        }
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(String::from);
        let (sid, sub) = (text("sid"), text("sub"));
        if sid.is_none() && sub.is_none() {
            return Err(invalid("neither sid nor sub is present"));
        }
        let jti = text("jti").ok_or_else(|| invalid("missing jti"))?;
        let exp =
            claims.get("exp").and_then(|v| v.as_i64()).ok_or_else(|| invalid("missing exp"))?;
        // Remembered until it could no longer be accepted, however far off `exp` is set.
        let remember_until = exp.min(iat + MAX_ID_TOKEN_AGE.as_secs() as i64) + skew;
        Ok(LogoutTarget { sid, sub, jti, remember_until })
    }
}
