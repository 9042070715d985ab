//! The one place core errors become gRPC statuses. Client mistakes are logged at debug level;
//! server-side failures at warn/error with their detail, which the caller does not see. A status
//! the caller should retry later carries `retry-after` metadata (seconds).

use tonic::{Code, Status};

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
    e.log(kind);
    let mut status = Status::new(code, message);
    if let Some(secs) = e.retry_after_secs()
        && let Ok(value) = secs.to_string().parse()
    {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}
