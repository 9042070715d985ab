//! The image's entrypoint, without a container engine: the release binary (or this build's, when
//! `AUTHGATE_CONTAINER_BIN` is not set) run as the Dockerfile runs it — its environment
//! (`AUTHGATE_LISTEN_ADDR=0.0.0.0:…`, no `DATABASE_URL`: the embedded store), the data directory
//! as working directory, uid/gid 10001 (`setpriv`), and the root file system read-only except the
//! data directory (`unshare --mount` with a read-only bind remount). It must become healthy by
//! `authgate healthcheck` (the image's HEALTHCHECK), complete a login, keep its files in the data
//! directory, and stop cleanly on SIGTERM. Needs root (for the mount namespace), as CI has.

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use authgate::pb::{ExchangeCodeRequest, GetLoginUrlRequest, GetUserInfoRequest};

use crate::helpers::*;

const UID: &str = "10001";

#[tokio::test]
async fn the_binary_runs_as_the_image_entrypoint_on_a_read_only_root() {
    assert_eq!(
        unsafe_geteuid(),
        0,
        "this test builds a mount namespace and switches to uid 10001: run it as root (CI does)"
    );
    let binary = std::env::var("AUTHGATE_CONTAINER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_authgate").to_string());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let owner = format!("{UID}:{UID}");
    let chown = Command::new("chown").args([owner.as_str(), data.to_str().unwrap()]).status();
    assert!(chown.unwrap().success());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    // The image's environment, and what an operator adds (provider, redirect URIs, public URL).
    let env: Vec<(&str, String)> = vec![
        ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
        ("AUTHGATE_LISTEN_ADDR", format!("0.0.0.0:{port}")),
        ("AUTHGATE_PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        ("AUTHGATE_ISSUER_URL", dev_provider().issuer.clone()),
        ("AUTHGATE_CLIENT_ID", TEST_CLIENT_ID.into()),
        ("AUTHGATE_CLIENT_SECRET", TEST_CLIENT_SECRET.into()),
        ("AUTHGATE_REDIRECT_URIS", REDIRECT_URI.into()),
        ("AUTHGATE_HEALTH_CHECK_INTERVAL", "1".into()),
    ];
    let as_image = |script: &str| {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", script, "entrypoint"])
            .arg(&data)
            .arg(&binary)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    };
    // $1: the data directory, $2: the binary. The data directory stays writable; everything else
    // on the root file system becomes read-only; then the entrypoint, as uid 10001.
    let entrypoint = "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro / && cd \"$1\" && \
         exec setpriv --reuid 10001 --regid 10001 --clear-groups -- \"$2\" serve";
    let mut server = Running(as_image(entrypoint).spawn().unwrap());
    let healthcheck = || {
        Command::new("setpriv")
            .args(["--reuid", UID, "--regid", UID, "--clear-groups", "--", &binary, "healthcheck"])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = healthcheck();
        if out.status.success() {
            break;
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            let mut stderr = String::new();
            use std::io::Read;
            server.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("the entrypoint stopped ({status}): {stderr}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Healthy means "can validate"; a login also needs the provider discovered.
    for _ in 0..300 {
        let login_ready = crate::helpers::http_client()
            .get(format!("http://127.0.0.1:{port}/readyz/login"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if login_ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A login through it.
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = authgate::pb::auth_service_client::AuthServiceClient::new(channel);
    let started = grpc.get_login_url(GetLoginUrlRequest::default()).await.unwrap().into_inner();
    let cb = sign_in_at_provider(&started.login_url, ALICE, REDIRECT_URI).await;
    let done = grpc
        .exchange_code(ExchangeCodeRequest {
            code: cb.code,
            state: cb.state,
            binding: started.binding,
            redirect_uri: String::new(),
            iss: cb.iss.unwrap_or_default(),
            refresh_cookie: false,
        })
        .await
        .unwrap()
        .into_inner();
    let me = grpc
        .get_user_info(with_bearer(GetUserInfoRequest::default(), &done.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.user.unwrap().email, "alice@example.com");

    // Its state is in the data directory, owned by the image's user; the key is private.
    use std::os::unix::fs::MetadataExt;
    for file in ["authgate.db", "authgate.db.key"] {
        let meta = std::fs::metadata(data.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(meta.uid(), 10001, "{file}");
    }
    assert_eq!(std::fs::metadata(data.join("authgate.db.key")).unwrap().mode() & 0o777, 0o600);

    // SIGTERM: a clean stop.
    let pid = server.0.id();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running 25 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "stopped with {status}");
    assert!(!healthcheck().status.success(), "the healthcheck fails once it is gone");
}

/// The server under test: killed if the test ends (a failed assertion) before it stopped it.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
