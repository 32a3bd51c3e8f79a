//! The `db-gateway` binary: parses the command line and calls the library.
//!
//! ```text
//! db-gateway [serve]          apply pending migrations, then serve (default)
//! db-gateway migrate          apply pending migrations and exit
//! db-gateway migrate --status list migrations and their state; exit 1 on drift
//! db-gateway gen-key <id>     print a new keys-file entry with a random secret
//! ```
//!
//! Configuration comes from the environment (see `db_gateway::config`).

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use db_gateway::migrate::{self, MigrationReport, MigrationState, Migrator};
use db_gateway::telemetry::LogGuard;
use db_gateway::{Application, Config, config, keys, migrate_database, telemetry};

// Every request allocates dozens of small, short-lived buffers on two or more threads; with
// glibc's malloc that was ~10% of the gateway's CPU, and mimalloc cut CPU per request by about a
// fifth in `scripts/bench-gateway`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: db-gateway [serve | migrate [--status] | gen-key <id> | --help]";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Serve,
    Migrate { status_only: bool },
    GenKey { id: String },
    Help,
}

fn parse_args(args: &[String]) -> Result<Command> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok(match args.as_slice() {
        [] | ["serve"] => Command::Serve,
        ["migrate"] => Command::Migrate { status_only: false },
        ["migrate", "--status"] => Command::Migrate { status_only: true },
        ["gen-key", id] => Command::GenKey {
            id: (*id).to_owned(),
        },
        ["help" | "--help" | "-h"] => Command::Help,
        _ => bail!("{USAGE}"),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = runtime().and_then(|runtime| runtime.block_on(run(&args)));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("db-gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The multi-threaded runtime, with `GATEWAY_WORKER_THREADS` workers if set (else one per CPU).
fn runtime() -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = config::worker_threads_from_env()? {
        builder.worker_threads(threads);
    }
    builder.build().context("cannot start the async runtime")
}

async fn run(args: &[String]) -> Result<ExitCode> {
    match parse_args(args)? {
        Command::Help => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Command::GenKey { id } => {
            println!("{}", keys::generate_entry_json(&id)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { status_only } => {
            let (config, _log) = configure()?;
            if status_only {
                return print_status(&config).await;
            }
            let report = apply_migrations(&config).await?;
            for file in &report.applied {
                println!("applied {file}");
            }
            println!(
                "{} applied now, {} already applied",
                report.applied.len(),
                report.already_applied
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            // Held until `serve` returns, so every log line is written before the process exits.
            let (config, _log) = configure()?;
            let shutdown = shutdown_signal()?;
            apply_migrations(&config).await?;
            let app = Application::build(config)
                .await
                .context("cannot start the gateway")?;
            // Scripts and tests parse this exact line to learn the (possibly random) ports.
            println!(
                "db-gateway listening api={} admin={}",
                app.api_addr(),
                app.admin_addr()
            );
            app.run_until(shutdown).await.context("server failed")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn configure() -> Result<(Config, LogGuard)> {
    let config = Config::from_env()?;
    let log = telemetry::init_tracing(&config.log_filter)?;
    Ok((config, log))
}

async fn apply_migrations(config: &Config) -> Result<MigrationReport> {
    let report = migrate_database(config)
        .await
        .map_err(|error| anyhow::anyhow!("migrations failed [{}]: {error}", error.code()))?;
    tracing::info!(
        applied = report.applied.len(),
        already_applied = report.already_applied,
        "migrations up to date"
    );
    Ok(report)
}

async fn print_status(config: &Config) -> Result<ExitCode> {
    let migrator = Migrator::from_dir(&config.migrations_dir)?;
    let client = migrate::connect(&config.database).await?;
    let statuses = migrator.status(&client).await?;
    let mut drift = false;
    for status in &statuses {
        let state = match &status.state {
            MigrationState::Applied { applied_at } => {
                format!("applied  {}", applied_at.to_rfc3339())
            }
            MigrationState::Pending => "pending".to_owned(),
            MigrationState::ChecksumMismatch { applied_at } => {
                format!(
                    "CHANGED  applied {} but the file differs",
                    applied_at.to_rfc3339()
                )
            }
            MigrationState::MissingFile { applied_at } => {
                format!(
                    "MISSING  applied {} but the file is gone",
                    applied_at.to_rfc3339()
                )
            }
        };
        drift |= status.state.is_drift();
        println!("{:>4}  {:<40}  {state}", status.version, status.name);
    }
    if statuses.is_empty() {
        println!("no migrations in {}", config.migrations_dir.display());
    }
    Ok(if drift {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd stop). The handlers are installed before
/// this returns, so a signal arriving while the gateway is still starting is not lost (nor
/// fatal by default action).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_args(&args(&[])).unwrap(), Command::Serve);
        assert_eq!(parse_args(&args(&["serve"])).unwrap(), Command::Serve);
        assert_eq!(
            parse_args(&args(&["migrate"])).unwrap(),
            Command::Migrate { status_only: false }
        );
        assert_eq!(
            parse_args(&args(&["migrate", "--status"])).unwrap(),
            Command::Migrate { status_only: true }
        );
        assert_eq!(
            parse_args(&args(&["gen-key", "worker-2026-12"])).unwrap(),
            Command::GenKey {
                id: "worker-2026-12".to_owned()
            }
        );
        assert!(parse_args(&args(&["gen-key"])).is_err());
        assert!(parse_args(&args(&["migrate", "--force"])).is_err());
        assert!(parse_args(&args(&["frobnicate"])).is_err());
    }
}
