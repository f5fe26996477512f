//! What an operator sees: the real binary against a failing Vault.

use motherduck_rotator::simulator::RunningSimulator;

use crate::support::daemon;
use crate::support::world::Scratch;

use super::*;

/// OpenBao behind a fault proxy, a simulator on the system clock, and a
/// directory with `config.toml` for the binary: one policy whose only
/// destination is Vault, reached through the proxy.
struct Operator {
    bao: OpenBao,
    proxy: FaultProxy,
    sim: RunningSimulator,
    dir: Scratch,
}

impl Operator {
    /// `daemon` and `lines` are the configuration's `[daemon]` section and
    /// what follows the policy's destinations; the lease lasts `lease_ttl`.
    async fn start(prefix: &str, daemon: &str, lease_ttl: &str, lines: &str) -> Operator {
        let dir = Scratch::new(prefix);
        let bao = OpenBao::start().await;
        let proxy = FaultProxy::start(&bao.addr).await;
        let sim = world::simulator(dir.path(), &[SA]).await;
        crate::support::write_secret(dir.path().join("vault.token"), &bao.root_token);
        let src = config_toml::motherduck(&sim.base_url())
            + daemon
            + &config_toml::vault_store(&proxy.url, lease_ttl)
            + &config_toml::policy(
                POLICY,
                SA,
                &format!(r#"{{ store = "vault", path = "{VAULT_PATH}" }}"#),
                &(config_toml::verify_motherduck("10s") + lines),
            );
        std::fs::write(dir.path().join("config.toml"), src).unwrap();
        Operator {
            bao,
            proxy,
            sim,
            dir,
        }
    }

    /// `rotate` of the policy, its output captured, with `MDR_LOG=log` or
    /// the default log filter.
    async fn rotate(&self, log: Option<&str>) -> std::process::Output {
        let (dir, config) = (self.dir.path(), self.dir.path().join("config.toml"));
        let mut cmd = match log {
            Some(log) => daemon::command(&config, dir, log),
            None => daemon::command_default_log(&config, dir),
        };
        cmd.args(["rotate", POLICY]).env("NO_COLOR", "1");
        cmd.output().await.unwrap()
    }

    /// `GET` of a KV v2 API path under `secret/`, straight from OpenBao.
    async fn vault_get(&self, api_path: &str) -> Value {
        reqwest::Client::new()
            .get(format!("{}/v1/secret/{api_path}", self.bao.addr))
            .header("X-Vault-Token", &self.bao.root_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The real binary, `rotate` against a Vault destination whose staging
/// write answers 503 on both attempts: it exits 1, its output and logs name
/// the store and the step and hold no secret, the new token is revoked,
/// and the next `rotate` succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_a_vault_503_with_store_and_step_and_no_secret() {
    let op = Operator::start(
        "faults",
        "\n[daemon]\norphan_min_age = \"0s\"\n",
        "2s",
        r#"retry = { max_attempts = 2, initial_backoff = "1ms", max_backoff = "2ms" }
"#,
    )
    .await;
    let (sim, proxy) = (&op.sim, &op.proxy);
    // `rotate`, repeated while the previous run's lease is still held (it
    // is released from a task the exiting process may not finish).
    let rotate = async || {
        let started = tokio::time::Instant::now();
        loop {
            let out = op.rotate(Some("info,motherduck_rotator=debug")).await;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !text.contains("another replica holds the lock") || started.elapsed() > LOCK_PATIENCE
            {
                return (out.status, text);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let live = || -> Vec<String> { sim.sim.live_tokens(SA).into_iter().map(|t| t.id).collect() };
    let vault_token_id = async || -> String {
        let v = op.vault_get(&format!("data/{VAULT_PATH}")).await;
        v["data"]["data"]["token_id"].as_str().unwrap().to_owned()
    };
    let no_secret = |what: &str, text: &str| {
        assert!(
            !text.contains("eyJ"),
            "{what}: JWT-shaped text in the output"
        );
        assert!(
            !text.contains(sim.admin_token.expose_secret()),
            "{what}: the admin token leaked"
        );
        assert!(
            !text.contains(&op.bao.root_token),
            "{what}: the Vault token leaked"
        );
    };

    let (status, text) = rotate().await;
    assert!(status.success(), "first rotate: {text}");
    no_secret("first rotate", &text);
    let old = vault_token_id().await;
    assert_eq!(live(), vec![old.clone()]);

    let rule = proxy.arm(vault_stage_write(), Answer::VaultUnavailable, 2);
    let (status, text) = rotate().await;
    assert_eq!(status.code(), Some(1), "the failed rotate exits 1: {text}");
    assert_eq!(rule.intercepted(), 2, "both attempts were refused");
    no_secret("failed rotate", &text);
    // The summary line, from the journal the rollback recorded.
    let summary = text
        .lines()
        .find(|l| l.starts_with("faults: rolled back, the old token is current:"))
        .unwrap_or_else(|| panic!("no rollback summary in: {text}"));
    assert_mentions(
        summary,
        &[
            "stage",
            VAULT_LABEL,
            "secret/data/motherduck/faults.pending",
            "HTTP 503",
        ],
    );
    // The logs: each refused attempt, then the rollback, with the step.
    let retried = text
        .lines()
        .find(|l| l.contains("rotation step failed; retrying"))
        .unwrap_or_else(|| panic!("no retry logged in: {text}"));
    assert_mentions(retried, &["step=\"stage\"", VAULT_LABEL, "HTTP 503"]);
    let failed = text
        .lines()
        .find(|l| l.contains("rotation failed; rolling back"))
        .unwrap_or_else(|| panic!("no failure logged in: {text}"));
    assert!(failed.contains("step=\"stage\""), "{failed}");
    assert!(failed.contains(VAULT_LABEL), "{failed}");

    let issued: Vec<_> = sim
        .sim
        .issued_tokens()
        .into_iter()
        .filter(|t| t.username == SA)
        .collect();
    assert_eq!(issued.len(), 2);
    assert!(issued[1].revoked_at.is_some(), "the new token is revoked");
    assert_eq!(live(), vec![old.clone()], "the old token stays live");
    assert_eq!(vault_token_id().await, old);

    // The fault has cleared: the next run rotates.
    let (status, text) = rotate().await;
    assert!(status.success(), "third rotate: {text}");
    no_secret("third rotate", &text);
    let now = vault_token_id().await;
    assert_ne!(now, old);
    assert_eq!(live(), vec![now], "exactly the stored token is live");
}

/// A one-shot `rotate` lets its lock release finish before it exits, even
/// when the first attempt is answered with a 503: the lock is free as soon
/// as the process has ended, not only when the lease expires (10 minutes
/// here), so replicas are not held up by a manual rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_exits_only_after_its_lock_is_released() {
    let op = Operator::start("release", "", "10m", "").await;
    let proxy = &op.proxy;
    let release = proxy.arm(
        Match::VaultContains {
            method: "POST",
            path: format!("/v1/secret/delete/{VAULT_PATH}.lock"),
        },
        Answer::VaultUnavailable,
        1,
    );
    let out = op.rotate(None).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(release.intercepted(), 1, "the first release attempt failed");
    // Every version of the lock is deleted: nobody holds it.
    let meta = op.vault_get(&format!("metadata/{VAULT_PATH}.lock")).await;
    let versions = meta["data"]["versions"].as_object().unwrap();
    assert!(!versions.is_empty());
    for (v, info) in versions {
        assert!(
            info["deletion_time"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
            "lock version {v} is still live: {meta}"
        );
    }
}
