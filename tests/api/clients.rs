//! The client examples in `examples/clients/` and the demo backend in `examples/backend/`, run
//! as their READMEs run them against a real authgate and the real provider: the grpcurl script
//! through a whole session, the Python ValidateToken client and PyJWT verifier (stubs generated
//! here with grpcio-tools), the standard-library Go verifier, the Rust tonic example, and the
//! demo backend that checks each call both ways. `scripts/test` installs what they need
//! (grpcurl, grpcio, grpcio-tools, PyJWT, Go).

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use authgate::pb::LogoutRequest;
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use crate::{helpers::*, login_flow::full_login};

const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs a client to completion (bounded); fails with a hint when the tool is not installed.
async fn run(command: &mut Command, what: &str) -> Output {
    command.current_dir(repo_root()).stdin(Stdio::null()).kill_on_drop(true);
    let child = command.output();
    match tokio::time::timeout(RUN_LIMIT, child).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => panic!("{what} could not start ({err}); scripts/test installs it"),
        Err(_) => panic!("{what} did not finish within {RUN_LIMIT:?}"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn host_port(app: &TestApp) -> String {
    app.addr.to_string()
}

/// The Python stubs, generated from the proto as a user of authgate generates them.
async fn python_stubs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = format!("{}", dir.path().display());
    let generated = run(
        Command::new("python3").args([
            "-m",
            "grpc_tools.protoc",
            "-I",
            "proto",
            &format!("--python_out={out}"),
            &format!("--grpc_python_out={out}"),
            "proto/authgate/v1/auth.proto",
        ]),
        "python3 -m grpc_tools.protoc (pip install -r examples/clients/python/requirements.txt)",
    )
    .await;
    assert!(generated.status.success(), "protoc: {}", stderr(&generated));
    assert!(dir.path().join("authgate/v1/auth_pb2_grpc.py").exists());
    dir
}

fn python(stubs: &Path, script: &str) -> Command {
    let mut command = Command::new("python3");
    command.arg(format!("examples/clients/python/{script}")).env("PYTHONPATH", stubs);
    command
}

/// A JSON document printed after a `== Method` line by the grpcurl script.
fn answer_of(output: &str, method: &str) -> Value {
    let marker = format!("== {method}\n");
    let start =
        output.find(&marker).unwrap_or_else(|| panic!("no {method} in:\n{output}")) + marker.len();
    let rest = &output[start..];
    let end = rest.find("\n== ").unwrap_or(rest.len());
    serde_json::from_str(&rest[..end]).unwrap_or_else(|e| panic!("{method}: {e}:\n{rest}"))
}

/// The last `== Method` answer of the output (the script calls ValidateToken twice).
fn last_answer_of(output: &str, method: &str) -> Value {
    let marker = format!("== {method}\n");
    let start = output.rfind(&marker).unwrap() + marker.len();
    serde_json::from_str(output[start..].trim()).unwrap()
}

/// `token` with its claims rewritten (another subject, admin groups), signature kept.
fn tampered(token: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = "00u1mallory".into();
    claims["groups"] = serde_json::json!(["admins"]);
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{forged}.{}", parts[0], parts[2])
}

async fn log_out(app: &TestApp, token: &str) {
    app.grpc.clone().logout(with_bearer(LogoutRequest::default(), token)).await.unwrap();
}

#[tokio::test]
async fn the_grpcurl_script_runs_the_readme_lines_through_a_whole_session() {
    let app = spawn_app(AppOptions::real()).await;
    wait_until_serving(&app).await;
    let script = |args: &[&str]| {
        let mut command = Command::new("bash");
        command.arg("examples/clients/grpcurl/authgate.sh").args(args);
        command.env("AUTHGATE", host_port(&app));
        command
    };

    let started = run(&mut script(&["start", REDIRECT_URI]), "grpcurl").await;
    assert!(started.status.success(), "{}{}", stdout(&started), stderr(&started));
    let out = stdout(&started);
    assert!(out.contains("authgate.v1.AuthService\n"), "reflection lists the service:\n{out}");
    assert_eq!(answer_of(&out, "grpc.health.v1.Health/Check")["status"], "SERVING");
    let login = answer_of(&out, "authgate.v1.AuthService/GetLoginUrl");
    let login_url = login["loginUrl"].as_str().unwrap();
    assert!(query_param(login_url, "scope").unwrap().contains("offline_access"), "{login_url}");

    let callback = sign_in_at_provider(login_url, ALICE, REDIRECT_URI).await;
    let iss = callback.iss.clone().unwrap_or_default();
    let binding = login["binding"].as_str().unwrap();
    let args = ["exchange", &callback.code, &callback.state, binding, &iss, REDIRECT_URI];
    let exchanged = run(&mut script(&args), "grpcurl").await;
    assert!(exchanged.status.success(), "{}", stderr(&exchanged));
    let session = answer_of(&stdout(&exchanged), "authgate.v1.AuthService/ExchangeCode");
    assert_eq!(session["user"]["email"], "alice@example.com");
    let token = session["accessToken"].as_str().unwrap();
    let handle = session["refreshToken"].as_str().unwrap();

    let used = run(&mut script(&["use", token, handle]), "grpcurl").await;
    assert!(used.status.success(), "{}{}", stdout(&used), stderr(&used));
    let out = stdout(&used);
    let profile = answer_of(&out, "authgate.v1.AuthService/GetUserInfo");
    assert_eq!(profile["user"]["email"], "alice@example.com");
    let verdict = answer_of(&out, "authgate.v1.AuthService/ValidateToken");
    assert_eq!(verdict["valid"], true, "{verdict}");
    assert_eq!(verdict["claims"]["groups"], serde_json::json!(["Everyone", "admins"]));
    let jwks = answer_of(&out, "authgate.v1.AuthService/GetJwks");
    assert!(!jwks["keys"].as_array().unwrap().is_empty(), "{jwks}");
    let refreshed = answer_of(&out, "authgate.v1.AuthService/RefreshSession");
    assert_ne!(refreshed["accessToken"], token);
    assert!(answer_of(&out, "authgate.v1.AuthService/Logout")["endSessionUrl"].is_string());
    let after = last_answer_of(&out, "authgate.v1.AuthService/ValidateToken");
    assert_eq!(after["reason"], "INVALID_REASON_REVOKED", "{after}");
    // The old handle was used by the script's refresh: the session is gone for it too.
    assert!(!validate(&app, token).await.valid);
}

#[tokio::test]
async fn the_python_clients_verify_locally_and_ask_validate_token() {
    let app = spawn_app(AppOptions::real()).await;
    let stubs = python_stubs().await;
    let done = full_login(&app, ALICE).await;
    let token = done.access_token.as_str();

    // PyJWT on the JWKS discovered from the issuer metadata.
    let verified =
        run(python(stubs.path(), "verify_jwt.py").args([&app.base_url(), token]), "python3").await;
    assert!(verified.status.success(), "{}", stderr(&verified));
    let claims: Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(claims["sub"], "00u1alice");
    assert_eq!(claims["groups"], serde_json::json!(["Everyone", "admins"]));
    let forged = tampered(token);
    let refused =
        run(python(stubs.path(), "verify_jwt.py").args([&app.base_url(), &forged]), "python3")
            .await;
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("InvalidSignatureError"), "{}", stderr(&refused));
    let elsewhere =
        run(python(stubs.path(), "verify_jwt.py").args(["http://localhost:1", token]), "python3")
            .await;
    assert_ne!(elsewhere.status.code(), Some(0), "an unreachable issuer never passes a token");

    // grpcio with the generated stubs: ValidateToken.
    let target = host_port(&app);
    let checked =
        run(python(stubs.path(), "check_token.py").args([&target, token]), "python3").await;
    assert!(checked.status.success(), "{}", stderr(&checked));
    let verdict: Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["claims"]["email"], "alice@example.com");
    assert_eq!(verdict["claims"]["sid"], done.session_id.as_str());

    // A logout: the token still verifies locally (it cannot know), ValidateToken says revoked.
    log_out(&app, token).await;
    let locally =
        run(python(stubs.path(), "verify_jwt.py").args([&app.base_url(), token]), "python3").await;
    assert!(locally.status.success(), "local verification cannot see a logout");
    let checked =
        run(python(stubs.path(), "check_token.py").args([&target, token]), "python3").await;
    assert_eq!(checked.status.code(), Some(1), "{}", stdout(&checked));
    let verdict: Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(verdict["reason"], "INVALID_REASON_REVOKED");

    // authgate gone: the client says so (exit 2) instead of passing the token.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down =
        run(python(stubs.path(), "check_token.py").args([&port.to_string(), token]), "python3")
            .await;
    assert_eq!(down.status.code(), Some(2), "{}", stderr(&down));
    assert!(stderr(&down).contains("UNAVAILABLE"), "{}", stderr(&down));
}

#[tokio::test]
async fn the_go_verifier_uses_only_the_standard_library_and_refuses_forgeries() {
    let app = spawn_app(AppOptions::real()).await;
    let done = full_login(&app, ALICE).await;
    let go = |token: &str| {
        let mut command = Command::new("go");
        command.args(["run", "examples/clients/go/verify.go", &app.base_url(), token]);
        // A module-less build of one file: the standard library only (no module proxy here).
        command.env("GOCACHE", repo_root().join("target/go-build"));
        command.env("GOPROXY", "off").env("GO111MODULE", "on");
        command
    };
    let ok = run(&mut go(&done.access_token), "go (apt-get install golang-go)").await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let claims: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(claims["sub"], "00u1alice");
    assert_eq!(claims["email"], "alice@example.com");

    let forged = run(&mut go(&tampered(&done.access_token)), "go").await;
    assert_eq!(forged.status.code(), Some(1));
    assert!(stderr(&forged).contains("signature does not verify"), "{}", stderr(&forged));
    let not_a_jwt = run(&mut go("not.a-jwt"), "go").await;
    assert_eq!(not_a_jwt.status.code(), Some(1));
    assert!(stderr(&not_a_jwt).contains("not a well-formed JWT"), "{}", stderr(&not_a_jwt));
}

/// `target/<profile>/examples/<name>`, built with the tests (cargo builds every example then).
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = profile_dir.join("examples").join(name);
    assert!(binary.exists(), "{} is missing: cargo build --example {name}", binary.display());
    binary
}

#[tokio::test]
async fn the_rust_example_validates_a_token_and_reads_the_profile() {
    let app = spawn_app(AppOptions::real()).await;
    let done = full_login(&app, ALICE).await;
    let binary = example_binary("validate_token");
    let example = |token: &str| {
        let mut command = Command::new(&binary);
        command.args([&app.base_url(), token]);
        command
    };

    let ok = run(&mut example(&done.access_token), "validate_token").await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out = stdout(&ok);
    assert!(out.contains("valid: sub=00u1alice"), "{out}");
    assert!(out.contains("groups: Everyone, admins"), "{out}");
    assert!(out.contains("profile: Alice Anderson <alice@example.com>"), "{out}");

    log_out(&app, &done.access_token).await;
    let revoked = run(&mut example(&done.access_token), "validate_token").await;
    assert_eq!(revoked.status.code(), Some(1));
    assert!(stdout(&revoked).contains("INVALID_REASON_REVOKED"), "{}", stdout(&revoked));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut down = Command::new(&binary);
    down.args([&format!("http://{port}"), done.access_token.as_str()]);
    let down = run(&mut down, "validate_token").await;
    assert_eq!(down.status.code(), Some(2), "authgate unreachable fails closed");
}

/// The demo backend, started as `scripts/demo` starts it; its first stdout line gives its URL.
struct Backend {
    url: String,
    _child: tokio::process::Child,
}

async fn start_backend(app: &TestApp, stubs: &Path, allowed_origin: &str) -> Backend {
    let mut child = Command::new("python3")
        .arg("examples/backend/backend.py")
        .current_dir(repo_root())
        .env("PYTHONPATH", stubs)
        .env("AUTHGATE_ISSUER", app.base_url())
        // Reached under another name than the issuer's, as inside a compose network.
        .env("AUTHGATE_URL", format!("http://localhost:{}", app.addr.port()))
        .env("ALLOWED_ORIGINS", allowed_origin)
        .env("PORT", "0")
        .env("EXIT_ON_STDIN_CLOSE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(RUN_LIMIT, lines.next_line()).await.unwrap().unwrap();
    let first: Value = serde_json::from_str(&first.expect("the backend printed nothing")).unwrap();
    Backend { url: first["url"].as_str().unwrap().to_string(), _child: child }
}

#[tokio::test]
async fn the_demo_backend_answers_only_tokens_that_pass_both_checks() {
    let app = spawn_app(AppOptions::real()).await;
    let stubs = python_stubs().await;
    let spa = "http://127.0.0.1:5173";
    let backend = start_backend(&app, stubs.path(), spa).await;
    let hello = format!("{}/api/hello", backend.url);
    let client = http_client();
    let call = |token: Option<String>| {
        let mut request = client.get(&hello).header("origin", spa);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    let (status, body) = call(None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");

    let done = full_login(&app, ALICE).await;
    let (status, body) = call(Some(done.access_token.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subject"], "00u1alice");
    assert_eq!(body["groups"], serde_json::json!(["Everyone", "admins"]));
    assert_eq!(body["admin"], true);
    let checks = body["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{body}");
    assert!(checks.iter().all(|c| c["ok"] == true), "{body}");
    let detail = checks[0]["detail"].as_str().unwrap();
    let jwks = format!("http://localhost:{}/.well-known/jwks.json", app.addr.port());
    assert!(detail.contains(&jwks), "{body}");

    // CORS: the SPA's origin may read the answer, another may not; the preflight allows only
    // the Authorization header and GET.
    let preflight = client
        .request(reqwest::Method::OPTIONS, &hello)
        .header("origin", spa)
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], spa);
    assert_eq!(preflight.headers()["access-control-allow-headers"], "authorization");
    let foreign = client.get(&hello).header("origin", "http://evil.test").send().await.unwrap();
    assert!(foreign.headers().get("access-control-allow-origin").is_none());

    let (status, body) = call(Some(tampered(&done.access_token))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["checks"][0]["ok"], false, "{body}");

    // Signed out elsewhere: the signature still verifies, ValidateToken refuses.
    log_out(&app, &done.access_token).await;
    let (status, body) = call(Some(done.access_token.clone())).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["reason"], "INVALID_REASON_REVOKED", "{body}");
    assert_eq!(body["checks"][0]["ok"], true, "{body}");

    // authgate down: 503, never a pass on the local check alone.
    let bob = full_login(&app, BOB).await;
    let (status, body) = call(Some(bob.access_token.clone())).await;
    assert_eq!((status, body["admin"].clone()), (200, Value::Bool(false)), "{body}");
    app.stop().await;
    let (status, body) = call(Some(bob.access_token)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("ValidateToken failed"), "{body}");
}
