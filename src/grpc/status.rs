//! The one place core errors become gRPC statuses. Client mistakes are logged at debug level;
//! server-side failures at warn/error with their detail, which the caller does not see.

use tonic::{Code, Status};
use tracing::{debug, error, warn};

use crate::error::{AuthError, ErrorKind};

pub fn status_from(e: AuthError) -> Status {
    let (kind, message) = e.classify();
    let code = match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    };
    match kind {
        ErrorKind::Internal => error!(error = %e, "request failed"),
        ErrorKind::Unavailable => warn!(error = %e, "request failed: dependency unavailable"),
        _ => debug!(error = %e, "request refused"),
    }
    Status::new(code, message)
}
