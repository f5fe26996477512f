//! The pieces most tests of the binary start from: a scratch directory, a
//! simulator whose admin token is written there as `admin.token`, and
//! OpenBao and moto with the root token as `vault.token`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use motherduck_rotator::secret::ExposeSecret;
use motherduck_rotator::simulator::{RunningSimulator, Simulator, SimulatorOptions};

use crate::support::daemon::Rotator;
use crate::support::services::{Moto, OpenBao};

/// A fresh directory `mdr-<prefix>-<uuid>` under the system's temporary
/// directory, removed when dropped.
pub struct Scratch {
    path: PathBuf,
    /// Leave the directory for a look when the test fails.
    keep_on_failure: bool,
}

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let path = scratch_dir(prefix);
        Scratch {
            path,
            keep_on_failure: false,
        }
    }

    /// A scratch directory that survives a failing (panicking) test.
    pub fn kept_on_failure(prefix: &str) -> Scratch {
        Scratch {
            path: scratch_dir(prefix),
            keep_on_failure: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !(self.keep_on_failure && std::thread::panicking()) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Creates `mdr-<prefix>-<uuid>` under the system's temporary directory;
/// nothing removes it.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("mdr-{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    path
}

/// A simulator on the system clock that knows the service `accounts`, its
/// admin token written owner-only to `<dir>/admin.token`.
pub async fn simulator(dir: &Path, accounts: &[&str]) -> RunningSimulator {
    let running = Simulator::spawn(SimulatorOptions::default())
        .await
        .expect("simulator starts");
    for account in accounts {
        running.sim.add_service_account(account);
    }
    crate::support::write_secret(dir.join("admin.token"), running.admin_token.expose_secret());
    running
}

/// An OpenBao dev server and a moto server, with OpenBao's root token
/// written owner-only to `<dir>/vault.token`.
pub async fn remote_stores(dir: &Path) -> (OpenBao, Moto) {
    let bao = OpenBao::start().await;
    let moto = Moto::start().await;
    crate::support::write_secret(dir.join("vault.token"), &bao.root_token);
    (bao, moto)
}

/// Ids of the tokens of `account` live at the simulator, sorted.
pub fn live_ids(sim: &Simulator, account: &str) -> Vec<String> {
    let mut ids: Vec<String> = sim.live_tokens(account).into_iter().map(|t| t.id).collect();
    ids.sort();
    ids
}

/// Ids of every token the simulator issued to `account`, in order.
pub fn issued_ids(sim: &Simulator, account: &str) -> Vec<String> {
    sim.issued_tokens()
        .into_iter()
        .filter(|t| t.username == account)
        .map(|t| t.id)
        .collect()
}

/// Whether token `id` was issued and is not revoked.
pub fn is_live(sim: &Simulator, id: &str) -> bool {
    sim.issued_tokens()
        .iter()
        .any(|t| t.id == id && t.revoked_at.is_none())
}

/// How many tokens the simulator ever issued to `account`.
pub fn issued_count(sim: &Simulator, account: &str) -> usize {
    sim.issued_tokens()
        .iter()
        .filter(|t| t.username == account)
        .count()
}

/// The current record of the KV v2 secret `secret/<path>`, read with the
/// root token the way a consumer reads it.
pub async fn vault_record(bao: &OpenBao, path: &str) -> Result<Value, String> {
    let v: Value = reqwest::Client::new()
        .get(format!("{}/v1/secret/data/{path}", bao.addr))
        .header("X-Vault-Token", &bao.root_token)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(v["data"]["data"].clone())
}

/// The `AWSCURRENT` record of the Secrets Manager secret `name` in moto.
pub async fn aws_record(moto: &Moto, name: &str) -> Result<Value, String> {
    let v = crate::smoke_services::secrets_manager(
        moto,
        "GetSecretValue",
        serde_json::json!({"SecretId": name, "VersionStage": "AWSCURRENT"}),
    )
    .await;
    let s = v["SecretString"]
        .as_str()
        .ok_or_else(|| format!("no SecretString in AWS: {v}"))?;
    serde_json::from_str(s).map_err(|e| e.to_string())
}

/// The `token_id` of a record, or why there is none.
pub fn token_id_of(record: &Value, store: &str) -> Result<String, String> {
    record["token_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no token_id in {store}: {record}"))
}

/// A [`Bench`] with OpenBao and moto.
pub struct RemoteBench {
    pub bench: Bench,
    pub bao: OpenBao,
    pub moto: Moto,
}

/// A scratch directory, a simulator whose admin token is written there,
/// and the binary run as children in it, their output there too.
pub struct Bench {
    pub sim: RunningSimulator,
    pub bin: Rotator,
    pub scratch: Scratch,
}

impl Bench {
    /// The simulator knows the service `accounts`; children log with
    /// `MDR_LOG=log_filter`.
    pub async fn new(scratch: Scratch, accounts: &[&str], log_filter: &'static str) -> Bench {
        let dir = scratch.path();
        Bench {
            sim: simulator(dir, accounts).await,
            bin: Rotator::new(dir, dir, log_filter),
            scratch,
        }
    }

    /// [`Bench::new`] with OpenBao and moto, the root token written to
    /// `vault.token`.
    pub async fn with_remote_stores(
        scratch: Scratch,
        accounts: &[&str],
        log_filter: &'static str,
    ) -> RemoteBench {
        let (bao, moto) = remote_stores(scratch.path()).await;
        let bench = Bench::new(scratch, accounts, log_filter).await;
        RemoteBench { bench, bao, moto }
    }

    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }
}
