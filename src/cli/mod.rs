//! Command-line interface: argument parsing and the subcommands.

mod simulator_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for invalid usage or configuration (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;

/// Rotates MotherDuck service-account tokens on schedule, storing them in
/// Vault/OpenBao, AWS Secrets Manager or local files, verifying the new token
/// before the old one is revoked.
#[derive(Debug, Parser)]
#[command(name = "motherduck-rotator", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a simulated MotherDuck REST API for integration tests.
    ///
    /// The simulator implements the documented routes, validation rules and
    /// error bodies, with tokens that expire against its clock. Its admin
    /// token is read from --admin-token-file, or generated and written there
    /// (mode 0600) when the file does not exist.
    ///
    /// Example:
    ///   motherduck-rotator simulator --listen 127.0.0.1:8787 --admin-token-file ./admin.token
    ///   curl -H "Authorization: Bearer $(cat admin.token)" \
    ///        -d '{"username":"svc_app"}' -H 'content-type: application/json' \
    ///        http://127.0.0.1:8787/v1/users
    Simulator(simulator_cmd::SimulatorArgs),
}

/// Parses arguments, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Simulator(args) => simulator_cmd::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MDR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
