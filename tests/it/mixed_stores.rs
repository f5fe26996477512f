//! The real binary rotating one policy into a Vault (OpenBao) destination
//! and an AWS Secrets Manager (moto) destination at once: both end up with
//! the same current token, `status` reports them, and two concurrent
//! `rotate` processes, or two `run` daemons, rotate once, coordinated by
//! the Vault lease.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use motherduck_rotator::motherduck::Endpoint;
use motherduck_rotator::simulator::RunningSimulator;
use serde_json::Value;

use crate::support::config_toml;
use crate::support::daemon::{self, Rotator};
use crate::support::services::{Moto, OpenBao};
use crate::support::world::{self, Scratch};

const SA: &str = "svc_mixed";
const VAULT_PATH: &str = "motherduck/mixed";
const AWS_PATH: &str = "prod/motherduck/mixed";

struct Setup {
    bao: OpenBao,
    moto: Moto,
    sim: RunningSimulator,
    scratch: Scratch,
}

async fn setup(verify: &str) -> Setup {
    let scratch = Scratch::new("mixed");
    let dir = scratch.path();
    let (bao, moto) = world::remote_stores(dir).await;
    let sim = world::simulator(dir, &[SA]).await;
    let src = config_toml::motherduck(&sim.base_url())
        + "\n[daemon]\norphan_min_age = \"0s\"\n"
        + &config_toml::vault_store(&bao.addr, "1m")
        + &config_toml::aws_store(&moto.endpoint, "")
        + &config_toml::policy(
            "mixed",
            SA,
            &format!(
                r#"{{ store = "vault", path = "{VAULT_PATH}" }}, {{ store = "aws", path = "{AWS_PATH}" }}"#
            ),
            &format!("verify = [{verify}]\n"),
        );
    std::fs::write(dir.join("config.toml"), src).unwrap();
    Setup {
        bao,
        moto,
        sim,
        scratch,
    }
}

impl Setup {
    fn dir(&self) -> &Path {
        self.scratch.path()
    }

    fn config(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// Exactly one token live and stored in Vault and AWS; its id.
    async fn assert_one_token_everywhere(&self, why: &str) -> String {
        let live = world::live_ids(&self.sim.sim, SA);
        assert_eq!(live.len(), 1, "{why}");
        assert_eq!(vault_token_id(self).await, live[0]);
        assert_eq!(aws_record(self).await["token_id"], live[0]);
        live[0].clone()
    }
}

/// The binary on the shared configuration, its output captured.
fn command(s: &Setup, args: &[&str]) -> tokio::process::Command {
    let mut c = daemon::command(&s.config(), s.dir(), "info");
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

async fn vault_token_id(s: &Setup) -> String {
    let record = world::vault_record(&s.bao, VAULT_PATH).await.unwrap();
    record["token_id"].as_str().unwrap().to_owned()
}

async fn aws_record(s: &Setup) -> Value {
    world::aws_record(&s.moto, AWS_PATH).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_policy_rotates_into_vault_and_aws_and_status_reports_both() {
    let s = setup(r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#).await;
    for round in 0..2 {
        let out = command(&s, &["rotate", "mixed"]).output().await.unwrap();
        assert!(
            out.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let live = s
        .assert_one_token_everywhere("the first token was revoked after the second rotation")
        .await;
    let aws = aws_record(&s).await;
    assert!(s.sim.sim.is_issued_secret(aws["token"].as_str().unwrap()));

    // The README's consumer command, as written, against OpenBao.
    let cli = tokio::process::Command::new(crate::support::services::tool_path("bao"))
        .args(["kv", "get", "-field=token", "secret/motherduck/mixed"])
        .env("BAO_ADDR", &s.bao.addr)
        .env("BAO_TOKEN", &s.bao.root_token)
        .env("HOME", s.dir())
        .output()
        .await
        .unwrap();
    crate::support::assert_success(&cli, "");
    let read = String::from_utf8(cli.stdout).unwrap();
    // Compared without printing: the values are token secrets.
    assert!(
        read.trim() == aws["token"].as_str().unwrap(),
        "vault kv get does not return the token stored in AWS"
    );

    let out = command(&s, &["status", "--json"]).output().await.unwrap();
    crate::support::assert_success(&out, "");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &status["policies"][0];
    assert_eq!(p["state"], "idle");
    assert_eq!(p["token_id"], live);
    let dests = p["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 2);
    assert!(
        dests[0]["destination"]
            .as_str()
            .unwrap()
            .starts_with("vault:")
    );
    assert!(
        dests[1]["destination"]
            .as_str()
            .unwrap()
            .starts_with("aws:")
    );
    for d in dests {
        assert_eq!(d["current_token_id"], live, "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotate_processes_on_shared_vault_and_aws_rotate_once() {
    let gate_dir = std::env::temp_dir().join(format!("mdr-gate-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&gate_dir).unwrap();
    let gate = gate_dir.join("go");
    let s = setup(&format!(
        r#"{{ type = "command", command = ["sh", "-c", "while [ ! -f '{}' ]; do sleep 0.01; done"], timeout = "60s", interval = "10ms", deadline = "60s" }}"#,
        gate.display()
    ))
    .await;
    let a = command(&s, &["rotate", "mixed"]).spawn().unwrap();
    // A is past create and holds the lease while it waits on the gate.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while s.sim.sim.request_count(Endpoint::CreateToken) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never created a token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = command(&s, &["rotate", "mixed"]).output().await.unwrap();
    let b_out = String::from_utf8_lossy(&b.stdout);
    assert_eq!(b.status.code(), Some(1), "{b_out}");
    assert!(b_out.contains("another replica holds the lock"), "{b_out}");
    std::fs::write(&gate, "").unwrap();
    let a = tokio::time::timeout(Duration::from_secs(60), a.wait_with_output())
        .await
        .expect("A finishes once the gate opens")
        .unwrap();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stdout));
    assert_eq!(
        s.sim.sim.request_count(Endpoint::CreateToken),
        1,
        "exactly one rotation"
    );
    s.assert_one_token_everywhere("no orphan").await;
    std::fs::remove_dir_all(&gate_dir).unwrap();
}

/// Two daemons (`run`, not one-shot commands) started together on one
/// policy that writes to a shared Vault path and a shared AWS secret, with
/// no token stored yet: both find the policy due at once; exactly one
/// rotation happens, no token is orphaned, and both daemons stop cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_shared_vault_and_aws_rotate_once() {
    let s = setup(r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#).await;
    let config = s.config();
    let src = std::fs::read_to_string(&config).unwrap().replace(
        "[daemon]\n",
        "[daemon]\nlisten = \"127.0.0.1:0\"\nlock_retry_interval = \"100ms\"\n",
    );
    std::fs::write(&config, src).unwrap();
    let bin = Rotator::new(s.dir(), s.dir(), "info,motherduck_rotator=debug");
    let logs = || bin.logs();
    let mut a = bin.spawn("a", &config, &["run"], None);
    let mut b = bin.spawn("b", &config, &["run"], None);
    // Settled once each daemon has ended a pass waiting for the next due
    // time (the loser is told "busy" until the winner's rotation is over).
    let waited = |n: &str| {
        bin.log(&format!("{n}.err"))
            .contains(r#""message":"waiting""#)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(waited("a") && waited("b")) {
        for (name, child) in [("a", &mut a), ("b", &mut b)] {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("daemon {name} exited: {st}\n{}", logs());
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemons did not settle\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.sim.sim.request_count(Endpoint::CreateToken),
        1,
        "exactly one rotation\n{}",
        logs()
    );
    s.assert_one_token_everywhere(&format!("no orphan\n{}", logs()))
        .await;
    for (name, child) in [("a", &mut a), ("b", &mut b)] {
        let st = daemon::stop(child, logs).await;
        assert!(st.success(), "daemon {name}: {st}\n{}", logs());
    }
    let live = s.sim.sim.live_tokens(SA);
    assert_eq!(live.len(), 1, "no orphan\n{}", logs());
}
