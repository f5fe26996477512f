//! Crash safety of the real binary against remote stores: one policy with a
//! Vault KV v2 destination (which holds the lock) and an AWS Secrets
//! Manager destination. `rotate` is SIGKILLed at each crash point while it
//! holds the Vault lease; the restarted daemon must wait for the lease to
//! expire, then converge: exactly one live token, the same one current in
//! Vault and AWS, and `status` reporting the policy idle.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::config_toml;
use crate::support::daemon;
use crate::support::services::{Moto, OpenBao};
use crate::support::world::{self, Bench, RemoteBench, Scratch};

const SA: &str = "svc_crash_remote";
const VAULT_PATH: &str = "motherduck/crash";
const AWS_PATH: &str = "prod/motherduck/crash";
/// Upper bound for the restarted daemon to converge.
const CONVERGE: Duration = Duration::from_secs(60);

const VERIFY_OK: &str = r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#;
/// A hook that always fails, quickly: the rotation rolls back.
const VERIFY_FAILS: &str = r#"{ type = "command", command = ["/bin/sh", "-c", "exit 1"], interval = "10ms", deadline = "100ms", timeout = "100ms" }"#;

struct World {
    bench: Bench,
    bao: OpenBao,
    moto: Moto,
}

impl World {
    async fn new() -> World {
        let scratch = Scratch::new("crash-remote");
        let RemoteBench { bench, bao, moto } =
            Bench::with_remote_stores(scratch, &[SA], "info,motherduck_rotator=debug").await;
        World { bench, bao, moto }
    }

    /// Writes `<name>.toml`: the lock on the Vault destination (the first)
    /// with a short lease, a far schedule, no overlap, and orphans revoked
    /// at any age. The start-up sweep finds the killed holder's lease still
    /// valid and retries every `lock_retry_interval` (regression: it used to
    /// give up until the next periodic sweep, an hour by default, leaving
    /// the orphans of `after-create` and `after-restore` live).
    fn config(&self, name: &str, verify: &str) -> std::path::PathBuf {
        let path = self.bench.dir().join(format!("{name}.toml"));
        let src = config_toml::motherduck_unthrottled(&self.bench.sim.base_url())
            + &config_toml::daemon(
                "orphan_min_age = \"0s\"\nshutdown_timeout = \"10s\"\nlock_retry_interval = \"1s\"\n",
            )
            + &config_toml::vault_store(&self.bao.addr, "2s")
            + &config_toml::aws_store(&self.moto.endpoint, "lock_ttl = \"3s\"\n")
            + &config_toml::policy(
                "crash",
                SA,
                &format!(
                    r#"{{ store = "vault", path = "{VAULT_PATH}" }}, {{ store = "aws", path = "{AWS_PATH}" }}"#
                ),
                &format!("verify = [{verify}]\n{}", super::RETRY),
            );
        std::fs::write(&path, src).unwrap();
        path
    }

    /// Starts the binary; its output goes to `<log>.out` and `<log>.err`.
    fn logs(&self) -> String {
        self.bench.bin.logs()
    }

    fn live_ids(&self) -> Vec<String> {
        world::live_ids(&self.bench.sim.sim, SA)
    }

    async fn vault_token_id(&self) -> Result<String, String> {
        let record = world::vault_record(&self.bao, VAULT_PATH).await?;
        world::token_id_of(&record, "Vault")
    }

    async fn aws_token_id(&self) -> Result<String, String> {
        let record = world::aws_record(&self.moto, AWS_PATH).await?;
        world::token_id_of(&record, "AWS")
    }

    /// `status --json` of the one policy.
    async fn status(&self, config: &Path) -> Result<Value, String> {
        let v =
            daemon::status_json(&mut self.bench.bin.command(config, &["status", "--json"])).await?;
        Ok(v[0].clone())
    }

    /// Converged: exactly one live token, current in Vault and AWS, and
    /// `status` idle. Returns the token id.
    async fn converged(&self, config: &Path) -> Result<String, String> {
        let live = self.live_ids();
        let vault = self.vault_token_id().await?;
        let aws = self.aws_token_id().await?;
        if live.len() != 1 || live[0] != vault || live[0] != aws {
            return Err(format!("live {live:?}, vault {vault}, aws {aws}"));
        }
        let status = self.status(config).await?;
        if status["state"] != "idle" {
            return Err(format!("status: {status}"));
        }
        Ok(vault)
    }

    /// The state of the stores and MotherDuck, for failure messages.
    async fn snapshot(&self, config: &Path) -> String {
        format!(
            "live {:?}, vault {:?}, aws {:?}, status {:?}",
            self.live_ids(),
            self.vault_token_id().await,
            self.aws_token_id().await,
            self.status(config).await
        )
    }
}

async fn crash_and_recover(point: &str) {
    let w = World::new().await;
    let good = w.config("good", VERIFY_OK);
    let crash_cfg = super::crash_config(point, &good, || w.config("failing", VERIFY_FAILS));

    let status = w
        .bench
        .bin
        .run("first", &good, &["rotate", "crash"], None)
        .await;
    assert!(status.success(), "first rotate: {status}\n{}", w.logs());
    let first = w
        .converged(&good)
        .await
        .unwrap_or_else(|e| panic!("after the first rotate: {e}\n{}", w.logs()));

    let status = w
        .bench
        .bin
        .run("crashed", &crash_cfg, &["rotate", "crash"], Some(point))
        .await;
    super::assert_killed_at(&w.bench.bin, status, point);
    let after_kill = w.snapshot(&good).await;

    let started = tokio::time::Instant::now();
    let mut daemon = w.bench.bin.spawn("daemon", &good, &["run"], None);
    let what = format!("not converged after `{point}` (after the kill: {after_kill})");
    let id = daemon::until_converged(
        &mut daemon,
        CONVERGE,
        &what,
        || w.logs(),
        async || w.converged(&good).await,
    )
    .await;
    eprintln!(
        "{point}: converged in {:?} (first {first}, now {id}); after the kill: {after_kill}",
        started.elapsed()
    );

    let status = daemon::stop(&mut daemon, || w.logs()).await;
    assert!(status.success(), "daemon exit: {status}\n{}", w.logs());
    let after = w
        .converged(&good)
        .await
        .unwrap_or_else(|e| panic!("after shutdown: {e}\n{}", w.logs()));
    assert_eq!(after, id, "the shutdown changed nothing");
}

/// One test per crash point: name, point.
macro_rules! remote_crash_tests {
    ($($name:ident: $point:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_and_recover($point).await;
        }
    )*};
}

remote_crash_tests! {
    remote_crash_before_create_then_restart_converges: "before-create";
    remote_crash_after_create_then_restart_converges: "after-create";
    remote_crash_after_stage_then_restart_converges: "after-stage";
    remote_crash_before_promote_then_restart_converges: "before-promote";
    remote_crash_after_promote_then_restart_converges: "after-promote";
    remote_crash_after_verify_then_restart_converges: "after-verify";
    remote_crash_after_revoke_old_then_restart_converges: "after-revoke-old";
    remote_crash_after_restore_then_restart_converges: "after-restore";
}
