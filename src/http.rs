//! The plain-HTTP routes served beside gRPC on the same listener. Thin adapters over the same
//! core; errors are JSON bodies that say what to fix.

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::watch;

use crate::health::Readiness;

/// Shared state of the HTTP routes.
#[derive(Clone)]
pub struct HttpState {
    pub readiness: watch::Receiver<Readiness>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// A JSON error body: `{"error": "<code>", "message": "<what to fix>"}`.
pub fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": code, "message": message.into() })),
    )
        .into_response()
}

/// The fallback for unknown paths (set after merging with the gRPC router).
pub async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Liveness: the process answers.
async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Readiness: the database and the provider are reachable.
async fn readyz(State(state): State<HttpState>) -> Response {
    let r = state.readiness.borrow().clone();
    let body = json!({
        "ready": r.is_ready(),
        "database": r.database.as_ref().err().map_or("ok".to_string(), |e| e.clone()),
        "provider": r.provider.as_ref().err().map_or("ok".to_string(), |e| e.clone()),
    });
    let status = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
