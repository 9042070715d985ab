//! Domain values that can only be built by parsing, so the rest of the code can trust them.

use serde::{Deserialize, Serialize};
use url::Url;

/// Longest `state`, `binding` or session handle we accept (ours are 43 characters).
pub const MAX_HANDLE_LEN: usize = 128;
/// Longest authorization code we accept (Okta's are ~43; some providers use JWT-sized codes).
pub const MAX_CODE_LEN: usize = 4096;
/// Longest URL we accept as a redirect URI.
pub const MAX_URL_LEN: usize = 2048;

/// A redirect URI: an absolute `https` URL (or `http` on a loopback host, for development), with no
/// fragment. Compared by exact string equality against the configured allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RedirectUri(String);

impl RedirectUri {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!("is longer than {MAX_URL_LEN} characters"));
        }
        let url = Url::parse(text).map_err(|e| format!("is not an absolute URL ({e})"))?;
        if url.fragment().is_some() {
            return Err("must not contain a fragment (#...)".into());
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&url) => {}
            "http" => return Err("must use https (http is accepted only for localhost)".into()),
            other => return Err(format!("has unsupported scheme `{other}`")),
        }
        // Keep the caller's exact spelling: the provider compares redirect URIs as strings.
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The token of an `Authorization: Bearer <token>` value (RFC 6750; the scheme is
/// case-insensitive).
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// RFC 6749 §3.3 scope-token, restricted further to a conservative character set.
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b))
}

/// An opaque handle we generated (state, binding, refresh handle): base64url, bounded length.
/// Parsing rejects anything that could not have come from us before it reaches the database.
pub fn parse_handle(field: &'static str, value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("`{field}` is required"));
    }
    if value.len() > MAX_HANDLE_LEN {
        return Err(format!("`{field}` is longer than {MAX_HANDLE_LEN} characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("`{field}` contains characters authgate never issues"));
    }
    Ok(value.to_string())
}

/// The user as the provider describes them (OpenID Connect standard claims plus `groups`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
}

impl Profile {
    /// Whether the profile lacks what a "thin" ID token leaves out (Okta's org server and
    /// `oidc-provider` put profile claims only in userinfo).
    pub fn is_thin(&self) -> bool {
        self.email.is_none() || self.name.is_none() || self.groups.is_none()
    }

    /// Fills in what `other` knows and `self` does not. `sub` is never changed.
    pub fn merge_from(&mut self, other: Profile) {
        fn take<T>(mine: &mut Option<T>, theirs: Option<T>) {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        take(&mut self.email, other.email);
        take(&mut self.email_verified, other.email_verified);
        take(&mut self.name, other.name);
        take(&mut self.given_name, other.given_name);
        take(&mut self.family_name, other.family_name);
        take(&mut self.preferred_username, other.preferred_username);
        take(&mut self.groups, other.groups);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_parsed_strictly() {
        assert!(RedirectUri::parse("https://app.example.com/callback").is_ok());
        assert!(RedirectUri::parse("http://localhost:5173/callback").is_ok());
        assert!(RedirectUri::parse("http://127.0.0.1:5173/callback").is_ok());
        assert!(RedirectUri::parse("http://app.example.com/callback").is_err());
        assert!(RedirectUri::parse("https://app.example.com/cb#x").is_err());
        assert!(RedirectUri::parse("javascript:alert(1)").is_err());
        assert!(RedirectUri::parse("/relative").is_err());
    }

    #[test]
    fn handles_reject_foreign_characters_and_lengths() {
        assert!(parse_handle("state", "abc-DEF_123").is_ok());
        assert!(parse_handle("state", "").is_err());
        assert!(parse_handle("state", "a'; DROP TABLE sessions;--").is_err());
        assert!(parse_handle("state", &"a".repeat(MAX_HANDLE_LEN + 1)).is_err());
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn scope_tokens() {
        assert!(is_scope_token("offline_access"));
        assert!(is_scope_token("api://default/read"));
        assert!(!is_scope_token("a b"));
        assert!(!is_scope_token("\"quoted\""));
    }

    #[test]
    fn merge_fills_missing_claims_only_from_other() {
        let mut p = Profile { sub: "s".into(), name: Some("A".into()), ..Default::default() };
        p.merge_from(Profile {
            sub: "other".into(),
            email: Some("a@example.com".into()),
            groups: Some(vec!["g".into()]),
            ..Default::default()
        });
        assert_eq!(p.sub, "s");
        assert_eq!(p.name.as_deref(), Some("A"));
        assert_eq!(p.email.as_deref(), Some("a@example.com"));
        assert!(!p.is_thin());
    }
}
