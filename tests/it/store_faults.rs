//! Real stores failing mid-rotation, through the rotation driver.
//!
//! OpenBao and moto run behind a [`FaultProxy`] that answers chosen
//! requests with Vault `503`s or Secrets Manager throttling / server errors
//! instead of forwarding them. The driver runs in process against the
//! simulator (frozen clock) with a manual wall clock, pass by pass, exactly
//! as the daemon's policy loop calls it; one test runs the real binary to
//! read what an operator sees. The invariants checked after every fault:
//! consumers read a live token from each store, the rotation is
//! all-or-nothing across stores, a token whose secret could not be kept is
//! revoked, failures are counted with their step and reason, and the next
//! pass converges to exactly one live token that every store holds.
//!
//! The step boundaries come from the stores' request order:
//! - Vault KV v2 `stage`: metadata of `P.pending`, then
//!   `POST /v1/secret/data/P.pending`;
//! - Vault `promote`: `POST /v1/secret/data/P` (what consumers read), then
//!   its metadata, then deleting `P.pending`;
//! - AWS `promote`: `UpdateSecretVersionStage` (AWSCURRENT to the new
//!   version, then AWSPENDING off it), then the journal's `PutSecretValue`;
//! - AWS `rollback`: the journal first, then `UpdateSecretVersionStage`.
//!
//! The AWS SDK's own retries are turned off here (`max_attempts = 1`): in
//! production (3 attempts) it absorbs up to two throttled attempts per
//! call, with a jittered backoff from up to a second, which would be real
//! sleeping in a test and would hide the faults from the driver. The
//! driver's retries (3 attempts, 1 ms apart) are what these tests watch.

mod leases;
mod operator;
mod promotion;
mod retries;
mod staging;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::config::Credentials;
use chrono::Utc;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use motherduck_rotator::alerts::AlertKind;
use motherduck_rotator::clock::Clock;
use motherduck_rotator::config::Policy;
use motherduck_rotator::metrics::Metrics;
use motherduck_rotator::motherduck::TokenCheck;
use motherduck_rotator::rotation::driver::{DriveError, Driver, Tick};
use motherduck_rotator::secret::{ExposeSecret, SecretString};
use motherduck_rotator::stores::aws::{AwsConnection, AwsConnectionSettings, AwsDestination};
use motherduck_rotator::stores::{Destination, JournalState};

use crate::smoke_services::secrets_manager;
use crate::support::config_toml;
use crate::support::driver::Frozen;
use crate::support::fault_proxy::{Answer, FaultProxy, Match, Rule};
use crate::support::services::{Moto, OpenBao};
use crate::support::world;

const SA: &str = "svc_faults";
const POLICY: &str = "faults";
const VAULT_PATH: &str = "motherduck/faults";
const AWS_PATH: &str = "prod/motherduck/faults";
const VAULT_LABEL: &str = "vault:secret/motherduck/faults";
const AWS_LABEL: &str = "aws:us-east-1/prod/motherduck/faults";
/// The policy's attempts per step (`retry.max_attempts`).
const ATTEMPTS: usize = 3;
const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);
/// How long a pass may keep finding the lock busy: the previous pass
/// releases it from a spawned task, just after it returns.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// `POST` of the staged record's data, the write that stages a new token.
fn vault_stage_write() -> Match {
    Match::VaultExact {
        method: "POST",
        path: format!("/v1/secret/data/{VAULT_PATH}.pending"),
    }
}

/// `POST` of the current record's data, the write consumers see.
fn vault_promote_write() -> Match {
    Match::VaultExact {
        method: "POST",
        path: format!("/v1/secret/data/{VAULT_PATH}"),
    }
}

fn aws(op: &'static str) -> Match {
    Match::Aws { op }
}

/// Which destination comes first: it holds the lock and is staged and
/// promoted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    VaultFirst,
    AwsFirst,
}

/// What a consumer reads from one store. The secret is compared, never
/// printed.
struct Read {
    token_id: String,
    token: SecretString,
}

/// OpenBao and moto, each behind a fault proxy, the simulator with a
/// frozen clock, and a manual wall clock for the driver.
struct World {
    bao: OpenBao,
    moto: Moto,
    vault_proxy: FaultProxy,
    aws_proxy: FaultProxy,
    frozen: Frozen,
    metrics: Arc<Metrics>,
}

impl World {
    async fn new() -> World {
        let (bao, moto) = tokio::join!(OpenBao::start(), Moto::start());
        let vault_proxy = FaultProxy::start(&bao.addr).await;
        let aws_proxy = FaultProxy::start(&moto.endpoint).await;
        World {
            bao,
            moto,
            vault_proxy,
            aws_proxy,
            frozen: Frozen::start(23, SA).await,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The policy, parsed from TOML as the daemon would, with both stores
    /// reached through their proxies; and the daemon's driver for it.
    fn driver(&self, order: Order) -> (Driver, Policy) {
        let vault = format!(r#"{{ store = "vault", path = "{VAULT_PATH}" }}"#);
        let aws = format!(r#"{{ store = "aws", path = "{AWS_PATH}" }}"#);
        let destinations = match order {
            Order::VaultFirst => format!("[{vault}, {aws}]"),
            Order::AwsFirst => format!("[{aws}, {vault}]"),
        };
        let src = format!(
            r#"{head}
[stores.vault]
type = "vault"
address = "{vault_url}"
auth = {{ method = "token", token = {{ env = "MDR_TEST_VAULT" }} }}
{aws}
[[policy]]
name = "{POLICY}"
service_account = "{SA}"
schedule = {{ interval = "1h" }}
overlap = "0s"
verify = [{{ type = "motherduck", interval = "10ms", deadline = "5s" }}]
destinations = {destinations}
retry = {{ max_attempts = {ATTEMPTS}, initial_backoff = "1ms", max_backoff = "2ms" }}
"#,
            head = self.frozen.head_toml("0s", "faults-a"),
            vault_url = self.vault_proxy.url,
            aws = config_toml::aws_store(&self.aws_proxy.url, ""),
        );
        let config = self.frozen.parse(
            std::path::Path::new("store-faults.toml"),
            &src,
            vec![("MDR_TEST_VAULT", self.bao.root_token.clone())],
        );
        let mut policy = config.policies[0].clone();
        // Static credentials instead of the process environment, and no
        // SDK retries (module docs).
        let settings = AwsConnectionSettings {
            endpoint_url: Some(self.aws_proxy.url.clone()),
            max_attempts: 1,
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(20),
            ..AwsConnectionSettings::new("us-east-1")
        };
        let creds = Credentials::new("AKIDFAULTS", "faults-secret-key", None, None, "faults");
        let conn = AwsConnection::with_credentials(settings, creds).unwrap();
        let rebuild = |d: &Destination| match d {
            Destination::Aws(a) => Destination::Aws(
                AwsDestination::new(a.store(), conn.clone(), a.secret_name())
                    .unwrap()
                    .create_if_missing(true, None),
            ),
            other => other.clone(),
        };
        policy.destinations = policy.destinations.iter().map(rebuild).collect();
        policy.lock = rebuild(&policy.lock);
        (self.frozen.driver(&config, self.metrics.clone()), policy)
    }

    /// Moves the driver's clock and the simulator's together.
    fn advance(&self, d: Duration) {
        self.frozen.advance(d);
    }

    /// One scheduled pass of the daemon's policy loop (no `force`). The
    /// previous pass releases its lease from a spawned task, so a pass that
    /// finds the lock busy is repeated after a few milliseconds.
    async fn pass(&self, driver: &Driver, policy: &Policy) -> Result<Tick, DriveError> {
        let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match driver
                .reconcile(policy, false, &CancellationToken::new())
                .await
            {
                Ok(Tick::Busy { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return other,
            }
        }
    }

    async fn ok_pass(&self, driver: &Driver, policy: &Policy) -> Tick {
        let tick = self
            .pass(driver, policy)
            .await
            .unwrap_or_else(|e| panic!("pass failed: {e}"));
        assert!(!matches!(tick, Tick::Busy { .. }), "lock stayed busy");
        tick
    }

    fn live_ids(&self) -> Vec<String> {
        world::live_ids(&self.frozen.running.sim, SA)
    }

    /// Ids of every token issued to the service account, in order.
    fn issued(&self) -> Vec<String> {
        world::issued_ids(&self.frozen.running.sim, SA)
    }

    fn revoked(&self, id: &str) -> bool {
        self.frozen
            .running
            .sim
            .issued_tokens()
            .iter()
            .any(|t| t.id == id && t.revoked_at.is_some())
    }

    /// `vault kv get secret/<VAULT_PATH>`, straight from OpenBao.
    async fn vault_read(&self) -> Read {
        let v = self.vault_get(&format!("data/{VAULT_PATH}")).await;
        let data = &v.expect("Vault holds a current record")["data"]["data"];
        read_of(data)
    }

    /// A KV v2 API path under `secret/`, straight from OpenBao; `None` on
    /// 404.
    async fn vault_get(&self, api_path: &str) -> Option<Value> {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/secret/{api_path}", self.bao.addr))
            .header("X-Vault-Token", &self.bao.root_token)
            .send()
            .await
            .unwrap();
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(r.status().is_success(), "GET {api_path}: {}", r.status());
        Some(r.json().await.unwrap())
    }

    /// How many versions `P` has: each write of the current record,
    /// promotion or rollback, adds one.
    async fn vault_versions(&self) -> u64 {
        let v = self.vault_get(&format!("metadata/{VAULT_PATH}")).await;
        v.expect("Vault has the secret")["data"]["current_version"]
            .as_u64()
            .unwrap()
    }

    /// Whether `P.pending` holds a readable staged record.
    async fn vault_has_pending(&self) -> bool {
        self.vault_get(&format!("data/{VAULT_PATH}.pending"))
            .await
            .is_some_and(|v| v["data"]["data"].is_object())
    }

    /// `get-secret-value --version-stage AWSCURRENT`, straight from moto.
    async fn aws_read(&self) -> Read {
        let v = secrets_manager(
            &self.moto,
            "GetSecretValue",
            json!({"SecretId": AWS_PATH, "VersionStage": "AWSCURRENT"}),
        )
        .await;
        let rec: Value = serde_json::from_str(v["SecretString"].as_str().unwrap()).unwrap();
        read_of(&rec)
    }

    /// Version id → staging labels of the destination secret.
    async fn aws_stages(&self) -> HashMap<String, Vec<String>> {
        let v = secrets_manager(&self.moto, "DescribeSecret", json!({"SecretId": AWS_PATH})).await;
        serde_json::from_value(v["VersionIdsToStages"].clone()).unwrap()
    }

    async fn aws_has_pending(&self) -> bool {
        self.aws_stages()
            .await
            .values()
            .any(|l| l.iter().any(|s| s == "AWSPENDING"))
    }

    /// The token each store's consumers read now, checked to be live at
    /// MotherDuck and to authenticate. Returns (Vault's id, AWS's id).
    async fn consumers_read_live_tokens(&self) -> (String, String) {
        let live = self.live_ids();
        let mut ids = Vec::new();
        for (store, read) in [
            ("vault", self.vault_read().await),
            ("aws", self.aws_read().await),
        ] {
            assert!(
                live.contains(&read.token_id),
                "{store} consumers read token {}, which is not live (live: {live:?})",
                read.token_id
            );
            let check = self.frozen.admin.check_token(&read.token).await.unwrap();
            assert_eq!(
                check,
                TokenCheck::ValidNonAdmin,
                "the token {store} consumers read ({}) does not authenticate",
                read.token_id
            );
            ids.push(read.token_id);
        }
        (ids[0].clone(), ids[1].clone())
    }

    /// Converged: exactly one live token, current in Vault and AWS with the
    /// same secret, nothing staged, no rotation unfinished, no orphan.
    /// Returns its id.
    async fn assert_converged(&self, driver: &Driver, policy: &Policy) -> String {
        let live = self.live_ids();
        assert_eq!(live.len(), 1, "exactly one live token: {live:?}");
        let (vault, aws) = (self.vault_read().await, self.aws_read().await);
        assert_eq!(vault.token_id, live[0], "Vault holds the live token");
        assert_eq!(aws.token_id, live[0], "AWS holds the live token");
        assert!(
            vault.token.expose_secret() == aws.token.expose_secret(),
            "Vault and AWS hold different secrets for token {}",
            live[0]
        );
        self.consumers_read_live_tokens().await;
        assert!(!self.vault_has_pending().await, "nothing staged in Vault");
        assert!(!self.aws_has_pending().await, "nothing staged in AWS");
        let obs = driver.observe(policy).await.unwrap();
        for v in &obs.views {
            let j = v.current.as_ref().and_then(|c| c.journal.as_ref());
            assert!(
                j.is_some_and(|j| !j.state.is_active()),
                "no rotation is unfinished: {j:?}"
            );
        }
        let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
        let orphans = loop {
            match driver.sweep(policy, true).await.unwrap() {
                Some(found) => break found,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None => panic!("the lock stayed busy"),
            }
        };
        assert!(orphans.is_empty(), "the sweep finds orphans: {orphans:?}");
        live[0].clone()
    }

    /// The first token of the policy, rotated in by one pass.
    /// AWS answers the next `n` moves of a version label
    /// (`UpdateSecretVersionStage`) with throttling.
    fn throttle_label_moves(&self, n: usize) -> Rule {
        self.aws_proxy
            .arm(aws("UpdateSecretVersionStage"), Answer::AwsThrottling, n)
    }

    /// A world and a driver for `order`, run until its first token is
    /// stored everywhere: with the policy, the token's id and secret.
    async fn started(order: Order) -> (World, Driver, Policy, String, SecretString) {
        let w = World::new().await;
        let (driver, policy) = w.driver(order);
        let (id, secret) = w.first_token(&driver, &policy).await;
        (w, driver, policy, id, secret)
    }

    async fn first_token(&self, driver: &Driver, policy: &Policy) -> (String, SecretString) {
        self.ok_pass(driver, policy).await;
        let id = self.assert_converged(driver, policy).await;
        (id, self.vault_read().await.token)
    }

    /// A counter of the policy's step failures.
    fn step_failures(&self, step: &str, reason: &str) -> u64 {
        self.metrics
            .rotation_step_failures_total
            .with_label_values(&[step, reason])
            .get()
    }

    fn store_ops(&self, store: &str, op: &str, outcome: &str) -> u64 {
        self.metrics
            .store_operations_total
            .with_label_values(&[store, op, outcome])
            .get()
    }

    fn rotations(&self, outcome: &str) -> u64 {
        self.metrics
            .rotations_total
            .with_label_values(&[outcome])
            .get()
    }

    fn rollbacks(&self) -> u64 {
        self.metrics.rollbacks_total.get()
    }

    /// The journal of the failed rotation as a destination recorded it.
    async fn rolled_back_error(&self, driver: &Driver, policy: &Policy, i: usize) -> String {
        let obs = driver.observe(policy).await.unwrap();
        let j = obs.views[i]
            .current
            .as_ref()
            .and_then(|c| c.journal.clone())
            .expect("a journal");
        assert_eq!(j.state, JournalState::RolledBack, "{j:?}");
        assert!(j.retry_at.is_some(), "a retry time is recorded");
        j.last_error.expect("the reason is recorded")
    }

    /// Fails if `text` holds a token secret, the admin token or the Vault
    /// token. Simulator secrets are JWT-shaped.
    fn assert_no_secret(&self, what: &str, text: &str) {
        assert!(!text.contains("eyJ"), "{what} holds JWT-shaped text");
        assert!(
            !text.contains(self.frozen.running.admin_token.expose_secret()),
            "{what} holds the admin token"
        );
        assert!(
            !text.contains(&self.bao.root_token),
            "{what} holds the Vault token"
        );
    }
}

fn read_of(record: &Value) -> Read {
    Read {
        token_id: record["token_id"].as_str().expect("token_id").to_owned(),
        token: SecretString::from(record["token"].as_str().expect("token").to_owned()),
    }
}

/// `text` names every one of `parts`.
fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "`{part}` missing in: {text}");
    }
}

/// The token created by the latest rotation attempt.
fn newest(ids: &[String]) -> String {
    ids.last().expect("a token was issued").clone()
}
