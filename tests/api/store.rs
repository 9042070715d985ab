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
        last_used_at: None,
        provider_checked_at: None,
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
        store.find_refresh_handle(&sha256(b"bulk-handle-4")).await.unwrap(),
        RefreshUse::Fresh("bulk-session-4".into())
    );

    // Refresh handles: a rotation marks the old handle used, stores the new one and updates
    // the session at once, exactly once; a used handle is recognised as reuse.
    use authgate::store::{RefreshUse, Rotation};
    let h1 = sha256(b"handle-1");
    assert_eq!(store.find_refresh_handle(&h1).await.unwrap(), RefreshUse::Fresh(hostile_id.into()));
    assert_eq!(store.find_refresh_handle(&sha256(b"nope")).await.unwrap(), RefreshUse::NotFound);
    let mut current = store.get_session(hostile_id).await.unwrap().unwrap();
    assert_eq!(current.last_used_at, None);
    // The refresh lease: one holder at a time until it lapses.
    assert!(store.acquire_refresh_lease(hostile_id, "lease-a", now() + 30, now()).await.unwrap());
    assert!(!store.acquire_refresh_lease(hostile_id, "lease-b", now() + 30, now()).await.unwrap());
    current.profile = r#"{"sub":"00u1","name":"Renamed"}"#.into();
    current.provider_access_token = Some(vec![9, 9]);
    assert_eq!(
        store
            .rotate_refresh_handle(&h1, &sha256(b"h1-next"), &current, Some("lease-b"), None, now())
            .await
            .unwrap(),
        Rotation::SessionChanged,
        "another's lease: nothing is written"
    );
    assert_eq!(store.find_refresh_handle(&h1).await.unwrap(), RefreshUse::Fresh(hostile_id.into()));
    assert_eq!(store.find_refresh_handle(&sha256(b"h1-next")).await.unwrap(), RefreshUse::NotFound);
    assert_eq!(
        store
            .rotate_refresh_handle(&h1, &sha256(b"h1-next"), &current, Some("lease-a"), None, now())
            .await
            .unwrap(),
        Rotation::Rotated
    );
    assert_eq!(
        store.find_refresh_handle(&h1).await.unwrap(),
        RefreshUse::Reused(hostile_id.into())
    );
    let rotated = store.get_session(hostile_id).await.unwrap().unwrap();
    assert_eq!(rotated.profile, current.profile);
    assert_eq!(rotated.provider_access_token, Some(vec![9, 9]));
    assert!(rotated.last_used_at.is_some());
    assert!(
        store.acquire_refresh_lease(hostile_id, "lease-c", now() + 30, now()).await.unwrap(),
        "the rotation released the lease"
    );
    assert!(store.end_refresh_lease(&rotated, "lease-c").await.unwrap());
    assert!(!store.end_refresh_lease(&rotated, "lease-c").await.unwrap(), "already given back");
    assert!(
        store.acquire_refresh_lease(hostile_id, "lease-d", now() - 1, now() - 2).await.unwrap()
    );
    assert!(
        store.acquire_refresh_lease(hostile_id, "lease-e", now() + 30, now()).await.unwrap(),
        "a lapsed lease can be taken"
    );
    assert!(store.end_refresh_lease(&rotated, "lease-e").await.unwrap());
    assert_eq!(
        store
            .rotate_refresh_handle(&h1, &sha256(b"h1-again"), &current, None, None, now())
            .await
            .unwrap(),
        Rotation::HandleUsed
    );
    assert_eq!(
        store.find_refresh_handle(&sha256(b"h1-again")).await.unwrap(),
        RefreshUse::NotFound
    );
    // Racing rotations of one handle: exactly one wins, exactly one new handle exists.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let (store, current) = (Arc::clone(&store), current.clone());
            tokio::spawn(async move {
                let next = sha256(format!("racer-{i}").as_bytes());
                store
                    .rotate_refresh_handle(&sha256(b"h1-next"), &next, &current, None, None, now())
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(Rotation::Rotated) => won += 1,
            Ok(Rotation::HandleUsed) => {}
            // SQLite may refuse a racing writer outright (busy); nothing was written.
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1, "a refresh handle is used exactly once");
    let mut fresh = 0;
    for i in 0..8 {
        if let RefreshUse::Fresh(_) =
            store.find_refresh_handle(&sha256(format!("racer-{i}").as_bytes())).await.unwrap()
        {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);

    // A rotation with a grace keeps the sealed successor on the used handle until then.
    let mut graced = None;
    for i in 0..8 {
        let h = sha256(format!("racer-{i}").as_bytes());
        if let RefreshUse::Fresh(_) = store.find_refresh_handle(&h).await.unwrap() {
            graced = Some(h);
        }
    }
    let graced = graced.unwrap();
    assert_eq!(
        store
            .rotate_refresh_handle(
                &graced,
                &sha256(b"graced-next"),
                &current,
                None,
                Some((b"sealed", now() + 5)),
                now()
            )
            .await
            .unwrap(),
        Rotation::Rotated
    );
    assert_eq!(
        store.refresh_successor(&graced, now()).await.unwrap().as_deref(),
        Some(&b"sealed"[..])
    );
    assert_eq!(
        store.refresh_successor(&graced, now() + 6).await.unwrap(),
        None,
        "the grace passed"
    );
    assert_eq!(
        store.refresh_successor(&sha256(b"graced-next"), now()).await.unwrap(),
        None,
        "unused"
    );

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
    // Back-channel logout: the jti is remembered with the revocation, once.
    let logout = |jti: &'static str, sid: Option<&'static str>, sub: Option<&'static str>| {
        let store = store.clone();
        async move { store.revoke_for_logout_token(jti, now() + 60, sid, sub, now()).await.unwrap() }
    };
    assert_eq!(logout("jti-1", Some("psid-2"), None).await, Some(vec!["s-2".to_string()]));
    assert_eq!(logout("jti-1", Some("psid-2"), None).await, None, "a replayed jti");
    assert_eq!(logout("jti-2", Some("psid-2"), None).await, Some(Vec::new()));
    assert_eq!(logout("jti-3", None, Some("someone")).await, Some(vec!["s-3".to_string()]));
    let mut recent: Vec<String> =
        store.revoked_since(now() - 60, 100).await.unwrap().into_iter().map(|(id, _)| id).collect();
    recent.sort();
    assert_eq!(recent, vec!["s-2".to_string(), "s-3".into(), hostile_id.into()]);
    assert!(store.revoked_since(now() + 60, 100).await.unwrap().is_empty());

    // Sweeping ended sessions removes them and their handles; recent ones stay.
    assert_eq!(store.sweep_ended_sessions(now() + 10, 60, 86_400).await.unwrap(), 0);
    assert_eq!(store.sweep_ended_sessions(now() + 100_000, 60, 86_400).await.unwrap(), 8);
    assert!(store.get_session("s-2").await.unwrap().is_none());
    assert_eq!(store.find_refresh_handle(&sha256(b"h-s2")).await.unwrap(), RefreshUse::NotFound);

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

/// Group commit, with one poisoned member in a full batch: every other member succeeds and is
/// written, the poisoned one alone gets the error, and nothing is half-written — for attempt
/// inserts, consumes and session inserts, on PostgreSQL and on SQLite.
async fn a_poisoned_member_fails_alone(store: Store, poison_consumes: &str) {
    use std::sync::{Arc, Mutex};

    use authgate::store::{Batcher, RefreshUse};
    use tokio::sync::Semaphore;

    store.migrate().await.unwrap();
    const N: usize = 128;
    type Sizes = Arc<Mutex<Vec<usize>>>;
    /// A batcher over `run` whose first batch waits for the gate, so that the next `N`
    /// requests queue up and go as one batch; records each batch's size.
    fn gated<T: Clone + Send + 'static, R: Clone + Send + 'static>(
        run: impl Fn(Vec<T>) -> futures_util::future::BoxFuture<'static, Result<Vec<R>, StoreError>>
        + Send
        + Sync
        + 'static,
    ) -> (Batcher<T, R>, Arc<Semaphore>, Sizes) {
        let gate = Arc::new(Semaphore::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (g, s) = (Arc::clone(&gate), Arc::clone(&sizes));
        let run = Arc::new(run);
        let batcher = Batcher::start(1, move |batch: Vec<T>| {
            let (g, s, run) = (Arc::clone(&g), Arc::clone(&s), Arc::clone(&run));
            Box::pin(async move {
                if s.lock().unwrap().is_empty() {
                    g.acquire().await.unwrap().forget();
                }
                s.lock().unwrap().push(batch.len());
                run(batch).await
            })
        });
        (batcher, gate, sizes)
    }
    /// Sends the first request (held at the gate), then the rest; opens the gate; returns every
    /// result in order.
    async fn full_batch<T: Clone + Send + 'static, R: Clone + Send + std::fmt::Debug + 'static>(
        batcher: &Batcher<T, R>,
        gate: &Semaphore,
        sizes: &Mutex<Vec<usize>>,
        first: T,
        rest: Vec<T>,
    ) -> Vec<Result<R, StoreError>> {
        let held = {
            let b = batcher.clone();
            tokio::spawn(async move { b.call(first).await })
        };
        // The first batch is taken and waits at the gate; the rest queue behind it.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(sizes.lock().unwrap().len(), 0, "the first batch waits at the gate");
        let calls: Vec<_> = rest
            .into_iter()
            .map(|item| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(item).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        gate.add_permits(1);
        let mut results = vec![held.await.unwrap()];
        for call in calls {
            results.push(call.await.unwrap());
        }
        results
    }

    // Attempt inserts: the poisoned member repeats an existing state (a duplicate key).
    let s = store.clone();
    let (batcher, gate, sizes) = gated(move |batch: Vec<LoginAttempt>| {
        let s = s.clone();
        Box::pin(async move { s.insert_attempts(&batch).await.map(|()| vec![(); batch.len()]) })
    });
    let mut rest: Vec<LoginAttempt> =
        (0..N).map(|i| attempt(&format!("b-{i}"), &format!("bind-{i}"), 600)).collect();
    rest[N / 2] = attempt("b-first", "bind-first", 600);
    let results =
        full_batch(&batcher, &gate, &sizes, attempt("b-first", "bind-first", 600), rest).await;
    assert_eq!(sizes.lock().unwrap()[1], N, "the rest went as one batch: {:?}", sizes.lock());
    for (i, r) in results.iter().enumerate() {
        if i == N / 2 + 1 {
            assert!(matches!(r, Err(StoreError::Duplicate(_))), "the poisoned member: {r:?}");
        } else {
            assert!(r.is_ok(), "member {i}: {r:?}");
        }
    }
    // Every good member was stored: each can be consumed.
    let (first, bind) = (sha256(b"b-first"), sha256(b"bind-first"));
    assert!(matches!(store.consume_attempt(&first, &bind).await.unwrap(), Consumed::Attempt(_)));
    for i in (0..N).filter(|&i| i != N / 2) {
        let state = sha256(format!("b-{i}").as_bytes());
        let binding = sha256(format!("bind-{i}").as_bytes());
        assert!(
            matches!(store.consume_attempt(&state, &binding).await.unwrap(), Consumed::Attempt(_)),
            "attempt {i} was stored"
        );
    }

    // Consumes: the poisoned member's delete fails (a trigger); the others are consumed and
    // reported so, and the poisoned attempt is still there.
    let mut poisoned = attempt("c-poison", "bind-poison", 600);
    poisoned.nonce = "poison".into();
    store.insert_attempt(&poisoned).await.unwrap();
    for i in 0..N {
        store.insert_attempt(&attempt(&format!("c-{i}"), &format!("bind-{i}"), 600)).await.unwrap();
    }
    match &store {
        Store::Postgres(s) => {
            sqlx::raw_sql(poison_consumes).execute(s.pool()).await.unwrap();
        }
        Store::Sqlite(s) => {
            sqlx::raw_sql(poison_consumes).execute(s.pool()).await.unwrap();
        }
    }
    let s = store.clone();
    let (batcher, gate, sizes) = gated(move |batch: Vec<(Vec<u8>, Vec<u8>)>| {
        let s = s.clone();
        Box::pin(async move { s.consume_attempts(&batch).await })
    });
    let request = |state: &str, binding: &str| {
        (sha256(state.as_bytes()).to_vec(), sha256(binding.as_bytes()).to_vec())
    };
    let mut rest: Vec<_> =
        (1..N).map(|i| request(&format!("c-{i}"), &format!("bind-{i}"))).collect();
    rest.insert(N / 2, request("c-poison", "bind-poison"));
    let results = full_batch(&batcher, &gate, &sizes, request("c-0", "bind-0"), rest).await;
    assert_eq!(sizes.lock().unwrap()[1], N, "one full batch: {:?}", sizes.lock());
    for (i, r) in results.iter().enumerate() {
        if i == N / 2 + 1 {
            assert!(matches!(r, Err(StoreError::Other(_))), "the poisoned member: {r:?}");
        } else {
            assert!(matches!(r, Ok(Consumed::Attempt(_))), "member {i}: {r:?}");
        }
    }
    assert_eq!(store.count_pending_attempts(0).await.unwrap(), 1, "only the poisoned one is left");

    // Session inserts: the poisoned member repeats an existing session id.
    let s = store.clone();
    let (batcher, gate, sizes) = gated(move |batch: Vec<(SessionRecord, Vec<u8>)>| {
        let s = s.clone();
        Box::pin(async move { s.insert_sessions(&batch).await.map(|()| vec![(); batch.len()]) })
    });
    let item = |id: &str| (session(id), sha256(format!("h-{id}").as_bytes()).to_vec());
    let mut rest: Vec<_> = (0..N).map(|i| item(&format!("bs-{i}"))).collect();
    rest[N / 2] = (session("bs-first"), sha256(b"another-handle").to_vec());
    let results = full_batch(&batcher, &gate, &sizes, item("bs-first"), rest).await;
    assert_eq!(sizes.lock().unwrap()[1], N);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i == N / 2 + 1, "member {i}: {r:?}");
    }
    for i in (0..N).filter(|&i| i != N / 2) {
        assert!(store.get_session(&format!("bs-{i}")).await.unwrap().is_some(), "session {i}");
    }
    assert_eq!(
        store.find_refresh_handle(&sha256(b"another-handle")).await.unwrap(),
        RefreshUse::NotFound,
        "the poisoned member wrote nothing"
    );
}

#[tokio::test]
async fn group_commit_isolates_a_poisoned_member_on_postgres() {
    let db = TestDatabase::create().await;
    let store = Store::connect(&DatabaseConfig::Postgres(Secret::new(db.url.clone())), 8).unwrap();
    a_poisoned_member_fails_alone(
        store,
        "CREATE FUNCTION poisoned() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'poisoned member'; END $$; \
         CREATE TRIGGER poisoned BEFORE DELETE ON login_attempts FOR EACH ROW \
         WHEN (OLD.nonce = 'poison') EXECUTE FUNCTION poisoned();",
    )
    .await;
}

#[tokio::test]
async fn group_commit_isolates_a_poisoned_member_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&DatabaseConfig::Sqlite(dir.path().join("g.db")), 4).unwrap();
    a_poisoned_member_fails_alone(
        store,
        "CREATE TRIGGER poisoned BEFORE DELETE ON login_attempts \
         WHEN OLD.nonce = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned member'); END;",
    )
    .await;
}
