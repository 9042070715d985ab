//! The SQL, written once and compiled for both back ends. PostgreSQL and SQLite (through sqlx)
//! both accept `$n` placeholders, `RETURNING`, and the column types used here (BIGINT/INTEGER as
//! `i64`, BYTEA/BLOB as `Vec<u8>`, TEXT as `String`), so one macro body serves both.

use super::{
    Consumed, LoginAttempt, RefreshUse, Rotation, SessionRecord, StoreError, StoredSigningKey,
};

/// The columns a new session is inserted with.
const SESSION_COLUMNS: &str = "id, subject, profile, provider_access_token, provider_refresh_token, \
     provider_id_token, provider_sid, provider_token_expires_at, created_at, expires_at, revoked_at, \
     cookie_hash";
/// The columns a [`SessionRecord`] is read from.
const SESSION_SELECT: &str = "id, subject, profile, provider_access_token, provider_refresh_token, \
     provider_id_token, provider_sid, provider_token_expires_at, created_at, expires_at, revoked_at, \
     cookie_hash, last_used_at, provider_checked_at";

macro_rules! sql_store {
    ($name:ident, $db:ty, $migrations:literal) => {
        #[derive(Clone, Debug)]
        pub struct $name {
            pool: sqlx::Pool<$db>,
        }

        impl $name {
            pub fn new(pool: sqlx::Pool<$db>) -> Self {
                Self { pool }
            }

            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            pub async fn migrate(&self) -> Result<(), StoreError> {
                sqlx::migrate!($migrations).run(&self.pool).await?;
                Ok(())
            }

            pub async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            pub async fn insert_attempt(&self, a: &LoginAttempt) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO login_attempts \
                     (state_hash, binding_hash, nonce, pkce_verifier, redirect_uri, return_to, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&a.state_hash)
                .bind(&a.binding_hash)
                .bind(&a.nonce)
                .bind(&a.pkce_verifier)
                .bind(&a.redirect_uri)
                .bind(&a.return_to)
                .bind(a.created_at)
                .bind(a.expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            pub async fn consume_attempt(
                &self,
                state_hash: &[u8],
                binding_hash: &[u8],
            ) -> Result<Consumed, StoreError> {
                let row: Option<LoginAttempt> = sqlx::query_as(
                    "DELETE FROM login_attempts WHERE state_hash = $1 AND binding_hash = $2 \
                     RETURNING state_hash, binding_hash, nonce, pkce_verifier, redirect_uri, return_to, created_at, expires_at",
                )
                .bind(state_hash)
                .bind(binding_hash)
                .fetch_optional(&self.pool)
                .await?;
                if let Some(attempt) = row {
                    return Ok(Consumed::Attempt(attempt));
                }
                let exists: Option<i64> =
                    sqlx::query_scalar("SELECT expires_at FROM login_attempts WHERE state_hash = $1")
                        .bind(state_hash)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(if exists.is_some() { Consumed::WrongBinding } else { Consumed::NotFound })
            }

            pub async fn sweep_expired_attempts(&self, now: i64) -> Result<u64, StoreError> {
                let done = sqlx::query("DELETE FROM login_attempts WHERE expires_at < $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            pub async fn count_pending_attempts(&self, now: i64) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar("SELECT COUNT(*) FROM login_attempts WHERE expires_at >= $1")
                    .bind(now)
                    .fetch_one(&self.pool)
                    .await?)
            }

            pub async fn find_refresh_handle(&self, handle_hash: &[u8]) -> Result<RefreshUse, StoreError> {
                let row: Option<(String, Option<i64>)> = sqlx::query_as(
                    "SELECT session_id, used_at FROM refresh_handles WHERE handle_hash = $1",
                )
                .bind(handle_hash)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match row {
                    None => RefreshUse::NotFound,
                    Some((id, None)) => RefreshUse::Fresh(id),
                    Some((id, Some(_))) => RefreshUse::Reused(id),
                })
            }

            pub async fn refresh_successor(
                &self,
                handle_hash: &[u8],
                now: i64,
            ) -> Result<Option<Vec<u8>>, StoreError> {
                let row: Option<(Option<Vec<u8>>,)> = sqlx::query_as(
                    "SELECT successor_sealed FROM refresh_handles \
                     WHERE handle_hash = $1 AND used_at IS NOT NULL AND grace_until >= $2",
                )
                .bind(handle_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.and_then(|(sealed,)| sealed))
            }

            pub async fn acquire_refresh_lease(
                &self,
                session_id: &str,
                lease: &str,
                until: i64,
                now: i64,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE sessions SET refresh_lease = $2, refresh_lease_until = $3 \
                     WHERE id = $1 AND revoked_at IS NULL \
                     AND (refresh_lease_until IS NULL OR refresh_lease_until < $4)",
                )
                .bind(session_id)
                .bind(lease)
                .bind(until)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            pub async fn end_refresh_lease(
                &self,
                s: &SessionRecord,
                lease: &str,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE sessions SET provider_access_token = $3, provider_refresh_token = $4, \
                     provider_id_token = $5, provider_token_expires_at = $6, \
                     refresh_lease = NULL, refresh_lease_until = NULL \
                     WHERE id = $1 AND refresh_lease = $2",
                )
                .bind(&s.id)
                .bind(lease)
                .bind(&s.provider_access_token)
                .bind(&s.provider_refresh_token)
                .bind(&s.provider_id_token)
                .bind(s.provider_token_expires_at)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            pub async fn rotate_refresh_handle(
                &self,
                old_hash: &[u8],
                new_hash: &[u8],
                s: &SessionRecord,
                lease: Option<&str>,
                grace: Option<(&[u8], i64)>,
                now: i64,
            ) -> Result<Rotation, StoreError> {
                let mut tx = self.pool.begin().await?;
                let used = sqlx::query(
                    "UPDATE refresh_handles SET used_at = $2, successor_sealed = $3, grace_until = $4 \
                     WHERE handle_hash = $1 AND used_at IS NULL",
                )
                .bind(old_hash)
                .bind(now)
                .bind(grace.map(|(sealed, _)| sealed))
                .bind(grace.map(|(_, until)| until))
                .execute(&mut *tx)
                .await?;
                if used.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(Rotation::HandleUsed);
                }
                sqlx::query(
                    "INSERT INTO refresh_handles (handle_hash, session_id, created_at) VALUES ($1, $2, $3)",
                )
                .bind(new_hash)
                .bind(&s.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let updated = sqlx::query(
                    "UPDATE sessions SET profile = $3, provider_access_token = $4, \
                     provider_refresh_token = $5, provider_id_token = $6, \
                     provider_token_expires_at = $7, last_used_at = $8, provider_checked_at = $9, \
                     refresh_lease = NULL, refresh_lease_until = NULL \
                     WHERE id = $1 AND revoked_at IS NULL \
                     AND ($2 IS NULL OR refresh_lease = $2)",
                )
                .bind(&s.id)
                .bind(lease)
                .bind(&s.profile)
                .bind(&s.provider_access_token)
                .bind(&s.provider_refresh_token)
                .bind(&s.provider_id_token)
                .bind(s.provider_token_expires_at)
                .bind(now)
                .bind(s.provider_checked_at)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(Rotation::SessionChanged);
                }
                tx.commit().await?;
                Ok(Rotation::Rotated)
            }

            pub async fn touch_session(&self, id: &str, now: i64) -> Result<(), StoreError> {
                sqlx::query("UPDATE sessions SET last_used_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            pub async fn revoke_session(&self, id: &str, now: i64) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            pub async fn revoke_for_logout_token(
                &self,
                jti: &str,
                remember_until: i64,
                provider_sid: Option<&str>,
                subject: Option<&str>,
                now: i64,
            ) -> Result<Option<Vec<String>>, StoreError> {
                // One transaction: the `jti` is remembered exactly when the revocation commits,
                // so a provider retrying after a failure is not taken for a replay. A second
                // delivery racing the first waits on the `jti` key and then sees it.
                let mut tx = self.pool.begin().await?;
                let first = sqlx::query(
                    "INSERT INTO logout_token_jtis (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
                )
                .bind(jti)
                .bind(remember_until)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !first {
                    tx.rollback().await?;
                    return Ok(None);
                }
                let query = match (provider_sid, subject) {
                    (Some(sid), Some(sub)) => sqlx::query_scalar(
                        "UPDATE sessions SET revoked_at = $3 WHERE provider_sid = $1 AND subject = $2 \
                         AND revoked_at IS NULL RETURNING id",
                    )
                    .bind(sid)
                    .bind(sub),
                    (Some(sid), None) => sqlx::query_scalar(
                        "UPDATE sessions SET revoked_at = $3 WHERE provider_sid = $1 AND $2 IS NULL \
                         AND revoked_at IS NULL RETURNING id",
                    )
                    .bind(sid)
                    .bind(None::<String>),
                    (None, Some(sub)) => sqlx::query_scalar(
                        "UPDATE sessions SET revoked_at = $3 WHERE subject = $1 AND $2 IS NULL \
                         AND revoked_at IS NULL RETURNING id",
                    )
                    .bind(sub)
                    .bind(None::<String>),
                    (None, None) => return Ok(Some(Vec::new())),
                };
                let revoked = query.bind(now).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(Some(revoked))
            }

            pub async fn revoked_since(&self, since: i64, limit: i64) -> Result<Vec<(String, i64)>, StoreError> {
                Ok(sqlx::query_as(
                    "SELECT id, revoked_at FROM sessions WHERE revoked_at IS NOT NULL AND revoked_at >= $1 \
                     ORDER BY revoked_at DESC LIMIT $2",
                )
                .bind(since)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            pub async fn sweep_ended_sessions(&self, now: i64, grace: i64, idle: i64) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin().await?;
                let cutoff = now - grace;
                const ENDED: &str = "expires_at < $1 OR revoked_at < $1 \
                     OR COALESCE(last_used_at, created_at) + $2 < $1";
                sqlx::query(&format!(
                    "DELETE FROM refresh_handles WHERE session_id IN (SELECT id FROM sessions WHERE {ENDED})"
                ))
                .bind(cutoff)
                .bind(idle)
                .execute(&mut *tx)
                .await?;
                let done = sqlx::query(&format!("DELETE FROM sessions WHERE {ENDED}"))
                    .bind(cutoff)
                    .bind(idle)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM logout_token_jtis WHERE expires_at < $1")
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                // Successors kept for a refresh grace that has passed are of no further use.
                sqlx::query(
                    "UPDATE refresh_handles SET successor_sealed = NULL, grace_until = NULL \
                     WHERE grace_until < $1",
                )
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }

            pub async fn delete_signing_key(&self, kid: &str) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
                    .bind(kid)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            pub async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {SESSION_SELECT} FROM sessions WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            pub async fn get_session_by_cookie(
                &self,
                cookie_hash: &[u8],
            ) -> Result<Option<SessionRecord>, StoreError> {
                Ok(sqlx::query_as(&format!("SELECT {SESSION_SELECT} FROM sessions WHERE cookie_hash = $1"))
                    .bind(cookie_hash)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            pub async fn update_session_profile(
                &self,
                id: &str,
                profile_json: &str,
                provider_access_token: Option<(&[u8], Option<i64>)>,
            ) -> Result<bool, StoreError> {
                let done = match provider_access_token {
                    Some((token, expires_at)) => {
                        sqlx::query(
                            "UPDATE sessions SET profile = $2, provider_access_token = $3, \
                             provider_token_expires_at = $4 WHERE id = $1 AND revoked_at IS NULL",
                        )
                        .bind(id)
                        .bind(profile_json)
                        .bind(token)
                        .bind(expires_at)
                        .execute(&self.pool)
                        .await?
                    }
                    None => {
                        sqlx::query("UPDATE sessions SET profile = $2 WHERE id = $1 AND revoked_at IS NULL")
                            .bind(id)
                            .bind(profile_json)
                            .execute(&self.pool)
                            .await?
                    }
                };
                Ok(done.rows_affected() == 1)
            }

            pub async fn insert_signing_key(&self, k: &StoredSigningKey) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO signing_keys \
                     (kid, algorithm, private_key, public_jwk, created_at, activates_at, retires_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&k.kid)
                .bind(&k.algorithm)
                .bind(&k.private_key)
                .bind(&k.public_jwk)
                .bind(k.created_at)
                .bind(k.activates_at)
                .bind(k.retires_at)
                .bind(k.expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            pub async fn list_signing_keys(&self, now: i64) -> Result<Vec<StoredSigningKey>, StoreError> {
                Ok(sqlx::query_as(
                    "SELECT kid, algorithm, private_key, public_jwk, created_at, activates_at, retires_at, expires_at \
                     FROM signing_keys WHERE expires_at IS NULL OR expires_at > $1 \
                     ORDER BY activates_at, kid",
                )
                .bind(now)
                .fetch_all(&self.pool)
                .await?)
            }
        }
    };
}

sql_store!(PgStore, sqlx::Postgres, "migrations/postgres");
sql_store!(SqliteStore, sqlx::Sqlite, "migrations/sqlite");

// The two hottest writes get a statement of their own on PostgreSQL: one prepared statement
// for any batch size, and one round trip for a session and its first refresh handle.

impl PgStore {
    /// Inserts several attempts with one statement (one round trip, one commit), whatever
    /// their number: the columns travel as arrays and UNNEST turns them into rows.
    pub async fn insert_attempts(&self, attempts: &[LoginAttempt]) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&LoginAttempt) -> Vec<u8>| attempts.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO login_attempts \
             (state_hash, binding_hash, nonce, pkce_verifier, redirect_uri, return_to, created_at, expires_at) \
             SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::int8[], $8::int8[])",
        )
        .bind(column(|a| a.state_hash.clone()))
        .bind(column(|a| a.binding_hash.clone()))
        .bind(attempts.iter().map(|a| a.nonce.clone()).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.pkce_verifier.clone()).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.redirect_uri.clone()).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.return_to.clone()).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.created_at).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.expires_at).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Consumes several attempts with one statement (all or nothing): each request gets the
    /// attempt it deleted, and a request that deleted nothing learns whether its state exists
    /// (wrong binding) or not. Two requests for the same state in one batch: the first gets it.
    pub async fn consume_attempts(
        &self,
        requests: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Vec<Consumed>, StoreError> {
        let states: Vec<Vec<u8>> = requests.iter().map(|(s, _)| s.clone()).collect();
        let bindings: Vec<Vec<u8>> = requests.iter().map(|(_, b)| b.clone()).collect();
        // The deleted rows, then the states that exist and were not deleted (the second part
        // reads the statement's snapshot, taken before the delete).
        let rows: Vec<ConsumeRow> = sqlx::query_as(
            "WITH req AS (SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) AS r(state_hash, binding_hash)), \
             del AS (DELETE FROM login_attempts a USING req \
             WHERE a.state_hash = req.state_hash AND a.binding_hash = req.binding_hash \
             RETURNING a.state_hash, a.binding_hash, a.nonce, a.pkce_verifier, a.redirect_uri, \
             a.return_to, a.created_at, a.expires_at) \
             SELECT state_hash, binding_hash, nonce, pkce_verifier, redirect_uri, return_to, \
             created_at, expires_at FROM del \
             UNION ALL \
             SELECT a.state_hash, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM login_attempts a \
             WHERE a.state_hash = ANY($1) \
             AND NOT EXISTS (SELECT 1 FROM del WHERE del.state_hash = a.state_hash)",
        )
        .bind(&states)
        .bind(&bindings)
        .fetch_all(&self.pool)
        .await?;
        let (mut deleted, mut existing) = (Vec::new(), Vec::new());
        for row in rows {
            match row.into_attempt() {
                Ok(attempt) => deleted.push(attempt),
                Err(state) => existing.push(state),
            }
        }
        Ok(requests
            .iter()
            .map(|(state, binding)| {
                match deleted
                    .iter()
                    .position(|a| &a.state_hash == state && &a.binding_hash == binding)
                {
                    Some(i) => Consumed::Attempt(deleted.swap_remove(i)),
                    None if existing.contains(state) => Consumed::WrongBinding,
                    None => Consumed::NotFound,
                }
            })
            .collect())
    }

    /// Several sessions and their first refresh handles in one statement (atomic).
    pub async fn insert_sessions(
        &self,
        sessions: &[(SessionRecord, Vec<u8>)],
    ) -> Result<(), StoreError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&SessionRecord) -> String| {
            sessions.iter().map(|(s, _)| f(s)).collect::<Vec<_>>()
        };
        let bytes = |f: fn(&SessionRecord) -> Option<Vec<u8>>| {
            sessions.iter().map(|(s, _)| f(s)).collect::<Vec<_>>()
        };
        let int = |f: fn(&SessionRecord) -> Option<i64>| {
            sessions.iter().map(|(s, _)| f(s)).collect::<Vec<_>>()
        };
        sqlx::query(&format!(
            "WITH s AS (INSERT INTO sessions ({SESSION_COLUMNS}) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[], \
             $6::bytea[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::bytea[])) \
             INSERT INTO refresh_handles (handle_hash, session_id, created_at) \
             SELECT * FROM UNNEST($13::bytea[], $14::text[], $15::int8[])"
        ))
        .bind(col(|s| s.id.clone()))
        .bind(col(|s| s.subject.clone()))
        .bind(col(|s| s.profile.clone()))
        .bind(bytes(|s| s.provider_access_token.clone()))
        .bind(bytes(|s| s.provider_refresh_token.clone()))
        .bind(bytes(|s| s.provider_id_token.clone()))
        .bind(sessions.iter().map(|(s, _)| s.provider_sid.clone()).collect::<Vec<_>>())
        .bind(int(|s| s.provider_token_expires_at))
        .bind(int(|s| Some(s.created_at)))
        .bind(int(|s| Some(s.expires_at)))
        .bind(int(|s| s.revoked_at))
        .bind(bytes(|s| s.cookie_hash.clone()))
        .bind(sessions.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>())
        .bind(col(|s| s.id.clone()))
        .bind(int(|s| Some(s.created_at)))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A session and its first refresh handle in one statement (atomic by itself).
    pub async fn insert_session(
        &self,
        s: &SessionRecord,
        refresh_handle_hash: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "WITH s AS (INSERT INTO sessions ({SESSION_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id) \
             INSERT INTO refresh_handles (handle_hash, session_id, created_at) SELECT $13, id, $9 FROM s"
        ))
        .bind(&s.id)
        .bind(&s.subject)
        .bind(&s.profile)
        .bind(&s.provider_access_token)
        .bind(&s.provider_refresh_token)
        .bind(&s.provider_id_token)
        .bind(&s.provider_sid)
        .bind(s.provider_token_expires_at)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.revoked_at)
        .bind(&s.cookie_hash)
        .bind(refresh_handle_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// A row of [`PgStore::consume_attempts`]: a deleted attempt, or (binding and the rest null) a
/// state that exists but was not deleted.
#[derive(sqlx::FromRow)]
struct ConsumeRow {
    state_hash: Vec<u8>,
    binding_hash: Option<Vec<u8>>,
    nonce: Option<String>,
    pkce_verifier: Option<String>,
    redirect_uri: Option<String>,
    return_to: Option<String>,
    created_at: Option<i64>,
    expires_at: Option<i64>,
}

impl ConsumeRow {
    fn into_attempt(self) -> Result<LoginAttempt, Vec<u8>> {
        match (
            self.binding_hash,
            self.nonce,
            self.pkce_verifier,
            self.redirect_uri,
            self.created_at,
            self.expires_at,
        ) {
            (
                Some(binding_hash),
                Some(nonce),
                Some(pkce_verifier),
                Some(redirect_uri),
                Some(created_at),
                Some(expires_at),
            ) => Ok(LoginAttempt {
                state_hash: self.state_hash,
                binding_hash,
                nonce,
                pkce_verifier,
                redirect_uri,
                return_to: self.return_to,
                created_at,
                expires_at,
            }),
            _ => Err(self.state_hash),
        }
    }
}

impl SqliteStore {
    /// One by one (SQLite serialises writes anyway), in one transaction: all or nothing.
    pub async fn consume_attempts(
        &self,
        requests: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Vec<Consumed>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut results = Vec::with_capacity(requests.len());
        for (state, binding) in requests {
            let row: Option<LoginAttempt> = sqlx::query_as(
                "DELETE FROM login_attempts WHERE state_hash = $1 AND binding_hash = $2 \
                 RETURNING state_hash, binding_hash, nonce, pkce_verifier, redirect_uri, return_to, created_at, expires_at",
            )
            .bind(state)
            .bind(binding)
            .fetch_optional(&mut *tx)
            .await?;
            results.push(match row {
                Some(attempt) => Consumed::Attempt(attempt),
                None => {
                    let exists: Option<i64> = sqlx::query_scalar(
                        "SELECT expires_at FROM login_attempts WHERE state_hash = $1",
                    )
                    .bind(state)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if exists.is_some() { Consumed::WrongBinding } else { Consumed::NotFound }
                }
            });
        }
        tx.commit().await?;
        Ok(results)
    }

    /// All in one transaction.
    pub async fn insert_sessions(
        &self,
        sessions: &[(SessionRecord, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (s, handle) in sessions {
            insert_session_sqlite(&mut tx, s, handle).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Inserts several attempts in one statement (one round trip, one commit).
    pub async fn insert_attempts(&self, attempts: &[LoginAttempt]) -> Result<(), StoreError> {
        if attempts.is_empty() {
            return Ok(());
        }
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO login_attempts \
                     (state_hash, binding_hash, nonce, pkce_verifier, redirect_uri, return_to, created_at, expires_at) ",
        );
        q.push_values(attempts, |mut row, a| {
            row.push_bind(&a.state_hash)
                .push_bind(&a.binding_hash)
                .push_bind(&a.nonce)
                .push_bind(&a.pkce_verifier)
                .push_bind(&a.redirect_uri)
                .push_bind(&a.return_to)
                .push_bind(a.created_at)
                .push_bind(a.expires_at);
        });
        q.build().execute(&self.pool).await?;
        Ok(())
    }

    /// A session and its first refresh handle, in one transaction.
    pub async fn insert_session(
        &self,
        s: &SessionRecord,
        refresh_handle_hash: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_session_sqlite(&mut tx, s, refresh_handle_hash).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn insert_session_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    s: &SessionRecord,
    refresh_handle_hash: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(&s.id)
    .bind(&s.subject)
    .bind(&s.profile)
    .bind(&s.provider_access_token)
    .bind(&s.provider_refresh_token)
    .bind(&s.provider_id_token)
    .bind(&s.provider_sid)
    .bind(s.provider_token_expires_at)
    .bind(s.created_at)
    .bind(s.expires_at)
    .bind(s.revoked_at)
    .bind(&s.cookie_hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_handles (handle_hash, session_id, created_at) VALUES ($1, $2, $3)",
    )
    .bind(refresh_handle_hash)
    .bind(&s.id)
    .bind(s.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
