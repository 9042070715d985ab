//! RefreshSession under provider faults, access changes, concurrency and database faults: only
//! the provider's `invalid_grant` (or access now denied) ends a session, the user's current
//! groups are checked on every refresh, a refreshed ID token is validated like the first, two
//! replicas never refresh one session at the provider at once, the handle rotation is atomic,
//! and sessions end after their idle timeout and maximum age.

use std::time::Duration;

use authgate::pb::{
    ExchangeCodeResponse, InvalidReason, RefreshSessionRequest, RefreshSessionResponse,
};
use serde_json::json;
use tonic::Code;

use crate::{
    fake_provider::{FakeProvider, Signing, TokenAnswer},
    helpers::*,
    provider_faults::{exchange, fake_app_with, start},
};

/// Signs in at the fake provider; the session holds a provider refresh token. The fake goes on
/// answering valid tokens (refreshes included) until told otherwise.
async fn sign_in(app: &TestApp, fake: &FakeProvider) -> ExchangeCodeResponse {
    let (started, nonce) = start(app).await;
    fake.answer_valid(TEST_CLIENT_ID, &nonce);
    app.grpc.clone().exchange_code(exchange(&started)).await.unwrap().into_inner()
}

async fn refresh(app: &TestApp, handle: &str) -> Result<RefreshSessionResponse, tonic::Status> {
    app.grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: handle.into() })
        .await
        .map(|r| r.into_inner())
}

fn reason(r: &authgate::pb::ValidateTokenResponse) -> InvalidReason {
    InvalidReason::try_from(r.reason).unwrap()
}

/// Valid ID-token claims for a refresh (a refreshed token carries no login nonce).
fn refreshed_claims(fake: &FakeProvider) -> serde_json::Value {
    let mut claims = fake.valid_claims(TEST_CLIENT_ID, "unused");
    claims.as_object_mut().unwrap().remove("nonce");
    claims
}

#[tokio::test]
async fn refresh_applies_the_access_rules_to_the_users_current_groups() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(&fake, &[("AUTHGATE_ALLOWED_GROUPS", "fakers")]).await;
    let done = sign_in(&app, &fake).await;
    let refreshed = refresh(&app, &done.refresh_token).await.expect("still in the group");
    // The administrator removes the user from the group at the provider.
    fake.set_userinfo(json!({
        "sub": "fake-user-1",
        "email": "mallory@example.com",
        "email_verified": true,
        "groups": ["others"],
    }));
    let err = refresh(&app, &refreshed.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("allowed_groups"), "{err:?}");
    let v = validate(&app, &refreshed.access_token).await;
    assert_eq!(reason(&v), InvalidReason::Revoked, "the session ended with the access");
}

#[tokio::test]
async fn a_failed_userinfo_after_a_refresh_issues_nothing_and_keeps_the_session() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(&fake, &[("AUTHGATE_ALLOWED_GROUPS", "fakers")]).await;
    let done = sign_in(&app, &fake).await;
    fake.set_userinfo_status(503);
    let err = refresh(&app, &done.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "fail closed: {err:?}");
    assert!(validate(&app, &done.access_token).await.valid, "the session is kept");
    fake.set_userinfo_status(200);
    refresh(&app, &done.refresh_token).await.expect("the same handle works once userinfo does");
    let requests = fake.token_requests("refresh_token");
    assert_eq!(requests.len(), 2);
    assert_ne!(
        requests[0].form["refresh_token"], requests[1].form["refresh_token"],
        "the provider's rotated refresh token was kept although the first refresh failed"
    );
}

#[tokio::test]
async fn only_invalid_grant_ends_the_session_other_provider_errors_keep_it() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(&fake, &[("AUTHGATE_PROVIDER_TIMEOUT", "1")]).await;
    let done = sign_in(&app, &fake).await;
    let error =
        |status: u16, error: &str| TokenAnswer::Error { status, body: json!({ "error": error }) };
    let cases = [
        (error(400, "temporarily_unavailable"), Code::Unavailable),
        (error(503, "server_error"), Code::Unavailable),
        // invalid_grant in a 429 or 5xx answer is a busy gateway, not the grant's end.
        (error(429, "invalid_grant"), Code::Unavailable),
        (error(503, "invalid_grant"), Code::Unavailable),
        (TokenAnswer::Garbage { status: 502 }, Code::Unavailable),
        (error(401, "invalid_client"), Code::Internal),
    ];
    for (answer, code) in cases {
        fake.answer_next(answer.clone());
        let err = refresh(&app, &done.refresh_token).await.unwrap_err();
        assert_eq!(err.code(), code, "{answer:?}: {err:?}");
        assert!(validate(&app, &done.access_token).await.valid, "{answer:?}: the session is kept");
    }
    // A provider too slow to answer.
    fake.answer_next(TokenAnswer::IdToken {
        claims: refreshed_claims(&fake),
        signing: Signing::Published,
    });
    fake.delay_token(Duration::from_millis(1_500));
    let err = refresh(&app, &done.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "a timeout: {err:?}");
    fake.delay_token(Duration::ZERO);
    let refreshed = refresh(&app, &done.refresh_token).await.expect("the same handle works again");
    // The provider ends the grant: now the session ends.
    fake.answer_next(error(400, "invalid_grant"));
    let err = refresh(&app, &refreshed.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("invalid_grant"), "{err:?}");
    assert_eq!(reason(&validate(&app, &refreshed.access_token).await), InvalidReason::Revoked);
}

#[tokio::test]
async fn a_refreshed_id_token_is_validated_like_the_first() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(&fake, &[]).await;
    let done = sign_in(&app, &fake).await;
    let valid = refreshed_claims(&fake);
    let mut other_user = valid.clone();
    other_user["sub"] = json!("someone-else");
    let mut other_issuer = valid.clone();
    other_issuer["iss"] = json!("https://evil.example.com");
    let mut other_client = valid.clone();
    other_client["aud"] = json!("someone-else");
    let cases = [
        (other_user, Signing::Published, "subject"),
        (other_issuer, Signing::Published, "wrong issuer"),
        (other_client, Signing::Published, "wrong audience"),
        (valid.clone(), Signing::None, "unsigned"),
        (valid.clone(), Signing::Unpublished, "not in the provider's JWKS"),
    ];
    for (claims, signing, needle) in cases {
        fake.answer_next(TokenAnswer::IdToken { claims, signing });
        let err = refresh(&app, &done.refresh_token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{needle}: {err:?}");
        assert!(err.message().contains(needle), "{needle}: {err:?}");
        assert!(validate(&app, &done.access_token).await.valid, "{needle}: the session is kept");
    }
    fake.answer_next(TokenAnswer::IdToken { claims: valid, signing: Signing::Published });
    let refreshed = refresh(&app, &done.refresh_token).await.expect("a valid refreshed ID token");
    // Providers that answer a refresh without an ID token are fine too (userinfo says who).
    fake.answer_next(TokenAnswer::NoIdToken);
    refresh(&app, &refreshed.refresh_token).await.expect("no ID token on refresh");
}

/// Two replicas handed the same refresh handle at once: one refresh reaches the provider; the
/// other is told to retry instead of being taken for a reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_refresh_one_session_at_the_provider_at_once() {
    let fake = FakeProvider::start().await;
    let db = TestDatabase::create().await;
    let replica = || async {
        let app = spawn_app(
            AppOptions {
                database_url: Some(db.url.clone()),
                ..AppOptions::with_issuer(&fake.issuer)
            }
            .set("AUTHGATE_PUBLIC_URL", "http://localhost:8080"),
        )
        .await;
        wait_until_serving(&app).await;
        app
    };
    let (a, b) = (replica().await, replica().await);
    let done = sign_in(&a, &fake).await;
    fake.delay_token(Duration::from_millis(700));
    let (ra, rb) = tokio::join!(refresh(&a, &done.refresh_token), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refresh(&b, &done.refresh_token).await
    });
    assert_eq!(fake.token_requests("refresh_token").len(), 1, "one refresh at the provider");
    // Whichever took the lease first completes (on a loaded machine it may be the second).
    let (refreshed, err) = match (ra, rb) {
        (Ok(r), Err(e)) | (Err(e), Ok(r)) => (r, e),
        other => panic!("expected one refresh and one refusal: {other:?}"),
    };
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("being refreshed"), "{err:?}");
    assert!(err.metadata().get("retry-after").is_some());
    assert!(validate(&b, &refreshed.access_token).await.valid, "no reuse was detected");
}

/// The new handle exists exactly when the old one is spent: a failure in between (an injected
/// database fault) leaves the old handle usable.
#[tokio::test]
async fn a_failed_handle_rotation_leaves_the_old_handle_usable() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(&fake, &[("AUTHGATE_REFRESH_AT_PROVIDER", "false")]).await;
    let done = sign_in(&app, &fake).await;
    app.inject_fault("INSERT", "refresh_handles").await;
    let err = refresh(&app, &done.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    app.clear_fault("refresh_handles").await;
    let refreshed = refresh(&app, &done.refresh_token).await.expect("the handle was not spent");
    assert!(validate(&app, &refreshed.access_token).await.valid);
}

#[tokio::test]
async fn sessions_end_after_their_idle_timeout_and_their_maximum_age() {
    let fake = FakeProvider::start().await;
    let idle = fake_app_with(
        &fake,
        &[
            ("AUTHGATE_TOKEN_TTL", "1"),
            ("AUTHGATE_SESSION_IDLE_TIMEOUT", "4"),
            ("AUTHGATE_REFRESH_AT_PROVIDER", "false"),
        ],
    )
    .await;
    // Whole-second timestamps: each wait keeps a second of margin either side.
    let done = sign_in(&idle, &fake).await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let r1 = refresh(&idle, &done.refresh_token).await.expect("used within the idle timeout");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let r2 = refresh(&idle, &r1.refresh_token).await.expect("4.4 s after sign-in, but active");
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let err = refresh(&idle, &r2.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "idle too long: {err:?}");
    assert!(err.message().contains("expired"), "{err:?}");

    let capped = fake_app_with(
        &fake,
        &[
            ("AUTHGATE_TOKEN_TTL", "1"),
            ("AUTHGATE_SESSION_MAX_AGE", "4"),
            ("AUTHGATE_REFRESH_AT_PROVIDER", "false"),
        ],
    )
    .await;
    let done = sign_in(&capped, &fake).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let r1 = refresh(&capped, &done.refresh_token).await.expect("younger than the maximum age");
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let err = refresh(&capped, &r1.refresh_token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "older than the maximum age: {err:?}");
}

#[tokio::test]
async fn the_provider_is_asked_at_most_once_per_provider_refresh_min_interval() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(
        &fake,
        &[("AUTHGATE_PROVIDER_REFRESH_MIN_INTERVAL", "2s"), ("AUTHGATE_ALLOWED_GROUPS", "fakers")],
    )
    .await;
    let done = sign_in(&app, &fake).await;
    // Reloads and tabs right after sign-in refresh from the stored profile.
    let mut handle = done.refresh_token;
    for _ in 0..3 {
        let refreshed = refresh(&app, &handle).await.expect("refreshed");
        assert!(validate(&app, &refreshed.access_token).await.valid);
        handle = refreshed.refresh_token;
    }
    assert_eq!(fake.token_requests("refresh_token").len(), 0, "no provider call within 2 s");
    // Once the interval has passed, the provider is asked again — and its word counts.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    fake.set_userinfo(json!({
        "sub": "fake-user-1",
        "email": "mallory@example.com",
        "email_verified": true,
        "groups": ["others"],
    }));
    let err = refresh(&app, &handle).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(fake.token_requests("refresh_token").len(), 1);
}
