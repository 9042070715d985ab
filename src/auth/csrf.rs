//! Cross-site request forgery defence, one rule for every path a browser session cookie
//! authenticates: authgate's own cookie routes (`POST /authorization-code/logout`) and the
//! gateway checks (Envoy ext_authz, `/auth/check`), which judge the *original* request.
//!
//! A cookie rides along with any request the browser makes, whoever's page made it, and
//! `SameSite=Lax` does not stop pages of sibling subdomains (they are the same site). So a
//! cookie-authenticated request with an unsafe method must carry a signal that a page of an
//! allowed origin made it:
//!
//! - an `Origin` that is the request's own origin (its host), authgate's `public_url`, or one of
//!   `cors_allowed_origins` — browsers send `Origin` with every cross-origin request and every
//!   POST, so a foreign or sibling page is recognised by it; or, with no `Origin`,
//! - `Sec-Fetch-Site: same-origin` or `same-site` (set by the browser, not by pages), or
//! - the `X-CSRF` header (any value): a cross-site form cannot send a header, and a cross-origin
//!   `fetch` can only after a CORS preflight the allow-list refuses.
//!
//! Safe methods (GET, HEAD, OPTIONS) pass, so ordinary links into a protected app keep working,
//! unless `csrf_all_methods` is set. Bearer tokens are exempt: a browser never attaches them by
//! itself.

use url::Url;

use crate::error::AuthError;

/// The header a page sends to prove it is not a cross-site form.
pub const CSRF_HEADER: &str = "x-csrf";

/// What a request says about where it came from.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestSignals<'a> {
    /// The method of the request the cookie came with (for a gateway check, the original one);
    /// unknown is taken as GET.
    pub method: Option<&'a str>,
    /// The host (`host[:port]`) the request was sent to, for the same-origin comparison.
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
    /// Whether the `X-CSRF` header was sent.
    pub csrf_header: bool,
}

impl<'a> RequestSignals<'a> {
    /// The signals of a request with this method sent to this host: its `Origin` and
    /// `Sec-Fetch-Site` read through `header` (lower-case names, whatever map the transport
    /// keeps them in), and whether it carries [`CSRF_HEADER`].
    pub fn from_headers(
        method: Option<&'a str>,
        host: Option<&'a str>,
        header: impl Fn(&str) -> Option<&'a str>,
        csrf_header: bool,
    ) -> Self {
        Self {
            method,
            host,
            origin: header("origin"),
            sec_fetch_site: header("sec-fetch-site"),
            csrf_header,
        }
    }
}

/// The allow-list and the methods the rule applies to.
#[derive(Debug, Clone, Default)]
pub struct CsrfPolicy {
    /// Allowed origins, normalised (`scheme://host[:port]`, lower-case).
    origins: Vec<String>,
    all_methods: bool,
}

fn normalise(origin: &str) -> Option<String> {
    let url = Url::parse(origin).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{}://{}:{port}", url.scheme(), host.to_ascii_lowercase()),
        None => format!("{}://{}", url.scheme(), host.to_ascii_lowercase()),
    })
}

/// `host[:port]` of an origin, as a `Host` header would name it.
fn authority(origin: &str) -> Option<String> {
    let url = Url::parse(origin).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

impl CsrfPolicy {
    pub fn new<'a>(origins: impl IntoIterator<Item = &'a str>, all_methods: bool) -> Self {
        Self { origins: origins.into_iter().filter_map(normalise).collect(), all_methods }
    }

    /// Refuses a cookie-authenticated request that does not show it comes from an allowed page.
    pub fn check(&self, r: &RequestSignals<'_>) -> Result<(), AuthError> {
        let method = r.method.unwrap_or("GET");
        let safe = ["GET", "HEAD", "OPTIONS"].iter().any(|m| method.eq_ignore_ascii_case(m));
        if safe && !self.all_methods {
            return Ok(());
        }
        let refused = |why: String| {
            Err(AuthError::CrossSite(format!(
                "cross-site request refused: {why}; a {method} authenticated by the session cookie must come from an allowed origin (Origin in cors_allowed_origins, or the site itself) or carry the X-CSRF header"
            )))
        };
        match r.origin {
            Some(origin) => {
                let own = r
                    .host
                    .zip(authority(origin))
                    .is_some_and(|(host, authority)| host.trim().eq_ignore_ascii_case(&authority));
                let listed = normalise(origin).is_some_and(|o| self.origins.contains(&o));
                if own || listed {
                    Ok(())
                } else {
                    refused(format!(
                        "Origin `{}` is not allowed",
                        origin.chars().take(100).collect::<String>()
                    ))
                }
            }
            None if r.csrf_header => Ok(()),
            None => match r.sec_fetch_site.map(str::to_ascii_lowercase).as_deref() {
                Some("same-origin" | "same-site") => Ok(()),
                Some(other) => refused(format!("Sec-Fetch-Site is `{other}`")),
                None => refused("the request carries no Origin, Sec-Fetch-Site or X-CSRF".into()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CsrfPolicy {
        CsrfPolicy::new(["https://auth.example.com/", "https://app.example.com"], false)
    }

    fn post<'a>() -> RequestSignals<'a> {
        RequestSignals {
            method: Some("POST"),
            host: Some("shop.example.com"),
            ..Default::default()
        }
    }

    #[test]
    fn safe_methods_pass_and_unsafe_ones_need_a_same_origin_signal() {
        let p = policy();
        let get =
            RequestSignals { method: Some("GET"), origin: Some("https://evil.com"), ..post() };
        assert!(p.check(&get).is_ok(), "links into the app keep working");
        assert!(p.check(&RequestSignals { method: None, ..post() }).is_ok(), "unknown: GET");
        assert!(p.check(&post()).is_err(), "no signal at all");
        for origin in
            ["https://shop.example.com", "https://app.example.com", "https://AUTH.example.com"]
        {
            let r = RequestSignals { origin: Some(origin), ..post() };
            assert!(p.check(&r).is_ok(), "{origin}");
        }
        for origin in [
            "https://evil.com",
            "https://sibling.example.com",
            "https://app.example.com:8443",
            "http://app.example.com.evil.com",
            "null",
        ] {
            let r = RequestSignals { origin: Some(origin), csrf_header: true, ..post() };
            let err = p.check(&r).unwrap_err();
            assert!(err.to_string().contains("is not allowed"), "{origin}: {err}");
        }
        let with = |site: &'static str| RequestSignals { sec_fetch_site: Some(site), ..post() };
        assert!(p.check(&with("same-origin")).is_ok());
        assert!(p.check(&with("same-site")).is_ok());
        assert!(p.check(&with("cross-site")).is_err());
        assert!(p.check(&RequestSignals { csrf_header: true, ..post() }).is_ok());
        let delete = RequestSignals { method: Some("delete"), ..post() };
        assert!(p.check(&delete).is_err(), "methods compare case-insensitively");
    }

    #[test]
    fn every_method_when_asked() {
        let p = CsrfPolicy::new([], true);
        let get =
            RequestSignals { method: Some("GET"), origin: Some("https://evil.com"), ..post() };
        assert!(p.check(&get).is_err());
    }
}
