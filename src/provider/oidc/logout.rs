//! Back-channel logout tokens: validated per OpenID Connect Back-Channel Logout 1.0 §2.6 against
//! the provider's JWKS (which `openidconnect` does not model for these tokens).

use chrono::Utc;

use super::{MAX_ID_TOKEN_AGE, OidcProvider};
use crate::provider::{LogoutTarget, ProviderError};

impl OidcProvider {
    /// The provider's JWKS in `jsonwebtoken`'s form, for tokens openidconnect does not model
    /// (back-channel logout tokens).
    fn jwk_set(&self) -> Result<jsonwebtoken::jwk::JwkSet, ProviderError> {
        let jwks = self.jwks.read().unwrap_or_else(|e| e.into_inner()).clone();
        serde_json::to_value(&jwks).and_then(serde_json::from_value).map_err(|e| {
            ProviderError::BadResponse(format!("the provider's JWKS is unusable: {e}"))
        })
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
        if let Some(typ) = &header.typ {
            if !typ.eq_ignore_ascii_case("logout+jwt") && !typ.eq_ignore_ascii_case("JWT") {
                return Err(invalid("typ must be logout+jwt"));
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
        let jwk = match find_key(&self.jwk_set()?) {
            Some(k) => k,
            None => {
                self.refetch_jwks(&d).await?;
                find_key(&self.jwk_set()?)
                    .ok_or_else(|| invalid("signed by a key that is not in the provider's JWKS"))?
            }
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|_| invalid("unusable key"))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.client_id]);
        validation.set_required_spec_claims(&["iss", "aud"]);
        validation.leeway = self.config.clock_skew.as_secs();
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                invalid(match e.kind() {
                    K::InvalidIssuer => "wrong issuer",
                    K::InvalidAudience => "wrong audience",
                    K::ExpiredSignature => "expired",
                    K::InvalidSignature => "bad signature",
                    K::MissingRequiredClaim(_) => "missing iss or aud",
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
        let exp = claims.get("exp").and_then(|v| v.as_i64());
        Ok(LogoutTarget {
            sid,
            sub,
            jti,
            remember_until: exp.unwrap_or(iat + MAX_ID_TOKEN_AGE.as_secs() as i64) + skew,
        })
    }
}
