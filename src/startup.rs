//! Start-up wiring: open the store, run migrations, load keys, start provider discovery, and
//! serve gRPC, grpc-web, reflection, health and HTTP on one listener until `shutdown` resolves.
//! Tests call [`Application::build`] and [`Application::run`] with a listener on port 0.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::http::{HeaderName, HeaderValue, Method};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::transport::server::TcpIncoming;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    trace::TraceLayer,
};
use tracing::{info, warn};

use crate::{
    auth::Authenticator,
    config::Config,
    crypto::Cipher,
    grpc::AuthGrpc,
    health::{self, Readiness},
    http,
    pb::{self, auth_service_server::AuthServiceServer},
    provider::{IdentityProvider, oidc::OidcProvider},
    revocation::Revocations,
    store::Store,
    tokens::{TokenIssuer, now},
};

/// How long start-up waits for the database before giving up.
const DATABASE_WAIT: Duration = Duration::from_secs(30);
/// How often expired login attempts are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Everything the server needs, built and ready to serve.
pub struct Application {
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub store: Store,
    pub provider: Arc<dyn IdentityProvider>,
}

impl Application {
    /// Builds the application against the configured OpenID provider. Discovery runs in the
    /// background (health says NOT_SERVING until it succeeds).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let provider = OidcProvider::new(config.provider.clone())
            .context("cannot create the provider client")?;
        provider.spawn_discovery();
        Self::build_with_provider(config, provider).await
    }

    /// Builds the application with any provider (benchmarks use an in-process fake).
    pub async fn build_with_provider(
        config: Config,
        provider: Arc<dyn IdentityProvider>,
    ) -> anyhow::Result<Self> {
        let store = Store::connect(&config.database, config.database_max_connections)
            .context("cannot open the database")?;
        migrate_with_retry(&store).await?;
        let cipher = Cipher::new(&config.encryption_key.key);
        let tokens = TokenIssuer::load(issuer_of(&config), &config.tokens, &store, &cipher)
            .await
            .context("cannot load signing keys")?;
        let revocations = Arc::new(Revocations::new(config.tokens.ttl));
        revocations.sync(&store, now()).await.context("cannot read revoked sessions")?;
        let config = Arc::new(config);
        let auth = Arc::new(Authenticator::new(
            Arc::clone(&config),
            store.clone(),
            Arc::clone(&provider),
            Arc::new(tokens),
            cipher,
            revocations,
        ));
        Ok(Self { config, auth, store, provider })
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let (readiness_tx, readiness_rx) = watch::channel(Readiness::not_checked());
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(health::monitor(
                self.store.clone(),
                Arc::clone(&self.provider),
                reporter,
                readiness_tx,
                self.config.health_check_interval,
            )),
            tokio::spawn(sweep(self.store.clone())),
            tokio::spawn(
                Arc::clone(self.auth.revocations())
                    .run(self.store.clone(), self.config.revocation_sync_interval),
            ),
            tokio::spawn(maintain_keys(
                Arc::clone(&self.auth),
                self.config.tokens.key_reload_interval,
            )),
        ];

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        // gRPC services → one axum router; grpc-web translation on that router only, so plain
        // HTTP/1.1 JSON routes are not mistaken for grpc-web.
        let grpc = tonic::service::Routes::new(AuthServiceServer::new(AuthGrpc::new(Arc::clone(
            &self.auth,
        ))))
        .add_service(
            crate::ext::envoy::service::auth::v3::authorization_server::AuthorizationServer::new(
                crate::grpc::ExtAuthz::new(Arc::clone(&self.auth)),
            ),
        )
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new());
        let router = grpc
            .merge(http::router(http::HttpState { auth: Arc::clone(&self.auth), readiness: readiness_rx }))
            .fallback(http::not_found)
            .layer(cors_layer(&self.config.cors_allowed_origins)?)
            .layer(axum::middleware::from_fn(observe))
            .layer(
                // Log method and path only: query strings carry codes and state. The request id
                // is on the span, so every log line of the request carries it.
                TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                }),
            )
            .layer(axum::middleware::from_fn(request_id));

        info!(%addr, store = self.store.backend(), issuer = self.provider.issuer(), "authgate listening");
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        for task in tasks.drain(..) {
            task.abort();
        }
        info!("authgate stopped");
        served.context("server failed")
    }
}

const REQUEST_ID: &str = "x-request-id";

/// Gives every request an id: the caller's `x-request-id` when it is a short token, else a new
/// random one; it is echoed on the response and recorded on the request's log span.
async fn request_id(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let given = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(String::from);
    let id = given.unwrap_or_else(|| crate::crypto::random_handle(12));
    let mut value = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("invalid"));
    // Unique per response: HPACK must not index it, or every response would churn the
    // connection's header table (about 3 KB per HTTP/2 connection, and wasted CPU on both ends).
    value.set_sensitive(true);
    req.headers_mut().insert(REQUEST_ID, value.clone());
    let mut response = next.run(req).await;
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

/// The gRPC methods and HTTP routes that get a label of their own; anything else is `other`, so
/// a client cannot grow the metrics without bound.
const GRPC_METHODS: &[&str] = &[
    "/authgate.v1.AuthService/GetLoginUrl",
    "/authgate.v1.AuthService/ExchangeCode",
    "/authgate.v1.AuthService/GetUserInfo",
    "/authgate.v1.AuthService/ValidateToken",
    "/authgate.v1.AuthService/GetJwks",
    "/authgate.v1.AuthService/RefreshSession",
    "/authgate.v1.AuthService/Logout",
    "/envoy.service.auth.v3.Authorization/Check",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];
const HTTP_ROUTES: &[&str] = &[
    "/",
    "/authorization-code/login",
    "/authorization-code/callback",
    "/authorization-code/logout",
    "/api/login",
    "/api/callback",
    "/api/userinfo",
    "/auth/check",
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
    "/backchannel-logout",
    "/metrics",
    "/healthz",
    "/readyz",
];

/// Records the latency of every request: gRPC by method, HTTP by route and status class.
async fn observe(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let grpc = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let path = req.uri().path();
    let known = if grpc { GRPC_METHODS } else { HTTP_ROUTES };
    let label = known.iter().find(|k| **k == path).copied().unwrap_or("other");
    let response = next.run(req).await;
    let elapsed = started.elapsed().as_secs_f64();
    if grpc {
        crate::metrics::observe(
            "authgate_grpc_request_duration_seconds",
            &[("method", label)],
            elapsed,
        );
    } else {
        let class = match response.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        crate::metrics::observe(
            "authgate_http_request_duration_seconds",
            &[("route", label), ("status", class)],
            elapsed,
        );
    }
    response
}

/// The `iss` of authgate's tokens: its public URL without a trailing slash.
fn issuer_of(config: &Config) -> String {
    config.public_url.as_str().trim_end_matches('/').to_string()
}

/// CORS for browsers calling over grpc-web or fetch: only the configured origins, with the
/// headers grpc-web needs and the gRPC status headers exposed.
fn cors_layer(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let origins = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).context("cors_allowed_origins"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(
            [
                "content-type",
                "authorization",
                "x-grpc-web",
                "x-user-agent",
                "grpc-timeout",
                "connect-protocol-version",
                "connect-timeout-ms",
            ]
            .map(HeaderName::from_static),
        )
        // Cookies (the binding set by /api/login) may ride along on credentialed fetches.
        .allow_credentials(true)
        .expose_headers(
            ["grpc-status", "grpc-message", "grpc-status-details-bin"].map(HeaderName::from_static),
        )
        .max_age(Duration::from_secs(600)))
}

/// Runs the migrations, retrying while the database is unreachable (it may start after us).
async fn migrate_with_retry(store: &Store) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(crate::store::StoreError::Unavailable(e)) if started.elapsed() < DATABASE_WAIT => {
                warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(anyhow::anyhow!("cannot migrate the database: {e}")),
        }
    }
}

/// Sessions are kept this long after they end (for audit and reuse detection), then deleted.
const ENDED_SESSION_GRACE_SECS: i64 = 7 * 86_400;

/// Deletes expired login attempts, long-ended sessions and expired logout `jti`s periodically.
async fn sweep(store: Store) {
    loop {
        match store.sweep_expired_attempts(now()).await {
            Ok(0) => {}
            Ok(n) => info!(swept = n, "expired login attempts deleted"),
            Err(e) => warn!(error = %e, "sweeping expired login attempts failed"),
        }
        match store.sweep_ended_sessions(now(), ENDED_SESSION_GRACE_SECS).await {
            Ok(0) => {}
            Ok(n) => info!(swept = n, "ended sessions deleted"),
            Err(e) => warn!(error = %e, "sweeping ended sessions failed"),
        }
        tokio::time::sleep(SWEEP_INTERVAL).await;
    }
}

/// Re-reads the key set, schedules rotations and retires old keys, on every replica.
async fn maintain_keys(auth: Arc<Authenticator>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = auth.tokens().maintain().await {
            warn!(error = %e, "signing key maintenance failed");
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    info!("shutdown signal received");
}
