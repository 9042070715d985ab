//! The whole login against the real OpenID provider: GetLoginUrl → sign in at the provider →
//! ExchangeCode → GetUserInfo, with every ID token, nonce and PKCE check running for real.

use authgate::pb::{
    ExchangeCodeRequest, ExchangeCodeResponse, GetLoginUrlRequest, GetUserInfoRequest,
    RefreshSessionRequest,
};
use tonic::Code;

use crate::helpers::*;

/// Runs GetLoginUrl, signs in as `user`, and returns the ExchangeCode request ready to send.
pub async fn login_until_callback(app: &TestApp, user: (&str, &str)) -> ExchangeCodeRequest {
    let started = app
        .grpc
        .clone()
        .get_login_url(GetLoginUrlRequest::default())
        .await
        .expect("GetLoginUrl")
        .into_inner();
    let callback = sign_in_at_provider(&started.login_url, user, REDIRECT_URI).await;
    assert_eq!(callback.state, started.state, "the provider echoes our state");
    ExchangeCodeRequest {
        code: callback.code,
        state: callback.state,
        binding: started.binding,
        redirect_uri: REDIRECT_URI.into(),
        iss: callback.iss.unwrap_or_default(),
        refresh_cookie: false,
    }
}

pub async fn full_login(app: &TestApp, user: (&str, &str)) -> ExchangeCodeResponse {
    let request = login_until_callback(app, user).await;
    app.grpc.clone().exchange_code(request).await.expect("ExchangeCode").into_inner()
}

#[tokio::test]
async fn a_user_signs_in_end_to_end_and_reads_their_profile() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;

    let started =
        app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap().into_inner();
    // The authorization URL carries everything the security floor asks for.
    let url = &started.login_url;
    assert!(url.starts_with(&format!("{}/v1/authorize?", dev_provider().issuer)), "{url}");
    assert_eq!(query_param(url, "response_type").as_deref(), Some("code"));
    assert_eq!(query_param(url, "client_id").as_deref(), Some(TEST_CLIENT_ID));
    assert_eq!(query_param(url, "scope").as_deref(), Some("openid profile email"));
    assert_eq!(query_param(url, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(query_param(url, "redirect_uri").as_deref(), Some(REDIRECT_URI));
    assert_eq!(query_param(url, "state").as_deref(), Some(started.state.as_str()));
    assert!(query_param(url, "nonce").unwrap().len() >= 43, "nonce has >= 256 bits");
    assert!(query_param(url, "code_challenge").unwrap().len() == 43);
    assert!(started.state.len() >= 43 && started.binding.len() >= 43);
    let expires_at = started.expires_at.unwrap().seconds;
    let now = chrono::Utc::now().timestamp();
    assert!((expires_at - now - 600).abs() <= 5, "attempts expire after 10 minutes by default");
    assert_eq!(app.count_rows("login_attempts").await, 1);

    let callback = sign_in_at_provider(url, ALICE, REDIRECT_URI).await;
    // oidc-provider sends RFC 9207 `iss` on the redirect; passing it on is checked, and accepted.
    let iss = callback.iss.clone().expect("the provider sends iss");
    assert_eq!(iss, dev_provider().issuer);
    let done = app
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: callback.code.clone(),
            state: callback.state.clone(),
            binding: started.binding.clone(),
            redirect_uri: String::new(),
            iss,
            refresh_cookie: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.token_type, "Bearer");
    assert_eq!(done.expires_in, 900);
    let user = done.user.clone().unwrap();
    // The ID token is thin (oidc-provider conforms like Okta's org server): these came from
    // the userinfo endpoint.
    assert_eq!(user.sub, "00u1alice");
    assert_eq!(user.email, "alice@example.com");
    assert!(user.email_verified);
    assert_eq!(user.name, "Alice Anderson");
    assert_eq!(user.given_name, "Alice");
    assert_eq!(user.family_name, "Anderson");
    assert_eq!(user.preferred_username, "alice@example.com");
    assert_eq!(user.groups, vec!["Everyone", "admins"]);
    assert_eq!(app.count_rows("login_attempts").await, 0, "the attempt is consumed");
    assert_eq!(app.count_rows("sessions").await, 1);

    // authgate's own JWT: ES256 with kid, and the claims services need.
    let header = jsonwebtoken::decode_header(&done.access_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert!(header.kid.is_some());
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&done.access_token).unwrap();
    assert_eq!(claims["iss"], app.base_url());
    assert_eq!(claims["aud"], "authgate");
    assert_eq!(claims["sub"], "00u1alice");
    assert_eq!(claims["sid"], done.session_id.as_str());
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["groups"], serde_json::json!(["Everyone", "admins"]));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);

    // GetUserInfo with the token: the stored profile, then a live re-read from the provider.
    let stored = app
        .grpc
        .clone()
        .get_user_info(with_bearer(GetUserInfoRequest { refresh: false }, &done.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.user, done.user);
    let fresh = app
        .grpc
        .clone()
        .get_user_info(with_bearer(GetUserInfoRequest { refresh: true }, &done.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.user, done.user);

    // The same state cannot be exchanged twice.
    let again = app
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: callback.code,
            state: callback.state,
            binding: started.binding,
            redirect_uri: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
}

#[tokio::test]
async fn provider_tokens_are_encrypted_at_rest() {
    let app = spawn_app(AppOptions::real()).await;
    let done = full_login(&app, BOB).await;
    let Some(Db::Postgres(db)) = &app.db else { unreachable!() };
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (access, id_token, profile): (Vec<u8>, Vec<u8>, String) = sqlx::query_as(
        "SELECT provider_access_token, provider_id_token, profile FROM sessions WHERE id = $1",
    )
    .bind(&done.session_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(profile.contains("bob@example.com"));
    // Ciphertext: no JWT header prefix, not printable.
    assert!(!String::from_utf8_lossy(&id_token).contains("eyJ"));
    assert!(access.len() > 28 && std::str::from_utf8(&access).is_err());
}

#[tokio::test]
async fn the_embedded_sqlite_store_runs_the_same_flow() {
    let app = spawn_app(AppOptions::real().sqlite()).await;
    wait_until_serving(&app).await;
    let done = full_login(&app, ALICE).await;
    assert_eq!(done.user.unwrap().email, "alice@example.com");
    let info = app
        .grpc
        .clone()
        .get_user_info(with_bearer(GetUserInfoRequest { refresh: true }, &done.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.user.unwrap().groups, vec!["Everyone", "admins"]);
}

#[tokio::test]
async fn client_secret_post_is_supported_by_configuration() {
    let app = spawn_app(
        AppOptions {
            client_id: POST_CLIENT_ID.into(),
            client_secret: POST_CLIENT_SECRET.into(),
            ..AppOptions::real()
        }
        .set("AUTHGATE_CLIENT_AUTH_METHOD", "client_secret_post"),
    )
    .await;
    let done = full_login(&app, BOB).await;
    assert_eq!(done.user.unwrap().sub, "00u2bob");
}

#[tokio::test]
async fn two_concurrent_exchanges_of_one_state_let_exactly_one_through() {
    let app = spawn_app(AppOptions::real()).await;
    for _ in 0..3 {
        let request = login_until_callback(&app, ALICE).await;
        let (mut a, mut b) = (app.grpc.clone(), app.grpc.clone());
        let (ra, rb) = tokio::join!(a.exchange_code(request.clone()), b.exchange_code(request));
        let results = [ra, rb];
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "exactly one exchange succeeds: {results:?}");
        let err = results.into_iter().find_map(|r| r.err()).unwrap();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    }
    assert_eq!(app.count_rows("sessions").await, 3);
}

#[tokio::test]
async fn extra_scopes_prompt_and_login_hint_reach_the_provider() {
    let app = spawn_app(AppOptions::real()).await;
    let started = app
        .grpc
        .clone()
        .get_login_url(GetLoginUrlRequest {
            redirect_uri: OTHER_REDIRECT_URI.into(),
            scopes: vec!["offline_access".into()],
            prompt: "login".into(),
            login_hint: "alice@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let url = &started.login_url;
    assert_eq!(query_param(url, "scope").as_deref(), Some("openid profile email offline_access"));
    assert_eq!(query_param(url, "prompt").as_deref(), Some("login"));
    assert_eq!(query_param(url, "login_hint").as_deref(), Some("alice@example.com"));
    assert_eq!(query_param(url, "redirect_uri").as_deref(), Some(OTHER_REDIRECT_URI));
    let callback = sign_in_at_provider(url, ALICE, OTHER_REDIRECT_URI).await;
    let done = app
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: callback.code,
            state: callback.state,
            binding: started.binding,
            redirect_uri: OTHER_REDIRECT_URI.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.user.unwrap().sub, "00u1alice");
}

/// Every kind of secret authgate handles, exercised and then looked for in the captured log:
/// code, state, binding, refresh handles, the session cookie, authgate's access tokens, the
/// provider's access, refresh and ID tokens, the client secret, the encryption key and the
/// database password.
#[tokio::test]
async fn secrets_codes_and_tokens_never_reach_the_log() {
    // The test PostgreSQL trusts local connections: a password in the URL is accepted (and
    // unused), which is enough to show it never reaches the log.
    let db = TestDatabase::create().await;
    const DB_PASSWORD: &str = "Db-pa55word-never-logged";
    let url = db.url.replacen("://postgres@", &format!("://postgres:{DB_PASSWORD}@"), 1);
    assert!(url.contains(DB_PASSWORD), "{url}");
    let (app, _provider) = crate::http_routes::app_with_http_callback_on(AppOptions {
        database_url: Some(url),
        ..AppOptions::real()
    })
    .await;
    let started = app
        .grpc
        .clone()
        .get_login_url(GetLoginUrlRequest {
            scopes: vec!["offline_access".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cb = sign_in_at_provider(&started.login_url, ALICE, REDIRECT_URI).await;
    let request = ExchangeCodeRequest {
        code: cb.code.clone(),
        state: cb.state.clone(),
        binding: started.binding.clone(),
        redirect_uri: String::new(),
        iss: cb.iss.unwrap_or_default(),
        refresh_cookie: false,
    };
    let done = app.grpc.clone().exchange_code(request.clone()).await.unwrap().into_inner();
    // A failing replay logs its error too.
    let _ = app.grpc.clone().exchange_code(request).await.unwrap_err();
    let _ = app
        .grpc
        .clone()
        .get_user_info(with_bearer(GetUserInfoRequest { refresh: true }, &done.access_token))
        .await
        .unwrap();
    let refreshed = app
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: done.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner();
    // A replayed refresh handle is logged as reuse (and revokes the session).
    let _ = app
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: done.refresh_token.clone() })
        .await
        .unwrap_err();
    let cookie = crate::http_routes::browser_session(&app, BOB).await;
    let check = crate::helpers::http_client()
        .get(format!("{}/auth/check", app.base_url()))
        .header("cookie", format!("authgate_session={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), reqwest::StatusCode::OK);
    let provider = |field: &'static str| {
        let (url, sid) = (db.url.clone(), done.session_id.clone());
        async move { provider_token(&url, &sid, field).await.expect(field) }
    };
    let (provider_access, provider_refresh, provider_id) =
        (provider("access").await, provider("refresh").await, provider("id").await);

    let logs = captured_logs();
    assert!(logs.contains("login completed"), "the log is being captured");
    for (what, secret) in [
        ("code", cb.code.as_str()),
        ("state", cb.state.as_str()),
        ("binding", started.binding.as_str()),
        ("refresh handle", done.refresh_token.as_str()),
        ("rotated refresh handle", refreshed.refresh_token.as_str()),
        ("session cookie", cookie.as_str()),
        ("access token", done.access_token.as_str()),
        ("refreshed access token", refreshed.access_token.as_str()),
        ("provider access token", provider_access.as_str()),
        ("provider refresh token", provider_refresh.as_str()),
        ("provider ID token", provider_id.as_str()),
        ("client secret", TEST_CLIENT_SECRET),
        ("encryption key", encryption_key()),
        ("database password", DB_PASSWORD),
    ] {
        assert!(secret.len() >= 8, "{what} is a real value");
        assert!(!logs.contains(secret), "the {what} appeared in the log");
    }
}
