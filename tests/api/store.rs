//! The store contract, run unchanged on PostgreSQL, an SQLite file and in-memory SQLite.

use std::{path::PathBuf, sync::Arc};

use authgate::{
    config::DatabaseConfig,
    crypto::sha256,
    secret::Secret,
    store::{Consumed, LoginAttempt, SessionRecord, Store, StoreError, StoredSigningKey},
    tokens::now,
};

use crate::helpers::*;

fn attempt(state: &str, binding: &str, expires_in: i64) -> LoginAttempt {
    LoginAttempt {
        state_hash: sha256(state.as_bytes()).to_vec(),
        binding_hash: sha256(binding.as_bytes()).to_vec(),
        nonce: "nonce".into(),
        pkce_verifier: "verifier".into(),
        redirect_uri: REDIRECT_URI.into(),
        return_to: Some("https://app.example.com/home".into()),
        created_at: now(),
        expires_at: now() + expires_in,
    }
}

fn session(id: &str) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        subject: "00u1".into(),
        profile: r#"{"sub":"00u1"}"#.into(),
        provider_access_token: Some(vec![1, 2, 3]),
        provider_refresh_token: None,
        provider_id_token: Some(vec![0, 255, 7]),
        provider_sid: Some("psid".into()),
        provider_token_expires_at: Some(now() + 3600),
        created_at: now(),
        expires_at: now() + 86400,
        revoked_at: None,
        cookie_hash: Some(sha256(id.as_bytes()).to_vec()),
    }
}

async fn exercise(store: Store) {
    store.migrate().await.unwrap();
    store.migrate().await.expect("migrations are idempotent");
    store.ping().await.unwrap();

    // Attempts are consumed exactly once, and only with the right binding.
    store.insert_attempt(&attempt("s1", "b1", 600)).await.unwrap();
    assert!(matches!(
        store.insert_attempt(&attempt("s1", "b1", 600)).await,
        Err(StoreError::Duplicate(_))
    ));
    let s1 = sha256(b"s1");
    assert!(matches!(
        store.consume_attempt(&s1, &sha256(b"wrong")).await.unwrap(),
        Consumed::WrongBinding
    ));
    match store.consume_attempt(&s1, &sha256(b"b1")).await.unwrap() {
        Consumed::Attempt(a) => {
            assert_eq!(a.nonce, "nonce");
            assert_eq!(a.pkce_verifier, "verifier");
            assert_eq!(a.redirect_uri, REDIRECT_URI);
            assert_eq!(a.return_to.as_deref(), Some("https://app.example.com/home"));
        }
        other => panic!("expected the attempt, got {other:?}"),
    }
    assert!(matches!(
        store.consume_attempt(&s1, &sha256(b"b1")).await.unwrap(),
        Consumed::NotFound
    ));

    // Racing consumers: exactly one wins.
    store.insert_attempt(&attempt("race", "b", 600)).await.unwrap();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(
                async move { store.consume_attempt(&sha256(b"race"), &sha256(b"b")).await },
            )
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if let Consumed::Attempt(_) = t.await.unwrap().unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);

    // Batched: several consumes in one statement, each with its own result; two requests for
    // the same state in one batch: only the first gets it.
    for (state, binding) in [("b1", "x"), ("b2", "y"), ("b3", "z")] {
        store.insert_attempt(&attempt(state, binding, 600)).await.unwrap();
    }
    let req = |s: &str, b: &str| (sha256(s.as_bytes()).to_vec(), sha256(b.as_bytes()).to_vec());
    let results = store
        .consume_attempts(&[
            req("b1", "x"),
            req("b1", "x"),
            req("b2", "wrong"),
            req("nope", "x"),
            req("b3", "z"),
        ])
        .await
        .unwrap();
    assert!(matches!(results[0], Consumed::Attempt(_)), "{results:?}");
    assert!(matches!(results[1], Consumed::NotFound), "{results:?}");
    assert!(matches!(results[2], Consumed::WrongBinding), "{results:?}");
    assert!(matches!(results[3], Consumed::NotFound), "{results:?}");
    assert!(matches!(results[4], Consumed::Attempt(_)), "{results:?}");
    assert!(matches!(
        store.consume_attempt(&sha256(b"b2"), &sha256(b"y")).await.unwrap(),
        Consumed::Attempt(_)
    ));
    // Batched inserts of attempts.
    let batch: Vec<LoginAttempt> =
        (0..50).map(|i| attempt(&format!("bulk-{i}"), "b", 600)).collect();
    store.insert_attempts(&batch).await.unwrap();
    assert!(matches!(
        store.consume_attempt(&sha256(b"bulk-49"), &sha256(b"b")).await.unwrap(),
        Consumed::Attempt(_)
    ));
    let bulk_states: Vec<_> = (0..49).map(|i| req(&format!("bulk-{i}"), "b")).collect();
    assert!(
        store
            .consume_attempts(&bulk_states)
            .await
            .unwrap()
            .iter()
            .all(|c| matches!(c, Consumed::Attempt(_)))
    );

    // Expired attempts are swept; live ones stay.
    store.insert_attempt(&attempt("old", "b", -10)).await.unwrap();
    store.insert_attempt(&attempt("live", "b", 600)).await.unwrap();
    assert_eq!(store.sweep_expired_attempts(now()).await.unwrap(), 1);
    assert_eq!(store.count_pending_attempts(now()).await.unwrap(), 1);

    // Sessions round-trip byte for byte; updates skip revoked sessions.
    let hostile_id = "x'); DROP TABLE sessions; --";
    store.insert_session(&session(hostile_id), &sha256(b"handle-1")).await.unwrap();
    let got = store.get_session(hostile_id).await.unwrap().unwrap();
    assert_eq!(got.provider_id_token, Some(vec![0, 255, 7]));
    assert_eq!(got.provider_sid.as_deref(), Some("psid"));
    assert!(store.get_session("missing").await.unwrap().is_none());
    let by_cookie = store.get_session_by_cookie(&sha256(hostile_id.as_bytes())).await.unwrap();
    assert_eq!(by_cookie.unwrap().id, hostile_id);
    assert!(store.get_session_by_cookie(&sha256(b"nope")).await.unwrap().is_none());
    assert!(
        store
            .update_session_profile(
                hostile_id,
                r#"{"sub":"00u1","name":"N"}"#,
                Some((&[9, 9], Some(5)))
            )
            .await
            .unwrap()
    );
    let got = store.get_session(hostile_id).await.unwrap().unwrap();
    assert!(got.profile.contains("\"N\""));
    assert_eq!(got.provider_access_token, Some(vec![9, 9]));
    assert_eq!(got.provider_token_expires_at, Some(5));
    assert!(!store.update_session_profile("missing", "{}", None).await.unwrap());

    // Batched session inserts, each with its handle.
    let mut batch = Vec::new();
    for i in 0..5 {
        let mut s = session(&format!("bulk-session-{i}"));
        s.cookie_hash = None;
        if i % 2 == 0 {
            s.provider_sid = None;
            s.provider_access_token = None;
        }
        batch.push((s, sha256(format!("bulk-handle-{i}").as_bytes()).to_vec()));
    }
    store.insert_sessions(&batch).await.unwrap();
    let got = store.get_session("bulk-session-3").await.unwrap().unwrap();
    assert_eq!(got.provider_sid.as_deref(), Some("psid"));
    assert_eq!(got.provider_id_token, Some(vec![0, 255, 7]));
    assert!(
        store.get_session("bulk-session-2").await.unwrap().unwrap().provider_access_token.is_none()
    );
    assert_eq!(
        store.use_refresh_handle(&sha256(b"bulk-handle-4"), now()).await.unwrap(),
        RefreshUse::Fresh("bulk-session-4".into())
    );

    // Refresh handles: single use; a second use is recognised as reuse; release undoes a use.
    use authgate::store::RefreshUse;
    let h1 = sha256(b"handle-1");
    assert_eq!(
        store.use_refresh_handle(&h1, now()).await.unwrap(),
        RefreshUse::Fresh(hostile_id.into())
    );
    assert_eq!(
        store.use_refresh_handle(&h1, now()).await.unwrap(),
        RefreshUse::Reused(hostile_id.into())
    );
    store.release_refresh_handle(&h1).await.unwrap();
    assert_eq!(
        store.use_refresh_handle(&h1, now()).await.unwrap(),
        RefreshUse::Fresh(hostile_id.into())
    );
    assert_eq!(
        store.use_refresh_handle(&sha256(b"nope"), now()).await.unwrap(),
        RefreshUse::NotFound
    );
    store.insert_refresh_handle(&sha256(b"handle-2"), hostile_id, now()).await.unwrap();
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.use_refresh_handle(&sha256(b"handle-2"), now()).await })
        })
        .collect();
    let mut fresh = 0;
    for r in racers {
        if let RefreshUse::Fresh(_) = r.await.unwrap().unwrap() {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "a refresh handle is used exactly once");

    // Revocation: by id, then by provider sid / subject; recent revocations are listed.
    let mut other = session("s-2");
    other.provider_sid = Some("psid-2".into());
    other.cookie_hash = None;
    store.insert_session(&other, &sha256(b"h-s2")).await.unwrap();
    let mut third = session("s-3");
    third.subject = "someone".into();
    third.provider_sid = None;
    third.cookie_hash = None;
    store.insert_session(&third, &sha256(b"h-s3")).await.unwrap();
    assert!(store.revoke_session(hostile_id, now()).await.unwrap());
    assert!(!store.revoke_session(hostile_id, now()).await.unwrap(), "already revoked");
    assert!(
        !store.update_session_profile(hostile_id, "{}", None).await.unwrap(),
        "revoked sessions are frozen"
    );
    assert_eq!(
        store.revoke_sessions_by_provider(Some("psid-2"), None, now()).await.unwrap(),
        vec!["s-2"]
    );
    assert_eq!(
        store.revoke_sessions_by_provider(Some("psid-2"), None, now()).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        store.revoke_sessions_by_provider(None, Some("someone"), now()).await.unwrap(),
        vec!["s-3"]
    );
    let mut recent: Vec<String> =
        store.revoked_since(now() - 60, 100).await.unwrap().into_iter().map(|(id, _)| id).collect();
    recent.sort();
    assert_eq!(recent, vec!["s-2".to_string(), "s-3".into(), hostile_id.into()]);
    assert!(store.revoked_since(now() + 60, 100).await.unwrap().is_empty());

    // Logout token jtis are remembered once.
    assert!(store.remember_logout_jti("jti-1", now() + 60).await.unwrap());
    assert!(!store.remember_logout_jti("jti-1", now() + 60).await.unwrap());

    // Sweeping ended sessions removes them and their handles; recent ones stay.
    assert_eq!(store.sweep_ended_sessions(now() + 10, 60).await.unwrap(), 0);
    assert_eq!(store.sweep_ended_sessions(now() + 100_000, 60).await.unwrap(), 8);
    assert!(store.get_session("s-2").await.unwrap().is_none());
    assert_eq!(
        store.use_refresh_handle(&sha256(b"h-s2"), now()).await.unwrap(),
        RefreshUse::NotFound
    );

    // Signing keys: expired ones are not listed; order is by activation.
    let key = |kid: &str, activates_at: i64, expires_at: Option<i64>| StoredSigningKey {
        kid: kid.into(),
        algorithm: "ES256".into(),
        private_key: vec![1],
        public_jwk: "{}".into(),
        created_at: now(),
        activates_at,
        retires_at: None,
        expires_at,
    };
    store.insert_signing_key(&key("k2", now() + 10, None)).await.unwrap();
    store.insert_signing_key(&key("k1", now() - 10, None)).await.unwrap();
    store.insert_signing_key(&key("gone", now() - 100, Some(now() - 1))).await.unwrap();
    let kids: Vec<String> =
        store.list_signing_keys(now()).await.unwrap().into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, vec!["k1", "k2"]);
}

#[tokio::test]
async fn the_store_contract_holds_on_postgres() {
    let db = TestDatabase::create().await;
    exercise(Store::connect(&DatabaseConfig::Postgres(Secret::new(db.url.clone())), 8).unwrap())
        .await;
}

#[tokio::test]
async fn the_store_contract_holds_on_an_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    exercise(Store::connect(&DatabaseConfig::Sqlite(dir.path().join("store.db")), 4).unwrap())
        .await;
}

#[tokio::test]
async fn the_store_contract_holds_on_in_memory_sqlite() {
    exercise(Store::connect(&DatabaseConfig::Sqlite(PathBuf::from(":memory:")), 1).unwrap()).await;
}

#[tokio::test]
async fn an_unreachable_database_is_reported_as_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let store = Store::connect(
        &DatabaseConfig::Postgres(Secret::new(format!("postgres://postgres@{closed}/x"))),
        1,
    )
    .unwrap();
    assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))));
}

/// The revocation set holds at most its capacity (the newest revocations); beyond it, a session
/// it does not hold is "unknown" — never "not revoked" — so ValidateToken asks the database.
#[tokio::test]
async fn the_revocation_set_is_bounded_and_never_guesses_beyond_its_capacity() {
    use authgate::revocation::{Revocation, Revocations};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&DatabaseConfig::Sqlite(dir.path().join("r.db")), 1).unwrap();
    store.migrate().await.unwrap();
    for i in 1..=5 {
        let id = format!("r-{i}");
        store.insert_sessions(&[(session(&id), sha256(id.as_bytes()).to_vec())]).await.unwrap();
        store.revoke_session(&id, now() - 60 + i * 10).await.unwrap();
    }
    store.insert_sessions(&[(session("live"), sha256(b"live").to_vec())]).await.unwrap();

    let small = Revocations::with_capacity(std::time::Duration::from_secs(900), 3);
    assert_eq!(small.sync(&store, now()).await.unwrap(), 3);
    assert!(small.is_overflowed());
    assert_eq!(small.check("r-5"), Revocation::Revoked, "the newest are kept");
    assert_eq!(small.check("r-1"), Revocation::Unknown, "the oldest is not, and not guessed");
    assert_eq!(small.check("live"), Revocation::Unknown);

    let roomy = Revocations::with_capacity(std::time::Duration::from_secs(900), 10);
    assert_eq!(roomy.sync(&store, now()).await.unwrap(), 5);
    assert!(!roomy.is_overflowed());
    assert_eq!(roomy.check("r-1"), Revocation::Revoked);
    assert_eq!(roomy.check("live"), Revocation::NotRevoked);
}
