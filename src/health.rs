//! Readiness, in two parts, because the fleet's checks never need the provider:
//!
//! - **can validate** — the database answers and a signing key is active: tokens can be issued
//!   and checked, sessions read. This is what the Kubernetes readiness probe, the overall gRPC
//!   health (`""`), `authgate.v1.AuthService`, `authgate.validate` and `GET /readyz` report;
//! - **can log in** — can validate, and the provider is discovered and its discovery document
//!   answers: `authgate.login` and `GET /readyz/login`.
//!
//! A provider outage so leaves every replica ready for ValidateToken and Envoy's checks. The
//! monitor checks every `health_check_interval` (1 s) and at once when the provider's state
//! changes (discovery, whose retries are capped at 1 s, succeeded or failed).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

use crate::{
    pb::auth_service_server::AuthServiceServer, provider::IdentityProvider, store::Store,
    tokens::TokenIssuer,
};

/// The gRPC health service that reports "can validate" (also `""` and `authgate.v1.AuthService`).
pub const VALIDATE_SERVICE: &str = "authgate.validate";
/// The gRPC health service that reports "can log in".
pub const LOGIN_SERVICE: &str = "authgate.login";

/// What the last check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub database: Result<(), String>,
    /// A signing key is active.
    pub signing_keys: Result<(), String>,
    /// The provider (its issuer) and whether it is discovered and answers.
    pub provider: Result<(), String>,
    pub issuer: String,
    /// A stop was asked for: not ready, whatever the dependencies say (`shutdown_grace`).
    pub shutting_down: bool,
}

impl Readiness {
    /// Tokens can be issued and checked: what the readiness probe means.
    pub fn is_ready(&self) -> bool {
        self.can_validate()
    }

    pub fn can_validate(&self) -> bool {
        self.database.is_ok() && self.signing_keys.is_ok() && !self.shutting_down
    }

    pub fn can_log_in(&self) -> bool {
        self.can_validate() && self.provider.is_ok()
    }

    pub fn not_checked() -> Self {
        Self {
            database: Err("not checked yet".into()),
            signing_keys: Err("not checked yet".into()),
            provider: Err("not checked yet".into()),
            issuer: String::new(),
            shutting_down: false,
        }
    }

    /// The `/readyz` body: both parts, each with its dependencies.
    pub fn to_json(&self) -> serde_json::Value {
        let text = |r: &Result<(), String>| r.as_ref().err().map_or("ok".to_string(), Clone::clone);
        serde_json::json!({
            "ready": self.can_validate(),
            "validate": {
                "ready": self.can_validate(),
                "database": text(&self.database),
                "signing_keys": text(&self.signing_keys),
            },
            "login": {
                "ready": self.can_log_in(),
                "providers": [{ "issuer": self.issuer, "status": text(&self.provider) }],
            },
            // Kept from the first /readyz shape.
            "database": text(&self.database),
            "provider": text(&self.provider),
            "shutting_down": self.shutting_down,
        })
    }
}

/// Reports not ready at once and for good (a stop was asked for), while everything is still
/// served: `shutdown_grace` lets load balancers stop sending first.
pub async fn report_shutting_down(
    reporter: &HealthReporter,
    readiness: &watch::Sender<Readiness>,
    draining: &AtomicBool,
) {
    draining.store(true, Ordering::SeqCst);
    readiness.send_modify(|r| r.shutting_down = true);
    let mut stopped = readiness.borrow().clone();
    stopped.shutting_down = true;
    publish(reporter, &stopped).await;
}

/// Sets every health service from `r`.
async fn publish(reporter: &HealthReporter, r: &Readiness) {
    let status = |up: bool| if up { ServingStatus::Serving } else { ServingStatus::NotServing };
    let validate = status(r.can_validate());
    reporter.set_service_status("", validate).await;
    reporter.set_service_status(VALIDATE_SERVICE, validate).await;
    if r.can_validate() {
        reporter.set_serving::<AuthServiceServer<crate::grpc::AuthGrpc>>().await;
    } else {
        reporter.set_not_serving::<AuthServiceServer<crate::grpc::AuthGrpc>>().await;
    }
    reporter.set_service_status(LOGIN_SERVICE, status(r.can_log_in())).await;
}

/// Checks every `interval`, and at once when the provider's state changes, until aborted. The
/// provider is probed on a task of its own, so that a provider that hangs (up to
/// `provider_timeout`) never delays what the database and the keys say.
pub async fn monitor(
    store: Store,
    provider: Arc<dyn IdentityProvider>,
    tokens: Arc<TokenIssuer>,
    reporter: HealthReporter,
    readiness: Arc<watch::Sender<Readiness>>,
    draining: Arc<AtomicBool>,
    interval: Duration,
) {
    let mut last = Readiness::not_checked();
    publish(&reporter, &last).await;
    let changed = provider.state_changed();
    let probe = Arc::new(ProviderProbe::default());
    // The first probe starts at once.
    let mut force_probe = true;
    let mut probe_started: Option<tokio::time::Instant> = None;
    loop {
        let due = probe_started.is_none_or(|t| t.elapsed() >= interval);
        if (force_probe || due) && !probe.in_flight.swap(true, Ordering::AcqRel) {
            probe_started = Some(tokio::time::Instant::now());
            let (provider, probe) = (Arc::clone(&provider), Arc::clone(&probe));
            tokio::spawn(async move {
                let result = provider.check().await.map_err(|e| e.to_string());
                *probe.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                probe.in_flight.store(false, Ordering::Release);
                probe.done.notify_one();
            });
        }
        force_probe = false;
        let database = store.ping().await;
        let provider_state = probe
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Err("not checked yet".into()));
        let now = Readiness {
            database: database.map_err(|e| e.to_string()),
            signing_keys: tokens.keys_ready(),
            provider: provider_state,
            issuer: provider.issuer().to_string(),
            shutting_down: draining.load(Ordering::SeqCst),
        };
        let first = last == Readiness::not_checked();
        if first
            || now.can_validate() != last.can_validate()
            || now.can_log_in() != last.can_log_in()
        {
            if now.can_log_in() {
                info!("ready: can validate and can log in");
            } else if now.can_validate() && first {
                info!("ready to validate; checking the provider");
            } else if now.can_validate() {
                warn!(provider = ?now.provider, "ready to validate; logins unavailable (provider)");
            } else {
                warn!(database = ?now.database, signing_keys = ?now.signing_keys, shutting_down = now.shutting_down, "not ready");
            }
            publish(&reporter, &now).await;
        }
        readiness.send_replace(now.clone());
        last = now;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            // Discovery succeeded or failed: probe again at once.
            () = changed.notified() => force_probe = true,
            // A probe finished: report what it found.
            () = probe.done.notified() => {}
        }
    }
}

/// The provider probe's last result, and whether one is running.
#[derive(Default)]
struct ProviderProbe {
    latest: std::sync::Mutex<Option<Result<(), String>>>,
    in_flight: AtomicBool,
    done: tokio::sync::Notify,
}
