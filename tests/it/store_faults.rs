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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_secretsmanager::config::Credentials;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use motherduck_rotator::alerts::AlertKind;
use motherduck_rotator::clock::Clock;
use motherduck_rotator::config::{self, Env, Policy};
use motherduck_rotator::daemon;
use motherduck_rotator::metrics::Metrics;
use motherduck_rotator::motherduck::{Client, TokenCheck};
use motherduck_rotator::rotation::driver::{DriveError, Driver, Tick};
use motherduck_rotator::secret::{ExposeSecret, SecretString};
use motherduck_rotator::simulator::{RunningSimulator, Simulator, SimulatorOptions};
use motherduck_rotator::stores::aws::{AwsConnection, AwsConnectionSettings, AwsDestination};
use motherduck_rotator::stores::{Destination, JournalState};
use motherduck_rotator::verify::AckRegistry;

use crate::harness::client_with_token;
use crate::smoke_services::secrets_manager;
use crate::support::fault_proxy::{Answer, FaultProxy, Match};
use crate::support::services::{Moto, OpenBao};

const T0: &str = "2026-03-01T12:00:00Z";
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

/// Secret references resolve from here, never from the process.
struct FakeEnv {
    admin: String,
    vault: String,
}

impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "MDR_TEST_ADMIN" => Some(self.admin.clone()),
            "MDR_TEST_VAULT" => Some(self.vault.clone()),
            _ => None,
        }
    }
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
    running: RunningSimulator,
    admin: Client,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl World {
    async fn new() -> World {
        let (bao, moto) = tokio::join!(OpenBao::start(), Moto::start());
        let vault_proxy = FaultProxy::start(&bao.addr).await;
        let aws_proxy = FaultProxy::start(&moto.endpoint).await;
        let t0: DateTime<Utc> = T0.parse().unwrap();
        let running = Simulator::spawn(SimulatorOptions {
            frozen_at: Some(t0),
            seed: Some(23),
        })
        .await
        .expect("simulator starts");
        running.sim.add_service_account(SA);
        let admin = client_with_token(&running.base_url(), running.admin_token.clone());
        World {
            bao,
            moto,
            vault_proxy,
            aws_proxy,
            running,
            admin,
            clock: Clock::manual(t0),
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
            r#"
[motherduck]
api_url = "{api}"
admin_token = {{ env = "MDR_TEST_ADMIN" }}

[daemon]
listen = "127.0.0.1:0"
orphan_min_age = "0s"
lock_retry_interval = "1s"
instance_id = "faults-a"

[stores.vault]
type = "vault"
address = "{vault_url}"
auth = {{ method = "token", token = {{ env = "MDR_TEST_VAULT" }} }}

[stores.aws]
type = "aws"
region = "us-east-1"
endpoint_url = "{aws_url}"
create_if_missing = true

[[policy]]
name = "{POLICY}"
service_account = "{SA}"
schedule = {{ interval = "1h" }}
overlap = "0s"
verify = [{{ type = "motherduck", interval = "10ms", deadline = "5s" }}]
destinations = {destinations}
retry = {{ max_attempts = {ATTEMPTS}, initial_backoff = "1ms", max_backoff = "2ms" }}
"#,
            api = self.running.base_url(),
            vault_url = self.vault_proxy.url,
            aws_url = self.aws_proxy.url,
        );
        let env = FakeEnv {
            admin: self.running.admin_token.expose_secret().to_owned(),
            vault: self.bao.root_token.clone(),
        };
        let config = config::parse(std::path::Path::new("store-faults.toml"), &src, &env)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
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
        let mut driver = daemon::driver_for(
            &config,
            self.clock.clone(),
            self.metrics.clone(),
            AckRegistry::default(),
        )
        .unwrap();
        driver.client = self.admin.clone();
        driver.verify.motherduck = self.admin.clone();
        (driver, policy)
    }

    /// Moves the driver's clock and the simulator's together.
    fn advance(&self, d: Duration) {
        self.clock.advance(chrono::Duration::from_std(d).unwrap());
        self.running.sim.advance(d);
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
        let mut ids: Vec<String> = self
            .running
            .sim
            .live_tokens(SA)
            .into_iter()
            .map(|t| t.id)
            .collect();
        ids.sort();
        ids
    }

    /// Ids of every token issued to the service account, in order.
    fn issued(&self) -> Vec<String> {
        self.running
            .sim
            .issued_tokens()
            .into_iter()
            .filter(|t| t.username == SA)
            .map(|t| t.id)
            .collect()
    }

    fn revoked(&self, id: &str) -> bool {
        self.running
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
            let check = self.admin.check_token(&read.token).await.unwrap();
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
    async fn first_token(&self, driver: &Driver, policy: &Policy) -> (String, SecretString) {
        self.ok_pass(driver, policy).await;
        let id = self.assert_converged(driver, policy).await;
        (id, self.vault_read().await.token)
    }

    /// A counter of the policy's step failures.
    fn step_failures(&self, step: &str, reason: &str) -> u64 {
        self.metrics
            .rotation_step_failures_total
            .with_label_values(&[POLICY, step, reason])
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
            .with_label_values(&[POLICY, outcome])
            .get()
    }

    fn rollbacks(&self) -> u64 {
        self.metrics
            .rollbacks_total
            .with_label_values(&[POLICY])
            .get()
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
            !text.contains(self.running.admin_token.expose_secret()),
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

/// The token created by the latest rotation attempt.
fn newest(ids: &[String]) -> String {
    ids.last().expect("a token was issued").clone()
}

// ---------------------------------------------------------------------------
// Staging
// ---------------------------------------------------------------------------

/// Invariant 2: Vault refuses the write that stages the new token on every
/// attempt. The secret exists only in memory, so the new token is revoked
/// at once; consumers keep reading the old, live token; the next pass
/// rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_503_on_staging_revokes_the_new_token_and_the_next_pass_rotates() {
    let w = World::new().await;
    let (driver, policy) = w.driver(Order::VaultFirst);
    let (old, old_secret) = w.first_token(&driver, &policy).await;

    let rule = w
        .vault_proxy
        .arm(vault_stage_write(), Answer::VaultUnavailable, ATTEMPTS);
    w.advance(HOUR);
    let failed_at = w.clock.now();
    let tick = w.ok_pass(&driver, &policy).await;
    assert_eq!(rule.intercepted(), ATTEMPTS, "every attempt was refused");
    assert!(
        matches!(&tick, Tick::Wait { until, .. } if *until > failed_at),
        "the policy backs off: {tick:?}"
    );

    let issued = w.issued();
    assert_eq!(issued.len(), 2, "one new token was created");
    let new = newest(&issued);
    assert!(w.revoked(&new), "the unstorable token {new} is revoked");
    assert_eq!(
        w.live_ids(),
        vec![old.clone()],
        "only the old token is live"
    );
    let (vault, aws) = w.consumers_read_live_tokens().await;
    assert_eq!((vault.as_str(), aws.as_str()), (old.as_str(), old.as_str()));
    assert!(
        w.vault_read().await.token.expose_secret() == old_secret.expose_secret(),
        "Vault consumers read the old secret, unchanged"
    );
    assert!(!w.vault_has_pending().await);
    assert!(!w.aws_has_pending().await, "AWS was never staged");

    assert_eq!(
        w.step_failures("stage", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(w.store_ops("vault", "stage", "failure"), ATTEMPTS as u64);
    assert_eq!(w.rotations("failed"), 1);
    assert_eq!(w.rollbacks(), 1);
    let reason = w.rolled_back_error(&driver, &policy, 0).await;
    for part in ["stage", VAULT_LABEL, "HTTP 503"] {
        assert!(reason.contains(part), "`{part}` missing in: {reason}");
    }
    w.assert_no_secret("the recorded error", &reason);

    // Within the backoff nothing happens; after it the rotation succeeds.
    let tick = w.ok_pass(&driver, &policy).await;
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    assert_eq!(w.issued().len(), 2, "no attempt during the backoff");
    w.advance(MINUTE);
    w.ok_pass(&driver, &policy).await;
    let now = w.assert_converged(&driver, &policy).await;
    assert_eq!(w.issued().len(), 3);
    assert_eq!(now, newest(&w.issued()), "the retry's token is current");
    assert!(
        w.revoked(&old),
        "the old token is revoked after the overlap"
    );
    assert_eq!(w.rotations("success"), 2);
}

// ---------------------------------------------------------------------------
// Promotion: all or nothing across stores
// ---------------------------------------------------------------------------

/// After a failed promotion: the old token is current and live in both
/// stores, nothing is staged, the new token is revoked; then the next pass
/// converges on a third token.
async fn assert_rolled_back_everywhere_then_recover(
    w: &World,
    driver: &Driver,
    policy: &Policy,
    old: &str,
    old_secret: &SecretString,
) {
    let new = newest(&w.issued());
    assert_ne!(new, old);
    assert!(w.revoked(&new), "the new token {new} is revoked");
    assert_eq!(w.live_ids(), vec![old.to_owned()]);
    let (vault, aws) = w.consumers_read_live_tokens().await;
    assert_eq!(vault, old, "Vault is rolled back");
    assert_eq!(aws, old, "AWS is rolled back");
    for (store, read) in [("vault", w.vault_read().await), ("aws", w.aws_read().await)] {
        assert!(
            read.token.expose_secret() == old_secret.expose_secret(),
            "{store} consumers read the old secret"
        );
    }
    assert!(!w.vault_has_pending().await);
    assert!(!w.aws_has_pending().await);
    assert_eq!(w.rotations("failed"), 1);
    assert_eq!(w.rollbacks(), 1);

    w.advance(MINUTE);
    w.ok_pass(driver, policy).await;
    let now = w.assert_converged(driver, policy).await;
    assert_eq!(now, newest(&w.issued()));
    assert!(w.revoked(old));
}

/// Vault is promoted first; then AWS throttles every attempt to move
/// AWSCURRENT. The rollback must undo Vault's promotion too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_throttling_while_promoting_rolls_vault_back_too() {
    let w = World::new().await;
    let (driver, policy) = w.driver(Order::VaultFirst);
    let (old, old_secret) = w.first_token(&driver, &policy).await;

    let rule = w.aws_proxy.arm(
        aws("UpdateSecretVersionStage"),
        Answer::AwsThrottling,
        ATTEMPTS,
    );
    w.advance(HOUR);
    w.ok_pass(&driver, &policy).await;
    assert_eq!(rule.intercepted(), ATTEMPTS);
    assert_eq!(
        w.store_ops("vault", "promote", "success"),
        2,
        "Vault was promoted (first token, then this one) before AWS failed"
    );
    assert_eq!(
        w.step_failures("promote", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(w.store_ops("aws", "promote", "failure"), ATTEMPTS as u64);
    let reason = w.rolled_back_error(&driver, &policy, 1).await;
    for part in [
        "promote",
        AWS_LABEL,
        "UpdateSecretVersionStage",
        "ThrottlingException",
    ] {
        assert!(reason.contains(part), "`{part}` missing in: {reason}");
    }
    w.assert_no_secret("the recorded error", &reason);
    assert_rolled_back_everywhere_then_recover(&w, &driver, &policy, &old, &old_secret).await;
}

/// AWS is promoted first (it holds the lock too); then Vault answers 503
/// to `matcher` on every promotion attempt. The rollback must move
/// AWSCURRENT back as well as restore Vault. `vault_writes`: how many
/// versions of the current record the failed rotation leaves behind.
async fn vault_503_while_promoting_after_aws(matcher: Match, vault_writes: u64) {
    let w = World::new().await;
    let (driver, policy) = w.driver(Order::AwsFirst);
    let (old, old_secret) = w.first_token(&driver, &policy).await;
    let versions = w.vault_versions().await;

    let rule = w
        .vault_proxy
        .arm(matcher, Answer::VaultUnavailable, ATTEMPTS);
    w.advance(HOUR);
    w.ok_pass(&driver, &policy).await;
    assert_eq!(rule.intercepted(), ATTEMPTS);
    assert_eq!(w.vault_versions().await, versions + vault_writes);
    assert_eq!(
        w.store_ops("aws", "promote", "success"),
        2,
        "AWS was promoted (first token, then this one) before Vault failed"
    );
    assert_eq!(
        w.step_failures("promote", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(w.store_ops("vault", "promote", "failure"), ATTEMPTS as u64);
    let reason = w.rolled_back_error(&driver, &policy, 1).await;
    for part in ["promote", VAULT_LABEL, "HTTP 503"] {
        assert!(reason.contains(part), "`{part}` missing in: {reason}");
    }
    w.assert_no_secret("the recorded error", &reason);
    assert_rolled_back_everywhere_then_recover(&w, &driver, &policy, &old, &old_secret).await;
}

/// The write of the current record itself is refused: Vault never shows
/// the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_503_on_the_promoting_write_rolls_aws_back_too() {
    vault_503_while_promoting_after_aws(vault_promote_write(), 0).await;
}

/// The write of the current record commits (Vault's consumers see the new
/// token), but the journal written right after it is refused: the rollback
/// must find the previous version without a journal and write it back, a
/// second new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_503_on_the_journal_after_the_promoting_write_rolls_both_back() {
    vault_503_while_promoting_after_aws(
        Match::VaultExact {
            method: "POST",
            path: format!("/v1/secret/metadata/{VAULT_PATH}"),
        },
        2,
    )
    .await;
}

/// Vault refuses every metadata write under the destination, through the
/// staging attempts and the rollback's: the rollback cannot even record
/// itself in Vault. The new token, whose secret no store holds, is revoked
/// anyway; consumers keep the old token; the pass reports the store and
/// the step; the next pass rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_refusing_the_rollback_too_still_revokes_the_new_token() {
    let w = World::new().await;
    let (driver, policy) = w.driver(Order::VaultFirst);
    let (old, old_secret) = w.first_token(&driver, &policy).await;

    // Staging writes `P.pending`'s metadata first; the rollback writes
    // `P`'s. Both paths contain this; the lock's data path does not.
    let rule = w.vault_proxy.arm(
        Match::VaultContains {
            method: "POST",
            path: format!("/metadata/{VAULT_PATH}"),
        },
        Answer::VaultUnavailable,
        2 * ATTEMPTS,
    );
    w.advance(HOUR);
    let err = w
        .pass(&driver, &policy)
        .await
        .expect_err("the rollback cannot finish");
    assert_eq!(rule.intercepted(), 2 * ATTEMPTS, "staging, then rollback");
    let text = err.to_string();
    for part in ["rollback incomplete", "rollback", VAULT_LABEL, "HTTP 503"] {
        assert!(text.contains(part), "`{part}` missing in: {text}");
    }
    w.assert_no_secret("the error", &text);

    let new = newest(&w.issued());
    assert!(w.revoked(&new), "the unstorable token {new} is revoked");
    assert_eq!(w.live_ids(), vec![old.clone()], "no orphan");
    let (vault, aws_id) = w.consumers_read_live_tokens().await;
    assert_eq!(
        (vault.as_str(), aws_id.as_str()),
        (old.as_str(), old.as_str())
    );
    assert!(w.vault_read().await.token.expose_secret() == old_secret.expose_secret());
    assert!(!w.vault_has_pending().await);
    assert!(!w.aws_has_pending().await);
    assert_eq!(
        w.step_failures("stage", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(
        w.step_failures("rollback", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(
        w.rotations("failed"),
        1,
        "the failed rotation is counted although its rollback was cut short"
    );
    assert!(driver.alerts.is_firing(AlertKind::RotationFailed, POLICY));

    // No store could record a retry time; the daemon's loop backs off on
    // the error. The next pass rotates.
    w.advance(MINUTE);
    w.ok_pass(&driver, &policy).await;
    let now = w.assert_converged(&driver, &policy).await;
    assert_eq!(now, newest(&w.issued()));
    assert!(w.revoked(&old));
    assert!(!driver.alerts.is_firing(AlertKind::RotationFailed, POLICY));
}

/// Throttling that outlasts the promotion and the rollback's own retries.
/// Vault is restored; in AWS the rollback records its journal (its commit
/// point: AWSCURRENT never moved) but cannot take the AWSPENDING label off
/// the new version. The pass ends in an error naming the store and the
/// step; the new token, referenced by no record any more, is revoked at
/// once; the failed rotation is counted; the next pass after the backoff
/// rotates and clears the leftover label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_throttling_that_outlasts_the_rollback_still_revokes_and_counts() {
    let w = World::new().await;
    let (driver, policy) = w.driver(Order::VaultFirst);
    let (old, old_secret) = w.first_token(&driver, &policy).await;

    let rule = w.aws_proxy.arm(
        aws("UpdateSecretVersionStage"),
        Answer::AwsThrottling,
        2 * ATTEMPTS,
    );
    w.advance(HOUR);
    let err = w
        .pass(&driver, &policy)
        .await
        .expect_err("the rollback cannot finish");
    assert_eq!(rule.intercepted(), 2 * ATTEMPTS, "promote, then rollback");
    let text = err.to_string();
    for part in [
        "rollback incomplete",
        "rollback",
        AWS_LABEL,
        "ThrottlingException",
    ] {
        assert!(text.contains(part), "`{part}` missing in: {text}");
    }
    w.assert_no_secret("the error", &text);

    // Consumers never noticed: both stores serve the old, live token.
    let (vault, aws_id) = w.consumers_read_live_tokens().await;
    assert_eq!(
        (vault.as_str(), aws_id.as_str()),
        (old.as_str(), old.as_str())
    );
    assert!(w.vault_read().await.token.expose_secret() == old_secret.expose_secret());
    let new = newest(&w.issued());
    assert!(
        w.aws_has_pending().await,
        "the rollback was cut short: AWSPENDING is still on the new version"
    );
    let obs = driver.observe(&policy).await.unwrap();
    assert!(
        obs.views.iter().all(|v| v.pending.is_none()),
        "the leftover label reads as nothing staged"
    );
    assert!(
        w.revoked(&new),
        "the unreferenced new token {new} is revoked"
    );
    assert_eq!(w.live_ids(), vec![old.clone()], "no orphan");

    assert_eq!(
        w.step_failures("promote", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(
        w.step_failures("rollback", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(w.store_ops("aws", "rollback", "failure"), ATTEMPTS as u64);
    assert_eq!(
        w.rotations("failed"),
        1,
        "the failed rotation is counted although its rollback was cut short"
    );
    assert!(driver.alerts.is_firing(AlertKind::RotationFailed, POLICY));

    // Within the backoff nothing happens; after it the rotation succeeds
    // and its staging moves the leftover label.
    let tick = w.ok_pass(&driver, &policy).await;
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    assert_eq!(w.issued().len(), 2);
    w.advance(MINUTE);
    w.ok_pass(&driver, &policy).await;
    let now = w.assert_converged(&driver, &policy).await;
    assert_eq!(now, newest(&w.issued()));
    assert!(w.revoked(&old));
    assert!(!driver.alerts.is_firing(AlertKind::RotationFailed, POLICY));
}

// ---------------------------------------------------------------------------
// Faults that clear within a pass
// ---------------------------------------------------------------------------

/// Vault 503s on staging, an AWS server error on staging and AWS
/// throttling on promotion, each fewer times than the policy's attempts:
/// the driver retries within the pass, the rotation succeeds, and every
/// failed attempt is counted by step, reason and store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_that_clear_within_a_pass_are_retried_and_counted() {
    let w = World::new().await;
    let (driver, policy) = w.driver(Order::VaultFirst);
    let (old, _) = w.first_token(&driver, &policy).await;
    let successes = (
        w.store_ops("vault", "stage", "success"),
        w.store_ops("aws", "stage", "success"),
        w.store_ops("aws", "promote", "success"),
    );

    let vault_stage =
        w.vault_proxy
            .arm(vault_stage_write(), Answer::VaultUnavailable, ATTEMPTS - 1);
    let aws_stage = w
        .aws_proxy
        .arm(aws("PutSecretValue"), Answer::AwsInternalError, 1);
    let aws_promote = w.aws_proxy.arm(
        aws("UpdateSecretVersionStage"),
        Answer::AwsThrottling,
        ATTEMPTS - 1,
    );
    w.advance(HOUR);
    w.ok_pass(&driver, &policy).await;
    assert_eq!(vault_stage.intercepted(), ATTEMPTS - 1);
    assert_eq!(aws_stage.intercepted(), 1);
    assert_eq!(aws_promote.intercepted(), ATTEMPTS - 1);

    let now = w.assert_converged(&driver, &policy).await;
    assert_ne!(now, old);
    assert!(w.revoked(&old));
    assert_eq!(w.issued().len(), 2, "one rotation, no second attempt");
    assert_eq!(w.rotations("success"), 2);
    assert_eq!(w.rotations("failed"), 0);
    assert_eq!(w.rollbacks(), 0);

    // Counted per failed attempt: Vault's two and AWS's one at staging,
    // AWS's two at promotion.
    assert_eq!(
        w.step_failures("stage", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(
        w.step_failures("promote", "store_unavailable"),
        (ATTEMPTS - 1) as u64
    );
    assert_eq!(
        w.store_ops("vault", "stage", "failure"),
        (ATTEMPTS - 1) as u64
    );
    assert_eq!(w.store_ops("aws", "stage", "failure"), 1);
    assert_eq!(
        w.store_ops("aws", "promote", "failure"),
        (ATTEMPTS - 1) as u64
    );
    assert_eq!(
        (
            w.store_ops("vault", "stage", "success"),
            w.store_ops("aws", "stage", "success"),
            w.store_ops("aws", "promote", "success"),
        ),
        (successes.0 + 1, successes.1 + 1, successes.2 + 1)
    );
    // The exported text carries the same series.
    let text = w.metrics.render();
    let line = format!(
        "motherduck_rotator_rotation_step_failures_total{{policy=\"{POLICY}\",reason=\"store_unavailable\",step=\"promote\"}} {}",
        ATTEMPTS - 1
    );
    assert!(text.contains(&line), "`{line}` missing in /metrics");
    w.assert_no_secret("/metrics", &text);
}

// ---------------------------------------------------------------------------
// What an operator sees
// ---------------------------------------------------------------------------

/// The real binary, `rotate` against a Vault destination whose staging
/// write answers 503 on both attempts: it exits 1, its output and logs name
/// the store and the step and hold no secret, the new token is revoked,
/// and the next `rotate` succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_a_vault_503_with_store_and_step_and_no_secret() {
    let bao = OpenBao::start().await;
    let proxy = FaultProxy::start(&bao.addr).await;
    let sim = Simulator::spawn(SimulatorOptions::default()).await.unwrap();
    sim.sim.add_service_account(SA);
    let dir = std::env::temp_dir().join(format!("mdr-faults-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
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
lease_ttl = "2s"

[[policy]]
name = "{POLICY}"
service_account = "{SA}"
schedule = {{ interval = "1d" }}
overlap = "0s"
verify = [{{ type = "motherduck", interval = "10ms", deadline = "10s" }}]
destinations = [{{ store = "vault", path = "{VAULT_PATH}" }}]
retry = {{ max_attempts = 2, initial_backoff = "1ms", max_backoff = "2ms" }}
"#,
            api = sim.base_url(),
            vault = proxy.url,
        ),
    )
    .unwrap();
    // `rotate`, repeated while the previous run's lease is still held (it
    // is released from a task the exiting process may not finish).
    let rotate = async || {
        let started = tokio::time::Instant::now();
        loop {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"))
                .arg("--config")
                .arg(dir.join("config.toml"))
                .args(["rotate", POLICY])
                .current_dir(&dir)
                .env("MDR_LOG", "info,motherduck_rotator=debug")
                .env("NO_COLOR", "1")
                .kill_on_drop(true)
                .output()
                .await
                .unwrap();
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
        let v: Value = reqwest::Client::new()
            .get(format!("{}/v1/secret/data/{VAULT_PATH}", bao.addr))
            .header("X-Vault-Token", &bao.root_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
            !text.contains(&bao.root_token),
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
    for part in [
        "stage",
        VAULT_LABEL,
        "secret/data/motherduck/faults.pending",
        "HTTP 503",
    ] {
        assert!(summary.contains(part), "`{part}` missing in: {summary}");
    }
    // The logs: each refused attempt, then the rollback, with the step.
    let retried = text
        .lines()
        .find(|l| l.contains("rotation step failed; retrying"))
        .unwrap_or_else(|| panic!("no retry logged in: {text}"));
    for part in ["step=\"stage\"", VAULT_LABEL, "HTTP 503"] {
        assert!(retried.contains(part), "`{part}` missing in: {retried}");
    }
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
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A lease dropped while its store answers 503 or throttles is released
/// once the store recovers (the release is retried in the background), so
/// the lock is free long before the lease would expire and the next pass
/// of any replica, this one included, can take it.
#[tokio::test]
async fn a_lease_release_that_fails_transiently_is_retried() {
    use motherduck_rotator::stores::vault::{
        KvVersion, VaultAuth, VaultConnection, VaultDestination, VaultSettings,
    };
    let bao = OpenBao::start().await;
    let moto = Moto::start().await;
    let vault_proxy = FaultProxy::start(&bao.addr).await;
    let aws_proxy = FaultProxy::start(&moto.endpoint).await;

    let vault = VaultDestination::new(
        VaultConnection::new(VaultSettings::new(
            &vault_proxy.url,
            VaultAuth::Token(SecretString::from(bao.root_token.clone())),
        ))
        .unwrap(),
        "vault",
        "secret",
        "motherduck/release",
        KvVersion::V2,
    )
    .unwrap()
    .with_lease_ttl(Duration::from_secs(600));
    let settings = AwsConnectionSettings {
        endpoint_url: Some(aws_proxy.url.clone()),
        max_attempts: 1,
        ..AwsConnectionSettings::new("us-east-1")
    };
    let creds = Credentials::new("AKIDFAULTS", "faults-secret-key", None, None, "faults");
    let aws = AwsDestination::new(
        "aws",
        AwsConnection::with_credentials(settings, creds).unwrap(),
        "prod/motherduck/release",
    )
    .unwrap()
    .create_if_missing(true, None);
    let vault = Destination::Vault(vault);
    let aws = Destination::Aws(aws);

    for (d, matcher, answer) in [
        (
            &vault,
            Match::VaultContains {
                method: "POST",
                path: "/v1/secret/delete/motherduck/release.lock".into(),
            },
            Answer::VaultUnavailable,
        ),
        (
            &aws,
            Match::Aws {
                op: "UpdateSecretVersionStage",
            },
            Answer::AwsThrottling,
        ),
    ] {
        let lease = d
            .try_lock("replica-a")
            .await
            .unwrap()
            .expect("the lock is free");
        let rule = vault_proxy.arm(matcher.clone(), answer, 2);
        let rule_aws = aws_proxy.arm(matcher, answer, 2);
        drop(lease);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let taken = loop {
            if let Some(l) = d.try_lock("replica-b").await.unwrap() {
                break l;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: the dropped lease was never released",
                d.label()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            rule.intercepted() + rule_aws.intercepted(),
            2,
            "{}: both failed releases were answered by the fault",
            d.label()
        );
        drop(taken);
    }
}

/// A lease whose release failed (the store answered 503 or throttled) is
/// still recorded as held, so other replicas wait for it to expire; the
/// process that dropped it knows nobody holds it and takes it back at once
/// on its next attempt, but only while the record is still the version it
/// wrote: once another holder has written the lock (here after the lease
/// expired), the abandoned lease is no longer this process's to take.
#[tokio::test]
async fn a_lease_this_process_could_not_release_is_taken_back_only_by_it() {
    use motherduck_rotator::stores::vault::{
        KvVersion, VaultAuth, VaultConnection, VaultDestination, VaultSettings,
    };
    let bao = OpenBao::start().await;
    let moto = Moto::start().await;
    let vault_proxy = FaultProxy::start(&bao.addr).await;
    let aws_proxy = FaultProxy::start(&moto.endpoint).await;
    let ttl = Duration::from_secs(600);
    let vault = VaultDestination::new(
        VaultConnection::new(VaultSettings::new(
            &vault_proxy.url,
            VaultAuth::Token(SecretString::from(bao.root_token.clone())),
        ))
        .unwrap(),
        "vault",
        "secret",
        "motherduck/abandoned",
        KvVersion::V2,
    )
    .unwrap()
    .with_lease_ttl(ttl);
    let settings = AwsConnectionSettings {
        endpoint_url: Some(aws_proxy.url.clone()),
        max_attempts: 1,
        ..AwsConnectionSettings::new("us-east-1")
    };
    let creds = Credentials::new("AKIDFAULTS", "faults-secret-key", None, None, "faults");
    let clock = Clock::manual(Utc::now());
    let aws = AwsDestination::new(
        "aws",
        AwsConnection::with_credentials(settings, creds).unwrap(),
        "prod/motherduck/abandoned",
    )
    .unwrap()
    .create_if_missing(true, None)
    .with_lock_ttl(ttl)
    .unwrap()
    .with_clock(clock.clone());

    // Vault: the delete of our lease version is refused once.
    let lease = vault.try_lock("replica-a").await.unwrap().expect("free");
    let rule = vault_proxy.arm(
        Match::VaultContains {
            method: "POST",
            path: "/v1/secret/delete/motherduck/abandoned.lock".into(),
        },
        Answer::VaultUnavailable,
        1,
    );
    let e = lease.release().await.expect_err("the release is refused");
    assert_eq!(rule.intercepted(), 1, "{e}");
    let again = vault
        .try_lock("replica-a")
        .await
        .unwrap()
        .expect("the abandoned lease is taken back before it expires");
    assert!(
        vault.try_lock("replica-b").await.unwrap().is_none(),
        "taken back, the lease is held again"
    );
    let rule = vault_proxy.arm(
        Match::VaultContains {
            method: "POST",
            path: "/v1/secret/delete/motherduck/abandoned.lock".into(),
        },
        Answer::VaultUnavailable,
        1,
    );
    again.release().await.expect_err("the release is refused");
    assert_eq!(rule.intercepted(), 1);
    // Another replica takes the lease over once it has expired; the
    // version this process abandoned is gone, so it must wait.
    let later =
        Utc::now() + chrono::Duration::from_std(ttl).unwrap() + chrono::Duration::seconds(1);
    let other = vault
        .try_lock_at("replica-b", later)
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert!(
        vault.try_lock("replica-a").await.unwrap().is_none(),
        "the lease another holder wrote is not taken back"
    );
    other.release().await.unwrap();

    // AWS: swapping AWSCURRENT to the released version is throttled once.
    let lease = aws.try_lock("replica-a").await.unwrap().expect("free");
    let rule = aws_proxy.arm(
        Match::Aws {
            op: "UpdateSecretVersionStage",
        },
        Answer::AwsThrottling,
        1,
    );
    let e = lease.release().await.expect_err("the release is refused");
    assert_eq!(rule.intercepted(), 1, "{e}");
    let again = aws
        .try_lock("replica-a")
        .await
        .unwrap()
        .expect("the abandoned lock is taken back before it expires");
    assert!(
        aws.try_lock("replica-b").await.unwrap().is_none(),
        "taken back, the lock is held again"
    );
    let rule = aws_proxy.arm(
        Match::Aws {
            op: "UpdateSecretVersionStage",
        },
        Answer::AwsThrottling,
        1,
    );
    again.release().await.expect_err("the release is refused");
    assert_eq!(rule.intercepted(), 1);
    clock.advance(chrono::Duration::from_std(ttl).unwrap() + chrono::Duration::seconds(1));
    let other = aws
        .try_lock("replica-b")
        .await
        .unwrap()
        .expect("an expired lock is taken over");
    assert!(
        aws.try_lock("replica-a").await.unwrap().is_none(),
        "the lock another holder wrote is not taken back"
    );
    other.release().await.unwrap();
}

/// A one-shot `rotate` lets its lock release finish before it exits, even
/// when the first attempt is answered with a 503: the lock is free as soon
/// as the process has ended, not only when the lease expires (10 minutes
/// here), so replicas are not held up by a manual rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_exits_only_after_its_lock_is_released() {
    let bao = OpenBao::start().await;
    let proxy = FaultProxy::start(&bao.addr).await;
    let sim = Simulator::spawn(SimulatorOptions::default()).await.unwrap();
    sim.sim.add_service_account(SA);
    let dir = std::env::temp_dir().join(format!("mdr-release-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    crate::support::write_secret(dir.join("admin.token"), sim.admin_token.expose_secret());
    crate::support::write_secret(dir.join("vault.token"), &bao.root_token);
    std::fs::write(
        dir.join("config.toml"),
        format!(
            r#"
[motherduck]
api_url = "{api}"
admin_token = {{ file = "admin.token" }}

[stores.vault]
type = "vault"
address = "{vault}"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}
lease_ttl = "10m"

[[policy]]
name = "{POLICY}"
service_account = "{SA}"
schedule = {{ interval = "1d" }}
overlap = "0s"
verify = [{{ type = "motherduck", interval = "10ms", deadline = "10s" }}]
destinations = [{{ store = "vault", path = "{VAULT_PATH}" }}]
"#,
            api = sim.base_url(),
            vault = proxy.url,
        ),
    )
    .unwrap();
    let release = proxy.arm(
        Match::VaultContains {
            method: "POST",
            path: format!("/v1/secret/delete/{VAULT_PATH}.lock"),
        },
        Answer::VaultUnavailable,
        1,
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(["rotate", POLICY])
        .current_dir(&dir)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(release.intercepted(), 1, "the first release attempt failed");
    // Every version of the lock is deleted: nobody holds it.
    let meta: Value = reqwest::Client::new()
        .get(format!("{}/v1/secret/metadata/{VAULT_PATH}.lock", bao.addr))
        .header("X-Vault-Token", &bao.root_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
}
