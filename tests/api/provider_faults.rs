//! What a real provider cannot show: malicious or broken ID tokens, provider errors, timeouts and
//! outages — and a database that goes away. Each gets a precise status and leaves no session.

use std::time::Duration;

use authgate::pb::{ExchangeCodeRequest, GetLoginUrlRequest, GetLoginUrlResponse};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    fake_provider::{FakeProvider, Signing, TokenAnswer},
    helpers::*,
};

async fn fake_app(fake: &FakeProvider) -> TestApp {
    fake_app_with(fake, &[("AUTHGATE_PROVIDER_TIMEOUT", "1")]).await
}

/// An app signing in at the fake provider, with extra settings; serving when returned.
pub async fn fake_app_with(fake: &FakeProvider, settings: &[(&str, &str)]) -> TestApp {
    let mut options = AppOptions::with_issuer(&fake.issuer);
    for (key, value) in settings {
        options = options.set(key, value);
    }
    let app = spawn_app(options).await;
    wait_until_serving(&app).await;
    app
}

/// Starts a login; returns it and the nonce the fake must put in its ID token.
pub async fn start(app: &TestApp) -> (GetLoginUrlResponse, String) {
    let started =
        app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap().into_inner();
    let nonce = query_param(&started.login_url, "nonce").unwrap();
    (started, nonce)
}

/// The ExchangeCode request for a started login (the fake accepts any code).
pub fn exchange(started: &GetLoginUrlResponse) -> ExchangeCodeRequest {
    ExchangeCodeRequest {
        code: "code-from-fake".into(),
        state: started.state.clone(),
        binding: started.binding.clone(),
        redirect_uri: String::new(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_code_exchange_uses_pkce_s256_and_client_secret_basic() {
    let fake = FakeProvider::start().await;
    let app = fake_app(&fake).await;
    let (started, nonce) = start(&app).await;
    fake.answer_valid(TEST_CLIENT_ID, &nonce);
    let done = app.grpc.clone().exchange_code(exchange(&started)).await.unwrap().into_inner();
    assert_eq!(done.user.unwrap().email, "mallory@example.com");

    let request = fake.last_token_request().unwrap();
    assert_eq!(request.form["grant_type"], "authorization_code");
    assert_eq!(request.form["code"], "code-from-fake");
    assert_eq!(request.form["redirect_uri"], REDIRECT_URI);
    let verifier = &request.form["code_verifier"];
    let challenge = query_param(&started.login_url, "code_challenge").unwrap();
    assert_eq!(
        B64.encode(Sha256::digest(verifier.as_bytes())),
        challenge,
        "S256(verifier) == challenge"
    );
    assert!(
        !request.form.contains_key("client_secret"),
        "basic auth keeps the secret out of the body"
    );
    let basic = request.authorization.unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        format!("{TEST_CLIENT_ID}:{TEST_CLIENT_SECRET}")
    );
}

#[tokio::test]
async fn malicious_or_broken_id_tokens_are_refused() {
    let fake = FakeProvider::start().await;
    let app = fake_app(&fake).await;
    let now = chrono::Utc::now().timestamp();
    type Tweak = fn(&mut serde_json::Value, i64);
    let cases: Vec<(&str, Tweak, Signing, &str)> = vec![
        (
            "wrong nonce",
            |c, _| c["nonce"] = json!("not-the-nonce"),
            Signing::Published,
            "nonce does not match",
        ),
        (
            "missing nonce",
            |c, _| {
                c.as_object_mut().unwrap().remove("nonce");
            },
            Signing::Published,
            "nonce does not match",
        ),
        (
            "wrong issuer",
            |c, _| c["iss"] = json!("https://evil.example.com"),
            Signing::Published,
            "wrong issuer",
        ),
        (
            "wrong audience",
            |c, _| c["aud"] = json!("someone-else"),
            Signing::Published,
            "wrong audience",
        ),
        (
            "untrusted extra audience",
            |c, _| c["aud"] = json!([TEST_CLIENT_ID, "someone-else"]),
            Signing::Published,
            "wrong audience",
        ),
        (
            "azp of another client",
            |c, _| c["azp"] = json!("someone-else"),
            Signing::Published,
            "azp",
        ),
        (
            "expired",
            |c, now| {
                c["exp"] = json!(now - 600);
                c["iat"] = json!(now - 900);
            },
            Signing::Published,
            "expired",
        ),
        (
            "issued in the future",
            |c, now| {
                c["iat"] = json!(now + 3600);
                c["exp"] = json!(now + 7200);
            },
            Signing::Published,
            "issued in the future",
        ),
        ("unknown key", |_, _| {}, Signing::Unpublished, "not in the provider's JWKS"),
        ("alg none", |_, _| {}, Signing::None, "ID token is not valid"),
        (
            "HMAC with the public key",
            |_, _| {},
            Signing::HmacWithPublicKey,
            "algorithm not allowed",
        ),
    ];
    for (what, tweak, signing, needle) in cases {
        let (started, nonce) = start(&app).await;
        let mut claims = fake.valid_claims(TEST_CLIENT_ID, &nonce);
        tweak(&mut claims, now);
        fake.answer_next(TokenAnswer::IdToken { claims, signing });
        let status = app.grpc.clone().exchange_code(exchange(&started)).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{what}: `{}` should mention `{needle}`",
            status.message()
        );
    }
    assert_eq!(app.count_rows("sessions").await, 0, "no session was opened by a bad ID token");
}

#[tokio::test]
async fn provider_error_answers_map_to_precise_statuses() {
    let fake = FakeProvider::start().await;
    let app = fake_app(&fake).await;
    let cases = [
        (
            400,
            json!({"error": "invalid_grant", "error_description": "code expired"}),
            Code::Unauthenticated,
            "invalid_grant",
        ),
        (
            401,
            json!({"error": "invalid_client"}),
            Code::Internal,
            "client credentials are misconfigured",
        ),
        (400, json!({"error": "temporarily_unavailable"}), Code::Unavailable, "retry shortly"),
        (503, json!({"error": "temporarily_unavailable"}), Code::Unavailable, "HTTP 503"),
        (500, json!({"unexpected": true}), Code::Unavailable, "HTTP 500"),
        // A busy provider (or its gateway) is unavailable whatever the body says.
        (429, json!({"error": "invalid_grant"}), Code::Unavailable, "HTTP 429"),
        (502, json!({"error": "invalid_grant"}), Code::Unavailable, "HTTP 502"),
    ];
    for (status, body, code, needle) in cases {
        let (started, _) = start(&app).await;
        fake.answer_next(TokenAnswer::Error { status, body });
        let err = app.grpc.clone().exchange_code(exchange(&started)).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(needle), "`{}` should mention `{needle}`", err.message());
    }
    assert_eq!(app.count_rows("sessions").await, 0);
}

#[tokio::test]
async fn a_provider_down_from_the_start_stops_logins_but_not_validation() {
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let app = spawn_app(AppOptions::with_issuer(&format!("http://{closed}/oauth2/default"))).await;
    // Ready to validate (the readiness probe), not to log in.
    wait_for_health(&app, "", ServingStatus::Serving).await;
    wait_for_health(&app, "authgate.v1.AuthService", ServingStatus::Serving).await;
    wait_for_health(&app, authgate::health::VALIDATE_SERVICE, ServingStatus::Serving).await;
    wait_for_health(&app, authgate::health::LOGIN_SERVICE, ServingStatus::NotServing).await;
    let http = http_client();
    let ready = http.get(format!("{}/readyz", app.base_url())).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["validate"]["ready"], true, "{body}");
    assert_eq!(body["login"]["ready"], false, "{body}");
    let status = body["login"]["providers"][0]["status"].as_str().unwrap();
    assert!(status.contains("discovery"), "says why: {body}");
    let login = http.get(format!("{}/readyz/login", app.base_url())).send().await.unwrap();
    assert_eq!(login.status(), 503);

    // The fleet's checks are answered; logins are refused with the reason.
    let checked = app
        .grpc
        .clone()
        .validate_token(authgate::pb::ValidateTokenRequest { token: "not-a-token".into() })
        .await
        .expect("ValidateToken is answered without the provider")
        .into_inner();
    assert!(!checked.valid);
    let err = app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("discovery of"), "{err:?}");
    assert_eq!(app.count_rows("login_attempts").await, 0);
}

#[tokio::test]
async fn a_provider_that_goes_down_or_hangs_yields_unavailable() {
    let mut fake = FakeProvider::start().await;
    let app = fake_app(&fake).await;

    // Slower than provider_timeout (1s).
    let (started, nonce) = start(&app).await;
    fake.answer_valid(TEST_CLIENT_ID, &nonce);
    fake.delay_token(Duration::from_secs(5));
    let err = app.grpc.clone().exchange_code(exchange(&started)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("could not be reached"), "{err:?}");

    // Gone: logins are not ready; validation stays ready.
    let (started, _) = start(&app).await;
    fake.stop();
    let err = app.grpc.clone().exchange_code(exchange(&started)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    wait_for_health(&app, authgate::health::LOGIN_SERVICE, ServingStatus::NotServing).await;
    wait_for_health(&app, "", ServingStatus::Serving).await;
    assert_eq!(app.count_rows("sessions").await, 0);
}

#[tokio::test]
async fn an_unreachable_database_yields_unavailable_and_recovers() {
    let db = TestDatabase::create().await;
    let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let url = format!("postgres://postgres@{}/{}", proxy.addr, db.name);
    let app = spawn_app(AppOptions { database_url: Some(url), ..AppOptions::real() }).await;
    wait_until_serving(&app).await;

    proxy.set_down(true);
    let err = app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("the database is unavailable"), "{err:?}");
    let err = app
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: "c".into(),
            state: "s".repeat(43),
            binding: "b".repeat(43),
            redirect_uri: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    wait_for_health(&app, "", ServingStatus::NotServing).await;

    proxy.set_down(false);
    wait_until_serving(&app).await;
    app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.expect("works again");
    drop(db);
}

#[tokio::test]
async fn userinfo_for_another_subject_is_refused() {
    let fake = FakeProvider::start().await;
    let app = fake_app(&fake).await;
    let (started, nonce) = start(&app).await;
    // A thin ID token makes authgate call userinfo, which answers for someone else.
    let mut claims = fake.valid_claims(TEST_CLIENT_ID, &nonce);
    for claim in ["email", "name", "groups"] {
        claims.as_object_mut().unwrap().remove(claim);
    }
    fake.set_userinfo(json!({"sub": "someone-else", "email": "victim@example.com"}));
    fake.answer_next(TokenAnswer::IdToken { claims, signing: Signing::Published });
    let err = app.grpc.clone().exchange_code(exchange(&started)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("userinfo does not belong to the signed-in user"), "{err:?}");
    assert_eq!(app.count_rows("sessions").await, 0);
}

/// Signs in once at the fake provider (which answers a valid ID token signed with its current
/// key) and returns the ExchangeCode result.
async fn login_at(app: &TestApp, fake: &FakeProvider) -> Result<String, tonic::Status> {
    let (started, nonce) = start(app).await;
    let claims = fake.valid_claims(TEST_CLIENT_ID, &nonce);
    fake.answer_next(TokenAnswer::IdToken { claims, signing: Signing::Published });
    let done = app.grpc.clone().exchange_code(exchange(&started)).await?;
    Ok(done.into_inner().access_token)
}

/// A key rotation at the provider never drops a login: an ID token from the token endpoint
/// naming an unknown `kid` makes authgate refetch the JWKS at once — right after start-up too,
/// and again for a second rotation within the same second.
#[tokio::test]
async fn logins_survive_provider_key_rotations_right_after_start_and_twice_in_a_second() {
    let fake = FakeProvider::start().await;
    let app = fake_app(&fake).await;
    assert_eq!(fake.jwks_fetches(), 1, "discovery fetched the JWKS once");
    fake.rotate_keys();
    login_at(&app, &fake).await.expect("the first login after a rotation at start-up");
    assert_eq!(fake.jwks_fetches(), 2, "one refetch");
    fake.rotate_keys();
    login_at(&app, &fake).await.expect("a login after a second rotation");
    fake.rotate_keys();
    login_at(&app, &fake).await.expect("a login after a third rotation, within the second");
    assert_eq!(fake.jwks_fetches(), 4);
    login_at(&app, &fake).await.expect("a login with the now known key");
    assert_eq!(fake.jwks_fetches(), 4, "a known kid fetches nothing");
}

/// Many logins meeting one new key wait for one JWKS fetch between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_waiting_on_a_new_key_share_one_jwks_fetch() {
    let fake = FakeProvider::start().await;
    let app = fake_app(&fake).await;
    let mut started = Vec::new();
    for _ in 0..8 {
        started.push(start(&app).await);
    }
    fake.rotate_keys();
    // Each login needs an ID token with its own nonce, signed with the new key.
    let logins: Vec<_> = started
        .into_iter()
        .enumerate()
        .map(|(i, (started, nonce))| {
            let mut request = exchange(&started);
            request.code = format!("code-{i}");
            fake.answer_for_code(
                &request.code,
                fake.id_token(&fake.valid_claims(TEST_CLIENT_ID, &nonce)),
            );
            request
        })
        .collect();
    // All eight reach authgate together.
    let calls: Vec<_> = logins
        .into_iter()
        .map(|request| {
            let mut grpc = app.grpc.clone();
            tokio::spawn(async move { grpc.exchange_code(request).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("every login succeeds");
    }
    assert_eq!(fake.jwks_fetches(), 2, "one refetch for eight logins");
}

/// The JWKS is refetched when its `Cache-Control` lifetime runs out (no lower than
/// `provider_jwks_min_refresh_interval`), and discovery is re-read every
/// `provider_discovery_interval`, without any login asking.
#[tokio::test]
async fn the_jwks_follows_its_cache_control_and_discovery_is_re_read() {
    let fake = FakeProvider::start().await;
    fake.set_jwks_cache_control("public, max-age=1");
    let app = fake_app_with(
        &fake,
        &[
            ("AUTHGATE_PROVIDER_JWKS_MIN_REFRESH_INTERVAL", "1"),
            ("AUTHGATE_PROVIDER_DISCOVERY_INTERVAL", "3"),
        ],
    )
    .await;
    let (jwks, discovery) = (fake.jwks_fetches(), fake.discovery_fetches());
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(fake.jwks_fetches() >= jwks + 2, "{} JWKS fetches", fake.jwks_fetches());
    assert!(fake.discovery_fetches() > discovery, "discovery re-read");
    // A rotation is then picked up without any unknown kid: the next scheduled fetch brings the
    // new key (and a long lifetime, so that no scheduled fetch races the login below).
    fake.rotate_keys();
    fake.set_jwks_cache_control("public, max-age=3600");
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let fetches = fake.jwks_fetches();
    login_at(&app, &fake).await.expect("signed with a key already fetched");
    assert_eq!(fake.jwks_fetches(), fetches, "no refetch was needed");
    drop(app);
}

/// Anyone can post a logout token: one naming an unknown `kid` makes authgate refetch the JWKS
/// at most once per 10 s, however many arrive.
#[tokio::test]
async fn unknown_kids_in_logout_tokens_refetch_the_jwks_at_most_once_per_interval() {
    let fake = FakeProvider::start().await;
    let app = fake_app(&fake).await;
    let fetches = fake.jwks_fetches();
    for _ in 0..5 {
        let claims = fake.logout_claims(TEST_CLIENT_ID, "sid");
        let response = crate::helpers::http_client()
            .post(format!("{}/backchannel-logout", app.base_url()))
            .form(&[("logout_token", fake.logout_token_unpublished(&claims))])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
    assert_eq!(fake.jwks_fetches(), fetches + 1, "one refetch for five unknown kids");
}
