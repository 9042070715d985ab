//! Readiness: authgate serves only while the database answers and the provider's discovery
//! document is reachable. A background monitor checks both and drives the gRPC health service
//! (`grpc.health.v1.Health`, overall and for `authgate.v1.AuthService`) and the HTTP `/readyz`.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use crate::{pb::auth_service_server::AuthServiceServer, provider::IdentityProvider, store::Store};

/// What the last check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub database: Result<(), String>,
    pub provider: Result<(), String>,
    /// A stop was asked for: not ready, whatever the dependencies say (`shutdown_grace`).
    pub shutting_down: bool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.database.is_ok() && self.provider.is_ok() && !self.shutting_down
    }

    pub fn not_checked() -> Self {
        Self {
            database: Err("not checked yet".into()),
            provider: Err("not checked yet".into()),
            shutting_down: false,
        }
    }
}

/// Reports not ready at once and for good (a stop was asked for), while everything is still
/// served: `shutdown_grace` lets load balancers stop sending first.
pub async fn report_shutting_down(
    reporter: &HealthReporter,
    readiness: &watch::Sender<Readiness>,
    draining: &std::sync::atomic::AtomicBool,
) {
    draining.store(true, std::sync::atomic::Ordering::SeqCst);
    readiness.send_modify(|r| r.shutting_down = true);
    reporter.set_not_serving::<AuthServiceServer<crate::grpc::AuthGrpc>>().await;
    reporter.set_service_status("", ServingStatus::NotServing).await;
}

/// Runs the checks every `interval` until the task is aborted.
pub async fn monitor(
    store: Store,
    provider: Arc<dyn IdentityProvider>,
    reporter: HealthReporter,
    readiness: Arc<watch::Sender<Readiness>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    interval: Duration,
) {
    let mut last = Readiness::not_checked();
    reporter.set_not_serving::<AuthServiceServer<crate::grpc::AuthGrpc>>().await;
    reporter.set_service_status("", ServingStatus::NotServing).await;
    loop {
        let (database, idp) = tokio::join!(store.ping(), provider.check());
        let now = Readiness {
            database: database.map_err(|e| e.to_string()),
            provider: idp.map_err(|e| e.to_string()),
            shutting_down: draining.load(std::sync::atomic::Ordering::SeqCst),
        };
        if now.is_ready() != last.is_ready() || (last == Readiness::not_checked()) {
            if now.is_ready() {
                info!("ready: database and provider reachable");
                reporter.set_serving::<AuthServiceServer<crate::grpc::AuthGrpc>>().await;
                reporter.set_service_status("", ServingStatus::Serving).await;
            } else {
                warn!(database = ?now.database, provider = ?now.provider, "not ready");
                reporter.set_not_serving::<AuthServiceServer<crate::grpc::AuthGrpc>>().await;
                reporter.set_service_status("", ServingStatus::NotServing).await;
            }
        }
        readiness.send_replace(now.clone());
        last = now;
        tokio::time::sleep(interval).await;
    }
}
