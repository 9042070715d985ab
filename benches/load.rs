//! The load benchmark: throughput and latency of every RPC against this machine's own limits.
//!
//! It starts the release `authgate` binary against a fresh PostgreSQL database and an
//! in-process, very fast fake OpenID provider (the point is to measure authgate, not a
//! provider), drives each RPC over real gRPC connections (and the JSON routes over HTTP/1.1) at
//! a fixed concurrency for a fixed time, measures the baselines in the same run — the server's
//! own gRPC Health/Check (transport limit), a raw sqlx single-row INSERT with the same pool size
//! and durability (store limit), an INSERT + DELETE…RETURNING pair — and prints a table plus the
//! target ratios, and writes the same as JSON. Last, two fresh servers each get 10,000 idle
//! connections (HTTP/1.1, then HTTP/2) to measure the server memory one costs.
//! `AUTHGATE_BENCH_BIN` runs the same client against another authgate binary (a before/after).
//!
//!   cargo bench --bench load                 # full run (~2 min)
//!   cargo bench --bench load -- --smoke      # a few seconds, for CI
//!   cargo bench --bench load -- --soak       # 10 minutes of mixed load at half capacity
//!
//! Options: --duration SECS (per phase), --concurrency N, --connections N, --out FILE,
//! --soak-minutes M (with --soak; default 10).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use authgate::pb::{
    ExchangeCodeRequest, GetLoginUrlRequest, GetUserInfoRequest, LogoutRequest,
    RefreshSessionRequest, ValidateTokenRequest, auth_service_client::AuthServiceClient,
};
use axum::{Form, Json, Router, extract::State, routing::get, routing::post};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const CLIENT_ID: &str = "bench-client";
const REDIRECT_URI: &str = "http://localhost:5173/callback";
/// This run's encryption key: generated (authgate refuses published keys).
fn encryption_key() -> &'static str {
    static KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    });
    &KEY
}
const POOL_SIZE: u32 = 16;

// ------------------------------------------------------------ options --

struct Options {
    smoke: bool,
    duration: Duration,
    concurrency: usize,
    connections: usize,
    idle_connections: usize,
    /// Connections opened for the memory-per-idle-connection phase.
    idle_memory_connections: usize,
    out: String,
    /// Run only the phases whose name contains one of these (for profiling one path).
    only: Vec<String>,
    /// The soak instead of the phases: mixed load at half the measured capacity this long.
    soak: Option<Duration>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value =
        |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let smoke = args.iter().any(|a| a == "--smoke");
    Options {
        smoke,
        duration: Duration::from_secs_f64(
            value("--duration").and_then(|v| v.parse().ok()).unwrap_or(if smoke {
                1.0
            } else {
                8.0
            }),
        ),
        concurrency: value("--concurrency").and_then(|v| v.parse().ok()).unwrap_or(64),
        connections: value("--connections").and_then(|v| v.parse().ok()).unwrap_or(8),
        idle_connections: if smoke { 100 } else { 1000 },
        idle_memory_connections: if smoke { 200 } else { 10_000 },
        out: value("--out").unwrap_or_else(|| "target/bench/load.json".into()),
        only: value("--only").map(|v| v.split(',').map(String::from).collect()).unwrap_or_default(),
        soak: args.iter().any(|a| a == "--soak").then(|| {
            let minutes: f64 = value("--soak-minutes").and_then(|v| v.parse().ok()).unwrap_or(10.0);
            Duration::from_secs_f64(minutes * 60.0)
        }),
    }
}

// ------------------------------------------------------ fake provider --

/// Issues codes bound to a nonce and answers the token endpoint with a signed ID token that
/// already carries the whole profile (no userinfo round trip).
struct FakeProvider {
    issuer: String,
    /// Parsed once; signing is a single Ed25519 signature.
    key: Ed25519KeyPair,
    jwk: Value,
    codes: Mutex<HashMap<String, String>>,
}

impl FakeProvider {
    fn issue_code(&self, nonce: String) -> String {
        let code = authgate::crypto::random_handle(16);
        self.codes.lock().unwrap().insert(code.clone(), nonce);
        code
    }
}

/// Ed25519: the cheapest signature to make (in the bench process) and to check (in authgate).
async fn start_fake() -> Arc<FakeProvider> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let key = Ed25519KeyPair::from_seed_unchecked(&rand::random::<[u8; 32]>()).unwrap();
    let jwk = json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "bench-key",
        "x": B64.encode(key.public_key().as_ref()),
    });
    let fake = Arc::new(FakeProvider { issuer, key, jwk, codes: Mutex::default() });
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route(
            "/jwks",
            get(|State(f): State<Arc<FakeProvider>>| async move { Json(json!({"keys": [f.jwk]})) }),
        )
        .route("/token", post(token))
        .with_state(Arc::clone(&fake));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    fake
}

async fn discovery(State(f): State<Arc<FakeProvider>>) -> Json<Value> {
    Json(json!({
        "issuer": f.issuer,
        "authorization_endpoint": format!("{}/authorize", f.issuer),
        "token_endpoint": format!("{}/token", f.issuer),
        "jwks_uri": format!("{}/jwks", f.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
    }))
}

async fn token(
    State(f): State<Arc<FakeProvider>>,
    Form(form): Form<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let nonce = form.get("code").and_then(|c| f.codes.lock().unwrap().remove(c));
    let Some(nonce) = nonce else {
        return (axum::http::StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"})))
            .into_response();
    };
    let now = chrono::Utc::now().timestamp();
    let user = rand::random::<u16>();
    let claims = json!({
        "iss": f.issuer, "aud": CLIENT_ID, "sub": format!("user-{user}"), "iat": now,
        "exp": now + 300, "nonce": nonce, "email": format!("user{user}@example.com"),
        "email_verified": true, "name": "Bench User", "groups": ["Everyone", "bench"],
    });
    let signing_input = format!(
        "{}.{}",
        B64.encode(br#"{"alg":"EdDSA","kid":"bench-key","typ":"JWT"}"#),
        B64.encode(serde_json::to_vec(&claims).unwrap())
    );
    let signature = f.key.sign(signing_input.as_bytes());
    let id_token = format!("{signing_input}.{}", B64.encode(signature.as_ref()));
    Json(json!({
        "access_token": authgate::crypto::random_handle(24),
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": id_token,
    }))
    .into_response()
}

// ------------------------------------------------------------- server --

struct Server {
    child: Child,
    addr: SocketAddr,
    /// The internal listener, when started with one.
    internal: Option<SocketAddr>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// CPU seconds (user + system) the server has used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn rss_mb(&self) -> f64 {
        proc_status_kb(self.child.id(), "VmRSS:") / 1024.0
    }
}

fn proc_status_kb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The benchmark drives the server far beyond one client's fair share on purpose: the connection
/// caps are raised and the per-client limits are off (every connection comes from loopback) so
/// the phases measure the server, not its limits. The concurrency budgets stay as configured by
/// default: the overload phase measures them.
const LIMITS_RAISED: &[(&str, &str)] = &[
    ("AUTHGATE_MAX_CONNECTIONS", "20000"),
    ("AUTHGATE_MAX_CONNECTIONS_PER_IP", "0"),
    ("AUTHGATE_LOGIN_RATE_PER_CLIENT", "0"),
    ("AUTHGATE_MAX_PENDING_ATTEMPTS_PER_CLIENT", "0"),
    ("AUTHGATE_MAX_PENDING_ATTEMPTS", "0"),
];

/// The binary under test: this build's, or `AUTHGATE_BENCH_BIN` (to measure another build with
/// the same client, e.g. the commit before a change).
fn server_binary() -> String {
    std::env::var("AUTHGATE_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_authgate").into())
}

async fn start_server(database_url: &str, issuer: &str) -> Server {
    start_server_with(database_url, issuer, false, &[]).await
}

/// A free loopback port.
fn free_addr() -> SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// The server, optionally with an internal listener (the fleet's checks on a port of their own).
async fn start_server_with(
    database_url: &str,
    issuer: &str,
    internal: bool,
    settings: &[(&str, &str)],
) -> Server {
    let addr = free_addr();
    let internal = internal.then(free_addr);
    let mut command = Command::new(server_binary());
    if let Some(internal) = internal {
        command.env("AUTHGATE_INTERNAL_LISTEN_ADDR", internal.to_string());
    }
    let child = command
        .envs(LIMITS_RAISED.iter().copied())
        .env("DATABASE_URL", database_url)
        .env("AUTHGATE_LISTEN_ADDR", addr.to_string())
        .env("AUTHGATE_ISSUER_URL", issuer)
        .env("AUTHGATE_CLIENT_ID", CLIENT_ID)
        .env("AUTHGATE_CLIENT_SECRET", "bench-secret")
        .env("AUTHGATE_REDIRECT_URIS", REDIRECT_URI)
        .env("AUTHGATE_ENCRYPTION_KEY", encryption_key())
        .env("AUTHGATE_DATABASE_MAX_CONNECTIONS", POOL_SIZE.to_string())
        // RefreshSession measured with its provider call every time (the worst case).
        .env("AUTHGATE_PROVIDER_REFRESH_MIN_INTERVAL", "0")
        .env("RUST_LOG", "warn")
        .envs(settings.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start target/release/authgate");
    let started = Instant::now();
    let server = Server { child, addr, internal };
    let http = reqwest::Client::new();
    let checks = internal.unwrap_or(addr);
    // Polled every 5 ms: how long after the process starts it is ready to validate, then ready
    // to log in (the fake provider answers at once).
    let ready_after = |path: &'static str| {
        let http = http.clone();
        async move {
            for _ in 0..2_000 {
                if let Ok(r) = http.get(format!("http://{checks}{path}")).send().await {
                    if r.status().is_success() {
                        return Some(started.elapsed().as_secs_f64());
                    }
                    if r.status() == reqwest::StatusCode::NOT_FOUND {
                        return None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("authgate did not become ready ({path})");
        }
    };
    let validate = ready_after("/readyz").await.expect("/readyz is served");
    let login = ready_after("/readyz/login").await;
    STARTUPS.lock().unwrap().push((validate, login));
    server
}

/// Seconds from each server's start until it was ready to validate, and to log in.
static STARTUPS: Mutex<Vec<(f64, Option<f64>)>> = Mutex::new(Vec::new());

// ---------------------------------------------------------- measuring --

#[derive(Default, Clone, serde::Serialize)]
struct Stats {
    name: String,
    requests: u64,
    errors: u64,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    /// Server CPU seconds per 1,000 requests (None for baselines that bypass the server).
    cpu_s_per_1k: Option<f64>,
    /// Peak server RSS during the phase.
    peak_rss_mb: Option<f64>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// What one run of a load produced.
struct Sample {
    latencies: Vec<u32>,
    errors: u64,
    seconds: f64,
    /// Server CPU seconds used during the run.
    cpu_seconds: Option<f64>,
    peak_rss_mb: f64,
}

/// Runs `concurrency` workers calling `op(worker)` until `duration` ends (or, with `rate`, at
/// that many calls per second in total). `op` returns Ok/Err; its latency is recorded either way.
async fn run<F, Fut>(
    name: &str,
    server: Option<&Server>,
    duration: Duration,
    concurrency: usize,
    rate: Option<f64>,
    op: Arc<F>,
) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let cpu_before = server.map(Server::cpu_seconds);
    let peak_rss = Arc::new(Mutex::new(0.0f64));
    let sampler = server.map(|s| {
        let pid = s.child.id();
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak_rss));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let rss = proc_status_kb(pid, "VmRSS:") / 1024.0;
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (op, stop, errors, first_error) =
            (Arc::clone(&op), Arc::clone(&stop), Arc::clone(&errors), Arc::clone(&first_error));
        // Open-loop pacing: each worker's calls are due at fixed times.
        let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut next = Instant::now()
                + interval
                    .map_or(Duration::ZERO, |i| i.mul_f64(worker as f64 / concurrency as f64));
            while !stop.load(Ordering::Relaxed) {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                let t = Instant::now();
                let result = op(worker).await;
                latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if let Err(e) = result {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error.lock().unwrap().get_or_insert(e);
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let errors = errors.load(Ordering::Relaxed);
    if let Some(e) = first_error.lock().unwrap().take() {
        eprintln!("  {name}: {errors} errors, first: {e}");
    }
    let cpu_seconds = server.zip(cpu_before).map(|(s, before)| s.cpu_seconds() - before);
    let peak_rss_mb = *peak_rss.lock().unwrap();
    Sample { latencies, errors, seconds, cpu_seconds, peak_rss_mb }
}

/// Statistics over one or more samples of the same load.
fn stats(name: &str, samples: Vec<Sample>) -> Stats {
    let mut all: Vec<u32> = Vec::new();
    let (mut errors, mut seconds, mut cpu, mut peak) = (0, 0.0, None::<f64>, None::<f64>);
    for s in samples {
        all.extend(s.latencies);
        errors += s.errors;
        seconds += s.seconds;
        if let Some(c) = s.cpu_seconds {
            cpu = Some(cpu.unwrap_or(0.0) + c);
            peak = Some(peak.unwrap_or(0.0).max(s.peak_rss_mb));
        }
    }
    all.sort_unstable();
    let requests = all.len() as u64;
    Stats {
        name: name.to_string(),
        requests,
        errors,
        seconds,
        rps: requests as f64 / seconds.max(f64::EPSILON),
        p50_ms: percentile(&all, 0.50),
        p90_ms: percentile(&all, 0.90),
        p99_ms: percentile(&all, 0.99),
        cpu_s_per_1k: cpu.filter(|_| requests > 0).map(|c| c / requests as f64 * 1000.0),
        peak_rss_mb: peak,
    }
}

async fn measure<F, Fut>(
    name: &str,
    server: Option<&Server>,
    duration: Duration,
    concurrency: usize,
    rate: Option<f64>,
    op: F,
) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    stats(name, vec![run(name, server, duration, concurrency, rate, Arc::new(op)).await])
}

/// Measures two loads whose rates are compared in alternating slices, so that drift in the
/// machine (other tenants, the database's background work) affects both alike.
#[allow(clippy::too_many_arguments)]
async fn interleave<FA, FutA, FB, FutB>(
    server: &Server,
    duration: Duration,
    concurrency: usize,
    (name_a, a, a_uses_server): (&str, FA, bool),
    (name_b, b): (&str, FB),
    slices: u32,
    between: impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
) -> (Stats, Stats)
where
    FA: Fn(usize) -> FutA + Send + Sync + 'static,
    FutA: Future<Output = Result<(), String>> + Send,
    FB: Fn(usize) -> FutB + Send + Sync + 'static,
    FutB: Future<Output = Result<(), String>> + Send,
{
    let (a, b) = (Arc::new(a), Arc::new(b));
    let slice = duration / slices;
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    for _ in 0..slices {
        between().await;
        let server_a = if a_uses_server { Some(server) } else { None };
        sa.push(run(name_a, server_a, slice, concurrency, None, Arc::clone(&a)).await);
        between().await;
        sb.push(run(name_b, Some(server), slice, concurrency, None, Arc::clone(&b)).await);
    }
    (stats(name_a, sa), stats(name_b, sb))
}

// --------------------------------------------------------------- main --

struct Env {
    clients: Vec<AuthServiceClient<Channel>>,
    fake: Arc<FakeProvider>,
}

impl Env {
    fn client(&self, worker: usize) -> AuthServiceClient<Channel> {
        self.clients[worker % self.clients.len()].clone()
    }

    /// GetLoginUrl → the fake issues a code for its nonce → ExchangeCode.
    async fn login(&self, worker: usize) -> Result<authgate::pb::ExchangeCodeResponse, String> {
        let mut c = self.client(worker);
        let started = c
            .get_login_url(GetLoginUrlRequest::default())
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let url = url::Url::parse(&started.login_url).unwrap();
        let nonce = url.query_pairs().find(|(k, _)| k == "nonce").unwrap().1.into_owned();
        let code = self.fake.issue_code(nonce);
        c.exchange_code(ExchangeCodeRequest {
            code,
            state: started.state,
            binding: started.binding,
            redirect_uri: String::new(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
    }
}

/// One ValidateToken call, as the phases that time it make it.
async fn validate_call(
    client: &mut AuthServiceClient<Channel>,
    token: String,
) -> Result<(), String> {
    client
        .validate_token(ValidateTokenRequest { token })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn connect(addr: SocketAddr, n: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..n {
        channels
            .push(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap());
    }
    channels
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_gb = proc_meminfo_kb("MemTotal:") / 1024.0 / 1024.0;
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gb": (mem_gb * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn proc_meminfo_kb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// What the overload phase measured.
struct Overload {
    /// Whether the server's internal listener and the checks' client ran at realtime priority.
    realtime: Realtime,
    peak: Stats,
    calm: Stats,
    /// ValidateToken while logins run at their peak, without a flood.
    under_peak: Stats,
    /// Callers that wait as the refusal's `retry-after` asks.
    polite: Stats,
    under_polite: Stats,
    /// Callers that ask again at once.
    hostile: Stats,
    under_hostile: Stats,
    callers: usize,
}

/// How the overload phase schedules the checks, on both sides of the connection.
#[derive(Clone, Copy, PartialEq)]
enum Scheduling {
    /// The server with `internal_realtime_priority`, the checks' client at realtime priority too.
    Realtime,
    /// Everything at normal priority.
    Default,
}

/// Whether realtime priority was asked for, and where it was granted.
#[derive(Clone, Copy)]
struct Realtime {
    asked: bool,
    server: bool,
    checker: bool,
}

impl Realtime {
    fn describe(&self) -> String {
        let yes = |b: bool| if b { "SCHED_RR" } else { "refused, normal priority" };
        if self.asked {
            format!(
                "internal_realtime_priority on; server's internal threads: {}, checks' client: {}",
                yes(self.server),
                yes(self.checker)
            )
        } else {
            "default scheduling: internal_realtime_priority off, checks' client at normal priority"
                .into()
        }
    }
}

/// Whether the threads of process `pid` named `authgate-internal…` run `SCHED_RR`.
fn internal_threads_realtime(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let mut any = false;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("authgate-intern") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The policy is field 41; the fields after the name start at field 3.
        let policy = stat.rfind(')').and_then(|i| stat[i + 2..].split(' ').nth(38));
        if policy != Some("2") {
            return false;
        }
        any = true;
    }
    any
}

/// The fleet's side of the overload phase: ValidateToken at a fixed 2,000/s on the internal
/// listener, from a thread and runtime of its own (as a sidecar is a process of its own), so
/// that the flood's callers in this process do not delay the checks' own client. Under
/// [`Scheduling::Realtime`] that thread runs at realtime priority as well: on this one machine
/// it shares two cores with the flood's callers and the database, and the time it waits for a
/// core after each answer arrives would otherwise be measured as the server's.
struct Checker {
    requests: tokio::sync::mpsc::UnboundedSender<(String, tokio::sync::oneshot::Sender<Stats>)>,
    /// Whether its thread got realtime priority.
    realtime: bool,
}

impl Checker {
    fn start(internal: SocketAddr, token: String, d: Duration, realtime: bool) -> Self {
        let (requests, mut incoming) =
            tokio::sync::mpsc::unbounded_channel::<(String, tokio::sync::oneshot::Sender<Stats>)>();
        let (granted_tx, granted) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("checker".into());
        let spawned = thread.spawn(move || {
            let _ = granted_tx.send(realtime && authgate::server::raise_to_realtime().is_ok());
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let clients: Arc<Vec<AuthServiceClient<Channel>>> = Arc::new(
                    connect(internal, 4).await.into_iter().map(AuthServiceClient::new).collect(),
                );
                while let Some((name, reply)) = incoming.recv().await {
                    let (clients, token) = (Arc::clone(&clients), token.clone());
                    let validate = move |w: usize| {
                        let (mut client, token) =
                            (clients[w % clients.len()].clone(), token.clone());
                        async move { validate_call(&mut client, token).await }
                    };
                    let _ = reply.send(measure(&name, None, d, 16, Some(2000.0), validate).await);
                }
            });
        });
        spawned.expect("start the checks' client thread");
        Self { requests, realtime: granted.recv().unwrap_or(false) }
    }

    async fn measure(&self, name: &str) -> Stats {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.requests.send((name.to_string(), reply)).unwrap();
        result.await.unwrap()
    }
}

/// Successful calls per second of a phase whose errors are refusals.
fn goodput(s: &Stats) -> f64 {
    (s.requests - s.errors.min(s.requests)) as f64 / s.seconds.max(f64::EPSILON)
}

/// Overload, on a fresh server with an internal listener and its default concurrency budgets
/// (under [`Scheduling::Realtime`], with `internal_realtime_priority` on):
/// GetLoginUrl's peak with 64 closed-loop callers, ValidateToken's p99 at a fixed 2,000/s on
/// the internal listener when calm, then both at once with `callers` closed-loop GetLoginUrl
/// callers — far more than the server can serve, so the surplus is shed (UNAVAILABLE with
/// `retry-after: 1`). Twice: callers that wait as the refusal asks (what a well-behaved client
/// does; the targets), then callers that ask again at once (what per-client limits are for; on
/// this machine they also take the CPU the server would use).
async fn overload(
    database_url: &str,
    fake: &Arc<FakeProvider>,
    admin: &sqlx::PgPool,
    d: Duration,
    callers: usize,
    scheduling: Scheduling,
) -> Overload {
    let asked = scheduling == Scheduling::Realtime;
    let settings: &[(&str, &str)] =
        if asked { &[("AUTHGATE_INTERNAL_REALTIME_PRIORITY", "true")] } else { &[] };
    let server = start_server_with(database_url, &fake.issuer, true, settings).await;
    let public: Vec<AuthServiceClient<Channel>> =
        connect(server.addr, 16).await.into_iter().map(AuthServiceClient::new).collect();
    let env = Env { clients: public.clone(), fake: Arc::clone(fake) };
    let token = env.login(0).await.unwrap().access_token;
    let checker = Checker::start(server.internal.unwrap(), token, d, asked);
    let realtime = Realtime {
        asked,
        server: internal_threads_realtime(server.child.id()),
        checker: checker.realtime,
    };
    // Phase names say which scheduling they ran under.
    let label = if asked { "overload" } else { "overload, default scheduling" };
    let public = Arc::new(public);
    let login_url = |polite: bool| {
        let public = Arc::clone(&public);
        move |w: usize| {
            let mut client = public[w % public.len()].clone();
            async move {
                match client.get_login_url(GetLoginUrlRequest::default()).await {
                    Ok(_) => Ok(()),
                    Err(status) => {
                        let wait = status
                            .metadata()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                        if let (true, Some(secs)) = (polite, wait) {
                            tokio::time::sleep(Duration::from_secs(secs)).await;
                        }
                        Err(status.to_string())
                    }
                }
            }
        }
    };
    let settle = || async {
        for sql in ["DELETE FROM login_attempts", "CHECKPOINT"] {
            sqlx::query(sql).execute(admin).await.unwrap();
        }
    };
    settle().await;
    let calm = checker.measure(&format!("{label}: ValidateToken calm (2,000/s)")).await;
    settle().await;
    // The same checks while logins run at their peak without a flood: what a saturated machine
    // costs them, apart from anything the flood adds.
    let peak_name = format!("{label}: GetLoginUrl peak (64 callers)");
    let under_peak_name = format!("{label}: ValidateToken under peak logins, no flood");
    let (peak, under_peak) = tokio::join!(
        measure(&peak_name, Some(&server), d, 64, None, login_url(true)),
        checker.measure(&under_peak_name),
    );
    let mut floods = Vec::new();
    for (polite, how) in [(true, "waiting as asked"), (false, "asking again at once")] {
        settle().await;
        let name = format!("{label}: GetLoginUrl flood ({callers} callers {how})");
        let under = format!("{label}: ValidateToken under the flood {how}");
        floods.push(tokio::join!(
            measure(&name, Some(&server), d, callers, None, login_url(polite)),
            checker.measure(&under),
        ));
    }
    let (hostile, under_hostile) = floods.pop().unwrap();
    let (polite, under_polite) = floods.pop().unwrap();
    Overload {
        realtime,
        peak,
        calm,
        under_peak,
        polite,
        under_polite,
        hostile,
        under_hostile,
        callers,
    }
}

/// Server memory per idle connection: a fresh server, `n` connections (HTTP/1.1 or HTTP/2) that
/// each made one request and then went quiet, and the server's RSS before and after. Returns
/// (KB per connection, RSS MB with the connections open).
async fn idle_connection_memory(
    database_url: &str,
    issuer: &str,
    n: usize,
    http2: bool,
) -> (f64, f64) {
    let server = start_server(database_url, issuer).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kb = proc_status_kb(server.child.id(), "VmRSS:");
    // Each protocol from its own loopback address: ports in TIME_WAIT from one round do not
    // limit the next.
    let from: std::net::IpAddr = if http2 { [127, 0, 0, 3] } else { [127, 0, 0, 2] }.into();
    let addr = server.addr;
    let open_one = move || async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        if http2 {
            let (client, connection) = h2::client::handshake(stream).await.unwrap();
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            let mut client = client.ready().await.unwrap();
            let request = http::Request::get(format!("http://{addr}/healthz")).body(()).unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            let mut body = response.await.unwrap().into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Held::Http2(client, driver)
        } else {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: authgate\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            Held::Http1(stream)
        }
    };
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let batch = (n - held.len()).min(200);
        held.extend(futures_util::future::join_all((0..batch).map(|_| open_one())).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_kb = proc_status_kb(server.child.id(), "VmRSS:");
    for h in &held {
        if let Held::Http2(_, driver) = h {
            driver.abort();
        }
    }
    drop(held);
    ((after_kb - before_kb) / n as f64, after_kb / 1024.0)
}

/// A connection kept open by the idle-memory phase.
#[allow(dead_code)]
enum Held {
    Http1(tokio::net::TcpStream),
    Http2(h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<()>),
}

#[tokio::main]
async fn main() {
    let o = options();
    // 10,000 client connections need more than the usual 1,024 descriptors.
    let _ = authgate::server::raise_fd_limit();
    let base = std::env::var("AUTHGATE_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db_name = format!("authgate_bench_{}", std::process::id());
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
            .await
            .expect("PostgreSQL at 127.0.0.1:5432");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {db_name}")).execute(&mut admin).await.unwrap();
    }
    // A database on loopback: no TLS, for authgate and the baselines alike.
    let database_url = format!("{base}/{db_name}?sslmode=disable");
    let pg_version: String = {
        let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
        let v = sqlx::query_scalar("SHOW server_version").fetch_one(&pool).await.unwrap();
        pool.close().await;
        v
    };

    // Each phase starts from a comparable database: a checkpoint first (so none lands inside a
    // phase), and rows a phase leaves behind are removed before the next.
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url)
        .await
        .unwrap();

    let fake = start_fake().await;
    // The soak's server keeps one token lifetime of revocations in memory: 2 minutes, so that
    // window fills during the warm-up and the steady state is inside the run.
    let soak_settings: &[(&str, &str)] =
        if o.soak.is_some() { &[("AUTHGATE_TOKEN_TTL", "120")] } else { &[] };
    let server = start_server_with(&database_url, &fake.issuer, false, soak_settings).await;
    let channels = connect(server.addr, o.connections).await;
    let env = Arc::new(Env {
        clients: channels.iter().cloned().map(AuthServiceClient::new).collect(),
        fake: Arc::clone(&fake),
    });
    let (d, c) = (o.duration, o.concurrency);
    println!(
        "authgate load benchmark: {} s per phase, concurrency {c} over {} connections{}",
        d.as_secs_f64(),
        o.connections,
        if o.smoke { " (smoke)" } else { "" }
    );
    println!(
        "server: {}; connection limits raised for the benchmark: {}",
        server_binary(),
        LIMITS_RAISED.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    );
    let mut results: Vec<Stats> = Vec::new();
    let wanted = |name: &str| o.only.is_empty() || o.only.iter().any(|w| name.contains(w.as_str()));
    let settle_fn = |sql: &'static str| {
        let admin = admin.clone();
        move || -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
            let admin = admin.clone();
            Box::pin(async move {
                for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(statement).execute(&admin).await.unwrap();
                }
            })
        }
    };
    if let Some(total) = o.soak {
        soak(&o, &server, &env, &admin, total).await;
        return;
    }
    let slices = if o.smoke { 1 } else { 4 };

    // Sessions to work with: one per worker.
    let mut sessions = Vec::new();
    for w in 0..c {
        sessions.push(env.login(w).await.expect("login"));
    }
    let tokens: Arc<Vec<String>> =
        Arc::new(sessions.iter().map(|s| s.access_token.clone()).collect());
    let handles: Arc<Vec<Mutex<String>>> =
        Arc::new(sessions.iter().map(|s| Mutex::new(s.refresh_token.clone())).collect());

    // Each target ratio is measured in alternating slices against its baseline.
    // 1. ValidateToken against the transport limit: the same server's gRPC Health/Check.
    let health: Arc<Vec<HealthClient<Channel>>> =
        Arc::new(channels.iter().cloned().map(HealthClient::new).collect());
    let health_op = {
        let health = Arc::clone(&health);
        move |w: usize| {
            let mut h = health[w % health.len()].clone();
            async move {
                h.check(HealthCheckRequest { service: String::new() })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    };
    let validate_op = {
        let (env, tokens) = (Arc::clone(&env), Arc::clone(&tokens));
        move |w: usize| {
            let (mut client, token) = (env.client(w), tokens[w].clone());
            async move {
                let r = client
                    .validate_token(ValidateTokenRequest { token })
                    .await
                    .map_err(|e| e.to_string())?;
                if r.into_inner().valid { Ok(()) } else { Err("token reported invalid".into()) }
            }
        }
    };
    if wanted("ValidateToken") || wanted("Health") {
        let (h, v) = interleave(
            &server,
            d,
            c,
            ("baseline: gRPC Health/Check", health_op, true),
            ("ValidateToken", validate_op),
            slices,
            settle_fn("CHECKPOINT"),
        )
        .await;
        results.extend([h, v]);
    }

    // 2. GetLoginUrl against the store limit: a raw single-row INSERT, same pool size and
    //    durability (synchronous commit), from this process.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect(&database_url)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE bench_rows (k BYTEA PRIMARY KEY, v TEXT NOT NULL, t BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    const ROW: &str = "https://provider.example.com/v1/authorize?state=nonce-and-verifier";
    let insert_op = {
        let pool = pool.clone();
        move |_: usize| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO bench_rows (k, v, t) VALUES ($1, $2, $3)")
                    .bind(rand::random::<[u8; 32]>().to_vec())
                    .bind(ROW)
                    .bind(1_i64)
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    };
    let login_url_op = {
        let env = Arc::clone(&env);
        move |w: usize| {
            let mut client = env.client(w);
            async move {
                client
                    .get_login_url(GetLoginUrlRequest::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    };
    if wanted("INSERT (1") || wanted("GetLoginUrl") {
        let (i, g) = interleave(
            &server,
            d,
            c,
            ("baseline: sqlx INSERT (1 row)", insert_op.clone(), false),
            ("GetLoginUrl", login_url_op.clone()),
            slices,
            settle_fn("CHECKPOINT"),
        )
        .await;
        results.extend([i, g]);
    }

    // 3. The whole login against an INSERT + DELETE..RETURNING pair (what a login costs the
    //    store at the least: store the attempt, consume it).
    let pair_op = {
        let pool = pool.clone();
        move |_: usize| {
            let pool = pool.clone();
            async move {
                let k = rand::random::<[u8; 32]>().to_vec();
                sqlx::query("INSERT INTO bench_rows (k, v, t) VALUES ($1, $2, $3)")
                    .bind(&k)
                    .bind(ROW)
                    .bind(1_i64)
                    .execute(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query_scalar::<_, String>("DELETE FROM bench_rows WHERE k = $1 RETURNING v")
                    .bind(&k)
                    .fetch_one(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    };
    let exchange_op = {
        let env = Arc::clone(&env);
        move |w: usize| {
            let env = Arc::clone(&env);
            async move { env.login(w).await.map(|_| ()) }
        }
    };
    if wanted("DELETE") || wanted("ExchangeCode") {
        let (p, e) = interleave(
            &server,
            d,
            c,
            ("baseline: sqlx INSERT + DELETE..RETURNING", pair_op, false),
            ("ExchangeCode (full flow)", exchange_op),
            slices,
            settle_fn(
                "DELETE FROM login_attempts; TRUNCATE bench_rows; VACUUM ANALYZE; CHECKPOINT",
            ),
        )
        .await;
        results.extend([p, e]);
    }

    // 4. The other RPCs and the JSON routes.
    let settle = settle_fn("VACUUM ANALYZE; CHECKPOINT");
    if wanted("GetUserInfo") {
        settle().await;
        results.push(
            measure("GetUserInfo", Some(&server), d, c, None, {
                let (env, tokens) = (Arc::clone(&env), Arc::clone(&tokens));
                move |w| {
                    let (mut client, token) = (env.client(w), tokens[w].clone());
                    async move {
                        client
                            .get_user_info(bearer(GetUserInfoRequest { refresh: false }, &token))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                }
            })
            .await,
        );
    }
    if wanted("RefreshSession") {
        settle().await;
        results.push(
            measure("RefreshSession", Some(&server), d, c, None, {
                let (env, handles) = (Arc::clone(&env), Arc::clone(&handles));
                move |w| {
                    let (mut client, handles) = (env.client(w), Arc::clone(&handles));
                    async move {
                        let current = handles[w].lock().unwrap().clone();
                        let r = client
                            .refresh_session(RefreshSessionRequest { refresh_token: current })
                            .await
                            .map_err(|e| e.to_string())?;
                        *handles[w].lock().unwrap() = r.into_inner().refresh_token;
                        Ok(())
                    }
                }
            })
            .await,
        );
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(c).build().unwrap();
    let base_url = format!("http://{}", server.addr);
    if wanted("HTTP GET /api/login") {
        settle().await;
        results.push(
            measure("HTTP GET /api/login", Some(&server), d, c, None, {
                let (http, base_url) = (http.clone(), base_url.clone());
                move |_| {
                    let (http, url) = (http.clone(), format!("{base_url}/api/login"));
                    async move {
                        let r = http.get(url).send().await.map_err(|e| e.to_string())?;
                        if r.status().is_success() {
                            Ok(())
                        } else {
                            Err(format!("HTTP {}", r.status()))
                        }
                    }
                }
            })
            .await,
        );
    }
    if wanted("HTTP GET /api/callback") {
        settle().await;
        results.push(
            measure("HTTP GET /api/callback (full flow)", Some(&server), d, c, None, {
                let (http, base_url, fake) = (http.clone(), base_url.clone(), Arc::clone(&fake));
                move |_| {
                    let (http, base_url, fake) =
                        (http.clone(), base_url.clone(), Arc::clone(&fake));
                    async move {
                        let started: Value = http
                            .get(format!("{base_url}/api/login"))
                            .send()
                            .await
                            .map_err(|e| e.to_string())?
                            .json()
                            .await
                            .map_err(|e| e.to_string())?;
                        let url =
                            url::Url::parse(started["login_url"].as_str().unwrap_or_default())
                                .map_err(|e| e.to_string())?;
                        let nonce = url
                            .query_pairs()
                            .find(|(k, _)| k == "nonce")
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default();
                        let code = fake.issue_code(nonce);
                        let r = http
                            .get(format!("{base_url}/api/callback"))
                            .query(&[
                                ("code", code.as_str()),
                                ("state", started["state"].as_str().unwrap_or_default()),
                                ("binding", started["binding"].as_str().unwrap_or_default()),
                            ])
                            .send()
                            .await
                            .map_err(|e| e.to_string())?;
                        if r.status().is_success() {
                            Ok(())
                        } else {
                            Err(format!("HTTP {}", r.status()))
                        }
                    }
                }
            })
            .await,
        );
    }

    // 5. GetLoginUrl latency at half the single-row INSERT rate (open loop, fixed rate).
    let insert_rate = results
        .iter()
        .find(|r| r.name == "baseline: sqlx INSERT (1 row)")
        .map_or(8000.0, |r| r.rps);
    if wanted("GetLoginUrl @") {
        settle_fn("DELETE FROM login_attempts; VACUUM ANALYZE; CHECKPOINT")().await;
        results.push(
            measure(
                "GetLoginUrl @ 0.5 x INSERT rate",
                Some(&server),
                d,
                c,
                Some(insert_rate / 2.0),
                login_url_op.clone(),
            )
            .await,
        );
    }
    pool.close().await;

    // 6. Memory with many concurrent connections: each validates a token now and then.
    let n = o.idle_connections;
    let mut rss_with_connections = 0.0;
    if wanted("connections") {
        settle_fn("DELETE FROM login_attempts; VACUUM ANALYZE; CHECKPOINT")().await;
        let idle = connect(server.addr, n).await;
        let idle: Arc<Vec<AuthServiceClient<Channel>>> =
            Arc::new(idle.into_iter().map(AuthServiceClient::new).collect());
        results.push(
            measure(
                &format!("ValidateToken over {n} connections"),
                Some(&server),
                d,
                n,
                Some(n as f64 * 5.0),
                {
                    let (idle, tokens) = (Arc::clone(&idle), Arc::clone(&tokens));
                    move |w| {
                        let (mut client, token) =
                            (idle[w].clone(), tokens[w % tokens.len()].clone());
                        async move { validate_call(&mut client, token).await }
                    }
                },
            )
            .await,
        );
        rss_with_connections = server.rss_mb();
    }
    let peak_rss = proc_status_kb(server.child.id(), "VmHWM:") / 1024.0;

    // 7. Overload: admission control keeps login goodput and the checks' latency — with the
    // checks at realtime priority (the targets), then everything at normal priority (printed).
    let mut overloaded = Vec::new();
    if wanted("overload") {
        for scheduling in [Scheduling::Realtime, Scheduling::Default] {
            let o = overload(&database_url, &fake, &admin, d, 512, scheduling).await;
            results.extend([
                o.calm.clone(),
                o.peak.clone(),
                o.under_peak.clone(),
                o.polite.clone(),
                o.under_polite.clone(),
                o.hostile.clone(),
                o.under_hostile.clone(),
            ]);
            overloaded.push(o);
        }
    }

    // 8. Memory per idle connection, HTTP/1.1 and HTTP/2, each on a fresh server.
    let idle_n = o.idle_memory_connections;
    let mut idle_memory = None;
    if wanted("idle") {
        let h1 = idle_connection_memory(&database_url, &fake.issuer, idle_n, false).await;
        let h2 = idle_connection_memory(&database_url, &fake.issuer, idle_n, true).await;
        idle_memory = Some((h1, h2));
    }

    // The table.
    println!();
    println!(
        "{:<40} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9}",
        "phase", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "CPU s/1k", "RSS MB"
    );
    for r in &results {
        println!(
            "{:<40} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>10} {:>9}",
            r.name,
            r.rps,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.errors,
            r.cpu_s_per_1k.map_or("-".into(), |v| format!("{v:.3}")),
            r.peak_rss_mb.map_or("-".into(), |v| format!("{v:.1}")),
        );
    }
    let none = Stats::default();
    let by = |name: &str| results.iter().find(|r| r.name == name).unwrap_or(&none);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let health_rps = by("baseline: gRPC Health/Check").rps;
    let insert_rps = by("baseline: sqlx INSERT (1 row)").rps;
    let pair_rps = by("baseline: sqlx INSERT + DELETE..RETURNING").rps;
    let targets = vec![
        (
            "ValidateToken / Health/Check",
            ratio(by("ValidateToken").rps, health_rps),
            ">= 0.80",
            ratio(by("ValidateToken").rps, health_rps) >= 0.8,
        ),
        (
            "GetLoginUrl / INSERT",
            ratio(by("GetLoginUrl").rps, insert_rps),
            ">= 1.00",
            ratio(by("GetLoginUrl").rps, insert_rps) >= 1.0,
        ),
        (
            "GetLoginUrl p99 ms at 0.5 x INSERT rate",
            by("GetLoginUrl @ 0.5 x INSERT rate").p99_ms,
            "<= 5 ms",
            by("GetLoginUrl @ 0.5 x INSERT rate").p99_ms <= 5.0,
        ),
        (
            "ExchangeCode / (INSERT + DELETE pair)",
            ratio(by("ExchangeCode (full flow)").rps, pair_rps),
            ">= 0.50",
            ratio(by("ExchangeCode (full flow)").rps, pair_rps) >= 0.5,
        ),
        ("peak RSS MB (whole run)", peak_rss, "<= 50 MB", peak_rss <= 50.0),
    ];
    let mut targets = targets;
    if let Some(o) = overloaded.first() {
        let goodput = ratio(goodput(&o.polite), o.peak.rps);
        targets.push(("login goodput under overload / peak", goodput, ">= 0.90", goodput >= 0.9));
        let p99 = ratio(o.under_polite.p99_ms, o.calm.p99_ms);
        let name = if o.realtime.server && o.realtime.checker {
            "ValidateToken p99 under the flood / calm"
        } else {
            "ValidateToken p99 flood / calm (RT REFUSED)"
        };
        targets.push((name, p99, "<= 3.00", p99 <= 3.0));
    }
    {
        let startups = STARTUPS.lock().unwrap().clone();
        let worst = |f: fn(&(f64, Option<f64>)) -> Option<f64>| {
            startups
                .iter()
                .filter_map(f)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        };
        if let Some(validate) = worst(|s| Some(s.0)) {
            targets.push((
                "s from start to ready (validate), worst",
                validate,
                "<= 0.10 s",
                validate <= 0.1,
            ));
        }
        if let Some(login) = worst(|s| s.1) {
            targets.push((
                "s from start to ready (log in), worst",
                login,
                "<= 0.10 s",
                login <= 0.1,
            ));
        }
    }
    if let Some(((h1_kb, _), (h2_kb, _))) = idle_memory {
        targets.push(("KB per idle HTTP/1.1 connection", h1_kb, "<= 25 KB", h1_kb <= 25.0));
        targets.push(("KB per idle HTTP/2 connection", h2_kb, "<= 25 KB", h2_kb <= 25.0));
    }
    println!();
    for (name, value, target, met) in &targets {
        println!(
            "{:<44} {:>8.2}   target {:<8} {}",
            name,
            value,
            target,
            if *met { "met" } else { "NOT MET" }
        );
    }
    println!("RSS with {n} connections open: {rss_with_connections:.1} MB");
    for o in &overloaded {
        println!("overload ({}):", o.realtime.describe());
        println!(
            "  ValidateToken p99 {:.2} ms calm, {:.2} ms while logins run at their peak ({:.0}/s) without a flood",
            o.calm.p99_ms, o.under_peak.p99_ms, o.peak.rps
        );
        for (how, flood, under) in [
            ("waiting as asked", &o.polite, &o.under_polite),
            ("asking again at once", &o.hostile, &o.under_hostile),
        ] {
            println!(
                "  {} closed-loop GetLoginUrl callers {how}: offered {:.0}/s, served {:.0}/s (peak {:.0}/s), the rest shed; ValidateToken p99 {:.2} ms (calm {:.2} ms, {:.2} x)",
                o.callers,
                flood.rps,
                goodput(flood),
                o.peak.rps,
                under.p99_ms,
                o.calm.p99_ms,
                ratio(under.p99_ms, o.calm.p99_ms)
            );
        }
    }
    if let Some(((h1_kb, h1_mb), (h2_kb, h2_mb))) = idle_memory {
        println!(
            "{idle_n} idle connections on a fresh server: HTTP/1.1 {h1_kb:.1} KB each ({h1_mb:.1} MB RSS), HTTP/2 {h2_kb:.1} KB each ({h2_mb:.1} MB RSS)"
        );
    }
    let report = json!({
        "machine": machine(),
        "postgres": pg_version,
        "smoke": o.smoke,
        "seconds_per_phase": d.as_secs_f64(),
        "concurrency": c,
        "connections": o.connections,
        "phases": results,
        "targets": targets.iter().map(|(n, v, t, m)| json!({"name": n, "value": v, "target": t, "met": m})).collect::<Vec<_>>(),
        "peak_rss_mb": peak_rss,
        "rss_mb_with_connections": rss_with_connections,
        "idle_connections": idle_n,
        "idle_kb_per_connection": idle_memory.map(|((h1, _), (h2, _))| json!({"http1": h1, "http2": h2})),
        "overload_scheduling": overloaded.iter().map(|o| o.realtime.describe()).collect::<Vec<_>>(),
    });
    if let Some(dir) = std::path::Path::new(&o.out).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&o.out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nmachine: {}", report["machine"]);
    println!("written to {}", o.out);
    drop(server);
    use sqlx::Connection;
    if let Ok(mut admin) = sqlx::PgConnection::connect(&format!("{base}/postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

// ---------------------------------------------------------------- soak --

/// One worker's session in the soak: access token, refresh handle, steps taken.
type Slot = Mutex<(String, String, u64)>;

/// One step of the mixed load: every 20th step a logout and a full login, every 5th a refresh,
/// the rest a ValidateToken.
async fn mixed_step(env: &Env, slot: &Slot, worker: usize) -> Result<(), String> {
    let (token, handle, step) = {
        let mut s = slot.lock().unwrap();
        s.2 += 1;
        (s.0.clone(), s.1.clone(), s.2)
    };
    let mut c = env.client(worker);
    if step % 20 == 0 {
        c.logout(bearer(LogoutRequest::default(), &token)).await.map_err(|e| e.to_string())?;
        let fresh = env.login(worker).await?;
        *slot.lock().unwrap() = (fresh.access_token, fresh.refresh_token, step);
    } else if step % 5 == 0 {
        let r = c
            .refresh_session(RefreshSessionRequest { refresh_token: handle })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let mut s = slot.lock().unwrap();
        (s.0, s.1) = (r.access_token, r.refresh_token);
    } else {
        validate_call(&mut c, token).await?;
    }
    Ok(())
}

/// What the soak samples every 30 s.
#[derive(serde::Serialize, Clone)]
struct SoakSample {
    minute: f64,
    rps: f64,
    p99_ms: f64,
    errors: u64,
    rss_mb: f64,
    open_fds: usize,
    pool_in_use: f64,
    pool_idle: f64,
    sessions: i64,
    refresh_handles: i64,
    login_attempts: i64,
    database_mb: f64,
}

/// A gauge's value from the server's `/metrics` (0 when absent).
async fn scrape(http: &reqwest::Client, addr: SocketAddr, series: &str) -> f64 {
    let text = match http.get(format!("http://{addr}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The soak: measures the mixed load's capacity (closed loop), then runs it open loop at half
/// that rate for `total`, sampling the server's memory, descriptors, pool and the tables every
/// 30 s. Prints the samples and a verdict (the last sample against the one after warm-up), and
/// writes them to `target/bench/soak.json`.
async fn soak(o: &Options, server: &Server, env: &Arc<Env>, admin: &sqlx::PgPool, total: Duration) {
    let c = o.concurrency;
    let mut slots = Vec::new();
    for w in 0..c {
        let s = env.login(w).await.expect("login");
        slots.push(Mutex::new((s.access_token, s.refresh_token, 0u64)));
    }
    let slots: Arc<Vec<Slot>> = Arc::new(slots);
    let op = {
        let (env, slots) = (Arc::clone(env), Arc::clone(&slots));
        move |w: usize| {
            let (env, slots) = (Arc::clone(&env), Arc::clone(&slots));
            async move { mixed_step(&env, &slots[w], w).await }
        }
    };
    let capacity = stats(
        "mixed",
        vec![run("mixed", Some(server), o.duration, c, None, Arc::new(op.clone())).await],
    );
    let rate = capacity.rps / 2.0;
    println!(
        "soak: mixed load (per 20 steps: 1 logout + full login, 3 refreshes, 16 ValidateToken) \
         capacity {:.0} steps/s closed loop (p99 {:.1} ms); now {:.0}/s for {:.0} min",
        capacity.rps,
        capacity.p99_ms,
        rate,
        total.as_secs_f64() / 60.0
    );
    println!(
        "{:>6} {:>8} {:>8} {:>6} {:>8} {:>5} {:>7} {:>9} {:>10} {:>8} {:>8}",
        "min",
        "steps/s",
        "p99 ms",
        "errors",
        "RSS MB",
        "fds",
        "pool",
        "sessions",
        "handles",
        "attempts",
        "db MB"
    );
    let http = reqwest::Client::new();
    let window = Duration::from_secs(30).min(total);
    let started = Instant::now();
    let mut samples: Vec<SoakSample> = Vec::new();
    while started.elapsed() + window / 2 < total {
        let s = stats(
            "soak",
            vec![run("soak", Some(server), window, c, Some(rate), Arc::new(op.clone())).await],
        );
        let (sessions, refresh_handles, login_attempts, bytes): (i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM refresh_handles), \
             (SELECT COUNT(*) FROM login_attempts), pg_database_size(current_database())",
            )
            .fetch_one(admin)
            .await
            .unwrap();
        let sample = SoakSample {
            minute: started.elapsed().as_secs_f64() / 60.0,
            rps: s.rps,
            p99_ms: s.p99_ms,
            errors: s.errors,
            rss_mb: server.rss_mb(),
            open_fds: std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
                .map_or(0, |d| d.count()),
            pool_in_use: scrape(
                &http,
                server.addr,
                "authgate_db_pool_connections{state=\"in_use\"}",
            )
            .await,
            pool_idle: scrape(&http, server.addr, "authgate_db_pool_connections{state=\"idle\"}")
                .await,
            sessions,
            refresh_handles,
            login_attempts,
            database_mb: bytes as f64 / 1_048_576.0,
        };
        println!(
            "{:>6.1} {:>8.0} {:>8.1} {:>6} {:>8.1} {:>5} {:>7} {:>9} {:>10} {:>8} {:>8.1}",
            sample.minute,
            sample.rps,
            sample.p99_ms,
            sample.errors,
            sample.rss_mb,
            sample.open_fds,
            format!("{:.0}/{:.0}", sample.pool_in_use, sample.pool_idle),
            sample.sessions,
            sample.refresh_handles,
            sample.login_attempts,
            sample.database_mb
        );
        samples.push(sample);
    }
    // Flat: the highest value of the last third of the run against the highest of the middle
    // third (the first third is the warm-up) — RSS within 10 % + 4 MB, descriptors within 16,
    // pending attempts within twice the concurrency. Single samples swing with the allocator
    // and the provider client's idle connections; the maxima of windows do not.
    let third = samples.len() / 3;
    let verdict = if third == 0 {
        json!(null)
    } else {
        let (middle, last) = (&samples[third..2 * third], &samples[2 * third..]);
        let max = |w: &[SoakSample], f: fn(&SoakSample) -> f64| w.iter().map(f).fold(0.0, f64::max);
        let rss = (max(middle, |s| s.rss_mb), max(last, |s| s.rss_mb));
        let fds = (max(middle, |s| s.open_fds as f64), max(last, |s| s.open_fds as f64));
        let attempts =
            (max(middle, |s| s.login_attempts as f64), max(last, |s| s.login_attempts as f64));
        let rss_ok = rss.1 <= rss.0 * 1.10 + 4.0;
        let fds_ok = fds.1 <= fds.0 + 16.0;
        let attempts_ok = attempts.1 <= attempts.0 + 2.0 * c as f64;
        let errors: u64 = samples.iter().map(|s| s.errors).sum();
        let (w, l) = (&samples[third], &samples[samples.len() - 1]);
        let sessions_per_minute =
            (l.sessions - w.sessions) as f64 / (l.minute - w.minute).max(1e-9);
        let word = |ok: bool| if ok { "flat" } else { "GROWING" };
        println!(
            "highest in the middle third -> last third: RSS {:.1} -> {:.1} MB ({}), descriptors {} -> {} ({}), \
             pending attempts {} -> {} ({}); errors {errors}; sessions grow {sessions_per_minute:.0}/min \
             (ended sessions are kept 7 days by design; see README)",
            rss.0,
            rss.1,
            word(rss_ok),
            fds.0,
            fds.1,
            word(fds_ok),
            attempts.0,
            attempts.1,
            word(attempts_ok),
        );
        json!({"rss_flat": rss_ok, "fds_flat": fds_ok, "attempts_flat": attempts_ok, "errors": errors,
               "sessions_per_minute": sessions_per_minute})
    };
    let report = json!({
        "machine": machine(),
        "capacity_steps_per_s": capacity.rps,
        "rate_steps_per_s": rate,
        "concurrency": c,
        "samples": samples,
        "verdict": verdict,
    });
    let out = std::path::Path::new(&o.out).with_file_name("soak.json");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("written to {}", out.display());
}
