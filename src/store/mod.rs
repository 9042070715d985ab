//! Persistence: login attempts, sessions and signing keys, on PostgreSQL (production, shared by
//! every replica) or an embedded SQLite file (the default when no `DATABASE_URL` is set).
//!
//! Both back ends run the same SQL (written once in [`sql`]); only the migrations differ. All
//! timestamps are unix seconds. Secrets are hashed (handles) or encrypted (provider tokens,
//! private keys) before they reach this module.

mod batch;
mod sql;

use std::{str::FromStr, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::config::DatabaseConfig;
pub use batch::Batcher;
pub use sql::{PgStore, SqliteStore};

/// A pending login, created by GetLoginUrl and consumed once by ExchangeCode.
#[derive(Clone, sqlx::FromRow)]
pub struct LoginAttempt {
    /// SHA-256 of the `state` handed to the browser; the state itself is never stored.
    pub state_hash: Vec<u8>,
    /// SHA-256 of the user-agent binding secret.
    pub binding_hash: Vec<u8>,
    /// The OpenID Connect nonce the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier (S256 challenge sent to the provider).
    pub pkce_verifier: String,
    pub redirect_uri: String,
    /// Server-side flow only: where to send the browser after login (allow-listed).
    pub return_to: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for LoginAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAttempt")
            .field("redirect_uri", &self.redirect_uri)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What consuming an attempt found.
#[derive(Debug, Clone)]
pub enum Consumed {
    /// The attempt existed with this binding and is now deleted; nobody else can consume it.
    Attempt(LoginAttempt),
    /// The state exists but the binding differs; the attempt is left in place.
    WrongBinding,
    /// No attempt has this state (never issued, already consumed, or swept).
    NotFound,
}

/// What looking up a refresh handle found.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshUse {
    /// The handle is unused; it belongs to this session.
    Fresh(String),
    /// The handle was already used: a replay, which revokes this session.
    Reused(String),
    /// No such handle.
    NotFound,
}

/// What rotating a refresh handle did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The old handle is used, the new one stored and the session updated — all at once.
    Rotated,
    /// The old handle was used meanwhile (a concurrent use of the same handle); nothing was
    /// written.
    HandleUsed,
    /// The session was revoked meanwhile, or another refresh took over its lease; nothing was
    /// written.
    SessionChanged,
}

/// A signed-in user's session.
#[derive(Clone, sqlx::FromRow)]
pub struct SessionRecord {
    /// Random id; the `sid` claim of authgate's JWTs.
    pub id: String,
    pub subject: String,
    /// The profile as JSON (see [`crate::domain::Profile`]).
    pub profile: String,
    /// Provider tokens, each encrypted with [`crate::crypto::Cipher`].
    pub provider_access_token: Option<Vec<u8>>,
    pub provider_refresh_token: Option<Vec<u8>>,
    pub provider_id_token: Option<Vec<u8>>,
    /// The provider's `sid` claim, to match back-channel logouts.
    pub provider_sid: Option<String>,
    pub provider_token_expires_at: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// Server-side flow only: SHA-256 of the HttpOnly session cookie.
    pub cookie_hash: Option<Vec<u8>>,
    /// When the session was last refreshed or used by its cookie (`None`: not since it
    /// began); the idle timeout counts from here.
    #[sqlx(default)]
    pub last_used_at: Option<i64>,
    /// When the session was last refreshed at the provider (`None`: not since sign-in).
    #[sqlx(default)]
    pub provider_checked_at: Option<i64>,
}

impl SessionRecord {
    /// Whether the session may still be used at `now`: not revoked, younger than its maximum
    /// age, and used within `idle_timeout` seconds.
    pub fn is_live(&self, now: i64, idle_timeout: i64) -> bool {
        self.revoked_at.is_none()
            && now < self.expires_at
            && now < self.last_used_at.unwrap_or(self.created_at).saturating_add(idle_timeout)
    }
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("id", &self.id)
            .field("subject", &self.subject)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// One of authgate's own signing keys.
#[derive(Clone, sqlx::FromRow)]
pub struct StoredSigningKey {
    pub kid: String,
    pub algorithm: String,
    /// PKCS#8 DER private key, encrypted.
    pub private_key: Vec<u8>,
    /// The public key as a JWK (JSON).
    pub public_jwk: String,
    pub created_at: i64,
    pub activates_at: i64,
    pub retires_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is refusing work; retrying later may help.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A row already exists with this key.
    #[error("duplicate record: {0}")]
    Duplicate(String),
    /// Anything else (bad SQL, corrupt data): a bug or an operator problem.
    #[error("database error: {0}")]
    Other(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            // Protocol: the connection broke mid-conversation (e.g. dropped during the TLS
            // negotiation by a proxy whose backend is gone).
            E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed => Self::Unavailable(e.to_string()),
            E::Database(db) => {
                let code = db.code().unwrap_or_default();
                // SQLite reports extended codes (BUSY_SNAPSHOT is 517): the primary code is the
                // low byte. 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL (the disk).
                let sqlite_transient = db
                    .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                    .and_then(|e| sqlx::error::DatabaseError::code(e)?.parse::<i32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13));
                // PostgreSQL: class 08 connection exception, 57P0x shutdown, 53xxx resources
                // (53100: disk full), 3D000 database missing.
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code.starts_with("53")
                    || code == "3D000"
                    || sqlite_transient
                {
                    Self::Unavailable(db.message().to_string())
                } else if db.is_unique_violation() {
                    Self::Duplicate(db.message().to_string())
                } else {
                    Self::Other(db.message().to_string())
                }
            }
            _ => Self::Other(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
            other => Self::Other(format!("migration failed: {other}")),
        }
    }
}

/// How long a request waits for a database connection before answering UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The store, on whichever back end the configuration names.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// Runs the same method on whichever back end this is.
macro_rules! on_backend {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Postgres($s) => $e,
            Store::Sqlite($s) => $e,
        }
    };
}

/// An idle connection older than this is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

impl Store {
    /// Opens a connection pool. Connections are made lazily, so start-up succeeds while the
    /// database is down; health reports NOT_SERVING until it answers.
    pub fn connect(config: &DatabaseConfig, max_connections: u32) -> Result<Self, StoreError> {
        match config {
            DatabaseConfig::Postgres(url) => {
                let options = PgConnectOptions::from_str(url.expose())
                    .map_err(|e| StoreError::Other(format!("DATABASE_URL is not valid: {e}")))?
                    .application_name("authgate");
                // sqlx pings every idle connection before handing it out: a round trip per
                // statement. Ping only connections that sat idle for a while (as HikariCP
                // does): a busy connection has just proved itself, and sqlx already pings on
                // release and drops a connection whose ping or query failed.
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_IF_IDLE_FOR {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_lazy_with(options);
                Ok(Store::Postgres(PgStore::new(pool)))
            }
            DatabaseConfig::Sqlite(path) => {
                let in_memory = path.as_os_str() == ":memory:";
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(if in_memory {
                        SqliteJournalMode::Memory
                    } else {
                        SqliteJournalMode::Wal
                    })
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    // An in-memory database exists per connection: keep exactly one.
                    .max_connections(if in_memory { 1 } else { max_connections.min(8) })
                    .min_connections(if in_memory { 1 } else { 0 })
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    // A file database's connection left inside a transaction is closed (an
                    // in-memory database lives in its one connection: it is kept).
                    .after_release(move |conn, _meta| {
                        Box::pin(
                            async move { Ok(in_memory || sqlite_connection_is_clean(conn).await?) },
                        )
                    })
                    .connect_lazy_with(options);
                Ok(Store::Sqlite(SqliteStore::new(pool)))
            }
        }
    }

    /// Connections in the pool: (open, idle, maximum).
    pub fn pool_stats(&self) -> (u32, u32, u32) {
        match self {
            Store::Postgres(s) => {
                let p = s.pool();
                (p.size(), p.num_idle() as u32, p.options().get_max_connections())
            }
            Store::Sqlite(s) => {
                let p = s.pool();
                (p.size(), p.num_idle() as u32, p.options().get_max_connections())
            }
        }
    }

    /// The `db.system` of the OpenTelemetry semantic conventions.
    pub fn db_system(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgresql",
            Store::Sqlite(_) => "sqlite",
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Applies the embedded migrations (idempotent).
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "migrate", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn migrate(&self) -> Result<(), StoreError> {
        on_backend!(self, s => s.migrate().await)
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self, s => s.ping().await)
    }

    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "insert_attempt", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn insert_attempt(&self, attempt: &LoginAttempt) -> Result<(), StoreError> {
        on_backend!(self, s => s.insert_attempt(attempt).await)
    }

    /// Inserts several attempts with one statement and one commit.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "insert_attempts", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn insert_attempts(&self, attempts: &[LoginAttempt]) -> Result<(), StoreError> {
        on_backend!(self, s => s.insert_attempts(attempts).await)
    }

    /// Atomically deletes and returns the attempt with this state and binding. Two concurrent
    /// calls for the same state cannot both get it: the DELETE decides.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "consume_attempt", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn consume_attempt(
        &self,
        state_hash: &[u8],
        binding_hash: &[u8],
    ) -> Result<Consumed, StoreError> {
        on_backend!(self, s => s.consume_attempt(state_hash, binding_hash).await)
    }

    /// [`Self::consume_attempt`] for several `(state_hash, binding_hash)` requests at once, one
    /// result per request, in order.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "consume_attempts", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn consume_attempts(
        &self,
        requests: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Vec<Consumed>, StoreError> {
        on_backend!(self, s => s.consume_attempts(requests).await)
    }

    /// Inserts several sessions, each with its first refresh handle, atomically.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "insert_sessions", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn insert_sessions(
        &self,
        sessions: &[(SessionRecord, Vec<u8>)],
    ) -> Result<(), StoreError> {
        on_backend!(self, s => s.insert_sessions(sessions).await)
    }

    /// Deletes attempts that expired before `now`; returns how many.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "sweep_expired_attempts", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn sweep_expired_attempts(&self, now: i64) -> Result<u64, StoreError> {
        on_backend!(self, s => s.sweep_expired_attempts(now).await)
    }

    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "count_pending_attempts", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn count_pending_attempts(&self, now: i64) -> Result<i64, StoreError> {
        on_backend!(self, s => s.count_pending_attempts(now).await)
    }

    /// Inserts a session and its first refresh handle, atomically.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "insert_session", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn insert_session(
        &self,
        session: &SessionRecord,
        refresh_handle_hash: &[u8],
    ) -> Result<(), StoreError> {
        on_backend!(self, s => s.insert_session(session, refresh_handle_hash).await)
    }

    /// What a refresh handle is (see [`RefreshUse`]); changes nothing.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "find_refresh_handle", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn find_refresh_handle(&self, handle_hash: &[u8]) -> Result<RefreshUse, StoreError> {
        on_backend!(self, s => s.find_refresh_handle(handle_hash).await)
    }

    /// Takes the session's refresh lease (`lease`, a random token, held until `until`) unless
    /// another holds it and it has not lapsed: one refresh at the provider at a time per
    /// session, across replicas. `false` when someone else holds it or the session is revoked.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "acquire_refresh_lease", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn acquire_refresh_lease(
        &self,
        session_id: &str,
        lease: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_backend!(self, s => s.acquire_refresh_lease(session_id, lease, until, now).await)
    }

    /// Gives the lease back without rotating the handle, storing the session's provider tokens
    /// as given (the provider may have rotated its refresh token even though the refresh did
    /// not complete). `false` if the lease was no longer held.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "end_refresh_lease", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn end_refresh_lease(
        &self,
        session: &SessionRecord,
        lease: &str,
    ) -> Result<bool, StoreError> {
        on_backend!(self, s => s.end_refresh_lease(session, lease).await)
    }

    /// Completes a refresh in one transaction: the old handle marked used (if it still is
    /// unused), the new one stored, the session's profile and provider tokens updated, its
    /// last use set and its lease (when `lease` is given, only if still held) released, and,
    /// with `grace`, the successor kept sealed on the used handle until then. Either all of it
    /// happens or none.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "rotate_refresh_handle", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn rotate_refresh_handle(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        session: &SessionRecord,
        lease: Option<&str>,
        grace: Option<(&[u8], i64)>,
        now: i64,
    ) -> Result<Rotation, StoreError> {
        on_backend!(self, s => s.rotate_refresh_handle(old_hash, new_hash, session, lease, grace, now).await)
    }

    /// The successor of a used refresh handle, sealed, while its grace lasts (see
    /// `refresh_grace`); `None` once it has passed or when none was kept.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "refresh_successor", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn refresh_successor(
        &self,
        handle_hash: &[u8],
        now: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        on_backend!(self, s => s.refresh_successor(handle_hash, now).await)
    }

    /// Records that the session was used now (the idle timeout counts from here).
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "touch_session", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn touch_session(&self, id: &str, now: i64) -> Result<(), StoreError> {
        on_backend!(self, s => s.touch_session(id, now).await)
    }

    /// Revokes a session; `false` if it was already revoked or does not exist.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "revoke_session", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn revoke_session(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        on_backend!(self, s => s.revoke_session(id, now).await)
    }

    /// Back-channel logout, atomically: records the logout token's `jti` (kept until
    /// `remember_until`) and revokes the live sessions with this provider session id (`sid`) —
    /// and this subject, when both are given — or, with no `sid`, with this subject. Returns
    /// the revoked session ids, or `None` when the `jti` was seen before (a replay). On error
    /// neither happened.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "revoke_for_logout_token", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn revoke_for_logout_token(
        &self,
        jti: &str,
        remember_until: i64,
        provider_sid: Option<&str>,
        subject: Option<&str>,
        now: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        on_backend!(self, s => s.revoke_for_logout_token(jti, remember_until, provider_sid, subject, now).await)
    }

    /// Sessions revoked at or after `since`: `(id, revoked_at)`.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "revoked_since", db.system = self.db_system(), otel.kind = "client"))]
    /// Sessions revoked at or after `since`, newest first, at most `limit` of them.
    pub async fn revoked_since(
        &self,
        since: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        on_backend!(self, s => s.revoked_since(since, limit).await)
    }

    /// Deletes what can no longer matter: sessions ended more than `grace` seconds ago —
    /// expired, revoked, or idle for longer than `idle` seconds — with their refresh handles,
    /// and expired logout `jti`s. Returns the number of sessions deleted.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "sweep_ended_sessions", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn sweep_ended_sessions(
        &self,
        now: i64,
        grace: i64,
        idle: i64,
    ) -> Result<u64, StoreError> {
        on_backend!(self, s => s.sweep_ended_sessions(now, grace, idle).await)
    }

    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "delete_signing_key", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn delete_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        on_backend!(self, s => s.delete_signing_key(kid).await)
    }

    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "get_session", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        on_backend!(self, s => s.get_session(id).await)
    }

    /// The session whose cookie hashes to `cookie_hash`.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "get_session_by_cookie", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn get_session_by_cookie(
        &self,
        cookie_hash: &[u8],
    ) -> Result<Option<SessionRecord>, StoreError> {
        on_backend!(self, s => s.get_session_by_cookie(cookie_hash).await)
    }

    /// Replaces the stored profile and, when given, the provider access token and its expiry.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "update_session_profile", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn update_session_profile(
        &self,
        id: &str,
        profile_json: &str,
        provider_access_token: Option<(&[u8], Option<i64>)>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, s => s.update_session_profile(id, profile_json, provider_access_token).await)
    }

    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "insert_signing_key", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn insert_signing_key(&self, key: &StoredSigningKey) -> Result<(), StoreError> {
        on_backend!(self, s => s.insert_signing_key(key).await)
    }

    /// Every signing key not yet expired at `now`, oldest first.
    #[tracing::instrument(name = "db", skip_all, fields(db.operation.name = "list_signing_keys", db.system = self.db_system(), otel.kind = "client"))]
    pub async fn list_signing_keys(&self, now: i64) -> Result<Vec<StoredSigningKey>, StoreError> {
        on_backend!(self, s => s.list_signing_keys(now).await)
    }
}

unsafe extern "C" {
    /// SQLite's own answer to "is this connection outside any transaction?" (linked in by sqlx).
    fn sqlite3_get_autocommit(db: *mut std::ffi::c_void) -> std::ffi::c_int;
}

/// Whether a released SQLite connection may go back to the pool: outside any transaction, by
/// SQLite's account and by sqlx's. Some errors (SQLITE_FULL, SQLITE_IOERR, SQLITE_BUSY) roll a
/// transaction back by themselves; sqlx's rollback on drop then fails and it still counts one
/// open, so the next `begin` on that connection would be a SAVEPOINT — whose rollback leaves a
/// transaction open that silently swallows every later write on the connection (acknowledged,
/// never committed). Such a connection is closed instead. Queued commands (the rollback of a
/// dropped transaction) run before the handle is locked, so both answers are current.
async fn sqlite_connection_is_clean(
    conn: &mut sqlx::SqliteConnection,
) -> Result<bool, sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    // SAFETY: the handle is valid and exclusively ours while locked; the call only reads a flag.
    let autocommit = unsafe { sqlite3_get_autocommit(handle.as_raw_handle().as_ptr().cast()) };
    drop(handle);
    let clean = autocommit != 0 && !sqlx::Connection::is_in_transaction(conn);
    if !clean {
        tracing::warn!(
            "an SQLite connection was left inside a transaction by an error; closing it"
        );
    }
    Ok(clean)
}
