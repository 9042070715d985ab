//! The one place core errors become gRPC statuses. Client mistakes are logged at debug level;
//! server-side failures at warn/error with their detail, which the caller does not see. A status
//! the caller should retry later carries `retry-after` metadata (seconds).

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
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Internal => Code::Internal,
    };
    match (kind, &e) {
        (ErrorKind::Internal, _) => error!(error = %e, "request failed"),
        // Shedding and limits are expected under load: counted in metrics, not logged per call.
        (_, AuthError::Overloaded { .. } | AuthError::Limited { .. }) => {
            debug!(error = %e, "request refused")
        }
        (ErrorKind::Unavailable, _) => warn!(error = %e, "request failed: dependency unavailable"),
        _ => debug!(error = %e, "request refused"),
    }
    let mut status = Status::new(code, message);
    if let Some(secs) = e.retry_after_secs() {
        if let Ok(value) = secs.to_string().parse() {
            status.metadata_mut().insert("retry-after", value);
        }
    }
    status
}
