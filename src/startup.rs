//! Start-up wiring: open the store, run migrations, load keys, start provider discovery, and
//! serve gRPC, grpc-web, reflection, health and HTTP on the public listener (and, when
//! configured, the fleet's checks on the internal one) until `shutdown` resolves. Tests call
//! [`Application::build`] and [`Application::run`] with listeners on port 0.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::http::{HeaderName, HeaderValue, Method};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic_health::pb::health_server::{Health, HealthServer};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    trace::{DefaultOnFailure, TraceLayer},
};
use tracing::{Level, info, warn};

use crate::{
    auth::Authenticator,
    config::{Config, TransportConfig},
    crypto::Cipher,
    ext::envoy::service::auth::v3::authorization_server::AuthorizationServer,
    grpc::AuthGrpc,
    health::{self, Readiness},
    http,
    pb::{self, auth_service_server::AuthServiceServer},
    provider::{IdentityProvider, oidc::OidcProvider},
    revocation::Revocations,
    server::{
        self, ListenerStats,
        admission::{Admission, AdmissionLayer, ClientLimits},
        layers::{self, Role},
        tls::TlsListener,
    },
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
        crate::metrics::install();
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

    /// Serves until `shutdown` resolves, then drains in-flight requests. With an internal
    /// listener, the fleet's checks, metrics and readiness are served there only.
    pub async fn run(
        self,
        listeners: impl Into<Listeners>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listeners = listeners.into();
        let tls_for = |name: &'static str, settings: &Option<crate::config::TlsSettings>| {
            settings
                .clone()
                .map(|settings| {
                    let t = &self.config.transport;
                    TlsListener::new(name, settings, t.tls_handshake_timeout, t.tls_max_handshakes)
                })
                .transpose()
                .map_err(|e| anyhow::anyhow!("TLS on the {name} listener: {e}"))
        };
        let public_tls = tls_for("public", &self.config.transport.public_tls)?;
        let internal_tls = match listeners.internal {
            Some(_) => tls_for("internal", &self.config.transport.internal_tls)?,
            None => None,
        };
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let (readiness_tx, readiness_rx) = watch::channel(Readiness::not_checked());
        let readiness_tx = Arc::new(readiness_tx);
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(health::monitor(
                self.store.clone(),
                Arc::clone(&self.provider),
                Arc::clone(self.auth.tokens()),
                reporter.clone(),
                Arc::clone(&readiness_tx),
                Arc::clone(&draining),
                self.config.health_check_interval,
            )),
            tokio::spawn(sweep(
                self.store.clone(),
                self.config.session_idle_timeout.as_secs() as i64,
            )),
            tokio::spawn(
                Arc::clone(self.auth.revocations())
                    .run(self.store.clone(), self.config.revocation_sync_interval),
            ),
            tokio::spawn(maintain_keys(
                Arc::clone(&self.auth),
                self.config.tokens.key_reload_interval,
            )),
        ];

        let mut transport = self.config.transport.clone();
        {
            let mut caps = vec![&mut transport.public];
            if listeners.internal.is_some() {
                caps.push(&mut transport.internal);
            }
            let reserve = self.config.database_max_connections as usize;
            if let Some(warning) = server::raise_fd_limit()
                .and_then(|limit| server::fit_to_fd_limit(limit, reserve, &mut caps))
            {
                warn!("{warning}");
            }
        }
        let public_stats = ListenerStats::new("public", transport.public.clone());
        let internal_stats = listeners
            .internal
            .as_ref()
            .map(|_| ListenerStats::new("internal", transport.internal.clone()));
        let all_stats: Vec<Arc<ListenerStats>> =
            std::iter::once(Arc::clone(&public_stats)).chain(internal_stats.clone()).collect();
        let client_limits = Arc::new(ClientLimits::new(
            transport.admission.clone(),
            self.config.attempt_ttl,
            Arc::clone(&self.auth),
        ));
        tasks.push(tokio::spawn({
            let limits = Arc::clone(&client_limits);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    limits.prune();
                }
            }
        }));
        let origins = &self.config.cors_allowed_origins;
        let public_admission =
            Admission::new("public", &transport.admission, Arc::clone(&client_limits), origins);
        let internal_admission = internal_stats.as_ref().map(|_| {
            Admission::new("internal", &transport.admission, Arc::clone(&client_limits), origins)
        });
        let admissions: Vec<Arc<Admission>> = std::iter::once(Arc::clone(&public_admission))
            .chain(internal_admission.clone())
            .collect();
        let parts = RouterParts {
            auth: Arc::clone(&self.auth),
            health: health_service,
            http: http::HttpState {
                auth: Arc::clone(&self.auth),
                readiness: readiness_rx,
                listeners: Arc::new(all_stats),
                admissions: Arc::new(admissions),
                client_limits,
            },
            transport: transport.clone(),
        };

        let (stop_tx, stop_rx) = watch::channel(false);
        let grace = self.config.transport.shutdown_grace;
        tokio::spawn(async move {
            shutdown.await;
            if !grace.is_zero() {
                health::report_shutting_down(&reporter, &readiness_tx, &draining).await;
                info!(
                    grace_secs = grace.as_secs_f64(),
                    "not ready; serving on for shutdown_grace before draining"
                );
                tokio::time::sleep(grace).await;
            }
            let _ = stop_tx.send(true);
        });
        let mut servers = Vec::new();
        let public_role = if listeners.internal.is_some() { Role::Public } else { Role::All };
        let public_addr = listeners.public.local_addr().ok();
        info!(
            listener = "public",
            addr = %display_addr(public_addr),
            tls = %public_tls.as_ref().map_or_else(|| "off".to_string(), |t| t.summary()),
            max_connections = public_stats.limits.max_connections,
            max_connections_per_ip = public_stats.limits.max_connections_per_ip,
            store = self.store.backend(),
            issuer = self.provider.issuer(),
            "authgate listening"
        );
        for tls in public_tls.iter().chain(internal_tls.iter()) {
            tasks.push(tokio::spawn(
                Arc::clone(tls).watch(transport.tls_reload_interval, stop_rx.clone()),
            ));
        }
        servers.push(tokio::spawn({
            let router = parts.router(public_role, public_admission)?;
            let (transport, stop) = (transport.clone(), stop_rx.clone());
            async move {
                server::serve(listeners.public, router, public_stats, public_tls, &transport, stop)
                    .await
            }
        }));
        if let (Some(listener), Some(stats), Some(admission)) =
            (listeners.internal, internal_stats, internal_admission)
        {
            info!(
                listener = "internal",
                addr = %display_addr(listener.local_addr().ok()),
                tls = %internal_tls.as_ref().map_or_else(|| "off".to_string(), |t| t.summary()),
                max_connections = stats.limits.max_connections,
                max_connections_per_ip = stats.limits.max_connections_per_ip,
                "authgate listening"
            );
            let router = parts.router(Role::Internal, admission)?;
            let done = server::serve_on_own_runtime(
                listener,
                router,
                stats,
                internal_tls,
                transport.clone(),
                stop_rx.clone(),
            )
            .context("cannot start the internal listener's runtime")?;
            servers.push(tokio::spawn(async move {
                let _ = done.await;
            }));
        }
        let mut failed = None;
        for served in servers {
            if let Err(e) = served.await {
                failed = Some(e);
            }
        }
        for task in tasks.drain(..) {
            task.abort();
        }
        info!("authgate stopped");
        match failed {
            Some(e) => Err(anyhow::anyhow!("a listener failed: {e}")),
            None => Ok(()),
        }
    }
}

fn display_addr(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "?".into(), |a| a.to_string())
}

/// The sockets authgate serves on: the public listener, and the optional internal one.
pub struct Listeners {
    pub public: TcpListener,
    pub internal: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(public: TcpListener) -> Self {
        Self { public, internal: None }
    }
}

/// What every listener's router is built from.
struct RouterParts<H: Health> {
    auth: Arc<Authenticator>,
    health: HealthServer<H>,
    http: http::HttpState,
    transport: TransportConfig,
}

impl<H: Health> RouterParts<H> {
    /// gRPC (native and grpc-web), reflection, health and the HTTP routes for one listener,
    /// with the request limits and the listener gate.
    fn router(&self, role: Role, admission: Arc<Admission>) -> anyhow::Result<axum::Router> {
        let t = &self.transport;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?
            .max_decoding_message_size(t.max_message_bytes);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?
            .max_decoding_message_size(t.max_message_bytes);
        let auth_service = AuthServiceServer::new(AuthGrpc::new(Arc::clone(&self.auth)))
            .max_decoding_message_size(t.max_message_bytes);
        let ext_authz =
            AuthorizationServer::new(crate::grpc::ExtAuthz::new(Arc::clone(&self.auth)))
                .max_decoding_message_size(t.ext_authz_max_message_bytes);
        let health = self.health.clone().max_decoding_message_size(t.max_message_bytes);

        // gRPC services → one axum router; grpc-web translation on that router only, so plain
        // HTTP/1.1 JSON routes are not mistaken for grpc-web.
        let grpc = tonic::service::Routes::new(auth_service)
            .add_service(ext_authz)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(t.request_timeout, layers::grpc_limits))
            .layer(tonic_web::GrpcWebLayer::new());
        let limits = layers::HttpLimits {
            max_body_bytes: t.max_body_bytes,
            request_timeout: t.request_timeout,
        };
        let routes = http::router(self.http.clone())
            .layer(axum::extract::DefaultBodyLimit::max(t.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(limits, layers::http_limits));
        let router = grpc.merge(routes).fallback(http::not_found);
        // With one listener there is nothing to refuse: no gate on the hot path.
        let router = match role {
            Role::All => router,
            _ => router.layer(axum::middleware::from_fn_with_state(role, layers::gate)),
        };
        Ok(router
            .layer(cors_layer(&self.auth.config().cors_allowed_origins)?)
            .layer(axum::middleware::from_fn(observe))
            .layer(
                // Log method and path only: query strings carry codes and state. The request id
                // is on the span, so every log line of the request carries it. A 5xx is not
                // logged here: the handler that produced it logged why, at the level it
                // deserves (an expected 503 is no ERROR).
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_response(record_response)
                    .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
            )
            .layer(axum::middleware::from_fn(request_id))
            // Outermost: refusing must cost as little as possible.
            .layer(AdmissionLayer(admission)))
    }
}

const REQUEST_ID: &str = "x-request-id";

/// The span of one request. While spans are exported it is named and attributed per the
/// OpenTelemetry semantic conventions (`authgate.v1.AuthService/ValidateToken` with `rpc.*`;
/// `GET /readyz` with `http.*`) and is a child of the caller's `traceparent`; otherwise it
/// carries only what the logs need.
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (method, path) = (req.method(), req.uri().path());
    if !crate::telemetry::exporting() {
        return tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    }
    let grpc = layers::is_grpc_request(req.headers());
    let route = known_label(path, grpc);
    let empty = tracing::field::Empty;
    let span = if grpc {
        let name = route.trim_start_matches('/');
        let (service, rpc) = name.split_once('/').unwrap_or((name, ""));
        tracing::info_span!(
            "request",
            request_id = %id, method = %method, path = %path,
            otel.name = name, otel.kind = "server",
            rpc.system = "grpc", rpc.service = service, rpc.method = rpc,
            rpc.grpc.status_code = empty, http.response.status_code = empty,
        )
    } else {
        tracing::info_span!(
            "request",
            request_id = %id, method = %method, path = %path,
            otel.name = %format_args!("{method} {route}"), otel.kind = "server",
            http.request.method = %method, http.route = route, url.path = %path,
            http.response.status_code = empty,
        )
    };
    crate::telemetry::adopt_remote_parent(&span, req.headers());
    span
}

/// Puts the response's status on the request span (while spans are exported).
fn record_response<B>(
    response: &axum::http::Response<B>,
    latency: std::time::Duration,
    span: &tracing::Span,
) {
    use tower_http::trace::OnResponse as _;
    // tower-http's own DEBUG line ("finished processing request"), as before.
    tower_http::trace::DefaultOnResponse::default().on_response(response, latency, span);
    if !crate::telemetry::exporting() {
        return;
    }
    span.record("http.response.status_code", response.status().as_u16());
    if layers::is_grpc_request(response.headers()) {
        // Errors come trailers-only, with the status in the headers; a success's status is in
        // the trailers, after this point.
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        span.record("rpc.grpc.status_code", code);
    }
}

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

/// The label of a request in the latency metrics: the known gRPC method or HTTP route
/// ([`layers::ROUTES`]), else `other`, so a client cannot grow the metrics without bound.
fn known_label(path: &str, grpc: bool) -> &'static str {
    match layers::find(path) {
        Some(route) if layers::is_rpc_path(path) == grpc => route.path,
        _ => "other",
    }
}

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
    let label = known_label(req.uri().path(), grpc);
    let response = next.run(req).await;
    let elapsed = started.elapsed().as_secs_f64();
    if grpc {
        crate::metrics::observe(
            "authgate_grpc_request_duration_seconds",
            &[("method", label)],
            elapsed,
        );
        // A unary error comes trailers-only, its status in the headers; a success's status is
        // in the trailers, after this point: OK when the headers name none.
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
            .unwrap_or(0);
        crate::metrics::inc(
            "authgate_grpc_requests_total",
            &[("method", label), ("code", crate::metrics::grpc_code_name(code))],
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
                crate::auth::csrf::CSRF_HEADER,
            ]
            .map(HeaderName::from_static),
        )
        // Cookies (the binding set by /api/login) may ride along on credentialed fetches.
        .allow_credentials(true)
        .expose_headers(
            ["grpc-status", "grpc-message", "grpc-status-details-bin", "retry-after"]
                .map(HeaderName::from_static),
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
async fn sweep(store: Store, idle_timeout: i64) {
    loop {
        match store.sweep_expired_attempts(now()).await {
            Ok(0) => {}
            Ok(n) => info!(swept = n, "expired login attempts deleted"),
            Err(e) => warn!(error = %e, "sweeping expired login attempts failed"),
        }
        match store.sweep_ended_sessions(now(), ENDED_SESSION_GRACE_SECS, idle_timeout).await {
            Ok(0) => {}
            Ok(n) => info!(swept = n, "ended sessions deleted"),
            Err(e) => warn!(error = %e, "sweeping ended sessions failed"),
        }
        tokio::time::sleep(SWEEP_INTERVAL).await;
    }
}

/// Re-reads the key set, schedules rotations and retires old keys, on every replica; drops
/// cached verifications of expired tokens.
async fn maintain_keys(auth: Arc<Authenticator>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = auth.tokens().maintain().await {
            warn!(error = %e, "signing key maintenance failed");
        }
        auth.tokens().purge_cache();
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
