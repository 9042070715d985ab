//! Sessions and tokens for the whole fleet: ValidateToken, published keys checked by an
//! independent verifier, key rotation, refresh with reuse detection, logout, back-channel logout
//! (from the real provider and with forged tokens), and two replicas on one database.

use std::{process::Command, time::Duration};

use authgate::pb::{
    ExchangeCodeRequest, GetJwksRequest, GetLoginUrlRequest, GetUserInfoRequest, InvalidReason,
    LogoutRequest, RefreshSessionRequest,
};
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    fake_provider::{FakeProvider, Signing, TokenAnswer},
    helpers::*,
    login_flow::full_login,
};

fn reason(r: &authgate::pb::ValidateTokenResponse) -> InvalidReason {
    InvalidReason::try_from(r.reason).unwrap()
}

/// Waits (polling) until ValidateToken on `app` says the token is revoked; returns how long it took.
async fn until_revoked(app: &TestApp, token: &str, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let v = validate(app, token).await;
        if !v.valid && reason(&v) == InvalidReason::Revoked {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not revoked within {within:?}: {v:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The provider refresh token authgate holds for a session, decrypted from the database.
async fn provider_refresh_token(app: &TestApp, session_id: &str) -> Option<String> {
    let Some(Db::Postgres(db)) = &app.db else { panic!("needs PostgreSQL") };
    provider_token(&db.url, session_id, "refresh").await
}

/// Asks the real provider whether a token is still active (RFC 7662).
async fn provider_says_active(token: &str) -> bool {
    let answer: Value = crate::helpers::http_client()
        .post(format!("{}/v1/introspect", dev_provider().issuer))
        .basic_auth(TEST_CLIENT_ID, Some(TEST_CLIENT_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["active"] == true
}

#[tokio::test]
async fn validate_token_reports_claims_or_a_precise_reason() {
    let app = spawn_app(AppOptions::real()).await;
    let done = full_login(&app, ALICE).await;

    let ok = validate(&app, &done.access_token).await;
    assert!(ok.valid, "{ok:?}");
    let claims = ok.claims.unwrap();
    assert_eq!(claims.sub, "00u1alice");
    assert_eq!(claims.sid, done.session_id);
    assert_eq!(claims.email, "alice@example.com");
    assert_eq!(claims.groups, vec!["Everyone", "admins"]);
    assert_eq!(claims.iss, app.base_url());
    assert_eq!(claims.aud, "authgate");
    assert!(claims.exp > claims.iat);
    // The second answer (served from the verification cache) is the same.
    assert_eq!(validate(&app, &done.access_token).await.claims.unwrap(), claims);

    let mut parts: Vec<&str> = done.access_token.split('.').collect();
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"sub":"admin","sid":"x","iss":"x","aud":"authgate","exp":9999999999}"#);
    parts[1] = &forged_payload;
    let forged = parts.join(".");
    let other = spawn_app(AppOptions::real()).await;
    let foreign = full_login(&other, BOB).await.access_token;
    for (token, want) in [
        ("garbage", InvalidReason::Malformed),
        (forged.as_str(), InvalidReason::BadSignature),
        (foreign.as_str(), InvalidReason::UnknownKey),
    ] {
        let v = validate(&app, token).await;
        assert!(!v.valid && v.claims.is_none(), "{v:?}");
        assert_eq!(reason(&v), want, "{v:?}");
        assert!(!v.message.is_empty());
    }
    let err = app
        .grpc
        .clone()
        .validate_token(authgate::pb::ValidateTokenRequest { token: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = app
        .grpc
        .clone()
        .validate_token(authgate::pb::ValidateTokenRequest { token: "a".repeat(10_000) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// A token is refused from `exp + token_leeway` on — on every path that checks one, cached or
/// not: ValidateToken, GetUserInfo, Envoy's check and `/auth/check`.
#[tokio::test]
async fn tokens_are_refused_from_exp_plus_the_leeway_on_every_path() {
    let app = spawn_app(
        AppOptions::real().set("AUTHGATE_TOKEN_TTL", "1").set("AUTHGATE_TOKEN_LEEWAY", "1"),
    )
    .await;
    let done = full_login(&app, BOB).await;
    assert_eq!(done.expires_in, 1);
    let v = validate(&app, &done.access_token).await;
    assert!(v.valid, "{v:?}");
    let exp = v.claims.unwrap().exp;
    // Past exp + 1 s of leeway (whole seconds: wait for the next second to start).
    while chrono::Utc::now().timestamp() < exp + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = validate(&app, &done.access_token).await;
    assert_eq!(reason(&v), InvalidReason::Expired, "{v:?}");
    let err = app
        .grpc
        .clone()
        .get_user_info(with_bearer(GetUserInfoRequest::default(), &done.access_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("expired"), "{err:?}");
    let bearer = format!("Bearer {}", done.access_token);
    let (_, http_status, _, _) = crate::gateway::denied(
        &crate::gateway::envoy_check(&app, &[("authorization", &bearer)]).await,
    );
    assert_eq!(http_status, 401);
    let check = crate::helpers::http_client()
        .get(format!("{}/auth/check", app.base_url()))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), StatusCode::UNAUTHORIZED);
}

/// A signing key removed from the key set stops verifying at once, even for tokens whose
/// verification is cached.
#[tokio::test]
async fn a_removed_signing_key_stops_verifying_cached_tokens() {
    let app = spawn_app(AppOptions::real().set("AUTHGATE_KEY_RELOAD_INTERVAL", "1")).await;
    let done = full_login(&app, BOB).await;
    assert!(validate(&app, &done.access_token).await.valid, "verified, and now cached");
    // The operator removes the key (compromised, say); the replica re-reads the set within the
    // reload interval and makes a new one.
    app.sql("DELETE FROM signing_keys").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = validate(&app, &done.access_token).await;
        if !v.valid {
            assert_eq!(reason(&v), InvalidReason::UnknownKey, "{v:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the removed key still verifies");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New logins sign with the new key.
    let fresh = full_login(&app, BOB).await;
    assert!(validate(&app, &fresh.access_token).await.valid);
}

// The verifier runs as a blocking child process that calls back into the app: keep a second
// worker thread serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_keys_verify_tokens_with_an_independent_library() {
    let app = spawn_app(AppOptions::real()).await;
    let done = full_login(&app, ALICE).await;
    let http = crate::helpers::http_client();

    let discovery = http
        .get(format!("{}/.well-known/openid-configuration", app.base_url()))
        .send()
        .await
        .unwrap();
    assert!(discovery.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    let discovery: Value = discovery.json().await.unwrap();
    assert_eq!(discovery["issuer"], app.base_url());
    assert_eq!(discovery["jwks_uri"], format!("{}/.well-known/jwks.json", app.base_url()));

    let jwks = http.get(format!("{}/.well-known/jwks.json", app.base_url())).send().await.unwrap();
    assert_eq!(jwks.headers()["cache-control"], "public, max-age=300");
    let jwks: Value = jwks.json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!((key["kty"].as_str(), key["crv"].as_str()), (Some("EC"), Some("P-256")));
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none(), "no private part is published");

    let grpc = app.grpc.clone().get_jwks(GetJwksRequest {}).await.unwrap().into_inner();
    assert_eq!(grpc.keys.len(), 1);
    assert_eq!(grpc.keys[0].kid, key["kid"].as_str().unwrap());
    assert_eq!(grpc.keys[0].x, key["x"].as_str().unwrap());
    assert_eq!(serde_json::from_str::<Value>(&grpc.jwks_json).unwrap(), jwks);

    // Node's `jose`, fetching the JWKS over HTTP like any service in the fleet would.
    let verify = |token: &str| {
        Command::new("node")
            .arg(repo_root().join("e2e/verify-jwt.mjs"))
            .args([&app.base_url(), "authgate", token])
            .output()
            .expect("node")
    };
    let out = verify(&done.access_token);
    assert!(out.status.success(), "jose refused: {}", String::from_utf8_lossy(&out.stderr));
    let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["claims"]["sub"], "00u1alice");
    assert_eq!(verified["claims"]["sid"], done.session_id.as_str());
    assert_eq!(verified["header"]["alg"], "ES256");
    let mut tampered = done.access_token.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    assert!(!verify(&tampered).status.success(), "jose must refuse a tampered token");
}

#[tokio::test]
async fn keys_rotate_by_command_published_before_they_sign() {
    let db = TestDatabase::create().await;
    let app = spawn_app(
        AppOptions { database_url: Some(db.url.clone()), ..AppOptions::real() }
            .set("AUTHGATE_KEY_PUBLISH_AHEAD", "4")
            .set("AUTHGATE_KEY_RELOAD_INTERVAL", "1"),
    )
    .await;
    let before = full_login(&app, ALICE).await.access_token;
    let old_kid = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();

    // The real CLI, against the same database and key-encryption key.
    let out = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["keys", "rotate"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("DATABASE_URL", &db.url)
        .env("AUTHGATE_ENCRYPTION_KEY", encryption_key())
        .env("AUTHGATE_ISSUER_URL", &dev_provider().issuer)
        .env("AUTHGATE_CLIENT_ID", TEST_CLIENT_ID)
        .env("AUTHGATE_CLIENT_SECRET", TEST_CLIENT_SECRET)
        .env("AUTHGATE_REDIRECT_URIS", REDIRECT_URI)
        .env("AUTHGATE_KEY_PUBLISH_AHEAD", "4")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.starts_with("new signing key "), "{printed}");
    let new_kid = printed.split_whitespace().nth(3).unwrap().trim_end_matches(':').to_string();
    assert_ne!(new_kid, old_kid);

    // Published within a reload interval, but not signing yet.
    let kids = || async {
        let jwks = app.grpc.clone().get_jwks(GetJwksRequest {}).await.unwrap().into_inner();
        jwks.keys.into_iter().map(|k| k.kid).collect::<Vec<_>>()
    };
    let mut published = false;
    for _ in 0..30 {
        if kids().await.contains(&new_kid) {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "the new key is published");
    let during = full_login(&app, ALICE).await.access_token;
    assert_eq!(jsonwebtoken::decode_header(&during).unwrap().kid.unwrap(), old_kid);

    // After key_publish_ahead the new key signs; tokens of the old key still validate.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = full_login(&app, ALICE).await.access_token;
    assert_eq!(jsonwebtoken::decode_header(&after).unwrap().kid.unwrap(), new_kid);
    assert!(validate(&app, &before).await.valid);
    assert!(validate(&app, &after).await.valid);
    let now_published = kids().await;
    assert!(now_published.contains(&old_kid) && now_published.contains(&new_kid));
}

#[tokio::test]
async fn refresh_rotates_the_handle_and_reuse_revokes_the_session() {
    let app = spawn_app(AppOptions::real()).await;
    let done = full_login(&app, ALICE).await;
    assert_eq!(done.refresh_token.len(), 43);
    let session_end = done.session_expires_at.unwrap().seconds;
    assert!((session_end - chrono::Utc::now().timestamp() - 86_400).abs() < 10);

    let refreshed = app
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: done.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(refreshed.refresh_token, done.refresh_token);
    assert_ne!(refreshed.access_token, done.access_token);
    assert_eq!(refreshed.token_type, "Bearer");
    assert_eq!(refreshed.user.unwrap().email, "alice@example.com");
    let claims = validate(&app, &refreshed.access_token).await.claims.unwrap();
    assert_eq!(claims.sid, done.session_id, "same session, new token");

    // The used handle again: reuse. The whole session is revoked, new tokens included.
    let err = app
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: done.refresh_token.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("already used"), "{err:?}");
    let v = validate(&app, &refreshed.access_token).await;
    assert_eq!(reason(&v), InvalidReason::Revoked, "{v:?}");
    let err = app
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: refreshed.refresh_token })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    for (handle, code) in [
        ("", Code::InvalidArgument),
        ("not a handle!", Code::InvalidArgument),
        ("unknown-handle-value", Code::Unauthenticated),
    ] {
        let err = app
            .grpc
            .clone()
            .refresh_session(RefreshSessionRequest { refresh_token: handle.into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{handle}: {err:?}");
    }
}

/// Signs in with `offline_access`, so the provider issues a refresh token authgate holds.
async fn offline_login(app: &TestApp, user: (&str, &str)) -> authgate::pb::ExchangeCodeResponse {
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
    let cb = sign_in_at_provider(&started.login_url, user, REDIRECT_URI).await;
    app.grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: cb.code,
            state: cb.state,
            binding: started.binding,
            redirect_uri: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn refresh_also_refreshes_at_the_provider_and_fails_once_the_provider_says_no() {
    let app = spawn_app(AppOptions::real()).await;
    let done = offline_login(&app, BOB).await;
    let first =
        provider_refresh_token(&app, &done.session_id).await.expect("a provider refresh token");
    assert!(provider_says_active(&first).await);

    let refreshed = app
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: done.refresh_token })
        .await
        .unwrap()
        .into_inner();
    let second = provider_refresh_token(&app, &done.session_id).await.unwrap();
    assert_ne!(
        first, second,
        "the provider rotated its refresh token and authgate kept the new one"
    );

    // The user's access is withdrawn at the provider (the grant is revoked there).
    let revoked = crate::helpers::http_client()
        .post(format!("{}/v1/revoke", dev_provider().issuer))
        .basic_auth(TEST_CLIENT_ID, Some(TEST_CLIENT_SECRET))
        .form(&[("token", second.as_str()), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    let err = app
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: refreshed.refresh_token })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("no longer accepts this session"), "{err:?}");
    let v = validate(&app, &refreshed.access_token).await;
    assert_eq!(reason(&v), InvalidReason::Revoked);
}

#[tokio::test]
async fn logout_revokes_everywhere_and_returns_the_end_session_url() {
    let app = spawn_app(
        AppOptions::real().set("AUTHGATE_POST_LOGOUT_REDIRECT_URIS", "http://127.0.0.1:5173/"),
    )
    .await;
    let done = offline_login(&app, ALICE).await;
    let provider_refresh = provider_refresh_token(&app, &done.session_id).await.unwrap();

    let refused = app
        .grpc
        .clone()
        .logout(with_bearer(
            LogoutRequest {
                post_logout_redirect_uri: "https://evil.example.com/".into(),
                state: String::new(),
            },
            &done.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(validate(&app, &done.access_token).await.valid, "a refused logout changes nothing");

    let out = app
        .grpc
        .clone()
        .logout(with_bearer(
            LogoutRequest { post_logout_redirect_uri: String::new(), state: "s-123".into() },
            &done.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let url = out.end_session_url;
    assert!(url.starts_with(&format!("{}/v1/logout?", dev_provider().issuer)), "{url}");
    assert!(query_param(&url, "id_token_hint").unwrap().starts_with("eyJ"));
    assert_eq!(query_param(&url, "client_id").as_deref(), Some(TEST_CLIENT_ID));
    assert_eq!(
        query_param(&url, "post_logout_redirect_uri").as_deref(),
        Some("http://127.0.0.1:5173/")
    );
    assert_eq!(query_param(&url, "state").as_deref(), Some("s-123"));

    // Revoked for every check at once, and at the provider.
    assert_eq!(reason(&validate(&app, &done.access_token).await), InvalidReason::Revoked);
    let err = app
        .grpc
        .clone()
        .get_user_info(with_bearer(GetUserInfoRequest::default(), &done.access_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = app
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: done.refresh_token })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        !provider_says_active(&provider_refresh).await,
        "the provider refresh token is revoked"
    );
    let again = app
        .grpc
        .clone()
        .logout(with_bearer(LogoutRequest::default(), &done.access_token))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_provider_logout_ends_the_session_through_back_channel_logout() {
    // A provider of its own, whose client delivers back-channel logouts to this app.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut clients = test_clients();
    clients[0]["backchannel_logout_uri"] = json!(format!("{base}/backchannel-logout"));
    clients[0]["backchannel_logout_session_required"] = json!(true);
    let provider = start_dev_provider(&clients);
    let app = spawn_app(AppOptions {
        issuer: provider.issuer.clone(),
        listener: Some(listener),
        ..AppOptions::real()
    })
    .await;
    wait_until_serving(&app).await;

    let browser = browser();
    let started =
        app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap().into_inner();
    let cb = sign_in_with(&browser, &started.login_url, ALICE, REDIRECT_URI).await;
    let done = app
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: cb.code,
            state: cb.state,
            binding: started.binding,
            redirect_uri: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(validate(&app, &done.access_token).await.valid);

    // The user signs out at the provider itself (not through authgate).
    let page = browser.get(format!("{}/v1/logout", provider.issuer)).send().await.unwrap();
    let page_url = page.url().clone();
    let html = page.text().await.unwrap();
    let xsrf = html
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no xsrf in the logout page: {html}"));
    let action = page_url.join(&form_action(&html, "/confirm")).unwrap();
    let confirmed =
        browser.post(action).form(&[("xsrf", xsrf), ("logout", "yes")]).send().await.unwrap();
    assert!(confirmed.status().is_redirection(), "{}", confirmed.status());

    // oidc-provider delivered a logout token to /backchannel-logout; authgate revoked the session.
    until_revoked(&app, &done.access_token, Duration::from_secs(5)).await;
    let err = app
        .grpc
        .clone()
        .get_user_info(with_bearer(GetUserInfoRequest::default(), &done.access_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn forged_or_replayed_logout_tokens_are_refused() {
    let fake = FakeProvider::start().await;
    let app = spawn_app(AppOptions::with_issuer(&fake.issuer)).await;
    wait_until_serving(&app).await;
    // A session whose ID token carried the provider session id `fake-sid-1`.
    let started =
        app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap().into_inner();
    let mut claims =
        fake.valid_claims(TEST_CLIENT_ID, &query_param(&started.login_url, "nonce").unwrap());
    claims["sid"] = json!("fake-sid-1");
    fake.answer_next(TokenAnswer::IdToken { claims, signing: Signing::Published });
    let done = app
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: "c".into(),
            state: started.state,
            binding: started.binding,
            redirect_uri: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let post = |body: String, content_type: &'static str| {
        let url = format!("{}/backchannel-logout", app.base_url());
        async move {
            let response = crate::helpers::http_client()
                .post(url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };
    let form = |token: &str| format!("logout_token={token}");
    let base = fake.logout_claims(TEST_CLIENT_ID, "fake-sid-1");
    type Tweak = fn(&mut Value);
    let cases: Vec<(&str, Tweak, &str)> = vec![
        ("wrong audience", |c| c["aud"] = json!("someone-else"), "wrong audience"),
        ("wrong issuer", |c| c["iss"] = json!("https://evil.example.com"), "wrong issuer"),
        ("nonce present", |c| c["nonce"] = json!("n"), "must not contain a nonce"),
        ("no event", |c| c["events"] = json!({}), "back-channel logout event"),
        (
            "no sid or sub",
            |c| {
                c.as_object_mut().unwrap().remove("sid");
                c.as_object_mut().unwrap().remove("sub");
            },
            "neither sid nor sub",
        ),
        (
            "no jti",
            |c| {
                c.as_object_mut().unwrap().remove("jti");
            },
            "missing jti",
        ),
        ("stale iat", |c| c["iat"] = json!(chrono::Utc::now().timestamp() - 3600), "iat"),
        (
            "no exp",
            |c| {
                c.as_object_mut().unwrap().remove("exp");
            },
            "missing exp",
        ),
    ];
    for (what, tweak, needle) in cases {
        let mut claims = base.clone();
        tweak(&mut claims);
        let (status, body) =
            post(form(&fake.logout_token(&claims)), "application/x-www-form-urlencoded").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "invalid_request", "{what}");
        assert!(body["error_description"].as_str().unwrap().contains(needle), "{what}: {body}");
    }
    let (status, _) = post(form("not-a-jwt"), "application/x-www-form-urlencoded").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post(form(&fake.logout_token(&base)), "application/json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the token must come as a form");
    let (status, body) = post(
        form(&fake.logout_token_typed(&base, Some("at+jwt"))),
        "application/x-www-form-urlencoded",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "another token type: {body}");
    assert!(body.contains("typ"), "{body}");
    assert!(validate(&app, &done.access_token).await.valid, "nothing was revoked so far");

    // What real providers send as `typ` (oidc-provider `logout+jwt`, Okta and Keycloak `JWT`,
    // others nothing) is accepted; these name a provider session nobody has.
    for typ in [None, Some("JWT"), Some("application/logout+jwt")] {
        let mut other = fake.logout_claims(TEST_CLIENT_ID, "fake-sid-unknown");
        other.as_object_mut().unwrap().remove("sub");
        let (status, body) =
            post(form(&fake.logout_token_typed(&other, typ)), "application/x-www-form-urlencoded")
                .await;
        assert_eq!(status, StatusCode::OK, "typ {typ:?}: {body}");
    }

    // The revocation fails (an injected database fault): the provider's retry of the same
    // token must not be taken for a replay.
    let token = fake.logout_token(&base);
    app.inject_fault("UPDATE", "sessions").await;
    let (status, body) = post(form(&token), "application/x-www-form-urlencoded").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(validate(&app, &done.access_token).await.valid, "the revocation did not commit");
    app.clear_fault("sessions").await;

    // The genuine token ends the session on the retry; replaying it then is refused.
    let (status, body) = post(form(&token), "application/x-www-form-urlencoded").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(reason(&validate(&app, &done.access_token).await), InvalidReason::Revoked);
    let (status, body) = post(form(&token), "application/x-www-form-urlencoded").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("already used"), "{body}");
}

#[tokio::test]
async fn two_replicas_on_one_database_act_as_one() {
    let db = TestDatabase::create().await;
    // Replicas behind one load balancer share one public URL (the `iss` of their tokens).
    let replica = || async {
        spawn_app(
            AppOptions { database_url: Some(db.url.clone()), ..AppOptions::real() }
                .set("AUTHGATE_PUBLIC_URL", "http://localhost:8080"),
        )
        .await
    };
    let a = replica().await;
    let b = replica().await;

    // A login started on A finishes on B.
    let started =
        a.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap().into_inner();
    let cb = sign_in_at_provider(&started.login_url, ALICE, REDIRECT_URI).await;
    let done = b
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: cb.code,
            state: cb.state,
            binding: started.binding,
            redirect_uri: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // A token minted by B validates on A, and the keys they publish are the same.
    assert!(validate(&a, &done.access_token).await.valid);
    let kids = |app: &TestApp| {
        let mut grpc = app.grpc.clone();
        async move {
            let keys = grpc.get_jwks(GetJwksRequest {}).await.unwrap().into_inner().keys;
            keys.into_iter().map(|k| k.kid).collect::<Vec<_>>()
        }
    };
    assert_eq!(kids(&a).await, kids(&b).await);

    // A refresh on A; a logout on A is seen by ValidateToken on B within the documented bound
    // (revocation_sync_interval, 1 s by default).
    let refreshed = a
        .grpc
        .clone()
        .refresh_session(RefreshSessionRequest { refresh_token: done.refresh_token })
        .await
        .unwrap()
        .into_inner();
    assert!(validate(&b, &refreshed.access_token).await.valid);
    a.grpc
        .clone()
        .logout(with_bearer(LogoutRequest::default(), &refreshed.access_token))
        .await
        .unwrap();
    let seen_after = until_revoked(&b, &refreshed.access_token, Duration::from_secs(3)).await;
    eprintln!("logout on replica A seen by replica B after {seen_after:?}");
    assert_eq!(reason(&validate(&b, &done.access_token).await), InvalidReason::Revoked);
}

#[tokio::test]
async fn keys_rotate_on_schedule() {
    let app = spawn_app(
        AppOptions::real()
            .set("AUTHGATE_KEY_ROTATION_INTERVAL", "4")
            .set("AUTHGATE_KEY_PUBLISH_AHEAD", "2")
            .set("AUTHGATE_KEY_RELOAD_INTERVAL", "1"),
    )
    .await;
    let first = full_login(&app, ALICE).await.access_token;
    let first_kid = jsonwebtoken::decode_header(&first).unwrap().kid.unwrap();
    // Before the first key is 4 s old, a successor is published (2 s ahead), then it signs.
    let mut successor = None;
    for _ in 0..80 {
        let keys = app.grpc.clone().get_jwks(GetJwksRequest {}).await.unwrap().into_inner().keys;
        if let Some(k) = keys.iter().find(|k| k.kid != first_kid) {
            successor = Some(k.kid.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let successor = successor.expect("a successor key was published on schedule");
    let mut signed_by_successor = false;
    for _ in 0..40 {
        let token = full_login(&app, BOB).await.access_token;
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        if kid != first_kid {
            signed_by_successor = true;
            assert!(validate(&app, &token).await.valid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(signed_by_successor, "the successor ({successor}) started signing");
    assert!(validate(&app, &first).await.valid, "tokens of the previous key stay valid");
}
