//! The `authgate` command line: `serve` (the default) and `migrate`.

use std::{path::PathBuf, process::ExitCode};

use authgate::{
    config::{Config, Needs},
    startup,
    store::Store,
    telemetry,
};
use clap::{Parser, Subcommand};

/// mimalloc: measured (`./scripts/bench`), 10-15% less server CPU per login than glibc malloc,
/// whose free lists showed up as a tenth of the profile. Built without transparent huge pages,
/// which otherwise take resident memory in 2 MB steps (75 MB instead of 47 MB with 1,000
/// connections).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "authgate",
    version,
    about = "OpenID Connect login service for SPAs and microservices (gRPC, grpc-web, HTTP)"
)]
struct Cli {
    /// A TOML configuration file; `AUTHGATE_*` environment variables override it.
    #[arg(long, short, global = true, env = "AUTHGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (default).
    Serve,
    /// Apply the database migrations and exit (needs only the database settings).
    Migrate,
    /// Ask the local authgate whether it is ready (`/readyz` on the internal listener when there
    /// is one, else on the public one); exit status 0 if so, 1 if not. For container health
    /// checks: needs no shell or curl, and reads only the listen settings.
    Healthcheck {
        /// Ask whether it is alive (`/healthz`) rather than ready.
        #[arg(long)]
        live: bool,
    },
    /// Load and validate the configuration, fetch the provider's discovery document, test the
    /// database and the signing keys, and report each check (exit status 1 if any fails).
    CheckConfig,
    /// Manage authgate's signing keys (needs the database settings and the encryption key).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate a new signing key: published at once, signing after `key_publish_ahead`; the
    /// old key stays published until the last token it signed has expired.
    Rotate,
    /// List the signing keys in the database.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { live }) = cli.command {
        return healthcheck(cli.config.as_deref(), live);
    }
    let needs = match cli.command {
        Some(Command::Migrate | Command::Keys { .. }) => Needs::Database,
        _ => Needs::Everything,
    };
    let config = match Config::load_for(cli.config.as_deref(), needs) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authgate: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(config.log_format, config.otlp_endpoint.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("authgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.transport.internal_listen_addr.is_some() {
        // The internal listener runs on a runtime of its own; the main runtime's login work
        // yields the CPU to it (nice +5) when the machine is saturated.
        builder.on_thread_start(authgate::server::lower_thread_priority);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("authgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Migrate => {
                let store = Store::connect(&config.database, 1)?;
                store.migrate().await?;
                println!("migrations applied ({})", config.database.describe());
                Ok(())
            }
            Command::Keys { command } => keys(config, command).await,
            Command::CheckConfig => check_config(config).await,
            // Answered before the configuration was loaded.
            Command::Healthcheck { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("authgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `authgate healthcheck`: one HTTP/1.1 GET to the local listener, 2 s at most; over TLS
/// when the listener speaks it.
fn healthcheck(config: Option<&std::path::Path>, live: bool) -> ExitCode {
    use std::io::{Read, Write};
    let probe = match Config::probe_address(config) {
        Ok(probe) => probe,
        Err(e) => {
            eprintln!("authgate: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = probe.addr;
    let path = if live { "/healthz" } else { "/readyz" };
    let timeout = std::time::Duration::from_secs(2);
    let answer = (|| -> std::io::Result<String> {
        let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let mut response = Vec::new();
        match &probe.tls {
            None => {
                let mut stream = stream;
                stream.write_all(request.as_bytes())?;
                stream.take(64 * 1024).read_to_end(&mut response)?;
            }
            Some(tls) => {
                let client = authgate::server::tls::probe_client(tls.client_identity.as_ref())
                    .map_err(std::io::Error::other)?;
                let mut stream = rustls::StreamOwned::new(client, stream);
                stream.write_all(request.as_bytes())?;
                match stream.take(64 * 1024).read_to_end(&mut response) {
                    Ok(_) => {}
                    // The server may close without close_notify once the answer is sent.
                    Err(e)
                        if e.kind() == std::io::ErrorKind::UnexpectedEof
                            && !response.is_empty() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(String::from_utf8_lossy(&response).into_owned())
    })();
    match answer {
        Ok(response) if response.starts_with("HTTP/1.1 200") => {
            println!("ok: {path} on {addr}");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            let status = response.lines().next().unwrap_or_default().to_string();
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
            println!(
                "not {}: {path} on {addr} answered {status} {body}",
                if live { "alive" } else { "ready" }
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("not reachable: {path} on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every check and prints one line each; fails if any failed.
async fn check_config(config: Config) -> anyhow::Result<()> {
    use authgate::{crypto::Cipher, provider::oidc::OidcProvider};
    let mut failed = 0;
    let mut report = |name: &str, result: Result<String, String>| match result {
        Ok(detail) => println!("ok    {name:<14} {detail}"),
        Err(detail) => {
            failed += 1;
            println!("FAIL  {name:<14} {detail}");
        }
    };
    report(
        "configuration",
        Ok(format!(
            "issuer {}, client {}, {} redirect URI(s), {}, listen {}{}",
            config.provider.issuer,
            config.provider.client_id,
            config.redirect_uris.len(),
            config.database.describe(),
            config.listen_addr,
            config
                .transport
                .internal_listen_addr
                .map(|a| format!(", internal listener {a}"))
                .unwrap_or_default()
        )),
    );
    for (name, tls) in [
        ("TLS public", &config.transport.public_tls),
        ("TLS internal", &config.transport.internal_tls),
    ] {
        if let Some(tls) = tls {
            let t = &config.transport;
            let loaded = authgate::server::tls::TlsListener::new(
                "check",
                tls.clone(),
                t.tls_handshake_timeout,
                t.tls_max_handshakes,
            );
            report(
                name,
                loaded
                    .map(|l| format!("{}, client certificates {:?}", l.summary(), tls.client_auth)),
            );
        }
    }
    let provider = match OidcProvider::new(config.provider.clone()) {
        Ok(p) => p,
        Err(e) => anyhow::bail!("cannot create the provider client: {e}"),
    };
    report(
        "provider",
        provider
            .discover()
            .await
            .map(|()| format!("discovery document of {} fetched and valid", config.provider.issuer))
            .map_err(|e| e.to_string()),
    );
    let store = Store::connect(&config.database, 1)?;
    let reachable = store.ping().await;
    report(
        "database",
        reachable.as_ref().map(|()| "reachable".to_string()).map_err(|e| e.to_string()),
    );
    if reachable.is_ok() {
        let cipher = Cipher::new(&config.encryption_key.key);
        let keys = match store.list_signing_keys(authgate::tokens::now()).await {
            Ok(keys) if keys.is_empty() => Ok("none yet (the first start generates one)".into()),
            Ok(keys) => {
                let undecryptable = keys
                    .iter()
                    .filter(|k| {
                        cipher.decrypt(&k.private_key, &format!("signing_key:{}", k.kid)).is_err()
                    })
                    .count();
                if undecryptable == 0 {
                    Ok(format!(
                        "{} key(s), all readable with the configured encryption_key",
                        keys.len()
                    ))
                } else {
                    Err(format!(
                        "{undecryptable} of {} key(s) do not decrypt: is this the encryption_key the keys were stored with?",
                        keys.len()
                    ))
                }
            }
            Err(e) => Err(format!("{e} (run `authgate migrate` first?)")),
        };
        report("signing keys", keys);
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

async fn keys(config: Config, command: KeysCommand) -> anyhow::Result<()> {
    use authgate::{crypto::Cipher, tokens::TokenIssuer};
    let store = Store::connect(&config.database, 2)?;
    store.migrate().await?;
    let cipher = Cipher::new(&config.encryption_key.key);
    let issuer = config.public_url.as_str().trim_end_matches('/').to_string();
    let tokens = TokenIssuer::load(issuer, &config.tokens, &store, &cipher).await?;
    match command {
        KeysCommand::Rotate => {
            let (kid, activates_at) = tokens.rotate().await?;
            println!("new signing key {kid}: published now, signs from unix time {activates_at}");
        }
        KeysCommand::List => {
            for k in store.list_signing_keys(authgate::tokens::now()).await? {
                println!("{}\t{}\tactivates_at={}", k.kid, k.algorithm, k.activates_at);
            }
        }
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.development_mode {
        tracing::warn!(
            "development_mode is on: published encryption keys are accepted; never run it so with real users"
        );
    }
    if let Some(path) = &config.encryption_key.generated_at {
        tracing::info!(path = %path.display(), "using the encryption key file beside the SQLite database");
    }
    let bind = |addr: std::net::SocketAddr| {
        authgate::server::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    };
    let public = bind(config.listen_addr)?;
    let internal = config.transport.internal_listen_addr.map(bind).transpose()?;
    let app = startup::Application::build(config).await?;
    app.run(startup::Listeners { public, internal }, startup::shutdown_signal()).await
}
