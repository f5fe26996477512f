//! `motherduck-rotator demo`: the whole product in one command, against an
//! embedded simulator, with nothing to install.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::{self, LoadOptions};
use crate::secret::ExposeSecret;
use crate::simulator::{Simulator, SimulatorOptions};

/// The demo configuration, also shipped as `config/demo.toml`.
const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
/// The lines of [`DEMO_CONFIG`] the demo fills in.
const DEMO_API_URL: &str = "api_url = \"http://127.0.0.1:8787\"";
const DEMO_LISTEN: &str = "listen = \"127.0.0.1:9464\"";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working folder for the demo's configuration, admin token and file
    /// store (created owner-only).
    #[arg(long, default_value = "motherduck-rotator-demo")]
    pub dir: PathBuf,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("failed to write `{}`", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .with_context(|| format!("failed to create the demo folder `{}`", dir.display()))?;

    let running = Simulator::spawn(SimulatorOptions::default())
        .await
        .context("failed to start the embedded MotherDuck simulator")?;
    write_private(
        &dir.join("admin.token"),
        format!("{}\n", running.admin_token.expose_secret()).as_bytes(),
    )?;
    let config_path = dir.join("demo.toml");
    // The file names the simulator and the listen address this run uses,
    // so `status`, `rotate` and `validate --online` with it reach them.
    let text = DEMO_CONFIG
        .replacen(
            DEMO_API_URL,
            &format!("api_url = \"{}\"", running.base_url()),
            1,
        )
        .replacen(DEMO_LISTEN, &format!("listen = \"{}\"", args.listen), 1);
    write_private(&config_path, text.as_bytes())?;
    let mut config = match config::load_with(&config_path, LoadOptions::default()) {
        Ok(c) => c,
        Err(e) => anyhow::bail!("the demo configuration is invalid:\n{e}"),
    };
    config.motherduck.api_url = running.base_url();
    config.daemon.listen = args.listen;
    for p in &config.policies {
        running.sim.add_service_account(&p.service_account);
    }

    println!("motherduck-rotator demo");
    println!("  simulated MotherDuck API: {}", running.base_url());
    println!(
        "  file store:               {}",
        dir.join("store").display()
    );
    println!("  metrics:                  http://{}/metrics", args.listen);
    println!(
        "  policies:                 {}",
        config
            .policies
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  try: motherduck-rotator --config {} status",
        config_path.display()
    );
    println!("  Ctrl-C stops the demo.\n");

    let shutdown = CancellationToken::new();
    {
        let s = shutdown.clone();
        tokio::spawn(async move {
            super::shutdown_signal().await;
            s.cancel();
            super::shutdown_signal().await;
            std::process::exit(130);
        });
    }
    crate::daemon::run(config, crate::daemon::RunOptions::default(), shutdown).await?;
    let live: usize = ["svc_orders", "svc_reports", "svc_dashboard"]
        .iter()
        .map(|sa| running.sim.live_tokens(sa).len())
        .sum();
    println!("demo stopped; {live} live token(s) in the simulator");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_has_the_lines_the_demo_fills_in() {
        assert_eq!(DEMO_CONFIG.matches(DEMO_API_URL).count(), 1);
        assert_eq!(DEMO_CONFIG.matches(DEMO_LISTEN).count(), 1);
    }
}
