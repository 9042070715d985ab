//! Floods refused cheaply: per-client rate limits and pending caps on the unauthenticated writes
//! (each client on its own loopback address, 127.0.0.x), shedding at the concurrency budgets
//! with the checks' budget kept apart, and the client address taken from trusted proxies only.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use authgate::{
    ext::envoy::service::auth::v3::{
        AttributeContext, CheckRequest,
        attribute_context::{HttpRequest, Request as AttrRequest},
        authorization_client::AuthorizationClient,
        check_response::HttpResponse,
    },
    pb::{
        ExchangeCodeRequest, GetLoginUrlRequest, ValidateTokenRequest,
        auth_service_client::AuthServiceClient,
    },
};
use serde_json::Value;
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};

use crate::{
    fake_provider::FakeProvider,
    helpers::*,
    provider_faults::{exchange, fake_app_with, start},
};

/// A gRPC channel whose connection comes from the loopback address `from`.
async fn channel_from(from: &str, to: SocketAddr) -> Channel {
    let from: IpAddr = from.parse().unwrap();
    tonic::transport::Endpoint::from_shared(format!("http://{to}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_uri: http::Uri| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(from, 0))?;
            let stream = socket.connect(to).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
        .await
        .unwrap()
}

/// An HTTP client whose connections come from the loopback address `from`.
fn http_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(from.parse::<IpAddr>().unwrap()).build().unwrap()
}

fn retry_after(status: &tonic::Status) -> u64 {
    status.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap()
}

async fn refused_total(app: &TestApp, limit: &str) -> f64 {
    let text =
        reqwest::get(format!("{}/metrics", app.checks_url())).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("authgate_requests_refused_total{")
                && l.contains(&format!("limit=\"{limit}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_limited_while_another_is_served() {
    let app = spawn_app(
        AppOptions::real()
            .set("AUTHGATE_LOGIN_RATE_PER_CLIENT", "5")
            .set("AUTHGATE_LOGIN_BURST_PER_CLIENT", "10"),
    )
    .await;
    wait_until_serving(&app).await;
    let mut flooder = AuthServiceClient::new(channel_from("127.0.0.2", app.addr).await);
    let (mut served, mut limited) = (0, 0);
    for _ in 0..60 {
        match flooder.get_login_url(GetLoginUrlRequest::default()).await {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("login_rate_per_client"), "{}", status.message());
                assert!(retry_after(&status) >= 1);
                limited += 1;
            }
        }
    }
    assert!(served >= 10 && limited >= 40, "served {served}, limited {limited}");
    // Callbacks count too: the attempt is not even looked at. (On a loaded machine the bucket
    // may have refilled by one since the flood: the next call then takes that token.)
    let mut codes = Vec::new();
    for _ in 0..3 {
        let err = flooder
            .exchange_code(ExchangeCodeRequest {
                code: "c".into(),
                state: "s".into(),
                binding: "b".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        codes.push(err.code());
        if err.code() == Code::ResourceExhausted {
            break;
        }
    }
    assert_eq!(codes.last(), Some(&Code::ResourceExhausted), "{codes:?}");
    // So does the JSON flow, with 429 and Retry-After.
    let mut http =
        http_from("127.0.0.2").get(format!("{}/api/login", app.base_url())).send().await.unwrap();
    for _ in 0..2 {
        if http.status() == 429 {
            break;
        }
        http = http_from("127.0.0.2")
            .get(format!("{}/api/login", app.base_url()))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(http.status(), 429);
    assert!(http.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let body: Value = http.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");

    // Another address is served all along.
    let mut neighbour = AuthServiceClient::new(channel_from("127.0.0.3", app.addr).await);
    for _ in 0..5 {
        neighbour.get_login_url(GetLoginUrlRequest::default()).await.unwrap();
    }
    assert_eq!(
        http_from("127.0.0.3")
            .get(format!("{}/api/login", app.base_url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(refused_total(&app, "login_rate_per_client").await >= 42.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_attempt_caps_answer_as_documented() {
    // Per client: three unfinished logins, then a refusal that names the cap.
    let app = spawn_app(
        AppOptions::real()
            .set("AUTHGATE_LOGIN_RATE_PER_CLIENT", "0")
            .set("AUTHGATE_MAX_PENDING_ATTEMPTS_PER_CLIENT", "3"),
    )
    .await;
    wait_until_serving(&app).await;
    let mut client = AuthServiceClient::new(channel_from("127.0.0.2", app.addr).await);
    for _ in 0..3 {
        client.get_login_url(GetLoginUrlRequest::default()).await.unwrap();
    }
    let err = client.get_login_url(GetLoginUrlRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("max_pending_attempts_per_client"), "{}", err.message());
    // The default attempt_ttl (10 min) over 3 attempts: one comes back every 200 s.
    assert!((1..=200).contains(&retry_after(&err)), "{}", retry_after(&err));
    AuthServiceClient::new(channel_from("127.0.0.3", app.addr).await)
        .get_login_url(GetLoginUrlRequest::default())
        .await
        .unwrap();

    // Per replica: at the cap, every client is refused until an attempt is exchanged (or
    // expires); exchanging one, even with a code the provider refuses, frees its place.
    let app = spawn_app(
        AppOptions::real()
            .set("AUTHGATE_LOGIN_RATE_PER_CLIENT", "0")
            .set("AUTHGATE_MAX_PENDING_ATTEMPTS", "4"),
    )
    .await;
    wait_until_serving(&app).await;
    let mut started = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        let mut client = AuthServiceClient::new(channel_from(from, app.addr).await);
        started
            .push(client.get_login_url(GetLoginUrlRequest::default()).await.unwrap().into_inner());
    }
    let err = app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("max_pending_attempts"), "{}", err.message());
    assert_eq!(retry_after(&err), 60);
    let first = &started[0];
    let refused = app
        .grpc
        .clone()
        .exchange_code(ExchangeCodeRequest {
            code: "not-a-real-code".into(),
            state: first.state.clone(),
            binding: first.binding.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap();
}

fn check_request() -> CheckRequest {
    let http = HttpRequest { method: "GET".into(), path: "/orders".into(), ..Default::default() };
    CheckRequest {
        attributes: Some(AttributeContext { request: Some(AttrRequest { http: Some(http) }) }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_budget_requests_are_shed_at_once_and_checks_keep_theirs() {
    let fake = FakeProvider::start().await;
    let app = fake_app_with(&fake, &[("AUTHGATE_MAX_CONCURRENT_LOGINS", "1")]).await;
    // One exchange holds the only login place: the provider takes 2 s to answer.
    let (started, nonce) = start(&app).await;
    fake.answer_valid(TEST_CLIENT_ID, &nonce);
    fake.delay_token(Duration::from_secs(2));
    let slow = tokio::spawn({
        let mut grpc = app.grpc.clone();
        let request = exchange(&started);
        async move { grpc.exchange_code(request).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let err = app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("max_concurrent_logins"), "{}", err.message());
    assert_eq!(retry_after(&err), 1);
    let http = reqwest::get(format!("{}/api/login", app.base_url())).await.unwrap();
    assert_eq!(http.status(), 503);
    assert_eq!(http.headers()["retry-after"], "1");
    assert_eq!(http.json::<Value>().await.unwrap()["error"], "overloaded");
    assert!(!slow.is_finished(), "the refusals came while the exchange was still in flight");
    // The checks have a budget of their own.
    let verdict = app
        .grpc
        .clone()
        .validate_token(ValidateTokenRequest { token: "not.a.token".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!verdict.valid);
    assert!(slow.await.unwrap().is_ok(), "the admitted exchange completed");
    app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_envoy_check_is_a_503_denial_not_a_grpc_error() {
    let app = spawn_app(AppOptions::real().set("AUTHGATE_MAX_CONCURRENT_CHECKS", "1")).await;
    wait_until_serving(&app).await;
    // A health Watch holds the only check place while it is open.
    let mut watch = app
        .health
        .clone()
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.next().await.unwrap().is_ok());
    let mut envoy = AuthorizationClient::new(
        Channel::from_shared(app.base_url()).unwrap().connect().await.unwrap(),
    );
    let answer = envoy.check(check_request()).await.expect("a gRPC OK").into_inner();
    let Some(HttpResponse::DeniedResponse(denied)) = &answer.http_response else {
        panic!("{answer:?}")
    };
    assert_eq!(denied.status.as_ref().unwrap().code, 503);
    let retry =
        denied.headers.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == "retry-after");
    assert_eq!(retry.unwrap().value, "1");
    assert!(denied.body.contains("max_concurrent_checks"), "{}", denied.body);
    let err = app
        .grpc
        .clone()
        .validate_token(ValidateTokenRequest { token: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // Logins have their own budget meanwhile.
    app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap();
    drop(watch);
    let mut denied_401 = false;
    for _ in 0..50 {
        let answer = envoy.check(check_request()).await.unwrap().into_inner();
        if let Some(HttpResponse::DeniedResponse(d)) = &answer.http_response
            && d.status.as_ref().unwrap().code == 401
        {
            denied_401 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(denied_401, "once the stream ended, checks are answered again (401: no token)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client_and_an_untrusted_one_cannot() {
    let app = spawn_app(
        AppOptions::real()
            .set("AUTHGATE_TRUSTED_PROXIES", "127.0.0.2")
            .set("AUTHGATE_LOGIN_RATE_PER_CLIENT", "1")
            .set("AUTHGATE_LOGIN_BURST_PER_CLIENT", "1"),
    )
    .await;
    wait_until_serving(&app).await;
    let login = |from: &'static str, forwarded: &'static str| {
        let url = format!("{}/api/login", app.base_url());
        async move {
            http_from(from)
                .get(url)
                .header("x-forwarded-for", forwarded)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Behind the trusted proxy, each forwarded client has its own budget.
    assert_eq!(login("127.0.0.2", "203.0.113.5").await, 200);
    assert_eq!(login("127.0.0.2", "203.0.113.5").await, 429);
    assert_eq!(login("127.0.0.2", "203.0.113.6").await, 200);
    // A spoofed hop to the left of the client's own address changes nothing.
    assert_eq!(login("127.0.0.2", "198.51.100.1, 203.0.113.5").await, 429);
    // An untrusted peer's X-Forwarded-For is ignored: it is keyed by its own address.
    assert_eq!(login("127.0.0.3", "198.51.100.1").await, 200);
    assert_eq!(login("127.0.0.3", "198.51.100.2").await, 429);
    // Envoy's x-envoy-external-address, from the trusted proxy, over gRPC.
    let mut grpc = AuthServiceClient::new(channel_from("127.0.0.2", app.addr).await);
    let via_envoy = |address: &'static str| {
        let mut request = tonic::Request::new(GetLoginUrlRequest::default());
        request.metadata_mut().insert("x-envoy-external-address", address.parse().unwrap());
        request
    };
    grpc.get_login_url(via_envoy("192.0.2.10")).await.unwrap();
    assert_eq!(
        grpc.get_login_url(via_envoy("192.0.2.10")).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    grpc.get_login_url(via_envoy("192.0.2.11")).await.unwrap();
}

/// The scheduling policy and realtime priority of each thread of process `pid`, by thread name
/// (`/proc/<pid>/task/<tid>/stat`, fields 40 and 41).
fn thread_policies(pid: u32) -> Vec<(String, u32, u32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let dir = task.path();
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat")))
        else {
            continue; // the thread ended meanwhile
        };
        // Fields after the name (which may hold spaces) start at field 3.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let (rt_priority, policy) = (fields[37].parse().unwrap(), fields[38].parse().unwrap());
        threads.push((comm.trim().to_string(), policy, rt_priority));
    }
    threads
}

/// `internal_realtime_priority`, run as the image runs the binary (uid 10001): given
/// CAP_SYS_NICE (systemd's `AmbientCapabilities=CAP_SYS_NICE`) every thread of the internal
/// listener runs `SCHED_RR` 1 and no other thread does; without it (and the default
/// `RLIMIT_RTPRIO` of 0), the system's refusal is logged, saying how to allow it, and the checks
/// are served at normal priority.
#[tokio::test]
async fn realtime_priority_puts_the_internal_listeners_threads_ahead_where_allowed() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_RR: u32 = 2;
    assert_eq!(unsafe_geteuid(), 0, "this test switches to uid 10001: run it as root (CI does)");
    for allowed in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        // Its working directory (the embedded store's), as the image's: owned by uid 10001.
        let chown = std::process::Command::new("chown").arg("10001:10001").arg(dir.path()).status();
        assert!(chown.unwrap().success());
        let free_port =
            || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (public, internal) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("authgate.log")).unwrap();
        let capability: &[&str] =
            if allowed { &["--inh-caps", "+sys_nice", "--ambient-caps", "+sys_nice"] } else { &[] };
        let child = std::process::Command::new("setpriv")
            .args(["--reuid", "10001", "--regid", "10001", "--clear-groups"])
            .args(capability)
            .args(["--", env!("CARGO_BIN_EXE_authgate"), "serve"])
            .current_dir(dir.path())
            .env_clear()
            .env("AUTHGATE_LISTEN_ADDR", format!("127.0.0.1:{public}"))
            .env("AUTHGATE_INTERNAL_LISTEN_ADDR", format!("127.0.0.1:{internal}"))
            .env("AUTHGATE_INTERNAL_REALTIME_PRIORITY", "true")
            .env("AUTHGATE_ISSUER_URL", &dev_provider().issuer)
            .env("AUTHGATE_CLIENT_ID", TEST_CLIENT_ID)
            .env("AUTHGATE_CLIENT_SECRET", TEST_CLIENT_SECRET)
            .env("AUTHGATE_REDIRECT_URIS", REDIRECT_URI)
            .env("AUTHGATE_LOG_FORMAT", "json")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = crate::container::Running(child);
        // Serving checks on the internal listener: its runtime and threads are up.
        let metrics = format!("http://127.0.0.1:{internal}/metrics");
        let mut up = false;
        for _ in 0..300 {
            if http_client().get(&metrics).send().await.is_ok_and(|r| r.status().is_success()) {
                up = true;
                break;
            }
            if !matches!(server.0.try_wait(), Ok(None)) {
                let log = std::fs::read_to_string(dir.path().join("authgate.log"));
                panic!("authgate stopped: {}", log.unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(up, "the internal listener never answered");
        let threads = thread_policies(server.0.id());
        let (checks, others): (Vec<_>, Vec<_>) =
            threads.iter().partition(|(name, _, _)| name.starts_with("authgate-intern"));
        // Its workers (one per core, up to 4) and the accepting thread.
        assert!(checks.len() >= 2, "{threads:?}");
        assert!(others.iter().all(|&&(_, policy, _)| policy == SCHED_OTHER), "{threads:?}");
        if allowed {
            assert!(checks.iter().all(|&&(_, p, rt)| (p, rt) == (SCHED_RR, 1)), "{threads:?}");
        } else {
            assert!(checks.iter().all(|&&(_, p, _)| p == SCHED_OTHER), "{threads:?}");
        }
        let pid = server.0.id().to_string();
        assert!(
            std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success()
        );
        for _ in 0..250 {
            if !matches!(server.0.try_wait(), Ok(None)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs = std::fs::read_to_string(dir.path().join("authgate.log")).unwrap();
        let said = |text: &str| logs.lines().any(|l| l.contains(text));
        if allowed {
            assert!(said("run at realtime priority (SCHED_RR 1)"), "{logs}");
        } else {
            assert!(said("the system refused realtime priority"), "{logs}");
            assert!(said("--ulimit rtprio=1"), "says how to allow it: {logs}");
        }
    }
}
