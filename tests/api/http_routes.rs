//! The HTTP routes: the server-side flow with its cookies, the JSON SPA flow, and the error
//! answers (JSON for fetches, a page for navigations, 401 — never a redirect — for APIs).

use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::helpers::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(crate::helpers::HTTP_TIMEOUT)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// An app whose own provider registers the app's HTTP callback URL.
pub async fn app_with_http_callback() -> (TestApp, DevProvider) {
    app_with_http_callback_and(Vec::new()).await
}

/// [`app_with_http_callback`] with extra `AUTHGATE_*` settings.
pub async fn app_with_http_callback_and(settings: Vec<(String, String)>) -> (TestApp, DevProvider) {
    app_with_http_callback_on(AppOptions { env: settings, ..AppOptions::real() }).await
}

/// [`app_with_http_callback`] from these options (its issuer and listener are replaced).
pub async fn app_with_http_callback_on(options: AppOptions) -> (TestApp, DevProvider) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback = format!("http://{}/authorization-code/callback", listener.local_addr().unwrap());
    let mut clients = test_clients();
    clients[0]["redirect_uris"].as_array_mut().unwrap().push(callback.clone().into());
    let provider = start_dev_provider(&clients);
    let app = spawn_app(AppOptions {
        issuer: provider.issuer.clone(),
        listener: Some(listener),
        ..options
    })
    .await;
    wait_until_serving(&app).await;
    (app, provider)
}

/// `GET /api/login` from a client that keeps no cookie: the JSON answer.
async fn api_login_without_cookie(base: &str) -> Value {
    crate::helpers::http_client()
        .get(format!("{base}/api/login"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Signs in through the server-side flow; returns the session cookie value.
pub async fn browser_session(app: &TestApp, user: (&str, &str)) -> String {
    let browser = client();
    let start =
        browser.get(format!("{}/authorization-code/login", app.base_url())).send().await.unwrap();
    let location = start.headers()[header::LOCATION].to_str().unwrap().to_string();
    let callback_url = format!("{}/authorization-code/callback", app.base_url());
    let cb = sign_in_at_provider(&location, user, &callback_url).await;
    let done = browser
        .get(format!("{callback_url}?code={}&state={}", cb.code, cb.state))
        .send()
        .await
        .unwrap();
    set_cookies(&done)
        .iter()
        .find_map(|c| c.strip_prefix("authgate_session="))
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_server_side_flow_sets_an_http_only_session_cookie() {
    let (app, _provider) = app_with_http_callback().await;
    let browser = client();

    let start =
        browser.get(format!("{}/authorization-code/login", app.base_url())).send().await.unwrap();
    assert_eq!(start.status(), StatusCode::FOUND);
    let cookies = set_cookies(&start);
    let login_cookie = cookies.iter().find(|c| c.starts_with("authgate_login=")).unwrap();
    assert!(
        login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Lax"),
        "{login_cookie}"
    );
    assert!(login_cookie.contains("Max-Age=600"), "{login_cookie}");
    let location = start.headers()[header::LOCATION].to_str().unwrap().to_string();
    assert_eq!(query_param(&location, "scope").as_deref(), Some("openid profile email"));
    assert_eq!(query_param(&location, "code_challenge_method").as_deref(), Some("S256"));
    let callback_url = format!("{}/authorization-code/callback", app.base_url());
    assert_eq!(query_param(&location, "redirect_uri").as_deref(), Some(callback_url.as_str()));

    let cb = sign_in_at_provider(&location, BOB, &callback_url).await;
    let done = browser
        .get(format!("{callback_url}?code={}&state={}", cb.code, cb.state))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::FOUND);
    assert_eq!(done.headers()[header::LOCATION], format!("{}/", app.base_url()));
    let cookies = set_cookies(&done);
    let session = cookies.iter().find(|c| c.starts_with("authgate_session=")).unwrap();
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Lax")
            && session.contains("Path=/"),
        "{session}"
    );
    assert!(
        cookies.iter().any(|c| c.starts_with("authgate_login=;") && c.contains("Max-Age=0")),
        "{cookies:?}"
    );

    // The cookie authenticates the browser.
    let home =
        browser.get(format!("{}/", app.base_url())).send().await.unwrap().text().await.unwrap();
    assert!(home.contains("Signed in as <strong>Bob Brown</strong>"), "{home}");
    let me: Value = browser
        .get(format!("{}/api/userinfo", app.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "bob@example.com");
    assert_eq!(me["groups"], serde_json::json!(["Everyone"]));

    // Replaying the callback fails cleanly (a page, not a 500).
    let replay = browser
        .get(format!("{callback_url}?code={}&state={}", cb.code, cb.state))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_server_side_callback_answers_json_when_asked_and_honours_return_to() {
    let (app, _provider) = app_with_http_callback().await;
    let browser = client();
    let start = browser
        .get(format!("{}/authorization-code/login?return_to={}/", app.base_url(), app.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::FOUND);
    let location = start.headers()[header::LOCATION].to_str().unwrap().to_string();
    let callback_url = format!("{}/authorization-code/callback", app.base_url());
    let cb = sign_in_at_provider(&location, ALICE, &callback_url).await;
    let done = browser
        .get(format!("{callback_url}?code={}&state={}", cb.code, cb.state))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert!(set_cookies(&done).iter().any(|c| c.starts_with("authgate_session=")));
    let body: Value = done.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["user"]["email"], "alice@example.com");
    assert!(body["access_token"].as_str().unwrap().starts_with("eyJ"));

    let refused = browser
        .get(format!(
            "{}/authorization-code/login?return_to=https://evil.example.com/",
            app.base_url()
        ))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "invalid_argument");
    assert!(body["message"].as_str().unwrap().contains("return_to"), "{body}");
}

#[tokio::test]
async fn server_side_callback_errors_are_clear_pages_or_json() {
    let app = spawn_app(AppOptions::real()).await;
    let base = app.base_url();
    let http = client();

    // The provider reported an error on the redirect.
    let denied = http
        .get(format!("{base}/authorization-code/callback?error=access_denied&error_description=User%20said%20no&state=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    assert!(denied.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let page = denied.text().await.unwrap();
    assert!(page.contains("access_denied") && page.contains("User said no"), "{page}");

    let as_json = http
        .get(format!(
            "{base}/authorization-code/callback?error=access_denied&error_description=%3Cscript%3E"
        ))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(as_json.status(), StatusCode::UNAUTHORIZED);
    let body: Value = as_json.json().await.unwrap();
    assert_eq!(body["error"], "unauthenticated");

    // An HTML page never reflects markup.
    let xss = http
        .get(format!("{base}/authorization-code/callback?error=%3Cscript%3Ealert(1)%3C/script%3E"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!xss.contains("<script>") && xss.contains("&lt;script&gt;"), "{xss}");

    // No sign-in cookie.
    let no_cookie = http
        .get(format!("{base}/authorization-code/callback?code=abc&state={}", "s".repeat(43)))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(no_cookie.status(), StatusCode::BAD_REQUEST);
    let body: Value = no_cookie.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("sign-in cookie is missing"), "{body}");

    // A wrong binding cookie for a real attempt: 403, and the attempt survives.
    let started: Value =
        http.get(format!("{base}/api/login")).send().await.unwrap().json().await.unwrap();
    let state = started["state"].as_str().unwrap();
    let wrong = crate::helpers::http_client()
        .get(format!("{base}/authorization-code/callback?code=abc&state={state}"))
        .header(header::COOKIE, format!("authgate_login={}", "w".repeat(43)))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);

    // Repeated and oversized parameters.
    let repeated =
        http.get(format!("{base}/api/callback?state=a&state=b&code=c")).send().await.unwrap();
    assert_eq!(repeated.status(), StatusCode::BAD_REQUEST);
    let body: Value = repeated.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("`state` is given more than once"),
        "{body}"
    );
    let huge =
        http.get(format!("{base}/api/callback?code={}", "c".repeat(20_000))).send().await.unwrap();
    assert_eq!(huge.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_json_spa_flow_returns_the_token_response() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let base = app.base_url();
    let http = client();

    let started = http.get(format!("{base}/api/login")).send().await.unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    assert!(
        set_cookies(&started)
            .iter()
            .any(|c| c.starts_with("authgate_login=") && c.contains("HttpOnly"))
    );
    let started: Value = started.json().await.unwrap();
    let login_url = started["login_url"].as_str().unwrap();
    assert!(login_url.contains("/v1/authorize?"));
    assert_eq!(started["state"].as_str().unwrap().len(), 43);
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(started["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires_at.timestamp() > chrono::Utc::now().timestamp());

    let cb = sign_in_at_provider(login_url, ALICE, REDIRECT_URI).await;
    // The cookie from /api/login carries the binding.
    let done = http
        .get(format!("{base}/api/callback?code={}&state={}", cb.code, cb.state))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let body: Value = done.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["user"]["sub"], "00u1alice");
    assert_eq!(body["user"]["groups"], serde_json::json!(["Everyone", "admins"]));
    let token = body["access_token"].as_str().unwrap();

    let me = crate::helpers::http_client()
        .get(format!("{base}/api/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(me.json::<Value>().await.unwrap()["name"], "Alice Anderson");

    // Without the cookie, the binding travels as a parameter.
    let started = api_login_without_cookie(&base).await;
    let cb = sign_in_at_provider(started["login_url"].as_str().unwrap(), BOB, REDIRECT_URI).await;
    let done: Value = crate::helpers::http_client()
        .get(format!(
            "{base}/api/callback?code={}&state={}&binding={}",
            cb.code,
            cb.state,
            started["binding"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["user"]["sub"], "00u2bob", "{done}");
}

#[tokio::test]
async fn unauthenticated_api_calls_get_a_json_401_never_a_redirect() {
    let app = spawn_app(AppOptions::real()).await;
    let http = client();
    for request in [
        http.get(format!("{}/api/userinfo", app.base_url())),
        http.get(format!("{}/api/userinfo", app.base_url())).bearer_auth("not-a-token"),
        http.get(format!("{}/api/userinfo", app.base_url()))
            .header(header::COOKIE, "authgate_session=unknown-session"),
        http.get(format!("{}/api/userinfo", app.base_url()))
            .header("sec-fetch-mode", "cors")
            .header(header::ORIGIN, "http://localhost:5173"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer")
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthenticated");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn api_login_refuses_bad_input_with_json() {
    let app = spawn_app(AppOptions::real()).await;
    let http = client();
    for (query, needle) in [
        ("redirect_uri=https://evil.example.com/cb", "is not allowed"),
        ("scope=bad%22scope", "not a valid scope token"),
        ("prompt=sometimes", "prompt must be"),
    ] {
        let response =
            http.get(format!("{}/api/login?{query}", app.base_url())).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(needle), "{query}: {body}");
    }
    assert_eq!(app.count_rows("login_attempts").await, 0);
}

/// `POST /api/callback` takes the redirect's parameters as a JSON body, so the code and the
/// binding stay out of URLs and access logs; what it refuses, it says why.
#[tokio::test]
async fn the_json_callback_also_takes_a_json_body() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let base = app.base_url();
    let http = client();
    // With the binding cookie from /api/login.
    let started: Value =
        http.get(format!("{base}/api/login")).send().await.unwrap().json().await.unwrap();
    let cb = sign_in_at_provider(started["login_url"].as_str().unwrap(), ALICE, REDIRECT_URI).await;
    let done = http
        .post(format!("{base}/api/callback"))
        .json(&serde_json::json!({ "code": cb.code, "state": cb.state, "iss": cb.iss }))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let body: Value = done.json().await.unwrap();
    assert_eq!(body["user"]["sub"], "00u1alice", "{body}");
    // With the binding in the body, and no cookie.
    let started = api_login_without_cookie(&base).await;
    let cb = sign_in_at_provider(started["login_url"].as_str().unwrap(), BOB, REDIRECT_URI).await;
    let done: Value = crate::helpers::http_client()
        .post(format!("{base}/api/callback"))
        .json(&serde_json::json!({
            "code": cb.code, "state": cb.state, "binding": started["binding"],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["user"]["sub"], "00u2bob", "{done}");
    // The provider's error, and bodies that are not the callback object.
    let refused = |body: &'static str, content_type: &'static str| {
        let url = format!("{base}/api/callback");
        async move {
            let r = crate::helpers::http_client()
                .post(url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = refused(
        r#"{"error":"access_denied","error_description":"the user said no"}"#,
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["message"].as_str().unwrap().contains("access_denied"), "{body}");
    for (body, content_type, needle) in [
        ("code=c&state=s", "application/x-www-form-urlencoded", "application/json"),
        ("not json", "application/json", "callback JSON object"),
        (r#"{"code":"c","state":"s","extra":1}"#, "application/json", "unknown field"),
        (r#"{"code":5,"state":"s"}"#, "application/json", "callback JSON object"),
    ] {
        let (status, answer) = refused(body, content_type).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains(needle), "{body}: {answer}");
    }
}

/// `POST /authorization-code/logout` changes state (it also clears the cookie): a cross-site
/// post is refused, with or without the cookie; the site's own form and a page sending X-CSRF
/// are served.
#[tokio::test]
async fn the_cookie_logout_refuses_cross_site_posts() {
    let (app, _provider) = app_with_http_callback().await;
    let base = app.base_url();
    let cookie = format!("authgate_session={}", browser_session(&app, BOB).await);
    let logout = |headers: Vec<(&'static str, String)>| {
        let url = format!("{base}/authorization-code/logout");
        async move {
            let mut request = client().post(url);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request.send().await.unwrap()
        }
    };
    let signed_in = || {
        let (url, cookie) = (format!("{base}/api/userinfo"), cookie.clone());
        async move {
            client().get(url).header("cookie", cookie).send().await.unwrap().status()
                == StatusCode::OK
        }
    };
    for headers in [
        vec![("cookie", cookie.clone()), ("origin", "https://evil.example.net".to_string())],
        vec![("cookie", cookie.clone())],
        vec![("origin", "https://evil.example.net".to_string())],
    ] {
        let refused = logout(headers.clone()).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{headers:?}");
        assert!(set_cookies(&refused).is_empty(), "a refused logout clears no cookie");
        assert!(signed_in().await, "{headers:?}: the session lives on");
    }
    let done = logout(vec![("cookie", cookie.clone()), ("x-csrf", "1".into())]).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert!(!signed_in().await, "the page's own logout worked");
}
