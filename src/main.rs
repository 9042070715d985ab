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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
