//! Cookie mode (the token-handler pattern): a browser's ExchangeCode over grpc-web keeps the
//! refresh handle in an HttpOnly, SameSite=Strict cookie; RefreshSession with that cookie and
//! the `x-csrf` header refreshes; a used handle presented again in the cookie within
//! `refresh_grace` gets the successor already issued (two tabs, a retry), never a handle merely
//! presented in a request body.

use authgate::pb::{
    ExchangeCodeResponse, LogoutRequest, RefreshSessionRequest, RefreshSessionResponse,
};

use crate::helpers::*;
use crate::login_flow::login_until_callback;

const SPA: &str = "http://127.0.0.1:5173";
const EXCHANGE: &str = "authgate.v1.AuthService/ExchangeCode";
const REFRESH: &str = "authgate.v1.AuthService/RefreshSession";

async fn cookie_app(extra: &[(&str, &str)]) -> TestApp {
    let mut env = vec![("AUTHGATE_REFRESH_COOKIE".to_string(), "true".to_string())];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let app = spawn_app(AppOptions { env, ..AppOptions::real() }).await;
    // Logins need the provider's discovery document, read in the background after start.
    wait_until_serving(&app).await;
    app
}

/// The value of the refresh cookie a `Set-Cookie` list sets (None when it only deletes it).
fn refresh_cookie(set_cookies: &[String]) -> Option<String> {
    let line = set_cookies.iter().find(|c| c.starts_with("authgate_refresh="))?;
    let value = line["authgate_refresh=".len()..].split(';').next().unwrap().to_string();
    (!value.is_empty()).then_some(value)
}

/// Signs in as a browser in cookie mode: the access token and the refresh cookie's value.
async fn sign_in(app: &TestApp) -> (ExchangeCodeResponse, String) {
    let mut request = login_until_callback(app, ALICE).await;
    request.refresh_cookie = true;
    let answer = grpc_web_call(&app.base_url(), EXCHANGE, &request, &[("origin", SPA)]).await;
    let done: ExchangeCodeResponse = answer.decode();
    let cookies = answer.set_cookies();
    let line = cookies.iter().find(|c| c.starts_with("authgate_refresh=")).expect("a cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(line.contains(attribute), "{attribute} missing: {line}");
    }
    // Over plain http (a local test): no Secure, no __Host- prefix (https gets both).
    assert!(!line.contains("Secure"), "{line}");
    (done, refresh_cookie(&cookies).unwrap())
}

async fn refresh_with_cookie(app: &TestApp, cookie: &str) -> GrpcWebAnswer {
    let cookie = format!("authgate_refresh={cookie}");
    let headers = [("origin", SPA), ("x-csrf", "1"), ("cookie", cookie.as_str())];
    grpc_web_call(&app.base_url(), REFRESH, &RefreshSessionRequest::default(), &headers).await
}

#[tokio::test]
async fn cookie_mode_keeps_the_refresh_handle_in_an_http_only_cookie_and_refreshes_with_it() {
    let app = cookie_app(&[]).await;
    let (done, h1) = sign_in(&app).await;
    assert!(done.refresh_token.is_empty(), "no handle in the body in cookie mode");
    assert!(validate(&app, &done.access_token).await.valid);

    // The cookie without the x-csrf header, or from a foreign page, does not refresh.
    let cookie = format!("authgate_refresh={h1}");
    let bare = grpc_web_call(
        &app.base_url(),
        REFRESH,
        &RefreshSessionRequest::default(),
        &[("origin", SPA), ("cookie", cookie.as_str())],
    )
    .await;
    assert_eq!(bare.status, "7", "PERMISSION_DENIED without x-csrf: {}", bare.text);
    let foreign = grpc_web_call(
        &app.base_url(),
        REFRESH,
        &RefreshSessionRequest::default(),
        &[("origin", "https://evil.example"), ("x-csrf", "1"), ("cookie", cookie.as_str())],
    )
    .await;
    assert_eq!(foreign.status, "7", "a foreign origin is refused: {}", foreign.text);

    // With both: a fresh access token, the next handle in the cookie, none in the body.
    let answer = refresh_with_cookie(&app, &h1).await;
    let refreshed: RefreshSessionResponse = answer.decode();
    assert!(refreshed.refresh_token.is_empty());
    assert!(validate(&app, &refreshed.access_token).await.valid);
    let h2 = refresh_cookie(&answer.set_cookies()).expect("the next handle in the cookie");
    assert_ne!(h1, h2);
    let again: RefreshSessionResponse = refresh_with_cookie(&app, &h2).await.decode();
    assert!(validate(&app, &again.access_token).await.valid);

    // No cookie at all: UNAUTHENTICATED, saying what to do.
    let none = grpc_web_call(
        &app.base_url(),
        REFRESH,
        &RefreshSessionRequest::default(),
        &[("origin", SPA), ("x-csrf", "1")],
    )
    .await;
    assert_eq!(none.status, "16", "{}", none.text);

    // Logout clears the cookie.
    let bearer = format!("Bearer {}", again.access_token);
    let out = grpc_web_call(
        &app.base_url(),
        "authgate.v1.AuthService/Logout",
        &LogoutRequest::default(),
        &[("origin", SPA), ("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(out.status, "0", "{}", out.text);
    let cleared = out.set_cookies();
    assert!(
        cleared.iter().any(|c| c.starts_with("authgate_refresh=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
}

#[tokio::test]
async fn cookie_mode_is_refused_unless_the_configuration_allows_it() {
    let app = spawn_app(AppOptions::real()).await;
    let mut request = login_until_callback(&app, ALICE).await;
    request.refresh_cookie = true;
    let answer = grpc_web_call(&app.base_url(), EXCHANGE, &request, &[("origin", SPA)]).await;
    assert_eq!(answer.status, "9", "FAILED_PRECONDITION: {}", answer.text);
    assert!(answer.text.contains("refresh_cookie") || answer.headers.contains_key("grpc-message"));
    assert!(refresh_cookie(&answer.set_cookies()).is_none());
}

#[tokio::test]
async fn two_tabs_refreshing_with_one_cookie_both_stay_signed_in() {
    let app = cookie_app(&[]).await;
    let (_, h1) = sign_in(&app).await;
    // Two tabs (or a retried request) present the same cookie at once, then again in turn.
    let (a, b) = tokio::join!(refresh_with_cookie(&app, &h1), refresh_with_cookie(&app, &h1));
    let mut successors = Vec::new();
    for answer in [&a, &b] {
        // Both succeed (one may be asked to retry while the other holds the refresh).
        let answer = if answer.status == "14" {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            refresh_with_cookie(&app, &h1).await
        } else {
            answer.clone()
        };
        let refreshed: RefreshSessionResponse = answer.decode();
        assert!(validate(&app, &refreshed.access_token).await.valid);
        successors.push(refresh_cookie(&answer.set_cookies()).unwrap());
    }
    assert_eq!(successors[0], successors[1], "both tabs get the one successor");
    // And the session goes on with it.
    let next: RefreshSessionResponse = refresh_with_cookie(&app, &successors[0]).await.decode();
    assert!(validate(&app, &next.access_token).await.valid);
}

#[tokio::test]
async fn a_used_handle_outside_the_grace_or_outside_the_cookie_still_revokes_the_session() {
    let app = cookie_app(&[("AUTHGATE_REFRESH_GRACE", "1s")]).await;

    // In the request body (someone who merely holds the old handle): no grace, revoked at once.
    let (_, h1) = sign_in(&app).await;
    let first: RefreshSessionResponse = refresh_with_cookie(&app, &h1).await.decode();
    let replay = app
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: h1.clone() })
        .await
        .unwrap_err();
    assert_eq!(replay.code(), tonic::Code::Unauthenticated, "{replay:?}");
    assert!(!validate(&app, &first.access_token).await.valid, "the session was revoked");

    // From the cookie, after the grace: revoked too, and the cookie cleared.
    let (_, h1) = sign_in(&app).await;
    let answer = refresh_with_cookie(&app, &h1).await;
    let second: RefreshSessionResponse = answer.decode();
    let h2 = refresh_cookie(&answer.set_cookies()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let late = refresh_with_cookie(&app, &h1).await;
    assert_eq!(late.status, "16", "{}", late.text);
    assert!(late.set_cookies().iter().any(|c| c.contains("Max-Age=0")), "{:?}", late.set_cookies());
    assert!(!validate(&app, &second.access_token).await.valid, "the session was revoked");
    assert_eq!(refresh_with_cookie(&app, &h2).await.status, "16", "its successor is gone too");
}

#[tokio::test]
async fn a_late_tab_within_the_grace_gets_the_newest_handle_not_an_older_one() {
    let app = cookie_app(&[]).await;
    let (_, h1) = sign_in(&app).await;
    // One tab refreshes twice in a row (H1 → H2 → H3); the browser's one cookie now holds H3.
    let a = refresh_with_cookie(&app, &h1).await;
    let h2 = refresh_cookie(&a.set_cookies()).unwrap();
    let b = refresh_with_cookie(&app, &h2).await;
    let h3 = refresh_cookie(&b.set_cookies()).unwrap();
    // A tab whose request with H1 was delayed must not set the cookie back to the used H2.
    let late = refresh_with_cookie(&app, &h1).await;
    let refreshed: RefreshSessionResponse = late.decode();
    assert!(validate(&app, &refreshed.access_token).await.valid);
    assert_eq!(refresh_cookie(&late.set_cookies()).as_deref(), Some(h3.as_str()));
    let next: RefreshSessionResponse = refresh_with_cookie(&app, &h3).await.decode();
    assert!(validate(&app, &next.access_token).await.valid);
}
