//! The real binary rotating one policy into a Vault (OpenBao) destination
//! and an AWS Secrets Manager (moto) destination at once: both end up with
//! the same current token, `status` reports them, and two concurrent
//! `rotate` processes, or two `run` daemons, rotate once, coordinated by
//! the Vault lease.

use std::process::Stdio;
use std::time::Duration;

use motherduck_rotator::motherduck::Endpoint;
use motherduck_rotator::secret::ExposeSecret;
use motherduck_rotator::simulator::{Simulator, SimulatorOptions};
use serde_json::{Value, json};

use crate::smoke_services::secrets_manager;
use crate::support::services::{Moto, OpenBao};

struct Setup {
    dir: std::path::PathBuf,
    bao: OpenBao,
    moto: Moto,
    sim: motherduck_rotator::simulator::RunningSimulator,
}

async fn setup(verify: &str) -> Setup {
    let dir = std::env::temp_dir().join(format!("mdr-mixed-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let bao = OpenBao::start().await;
    let moto = Moto::start().await;
    let sim = Simulator::spawn(SimulatorOptions::default()).await.unwrap();
    sim.sim.add_service_account("svc_mixed");
    crate::support::write_secret(dir.join("admin.token"), sim.admin_token.expose_secret());
    crate::support::write_secret(dir.join("vault.token"), &bao.root_token);
    std::fs::write(
        dir.join("config.toml"),
        format!(
            r#"
[motherduck]
api_url = "{api}"
admin_token = {{ file = "admin.token" }}

[daemon]
orphan_min_age = "0s"

[stores.vault]
type = "vault"
address = "{vault}"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}
lease_ttl = "1m"

[stores.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "{aws}"
create_if_missing = true

[[policy]]
name = "mixed"
service_account = "svc_mixed"
schedule = {{ interval = "1d" }}
overlap = "0s"
verify = [{verify}]
destinations = [{{ store = "vault", path = "motherduck/mixed" }}, {{ store = "aws", path = "prod/motherduck/mixed" }}]
"#,
            api = sim.base_url(),
            vault = bao.addr,
            aws = moto.endpoint,
        ),
    )
    .unwrap();
    Setup {
        dir,
        bao,
        moto,
        sim,
    }
}

fn command(s: &Setup, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"));
    c.arg("--config")
        .arg(s.dir.join("config.toml"))
        .args(args)
        .current_dir(&s.dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn vault_token_id(s: &Setup) -> String {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/v1/secret/data/motherduck/mixed", s.bao.addr))
        .header("X-Vault-Token", &s.bao.root_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]["data"]["token_id"].as_str().unwrap().to_owned()
}

async fn aws_record(s: &Setup) -> Value {
    let v = secrets_manager(
        &s.moto,
        "GetSecretValue",
        json!({"SecretId": "prod/motherduck/mixed", "VersionStage": "AWSCURRENT"}),
    )
    .await;
    serde_json::from_str(v["SecretString"].as_str().unwrap()).unwrap()
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
    let live: Vec<String> = s
        .sim
        .sim
        .live_tokens("svc_mixed")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(
        live.len(),
        1,
        "the first token was revoked after the second rotation"
    );
    assert_eq!(vault_token_id(&s).await, live[0]);
    let aws = aws_record(&s).await;
    assert_eq!(aws["token_id"], live[0]);
    assert!(s.sim.sim.is_issued_secret(aws["token"].as_str().unwrap()));

    // The README's consumer command, as written, against OpenBao.
    let cli = tokio::process::Command::new(crate::support::services::tool_path("bao"))
        .args(["kv", "get", "-field=token", "secret/motherduck/mixed"])
        .env("BAO_ADDR", &s.bao.addr)
        .env("BAO_TOKEN", &s.bao.root_token)
        .env("HOME", &s.dir)
        .output()
        .await
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let read = String::from_utf8(cli.stdout).unwrap();
    // Compared without printing: the values are token secrets.
    assert!(
        read.trim() == aws["token"].as_str().unwrap(),
        "vault kv get does not return the token stored in AWS"
    );

    let out = command(&s, &["status", "--json"]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &status[0];
    assert_eq!(p["state"], "idle");
    assert_eq!(p["token_id"], live[0]);
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
        assert_eq!(d["current_token_id"], live[0], "{d}");
    }
    std::fs::remove_dir_all(&s.dir).unwrap();
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
    let live: Vec<String> = s
        .sim
        .sim
        .live_tokens("svc_mixed")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(live.len(), 1, "no orphan");
    assert_eq!(vault_token_id(&s).await, live[0]);
    assert_eq!(aws_record(&s).await["token_id"], live[0]);
    std::fs::remove_dir_all(&s.dir).unwrap();
    std::fs::remove_dir_all(&gate_dir).unwrap();
}

/// Two daemons (`run`, not one-shot commands) started together on one
/// policy that writes to a shared Vault path and a shared AWS secret, with
/// no token stored yet: both find the policy due at once; exactly one
/// rotation happens, no token is orphaned, and both daemons stop cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_shared_vault_and_aws_rotate_once() {
    let s = setup(r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#).await;
    let config = s.dir.join("config.toml");
    let src = std::fs::read_to_string(&config).unwrap().replace(
        "[daemon]\n",
        "[daemon]\nlisten = \"127.0.0.1:0\"\nlock_retry_interval = \"100ms\"\n",
    );
    std::fs::write(&config, src).unwrap();
    let daemon = |name: &str| {
        let mut c = command(&s, &["run"]);
        c.env("MDR_LOG", "info,motherduck_rotator=debug")
            .stdout(std::fs::File::create(s.dir.join(format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(s.dir.join(format!("{name}.err"))).unwrap());
        c.spawn().unwrap()
    };
    let logs = || {
        ["a", "b"]
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(s.dir.join(format!("{n}.err")));
                format!("--- daemon {n}\n{}", text.unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut a = daemon("a");
    let mut b = daemon("b");
    // Settled once each daemon has ended a pass waiting for the next due
    // time (the loser is told "busy" until the winner's rotation is over).
    let waited = |n: &str| {
        std::fs::read_to_string(s.dir.join(format!("{n}.err")))
            .unwrap_or_default()
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
    let live: Vec<String> = s
        .sim
        .sim
        .live_tokens("svc_mixed")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(live.len(), 1, "no orphan\n{}", logs());
    assert_eq!(vault_token_id(&s).await, live[0]);
    assert_eq!(aws_record(&s).await["token_id"], live[0]);
    for (name, child) in [("a", &mut a), ("b", &mut b)] {
        let pid = child.id().unwrap() as i32;
        // SAFETY: kill(2) on a child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let st = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("daemon {name} did not stop\n{}", logs()))
            .unwrap();
        assert!(st.success(), "daemon {name}: {st}\n{}", logs());
    }
    let live = s.sim.sim.live_tokens("svc_mixed");
    assert_eq!(live.len(), 1, "no orphan\n{}", logs());
    std::fs::remove_dir_all(&s.dir).unwrap();
}
