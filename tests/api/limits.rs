//! Hostile traffic on the transport: slow heads, idle connections, connection floods (per
//! address and in all), an HTTP/2 rapid-reset flood, oversized messages, heads and bodies,
//! oversized provider answers and profiles, requests that outlive their deadline, and the split
//! between the public and the internal listener. Every attack targets loopback, is bounded in
//! count and time, and stops by itself.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use authgate::{
    ext::envoy::service::auth::v3::{
        AttributeContext, CheckRequest,
        attribute_context::{HttpRequest, Request as AttrRequest},
        authorization_client::AuthorizationClient,
    },
    pb::{ExchangeCodeRequest, GetLoginUrlRequest, ValidateTokenRequest},
};
use prost::Message;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream, tcp::OwnedReadHalf},
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::{
    fake_provider::{FakeProvider, Signing, TokenAnswer},
    helpers::*,
    login_flow::full_login,
    provider_faults::{exchange, fake_app_with, start},
};

/// A TCP connection to `to` from the loopback address `from` (127.0.0.x: another client).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the server closes the connection; how long that took, or `None` if it was still
/// open after `limit`.
async fn closed_within(reader: &mut OwnedReadHalf, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A slowloris client: an HTTP/1.1 request head that never ends (one more header line every
/// 200 ms, until the server closes the connection or this value is dropped).
struct SlowHead {
    reader: OwnedReadHalf,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for SlowHead {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

async fn slow_head(from: &str, to: SocketAddr) -> SlowHead {
    let (reader, mut writer) = connect_from(from, to).await.into_split();
    let writer = tokio::spawn(async move {
        if writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: authgate\r\n").await.is_err() {
            return;
        }
        for i in 0..600 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(format!("x-slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    SlowHead { reader, writer }
}

/// The value of a series in Prometheus text (0 when absent).
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap()
}

async fn healthz(base: &str) -> u16 {
    // A fresh connection each time: a pooled one would hide a refused connection.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    match client.get(format!("{base}/healthz")).timeout(Duration::from_secs(5)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_closed_while_a_normal_client_is_served() {
    let app = spawn_app(
        AppOptions::real()
            .set("AUTHGATE_HEADER_READ_TIMEOUT", "1")
            .set("AUTHGATE_IDLE_TIMEOUT", "3"),
    )
    .await;
    wait_until_serving(&app).await;
    let before = metrics_text(&app.base_url()).await;
    let closed_by_head_timeout =
        "authgate_connections_closed_total{listener=\"public\",reason=\"header_read_timeout\"}";

    let mut slow = Vec::new();
    for _ in 0..40 {
        slow.push(slow_head("127.0.0.1", app.addr).await);
    }
    // Connections that send nothing at all are held to the head timeout too.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(connect_from("127.0.0.1", app.addr).await.into_split());
    }
    // An HTTP/1.1 keep-alive connection that made one request and went quiet: the idle
    // timeout (3 s) applies to it, not the head timeout (1 s).
    let (mut idle_h1, mut idle_h1_writer) = connect_from("127.0.0.1", app.addr).await.into_split();
    idle_h1_writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: authgate\r\n\r\n").await.unwrap();
    let mut response = [0u8; 1024];
    let n = idle_h1.read(&mut response).await.unwrap();
    assert!(String::from_utf8_lossy(&response[..n]).starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    // An HTTP/2 connection likewise, which gets a GOAWAY when idle.
    let (h2_client, h2_connection) =
        h2::client::handshake(connect_from("127.0.0.1", app.addr).await).await.unwrap();
    let h2_task = tokio::spawn(async move {
        let started = Instant::now();
        let result = h2_connection.await;
        (started.elapsed(), result.is_ok())
    });
    let mut h2_client = h2_client.ready().await.unwrap();
    let request = http::Request::get(format!("{}/healthz", app.base_url())).body(()).unwrap();
    let (response, _) = h2_client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // Kept: an h2 client closes its connection itself once every handle is gone.
    let _h2_client = h2_client;

    // A normal client is served all along.
    for _ in 0..8 {
        assert_eq!(healthz(&app.base_url()).await, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Every slow and silent connection was closed within the head timeout plus slack.
    for client in &mut slow {
        assert!(
            closed_within(&mut client.reader, Duration::from_secs(6)).await.is_some(),
            "a slow head stayed open"
        );
    }
    for (reader, _) in &mut silent {
        assert!(
            closed_within(reader, Duration::from_secs(6)).await.is_some(),
            "a silent connection stayed open"
        );
    }
    // The idle keep-alive connection outlived the head timeout and was closed after its own.
    let closed = closed_within(&mut idle_h1, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "an idle HTTP/1.1 connection stayed open");
    assert!(idle_since.elapsed() >= Duration::from_millis(2900), "closed before idle_timeout");
    let (h2_lifetime, clean) = tokio::time::timeout(Duration::from_secs(10), h2_task)
        .await
        .expect("an idle HTTP/2 connection stayed open")
        .unwrap();
    assert!(clean, "the idle HTTP/2 connection ended with a clean GOAWAY");
    assert!(h2_lifetime >= Duration::from_millis(2900), "HTTP/2 closed before idle_timeout");

    let after = metrics_text(&app.base_url()).await;
    assert!(
        series(&after, closed_by_head_timeout) - series(&before, closed_by_head_timeout) >= 50.0,
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_caps_hold_and_the_internal_listener_keeps_answering() {
    let app = spawn_app(
        AppOptions::real()
            .internal()
            .set("AUTHGATE_MAX_CONNECTIONS", "30")
            .set("AUTHGATE_MAX_CONNECTIONS_PER_IP", "20")
            .set("AUTHGATE_HEADER_READ_TIMEOUT", "60"),
    )
    .await;
    wait_until_serving(&app).await;
    let login = full_login(&app, ALICE).await;

    // One address: 20 connections are admitted, the next 5 are closed at once.
    let mut first = Vec::new();
    for _ in 0..25 {
        first.push(slow_head("127.0.0.2", app.addr).await);
    }
    let verdicts = futures_util::future::join_all(
        first.iter_mut().map(|c| closed_within(&mut c.reader, Duration::from_secs(2))),
    )
    .await;
    assert_eq!(verdicts.iter().filter(|v| v.is_some()).count(), 5, "per-IP cap of 20");
    // Another address is still served.
    assert_eq!(healthz(&app.base_url()).await, 200);

    // A second address fills the listener to its cap of 30; beyond it, everyone is refused.
    let mut second = Vec::new();
    for _ in 0..20 {
        second.push(slow_head("127.0.0.3", app.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = metrics_text(&app.checks_url()).await;
    assert_eq!(series(&text, "authgate_open_connections{listener=\"public\"}"), 30.0, "{text}");
    let (mut late, _w) = connect_from("127.0.0.4", app.addr).await.into_split();
    assert!(closed_within(&mut late, Duration::from_secs(2)).await.is_some(), "over the cap");
    assert!(
        series(
            &text,
            "authgate_connections_refused_total{listener=\"public\",reason=\"max_connections_per_ip\"}"
        ) >= 5.0
    );

    // The fleet's checks are on the internal listener, with a budget of its own.
    let mut internal = app.internal_grpc().await;
    let verdict = internal
        .validate_token(ValidateTokenRequest { token: login.access_token.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(verdict.valid);
    assert_eq!(healthz(&app.checks_url()).await, 200);

    // The flood ends; the public listener serves again.
    drop(first);
    drop(second);
    let mut served = false;
    for _ in 0..50 {
        if healthz(&app.base_url()).await == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the public listener recovered");
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_cut_off_and_the_server_keeps_serving() {
    const STREAMS: u32 = 20_000;
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let (mut reader, mut writer) = TcpStream::connect(app.addr).await.unwrap().into_split();
    // The client's side: the preface, empty SETTINGS, then HEADERS + RST_STREAM(CANCEL) for
    // 20,000 streams, written as fast as the socket takes them (CVE-2023-44487).
    let flood = tokio::spawn(async move {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        for i in 0..STREAMS {
            let id = 2 * i + 1;
            // :method GET, :scheme http, :path / (HPACK static table); END_HEADERS.
            bytes.extend(frame(0x1, 0x4, id, &[0x82, 0x86, 0x84]));
            bytes.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
            if bytes.len() > 64 * 1024
                && writer.write_all(&std::mem::take(&mut bytes)).await.is_err()
            {
                return;
            }
        }
        let _ = writer.write_all(&bytes).await;
    });
    // The server's side: read frames until it closes the connection.
    let mut received = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the connection was not closed");
    flood.abort();
    let mut goaway = None;
    let mut at = 0;
    while at + 9 <= received.len() {
        let len =
            u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]) as usize;
        if received[at + 3] == 0x7 && at + 9 + 8 <= received.len() {
            let p = &received[at + 9..];
            let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
            let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
            goaway = Some((last, code));
        }
        at += 9 + len;
    }
    let (last_stream, code) = goaway.expect("the server answered the flood with GOAWAY");
    assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
    assert!(last_stream < 2 * 2_000, "it stopped after {} of {STREAMS} streams", last_stream / 2);
    assert_eq!(healthz(&app.base_url()).await, 200, "everyone else is still served");
}

fn check_request(header_bytes: usize) -> CheckRequest {
    let http = HttpRequest {
        method: "GET".into(),
        path: "/orders".into(),
        host: "shop.example.com".into(),
        headers: [("x-padding".to_string(), "p".repeat(header_bytes))].into_iter().collect(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext { request: Some(AttrRequest { http: Some(http) }) }),
    }
}

#[tokio::test]
async fn oversized_messages_heads_and_bodies_are_refused_per_service() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;

    // AuthService takes 16 KiB messages.
    let err = app
        .grpc
        .clone()
        .get_login_url(GetLoginUrlRequest { login_hint: "h".repeat(20_000), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_message_bytes") && err.message().contains("16384"),
        "{}",
        err.message()
    );

    // Envoy's CheckRequest carries the client's headers: 128 KiB.
    let channel =
        tonic::transport::Channel::from_shared(app.base_url()).unwrap().connect().await.unwrap();
    let mut envoy = AuthorizationClient::new(channel);
    let fits = envoy.check(check_request(100 * 1024)).await.unwrap().into_inner();
    assert!(fits.http_response.is_some(), "a 100 KiB check is answered (denied: no token)");
    let err = envoy.check(check_request(200 * 1024)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("131072"), "{}", err.message());

    // grpc-web gets the same status.
    let big = GetLoginUrlRequest { login_hint: "h".repeat(20_000), ..Default::default() };
    let (status, text) =
        grpc_web_status(&app, "authgate.v1.AuthService/GetLoginUrl", &big, &[]).await;
    assert_eq!(status, "8", "{text}");

    // HTTP bodies: 16 KiB, refused before they are read.
    let client = crate::helpers::http_client();
    let big = client
        .post(format!("{}/backchannel-logout", app.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("logout_token={}", "t".repeat(20_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let body: Value = big.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    assert!(body["message"].as_str().unwrap().contains("max_body_bytes"));

    // Request heads: 16 KiB on the public listener.
    let head = client
        .get(format!("{}/healthz", app.base_url()))
        .header("x-padding", "p".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 431);
    assert_eq!(healthz(&app.base_url()).await, 200);
}

/// A login started at the fake provider: the ExchangeCode request and the nonce.
async fn start_login(app: &TestApp) -> (ExchangeCodeRequest, String) {
    let (started, nonce) = start(app).await;
    (exchange(&started), nonce)
}

/// A grpc-web (binary) unary call over HTTP/1.1: the `grpc-status` it got and the body as text.
async fn grpc_web_status(
    app: &TestApp,
    method: &str,
    message: &impl Message,
    headers: &[(&str, &str)],
) -> (String, String) {
    let answer = crate::helpers::grpc_web_call(&app.base_url(), method, message, headers).await;
    (answer.status, answer.text)
}

#[tokio::test]
async fn provider_responses_over_the_cap_are_unavailable_and_open_no_session() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(&fake, &[("AUTHGATE_PROVIDER_MAX_RESPONSE_BYTES", "16KiB")]).await;

    // A token response over the cap.
    let (exchange, nonce) = start_login(&app).await;
    let mut claims = fake.valid_claims(TEST_CLIENT_ID, &nonce);
    claims["padding"] = json!("p".repeat(40_000));
    fake.answer_next(TokenAnswer::IdToken { claims, signing: Signing::Published });
    let err = app.grpc.clone().exchange_code(exchange).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("provider_max_response_bytes"), "{}", err.message());

    // A userinfo response over the cap (a thin ID token makes authgate ask for it).
    let (exchange, nonce) = start_login(&app).await;
    let mut claims = fake.valid_claims(TEST_CLIENT_ID, &nonce);
    claims.as_object_mut().unwrap().remove("name");
    fake.answer_next(TokenAnswer::IdToken { claims, signing: Signing::Published });
    fake.set_userinfo(json!({"sub": "fake-user-1", "name": "n".repeat(40_000)}));
    let err = app.grpc.clone().exchange_code(exchange).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("provider_max_response_bytes"), "{}", err.message());
    assert_eq!(app.count_rows("sessions").await, 0);
}

#[tokio::test]
async fn a_profile_too_large_for_a_token_is_refused_at_sign_in_and_writes_nothing() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(&fake, &[]).await;
    let login_with_groups = |groups: Vec<String>| {
        let (app, fake) = (&app, &fake);
        async move {
            let (exchange, nonce) = start_login(app).await;
            let mut claims = fake.valid_claims(TEST_CLIENT_ID, &nonce);
            claims["groups"] = json!(groups);
            fake.answer_next(TokenAnswer::IdToken { claims, signing: Signing::Published });
            app.grpc.clone().exchange_code(exchange).await
        }
    };
    // More groups than max_token_groups (100).
    let err = login_with_groups((0..150).map(|i| format!("g{i}")).collect()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("150 groups") && err.message().contains("max_token_groups"),
        "{}",
        err.message()
    );
    // Few enough groups, but too long for a 6 KiB token.
    let long: Vec<String> =
        (0..90).map(|i| format!("{i}-{}", "engineering-platform-".repeat(4))).collect();
    let err = login_with_groups(long).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("6144"), "{}", err.message());
    assert_eq!(app.count_rows("sessions").await, 0, "a refused profile opens no session");

    // A large but fitting profile signs in, and its token passes authgate's own checks.
    let fitting: Vec<String> = (0..100).map(|i| format!("group-{i:03}")).collect();
    let done = login_with_groups(fitting).await.unwrap().into_inner();
    assert!(done.access_token.len() <= 6144);
    assert!(validate(&app, &done.access_token).await.valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_outlives_request_timeout_is_answered_but_streams_are_exempt() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(&fake, &[("AUTHGATE_REQUEST_TIMEOUT", "1")]).await;
    let (exchange, nonce) = start_login(&app).await;
    fake.answer_valid(TEST_CLIENT_ID, &nonce);
    fake.delay_token(Duration::from_millis(2500));
    let err = app.grpc.clone().exchange_code(exchange).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("request_timeout"), "{}", err.message());

    // The caller's own shorter grpc-timeout is honoured (sent over grpc-web, whose client
    // enforces no deadline of its own: the answer is the server's).
    let (exchange, _) = start_login(&app).await;
    let (status, text) = grpc_web_status(
        &app,
        "authgate.v1.AuthService/ExchangeCode",
        &exchange,
        &[("grpc-timeout", "300m")],
    )
    .await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED: {text}");

    // HTTP routes: 503 with a JSON body that says why.
    let (exchange, _) = start_login(&app).await;
    let callback = reqwest::get(format!(
        "{}/api/callback?code=c&state={}&binding={}",
        app.base_url(),
        exchange.state,
        exchange.binding
    ))
    .await
    .unwrap();
    assert_eq!(callback.status(), 503);
    assert!(callback.headers().contains_key("retry-after"));
    let body: Value = callback.json().await.unwrap();
    assert_eq!(body["error"], "timeout");

    // A health Watch stream outlives request_timeout.
    let mut watch = app
        .health
        .clone()
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.next().await.unwrap().is_ok());
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), watch.next()).await.is_err(),
        "the stream is still open (no message, not ended) after 2.5 s"
    );
}

#[tokio::test]
async fn the_internal_listener_serves_the_fleet_and_the_public_one_the_logins() {
    let app = spawn_app(AppOptions::real().internal()).await;
    wait_until_serving(&app).await;
    let login = full_login(&app, ALICE).await;
    let (public, internal) = (app.base_url(), app.checks_url());

    // The fleet's RPCs and routes: internal only, and the public listener says where to go.
    let err = app
        .grpc
        .clone()
        .validate_token(ValidateTokenRequest { token: login.access_token.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("internal listener"), "{}", err.message());
    let mut fleet = app.internal_grpc().await;
    assert!(
        fleet
            .validate_token(ValidateTokenRequest { token: login.access_token.clone() })
            .await
            .unwrap()
            .into_inner()
            .valid
    );
    assert!(
        !fleet
            .get_jwks(authgate::pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys
            .is_empty()
    );
    let channel =
        tonic::transport::Channel::from_shared(public.clone()).unwrap().connect().await.unwrap();
    let err = AuthorizationClient::new(channel).check(check_request(10)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    let channel =
        tonic::transport::Channel::from_shared(internal.clone()).unwrap().connect().await.unwrap();
    assert!(AuthorizationClient::new(channel).check(check_request(10)).await.is_ok());
    let client = crate::helpers::http_client();
    for route in ["/metrics", "/readyz", "/auth/check"] {
        let refused = client.get(format!("{public}{route}")).send().await.unwrap();
        assert_eq!(refused.status(), 404, "{route}");
        let body: Value = refused.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("internal listener"), "{body}");
    }
    assert_eq!(client.get(format!("{internal}/readyz")).send().await.unwrap().status(), 200);

    // Metrics are internal, and a scrape reads no table: the pending-attempts gauge is kept in
    // memory (rows deleted behind authgate's back do not change it).
    app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap();
    let pending = "authgate_pending_login_attempts";
    let before = series(&metrics_text(&internal).await, pending);
    assert!(before >= 1.0);
    let Some(Db::Postgres(db)) = &app.db else { panic!("a PostgreSQL app") };
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query("DELETE FROM login_attempts").execute(&pool).await.unwrap();
    pool.close().await;
    assert_eq!(series(&metrics_text(&internal).await, pending), before);

    // Logins: public only.
    let err = fleet.get_login_url(GetLoginUrlRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("public listener"), "{}", err.message());
    assert_eq!(client.get(format!("{internal}/api/login")).send().await.unwrap().status(), 404);
    assert_eq!(client.get(format!("{public}/api/login")).send().await.unwrap().status(), 200);

    // Both: liveness and the published keys.
    for base in [&public, &internal] {
        assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
        assert_eq!(
            client.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap().status(),
            200
        );
    }
}

/// The real binary with its open-file limit set to 1,024 (soft and hard), as many services
/// run; `occupied` descriptors are already in use when it starts (inherited), so that it runs
/// out of descriptors with connections still to accept.
async fn binary_with_fd_limit(
    occupied: usize,
    internal: bool,
) -> (tokio::process::Child, SocketAddr, Option<SocketAddr>, tempfile::TempDir) {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (public, internal_addr) = (free(), internal.then(free));
    let dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_authgate"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("RUST_LOG", "info")
        .env("AUTHGATE_SQLITE_PATH", dir.path().join("authgate.db"))
        .env("AUTHGATE_ISSUER_URL", &dev_provider().issuer)
        .env("AUTHGATE_CLIENT_ID", TEST_CLIENT_ID)
        .env("AUTHGATE_CLIENT_SECRET", TEST_CLIENT_SECRET)
        .env("AUTHGATE_REDIRECT_URIS", REDIRECT_URI)
        .env("AUTHGATE_LISTEN_ADDR", public.to_string())
        .env("AUTHGATE_HEADER_READ_TIMEOUT", "60")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(output_dir().join(format!("fd-limit-{occupied}.log"))).unwrap(),
        )
        .kill_on_drop(true);
    if let Some(addr) = internal_addr {
        command.env("AUTHGATE_INTERNAL_LISTEN_ADDR", addr.to_string());
    }
    // SAFETY: between fork and exec only async-signal-safe system calls are made.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for _ in 0..occupied {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            }
            Ok(())
        });
    }
    let child = command.spawn().unwrap();
    wait_until_login_ready(&format!("http://{}", internal_addr.unwrap_or(public))).await;
    let open = std::fs::read_dir(format!("/proc/{}/fd", child.id().unwrap())).unwrap().count();
    assert!(open >= occupied, "{open} descriptors open in the child, {occupied} expected");
    (child, public, internal_addr, dir)
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_file_limit_the_caps_refuse_cleanly_and_the_internal_listener_answers() {
    let (child, public, internal, _dir) = binary_with_fd_limit(0, true).await;
    let internal = format!("http://{}", internal.unwrap());
    let pid = child.id().unwrap();
    // More slow connections than the lowered caps allow under 1,024 descriptors.
    let mut flood = Vec::new();
    for _ in 0..900 {
        flood.push(slow_head("127.0.0.2", public).await);
    }
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    // The connections beyond the cap were closed at once; the rest stay until the head timeout.
    let verdicts = futures_util::future::join_all(
        flood.iter_mut().map(|c| closed_within(&mut c.reader, Duration::from_millis(1500))),
    )
    .await;
    let refused = verdicts.iter().filter(|v| v.is_some()).count();
    assert!(refused >= 100, "only {refused} of 900 were refused");
    // The internal listener, with its own share of descriptors, answers throughout.
    assert_eq!(healthz(&internal).await, 200);
    let text = metrics_text(&internal).await;
    let open = series(&text, "authgate_open_connections{listener=\"public\"}");
    let cap = series(&text, "authgate_max_connections{listener=\"public\"}");
    assert!(cap < 1024.0 && open <= cap, "open {open}, cap {cap}");
    let spent = cpu_seconds(pid) - cpu_before;
    assert!(spent < started.elapsed().as_secs_f64() * 0.5, "{spent} CPU s: the server spun");
    drop(flood);
    let log = std::fs::read_to_string(output_dir().join("fd-limit-0.log")).unwrap();
    assert!(log.contains("connection caps lowered"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    // 900 of the 1,024 descriptors are taken before authgate starts: accepts fail long before
    // the connection cap is reached.
    let (child, public, _, _dir) = binary_with_fd_limit(900, false).await;
    let pid = child.id().unwrap();
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(connect_from("127.0.0.2", public).await);
    }
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = cpu_seconds(pid) - cpu_before;
    assert!(
        spent < started.elapsed().as_secs_f64() * 0.5,
        "{spent} CPU s in 3 s: the accept loop spun"
    );
    drop(flood);
    let mut served = false;
    for _ in 0..100 {
        if healthz(&format!("http://{public}")).await == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "authgate recovered once descriptors were free");
    let log = std::fs::read_to_string(output_dir().join("fd-limit-900.log")).unwrap();
    assert!(log.contains("backing off"), "{log}");
}
