//! Crash safety of the real binary against remote stores: one policy with a
//! Vault KV v2 destination (which holds the lock) and an AWS Secrets
//! Manager destination. `rotate` is SIGKILLed at each crash point while it
//! holds the Vault lease; the restarted daemon must wait for the lease to
//! expire, then converge: exactly one live token, the same one current in
//! Vault and AWS, and `status` reporting the policy idle.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use motherduck_rotator::secret::ExposeSecret;
use motherduck_rotator::simulator::{RunningSimulator, Simulator, SimulatorOptions};
use serde_json::{Value, json};

use crate::smoke_services::secrets_manager;
use crate::support::child_logs::ChildLogs;
use crate::support::services::{Moto, OpenBao};

const SA: &str = "svc_crash_remote";
const BIN: &str = env!("CARGO_BIN_EXE_motherduck-rotator");
const VAULT_PATH: &str = "motherduck/crash";
const AWS_PATH: &str = "prod/motherduck/crash";
/// Upper bound for a child process to finish.
const PATIENCE: Duration = Duration::from_secs(30);
/// Upper bound for the restarted daemon to converge.
const CONVERGE: Duration = Duration::from_secs(60);

const VERIFY_OK: &str = r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#;
/// A hook that always fails, quickly: the rotation rolls back.
const VERIFY_FAILS: &str = r#"{ type = "command", command = ["/bin/sh", "-c", "exit 1"], interval = "10ms", deadline = "100ms", timeout = "100ms" }"#;

struct World {
    dir: PathBuf,
    bao: OpenBao,
    moto: Moto,
    sim: RunningSimulator,
    out: ChildLogs,
}

impl World {
    async fn new() -> World {
        let dir = std::env::temp_dir().join(format!(
            "mdr-crash-remote-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let bao = OpenBao::start().await;
        let moto = Moto::start().await;
        let sim = Simulator::spawn(SimulatorOptions::default())
            .await
            .expect("simulator starts");
        sim.sim.add_service_account(SA);
        crate::support::write_secret(dir.join("admin.token"), sim.admin_token.expose_secret());
        crate::support::write_secret(dir.join("vault.token"), &bao.root_token);
        World {
            out: ChildLogs::new(&dir),
            dir,
            bao,
            moto,
            sim,
        }
    }

    /// Writes `<name>.toml`: the lock on the Vault destination (the first)
    /// with a short lease, a far schedule, no overlap, and orphans revoked
    /// at any age. The start-up sweep finds the killed holder's lease still
    /// valid and retries every `lock_retry_interval` (regression: it used to
    /// give up until the next periodic sweep, an hour by default, leaving
    /// the orphans of `after-create` and `after-restore` live).
    fn config(&self, name: &str, verify: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.toml"));
        let src = format!(
            r#"
[motherduck]
api_url = "{api}"
admin_token = {{ file = "admin.token" }}
request_timeout = "5s"
rate_limit_per_second = 1000

[daemon]
listen = "127.0.0.1:0"
log_format = "json"
orphan_min_age = "0s"
shutdown_timeout = "10s"
lock_retry_interval = "1s"

[stores.vault]
type = "vault"
address = "{vault}"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}
lease_ttl = "2s"

[stores.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "{aws}"
create_if_missing = true
lock_ttl = "3s"

[[policy]]
name = "crash"
service_account = "{SA}"
schedule = {{ interval = "1d" }}
overlap = "0s"
verify = [{verify}]
destinations = [{{ store = "vault", path = "{VAULT_PATH}" }}, {{ store = "aws", path = "{AWS_PATH}" }}]
retry = {{ max_attempts = 2, initial_backoff = "10ms", max_backoff = "20ms" }}
"#,
            api = self.sim.base_url(),
            vault = self.bao.addr,
            aws = self.moto.endpoint,
        );
        std::fs::write(&path, src).unwrap();
        path
    }

    fn command(&self, config: &PathBuf, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(BIN);
        c.arg("--config")
            .arg(config)
            .args(args)
            .current_dir(&self.dir)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_PROFILE")
            .env_remove("MDR_CRASH_AT")
            .env_remove("MOTHERDUCK_ROTATOR_CONFIG")
            .env("MDR_LOG", "info,motherduck_rotator=debug")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Starts the binary; its output goes to `<log>.out` and `<log>.err`.
    fn spawn(
        &self,
        log: &str,
        config: &PathBuf,
        args: &[&str],
        crash_at: Option<&str>,
    ) -> tokio::process::Child {
        let mut cmd = self.command(config, args);
        self.out.attach(&mut cmd, log);
        if let Some(p) = crash_at {
            cmd.env("MDR_CRASH_AT", p);
        }
        cmd.spawn().expect("the binary starts")
    }

    async fn run(
        &self,
        log: &str,
        config: &PathBuf,
        args: &[&str],
        crash_at: Option<&str>,
    ) -> ExitStatus {
        let mut child = self.spawn(log, config, args, crash_at);
        self.out.wait(log, &mut child, PATIENCE).await
    }

    fn log(&self, name: &str) -> String {
        self.out.read(name)
    }

    fn logs(&self) -> String {
        self.out.all()
    }

    fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .sim
            .sim
            .live_tokens(SA)
            .into_iter()
            .map(|t| t.id)
            .collect();
        ids.sort();
        ids
    }

    async fn vault_token_id(&self) -> Result<String, String> {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/v1/secret/data/{VAULT_PATH}", self.bao.addr))
            .header("X-Vault-Token", &self.bao.root_token)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        v["data"]["data"]["token_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no token_id in Vault: {v}"))
    }

    async fn aws_token_id(&self) -> Result<String, String> {
        let v = secrets_manager(
            &self.moto,
            "GetSecretValue",
            json!({"SecretId": AWS_PATH, "VersionStage": "AWSCURRENT"}),
        )
        .await;
        let s = v["SecretString"]
            .as_str()
            .ok_or_else(|| format!("no SecretString in AWS: {v}"))?;
        let rec: Value = serde_json::from_str(s).map_err(|e| e.to_string())?;
        rec["token_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no token_id in AWS: {rec}"))
    }

    /// `status --json` of the one policy.
    async fn status(&self, config: &PathBuf) -> Result<Value, String> {
        let out = self
            .command(config, &["status", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "status: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok(v[0].clone())
    }

    /// Converged: exactly one live token, current in Vault and AWS, and
    /// `status` idle. Returns the token id.
    async fn converged(&self, config: &PathBuf) -> Result<String, String> {
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
    async fn snapshot(&self, config: &PathBuf) -> String {
        format!(
            "live {:?}, vault {:?}, aws {:?}, status {:?}",
            self.live_ids(),
            self.vault_token_id().await,
            self.aws_token_id().await,
            self.status(config).await
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("still running") as i32;
    // SAFETY: kill(2) on a child we started; no memory is involved.
    let r = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(r, 0, "kill failed");
}

async fn crash_and_recover(point: &str) {
    let w = World::new().await;
    let good = w.config("good", VERIFY_OK);
    let crash_cfg = if point == "after-restore" {
        w.config("failing", VERIFY_FAILS)
    } else {
        good.clone()
    };

    let status = w.run("first", &good, &["rotate", "crash"], None).await;
    assert!(status.success(), "first rotate: {status}\n{}", w.logs());
    let first = w
        .converged(&good)
        .await
        .unwrap_or_else(|e| panic!("after the first rotate: {e}\n{}", w.logs()));

    let status = w
        .run("crashed", &crash_cfg, &["rotate", "crash"], Some(point))
        .await;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed at `{point}`: {status}\n{}",
        w.logs()
    );
    assert!(
        w.log("crashed.err")
            .contains(&format!("MDR_CRASH_AT={point}: killing the process")),
        "{}",
        w.logs()
    );
    let after_kill = w.snapshot(&good).await;

    let started = tokio::time::Instant::now();
    let mut daemon = w.spawn("daemon", &good, &["run"], None);
    let deadline = started + CONVERGE;
    let id = loop {
        let r = w.converged(&good).await;
        match r {
            Ok(id) => break id,
            Err(e) if tokio::time::Instant::now() > deadline => panic!(
                "not converged after `{point}`: {e}\nafter the kill: {after_kill}\n{}",
                w.logs()
            ),
            Err(_) => {}
        }
        if let Ok(Some(s)) = daemon.try_wait() {
            panic!("the daemon exited: {s}\n{}", w.logs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "{point}: converged in {:?} (first {first}, now {id}); after the kill: {after_kill}",
        started.elapsed()
    );

    sigterm(&daemon);
    let status = tokio::time::timeout(PATIENCE, daemon.wait())
        .await
        .unwrap_or_else(|_| panic!("the daemon did not stop on SIGTERM\n{}", w.logs()))
        .unwrap();
    assert!(status.success(), "daemon exit: {status}\n{}", w.logs());
    let after = w
        .converged(&good)
        .await
        .unwrap_or_else(|e| panic!("after shutdown: {e}\n{}", w.logs()));
    assert_eq!(after, id, "the shutdown changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_crash_before_create_then_restart_converges() {
    crash_and_recover("before-create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_crash_after_create_then_restart_converges() {
    crash_and_recover("after-create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_crash_after_stage_then_restart_converges() {
    crash_and_recover("after-stage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_crash_before_promote_then_restart_converges() {
    crash_and_recover("before-promote").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_crash_after_promote_then_restart_converges() {
    crash_and_recover("after-promote").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_crash_after_verify_then_restart_converges() {
    crash_and_recover("after-verify").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_crash_after_revoke_old_then_restart_converges() {
    crash_and_recover("after-revoke-old").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_crash_after_restore_then_restart_converges() {
    crash_and_recover("after-restore").await;
}
