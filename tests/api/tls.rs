//! TLS and mutual TLS on the listeners, with certificates generated at test time (rcgen):
//! gRPC, grpc-web and HTTP over TLS; certificates reloaded in place (a Kubernetes-style symlink
//! swap) while a connection stays open; client certificates required, optional, from the wrong
//! CA, expired, and outside the allow-list; the handshake timeout and cap; grpcurl over TLS.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use authgate::pb::GetLoginUrlRequest;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::*;

/// A CA that signs the test's server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &'static str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    /// A server certificate for `localhost` and 127.0.0.1, its subject CN `cn`.
    fn server(&self, cn: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: subject CN `cn`, a DNS SAN `<cn>.fleet.internal` and a SPIFFE URI.
    fn client(&self, cn: &str, expired: bool) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![
            SanType::DnsName(format!("{cn}.fleet.internal").try_into().unwrap()),
            SanType::URI(format!("spiffe://fleet.internal/{cn}").try_into().unwrap()),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }
}

/// A rustls client trusting `ca`, presenting `identity` when given, offering `alpn`.
fn client_config(ca: &Ca, identity: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn h2_client(ca: &Ca, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    client_config(ca, identity, &[b"h2"])
}

/// An HTTPS client (reqwest) trusting `ca`, presenting `identity` when given; `localhost`
/// resolves to `addr`.
fn https_client(ca: &Ca, identity: Option<&Leaf>, addr: SocketAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(HTTP_TIMEOUT);
    if let Some(leaf) = identity {
        let pem = format!("{}{}", leaf.cert, leaf.key);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// Writes `leaf` as `<dir>/<name>.crt` and `.key`; returns the two paths.
fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, &leaf.cert).unwrap();
    std::fs::write(&key, &leaf.key).unwrap();
    (cert, key)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The CN of the certificate a fresh TLS connection to `addr` is served with.
async fn served_cn(addr: SocketAddr, ca_pems: &[&str]) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        roots.add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    authgate::server::tls::ClientIdentity::from_der(leaf).unwrap().names[0].clone()
}

/// `GET /healthz` on an open HTTP/1.1 connection; the response head and body as text.
async fn healthz_on(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(HTTP_TIMEOUT, stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the connection was closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// A counter from `/metrics` (0 when absent), read over `client` at `base`.
async fn counter(client: &reqwest::Client, base: &str, series: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// An app whose public listener speaks TLS with a certificate from `ca` (written into `dir` as
/// `server.crt` / `server.key`), with `extra` settings; serving when returned.
async fn tls_app(ca: &Ca, dir: &Path, extra: &[(&str, &str)]) -> TestApp {
    let (cert, key) = write_leaf(dir, "server", &ca.server("authgate.test"));
    let mut options = AppOptions::real()
        .set("AUTHGATE_TLS_CERT_FILE", path(&cert))
        .set("AUTHGATE_TLS_KEY_FILE", path(&key));
    for (name, value) in extra {
        options = options.set(name, value);
    }
    let app = spawn_app(AppOptions { tls_client: Some(h2_client(ca, None)), ..options }).await;
    wait_until_serving(&app).await;
    app
}

#[tokio::test]
async fn grpc_grpc_web_and_http_are_served_over_tls_with_alpn() {
    let ca = Ca::new("authgate test CA");
    let dir = tempfile::tempdir().unwrap();
    let app = tls_app(&ca, dir.path(), &[("AUTHGATE_PUBLIC_URL", "https://localhost:8443")]).await;
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));

    // gRPC over TLS (ALPN h2).
    let started = app.grpc.clone().get_login_url(GetLoginUrlRequest::default()).await.unwrap();
    assert!(started.into_inner().login_url.starts_with("http://127.0.0.1"));

    // HTTP: HTTP/2 by ALPN, HTTP/1.1 when that is all the client offers.
    let base = format!("https://localhost:{}", app.addr.port());
    let h2 = https_client(&ca, None, app.addr);
    let health = h2.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!((health.status().as_u16(), health.version()), (200, reqwest::Version::HTTP_2));
    let h1 = reqwest::Client::builder()
        .http1_only()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .resolve("localhost", app.addr)
        .build()
        .unwrap();
    let health = h1.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!((health.status().as_u16(), health.version()), (200, reqwest::Version::HTTP_11));

    // grpc-web over HTTP/1.1 and TLS, as a browser sends it.
    let message = GetLoginUrlRequest::default().encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let web = h1
        .post(format!("{base}/authgate.v1.AuthService/GetLoginUrl"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", "http://localhost:5173")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(web.status(), 200);
    let bytes = web.bytes().await.unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("grpc-status:0"), "{bytes:?}");

    // `authgate healthcheck` (the image's HEALTHCHECK) speaks TLS to a TLS listener.
    let probe = |tls: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_authgate"));
        command.arg("healthcheck").env_clear().env("AUTHGATE_LISTEN_ADDR", app.addr.to_string());
        if tls {
            command.env("AUTHGATE_TLS_CERT_FILE", &cert).env("AUTHGATE_TLS_KEY_FILE", &key);
        }
        command.output()
    };
    let out = probe(true).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains("ok: /readyz"), "{text}");
    let out = probe(false).await.unwrap();
    assert!(!out.status.success(), "plaintext probe of a TLS listener fails");

    // Plaintext to a TLS listener gets nothing served.
    let plain = http_client().get(format!("http://{}/healthz", app.addr)).send().await;
    assert!(plain.is_err() || plain.unwrap().status() == 400, "plaintext must not be served");
}

#[tokio::test]
async fn certificates_reload_in_place_and_open_connections_stay() {
    let ca = Ca::new("authgate test CA");
    // The layout of a mounted Kubernetes Secret: the files are symlinks through `..data`,
    // itself a symlink to a timestamped directory that an update replaces in one rename.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let version = |name: &str, leaf: &Leaf| {
        let v = root.join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("tls.crt"), &leaf.cert).unwrap();
        std::fs::write(v.join("tls.key"), &leaf.key).unwrap();
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    };
    version("..2026_11_30_a", &ca.server("first.authgate.test"));
    std::os::unix::fs::symlink("..data/tls.crt", root.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", root.join("tls.key")).unwrap();
    let app = spawn_app(AppOptions {
        tls_client: Some(h2_client(&ca, None)),
        ..AppOptions::real()
            .set("AUTHGATE_TLS_CERT_FILE", path(&root.join("tls.crt")))
            .set("AUTHGATE_TLS_KEY_FILE", path(&root.join("tls.key")))
            .set("AUTHGATE_TLS_RELOAD_INTERVAL", "1s")
    })
    .await;
    wait_until_serving(&app).await;
    assert_eq!(served_cn(app.addr, &[&ca.pem]).await, "first.authgate.test");

    // One HTTP/1.1 keep-alive connection, opened before the swap and used after it.
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut kept = tokio_rustls::TlsConnector::from(client_config(&ca, None, &[b"http/1.1"]))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert!(healthz_on(&mut kept).await.starts_with("HTTP/1.1 200"));

    // A new certificate, from another CA too: new connections get it within a few checks.
    let next_ca = Ca::new("authgate next CA");
    version("..2026_11_30_b", &next_ca.server("second.authgate.test"));
    let mut seen = String::new();
    for _ in 0..100 {
        seen = served_cn(app.addr, &[&ca.pem, &next_ca.pem]).await;
        if seen == "second.authgate.test" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "second.authgate.test", "the swapped certificate is served");
    let answer = healthz_on(&mut kept).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the connection opened before the reload is still served: {answer}"
    );

    // A half-written update (a key that does not go with the certificate): refused, logged,
    // and the certificate in use stays.
    let v = root.join("..2026_11_30_c");
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("tls.crt"), ca.server("third.authgate.test").cert).unwrap();
    std::fs::write(v.join("tls.key"), next_ca.server("other").key).unwrap();
    std::os::unix::fs::symlink("..2026_11_30_c", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    let mut logged = false;
    for _ in 0..100 {
        if captured_logs().contains("TLS files changed but do not load") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged, "the refused reload is logged");
    let logs = captured_logs();
    assert!(logs.contains("the key does not go with the certificate"), "the reason is given");
    assert_eq!(served_cn(app.addr, &[&ca.pem, &next_ca.pem]).await, "second.authgate.test");
    let client = https_client(&next_ca, None, app.addr);
    let base = format!("https://localhost:{}", app.addr.port());
    // (A check that reads the two files across a swap may see a mismatched pair once more:
    // refused, then loaded at the next check. Hence "at least".)
    for result in ["refused", "loaded"] {
        let series =
            format!("authgate_tls_reloads_total{{listener=\"public\",result=\"{result}\"}}");
        assert!(counter(&client, &base, &series).await >= 1.0, "{series}");
    }
}

/// An app whose public listener asks for client certificates optionally and whose internal
/// listener requires them, from `ca`, allowing only the client named `checker` there.
async fn mtls_app(ca: &Ca, dir: &Path) -> TestApp {
    let (cert, key) = write_leaf(dir, "server", &ca.server("authgate.test"));
    let ca_file = dir.join("clients-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let app = spawn_app(AppOptions {
        tls_client: Some(h2_client(ca, None)),
        internal: true,
        ..AppOptions::real()
            .set("AUTHGATE_TLS_CERT_FILE", path(&cert))
            .set("AUTHGATE_TLS_KEY_FILE", path(&key))
            .set("AUTHGATE_TLS_CLIENT_CA_FILE", path(&ca_file))
            .set("AUTHGATE_TLS_CLIENT_AUTH", "optional")
            .set("AUTHGATE_INTERNAL_TLS_CERT_FILE", path(&cert))
            .set("AUTHGATE_INTERNAL_TLS_KEY_FILE", path(&key))
            .set("AUTHGATE_INTERNAL_TLS_CLIENT_CA_FILE", path(&ca_file))
            .set("AUTHGATE_INTERNAL_TLS_CLIENT_ALLOWED_NAMES", "checker.fleet.internal")
    })
    .await;
    // Readiness lives on the internal listener: asked there with an allowed certificate, until
    // logins are ready too.
    let checker = h2_client(ca, Some(&ca.client("checker", false)));
    for _ in 0..100 {
        let login = internal_health_of(&app, Arc::clone(&checker), authgate::health::LOGIN_SERVICE);
        if login.await == Ok(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app
}

/// Health over the internal listener with this client TLS configuration.
async fn internal_health(app: &TestApp, config: Arc<rustls::ClientConfig>) -> Result<i32, String> {
    internal_health_of(app, config, "").await
}

/// Health of `service` over the internal listener.
async fn internal_health_of(
    app: &TestApp,
    config: Arc<rustls::ClientConfig>,
    service: &str,
) -> Result<i32, String> {
    let channel =
        tls_channel(app.internal_addr.unwrap(), config).await.map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.into() })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn mutual_tls_required_optional_wrong_ca_expired_and_the_allow_list() {
    let ca = Ca::new("fleet CA");
    let other_ca = Ca::new("someone else's CA");
    let dir = tempfile::tempdir().unwrap();
    let app = mtls_app(&ca, dir.path()).await;
    let checker = ca.client("checker", false);
    let intruder = ca.client("intruder", false);
    let expired = ca.client("checker", true);
    let foreign = other_ca.client("checker", false);

    // Internal listener: required, and the allow-list names `checker`.
    assert_eq!(internal_health(&app, h2_client(&ca, Some(&checker))).await, Ok(1));
    for (what, identity) in
        [("no certificate", None), ("wrong CA", Some(&foreign)), ("expired", Some(&expired))]
    {
        let refused = internal_health(&app, h2_client(&ca, identity)).await;
        assert!(refused.is_err(), "{what}: {refused:?}");
    }
    let denied = internal_health(&app, h2_client(&ca, Some(&intruder))).await.unwrap_err();
    assert!(denied.starts_with("PermissionDenied"), "{denied}");
    assert!(
        denied.contains("CN=intruder") && denied.contains("tls_client_allowed_names"),
        "says who and what to change: {denied}"
    );
    let internal = format!("https://localhost:{}", app.internal_addr.unwrap().port());
    let http = https_client(&ca, Some(&intruder), app.internal_addr.unwrap());
    let refused = http.get(format!("{internal}/readyz")).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("intruder.fleet.internal"));

    // Public listener: optional. No certificate and a good one are served; a certificate that
    // does not verify is refused even so.
    let public = app.addr;
    for identity in [None, Some(&checker), Some(&intruder)] {
        let channel = tls_channel(public, h2_client(&ca, identity)).await.unwrap();
        let started = authgate::pb::auth_service_client::AuthServiceClient::new(channel)
            .get_login_url(GetLoginUrlRequest::default())
            .await;
        assert!(started.is_ok(), "{:?}", started.map(|_| ()));
    }
    for bad in [&foreign, &expired] {
        let refused = match tls_channel(public, h2_client(&ca, Some(bad))).await {
            Err(_) => true,
            Ok(channel) => authgate::pb::auth_service_client::AuthServiceClient::new(channel)
                .get_login_url(GetLoginUrlRequest::default())
                .await
                .is_err(),
        };
        assert!(refused, "a presented certificate that does not verify is refused");
    }

    // The refusals are counted.
    let metrics = https_client(&ca, Some(&checker), app.internal_addr.unwrap());
    let refused = counter(
        &metrics,
        &internal,
        "authgate_tls_handshake_failures_total{listener=\"internal\",reason=\"refused\"}",
    )
    .await;
    assert!(refused >= 3.0, "{refused}");
}

#[tokio::test]
async fn slow_handshakes_time_out_and_are_capped() {
    let ca = Ca::new("authgate test CA");
    let dir = tempfile::tempdir().unwrap();
    let settings = [("AUTHGATE_TLS_HANDSHAKE_TIMEOUT", "5s"), ("AUTHGATE_TLS_MAX_HANDSHAKES", "2")];
    let app = tls_app(&ca, dir.path(), &settings).await;
    // Two clients that connect and say nothing hold both handshake places; a third is closed
    // at once; the two are closed when the timeout runs out.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let _ = third.write_all(b"\x16\x03\x01").await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), third.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the third is closed: {read:?}");
    for mut stream in silent {
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a silent client is closed: {read:?}");
    }
    let client = https_client(&ca, None, app.addr);
    let base = format!("https://localhost:{}", app.addr.port());
    let series = |reason: &str| {
        format!("authgate_tls_handshake_failures_total{{listener=\"public\",reason=\"{reason}\"}}")
    };
    assert_eq!(counter(&client, &base, &series("timeout")).await, 2.0);
    assert_eq!(counter(&client, &base, &series("at_cap")).await, 1.0);
}

// grpcurl runs as a blocking child process: keep a second worker thread serving the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_speaks_to_the_internal_listener_over_mutual_tls() {
    let ca = Ca::new("fleet CA");
    let dir = tempfile::tempdir().unwrap();
    let app = mtls_app(&ca, dir.path()).await;
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let (cert, key) = write_leaf(dir.path(), "checker", &ca.client("checker", false));
    let internal = app.internal_addr.unwrap().to_string();
    let grpcurl = |args: Vec<&str>| {
        let out = std::process::Command::new("grpcurl")
            .args(&args)
            .output()
            .expect("grpcurl must be installed (scripts/test installs it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ca_file = dir.path().join("ca.pem");
    let trusting = ["-cacert", path(&ca_file), "-servername", "localhost"];
    let as_checker = [&trusting[..], &["-cert", path(&cert), "-key", path(&key)]].concat();
    let (ok, out) =
        grpcurl([&as_checker[..], &[&internal, "grpc.health.v1.Health/Check"]].concat());
    assert!(ok && out.contains("SERVING"), "{out}");
    let (ok, out) = grpcurl([&as_checker[..], &[&internal, "list"]].concat());
    assert!(ok && out.contains("authgate.v1.AuthService"), "{out}");
    let (ok, out) = grpcurl([&trusting[..], &[&internal, "list"]].concat());
    assert!(!ok, "without a client certificate grpcurl is refused: {out}");
}
