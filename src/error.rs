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
}
