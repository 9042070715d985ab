//! The core's error type. Each variant says what went wrong in domain terms; the transports map
//! it to a gRPC status (`grpc::status`) or an HTTP response in exactly one place each.
//! Messages never include secrets, codes or tokens.

use crate::{provider::ProviderError, store::StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request itself is malformed: missing, oversized or badly formed field.
    #[error("{0}")]
    InvalidArgument(String),
    /// `redirect_uri` is not on the configured allow-list.
    #[error("redirect_uri `{0}` is not allowed; use one of the configured redirect_uris exactly")]
    RedirectUriNotAllowed(String),
    /// `redirect_uri` differs from the one the login attempt was started with.
    #[error("redirect_uri does not match the one given to GetLoginUrl for this state")]
    RedirectUriMismatch,
    /// No pending login attempt has this state: never issued, already used, or swept.
    #[error(
        "unknown or already used state: the login attempt does not exist (each state can be exchanged once); start a new login with GetLoginUrl"
    )]
    AttemptNotFound,
    /// The login attempt exists but its time ran out.
    #[error("the login attempt has expired; start a new login with GetLoginUrl")]
    AttemptExpired,
    /// The binding does not match the browser that started the attempt.
    #[error(
        "binding does not match this login attempt: pass the `binding` that GetLoginUrl returned to this browser"
    )]
    BindingMismatch,
    /// The user is authenticated but an access rule (allowed_groups, allowed_email_domains)
    /// refuses them.
    #[error("access denied by the {rule} rule: {reason}")]
    AccessDenied { rule: &'static str, reason: String },
    /// The user's claims are more than authgate can carry in a token or keep per session.
    #[error("{0}")]
    ProfileTooLarge(String),
    /// A request authenticated by the session cookie shows no sign of coming from an allowed
    /// page (cross-site request forgery defence).
    #[error("{0}")]
    CrossSite(String),
    /// The caller's authgate token is missing or invalid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The session behind a valid token has ended.
    #[error("the session has been revoked or has expired; sign in again")]
    SessionEnded,
    /// The identity provider refused or failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or a broken invariant; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
    /// authgate is at a concurrency budget: shed at once rather than queued.
    #[error("{message}")]
    Overloaded { message: String, retry_after_secs: u64 },
    /// The caller is over a rate limit, quota or cap.
    #[error("{message}")]
    Limited { limit: &'static str, message: String, retry_after_secs: u64 },
}

/// The class of an error, which each transport turns into its own status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller sent something malformed or not allowed.
    InvalidArgument,
    /// The request is well-formed but the state it refers to is gone (used, expired, unknown).
    FailedPrecondition,
    /// The caller is not the one allowed to do this (wrong binding).
    PermissionDenied,
    /// Credentials (code, ID token, authgate token) are missing or invalid.
    Unauthenticated,
    /// A dependency (provider, database) is down or slow, or authgate is shedding load;
    /// retrying later may work.
    Unavailable,
    /// The caller is over a rate limit, quota or cap; retrying after a while will work.
    ResourceExhausted,
    /// A server-side fault.
    Internal,
}

impl ErrorKind {
    /// A short machine-readable name, used in JSON error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::FailedPrecondition => "failed_precondition",
            Self::PermissionDenied => "permission_denied",
            Self::Unauthenticated => "unauthenticated",
            Self::Unavailable => "unavailable",
            Self::ResourceExhausted => "resource_exhausted",
            Self::Internal => "internal",
        }
    }
}

impl AuthError {
    /// A short, bounded reason for metrics labels.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_)
            | Self::RedirectUriNotAllowed(_)
            | Self::RedirectUriMismatch => "invalid_request",
            Self::AttemptNotFound => "unknown_state",
            Self::AttemptExpired => "expired_state",
            Self::BindingMismatch => "binding_mismatch",
            Self::AccessDenied { .. } => "access_denied",
            Self::CrossSite(_) => "cross_site",
            Self::ProfileTooLarge(_) => "profile_too_large",
            Self::Unauthenticated(_) | Self::SessionEnded => "unauthenticated",
            Self::Provider(ProviderError::Rejected { error, .. }) => match error.as_str() {
                "invalid_grant" => "invalid_grant",
                "invalid_client" | "unauthorized_client" => "invalid_client",
                "access_denied" => "provider_access_denied",
                _ => "provider_rejected",
            },
            Self::Provider(ProviderError::InvalidIdToken(_)) => "invalid_id_token",
            Self::Provider(_) => "provider_unavailable",
            Self::Store(StoreError::Unavailable(_)) => "database_unavailable",
            Self::Store(_) | Self::Internal(_) => "internal",
            Self::Overloaded { .. } => "overloaded",
            Self::Limited { .. } => "rate_limited",
        }
    }

    /// Logs a failed request at the level it deserves, once, for whichever transport answers
    /// it: internal faults at ERROR, a dependency down at WARN, the caller's mistakes — and
    /// shedding and limits, expected under load and counted in metrics — at DEBUG. The detail
    /// logged here is the one the caller does not see.
    pub fn log(&self, kind: ErrorKind) {
        match (kind, self) {
            (ErrorKind::Internal, _) => tracing::error!(error = %self, "request failed"),
            (_, Self::Overloaded { .. } | Self::Limited { .. }) => {
                tracing::debug!(error = %self, "request refused")
            }
            (ErrorKind::Unavailable, _) => {
                tracing::warn!(error = %self, "request failed: dependency unavailable")
            }
            _ => tracing::debug!(error = %self, "request refused"),
        }
    }

    /// How long the caller should wait before retrying, when that is known.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Overloaded { retry_after_secs, .. } | Self::Limited { retry_after_secs, .. } => {
                Some(*retry_after_secs)
            }
            Self::Store(StoreError::Unavailable(_)) => Some(5),
            _ if self.classify().0 == ErrorKind::Unavailable => Some(5),
            _ => None,
        }
    }

    /// The class of this error and the message the caller gets (never a secret; for internal
    /// faults, no detail at all — the log has it).
    pub fn classify(&self) -> (ErrorKind, String) {
        use ErrorKind as K;
        match self {
            Self::InvalidArgument(_)
            | Self::RedirectUriNotAllowed(_)
            | Self::RedirectUriMismatch => (K::InvalidArgument, self.to_string()),
            Self::AttemptNotFound | Self::AttemptExpired | Self::ProfileTooLarge(_) => {
                (K::FailedPrecondition, self.to_string())
            }
            Self::BindingMismatch | Self::AccessDenied { .. } | Self::CrossSite(_) => {
                (K::PermissionDenied, self.to_string())
            }
            Self::Unauthenticated(_) | Self::SessionEnded => (K::Unauthenticated, self.to_string()),
            Self::Provider(p) => classify_provider(p),
            Self::Store(StoreError::Unavailable(_)) => {
                (K::Unavailable, "the database is unavailable; retry shortly".into())
            }
            Self::Store(_) | Self::Internal(_) => {
                (K::Internal, "internal error; the server log has the details".into())
            }
            Self::Overloaded { .. } => (K::Unavailable, self.to_string()),
            Self::Limited { .. } => (K::ResourceExhausted, self.to_string()),
        }
    }
}

fn classify_provider(e: &ProviderError) -> (ErrorKind, String) {
    use ErrorKind as K;
    match e {
        ProviderError::NotReady(_)
        | ProviderError::Unreachable(_)
        | ProviderError::BadResponse(_) => (K::Unavailable, e.to_string()),
        ProviderError::Rejected { error, .. } if error == "invalid_grant" => (
            K::Unauthenticated,
            format!(
                "{e}: the authorization code is expired, already used, or was issued for another client or redirect_uri; start a new login"
            ),
        ),
        ProviderError::Rejected { error, .. }
            if error == "server_error" || error == "temporarily_unavailable" =>
        {
            (K::Unavailable, format!("{e}; retry shortly"))
        }
        ProviderError::Rejected { error, .. }
            if error == "invalid_client" || error == "unauthorized_client" =>
        {
            (
                K::Internal,
                format!(
                    "{e}: authgate's client credentials are misconfigured (client_id / client_secret / client_auth_method)"
                ),
            )
        }
        ProviderError::Rejected { .. } | ProviderError::InvalidIdToken(_) => {
            (K::Unauthenticated, e.to_string())
        }
    }
}
