//! Every way a caller can get the login wrong, each with a precise status and a message that
//! says what to fix — and nothing half-written behind it.

use authgate::pb::{ExchangeCodeRequest, GetLoginUrlRequest, GetUserInfoRequest};
use tonic::{Code, Status};

use crate::{helpers::*, login_flow::login_until_callback};

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, needle: &str) -> Status {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message `{}` should mention `{needle}`",
        status.message()
    );
    status
}

#[tokio::test]
async fn get_login_url_refuses_bad_input_and_writes_nothing() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let mut grpc = app.grpc.clone();
    let cases = [
        (
            GetLoginUrlRequest {
                redirect_uri: "https://evil.example.com/callback".into(),
                ..Default::default()
            },
            "is not allowed; use one of the configured redirect_uris",
        ),
        (
            GetLoginUrlRequest { redirect_uri: format!("{REDIRECT_URI}/"), ..Default::default() },
            "is not allowed",
        ),
        (
            GetLoginUrlRequest {
                redirect_uri: format!("https://x/{}", "a".repeat(3000)),
                ..Default::default()
            },
            "longer than 2048",
        ),
        (
            GetLoginUrlRequest { scopes: vec!["openid email".into()], ..Default::default() },
            "not a valid scope token",
        ),
        (
            GetLoginUrlRequest { scopes: vec!["s".into(); 17], ..Default::default() },
            "at most 16 extra scopes",
        ),
        (
            GetLoginUrlRequest { prompt: "always".into(), ..Default::default() },
            "prompt must be none, login, consent or select_account",
        ),
        (
            GetLoginUrlRequest { login_hint: "a".repeat(300), ..Default::default() },
            "login_hint must be at most 256",
        ),
        (
            GetLoginUrlRequest {
                login_hint: "alice\r\nInjected: yes".into(),
                ..Default::default()
            },
            "no control characters",
        ),
    ];
    for (request, needle) in cases {
        assert_status(grpc.get_login_url(request).await, Code::InvalidArgument, needle);
    }
    assert_eq!(app.count_rows("login_attempts").await, 0, "nothing is written for bad input");
}

#[tokio::test]
async fn exchange_code_refuses_missing_and_oversized_fields() {
    let app = spawn_app(AppOptions::real()).await;
    let mut grpc = app.grpc.clone();
    let good = ExchangeCodeRequest {
        code: "some-code".into(),
        state: "a".repeat(43),
        binding: "b".repeat(43),
        redirect_uri: String::new(),
        ..Default::default()
    };
    let cases = [
        (ExchangeCodeRequest { code: String::new(), ..good.clone() }, "`code` is required"),
        (
            ExchangeCodeRequest { code: "c".repeat(5000), ..good.clone() },
            "`code` must be at most 4096",
        ),
        (ExchangeCodeRequest { code: "has space".into(), ..good.clone() }, "printable ASCII"),
        (ExchangeCodeRequest { state: String::new(), ..good.clone() }, "`state` is required"),
        (
            ExchangeCodeRequest { state: "s".repeat(129), ..good.clone() },
            "`state` is longer than 128",
        ),
        (
            ExchangeCodeRequest { state: "x' OR '1'='1".into(), ..good.clone() },
            "characters authgate never issues",
        ),
        (ExchangeCodeRequest { binding: String::new(), ..good.clone() }, "`binding` is required"),
        (
            ExchangeCodeRequest {
                redirect_uri: "https://evil.example.com/cb".into(),
                ..good.clone()
            },
            "is not allowed",
        ),
    ];
    for (request, needle) in cases {
        assert_status(grpc.exchange_code(request).await, Code::InvalidArgument, needle);
    }
    // A well-formed but unknown state.
    assert_status(
        grpc.exchange_code(good).await,
        Code::FailedPrecondition,
        "unknown or already used state",
    );
    assert_eq!(app.count_rows("sessions").await, 0);
}

#[tokio::test]
async fn a_wrong_binding_is_refused_and_does_not_burn_the_attempt() {
    let app = spawn_app(AppOptions::real()).await;
    let request = login_until_callback(&app, ALICE).await;
    let mut grpc = app.grpc.clone();
    let wrong =
        ExchangeCodeRequest { binding: authgate::crypto::random_handle(32), ..request.clone() };
    assert_status(
        grpc.exchange_code(wrong).await,
        Code::PermissionDenied,
        "binding does not match",
    );
    assert_eq!(app.count_rows("login_attempts").await, 1, "the attempt survives a wrong binding");
    // The browser that started the login can still finish it.
    let done = grpc.exchange_code(request).await.unwrap().into_inner();
    assert_eq!(done.user.unwrap().sub, "00u1alice");
}

#[tokio::test]
async fn a_redirect_uri_other_than_the_attempts_is_refused() {
    let app = spawn_app(AppOptions::real()).await;
    let request = login_until_callback(&app, ALICE).await;
    let mismatched = ExchangeCodeRequest { redirect_uri: OTHER_REDIRECT_URI.into(), ..request };
    assert_status(
        app.grpc.clone().exchange_code(mismatched).await,
        Code::InvalidArgument,
        "redirect_uri does not match the one given to GetLoginUrl",
    );
    assert_eq!(app.count_rows("sessions").await, 0);
}

#[tokio::test]
async fn an_expired_attempt_is_refused() {
    let app = spawn_app(AppOptions::real().set("AUTHGATE_ATTEMPT_TTL", "1")).await;
    let request = login_until_callback(&app, ALICE).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_status(
        app.grpc.clone().exchange_code(request).await,
        Code::FailedPrecondition,
        "the login attempt has expired; start a new login",
    );
    assert_eq!(app.count_rows("sessions").await, 0);
}

#[tokio::test]
async fn a_code_the_provider_rejects_is_unauthenticated_with_invalid_grant() {
    let app = spawn_app(AppOptions::real()).await;
    let request = login_until_callback(&app, ALICE).await;
    let forged = ExchangeCodeRequest { code: "forged-code-value".into(), ..request };
    let status = assert_status(
        app.grpc.clone().exchange_code(forged).await,
        Code::Unauthenticated,
        "invalid_grant",
    );
    assert!(status.message().contains("start a new login"), "{status:?}");
    assert!(!status.message().contains("forged-code-value"), "the code is not echoed");
    assert_eq!(app.count_rows("sessions").await, 0, "no session for a rejected code");
}

#[tokio::test]
async fn get_user_info_needs_a_valid_authgate_token() {
    let app = spawn_app(AppOptions::real()).await;
    let mut grpc = app.grpc.clone();
    assert_status(
        grpc.get_user_info(GetUserInfoRequest::default()).await,
        Code::Unauthenticated,
        "missing `authorization: Bearer <access_token>` metadata",
    );
    let mut basic = tonic::Request::new(GetUserInfoRequest::default());
    basic.metadata_mut().insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
    assert_status(
        grpc.get_user_info(basic).await,
        Code::Unauthenticated,
        "must be `Bearer <access_token>`",
    );
    assert_status(
        grpc.get_user_info(with_bearer(GetUserInfoRequest::default(), "garbage")).await,
        Code::Unauthenticated,
        "not a well-formed JWT",
    );

    // A token from another authgate (other keys) is refused.
    let other = spawn_app(AppOptions::real()).await;
    let done = crate::login_flow::full_login(&other, ALICE).await;
    assert_status(
        grpc.get_user_info(with_bearer(GetUserInfoRequest::default(), &done.access_token)).await,
        Code::Unauthenticated,
        "signed by a key authgate does not know",
    );
}

#[tokio::test]
async fn a_response_from_another_issuer_is_refused_without_burning_the_attempt() {
    let app = spawn_app(AppOptions::real()).await;
    let request = login_until_callback(&app, ALICE).await;
    let mixed_up =
        ExchangeCodeRequest { iss: "https://evil.example.com".into(), ..request.clone() };
    assert_status(
        app.grpc.clone().exchange_code(mixed_up).await,
        Code::Unauthenticated,
        "mix-up, RFC 9207",
    );
    assert_eq!(app.count_rows("login_attempts").await, 1, "the attempt survives");
    let done = app
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest { iss: dev_provider().issuer.clone(), ..request })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.user.unwrap().sub, "00u1alice");
}
