//! The provider's discovery document and signing keys, fetched by hand so that the JWKS
//! response's `Cache-Control` can be honoured (the `openidconnect` fetchers hide headers).

use std::time::{Duration, Instant};

use openidconnect::{
    AsyncHttpClient, IssuerUrl, JsonWebKeySetUrl,
    core::CoreJsonWebKeySet,
    http::{HeaderMap, Method, header},
};
use tracing::info;

use super::{Metadata, OidcProvider, errors::error_chain};
use crate::provider::ProviderError;

/// What may make authgate refetch the JWKS on an unknown `kid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    /// An ID token from the token endpoint, over a connection authgate opened: refetch at once.
    Trusted,
    /// A token anyone can send (a back-channel logout token): rate-limited.
    Untrusted,
}

/// Untrusted input may make authgate refetch the JWKS at most once per this interval.
pub(super) const UNTRUSTED_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a JWKS is used when its response says nothing about caching.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// The longest a JWKS is used before it is fetched again, whatever its response says.
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The provider's keys as fetched, with when to fetch them again.
pub(super) struct Keys {
    pub(super) set: CoreJsonWebKeySet,
    /// Bumped by every fetch (coalescing: a caller that saw an older generation retries with
    /// the new set instead of fetching).
    pub(super) generation: u64,
    fetched_at: Instant,
    max_age: Duration,
}

impl Keys {
    pub(super) fn empty() -> Self {
        Self {
            set: CoreJsonWebKeySet::new(Vec::new()),
            generation: 0,
            fetched_at: Instant::now(),
            max_age: Duration::ZERO,
        }
    }

    /// When this set is due to be fetched again.
    pub(super) fn expires_at(&self) -> Instant {
        self.fetched_at + self.max_age
    }
}

/// How long a JWKS response may be used: its `Cache-Control` `max-age` less its `Age`
/// (`no-cache` / `no-store`: not at all), an hour when it says nothing — clamped to
/// `[min, 24 h]`, `min` being `provider_jwks_min_refresh_interval`.
pub(super) fn jwks_max_age(headers: &HeaderMap, min: Duration) -> Duration {
    let mut max_age = None;
    let mut no_cache = false;
    for value in headers.get_all(header::CACHE_CONTROL) {
        for directive in value.to_str().unwrap_or_default().split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            if directive == "no-cache" || directive == "no-store" {
                no_cache = true;
            } else if let Some(secs) = directive.strip_prefix("max-age=") {
                max_age = secs.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
            }
        }
    }
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let lifetime = match (no_cache, max_age) {
        (true, _) => Duration::ZERO,
        (false, Some(max_age)) => max_age.saturating_sub(age),
        (false, None) => DEFAULT_MAX_AGE,
    };
    lifetime.clamp(min, MAX_MAX_AGE.max(min))
}

impl OidcProvider {
    /// Reads `<issuer>/.well-known/openid-configuration` (its `issuer` must be the configured
    /// one, character for character).
    pub(super) async fn fetch_metadata(
        &self,
        issuer: &IssuerUrl,
    ) -> Result<Metadata, ProviderError> {
        let url =
            format!("{}/.well-known/openid-configuration", issuer.as_str().trim_end_matches('/'));
        let body = self.get_json("discovery", &url).await?.1;
        let metadata: Metadata = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::BadResponse(format!("the discovery document does not parse: {e}"))
        })?;
        if metadata.issuer() != issuer {
            return Err(ProviderError::BadResponse(format!(
                "the discovery document names issuer `{}`, not the configured `{}`",
                metadata.issuer().as_str(),
                issuer.as_str()
            )));
        }
        Ok(metadata)
    }

    /// Fetches the JWKS and makes it the key set. The caller holds `jwks_fetch`.
    pub(super) async fn fetch_jwks(&self, uri: &JsonWebKeySetUrl) -> Result<(), ProviderError> {
        let (headers, body) = self.get_json("JWKS", uri.as_str()).await?;
        let set: CoreJsonWebKeySet = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::BadResponse(format!("the JWKS document does not parse: {e}"))
        })?;
        let max_age = jwks_max_age(&headers, self.config.jwks_min_refresh_interval);
        let mut keys = self.jwks.write().unwrap_or_else(|e| e.into_inner());
        let generation = keys.generation + 1;
        info!(
            keys = set.keys().len(),
            generation,
            max_age_secs = max_age.as_secs(),
            "provider JWKS fetched"
        );
        *keys = std::sync::Arc::new(Keys { set, generation, fetched_at: Instant::now(), max_age });
        Ok(())
    }

    /// A GET for a JSON document through the provider HTTP client (timeout, size cap, no
    /// redirects); its headers and body when it answered 200.
    async fn get_json(
        &self,
        what: &'static str,
        url: &str,
    ) -> Result<(HeaderMap, Vec<u8>), ProviderError> {
        let request = openidconnect::http::Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| ProviderError::BadResponse(format!("the {what} URL is unusable: {e}")))?;
        let endpoint = if what == "JWKS" { "jwks" } else { "discovery" };
        let response = super::observed(endpoint, self.http.call(request)).await.map_err(|e| {
            ProviderError::Unreachable(format!("{what} request failed: {}", error_chain(&e)))
        })?;
        if response.status() != openidconnect::http::StatusCode::OK {
            return Err(ProviderError::BadResponse(format!(
                "{what} answered HTTP {}",
                response.status()
            )));
        }
        let (parts, body) = response.into_parts();
        Ok((parts.headers, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_jwks_lifetime_follows_cache_control_within_bounds() {
        let min = Duration::from_secs(60);
        let secs = |h: &[(&str, &str)]| jwks_max_age(&headers(h), min).as_secs();
        assert_eq!(secs(&[]), 3600, "nothing said: an hour");
        assert_eq!(secs(&[("cache-control", "public, max-age=7200")]), 7200);
        assert_eq!(secs(&[("cache-control", "max-age=7200"), ("age", "200")]), 7000);
        assert_eq!(secs(&[("cache-control", "max-age=5")]), 60, "raised to the minimum");
        assert_eq!(secs(&[("cache-control", "no-store")]), 60);
        assert_eq!(secs(&[("cache-control", "no-cache, max-age=600")]), 60);
        assert_eq!(secs(&[("cache-control", "max-age=31536000")]), 86_400, "a day at most");
        assert_eq!(secs(&[("cache-control", "max-age=banana")]), 3600);
        assert_eq!(jwks_max_age(&headers(&[]), Duration::from_secs(1)).as_secs(), 3600);
    }
}
