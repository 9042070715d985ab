//! Faults in the middle of real traffic. Clients run full logins at the real provider, token
//! checks, refreshes and logouts while the database is taken away under them — every
//! authgate connection terminated (`pg_terminate_backend`, this test's database only), a
//! PostgreSQL restart (a private throwaway cluster this test starts with `initdb` / `pg_ctl`, so
//! no other test's server is touched), SQLite locked by another process — or while the provider
//! is slow, failing or gone. Every call must succeed or fail with `UNAVAILABLE` (the documented
//! shed code, `RESOURCE_EXHAUSTED`, is counted too); afterwards nothing is lost or half-written:
//! every session the clients hold still refreshes with its newest handle, every live session has
//! exactly one unused handle, no logged-out session is valid again, every attempt left over is
//! one whose exchange failed (and, when the attempt is still there, the retried exchange
//! completes), readiness recovers and new logins work.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command as StdCommand,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use authgate::pb::{
    ExchangeCodeRequest, GetLoginUrlRequest, InvalidReason, LogoutRequest, RefreshSessionRequest,
    ValidateTokenRequest, auth_service_client::AuthServiceClient,
};
use sha2::{Digest, Sha256};
use tonic::{Code, Status, transport::Channel};

use crate::{
    fake_provider::{FakeProvider, TokenAnswer},
    helpers::*,
    login_flow::full_login,
};

/// How long the clients run, and when the fault starts.
const LOAD: Duration = Duration::from_secs(9);
const FAULT_AT: Duration = Duration::from_secs(3);
/// How long a client keeps retrying a call that failed with UNAVAILABLE after the load ends.
const RETRY_FOR: Duration = Duration::from_secs(30);
const CLIENTS: usize = 4;

#[derive(Clone, Debug)]
struct Held {
    id: String,
    token: String,
    handle: String,
}

/// What the clients saw.
#[derive(Default)]
struct Ledger {
    /// (method, outcome) → count; outcome is "ok", "UNAVAILABLE" or "RESOURCE_EXHAUSTED".
    counts: BTreeMap<(&'static str, &'static str), u32>,
    /// Anything else: each is a failure of the test.
    unexpected: Vec<String>,
    /// Sessions the clients still hold, with their newest handle.
    live: Vec<Held>,
    /// Sessions the clients logged out.
    ended: Vec<Held>,
    /// SHA-256 of the `state` of logins whose exchange never succeeded.
    failed_states: Vec<Vec<u8>>,
    /// Exchanges that failed with UNAVAILABLE and whose retry found the attempt consumed.
    consumed_by_a_failure: u32,
    /// Exchanges that failed with UNAVAILABLE and then completed when retried.
    completed_on_retry: u32,
}

impl Ledger {
    /// Counts a result; true when it is to be retried (UNAVAILABLE or the shed code).
    fn note<T>(&mut self, method: &'static str, result: &Result<T, Status>) -> bool {
        let outcome = match result {
            Ok(_) => "ok",
            Err(s) if s.code() == Code::Unavailable => "UNAVAILABLE",
            Err(s) if s.code() == Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Err(s) => {
                self.unexpected.push(format!("{method}: {:?}: {}", s.code(), s.message()));
                return false;
            }
        };
        *self.counts.entry((method, outcome)).or_default() += 1;
        outcome != "ok"
    }

    fn count(&self, method: &'static str, outcome: &'static str) -> u32 {
        self.counts.get(&(method, outcome)).copied().unwrap_or(0)
    }

    fn failures(&self) -> u32 {
        self.counts.iter().filter(|((_, o), _)| *o != "ok").map(|(_, n)| n).sum()
    }
}

type Shared = Arc<Mutex<Ledger>>;

/// Calls `call` until it succeeds, fails with a code other than UNAVAILABLE / the shed code, or
/// `give_up` passes; every result is noted.
async fn retried<T, F, Fut>(
    ledger: &Shared,
    method: &'static str,
    give_up: Instant,
    call: F,
) -> Result<T, Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    loop {
        let result = call().await;
        let again = ledger.lock().unwrap().note(method, &result);
        if !again || Instant::now() > give_up {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client: sign in, check and refresh the token three times, log out every third session.
async fn client(
    grpc: AuthServiceClient<Channel>,
    user: (&'static str, &'static str),
    until: Instant,
    ledger: Shared,
) {
    let give_up = until + RETRY_FOR;
    let mut logins = 0;
    while Instant::now() < until {
        let started = {
            let result = grpc.clone().get_login_url(GetLoginUrlRequest::default()).await;
            if ledger.lock().unwrap().note("GetLoginUrl", &result) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            match result {
                Ok(r) => r.into_inner(),
                Err(_) => continue,
            }
        };
        let callback = sign_in_at_provider(&started.login_url, user, REDIRECT_URI).await;
        let request = ExchangeCodeRequest {
            code: callback.code,
            state: started.state.clone(),
            binding: started.binding.clone(),
            redirect_uri: REDIRECT_URI.into(),
            iss: callback.iss.unwrap_or_default(),
            refresh_cookie: false,
        };
        // A SPA retries an exchange that failed with UNAVAILABLE with the same code.
        let mut failed_before = false;
        let done = loop {
            let result = grpc.clone().exchange_code(request.clone()).await;
            // The attempt was consumed by the exchange that failed (the database went away
            // after it): the user starts a new login. Counted, not an error.
            if failed_before && result.as_ref().is_err_and(|s| s.code() == Code::FailedPrecondition)
            {
                ledger.lock().unwrap().consumed_by_a_failure += 1;
                break None;
            }
            let again = ledger.lock().unwrap().note("ExchangeCode", &result);
            match result {
                Ok(done) => {
                    if failed_before {
                        ledger.lock().unwrap().completed_on_retry += 1;
                    }
                    break Some(done.into_inner());
                }
                Err(_) if again && Instant::now() < give_up => {
                    failed_before = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => break None,
            }
        };
        let Some(done) = done else {
            ledger
                .lock()
                .unwrap()
                .failed_states
                .push(Sha256::digest(started.state.as_bytes()).to_vec());
            continue;
        };
        logins += 1;
        let mut held =
            Held { id: done.session_id, token: done.access_token, handle: done.refresh_token };
        let mut lost = false;
        for _ in 0..3 {
            let token = held.token.clone();
            let verdict = grpc.clone().validate_token(ValidateTokenRequest { token }).await;
            if let Ok(v) = &verdict
                && !v.get_ref().valid
            {
                ledger
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("ValidateToken of a live session: {:?}", v.get_ref()));
            }
            ledger.lock().unwrap().note("ValidateToken", &verdict);
            let handle = held.handle.clone();
            let refreshed = retried(&ledger, "RefreshSession", give_up, || {
                let (mut grpc, refresh_token) = (grpc.clone(), handle.clone());
                async move { grpc.refresh_session(RefreshSessionRequest { refresh_token }).await }
            })
            .await;
            match refreshed {
                Ok(r) => {
                    let r = r.into_inner();
                    held.token = r.access_token;
                    held.handle = r.refresh_token;
                }
                Err(_) => {
                    lost = true;
                    break;
                }
            }
        }
        if lost {
            continue;
        }
        if logins % 3 == 0 {
            let token = held.token.clone();
            let out = retried(&ledger, "Logout", give_up, || {
                let (mut grpc, token) = (grpc.clone(), token.clone());
                async move { grpc.logout(with_bearer(LogoutRequest::default(), &token)).await }
            })
            .await;
            if out.is_ok() {
                ledger.lock().unwrap().ended.push(held);
            }
        } else {
            ledger.lock().unwrap().live.push(held);
        }
    }
}

/// Polls `GET /readyz` until `until`; returns the statuses seen, in order, without repeats.
async fn watch_readiness(url: String, until: Instant) -> Vec<u16> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let mut seen: Vec<u16> = Vec::new();
    while Instant::now() < until {
        let status = match http.get(&url).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// Runs the clients for [`LOAD`], calls `fault` at [`FAULT_AT`]; returns the ledger and the
/// readiness statuses seen.
async fn under_load<F, Fut>(app: &TestApp, fault: F) -> (Ledger, Vec<u16>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ledger: Shared = Arc::default();
    let start = Instant::now();
    let until = start + LOAD;
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let user = if n % 2 == 0 { ALICE } else { BOB };
        tasks.push(tokio::spawn(client(app.grpc.clone(), user, until, Arc::clone(&ledger))));
    }
    let readiness = tokio::spawn(watch_readiness(
        format!("{}/readyz", app.base_url()),
        until + Duration::from_secs(2),
    ));
    tokio::time::sleep_until((start + FAULT_AT).into()).await;
    fault().await;
    for task in tasks {
        task.await.expect("a client panicked");
    }
    let seen = readiness.await.unwrap();
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    (ledger, seen)
}

/// A database the checks below read: PostgreSQL by URL, or the SQLite file.
enum Store {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Store {
    async fn hashes(&self, sql: &str) -> Vec<Vec<u8>> {
        match self {
            Store::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
                pool.close().await;
                rows
            }
            Store::Sqlite(path) => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                let rows = sqlx::query_scalar(sql).fetch_all(&pool).await.unwrap();
                pool.close().await;
                rows
            }
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        match self {
            Store::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
                pool.close().await;
                n
            }
            Store::Sqlite(path) => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
                pool.close().await;
                n
            }
        }
    }
}

/// Everything that must hold once the fault is over.
async fn nothing_lost(app: &TestApp, store: &Store, ledger: &Ledger, what: &str) {
    let summary = format!(
        "{what}: {:?}; consumed by a failed exchange {}, completed on retry {}, live {}, logged out {}",
        ledger.counts,
        ledger.consumed_by_a_failure,
        ledger.completed_on_retry,
        ledger.live.len(),
        ledger.ended.len()
    );
    eprintln!("{summary}");
    assert!(
        ledger.unexpected.is_empty(),
        "{what}: calls failed otherwise than UNAVAILABLE: {:#?}\n{summary}",
        ledger.unexpected
    );
    assert!(ledger.count("ExchangeCode", "ok") >= CLIENTS as u32, "{summary}");
    assert!(
        ledger.count("RefreshSession", "ok") > 0 && ledger.count("ValidateToken", "ok") > 0,
        "{summary}"
    );
    assert!(!ledger.live.is_empty() && !ledger.ended.is_empty(), "{summary}");

    // Readiness is back; the pool reconnected: new logins work.
    let http = http_client();
    let mut ready = false;
    for _ in 0..100 {
        if http
            .get(format!("{}/readyz", app.base_url()))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "{what}: /readyz did not recover");
    let fresh = full_login(app, ALICE).await;
    assert!(validate(app, &fresh.access_token).await.valid);

    // Every session the clients hold refreshes with its newest handle: no handle was lost.
    for held in &ledger.live {
        let refreshed = app
            .grpc
            .clone()
            .refresh_session(RefreshSessionRequest { refresh_token: held.handle.clone() })
            .await;
        assert!(refreshed.is_ok(), "{what}: session {} lost its handle: {refreshed:?}", held.id);
    }
    // No logged-out session is valid again, by token or by handle.
    for held in &ledger.ended {
        let verdict = validate(app, &held.token).await;
        assert_eq!(
            InvalidReason::try_from(verdict.reason),
            Ok(InvalidReason::Revoked),
            "{what}: {verdict:?}"
        );
        let refused = app
            .grpc
            .clone()
            .refresh_session(RefreshSessionRequest { refresh_token: held.handle.clone() })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
    }
    // Every live session has exactly one unused handle (a session is written with its handle
    // in one statement, a rotation spends one and adds one in one transaction).
    let broken = store
        .count(
            "SELECT COUNT(*) FROM sessions s WHERE s.revoked_at IS NULL AND (SELECT COUNT(*) \
             FROM refresh_handles h WHERE h.session_id = s.id AND h.used_at IS NULL) <> 1",
        )
        .await;
    assert_eq!(broken, 0, "{what}: live sessions without exactly one unused refresh handle");
    let sessions = store.count("SELECT COUNT(*) FROM sessions").await;
    let held = (ledger.live.len() + ledger.ended.len()) as i64;
    assert!(sessions > held, "{what}: {sessions} sessions for {held} held (+ the fresh login)");
    // Attempts left over are exactly those of exchanges that failed; none of a completed login.
    let left = store.hashes("SELECT state_hash FROM login_attempts").await;
    for state in &left {
        assert!(
            ledger.failed_states.contains(state),
            "{what}: an attempt outlived its completed login"
        );
    }
}

/// Terminates every connection to `database` on the shared server (never another test's).
async fn terminate_connections(database: &str) -> u64 {
    use sqlx::Connection;
    let mut admin =
        sqlx::PgConnection::connect(&format!("{}/postgres", postgres_base())).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    killed.len() as u64
}

#[tokio::test]
async fn every_connection_terminated_under_mixed_load_loses_nothing() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let Some(Db::Postgres(db)) = &app.db else { unreachable!() };
    let (name, url) = (db.name.clone(), db.url.clone());
    let (ledger, _) = under_load(&app, || async {
        // Three rounds, 400 ms apart: connections reopened after the first are cut again.
        let mut killed = 0;
        for _ in 0..3 {
            killed += terminate_connections(&name).await;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        assert!(killed > 0, "no authgate connection was terminated");
    })
    .await;
    nothing_lost(&app, &Store::Postgres(url), &ledger, "pg_terminate_backend").await;
    // A login whose session write hit a cut connection retried the write (the pool reconnects
    // at once): no attempt was consumed without its session.
    assert_eq!(ledger.consumed_by_a_failure, 0, "{:?}", ledger.counts);
}

/// A throwaway PostgreSQL cluster of this test's own: `initdb` into a temporary directory and
/// `pg_ctl` on a free port, run as the `postgres` user when the test runs as root.
struct PrivatePostgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn bin_dir() -> PathBuf {
        let out = StdCommand::new("pg_config").arg("--bindir").output();
        let from_pg_config = out
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        let candidates = from_pg_config.into_iter().chain(
            std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("bin")),
        );
        candidates
            .filter(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
            .max()
            .expect("initdb and pg_ctl (PostgreSQL's server package) are needed")
    }

    /// A PostgreSQL tool, as the `postgres` user when the test runs as root.
    fn command(&self, tool: &str) -> StdCommand {
        let program = self.bin.join(tool);
        if unsafe_geteuid() == 0 {
            let mut c = StdCommand::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            StdCommand::new(&program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool).args(args).output().expect(tool);
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if unsafe_geteuid() == 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let chown = StdCommand::new("chown")
                .args(["postgres:postgres", data.to_str().unwrap()])
                .status();
            assert!(chown.unwrap().success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Self { bin: Self::bin_dir(), data, port, _dir: dir };
        let data = pg.data.to_str().unwrap().to_string();
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
        );
        pg.start();
        pg
    }

    fn start(&self) {
        let data = self.data.to_str().unwrap();
        let log = self.data.join("server.log");
        let options =
            format!("-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", self.port);
        self.run(
            "pg_ctl",
            &["-D", data, "-l", log.to_str().unwrap(), "-o", &options, "-w", "-t", "60", "start"],
        );
    }

    fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", self.data.to_str().unwrap(), "-m", "fast", "-w", "-t", "60", "stop"],
        );
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap().to_string();
        let _ = self.command("pg_ctl").args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}

#[tokio::test]
async fn a_postgres_restart_under_mixed_load_loses_nothing() {
    let pg = Arc::new(PrivatePostgres::start_new());
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await.unwrap();
        sqlx::query("CREATE DATABASE authgate").execute(&mut admin).await.unwrap();
    }
    let url = pg.url("authgate");
    let mut options = AppOptions::real();
    options.database_url = Some(url.clone());
    let app = spawn_app(options).await;
    wait_until_serving(&app).await;
    let server = Arc::clone(&pg);
    let (ledger, readiness) = under_load(&app, || async move {
        // Down longer than the pool's 3 s acquire timeout, which the readiness ping waits out
        // (a shorter blip does not flip readiness), plus a health-check interval.
        tokio::task::spawn_blocking(move || {
            server.stop();
            std::thread::sleep(Duration::from_millis(5000));
            server.start();
        })
        .await
        .unwrap();
    })
    .await;
    assert!(ledger.failures() > 0, "the restart was not felt: {:?}", ledger.counts);
    let went_down = readiness.iter().position(|s| *s == 503);
    let came_back = readiness.iter().rposition(|s| *s == 200);
    assert!(
        matches!((went_down, came_back), (Some(d), Some(b)) if b > d),
        "readiness must flip and recover: {readiness:?}"
    );
    nothing_lost(&app, &Store::Postgres(url), &ledger, "PostgreSQL restart").await;
}

#[tokio::test]
async fn sqlite_locked_by_another_process_under_mixed_load_loses_nothing() {
    let app = spawn_app(AppOptions::real().sqlite()).await;
    wait_until_serving(&app).await;
    let Some(Db::Sqlite(dir)) = &app.db else { unreachable!() };
    let path = dir.path().join("authgate.db");
    let file = path.clone();
    let (ledger, _) = under_load(&app, || async move {
        // Another process's write lock, held past authgate's 5 s busy timeout.
        use sqlx::Connection;
        let mut other =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display())).await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE").execute(&mut other).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5500)).await;
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    })
    .await;
    assert!(ledger.failures() > 0, "the lock was not felt: {:?}", ledger.counts);
    nothing_lost(&app, &Store::Sqlite(path), &ledger, "SQLite locked").await;
}

/// A small tmpfs mounted for one test (root only), unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        assert_eq!(unsafe_geteuid(), 0, "mounting a tmpfs needs root (CI runs as root)");
        let dir = tempfile::tempdir().unwrap();
        let options = format!("size={size},mode=0700");
        let status = StdCommand::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "authgate-test", dir.path().to_str().unwrap()])
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs failed");
        Self { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = StdCommand::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the file system under `dir` with a file until a write fails (ENOSPC); returns it.
fn fill(dir: &std::path::Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while file.write_all(&chunk).and_then(|()| file.sync_data()).is_ok() {}
    path
}

#[tokio::test]
async fn sqlite_on_a_full_disk_under_mixed_load_loses_nothing() {
    let disk = Tmpfs::mount("16m");
    let path = disk.dir.path().join("authgate.db");
    let options = AppOptions::real().sqlite().set("AUTHGATE_SQLITE_PATH", path.to_str().unwrap());
    let app = spawn_app(options).await;
    wait_until_serving(&app).await;
    let dir = disk.dir.path().to_path_buf();
    let (ledger, _) = under_load(&app, || async move {
        // The disk full for three seconds, then space again.
        let filler = tokio::task::spawn_blocking(move || fill(&dir)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        std::fs::remove_file(filler).unwrap();
    })
    .await;
    assert!(ledger.failures() > 0, "the full disk was not felt: {:?}", ledger.counts);
    nothing_lost(&app, &Store::Sqlite(path), &ledger, "SQLite on a full disk").await;
    app.stop().await;
}

// ------------------------------------------------------------------ provider faults --

/// A login at the fake provider, `n` making its code unique; the result and how long the
/// exchange took.
async fn fake_login(
    app: &TestApp,
    fake: &FakeProvider,
    n: usize,
) -> (Result<String, Status>, Duration) {
    let started =
        app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap().into_inner();
    let nonce = query_param(&started.login_url, "nonce").unwrap();
    let code = format!("code-{n}-{}", rand::random::<u64>());
    fake.answer_for_code(&code, fake.id_token(&fake.valid_claims(TEST_CLIENT_ID, &nonce)));
    let request = ExchangeCodeRequest {
        code,
        state: started.state,
        binding: started.binding,
        ..Default::default()
    };
    let at = Instant::now();
    let result = app.grpc.clone().exchange_code(request).await;
    (result.map(|r| r.into_inner().access_token), at.elapsed())
}

/// Turns a fault on (true) or off (false).
type Switch = Box<dyn Fn(bool)>;

#[tokio::test]
async fn provider_faults_under_load_fail_fast_and_leave_checks_alone() {
    let (fake, proxy) = FakeProvider::start_behind_proxy().await;
    let timeout = Duration::from_secs(1);
    let app =
        crate::provider_faults::fake_app_with(&fake, &[("AUTHGATE_PROVIDER_TIMEOUT", "1")]).await;
    let app = Arc::new(app);
    let fake = Arc::new(fake);
    let mut tokens = Vec::new();
    for n in 0..4 {
        tokens.push(fake_login(&app, &fake, n).await.0.unwrap());
    }

    // The fleet's checks run the whole time: ValidateToken and the health check.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut checkers = Vec::new();
    for token in tokens {
        let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
        checkers.push(tokio::spawn(async move {
            let (mut checks, mut failures) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let verdict = app
                    .grpc
                    .clone()
                    .validate_token(ValidateTokenRequest { token: token.clone() })
                    .await;
                if !verdict.as_ref().is_ok_and(|v| v.get_ref().valid) {
                    failures.push(format!("{verdict:?}"));
                }
                let health =
                    app.health.clone().check(tonic_health::pb::HealthCheckRequest::default()).await;
                if health.ok().map(|h| h.into_inner().status) != Some(1) {
                    failures.push("health check not SERVING".into());
                }
                checks += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (checks, failures)
        }));
    }

    let faults: Vec<(&str, Switch)> = vec![
        ("slow (every call past the timeout)", {
            let fake = Arc::clone(&fake);
            Box::new(move |on| {
                fake.delay_token(if on {
                    timeout + Duration::from_millis(600)
                } else {
                    Duration::ZERO
                })
            })
        }),
        ("HTTP 500", {
            let fake = Arc::clone(&fake);
            Box::new(move |on| {
                let body = serde_json::json!({"error": "server_error"});
                fake.set_token_fault(on.then_some(TokenAnswer::Error { status: 500, body }));
            })
        }),
        ("HTTP 429", {
            let fake = Arc::clone(&fake);
            Box::new(move |on| {
                let body = serde_json::json!({"error": "invalid_grant", "error_description": "rate limited"});
                fake.set_token_fault(on.then_some(TokenAnswer::Error { status: 429, body }));
            })
        }),
        ("gone", Box::new(move |on| proxy.set_down(on))),
    ];
    let mut n = 100;
    for (what, set) in &faults {
        set(true);
        let logins = (0..6).map(|i| fake_login(&app, &fake, n + i));
        let results = futures_util::future::join_all(logins).await;
        for (result, took) in &results {
            let err = result.as_ref().expect_err(what);
            assert_eq!(err.code(), Code::Unavailable, "{what}: {err:?}");
            // Within provider_timeout (plus scheduling slack on a loaded machine).
            assert!(
                *took < timeout + Duration::from_millis(1500),
                "{what}: UNAVAILABLE after {took:?}"
            );
        }
        set(false);
        // Logins work again as soon as the provider does: the very next ones succeed.
        let logins = (0..6).map(|i| fake_login(&app, &fake, n + 50 + i));
        for (result, _) in futures_util::future::join_all(logins).await {
            assert!(result.is_ok(), "{what}, then recovered: {result:?}");
        }
        n += 100;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for checker in checkers {
        let (checks, failures) = checker.await.unwrap();
        assert!(checks > 10, "the checks ran ({checks})");
        assert!(failures.is_empty(), "checks failed during provider faults: {failures:?}");
    }
}
