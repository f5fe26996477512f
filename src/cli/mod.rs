//! Command-line interface: argument parsing and the subcommands.

/// The value of a `Result<T, ExitCode>`, or, on `Err(code)`, returns
/// `Ok(code)` from the command: the problem has been printed already.
macro_rules! or_exit {
    ($result:expr) => {
        match $result {
            Ok(v) => v,
            Err(code) => return Ok(code),
        }
    };
}

mod demo;
pub mod ops;
mod progress;
mod simulator_cmd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, LoadOptions, LogFormat};

/// Exit code for invalid usage or configuration (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;

const DEFAULT_CONFIG: &str = "/etc/motherduck-rotator/config.toml";

/// Rotates MotherDuck service-account tokens on schedule.
///
/// For each policy it creates a replacement token, writes it to the
/// configured stores (local files, Vault/OpenBao, AWS Secrets Manager),
/// verifies that consumers work with it, and only then revokes the old one.
/// Every step is journaled in the stores, so a crash or restart resumes
/// where it stopped.
#[derive(Debug, Parser)]
#[command(
    name = "motherduck-rotator",
    version = crate::build_info::version_line(),
    about,
    long_about
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "MOTHERDUCK_ROTATOR_CONFIG",
        default_value = DEFAULT_CONFIG
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: rotate every policy on schedule until SIGTERM/SIGINT.
    Run,
    /// Check the configuration and exit: 0 when valid, 64 with every problem
    /// (file:line:column: field: reason) otherwise. Warnings are printed too.
    Validate(ops::ValidateArgs),
    /// Show the next due times of each policy and why, from the stores'
    /// current tokens.
    Plan(ops::PlanArgs),
    /// Rotate now, once: the given policies, or all with --all. Exits 1 if
    /// any rotation failed or was rolled back.
    Rotate(ops::RotateArgs),
    /// Show each policy's current token, age, expiry, next due time,
    /// rotation in progress and last error, read from the stores.
    Status(ops::StatusArgs),
    /// Find tokens this rotator created that no store record references,
    /// and revoke them (or list them with --dry-run).
    Sweep(ops::SweepArgs),
    /// Run a self-contained demo: an embedded MotherDuck simulator, a local
    /// file store and three policies rotating about every 15 seconds, with
    /// metrics on http://127.0.0.1:9464/metrics. Ctrl-C stops it.
    Demo(demo::DemoArgs),
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
    #[command(verbatim_doc_comment)]
    Simulator(simulator_cmd::SimulatorArgs),
}

/// The most async worker threads, whatever the number of CPUs.
const WORKER_THREADS: usize = 4;
/// The most threads for blocking work (file IO), whatever the number of
/// policies; more file operations than this wait their turn.
const BLOCKING_THREADS: usize = 16;

/// Parses arguments, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The work is waiting on the network and on stores, so a few workers
    // do, and file IO gets a bounded pool: the thread count depends on
    // neither the machine's size nor the number of policies.
    let workers =
        std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, WORKER_THREADS));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(BLOCKING_THREADS)
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
        let result = dispatch(cli).await;
        // Locks dropped at the end are released in the background; let
        // those releases finish, or the lock stays held until it expires.
        if !crate::stores::wait_for_releases(std::time::Duration::from_secs(10)).await {
            eprintln!(
                "warning: a lock release did not finish; the lock ends when its lease expires"
            );
        }
        result
    });
    // Do not wait for blocking tasks (hooks, file IO) left by a shutdown.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // The daemon logs in the format its configuration asks for; `validate`
    // logs only when it goes online; every other command logs text.
    let text_logs = match &cli.command {
        Command::Run => false,
        Command::Validate(args) => args.online,
        _ => true,
    };
    if text_logs {
        init_logging(LogFormat::Text);
    }
    match cli.command {
        Command::Run => {
            let config = or_exit!(load_config(&cli.config, LoadOptions::default()));
            init_logging(config.daemon.log_format);
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            let shutdown = tokio_util::sync::CancellationToken::new();
            let s = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                s.cancel();
                // A second signal exits at once: every step can be resumed.
                shutdown_signal().await;
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            });
            let opts = crate::daemon::RunOptions {
                clock: crate::clock::Clock::System,
                config_path: Some(cli.config.clone()),
            };
            crate::daemon::run(config, opts, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => ops::validate(&cli.config, &args).await,
        Command::Plan(args) => ops::plan(&cli.config, &args).await,
        Command::Rotate(args) => ops::rotate(&cli.config, &args).await,
        Command::Status(args) => ops::status(&cli.config, &args).await,
        Command::Sweep(args) => ops::sweep(&cli.config, &args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Simulator(args) => simulator_cmd::run(args).await,
    }
}

/// Loads the configuration, printing every problem and returning exit code
/// 64 on failure.
pub(crate) fn load_config(path: &std::path::Path, opts: LoadOptions) -> Result<Config, ExitCode> {
    match config::load_with(path, opts) {
        Ok(c) => Ok(c),
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!(
                "error: invalid configuration ({} problem(s)); nothing was changed",
                errors.0.len()
            );
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// `info`, without the Vault client's own events: vaultrs and rustify log
/// every non-2xx answer at ERROR, including the 404s of a first rotation,
/// while the Vault store reports the failures that matter itself, naming
/// path and capability.
pub const DEFAULT_LOG_FILTER: &str = "info,vaultrs=off,rustify=off";

/// `MDR_LOG` as given, with vaultrs and rustify kept quiet unless it names
/// them: their ERROR events for expected 404s would otherwise show with
/// any level, `MDR_LOG=debug` included.
fn log_filter(given: &str) -> String {
    let mut f = given.trim().to_owned();
    for quiet in ["vaultrs", "rustify"] {
        if !f.contains(quiet) {
            if !f.is_empty() {
                f.push(',');
            }
            f.push_str(quiet);
            f.push_str("=off");
        }
    }
    f
}

/// Logs go to stderr: human-readable on a terminal, JSON otherwise (or as
/// configured). `MDR_LOG` overrides the level filter (default
/// [`DEFAULT_LOG_FILTER`]).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("MDR_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(log_filter(&f)).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG_FILTER));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Colours only for a person at a terminal: escape codes in a file or
    // the journal make the lines hard to search.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
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

#[cfg(test)]
mod log_filter_tests {
    use super::log_filter;

    #[test]
    fn vault_client_noise_stays_off_unless_named() {
        assert_eq!(log_filter("debug"), "debug,vaultrs=off,rustify=off");
        assert_eq!(
            log_filter("info,vaultrs=debug"),
            "info,vaultrs=debug,rustify=off"
        );
        assert_eq!(log_filter(""), "vaultrs=off,rustify=off");
        for f in ["debug", "info,motherduck_rotator=trace", "warn"] {
            assert!(
                tracing_subscriber::EnvFilter::try_new(log_filter(f)).is_ok(),
                "{f}"
            );
        }
    }
}
