//! Fitting into real infrastructure: Envoy ext_authz (a tonic client speaking the vendored Envoy
//! protos), nginx `auth_request` (a real nginx in front of a small upstream), access rules at login
//! and at check time, Prometheus metrics (parsed by the reference Python parser), request ids,
//! readiness, and the CLI.

use std::{
    collections::{BTreeMap, HashMap},
    process::{Command, Stdio},
    time::Duration,
};

use authgate::{
    ext::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse,
        attribute_context::{HttpRequest, Request as AttrRequest},
        authorization_client::AuthorizationClient,
        check_response::HttpResponse,
    },
    pb::{ExchangeCodeRequest, GetLoginUrlRequest},
};
use axum::{Json, Router, http::HeaderMap, routing::any};
use reqwest::StatusCode;
use serde_json::Value;
use tonic::Code;

use crate::{
    helpers::*,
    http_routes::{app_with_http_callback, browser_session},
    login_flow::full_login,
};

pub(crate) async fn envoy_check(app: &TestApp, headers: &[(&str, &str)]) -> CheckResponse {
    envoy_check_request(app, "GET", headers).await
}

/// Envoy's Check for a `method` request to `https://shop.example.com/orders`.
async fn envoy_check_request(
    app: &TestApp,
    method: &str,
    headers: &[(&str, &str)],
) -> CheckResponse {
    let channel =
        tonic::transport::Channel::from_shared(app.base_url()).unwrap().connect().await.unwrap();
    let http = HttpRequest {
        method: method.into(),
        path: "/orders".into(),
        host: "shop.example.com".into(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    let request = CheckRequest {
        attributes: Some(AttributeContext { request: Some(AttrRequest { http: Some(http) }) }),
    };
    AuthorizationClient::new(channel).check(request).await.unwrap().into_inner()
}

fn ok_headers(r: &CheckResponse) -> (BTreeMap<String, String>, Vec<String>) {
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else { panic!("not OK: {r:?}") };
    let set = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    (set, ok.headers_to_remove.clone())
}

pub(crate) fn denied(r: &CheckResponse) -> (i32, u32, BTreeMap<String, String>, String) {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not denied: {r:?}")
    };
    let headers = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    (
        r.status.as_ref().unwrap().code,
        d.status.as_ref().unwrap().code as u32,
        headers,
        d.body.clone(),
    )
}

#[tokio::test]
async fn envoy_ext_authz_allows_valid_tokens_with_identity_headers_and_denies_the_rest() {
    let (app, _provider) = app_with_http_callback().await;
    let done = full_login(&app, ALICE).await;

    let bearer = format!("Bearer {}", done.access_token);
    let r = envoy_check(&app, &[("authorization", &bearer)]).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
    let (set, removed) = ok_headers(&r);
    assert_eq!(set["x-authgate-sub"], "00u1alice");
    assert_eq!(set["x-authgate-email"], "alice@example.com");
    assert_eq!(set["x-authgate-groups"], "Everyone,admins");
    assert!(removed.is_empty());

    // The browser session cookie works too.
    let cookie = browser_session(&app, BOB).await;
    let r =
        envoy_check(&app, &[("cookie", &format!("theme=dark; authgate_session={cookie}"))]).await;
    let (set, _) = ok_headers(&r);
    assert_eq!(set["x-authgate-sub"], "00u2bob");

    for headers in [
        vec![],
        vec![("authorization", "Bearer not-a-token")],
        vec![("authorization", "Basic YWxpY2U6cHc=")],
        vec![("cookie", "authgate_session=unknown-session-value")],
        vec![("x-authgate-sub", "00u1alice")],
    ] {
        let r = envoy_check(&app, &headers).await;
        let (grpc, http, h, body) = denied(&r);
        assert_eq!(grpc, Code::Unauthenticated as i32, "{headers:?}");
        assert_eq!(http, 401, "{headers:?}");
        assert!(h["www-authenticate"].starts_with("Bearer"), "{h:?}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "unauthenticated");
    }
}

#[tokio::test]
async fn access_rules_apply_at_login_and_at_check_time() {
    // Login: only admins may sign in.
    let admins_only = spawn_app(AppOptions::real().set("AUTHGATE_ALLOWED_GROUPS", "admins")).await;
    let ok = full_login(&admins_only, ALICE).await;
    assert_eq!(ok.user.unwrap().sub, "00u1alice");
    let request = crate::login_flow::login_until_callback(&admins_only, BOB).await;
    let err = admins_only.grpc.clone().exchange_code(request).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("access denied by the allowed_groups rule"), "{err:?}");
    assert_eq!(admins_only.count_rows("sessions").await, 1, "no session for the refused user");

    let wrong_domain =
        spawn_app(AppOptions::real().set("AUTHGATE_ALLOWED_EMAIL_DOMAINS", "example.org")).await;
    let request = crate::login_flow::login_until_callback(&wrong_domain, ALICE).await;
    let err = wrong_domain.grpc.clone().exchange_code(request).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("allowed_email_domains") && err.message().contains("example.com"),
        "{err:?}"
    );

    // Check time: a replica with stricter rules on the same database refuses bob's valid token.
    let db = TestDatabase::create().await;
    let open = spawn_app(
        AppOptions { database_url: Some(db.url.clone()), ..AppOptions::real() }
            .set("AUTHGATE_PUBLIC_URL", "http://localhost:8080"),
    )
    .await;
    let strict = spawn_app(
        AppOptions { database_url: Some(db.url.clone()), ..AppOptions::real() }
            .set("AUTHGATE_PUBLIC_URL", "http://localhost:8080")
            .set("AUTHGATE_ALLOWED_GROUPS", "admins"),
    )
    .await;
    let bob = full_login(&open, BOB).await.access_token;
    let alice = full_login(&open, ALICE).await.access_token;
    let r = envoy_check(&strict, &[("authorization", &format!("Bearer {bob}"))]).await;
    let (grpc, http, _, body) = denied(&r);
    assert_eq!((grpc, http), (Code::PermissionDenied as i32, 403));
    assert!(body.contains("allowed_groups"), "{body}");
    let r = envoy_check(&strict, &[("authorization", &format!("Bearer {alice}"))]).await;
    assert_eq!(r.status.unwrap().code, 0);
    let check = crate::helpers::http_client()
        .get(format!("{}/auth/check", strict.base_url()))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn auth_check_answers_200_with_identity_headers_or_401() {
    let (app, _provider) = app_with_http_callback().await;
    let done = full_login(&app, ALICE).await;
    let http = crate::helpers::http_client();
    let url = format!("{}/auth/check", app.base_url());

    let ok = http.get(&url).bearer_auth(&done.access_token).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["x-authgate-sub"], "00u1alice");
    assert_eq!(ok.headers()["x-authgate-groups"], "Everyone,admins");
    let cookie = browser_session(&app, BOB).await;
    let ok =
        http.get(&url).header("cookie", format!("authgate_session={cookie}")).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["x-authgate-email"], "bob@example.com");

    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert!(anonymous.headers().get("x-authgate-sub").is_none());
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"], "unauthenticated");
}

/// An upstream that answers with the headers it received.
async fn echo_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new().fallback(any(|headers: HeaderMap| async move {
        let map: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        Json(map)
    }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// A real nginx (Debian's package) with `auth_request` to authgate in front of `upstream`.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_nginx(authgate: &str, upstream: u16) -> Nginx {
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx must be installed (apt-get install nginx; scripts/test does it)");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.path().display();
    let conf = format!(
        r#"daemon off;
master_process off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_authgate;
      auth_request_set $authgate_sub $upstream_http_x_authgate_sub;
      auth_request_set $authgate_email $upstream_http_x_authgate_email;
      auth_request_set $authgate_groups $upstream_http_x_authgate_groups;
      auth_request_set $authgate_groups_json $upstream_http_x_authgate_groups_json;
      proxy_set_header X-Authgate-Sub $authgate_sub;
      proxy_set_header X-Authgate-Email $authgate_email;
      proxy_set_header X-Authgate-Groups $authgate_groups;
      proxy_set_header X-Authgate-Groups-Json $authgate_groups_json;
      proxy_pass http://127.0.0.1:{upstream};
    }}
    location = /_authgate {{
      internal;
      proxy_pass {authgate}/auth/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $http_host;
    }}
  }}
}}
"#
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let mut child = Command::new(nginx)
        .args(["-p", &dir.path().display().to_string(), "-c", "nginx.conf"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Nginx { child, port, _dir: dir };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "nginx did not start: {}",
        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
    );
}

#[tokio::test]
async fn nginx_auth_request_passes_identity_and_refuses_anonymous_requests() {
    let app = spawn_app(AppOptions::real()).await;
    let done = full_login(&app, ALICE).await;
    let upstream = echo_upstream().await;
    let nginx = start_nginx(&app.base_url(), upstream).await;
    let http = crate::helpers::http_client();
    let url = format!("http://127.0.0.1:{}/orders", nginx.port);

    let passed = http
        .get(&url)
        .bearer_auth(&done.access_token)
        .header("x-authgate-sub", "someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(passed.status(), StatusCode::OK);
    let seen: HashMap<String, String> = passed.json().await.unwrap();
    assert_eq!(seen["x-authgate-sub"], "00u1alice", "nginx replaced the spoofed header");
    assert_eq!(seen["x-authgate-email"], "alice@example.com");
    assert_eq!(seen["x-authgate-groups"], "Everyone,admins");
    assert_eq!(seen["x-authgate-groups-json"], r#"["Everyone","admins"]"#);

    for request in [
        http.get(&url),
        http.get(&url).header("x-authgate-sub", "00u1alice"),
        http.get(&url).bearer_auth("forged.token.value"),
    ] {
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn metrics_are_exposed_in_the_prometheus_text_format() {
    let app = spawn_app(AppOptions::real()).await;
    let done = full_login(&app, ALICE).await;
    let _ = app
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: "x".into(),
            state: "s".repeat(43),
            binding: "b".repeat(43),
            redirect_uri: String::new(),
            ..Default::default()
        })
        .await;
    validate(&app, &done.access_token).await;
    validate(&app, "garbage").await;
    let _ = app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap();
    reqwest::get(format!("{}/healthz", app.base_url())).await.unwrap().error_for_status().unwrap();
    let response = reqwest::get(format!("{}/metrics", app.base_url())).await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();

    // Parsed by the reference parser (Python prometheus_client), not by string matching.
    let parser = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client (pip install prometheus-client) refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sample = |family: &str, name: &str, labels: &[(&str, &str)]| -> f64 {
        families[family]["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no family {family}: {text}"))
            .iter()
            .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][k] == *v))
            .and_then(|s| s[2].as_f64())
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {family}"))
    };
    assert_eq!(families["authgate_logins_started"]["type"], "counter");
    assert!(sample("authgate_logins_started", "authgate_logins_started_total", &[]) >= 2.0);
    // gRPC requests by status code: the refused exchange, and the successful calls.
    let rpc = "authgate_grpc_requests";
    assert_eq!(families[rpc]["type"], "counter");
    let exchange = "/authgate.v1.AuthService/ExchangeCode";
    let codes: Vec<String> = families[rpc]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[1]["method"] == exchange)
        .map(|s| s[1]["code"].as_str().unwrap().to_string())
        .collect();
    assert!(codes.contains(&"OK".to_string()), "{codes:?}");
    assert!(codes.iter().any(|c| c != "OK"), "the refused exchange has its code: {codes:?}");
    // The standard process metrics.
    assert_eq!(families["process_cpu_seconds"]["type"], "counter");
    assert!(sample("process_cpu_seconds", "process_cpu_seconds_total", &[]) > 0.0);
    assert!(sample("process_resident_memory_bytes", "process_resident_memory_bytes", &[]) > 1e6);
    assert!(sample("process_open_fds", "process_open_fds", &[]) >= 3.0);
    assert!(sample("process_max_fds", "process_max_fds", &[]) >= 1024.0);
    let started = sample("process_start_time_seconds", "process_start_time_seconds", &[]);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(started > now - 7200.0 && started <= now + 1.0, "{started} vs {now}");
    assert!(sample("authgate_logins_completed", "authgate_logins_completed_total", &[]) >= 1.0);
    assert!(
        sample(
            "authgate_logins_failed",
            "authgate_logins_failed_total",
            &[("reason", "unknown_state")]
        ) >= 1.0
    );
    assert!(
        sample(
            "authgate_token_validations",
            "authgate_token_validations_total",
            &[("result", "valid")]
        ) >= 1.0
    );
    assert!(
        sample(
            "authgate_token_validations",
            "authgate_token_validations_total",
            &[("result", "malformed")]
        ) >= 1.0
    );
    assert_eq!(families["authgate_grpc_request_duration_seconds"]["type"], "histogram");
    assert!(
        sample(
            "authgate_grpc_request_duration_seconds",
            "authgate_grpc_request_duration_seconds_count",
            &[("method", "/authgate.v1.AuthService/ExchangeCode")]
        ) >= 2.0
    );
    assert!(
        sample(
            "authgate_provider_request_duration_seconds",
            "authgate_provider_request_duration_seconds_count",
            &[("endpoint", "token")]
        ) >= 1.0
    );
    assert!(
        sample("authgate_pending_login_attempts", "authgate_pending_login_attempts", &[]) >= 1.0
    );
    assert!(
        sample("authgate_db_pool_max_connections", "authgate_db_pool_max_connections", &[]) >= 1.0
    );
    assert!(families["authgate_db_pool_connections"]["samples"].as_array().unwrap().len() == 2);
    assert_eq!(sample("authgate_ready", "authgate_ready", &[]), 1.0);
    assert_eq!(families["authgate_http_request_duration_seconds"]["type"], "histogram");
    assert!(
        sample(
            "authgate_http_request_duration_seconds",
            "authgate_http_request_duration_seconds_count",
            &[("route", "/healthz"), ("status", "2xx")]
        ) >= 1.0
    );
    // Every family has its help text.
    for name in ["authgate_logins_started_total", "authgate_grpc_requests_total", "authgate_ready"]
    {
        assert!(text.contains(&format!("# HELP {name} ")), "no help for {name}: {text}");
    }
}

#[tokio::test]
async fn every_request_gets_a_request_id_that_reaches_the_logs() {
    let app = spawn_app(AppOptions::real()).await;
    let http = crate::helpers::http_client();
    let generated = http.get(format!("{}/healthz", app.base_url())).send().await.unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.len() >= 16);
    let given = http
        .get(format!("{}/api/login?prompt=bogus", app.base_url()))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
    let ignored = http
        .get(format!("{}/healthz", app.base_url()))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(ignored.headers()["x-request-id"], "bad id with spaces");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = captured_logs();
    assert!(
        logs.lines().any(|l| l.contains("request_id=trace-me-42") && l.contains("request refused")),
        "the refusal is logged with the caller's request id"
    );
}

#[tokio::test]
async fn readyz_flips_while_the_database_is_down_and_recovers() {
    let db = TestDatabase::create().await;
    let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let app = spawn_app(AppOptions {
        database_url: Some(format!("postgres://postgres@{}/{}", proxy.addr, db.name)),
        ..AppOptions::real()
    })
    .await;
    let readyz = format!("{}/readyz", app.base_url());
    let wait_for = |want: StatusCode| {
        let readyz = readyz.clone();
        async move {
            let http = crate::helpers::http_client();
            for _ in 0..100 {
                let r = http.get(&readyz).send().await.unwrap();
                if r.status() == want {
                    return r.json::<Value>().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("/readyz never answered {want}");
        }
    };
    wait_for(StatusCode::OK).await;
    proxy.set_down(true);
    let body = wait_for(StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["ready"], false);
    assert_ne!(body["database"], "ok");
    assert_eq!(body["provider"], "ok");
    let live = reqwest::get(format!("{}/healthz", app.base_url())).await.unwrap();
    assert_eq!(live.status(), StatusCode::OK, "liveness does not depend on the database");
    proxy.set_down(false);
    wait_for(StatusCode::OK).await;
    // An expected 503 is no ERROR line: ERROR means someone should act.
    let logs = captured_logs();
    assert!(
        !logs.lines().any(|l| l.contains("ERROR") && l.contains("/readyz")),
        "a /readyz 503 was logged at ERROR"
    );
}

#[tokio::test]
async fn the_cli_checks_the_configuration_and_explains_itself() {
    let db = TestDatabase::create().await;
    // A password in the URL (the test PostgreSQL trusts local connections and ignores it): no
    // command may print it.
    const DB_PASSWORD: &str = "cli-Pa55word";
    let url = db.url.replacen("://postgres@", &format!("://postgres:{DB_PASSWORD}@"), 1);
    let run = |args: &[&str], issuer: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_authgate"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("DATABASE_URL", &url)
            .env("AUTHGATE_ENCRYPTION_KEY", encryption_key())
            .env("AUTHGATE_ISSUER_URL", issuer)
            .env("AUTHGATE_CLIENT_ID", TEST_CLIENT_ID)
            .env("AUTHGATE_CLIENT_SECRET", TEST_CLIENT_SECRET)
            .env("AUTHGATE_REDIRECT_URIS", REDIRECT_URI)
            .env("AUTHGATE_PROVIDER_TIMEOUT", "2")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(DB_PASSWORD), "{args:?} printed the database password: {all}");
        out
    };
    let issuer = dev_provider().issuer.clone();
    // migrate and keys need only the database settings (and the key for keys).
    for args in [&["migrate"][..], &["keys", "list"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_authgate"))
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &url)
            .env("AUTHGATE_ENCRYPTION_KEY", encryption_key())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = run(&["migrate"], &issuer);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["check-config"], &issuer);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for check in ["configuration", "provider", "database", "signing keys"] {
        assert!(text.lines().any(|l| l.starts_with("ok") && l.contains(check)), "{check}: {text}");
    }
    assert!(!text.contains(TEST_CLIENT_SECRET) && !text.contains(encryption_key()));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = run(&["check-config"], &format!("http://{closed}/oauth2/default"));
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("FAIL") && l.contains("provider")), "{text}");

    let bad = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("serve")
        .env_clear()
        .env("AUTHGATE_ISSUER_URL", "not a url")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("issuer_url (env AUTHGATE_ISSUER_URL)") && err.contains("client_id"),
        "{err}"
    );

    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["check-config", "--help"],
        &["keys", "rotate", "--help"],
    ] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_authgate")).args(args).env_clear().output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: authgate"), "{args:?}");
    }
}

/// (content type, body) of each export a [`Collector`] received.
type Exports = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP collector stand-in: it keeps (content type, body) of every export.
struct Collector {
    url: String,
    exports: Exports,
}

impl Collector {
    async fn start() -> Self {
        let exports = Exports::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sink = std::sync::Arc::clone(&exports);
        let routes = Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let sink = std::sync::Arc::clone(&sink);
                async move {
                    let kind = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    sink.lock().unwrap().push((kind, body.to_vec()));
                    ""
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, routes).await.unwrap() });
        Self { url, exports }
    }

    /// Every export's body, end to end.
    fn bytes(&self) -> Vec<u8> {
        self.exports.lock().unwrap().iter().flat_map(|(_, b)| b.clone()).collect()
    }
}

/// Stops a [`spawn_json_binary`] child with SIGTERM; it must exit 0 within 10 s. Its log
/// (stderr), also written to `target/test-output/<file>`.
async fn stop_and_read_logs(child: tokio::process::Child, file: &str) -> String {
    let pid = child.id().unwrap();
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "graceful shutdown exits 0");
    let logs = String::from_utf8_lossy(&out.stderr).into_owned();
    std::fs::write(output_dir().join(file), logs.as_bytes()).unwrap();
    logs
}

/// Runs the authgate binary with JSON logs (stderr piped) on a free port against `db`, signing
/// in at `issuer`, with `extra` settings; returns once it can log in, with its base URL.
async fn spawn_json_binary(
    db: &TestDatabase,
    issuer: &str,
    extra: &[(&str, String)],
) -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_authgate"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("RUST_LOG", "info,authgate=debug")
        .env("DATABASE_URL", &db.url)
        .env("AUTHGATE_ENCRYPTION_KEY", encryption_key())
        .env("AUTHGATE_ISSUER_URL", issuer)
        .env("AUTHGATE_CLIENT_ID", TEST_CLIENT_ID)
        .env("AUTHGATE_CLIENT_SECRET", TEST_CLIENT_SECRET)
        .env("AUTHGATE_REDIRECT_URIS", REDIRECT_URI)
        .env("AUTHGATE_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("AUTHGATE_LOG_FORMAT", "json")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    for (key, value) in extra {
        command.env(key, value);
    }
    let child =
        command.stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_login_ready(&base).await;
    (child, base)
}

/// Runs the real binary with OTLP export to a fake collector and JSON logs: the spans of a
/// request arrive at the collector, and the log lines are JSON carrying the request id.
#[tokio::test]
async fn spans_are_exported_over_otlp_and_logs_can_be_json() {
    let collector = Collector::start().await;
    let db = TestDatabase::create().await;
    let (child, base) = spawn_json_binary(
        &db,
        &dev_provider().issuer,
        &[("AUTHGATE_OTLP_ENDPOINT", collector.url.clone())],
    )
    .await;
    let http = crate::helpers::http_client();
    let channel =
        tonic::transport::Channel::from_shared(base.clone()).unwrap().connect().await.unwrap();
    authgate::pb::auth_service_client::AuthServiceClient::new(channel)
        .get_login_url(GetLoginUrlRequest::default())
        .await
        .unwrap();
    let refused = http
        .get(format!("{base}/api/login?prompt=bogus"))
        .header("x-request-id", "json-log-check")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

    let mut exported = false;
    for _ in 0..50 {
        let got = collector.exports.lock().unwrap().clone();
        let all: Vec<u8> = got.iter().flat_map(|(_, b)| b.clone()).collect();
        let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
        if has(b"GetLoginUrl") && has(b"authgate") && has(b"db") {
            assert!(
                got.iter().all(|(kind, _)| kind == "application/x-protobuf"),
                "{:?}",
                got.iter().map(|g| &g.0).collect::<Vec<_>>()
            );
            exported = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exported, "no OTLP export with the GetLoginUrl span reached the collector");

    // SIGTERM: graceful shutdown; then read the JSON log lines.
    let logs = stop_and_read_logs(child, "json-logs.txt").await;
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "authgate listening"),
        "{}",
        logs.lines().take(8).collect::<Vec<_>>().join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "request refused"
                && l["span"]["request_id"] == "json-log-check"),
        "{logs}"
    );
    assert!(lines.iter().any(|l| l["message"] == "authgate stopped"));
    assert!(!logs.contains(TEST_CLIENT_SECRET));
}

/// The OpenTelemetry conventions: the standard `OTEL_*` variables win over `otlp_endpoint`; a
/// caller's `traceparent` (gRPC metadata, HTTP header) becomes the parent of authgate's spans and
/// travels on to the provider; spans carry the semantic-convention names and attributes; JSON
/// log lines carry the trace id.
#[tokio::test]
async fn traces_follow_the_otel_variables_and_the_callers_trace_context() {
    let collector = Collector::start().await;
    let fake = crate::fake_provider::FakeProvider::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let db = TestDatabase::create().await;
    let (child, base) = spawn_json_binary(
        &db,
        &fake.issuer,
        &[
            // authgate's own setting points nowhere: the standard variable must win.
            ("AUTHGATE_OTLP_ENDPOINT", format!("http://{closed}")),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.clone()),
            ("OTEL_SERVICE_NAME", "authgate-under-test".into()),
        ],
    )
    .await;
    let http = crate::helpers::http_client();

    // A login whose caller is part of trace `grpc_trace`.
    let grpc_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    fn traced<T>(message: T, trace: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let value = format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap();
        request.metadata_mut().insert("traceparent", value);
        request
    }
    let channel =
        tonic::transport::Channel::from_shared(base.clone()).unwrap().connect().await.unwrap();
    let mut grpc = authgate::pb::auth_service_client::AuthServiceClient::new(channel);
    let started = grpc
        .get_login_url(traced(GetLoginUrlRequest::default(), grpc_trace))
        .await
        .unwrap()
        .into_inner();
    let nonce = query_param(&started.login_url, "nonce").unwrap();
    fake.answer_valid(TEST_CLIENT_ID, &nonce);
    grpc.exchange_code(traced(
        ExchangeCodeRequest {
            code: "code-from-fake".into(),
            state: started.state.clone(),
            binding: started.binding.clone(),
            ..Default::default()
        },
        grpc_trace,
    ))
    .await
    .unwrap();
    // ... which went on to the provider's token endpoint.
    let sent = fake.token_requests("authorization_code");
    let traceparent = sent.last().unwrap().traceparent.clone().expect("traceparent sent");
    assert!(traceparent.starts_with(&format!("00-{grpc_trace}-")), "{traceparent}");

    // An HTTP request in trace `http_trace` that logs a line.
    let http_trace = "0af7651916cd43dd8448eb211c80319c";
    let refused = http
        .get(format!("{base}/api/login?prompt=bogus"))
        .header("x-request-id", "traced-log-check")
        .header("traceparent", format!("00-{http_trace}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);

    let hex = |s: &str| {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    let wanted: Vec<Vec<u8>> = [
        hex(grpc_trace),
        hex(http_trace),
        b"authgate-under-test".to_vec(),
        b"authgate.v1.AuthService/ExchangeCode".to_vec(),
        b"rpc.grpc.status_code".to_vec(),
        b"GET /api/login".to_vec(),
        b"http.response.status_code".to_vec(),
        b"postgresql".to_vec(),
        b"db.operation.name".to_vec(),
    ]
    .into();
    let mut missing = wanted.clone();
    for _ in 0..100 {
        let all = collector.bytes();
        missing.retain(|needle| !all.windows(needle.len()).any(|w| w == needle.as_slice()));
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        missing.is_empty(),
        "not exported: {:?}",
        missing.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect::<Vec<_>>()
    );

    let logs = stop_and_read_logs(child, "traced-json-logs.txt").await;
    let line = logs
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .find(|l| l["span"]["request_id"] == "traced-log-check")
        .unwrap_or_else(|| panic!("no log line of the traced request: {logs}"));
    assert_eq!(line["trace_id"], http_trace, "{line}");
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");
}

/// The CSRF rule at both gateways: a request authenticated by the session cookie with an unsafe
/// method must come from an allowed page (its own origin, an allow-listed one, a same-site
/// fetch without Origin, or carrying X-CSRF); links (GET) always pass; bearer tokens are exempt.
#[tokio::test]
async fn gateway_checks_refuse_cross_site_requests_authenticated_by_the_cookie() {
    let (app, _provider) = app_with_http_callback().await;
    let cookie = format!("authgate_session={}", browser_session(&app, BOB).await);
    let bearer = format!("Bearer {}", full_login(&app, ALICE).await.access_token);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, bool);
    let cases: Vec<Case> = vec![
        ("POST", vec![("origin", "https://evil.example.net")], false),
        (
            "POST",
            vec![("origin", "https://sibling.example.com"), ("sec-fetch-site", "same-site")],
            false,
        ),
        ("DELETE", vec![("origin", "null")], false),
        ("POST", vec![("sec-fetch-site", "cross-site")], false),
        ("POST", vec![], false),
        ("POST", vec![("origin", "https://shop.example.com")], true),
        ("PUT", vec![("sec-fetch-site", "same-origin")], true),
        ("POST", vec![("x-csrf", "1")], true),
        (
            "GET",
            vec![("origin", "https://evil.example.net"), ("sec-fetch-site", "cross-site")],
            true,
        ),
        ("HEAD", vec![], true),
    ];
    for (method, extra, allowed) in &cases {
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend(extra.iter().copied());
        let r = envoy_check_request(&app, method, &headers).await;
        if *allowed {
            ok_headers(&r);
        } else {
            let (grpc, http, _, body) = denied(&r);
            assert_eq!((grpc, http), (Code::PermissionDenied as i32, 403), "{method} {extra:?}");
            assert!(body.contains("cross-site request refused"), "{body}");
        }
    }
    // A bearer token is never attached by a browser on its own: no cross-site rule.
    let r = envoy_check_request(
        &app,
        "POST",
        &[("authorization", &bearer), ("origin", "https://evil.example.net")],
    )
    .await;
    ok_headers(&r);

    // /auth/check, as nginx asks it: the original method and host in headers.
    let check = |method: Option<&'static str>, origin: &'static str| {
        let (url, cookie) = (format!("{}/auth/check", app.base_url()), cookie.clone());
        async move {
            let mut request = crate::helpers::http_client()
                .get(url)
                .header("cookie", cookie)
                .header("x-forwarded-host", "shop.example.com")
                .header("origin", origin);
            if let Some(method) = method {
                request = request.header("x-original-method", method);
            }
            request.send().await.unwrap().status()
        }
    };
    assert_eq!(check(Some("POST"), "https://evil.example.net").await, StatusCode::FORBIDDEN);
    assert_eq!(check(Some("POST"), "https://shop.example.com").await, StatusCode::OK);
    assert_eq!(check(Some("GET"), "https://evil.example.net").await, StatusCode::OK);
    assert_eq!(check(None, "https://evil.example.net").await, StatusCode::OK, "no method: GET");
}

/// Through a real nginx: a cross-site POST carrying the session cookie is refused, the same
/// POST from the site's own page passes, and links pass.
#[tokio::test]
async fn nginx_refuses_a_cross_site_post_carrying_the_session_cookie() {
    let (app, _provider) = app_with_http_callback().await;
    let cookie = format!("authgate_session={}", browser_session(&app, BOB).await);
    let upstream = echo_upstream().await;
    let nginx = start_nginx(&app.base_url(), upstream).await;
    let url = format!("http://127.0.0.1:{}/orders", nginx.port);
    let own = format!("http://127.0.0.1:{}", nginx.port);
    let send = |method: reqwest::Method, origin: String| {
        let (url, cookie) = (url.clone(), cookie.clone());
        async move {
            crate::helpers::http_client()
                .request(method, url)
                .header("cookie", cookie)
                .header("origin", origin)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let foreign = "http://evil.example.net".to_string();
    assert_eq!(send(reqwest::Method::POST, foreign.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(send(reqwest::Method::POST, own).await, StatusCode::OK);
    assert_eq!(send(reqwest::Method::GET, foreign).await, StatusCode::OK);
}

/// The identity headers: the comma-joined groups stay as they were, `groups-json` reads back
/// exactly; every header under the prefix that the client sent is removed (Envoy); several
/// Authorization headers are refused rather than guessed between.
#[tokio::test]
async fn identity_headers_are_unambiguous_and_client_copies_are_removed() {
    let app = spawn_app(AppOptions::real()).await;
    let token = full_login(&app, ALICE).await.access_token;
    let bearer = format!("Bearer {token}");
    let r = envoy_check(
        &app,
        &[
            ("authorization", &bearer),
            ("x-authgate-groups-json", r#"["admins","root"]"#),
            ("x-authgate-role", "admin"),
            ("x-authgate-email", "mallory@example.com"),
        ],
    )
    .await;
    let (set, removed) = ok_headers(&r);
    assert_eq!(set["x-authgate-groups"], "Everyone,admins");
    assert_eq!(set["x-authgate-groups-json"], r#"["Everyone","admins"]"#);
    assert_eq!(set["x-authgate-email"], "alice@example.com", "overwritten");
    assert!(removed.contains(&"x-authgate-role".to_string()), "{removed:?}");

    let r = envoy_check(&app, &[("authorization", &format!("{bearer}, Bearer forged"))]).await;
    let (_, http, _, body) = denied(&r);
    assert_eq!(http, 400, "{body}");
    assert!(body.contains("several Authorization headers"), "{body}");
    let twice = crate::helpers::http_client()
        .get(format!("{}/auth/check", app.base_url()))
        .header("authorization", &bearer)
        .header("authorization", "Bearer forged")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
    let once = crate::helpers::http_client()
        .get(format!("{}/auth/check", app.base_url()))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(once.status(), StatusCode::OK);
    assert_eq!(once.headers()["x-authgate-groups-json"], r#"["Everyone","admins"]"#);
}
