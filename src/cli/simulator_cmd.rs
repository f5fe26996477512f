//! `motherduck-rotator simulator`: the simulated API as a standalone server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::motherduck::Endpoint;
use crate::secret::{ExposeSecret, SecretString, read_secret_file};
use crate::simulator::{Simulator, SimulatorOptions};

#[derive(Debug, Args)]
pub struct SimulatorArgs {
    /// Address to listen on, e.g. 127.0.0.1:8787.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// File holding the admin token. Created with a new token (mode 0600)
    /// when it does not exist.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: PathBuf,

    /// Latency added to every API request, e.g. `50ms`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub latency: Duration,

    /// Uniform random latency added on top of --latency, e.g. `20ms`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub latency_jitter: Duration,

    /// Probability that requests to an endpoint answer 500, as
    /// ENDPOINT=RATE (e.g. create_token=0.2). Repeatable. Endpoints:
    /// create_service_account, delete_service_account, list_tokens,
    /// create_token, revoke_token, get_duckling_config, set_duckling_config,
    /// active_accounts, embed_session.
    #[arg(long, value_name = "ENDPOINT=RATE", value_parser = parse_error_rate)]
    pub error_rate: Vec<(Endpoint, f64)>,

    /// Seed for latency jitter and random errors.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Answer 403 to embed-session requests, as outside the Business plan.
    #[arg(long)]
    pub embed_forbidden: bool,
}

fn parse_error_rate(s: &str) -> Result<(Endpoint, f64), String> {
    let (name, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not ENDPOINT=RATE"))?;
    let endpoint =
        Endpoint::parse(name.trim()).ok_or_else(|| format!("unknown endpoint `{name}`"))?;
    let rate: f64 = rate
        .trim()
        .parse()
        .map_err(|_| format!("rate `{rate}` is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("rate `{rate}` is not between 0 and 1"));
    }
    Ok((endpoint, rate))
}

/// Reads the admin token from `path`, or generates one and writes it there
/// with mode 0600 when the file does not exist.
fn admin_token(sim: &Simulator, path: &Path) -> anyhow::Result<SecretString> {
    if path.exists() {
        let token = read_secret_file(path)?;
        sim.register_admin_token(&token);
        return Ok(token);
    }
    let token = sim.issue_admin_token();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("failed to create admin token file `{}`", path.display()))?;
    f.write_all(token.expose_secret().as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("failed to write admin token file `{}`", path.display()))?;
    Ok(token)
}

pub async fn run(args: SimulatorArgs) -> anyhow::Result<ExitCode> {
    let sim = Simulator::new(SimulatorOptions {
        frozen_at: None,
        seed: args.seed,
    });
    admin_token(&sim, &args.admin_token_file)?;
    sim.set_latency(args.latency, args.latency_jitter);
    for (endpoint, rate) in &args.error_rate {
        sim.set_error_rate(*endpoint, *rate);
    }
    sim.set_embed_forbidden(args.embed_forbidden);
    if !args.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %args.listen,
            "the simulator is a test double; it is listening beyond loopback"
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on `{}`", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        url = %format!("http://{addr}"),
        admin_token_file = %args.admin_token_file.display(),
        "MotherDuck simulator listening"
    );
    if let Err(e) = sim.serve(listener, super::shutdown_signal()).await {
        bail!("simulator server failed: {e}");
    }
    tracing::info!("simulator stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rate_arguments() {
        assert_eq!(
            parse_error_rate("create_token=0.25").unwrap(),
            (Endpoint::CreateToken, 0.25)
        );
        assert!(
            parse_error_rate("nope=0.1")
                .unwrap_err()
                .contains("unknown endpoint")
        );
        assert!(
            parse_error_rate("create_token=2")
                .unwrap_err()
                .contains("between 0 and 1")
        );
        assert!(
            parse_error_rate("create_token")
                .unwrap_err()
                .contains("ENDPOINT=RATE")
        );
    }
}
