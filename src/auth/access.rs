//! Access rules: who may sign in and pass the gateway checks, beyond being authenticated.

use crate::{config::AccessRules, error::AuthError};

impl AccessRules {
    /// [`Self::check`] for a profile.
    pub fn check_profile(&self, profile: &crate::domain::Profile) -> Result<(), AuthError> {
        self.check(
            profile.email.as_deref(),
            profile.email_verified,
            profile.groups.as_deref().unwrap_or_default(),
        )
    }

    /// Checks a user's groups and email against the allow-lists. With `allowed_email_domains`,
    /// the email must be verified by the provider: an unverified address proves nothing.
    pub fn check(
        &self,
        email: Option<&str>,
        email_verified: Option<bool>,
        groups: &[String],
    ) -> Result<(), AuthError> {
        if !self.allowed_groups.is_empty()
            && !groups.iter().any(|g| self.allowed_groups.contains(g))
        {
            return Err(AuthError::AccessDenied {
                rule: "allowed_groups",
                reason: "the user belongs to none of the groups allowed here".into(),
            });
        }
        if !self.allowed_email_domains.is_empty() {
            let domain =
                email.and_then(|e| e.rsplit_once('@')).map(|(_, d)| d.to_ascii_lowercase());
            match domain {
                None => {
                    return Err(AuthError::AccessDenied {
                        rule: "allowed_email_domains",
                        reason: "the provider released no email address for this user".into(),
                    });
                }
                Some(_) if email_verified != Some(true) => {
                    return Err(AuthError::AccessDenied {
                        rule: "allowed_email_domains",
                        reason: "the user's email address is not verified by the provider".into(),
                    });
                }
                Some(d) if !self.allowed_email_domains.contains(&d) => {
                    return Err(AuthError::AccessDenied {
                        rule: "allowed_email_domains",
                        reason: format!("email domain `{d}` is not allowed here"),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(groups: &[&str], domains: &[&str]) -> AccessRules {
        AccessRules {
            allowed_groups: groups.iter().map(|s| s.to_string()).collect(),
            allowed_email_domains: domains.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn empty_rules_allow_everyone() {
        assert!(rules(&[], &[]).check(None, None, &[]).is_ok());
    }

    #[test]
    fn groups_need_one_match() {
        let r = rules(&["admins", "ops"], &[]);
        assert!(r.check(None, None, &["Everyone".into(), "ops".into()]).is_ok());
        let err = r.check(None, None, &["Everyone".into()]).unwrap_err();
        assert!(err.to_string().contains("allowed_groups"), "{err}");
    }

    #[test]
    fn email_domains_need_a_verified_matching_address() {
        let r = rules(&[], &["example.com"]);
        assert!(r.check(Some("a@Example.COM"), Some(true), &[]).is_ok());
        assert!(r.check(Some("a@example.com"), Some(false), &[]).is_err());
        assert!(r.check(Some("a@example.com"), None, &[]).is_err());
        assert!(r.check(Some("a@evil.com"), Some(true), &[]).is_err());
        assert!(r.check(Some("a@sub.example.com"), Some(true), &[]).is_err());
        assert!(r.check(None, Some(true), &[]).is_err());
    }
}

/// Who a gateway check found, for the identity headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub sid: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

impl super::Authenticator {
    /// The gateway check (Envoy ext_authz, nginx `auth_request`): a bearer token (checked from
    /// memory, like ValidateToken) or else the browser session cookie — for which the original
    /// request must pass the cross-site rule ([`super::csrf`]) — then the access rules.
    pub async fn check_access(
        &self,
        bearer: Option<&str>,
        cookie: Option<&str>,
        signals: &super::csrf::RequestSignals<'_>,
    ) -> Result<Identity, AuthError> {
        let (identity, email_verified) = match (bearer, cookie) {
            (Some(token), _) => match self.validate_token(token).await? {
                Ok(c) => (
                    Identity {
                        sub: c.sub.clone(),
                        sid: c.sid.clone(),
                        email: c.email.clone(),
                        name: c.name.clone(),
                        groups: c.groups.clone(),
                    },
                    c.email_verified,
                ),
                Err(rejection) => {
                    crate::metrics::inc(
                        "authgate_access_checks_total",
                        &[("result", "unauthenticated")],
                    );
                    return Err(AuthError::Unauthenticated(format!("{rejection}; sign in again")));
                }
            },
            (None, Some(cookie)) => {
                let (session, profile) = async {
                    self.csrf.check(signals)?;
                    self.authenticate_cookie(cookie).await
                }
                .await
                .inspect_err(|e| {
                    crate::metrics::inc(
                        "authgate_access_checks_total",
                        &[("result", e.reason_code())],
                    );
                })?;
                let verified = profile.email_verified;
                (
                    Identity {
                        sub: profile.sub,
                        sid: session.id,
                        email: profile.email,
                        name: profile.name,
                        groups: profile.groups.unwrap_or_default(),
                    },
                    verified,
                )
            }
            (None, None) => {
                crate::metrics::inc(
                    "authgate_access_checks_total",
                    &[("result", "unauthenticated")],
                );
                return Err(AuthError::Unauthenticated(
                    "no credentials: send `Authorization: Bearer <access_token>` or sign in to get the session cookie".into(),
                ));
            }
        };
        let allowed =
            self.config.access.check(identity.email.as_deref(), email_verified, &identity.groups);
        let result = match &allowed {
            Ok(()) => "allowed",
            Err(_) => "access_denied",
        };
        crate::metrics::inc("authgate_access_checks_total", &[("result", result)]);
        allowed.map(|()| identity)
    }
}
