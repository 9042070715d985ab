//! The `authgate` command line: `serve` (the default) and `migrate`.

use std::{path::PathBuf, process::ExitCode};

use authgate::{config::Config, startup, store::Store, telemetry};
use clap::{Parser, Subcommand};

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
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage authgate's signing keys.
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
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("authgate: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
    if let Some(path) = &config.encryption_key.generated_at {
        tracing::info!(path = %path.display(), "using the encryption key file beside the SQLite database");
    }
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen_addr))?;
    let app = startup::Application::build(config).await?;
    app.run(listener, startup::shutdown_signal()).await
}
