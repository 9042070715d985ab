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
        (503, json!({"error": "temporarily_unavailable"}), Code::Unavailable, "retry shortly"),
        (500, json!({"unexpected": true}), Code::Unavailable, "unusable response"),
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
async fn a_provider_that_is_down_from_the_start_keeps_authgate_not_serving() {
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let app = spawn_app(AppOptions::with_issuer(&format!("http://{closed}/oauth2/default"))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    wait_for_health(&app, "", ServingStatus::NotServing).await;
    wait_for_health(&app, "authgate.v1.AuthService", ServingStatus::NotServing).await;
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

    // Gone.
    let (started, _) = start(&app).await;
    fake.stop();
    let err = app.grpc.clone().exchange_code(exchange(&started)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    wait_for_health(&app, "", ServingStatus::NotServing).await;
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

#[tokio::test]
async fn a_provider_key_rotation_is_picked_up_with_one_rate_limited_jwks_refetch() {
    let fake = FakeProvider::start().await;
    let app = fake_app(&fake).await;
    assert_eq!(fake.jwks_fetches(), 1, "discovery fetched the JWKS once");

    // Right after discovery an unknown kid does not trigger a refetch (rate limit: 10 s).
    let (started, nonce) = start(&app).await;
    fake.answer_next(TokenAnswer::IdToken {
        claims: fake.valid_claims(TEST_CLIENT_ID, &nonce),
        signing: Signing::Unpublished,
    });
    let err = app.grpc.clone().exchange_code(exchange(&started)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(fake.jwks_fetches(), 1);

    // The provider rotates; after the interval, the new kid makes authgate refetch once.
    fake.rotate_keys();
    tokio::time::sleep(Duration::from_millis(10_200)).await;
    let (started, nonce) = start(&app).await;
    fake.answer_next(TokenAnswer::IdToken {
        claims: fake.valid_claims(TEST_CLIENT_ID, &nonce),
        signing: Signing::Unpublished,
    });
    let done = app.grpc.clone().exchange_code(exchange(&started)).await.unwrap().into_inner();
    assert_eq!(done.user.unwrap().sub, "fake-user-1");
    assert_eq!(fake.jwks_fetches(), 2, "exactly one refetch");
}
