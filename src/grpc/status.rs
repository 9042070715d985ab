//! The one place core errors become gRPC statuses. Client mistakes are logged at debug level;
//! server-side failures at warn/error with their detail, which the caller does not see.

use tonic::{Code, Status};
use tracing::{debug, error, warn};

use crate::{error::AuthError, provider::ProviderError, store::StoreError};

pub fn status_from(e: AuthError) -> Status {
    let (code, message) = classify(&e);
    match code {
        Code::Internal => error!(error = %e, "request failed"),
        Code::Unavailable => warn!(error = %e, "request failed: dependency unavailable"),
        _ => debug!(error = %e, "request refused"),
    }
    Status::new(code, message)
}

/// The gRPC code and the caller-facing message for an error.
pub fn classify(e: &AuthError) -> (Code, String) {
    match e {
        AuthError::InvalidArgument(_)
        | AuthError::RedirectUriNotAllowed(_)
        | AuthError::RedirectUriMismatch => (Code::InvalidArgument, e.to_string()),
        AuthError::AttemptNotFound | AuthError::AttemptExpired => {
            (Code::FailedPrecondition, e.to_string())
        }
        AuthError::BindingMismatch => (Code::PermissionDenied, e.to_string()),
        AuthError::Unauthenticated(_) | AuthError::SessionEnded => {
            (Code::Unauthenticated, e.to_string())
        }
        AuthError::Provider(p) => provider(p),
        AuthError::Store(StoreError::Unavailable(_)) => (
            Code::Unavailable,
            "the database is unavailable; retry shortly".into(),
        ),
        AuthError::Store(_) | AuthError::Internal(_) => (
            Code::Internal,
            "internal error; the server log has the details".into(),
        ),
    }
}

fn provider(e: &ProviderError) -> (Code, String) {
    match e {
        ProviderError::NotReady(_)
        | ProviderError::Unreachable(_)
        | ProviderError::BadResponse(_) => (Code::Unavailable, e.to_string()),
        ProviderError::Rejected { error, .. } if error == "invalid_grant" => (
            Code::Unauthenticated,
            format!(
                "{e}: the authorization code is expired, already used, or was issued for another client or redirect_uri; start a new login"
            ),
        ),
        ProviderError::Rejected { error, .. }
            if error == "server_error" || error == "temporarily_unavailable" =>
        {
            (Code::Unavailable, format!("{e}; retry shortly"))
        }
        ProviderError::Rejected { error, .. }
            if error == "invalid_client" || error == "unauthorized_client" =>
        {
            (
                Code::Internal,
                format!(
                    "{e}: authgate's client credentials are misconfigured (client_id / client_secret / client_auth_method)"
                ),
            )
        }
        ProviderError::Rejected { .. } | ProviderError::InvalidIdToken(_) => {
            (Code::Unauthenticated, e.to_string())
        }
    }
}
