//! The harness: the real OpenID provider process, fresh databases, `spawn_app`, a browserless
//! login driver, and a log capture to prove secrets never reach a log line.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use authgate::{config::Config, pb::auth_service_client::AuthServiceClient, startup::Application};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use url::Url;

pub const REDIRECT_URI: &str = "http://127.0.0.1:5173/callback";
pub const OTHER_REDIRECT_URI: &str = "http://localhost:5173/callback";
pub const TEST_CLIENT_ID: &str = "authgate-test";
pub const TEST_CLIENT_SECRET: &str = "authgate-test-secret-0123456789";
pub const POST_CLIENT_ID: &str = "authgate-post";
pub const POST_CLIENT_SECRET: &str = "authgate-post-secret-0123456789";
/// A provider token (`field`: `access`, `refresh` or `id`) authgate holds for a session in the
/// PostgreSQL database at `url`, decrypted with this run's key.
pub async fn provider_token(url: &str, session_id: &str, field: &str) -> Option<String> {
    use base64::Engine;
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let sealed: Option<Vec<u8>> =
        sqlx::query_scalar(&format!("SELECT provider_{field}_token FROM sessions WHERE id = $1"))
            .bind(session_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(encryption_key())
        .unwrap()
        .try_into()
        .unwrap();
    let cipher = authgate::crypto::Cipher::new(&authgate::secret::Secret::new(key));
    sealed.map(|s| {
        cipher
            .decrypt_secret(&s, &format!("session:{session_id}:{field}"))
            .unwrap()
            .expose()
            .clone()
    })
}

/// This test run's encryption key: generated, so never one of the published keys authgate
/// refuses outside `development_mode`.
pub fn encryption_key() -> &'static str {
    static KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    });
    &KEY
}
pub const ALICE: (&str, &str) = ("alice@example.com", "alice-password");
pub const BOB: (&str, &str) = ("bob@example.com", "bob-password");

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn output_dir() -> PathBuf {
    let dir = repo_root().join("target").join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where this process writes a log named `what` (`authgate`, `dev-provider`): one file per
/// test under nextest, which runs each test in its own process (`--exact <name>`), so a failed
/// or timed-out test's logs are its own; one file for the whole run under `cargo test`.
pub fn log_path(what: &str) -> PathBuf {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--exact").and_then(|i| args.get(i + 1)) {
        Some(test) => {
            let dir = output_dir().join("tests");
            std::fs::create_dir_all(&dir).unwrap();
            dir.join(format!("{}.{what}.log", test.replace("::", ".")))
        }
        None => output_dir().join(format!("{what}.log")),
    }
}

/// The most any single HTTP exchange of the test clients may take: a stuck call fails the test
/// with its URL instead of hanging it.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ logs --

/// Everything the app logs during the test run (all tests share one subscriber).
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOG_BUFFER.get_or_init(Default::default).lock().unwrap()).into_owned()
}

static LOG_BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// Writes log lines into memory (for assertions) and into [`log_path`]`("authgate")`.
#[derive(Clone)]
struct BufferWriter(Arc<Mutex<Vec<u8>>>);

fn log_file() -> &'static Mutex<std::fs::File> {
    static FILE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();
    FILE.get_or_init(|| Mutex::new(std::fs::File::create(log_path("authgate")).unwrap()))
}

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        let _ = log_file().lock().unwrap().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs a global subscriber at TRACE for authgate (debug for the rest) writing into memory.
fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let buffer = LOG_BUFFER.get_or_init(Default::default).clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("authgate=trace,tower_http=debug,info")
            .with_ansi(false)
            .with_writer(move || BufferWriter(buffer.clone()))
            .try_init();
    });
}

// -------------------------------------------------------- real provider --

/// The real OpenID provider (oidc-provider): one shared process for the whole test binary, or
/// a dedicated one for tests that need their own client registrations.
pub struct DevProvider {
    pub issuer: String,
    child: Mutex<Child>,
}

impl Drop for DevProvider {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn dev_provider() -> &'static DevProvider {
    static PROVIDER: OnceLock<DevProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| start_dev_provider(&test_clients()))
}

pub fn test_clients() -> serde_json::Value {
    let redirects = [REDIRECT_URI, OTHER_REDIRECT_URI];
    serde_json::json!([
        {
            "client_id": TEST_CLIENT_ID,
            "client_secret": TEST_CLIENT_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": redirects,
            "post_logout_redirect_uris": ["http://127.0.0.1:5173/"],
        },
        {
            "client_id": POST_CLIENT_ID,
            "client_secret": POST_CLIENT_SECRET,
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "redirect_uris": redirects,
        }
    ])
}

/// Starts `node dev-provider/provider.mjs` on a free port and waits for its issuer line.
/// The process exits when this test binary does (its stdin closes).
///
/// A provider process that has printed nothing after 15 s (it starts in about 2 s on two loaded
/// cores) is killed and started again, up to three times: on CI, about one start in a few
/// hundred stalled before listening, which used to hang its test until the run's time limit.
pub fn start_dev_provider(clients: &serde_json::Value) -> DevProvider {
    let dir = repo_root().join("dev-provider");
    assert!(
        dir.join("node_modules").join("oidc-provider").is_dir(),
        "dev-provider/node_modules is missing: run `npm ci --prefix dev-provider` (scripts/test does it)"
    );
    let log_path = log_path("dev-provider");
    for attempt in 1..=3 {
        // Appended to: a test may start several providers.
        let mut log =
            std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("EXIT_ON_STDIN_CLOSE", "1")
            .env("CLIENTS", clients.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .expect("cannot start node; is Node.js installed?");
        // The issuer line, read on a thread so that a provider that never starts cannot hang
        // the test.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(15)) else {
            // What each of its threads waits on, for the record.
            let tasks = std::fs::read_dir(format!("/proc/{}/task", child.id()))
                .map(|d| {
                    d.flatten()
                        .map(|t| {
                            let read = |f: &str| {
                                std::fs::read_to_string(t.path().join(f)).unwrap_or_default()
                            };
                            format!("{} {}", read("comm").trim(), read("wchan").trim())
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            let _ = writeln!(log, "[harness] threads of the stalled provider: {tasks}");
            let _ = child.kill();
            let _ = child.wait();
            let _ = writeln!(
                log,
                "[harness] provider pid {} printed no issuer line within 15 s (attempt {attempt} of 3); killed",
                child.id()
            );
            continue;
        };
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("dev provider did not start ({e}); see {}", log_path.display())
        });
        return DevProvider {
            issuer: ready["issuer"].as_str().unwrap().to_string(),
            child: Mutex::new(child),
        };
    }
    panic!("dev provider printed no issuer line in three starts; see {}", log_path.display());
}

// ------------------------------------------------------------ databases --

/// Where the test PostgreSQL server is (trust auth).
pub fn postgres_base() -> String {
    std::env::var("AUTHGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh PostgreSQL database, dropped when this value is dropped.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let name = format!(
            "authgate_test_{}",
            authgate::crypto::random_handle(9).to_lowercase().replace(['-', '_'], "x")
        );
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_base()))
            .await
            .expect("PostgreSQL must be running at 127.0.0.1:5432 (scripts/test starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        Self { url: format!("{}/{name}", postgres_base()), name }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let base = postgres_base();
        // Drop from a separate thread with its own runtime (we may be inside a runtime).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut admin) =
                    sqlx::PgConnection::connect(&format!("{base}/postgres")).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

// ------------------------------------------------------------------ app --

pub enum Db {
    Postgres(TestDatabase),
    Sqlite(tempfile::TempDir),
}

/// How to start an app under test.
pub struct AppOptions {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub sqlite: bool,
    /// Extra `AUTHGATE_*` settings (env names), applied last.
    pub env: Vec<(String, String)>,
    /// Use this PostgreSQL URL instead of a fresh database (e.g. through a fault proxy).
    pub database_url: Option<String>,
    /// Serve on this listener (bound beforehand, when its port must be known early).
    pub listener: Option<tokio::net::TcpListener>,
    /// Also serve the internal listener (the fleet's checks, metrics, readiness) on port 0.
    pub internal: bool,
    /// The public listener speaks TLS: the test's channels connect with this client.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
}

impl AppOptions {
    pub fn real() -> Self {
        Self {
            issuer: dev_provider().issuer.clone(),
            client_id: TEST_CLIENT_ID.into(),
            client_secret: TEST_CLIENT_SECRET.into(),
            sqlite: false,
            env: Vec::new(),
            database_url: None,
            listener: None,
            internal: false,
            tls_client: None,
        }
    }

    pub fn with_issuer(issuer: &str) -> Self {
        Self { issuer: issuer.to_string(), ..Self::real_without_provider() }
    }

    fn real_without_provider() -> Self {
        Self {
            issuer: String::new(),
            client_id: TEST_CLIENT_ID.into(),
            client_secret: TEST_CLIENT_SECRET.into(),
            sqlite: false,
            env: Vec::new(),
            database_url: None,
            listener: None,
            internal: false,
            tls_client: None,
        }
    }

    pub fn set(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn sqlite(mut self) -> Self {
        self.sqlite = true;
        self
    }

    /// Serve the internal listener too (on its own port 0).
    pub fn internal(mut self) -> Self {
        self.internal = true;
        self
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The internal listener, when the app was started with one.
    pub internal_addr: Option<SocketAddr>,
    /// AuthService on the public listener.
    pub grpc: AuthServiceClient<Channel>,
    /// Health on the listener that serves readiness (the internal one, when there is one).
    pub health: HealthClient<Channel>,
    pub db: Option<Db>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base URL of the listener that serves the fleet's checks, metrics and readiness: the
    /// internal one when there is one.
    pub fn checks_url(&self) -> String {
        format!("http://{}", self.internal_addr.unwrap_or(self.addr))
    }

    /// AuthService on the internal listener (ValidateToken and GetJwks live there).
    pub async fn internal_grpc(&self) -> AuthServiceClient<Channel> {
        let channel = Channel::from_shared(self.checks_url()).unwrap().connect().await.unwrap();
        AuthServiceClient::new(channel)
    }

    /// A direct connection to this app's database, for asserting what was (not) written.
    pub async fn count_rows(&self, table: &str) -> i64 {
        match &self.db {
            Some(Db::Postgres(db)) => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                let n = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                n
            }
            Some(Db::Sqlite(dir)) => {
                let url = format!("sqlite://{}", dir.path().join("authgate.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                let n = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                n
            }
            None => panic!("this app has no database handle"),
        }
    }

    /// Runs one SQL statement on this app's database (to inject a fault, or change what an
    /// operator could change).
    pub async fn sql(&self, statement: &str) {
        match &self.db {
            Some(Db::Postgres(db)) => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::raw_sql(statement).execute(&pool).await.unwrap();
                pool.close().await;
            }
            Some(Db::Sqlite(dir)) => {
                let url = format!("sqlite://{}", dir.path().join("authgate.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::raw_sql(statement).execute(&pool).await.unwrap();
                pool.close().await;
            }
            None => panic!("this app has no database handle"),
        }
    }

    /// Makes every `event` (`INSERT`, `UPDATE`, `DELETE`) on `table` fail (PostgreSQL only),
    /// until [`Self::clear_fault`].
    pub async fn inject_fault(&self, event: &str, table: &str) {
        self.sql(&format!(
            "CREATE OR REPLACE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$; \
             CREATE TRIGGER injected_fault BEFORE {event} ON {table} \
             FOR EACH ROW EXECUTE FUNCTION injected_fault();"
        ))
        .await;
    }

    pub async fn clear_fault(&self, table: &str) {
        self.sql(&format!("DROP TRIGGER injected_fault ON {table}")).await;
    }

    /// Stops the server and waits for it to finish.
    /// Asks the server to stop (as SIGTERM does) without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Whether the server task has finished.
    pub fn has_stopped(&self) -> bool {
        self.server.as_ref().is_none_or(|s| s.is_finished())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// The environment an app under test is configured with (fed through the real config parser).
pub fn app_env(
    opts: &AppOptions,
    database_url: Option<&str>,
    sqlite_path: Option<&Path>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_string(), v.to_string());
    };
    set("AUTHGATE_LISTEN_ADDR", "127.0.0.1:0");
    set("AUTHGATE_ISSUER_URL", &opts.issuer);
    set("AUTHGATE_CLIENT_ID", &opts.client_id);
    set("AUTHGATE_CLIENT_SECRET", &opts.client_secret);
    set("AUTHGATE_REDIRECT_URIS", &format!("{REDIRECT_URI},{OTHER_REDIRECT_URI}"));
    set("AUTHGATE_CORS_ALLOWED_ORIGINS", "http://127.0.0.1:5173,http://localhost:5173");
    set("AUTHGATE_ENCRYPTION_KEY", encryption_key());
    set("AUTHGATE_HEALTH_CHECK_INTERVAL", "1");
    set("AUTHGATE_PROVIDER_TIMEOUT", "3");
    // Every refresh goes to the provider, as the refresh tests expect (the interval between
    // provider checks has a test of its own).
    set("AUTHGATE_PROVIDER_REFRESH_MIN_INTERVAL", "0");
    if let Some(url) = database_url {
        set("DATABASE_URL", url);
    }
    if let Some(path) = sqlite_path {
        set("AUTHGATE_SQLITE_PATH", path.to_str().unwrap());
    }
    for (k, v) in &opts.env {
        set(k, v);
    }
    env
}

/// Starts authgate on 127.0.0.1:0 against a fresh database and waits until it answers.
pub async fn spawn_app(mut opts: AppOptions) -> TestApp {
    init_logging();
    let listener = match opts.listener.take() {
        Some(l) => l,
        None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = listener.local_addr().unwrap();
    let internal = if opts.internal {
        Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let internal_addr = internal.as_ref().map(|l| l.local_addr().unwrap());
    let (db, database_url, sqlite_path) = if let Some(url) = &opts.database_url {
        (None, Some(url.clone()), None)
    } else if opts.sqlite {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authgate.db");
        (Some(Db::Sqlite(dir)), None, Some(path))
    } else {
        let db = TestDatabase::create().await;
        let url = db.url.clone();
        (Some(Db::Postgres(db)), Some(url), None)
    };
    let mut env = app_env(&opts, database_url.as_deref(), sqlite_path.as_deref());
    env.entry("AUTHGATE_PUBLIC_URL".into()).or_insert(format!("http://{addr}"));
    if let Some(internal) = internal_addr {
        env.insert("AUTHGATE_INTERNAL_LISTEN_ADDR".into(), internal.to_string());
    }
    let config = Config::from_sources(None, &env).unwrap_or_else(|e| panic!("{e}"));
    let app = Application::build(config).await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let listeners = authgate::startup::Listeners { public: listener, internal };
    let server = tokio::spawn(app.run(listeners, async move {
        let _ = rx.await;
    }));
    let channel = match opts.tls_client.clone() {
        Some(tls) => tls_channel(addr, tls).await.unwrap(),
        None => Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap(),
    };
    let checks = match internal_addr {
        // A TLS internal listener: the test makes its own channels to it.
        Some(internal) if opts.tls_client.is_some() => {
            Channel::from_shared(format!("http://{internal}")).unwrap().connect_lazy()
        }
        Some(internal) => {
            Channel::from_shared(format!("http://{internal}")).unwrap().connect().await.unwrap()
        }
        None => channel.clone(),
    };
    TestApp {
        addr,
        internal_addr,
        grpc: AuthServiceClient::new(channel),
        health: HealthClient::new(checks),
        db,
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// A gRPC channel over TLS (ALPN `h2`) to `addr`, checking the server certificate for
/// `localhost` against the client configuration's roots.
pub async fn tls_channel(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = Arc::clone(&config);
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
}

/// Waits until the gRPC health check for `service` reports `want`.
pub async fn wait_for_health(
    app: &TestApp,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    let mut health = app.health.clone();
    for _ in 0..100 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1);
        if status == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health of `{service}` never became {want:?}");
}

/// Waits (up to 15 s) until the server at `base` answers `/readyz/login` with 200: it can
/// validate and log in.
pub async fn wait_until_login_ready(base: &str) {
    let http = http_client();
    for _ in 0..150 {
        let ready = http.get(format!("{base}/readyz/login")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{base} did not become ready to log in");
}

/// Waits until the app can validate and log in (its provider discovered).
pub async fn wait_until_serving(app: &TestApp) {
    use tonic_health::pb::health_check_response::ServingStatus;
    wait_for_health(app, "", ServingStatus::Serving).await;
    wait_for_health(app, authgate::health::LOGIN_SERVICE, ServingStatus::Serving).await;
}

// -------------------------------------------------------- login driver --

/// What the provider put on the redirect URI.
#[derive(Debug, Clone)]
pub struct Callback {
    pub code: String,
    pub state: String,
    /// RFC 9207 `iss`, which oidc-provider adds to every redirect.
    pub iss: Option<String>,
}

/// Plays the browser at the real provider: follows `login_url`, submits the login form with
/// `user`, accepts the consent page, and stops at the redirect back to `redirect_uri`.
pub async fn sign_in_at_provider(
    login_url: &str,
    user: (&str, &str),
    redirect_uri: &str,
) -> Callback {
    sign_in_with(&browser(), login_url, user, redirect_uri).await
}

/// A plain HTTP client whose calls fail after [`HTTP_TIMEOUT`] instead of hanging the test.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().unwrap()
}

/// A browser-like HTTP client: a cookie jar, no automatic redirects.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// [`sign_in_at_provider`] with the caller's client, whose cookie jar keeps the provider session.
pub async fn sign_in_with(
    client: &reqwest::Client,
    login_url: &str,
    user: (&str, &str),
    redirect_uri: &str,
) -> Callback {
    let mut url = Url::parse(login_url).unwrap();
    let mut response = client.get(url.clone()).send().await.unwrap();
    for _ in 0..20 {
        if response.status().is_redirection() {
            let location = response.headers()["location"].to_str().unwrap().to_string();
            let next = url.join(&location).unwrap();
            if next.as_str().starts_with(redirect_uri) {
                let q: BTreeMap<String, String> = next.query_pairs().into_owned().collect();
                if let Some(error) = q.get("error") {
                    panic!("provider returned error {error}: {:?}", q.get("error_description"));
                }
                return Callback {
                    code: q["code"].clone(),
                    state: q["state"].clone(),
                    iss: q.get("iss").cloned(),
                };
            }
            url = next;
            response = client.get(url.clone()).send().await.unwrap();
            continue;
        }
        let status = response.status();
        let html = response.text().await.unwrap();
        assert!(status.is_success(), "provider page {url} answered {status}: {html}");
        if html.contains("id=\"username\"") {
            let action = url.join(&form_action(&html, "/login")).unwrap();
            response = client
                .post(action.clone())
                .form(&[("username", user.0), ("password", user.1)])
                .send()
                .await
                .unwrap();
            url = action;
        } else if html.contains("id=\"allow\"") {
            let action = url.join(&form_action(&html, "/confirm")).unwrap();
            response = client.post(action.clone()).form(&[("allow", "yes")]).send().await.unwrap();
            url = action;
        } else {
            panic!("unexpected provider page at {url}: {html}");
        }
    }
    panic!("too many steps at the provider");
}

/// The `action` of the first form whose action ends with `suffix`.
pub fn form_action(html: &str, suffix: &str) -> String {
    html.split("action=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|a| a.replace("&amp;", "&"))
        .find(|a| a.ends_with(suffix))
        .unwrap_or_else(|| panic!("no form posting to *{suffix} in: {html}"))
}

/// Query parameter of a URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    Url::parse(url).ok()?.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Adds `authorization: Bearer` metadata to a request.
pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

// ---------------------------------------------------------- fault proxy --

/// A TCP proxy that can be cut: while down it refuses new connections and kills open ones.
/// Used to make the database unreachable under a running app.
pub struct FaultProxy {
    pub addr: SocketAddr,
    down: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (d, c) = (Arc::clone(&down), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Self { addr, down, connections, accept }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            for task in self.connections.lock().unwrap().drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// ValidateToken's answer for a token.
pub async fn validate(app: &TestApp, token: &str) -> authgate::pb::ValidateTokenResponse {
    app.grpc
        .clone()
        .validate_token(authgate::pb::ValidateTokenRequest { token: token.to_string() })
        .await
        .unwrap()
        .into_inner()
}

/// What a grpc-web (binary) unary call answered.
#[derive(Clone)]
pub struct GrpcWebAnswer {
    pub headers: reqwest::header::HeaderMap,
    /// `grpc-status` (from the headers of a trailers-only answer, or the trailer frame).
    pub status: String,
    /// The data frame's message, when there was one.
    pub message: Option<Vec<u8>>,
    /// The whole body as text (the trailer frame is text).
    pub text: String,
}

impl GrpcWebAnswer {
    /// The `Set-Cookie` values of the answer.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }

    /// The data frame decoded as `M`; panics (with the answer) when the call failed.
    pub fn decode<M: prost::Message + Default>(&self) -> M {
        assert_eq!(self.status, "0", "the call failed: {}", self.text);
        M::decode(self.message.as_deref().expect("a data frame")).unwrap()
    }
}

/// A grpc-web (binary) unary call over HTTP/1.1, as a browser makes it.
pub async fn grpc_web_call(
    base: &str,
    method: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
) -> GrpcWebAnswer {
    let message = message.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let mut request = http_client()
        .post(format!("{base}/{method}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await.unwrap();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap().to_vec();
    let mut message = None;
    let mut rest = bytes.as_slice();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let frame = &rest[5..(5 + len).min(rest.len())];
        if rest[0] & 0x80 == 0 {
            message = Some(frame.to_vec());
        }
        rest = &rest[(5 + len).min(rest.len())..];
    }
    let text = String::from_utf8_lossy(&bytes).to_string();
    let status =
        headers.get("grpc-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_else(|| {
            text.split("grpc-status:")
                .nth(1)
                .map(|rest| rest.trim_start().chars().take_while(char::is_ascii_digit).collect())
                .unwrap_or_default()
        });
    GrpcWebAnswer { headers, status, message, text }
}

/// The effective user id (root can switch users and build mount namespaces).
pub fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
