//! The rotation driver end to end, in process: the simulator (frozen clock),
//! the file store in a temporary directory, and a manual wall clock moved in
//! step with the simulator's. Each test drives `Driver::reconcile` pass by
//! pass and checks the stores and MotherDuck against the design's
//! invariants: the old token is revoked only after the new one is stored and
//! verified (1), a new token that cannot be stored is revoked (2), every
//! step resumes from the stores alone (3), one rotation per policy at a time
//! (4), and a failed verification restores the old token (5).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use motherduck_rotator::clock::Clock;
use motherduck_rotator::config::{self, Config, Env, Policy};
use motherduck_rotator::daemon;
use motherduck_rotator::metrics::Metrics;
use motherduck_rotator::motherduck::{Client, CreateTokenRequest, Endpoint, TokenCheck, TokenType};
use motherduck_rotator::rotation::driver::{Driver, Tick};
use motherduck_rotator::secret::{ExposeSecret, SecretString};
use motherduck_rotator::simulator::{
    Fault, IssuedToken, RunningSimulator, Simulator, SimulatorOptions,
};
use motherduck_rotator::verify::AckRegistry;

use crate::harness::client_with_token;

const T0: &str = "2026-03-01T12:00:00Z";
const SA: &str = "svc_etl";
const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// One destination with a bare-token file, in the `local` store.
const ONE_DEST: &str = r#"[{ store = "local", path = "etl.json", bare_token_file = "etl.token" }]"#;
/// Step retries without real waiting: a retryable failure is tried twice,
/// 1 ms apart, and a rolled-back rotation may retry 1 ms later.
const FAST_RETRY: &str = r#"{ max_attempts = 2, initial_backoff = "1ms", max_backoff = "2ms" }"#;
/// No step retries (so no real sleeps), and a long backoff after a
/// rollback, for tests that look at `retry_at`.
const SLOW_RETRY: &str = r#"{ max_attempts = 1, initial_backoff = "10m", max_backoff = "1h" }"#;

/// The admin token comes from a fake environment, never the process's.
struct FakeEnv(String);

impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        (name == "MDR_TEST_ADMIN").then(|| self.0.clone())
    }
}

/// The policy under test, as TOML.
struct PolicySpec {
    overlap: &'static str,
    verify: String,
    destinations: String,
    retry: &'static str,
    /// `token_ttl`, when set.
    ttl: Option<&'static str>,
}

impl PolicySpec {
    fn new(overlap: &'static str) -> PolicySpec {
        PolicySpec {
            overlap,
            verify: "[]".to_owned(),
            destinations: ONE_DEST.to_owned(),
            retry: FAST_RETRY,
            ttl: None,
        }
    }

    fn ttl(mut self, ttl: &'static str) -> PolicySpec {
        self.ttl = Some(ttl);
        self
    }

    fn verify(mut self, hooks: impl Into<String>) -> PolicySpec {
        self.verify = hooks.into();
        self
    }

    fn destinations(mut self, d: impl Into<String>) -> PolicySpec {
        self.destinations = d.into();
        self
    }

    fn retry(mut self, r: &'static str) -> PolicySpec {
        self.retry = r;
        self
    }
}

/// A simulator with a frozen clock, a temporary store directory, and a
/// manual clock for the driver that moves with the simulator's.
struct Fixture {
    root: PathBuf,
    running: RunningSimulator,
    /// An admin client with recorded (not slept) backoff and no rate limit.
    admin: Client,
    clock: Clock,
    orphan_min_age: &'static str,
}

impl Fixture {
    async fn new() -> Fixture {
        let t0: DateTime<Utc> = T0.parse().unwrap();
        let running = Simulator::spawn(SimulatorOptions {
            frozen_at: Some(t0),
            seed: Some(11),
        })
        .await
        .expect("simulator starts");
        running.sim.add_service_account(SA);
        let admin = client_with_token(&running.base_url(), running.admin_token.clone());
        let root =
            std::env::temp_dir().join(format!("mdr-engine-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).unwrap();
        Fixture {
            root,
            running,
            admin,
            clock: Clock::manual(t0),
            orphan_min_age: "0s",
        }
    }

    fn sim(&self) -> &Simulator {
        &self.running.sim
    }

    /// The `local` store's directory (created by the store, owner-only).
    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// A second store's directory, for two-destination policies.
    fn store2(&self) -> PathBuf {
        self.root.join("store2")
    }

    /// Moves the driver's clock and the simulator's together.
    fn advance(&self, d: Duration) {
        self.clock.advance(chrono::Duration::from_std(d).unwrap());
        self.sim().advance(d);
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn config(&self, spec: &PolicySpec) -> Config {
        self.config_with_id(spec, "engine-a")
    }

    /// A freshly parsed configuration: every call builds new destination
    /// values, as a restarted or second daemon would.
    fn config_with_id(&self, spec: &PolicySpec, instance_id: &str) -> Config {
        let src = format!(
            r#"
[motherduck]
api_url = "{url}"
admin_token = {{ env = "MDR_TEST_ADMIN" }}

[daemon]
listen = "127.0.0.1:0"
orphan_min_age = "{age}"
lock_retry_interval = "1s"
instance_id = "{instance_id}"

[stores.local]
type = "file"
directory = "{store}"

[stores.second]
type = "file"
directory = "{store2}"

[[policy]]
name = "etl"
service_account = "{SA}"
schedule = {{ interval = "1h" }}
overlap = "{overlap}"
verify = {verify}
destinations = {destinations}
retry = {retry}
{ttl}
"#,
            ttl = spec
                .ttl
                .map(|t| format!("token_ttl = \"{t}\""))
                .unwrap_or_default(),
            url = self.running.base_url(),
            age = self.orphan_min_age,
            store = self.store().display(),
            store2 = self.store2().display(),
            overlap = spec.overlap,
            verify = spec.verify,
            destinations = spec.destinations,
            retry = spec.retry,
        );
        let env = FakeEnv(self.running.admin_token.expose_secret().to_owned());
        config::parse(&self.root.join("config.toml"), &src, &env)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"))
    }

    /// The daemon's driver for `config`, with the fixture's clock and a
    /// client that records its backoff instead of sleeping.
    fn driver(&self, config: &Config) -> Driver {
        let mut d = daemon::driver_for(
            config,
            self.clock.clone(),
            Arc::new(Metrics::new()),
            AckRegistry::default(),
        )
        .unwrap();
        d.client = self.admin.clone();
        d.verify.motherduck = self.admin.clone();
        d
    }

    /// A fresh configuration and driver: a restarted daemon.
    fn restart(&self, spec: &PolicySpec) -> (Driver, Policy) {
        let config = self.config(spec);
        let driver = self.driver(&config);
        (driver, config.policies[0].clone())
    }

    /// The current record of a destination file in the `local` store.
    fn record(&self, file: &str) -> Value {
        read_json(&self.store().join(file)).unwrap_or_else(|| panic!("no record `{file}`"))
    }

    fn current(&self) -> Value {
        self.record("etl.json")
    }

    fn bare(&self) -> String {
        std::fs::read_to_string(self.store().join("etl.token"))
            .unwrap()
            .trim_end()
            .to_owned()
    }

    /// Every token ever issued to the service account, in order.
    fn issued(&self) -> Vec<IssuedToken> {
        self.sim()
            .issued_tokens()
            .into_iter()
            .filter(|t| t.username == SA)
            .collect()
    }

    fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .sim()
            .live_tokens(SA)
            .into_iter()
            .map(|t| t.id)
            .collect();
        ids.sort();
        ids
    }

    fn is_live(&self, id: &str) -> bool {
        self.live_ids().iter().any(|l| l == id)
    }

    fn revoked(&self, id: &str) -> bool {
        self.issued()
            .iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("token `{id}` was never issued"))
            .revoked_at
            .is_some()
    }

    /// Creates a token through the API, as something other than a rotation
    /// of this daemon would (or as a rotation whose secret was lost).
    async fn create_raw(&self, name: &str) -> String {
        self.admin
            .create_token(
                SA,
                &CreateTokenRequest {
                    name: name.to_owned(),
                    ttl: None,
                    token_type: TokenType::ReadWrite,
                    description: None,
                },
            )
            .await
            .unwrap()
            .info
            .id
    }

    /// The stored secret authenticates at MotherDuck: nothing was lost or
    /// mangled on the way to the store.
    async fn assert_stored_token_works(&self) {
        let secret = SecretString::from(str_of(&self.current(), "token").to_owned());
        let check = self.admin.check_token(&secret).await.unwrap();
        assert_eq!(
            check,
            TokenCheck::ValidNonAdmin,
            "the stored token must authenticate"
        );
        assert_eq!(
            self.bare(),
            str_of(&self.current(), "token"),
            "bare file = current"
        );
    }

    /// Outside an overlap period: exactly the stored token is live, no
    /// rotation is unfinished, and the sweep finds nothing.
    async fn assert_settled(&self, driver: &Driver, policy: &Policy) {
        let cur = self.current();
        assert_eq!(
            self.live_ids(),
            vec![str_of(&cur, "token_id").to_owned()],
            "exactly the stored token is live"
        );
        let state = journal_state(&cur);
        assert!(
            state == "done" || state == "rolled_back",
            "no rotation is unfinished, journal: {}",
            cur["rotation"]
        );
        assert!(!self.store().join("etl.json.pending").exists());
        self.assert_no_orphans(driver, policy).await;
        self.assert_stored_token_works().await;
    }

    /// Every live token named by this policy is referenced by a record,
    /// and a dry-run sweep agrees.
    async fn assert_no_orphans(&self, driver: &Driver, policy: &Policy) {
        let referenced = self.referenced_ids();
        for t in self.sim().live_tokens(SA) {
            if policy.rotation_id_of(&t.name).is_some() {
                assert!(
                    referenced.contains(&t.id),
                    "live token `{}` ({}) is referenced by no record",
                    t.id,
                    t.name
                );
            }
        }
        let found = driver
            .sweep(policy, true)
            .await
            .unwrap()
            .expect("lock is free");
        assert!(found.is_empty(), "the sweep finds orphans: {found:?}");
    }

    /// Token ids in every record file of both stores.
    fn referenced_ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        for dir in [self.store(), self.store2()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || name.ends_with(".lock") || name.ends_with(".token") {
                    continue;
                }
                if let Some(v) = read_json(&e.path()) {
                    out.push(str_of(&v, "token_id").to_owned());
                }
            }
        }
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for d in [self.store(), self.store2()] {
            thaw(&d);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn read_json(path: &Path) -> Option<Value> {
    let bytes = std::fs::read(path).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("field `{field}` missing in {v}"))
}

fn journal_state(v: &Value) -> &str {
    v["rotation"]["state"].as_str().unwrap_or("none")
}

fn ts(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap()
}

/// Reconciles once, without `force`, expecting success.
async fn pass(driver: &Driver, policy: &Policy) -> Tick {
    driver
        .reconcile(policy, false, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("reconcile failed: {e}"))
}

/// Runs passes until the first rotation is complete (`done`).
async fn first_token(fx: &Fixture, driver: &Driver, policy: &Policy) -> String {
    pass(driver, policy).await;
    if journal_state(&fx.current()) != "done" {
        // The first token waits out the overlap like any other.
        fx.advance(policy.overlap);
        pass(driver, policy).await;
    }
    assert_eq!(journal_state(&fx.current()), "done");
    str_of(&fx.current(), "token_id").to_owned()
}

/// Makes a directory unwritable. Tests may run as root, for whom mode
/// bits do not stop writes; then the immutable attribute does.
fn freeze(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    if writable(dir) {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && !writable(dir),
            "cannot make `{}` unwritable: mode 0500 does not stop this user and `chattr +i` failed (needs e2fsprogs and CAP_LINUX_IMMUTABLE)",
            dir.display()
        );
    }
}

fn thaw(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".writable-{}", uuid::Uuid::new_v4().simple()));
    let ok = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// A verification endpoint the test controls: answers `status`, counts
/// requests, and records what the world looked like at each request.
struct Probe {
    url: String,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probe {
    /// `on_hit` runs inside each request, before the answer.
    async fn start(on_hit: impl Fn() + Send + Sync + 'static) -> Probe {
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h, f) = (status.clone(), hits.clone(), Arc::new(on_hit));
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let (s, h, f) = (s.clone(), h.clone(), f.clone());
                async move {
                    f();
                    h.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Probe {
            url,
            status,
            hits,
            task,
        }
    }

    fn set_status(&self, s: u16) {
        self.status.store(s, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The hook as a TOML inline table, polling every 10 ms for up to
    /// `deadline`.
    fn hook_entry(&self, deadline: &str) -> String {
        format!(
            r#"{{ type = "http", url = "{}", interval = "10ms", deadline = "{deadline}", request_timeout = "{deadline}" }}"#,
            self.url
        )
    }

    /// The policy's `verify` list with only this hook.
    fn hook(&self, deadline: &str) -> String {
        format!("[{}]", self.hook_entry(deadline))
    }
}

// ---------------------------------------------------------------------------
// 1. The happy path
// ---------------------------------------------------------------------------

/// What the probe saw while the second rotation was being verified.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AtVerify {
    live: Vec<String>,
    current_token_id: String,
    state: String,
}

#[tokio::test]
async fn happy_path_first_token_then_rotation_then_revocation_after_overlap() {
    let fx = Fixture::new().await;
    let seen: Arc<Mutex<Vec<AtVerify>>> = Arc::default();
    let probe = {
        let (sim, store, seen) = (fx.sim().clone(), fx.store(), seen.clone());
        Probe::start(move || {
            let cur = read_json(&store.join("etl.json")).unwrap();
            let mut live: Vec<String> = sim.live_tokens(SA).into_iter().map(|t| t.id).collect();
            live.sort();
            seen.lock().unwrap().push(AtVerify {
                live,
                current_token_id: str_of(&cur, "token_id").to_owned(),
                state: journal_state(&cur).to_owned(),
            });
        })
        .await
    };
    let builtin = r#"{ type = "motherduck", interval = "10ms", deadline = "5s" }"#;
    let hooks = format!("[{}, {builtin}]", probe.hook_entry("5s"));
    let spec = PolicySpec::new("10m").verify(hooks);
    let (driver, policy) = fx.restart(&spec);
    let t0 = fx.now();

    // First run: no token stored yet, so one is created at once.
    let tick = pass(&driver, &policy).await;
    let cur = fx.current();
    let first = str_of(&cur, "token_id").to_owned();
    assert_eq!(fx.live_ids(), vec![first.clone()]);
    assert_eq!(fx.issued().len(), 1);
    assert!(cur["rotation"]["previous_token_id"].is_null());
    // With no old token there is no overlap to wait out.
    assert_eq!(journal_state(&cur), "done");
    assert_eq!(fx.bare(), str_of(&cur, "token"));
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == t0 + chrono::Duration::hours(1)),
        "{tick:?}"
    );
    fx.assert_settled(&driver, &policy).await;

    // Not due yet: a pass changes nothing.
    fx.advance(50 * MINUTE);
    pass(&driver, &policy).await;
    assert_eq!(fx.issued().len(), 1);

    // Past the interval: the second token replaces the first.
    fx.advance(10 * MINUTE);
    let rotated_at = fx.now();
    seen.lock().unwrap().clear();
    let tick = pass(&driver, &policy).await;
    let cur = fx.current();
    let second = str_of(&cur, "token_id").to_owned();
    assert_ne!(second, first);
    assert_eq!(fx.issued().len(), 2, "exactly one new token");
    assert_eq!(journal_state(&cur), "verified");
    assert_eq!(str_of(&cur["rotation"], "previous_token_id"), first);
    assert_eq!(str_of(&cur["rotation"], "new_token_id"), second);
    assert_eq!(
        ts(&cur["rotation"]["revoke_after"]),
        rotated_at + chrono::Duration::minutes(10)
    );
    assert_eq!(fx.bare(), str_of(&cur, "token"), "bare token file updated");
    let previous = fx.record("etl.json.previous");
    assert_eq!(
        str_of(&previous, "token_id"),
        first,
        "old record kept until revoked"
    );
    // The overlap: both tokens live.
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(fx.live_ids(), both);
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == rotated_at + chrono::Duration::minutes(10))
    );

    // Invariant 1, observed from the verification hook: while the new token
    // was being verified it was already the stored current token, and the
    // old one was still live.
    let seen_now = seen.lock().unwrap().clone();
    assert!(!seen_now.is_empty(), "the probe was called");
    for s in &seen_now {
        assert_eq!(s.current_token_id, second);
        assert_eq!(s.state, "promoted");
        assert_eq!(s.live, both, "the old token is live during verification");
    }
    assert!(probe.hits() >= 1);

    // Within the overlap nothing is revoked, however often we look.
    fx.advance(9 * MINUTE);
    pass(&driver, &policy).await;
    assert_eq!(fx.live_ids(), both);

    // After the overlap the old token is revoked and the rotation is done.
    fx.advance(MINUTE);
    let tick = pass(&driver, &policy).await;
    assert!(fx.revoked(&first));
    assert_eq!(fx.live_ids(), vec![second.clone()]);
    let cur = fx.current();
    assert_eq!(journal_state(&cur), "done");
    assert_eq!(str_of(&cur, "token_id"), second);
    assert!(!fx.store().join("etl.json.previous").exists());
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == rotated_at + chrono::Duration::hours(1))
    );
    fx.assert_settled(&driver, &policy).await;
}

// ---------------------------------------------------------------------------
// 2. Verification failure → rollback
// ---------------------------------------------------------------------------

/// The probe hook twice: with a generous deadline for the passes meant to
/// succeed (a loaded machine may answer slowly), and with a short one for
/// the passes meant to fail (they wait out the whole deadline).
fn probe_specs(probe: &Probe) -> (PolicySpec, PolicySpec) {
    let spec = |deadline| {
        PolicySpec::new("0s")
            .verify(probe.hook(deadline))
            .retry(SLOW_RETRY)
    };
    (spec("10s"), spec("60ms"))
}

#[tokio::test]
async fn failed_verification_restores_the_old_token_revokes_the_new_and_backs_off() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    let (ok, failing) = probe_specs(&probe);
    let (driver, policy) = fx.restart(&ok);
    let old = first_token(&fx, &driver, &policy).await;
    let old_secret = str_of(&fx.current(), "token").to_owned();

    // The application stops answering 200: the new token fails verification.
    probe.set_status(500);
    let (driver, policy) = fx.restart(&failing);
    fx.advance(HOUR);
    let failed_at = fx.now();
    let tick = pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 2, "one attempt");
    let new = issued[1].id.clone();
    assert!(fx.revoked(&new), "the new token is revoked");
    assert!(fx.is_live(&old), "the old token stays live");
    let cur = fx.current();
    assert_eq!(
        str_of(&cur, "token_id"),
        old,
        "the old token is current again"
    );
    assert_eq!(str_of(&cur, "token"), old_secret);
    assert_eq!(
        fx.bare(),
        old_secret,
        "the bare file holds the old token again"
    );
    let j = &cur["rotation"];
    assert_eq!(journal_state(&cur), "rolled_back");
    assert_eq!(str_of(j, "new_token_id"), new);
    assert_eq!(j["failures"], 1);
    let last_error = str_of(j, "last_error");
    assert!(last_error.starts_with("verify: http hook"), "{last_error}");
    assert!(!last_error.contains(&old_secret));
    let retry_at = ts(&j["retry_at"]);
    assert_eq!(retry_at, failed_at + chrono::Duration::minutes(10));
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == retry_at),
        "{tick:?}"
    );
    assert!(!fx.store().join("etl.json.previous").exists());
    assert!(!fx.store().join("etl.json.pending").exists());
    fx.assert_settled(&driver, &policy).await;

    // Before the retry time nothing happens, even though the schedule is due.
    probe.set_status(200);
    let (driver, policy) = fx.restart(&ok);
    fx.advance(5 * MINUTE);
    let tick = pass(&driver, &policy).await;
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == retry_at),
        "{tick:?}"
    );
    assert_eq!(fx.issued().len(), 2);

    // At the retry time it tries again, and succeeds.
    fx.advance(5 * MINUTE);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 3);
    let third = issued[2].id.clone();
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), third);
    assert_eq!(journal_state(&cur), "done");
    assert_eq!(
        cur["rotation"]["failures"], 0,
        "success resets the failure count"
    );
    assert!(fx.revoked(&old));
    fx.assert_settled(&driver, &policy).await;
}

/// Regression (invariant 10): a failed verification restored the previous
/// token without asking whether it still worked. When an operator had
/// revoked it (a leak), the rollback made a dead token current everywhere
/// and revoked the only live one.
#[tokio::test]
async fn a_failed_verification_keeps_the_new_token_when_the_old_one_is_dead() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    let (ok, failing) = probe_specs(&probe);
    let (driver, policy) = fx.restart(&ok);
    let old = first_token(&fx, &driver, &policy).await;
    // The old token leaked and an operator revoked it; the application is
    // down, so the replacement fails verification.
    fx.admin.revoke_token(SA, &old).await.unwrap();
    probe.set_status(500);
    let (driver, policy) = fx.restart(&failing);
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 2, "one attempt");
    let new = issued[1].id.clone();
    assert!(fx.is_live(&new), "the new token is not revoked");
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), new, "the new token stays current");
    assert_eq!(fx.bare(), str_of(&cur, "token"));
    assert_eq!(journal_state(&cur), "done");
    fx.assert_stored_token_works().await;
    fx.assert_settled(&driver, &policy).await;
}

/// The same when the old token expired meanwhile: the rollback checks its
/// expiry, not only whether it was revoked.
#[tokio::test]
async fn a_failed_verification_keeps_the_new_token_when_the_old_one_expired() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    let (ok, failing) = probe_specs(&probe);
    let ok = ok.ttl("2h");
    let failing = failing.ttl("2h");
    let (driver, policy) = fx.restart(&ok);
    let old = first_token(&fx, &driver, &policy).await;
    probe.set_status(500);
    let (driver, policy) = fx.restart(&failing);
    fx.advance(2 * HOUR + MINUTE);
    assert!(!fx.is_live(&old), "the old token expired");
    pass(&driver, &policy).await;
    let new = fx.issued()[1].id.clone();
    assert!(fx.is_live(&new), "the new token is not revoked");
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), new, "the new token stays current");
    assert_eq!(journal_state(&cur), "done");
}

#[tokio::test]
async fn consecutive_failed_verifications_back_off_longer() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    let (ok, failing) = probe_specs(&probe);
    let (driver, policy) = fx.restart(&ok);
    let old = first_token(&fx, &driver, &policy).await;
    probe.set_status(503);
    let (driver, policy) = fx.restart(&failing);
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let j = fx.current()["rotation"].clone();
    assert_eq!(j["failures"], 1);
    fx.advance(10 * MINUTE);
    let second_failure = fx.now();
    pass(&driver, &policy).await;
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), old);
    assert_eq!(cur["rotation"]["failures"], 2);
    assert_eq!(
        ts(&cur["rotation"]["retry_at"]),
        second_failure + chrono::Duration::minutes(20),
        "the backoff doubles"
    );
    assert_eq!(fx.live_ids(), vec![old]);
    fx.assert_no_orphans(&driver, &policy).await;
}

/// A policy whose first token keeps failing verification has no stored
/// record to carry its failure count; the running driver remembers it, so
/// the retries still back off longer each time.
#[tokio::test]
async fn a_first_token_that_keeps_failing_backs_off_longer() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    probe.set_status(503);
    let (_, failing) = probe_specs(&probe);
    let (driver, policy) = fx.restart(&failing);
    let mut gaps = Vec::new();
    for _ in 0..3 {
        let started = fx.now();
        let Tick::Wait { until, .. } = pass(&driver, &policy).await else {
            panic!("a failed first rotation waits for its retry");
        };
        gaps.push((until - started).num_minutes());
        // A pass before the retry time (the daemon re-reads its policies
        // every few minutes) waits for it and creates nothing.
        let issued = fx.issued().len();
        fx.advance(5 * MINUTE);
        let tick = pass(&driver, &policy).await;
        assert_eq!(
            tick,
            Tick::Wait {
                until,
                why: "retry after a failed rotation".into()
            }
        );
        assert_eq!(fx.issued().len(), issued, "no token before the retry time");
        fx.advance((until - fx.now()).to_std().unwrap());
    }
    assert_eq!(gaps, vec![10, 20, 40], "the backoff doubles");
    assert!(
        fx.live_ids().is_empty(),
        "every unverified token was revoked"
    );
    assert_eq!(fx.issued().len(), 3);
}

// ---------------------------------------------------------------------------
// 3. MotherDuck failures at each step
// ---------------------------------------------------------------------------

#[tokio::test]
async fn create_failing_keeps_the_old_token_and_retries_later() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s").retry(SLOW_RETRY);
    let (driver, policy) = fx.restart(&spec);
    let old = first_token(&fx, &driver, &policy).await;

    fx.sim()
        .fail_next(Endpoint::CreateToken, 100, Fault::Status(500));
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    assert_eq!(fx.issued().len(), 1, "no token was created");
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), old);
    assert_eq!(journal_state(&cur), "rolled_back");
    assert!(str_of(&cur["rotation"], "last_error").starts_with("create: "));
    assert_eq!(cur["rotation"]["failures"], 1);
    fx.assert_settled(&driver, &policy).await;

    // MotherDuck recovers; after the backoff the rotation goes through.
    fx.sim().clear_faults();
    fx.advance(10 * MINUTE);
    pass(&driver, &policy).await;
    assert_eq!(fx.issued().len(), 2);
    assert!(fx.revoked(&old));
    assert_eq!(journal_state(&fx.current()), "done");
    fx.assert_settled(&driver, &policy).await;
}

#[tokio::test]
async fn create_answer_lost_after_commit_leaves_no_second_live_token() {
    let fx = Fixture::new().await;
    let (driver, policy) = fx.restart(&PolicySpec::new("0s"));
    let old = first_token(&fx, &driver, &policy).await;

    // The server creates the token but the answer is lost: its secret is
    // gone, so that token must not survive.
    fx.sim()
        .fail_next(Endpoint::CreateToken, 1, Fault::StatusAfterCommit(502));
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 3, "old, the lost one, the stored one");
    let (lost, new) = (&issued[1], &issued[2]);
    assert!(
        lost.revoked_at.is_some(),
        "the token whose secret was lost is revoked"
    );
    assert_eq!(lost.name, new.name, "the retry reused the rotation's name");
    assert_eq!(str_of(&fx.current(), "token_id"), new.id);
    assert!(fx.revoked(&old));
    fx.assert_settled(&driver, &policy).await;
}

#[tokio::test]
async fn revoking_the_old_token_failing_keeps_the_new_one_and_resumes() {
    let fx = Fixture::new().await;
    let (driver, policy) = fx.restart(&PolicySpec::new("10m"));
    let old = first_token(&fx, &driver, &policy).await;
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let new = str_of(&fx.current(), "token_id").to_owned();
    assert_ne!(new, old);

    fx.advance(10 * MINUTE);
    fx.sim()
        .fail_next(Endpoint::RevokeToken, 100, Fault::Status(500));
    let err = driver
        .reconcile(&policy, false, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revoke_old"), "{err}");
    // Verified and stored, so nothing is rolled back: the new token stays
    // current and the old one stays live until the revoke succeeds.
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), new);
    assert_eq!(journal_state(&cur), "verified");
    assert!(fx.is_live(&old) && fx.is_live(&new));
    fx.assert_stored_token_works().await;

    fx.sim().clear_faults();
    pass(&driver, &policy).await;
    assert!(fx.revoked(&old));
    assert_eq!(journal_state(&fx.current()), "done");
    fx.assert_settled(&driver, &policy).await;
}

#[tokio::test]
async fn builtin_check_failing_beyond_its_deadline_rolls_back() {
    let fx = Fixture::new().await;
    let check = |deadline: &str| {
        PolicySpec::new("0s")
            .verify(format!(
                r#"[{{ type = "motherduck", interval = "10ms", deadline = "{deadline}" }}]"#
            ))
            .retry(SLOW_RETRY)
    };
    let (driver, policy) = fx.restart(&check("10s"));
    let old = first_token(&fx, &driver, &policy).await;

    fx.sim()
        .fail_next(Endpoint::ActiveAccounts, 10_000, Fault::Status(500));
    let (driver, policy) = fx.restart(&check("60ms"));
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    fx.sim().clear_faults();
    let issued = fx.issued();
    assert_eq!(issued.len(), 2);
    assert!(fx.revoked(&issued[1].id), "the unverified token is revoked");
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), old);
    assert_eq!(journal_state(&cur), "rolled_back");
    assert!(
        str_of(&cur["rotation"], "last_error").starts_with("verify: motherduck hook"),
        "{}",
        cur["rotation"]
    );
    fx.assert_settled(&driver, &policy).await;
}

// ---------------------------------------------------------------------------
// 4. Store failures at each step
// ---------------------------------------------------------------------------

/// Two destinations: `local` (which also holds the lock) and `second`.
fn two_dests() -> String {
    r#"[{ store = "local", path = "etl.json", bare_token_file = "etl.token" }, { store = "second", path = "etl.json" }]"#
        .to_owned()
}

/// Regression: a verified rotation whose second destination lost its
/// record (a restored backup, a restarted dev server) was "inconsistent"
/// at every pass: the old token was never revoked, no rotation started
/// again, and nothing alerted. The verified token is written there too,
/// and the old token is revoked only then.
#[tokio::test]
async fn a_verified_rotation_repairs_a_destination_that_lost_its_record() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("30m").destinations(two_dests());
    let (driver, policy) = fx.restart(&spec);
    let old = first_token(&fx, &driver, &policy).await;

    // A rotation, verified, waiting out its overlap.
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let new = fx.issued()[1].id.clone();
    assert_eq!(journal_state(&fx.current()), "verified");
    // The second destination loses everything.
    for f in ["etl.json", "etl.json.previous"] {
        let _ = std::fs::remove_file(fx.store2().join(f));
    }
    let tick = pass(&driver, &policy).await;
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    let second = read_json(&fx.store2().join("etl.json")).expect("written again");
    assert_eq!(str_of(&second, "token_id"), new);
    assert_eq!(str_of(&second, "token"), str_of(&fx.current(), "token"));
    assert!(fx.is_live(&old), "the overlap still runs");

    // The overlap ends (before the next rotation is due): the old token
    // goes, both hold the new one.
    fx.advance(31 * MINUTE);
    pass(&driver, &policy).await;
    assert!(fx.revoked(&old));
    let second = read_json(&fx.store2().join("etl.json")).unwrap();
    assert_eq!(journal_state(&second), "done");
    assert_eq!(journal_state(&fx.current()), "done");
    fx.assert_settled(&driver, &policy).await;
}

#[tokio::test]
async fn stage_failing_in_one_destination_revokes_the_new_token() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s").destinations(two_dests());
    let (driver, policy) = fx.restart(&spec);
    let old = first_token(&fx, &driver, &policy).await;
    assert_eq!(
        str_of(
            &read_json(&fx.store2().join("etl.json")).unwrap(),
            "token_id"
        ),
        old
    );

    // The second store's directory becomes group-readable: the store
    // refuses to write a secret there (a permanent error, no retry).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(fx.store2(), std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 2);
    let new = &issued[1].id;
    assert!(
        fx.revoked(new),
        "invariant 2: an unstorable token is revoked"
    );
    assert_eq!(fx.live_ids(), vec![old.clone()]);
    for dir in [fx.store(), fx.store2()] {
        let cur = read_json(&dir.join("etl.json")).unwrap();
        assert_eq!(str_of(&cur, "token_id"), old, "{}", dir.display());
        assert_eq!(journal_state(&cur), "rolled_back");
        assert!(
            str_of(&cur["rotation"], "last_error").starts_with("stage: "),
            "{}",
            cur["rotation"]
        );
        assert!(!dir.join("etl.json.pending").exists(), "{}", dir.display());
    }
    fx.assert_settled(&driver, &policy).await;
}

/// Regression: a store that cannot be written at all at stage time made
/// the rollback fail too, and the driver then skipped revoking the new
/// token, whose secret existed only in memory (invariant 2).
#[tokio::test]
async fn regression_unwritable_store_at_stage_still_revokes_the_new_token() {
    let fx = Fixture::new().await;
    let (driver, policy) = fx.restart(&PolicySpec::new("0s"));
    let old = first_token(&fx, &driver, &policy).await;

    freeze(&fx.store());
    fx.advance(HOUR);
    let err = driver
        .reconcile(&policy, false, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("rollback incomplete"), "{err}");
    let issued = fx.issued();
    assert_eq!(issued.len(), 2);
    assert!(fx.revoked(&issued[1].id), "the unstorable token is revoked");
    assert_eq!(fx.live_ids(), vec![old.clone()]);
    assert_eq!(str_of(&fx.current(), "token_id"), old);

    // Once the store is writable again the next pass rotates normally.
    thaw(&fx.store());
    pass(&driver, &policy).await;
    assert_eq!(fx.issued().len(), 3);
    assert!(fx.revoked(&old));
    fx.assert_settled(&driver, &policy).await;
}

/// A record file name this long (209 bytes) leaves room for the store's
/// temporary file of `P.pending` (255 bytes, the usual NAME_MAX) but not
/// for that of `P.previous` (256 bytes): staging works, promoting over an
/// existing token fails on every attempt, and the rollback (which writes
/// only `P`) works. A promote-only store failure, without timing tricks.
fn promote_breaking_name() -> String {
    "p".repeat(204) + ".json"
}

#[tokio::test]
async fn promote_failing_rolls_back_to_the_old_token() {
    let fx = Fixture::new().await;
    let name = promote_breaking_name();
    assert_eq!(name.len(), 209);
    // The trick needs NAME_MAX = 255 (ext4, xfs, btrfs, tmpfs, overlayfs).
    let probe = |len: usize| {
        let p = fx.root.join("n".repeat(len));
        let ok = std::fs::write(&p, b"").is_ok();
        let _ = std::fs::remove_file(&p);
        ok
    };
    assert!(
        probe(255) && !probe(256),
        "the temporary directory's file system does not have NAME_MAX 255; this test cannot break promotion alone there"
    );
    let spec = PolicySpec::new("0s").destinations(format!(
        r#"[{{ store = "local", path = "{name}", bare_token_file = "etl.token" }}]"#
    ));
    let (driver, policy) = fx.restart(&spec);
    pass(&driver, &policy).await;
    let cur = fx.record(&name);
    assert_eq!(journal_state(&cur), "done");
    let old = str_of(&cur, "token_id").to_owned();
    let old_secret = str_of(&cur, "token").to_owned();

    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 2);
    assert!(fx.revoked(&issued[1].id), "the unpromoted token is revoked");
    assert_eq!(fx.live_ids(), vec![old.clone()]);
    let cur = fx.record(&name);
    assert_eq!(str_of(&cur, "token_id"), old);
    assert_eq!(journal_state(&cur), "rolled_back");
    assert!(
        str_of(&cur["rotation"], "last_error").starts_with("promote: "),
        "{}",
        cur["rotation"]
    );
    assert_eq!(fx.bare(), old_secret);
    assert!(!fx.store().join(format!("{name}.pending")).exists());
    fx.assert_no_orphans(&driver, &policy).await;
}

#[tokio::test]
async fn finish_failing_leaves_the_new_token_current_and_resumes() {
    let fx = Fixture::new().await;
    let (driver, policy) = fx.restart(&PolicySpec::new("10m"));
    let old = first_token(&fx, &driver, &policy).await;
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let new = str_of(&fx.current(), "token_id").to_owned();

    fx.advance(10 * MINUTE);
    freeze(&fx.store());
    let err = driver
        .reconcile(&policy, false, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("finish"), "{err}");
    // The old token was revoked (verified, stored, overlap over) but the
    // journal could not record it: the new token stays current.
    assert!(fx.revoked(&old));
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), new);
    assert_eq!(journal_state(&cur), "verified");
    assert_eq!(fx.live_ids(), vec![new.clone()]);
    fx.assert_stored_token_works().await;

    // The repeat treats the already revoked token as done (404).
    thaw(&fx.store());
    pass(&driver, &policy).await;
    assert_eq!(journal_state(&fx.current()), "done");
    assert!(!fx.store().join("etl.json.previous").exists());
    assert_eq!(fx.issued().len(), 2);
    fx.assert_settled(&driver, &policy).await;
}

// ---------------------------------------------------------------------------
// 5. Two drivers on one store
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_drivers_on_one_store_rotate_once_per_slot() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s");
    let ca = fx.config_with_id(&spec, "replica-a");
    let cb = fx.config_with_id(&spec, "replica-b");
    let (a, b) = (fx.driver(&ca), fx.driver(&cb));
    let (pa, pb) = (ca.policies[0].clone(), cb.policies[0].clone());
    let cancel = CancellationToken::new();

    for slot in 0..4 {
        if slot > 0 {
            fx.advance(HOUR);
        }
        let (ra, rb) = tokio::join!(
            a.reconcile(&pa, false, &cancel),
            b.reconcile(&pb, false, &cancel)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(
            !matches!(ra, Tick::Stopped) && !matches!(rb, Tick::Stopped),
            "{ra:?} {rb:?}"
        );
        // A replica that found the lock taken looks again later; do so now.
        for (d, p, r) in [(&a, &pa, &ra), (&b, &pb, &rb)] {
            if matches!(r, Tick::Busy { .. }) {
                pass(d, p).await;
            }
        }
        assert_eq!(fx.issued().len(), slot + 1, "one rotation in slot {slot}");
        fx.assert_settled(&a, &pa).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_driver_is_kept_out_while_the_first_verifies() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    let spec = PolicySpec::new("0s").verify(probe.hook("20s"));
    let ca = fx.config_with_id(&spec, "replica-a");
    let cb = fx.config_with_id(&spec, "replica-b");
    let (a, b) = (fx.driver(&ca), fx.driver(&cb));
    let (pa, pb) = (ca.policies[0].clone(), cb.policies[0].clone());
    let old = first_token(&fx, &a, &pa).await;

    // Replica A rotates and sits in verification until the probe says 200.
    probe.set_status(503);
    fx.advance(HOUR);
    let hits = probe.hits();
    let task = {
        let (a, pa) = (a.clone(), pa.clone());
        tokio::spawn(async move { a.reconcile(&pa, false, &CancellationToken::new()).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while probe.hits() == hits {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never reached verification"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(journal_state(&fx.current()), "promoted");

    // Replica B sees the unfinished rotation but may not touch it.
    let tick = b
        .reconcile(&pb, false, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(tick, Tick::Busy { .. }), "{tick:?}");
    let forced = b
        .reconcile(&pb, true, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(forced, Tick::Busy { .. }), "{forced:?}");
    assert_eq!(fx.issued().len(), 2, "B created nothing");

    probe.set_status(200);
    let tick = task.await.unwrap().unwrap();
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    assert_eq!(fx.issued().len(), 2);
    assert!(fx.revoked(&old));
    // B now finds nothing to do.
    pass(&b, &pb).await;
    assert_eq!(fx.issued().len(), 2);
    fx.assert_settled(&b, &pb).await;
}

// ---------------------------------------------------------------------------
// 6. Restarts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn restarts_never_skip_or_double_a_rotation() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s");
    // Every pass is made by a freshly started daemon.
    let (d, p) = fx.restart(&spec);
    pass(&d, &p).await;
    assert_eq!(fx.issued().len(), 1);

    let mut last_rotation = fx.now();
    for slot in 1..=3 {
        // Exactly at the slot.
        fx.advance(
            (last_rotation + chrono::Duration::hours(1) - fx.now())
                .to_std()
                .unwrap(),
        );
        last_rotation = fx.now();
        let (d, p) = fx.restart(&spec);
        pass(&d, &p).await;
        // Restarted again within the same slot: nothing more happens.
        let (d, p) = fx.restart(&spec);
        pass(&d, &p).await;
        fx.advance(30 * MINUTE);
        let (d, p) = fx.restart(&spec);
        pass(&d, &p).await;
        assert_eq!(fx.issued().len(), 1 + slot, "exactly one rotation per slot");
        // One second before the next slot: still nothing.
        fx.advance(30 * MINUTE - Duration::from_secs(1));
        let (d, p) = fx.restart(&spec);
        pass(&d, &p).await;
        assert_eq!(fx.issued().len(), 1 + slot, "not early");
        fx.assert_settled(&d, &p).await;
    }

    // Down for three intervals: the missed slots amount to one rotation.
    fx.advance(3 * HOUR);
    let before = fx.issued().len();
    let (d, p) = fx.restart(&spec);
    pass(&d, &p).await;
    assert_eq!(fx.issued().len(), before + 1, "one catch-up rotation");
    let (d, p) = fx.restart(&spec);
    let tick = pass(&d, &p).await;
    assert_eq!(fx.issued().len(), before + 1, "and only one");
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == fx.now() + chrono::Duration::hours(1)),
        "the next slot counts from the catch-up rotation: {tick:?}"
    );
    fx.assert_settled(&d, &p).await;
}

// ---------------------------------------------------------------------------
// 7. Orphan sweep
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sweep_revokes_only_unreferenced_old_enough_tokens_of_the_policy() {
    let mut fx = Fixture::new().await;
    fx.orphan_min_age = "10m";
    let spec = PolicySpec::new("0s");
    let (driver, policy) = fx.restart(&spec);
    let stored = first_token(&fx, &driver, &policy).await;

    // A token named like one of this policy's rotations, but stored nowhere
    // (a crash between create and stage), and tokens that are not ours.
    let orphan = fx
        .create_raw(&policy.token_name("0190aaaabbbbccccdddd"))
        .await;
    let foreign = fx.create_raw("hand-made-token").await;
    let other_policy = fx.create_raw("rotator.other.0190aaaabbbbccccdddd").await;
    let same_stem_with_dot = fx
        .create_raw(&format!("{}x.y", policy.token_name_stem()))
        .await;

    // Too young: spared.
    let found = driver.sweep(&policy, true).await.unwrap().unwrap();
    assert!(found.is_empty(), "{found:?}");

    fx.advance(11 * MINUTE);
    let young = fx.create_raw(&policy.token_name("0190eeeeffff")).await;
    let found = driver.sweep(&policy, true).await.unwrap().unwrap();
    let ids: Vec<&str> = found.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec![orphan.as_str()], "dry run lists the orphan");
    assert!(fx.is_live(&orphan), "dry run revokes nothing");

    let found = driver.sweep(&policy, false).await.unwrap().unwrap();
    let ids: Vec<&str> = found.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec![orphan.as_str()]);
    assert!(fx.revoked(&orphan));
    for id in [
        &stored,
        &foreign,
        &other_policy,
        &same_stem_with_dot,
        &young,
    ] {
        assert!(fx.is_live(id), "`{id}` must be untouched");
    }
    assert!(
        driver
            .sweep(&policy, false)
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );

    // Once old enough, the young one goes too.
    fx.advance(10 * MINUTE);
    let found = driver.sweep(&policy, false).await.unwrap().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, young);
    assert!(fx.is_live(&stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_skips_while_a_rotation_holds_the_lock() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    let spec = PolicySpec::new("0s").verify(probe.hook("20s"));
    let (driver, policy) = fx.restart(&spec);
    first_token(&fx, &driver, &policy).await;
    probe.set_status(503);
    fx.advance(HOUR);
    let hits = probe.hits();
    let task = {
        let (d, p) = (driver.clone(), policy.clone());
        tokio::spawn(async move { d.reconcile(&p, false, &CancellationToken::new()).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while probe.hits() == hits {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached verification"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Another replica's sweep must not judge tokens mid-rotation: with an
    // unreferenced token of the policy about (an orphan of some earlier
    // crash), its first look finds a candidate, and the lock it then needs
    // is held, so it skips and revokes nothing.
    let (other, p2) = fx.restart(&spec);
    let orphan = fx.create_raw(&policy.token_name("0190eeeeffff")).await;
    assert!(other.sweep(&p2, false).await.unwrap().is_none());
    assert!(fx.is_live(&orphan));
    probe.set_status(200);
    task.await.unwrap().unwrap();
    // Once the rotation is over, the sweep takes the lock and revokes it.
    let found = other.sweep(&p2, false).await.unwrap().unwrap();
    let ids: Vec<&str> = found.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec![orphan.as_str()]);
    fx.assert_settled(&driver, &policy).await;
}

/// A sweep that finds no candidate does not take the lock (on AWS every
/// acquisition writes a version of the lock secret): it completes even
/// while another replica holds the lock, and revokes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_with_nothing_to_judge_takes_no_lock() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s");
    let (driver, policy) = fx.restart(&spec);
    let stored = first_token(&fx, &driver, &policy).await;
    let _held = policy
        .lock
        .try_lock("another-replica")
        .await
        .unwrap()
        .expect("the lock is free");
    let found = driver.sweep(&policy, false).await.unwrap();
    assert!(
        found.is_some_and(|f| f.is_empty()),
        "the sweep ran without the lock and found nothing"
    );
    assert!(fx.is_live(&stored));
}

// ---------------------------------------------------------------------------
// Regressions
// ---------------------------------------------------------------------------

/// Regression: when the very first token of a policy failed verification,
/// the rollback left no record to carry the retry time, so the same
/// reconcile pass began a new rotation at once, forever.
#[tokio::test]
async fn regression_first_token_failing_verification_does_not_retry_in_a_loop() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    probe.set_status(500);
    let (ok, failing) = probe_specs(&probe);
    let (driver, policy) = fx.restart(&failing);
    let started = fx.now();
    let tick = tokio::time::timeout(
        Duration::from_secs(10),
        driver.reconcile(&policy, false, &CancellationToken::new()),
    )
    .await
    .expect("reconcile returns after the failed attempt")
    .unwrap();
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == started + chrono::Duration::minutes(10)),
        "{tick:?}"
    );
    let issued = fx.issued();
    assert_eq!(issued.len(), 1, "one attempt");
    assert!(issued[0].revoked_at.is_some());
    assert!(fx.live_ids().is_empty());
    assert!(!fx.store().join("etl.json").exists());
    assert!(!fx.store().join("etl.token").exists());

    // Consumers recover; the next pass (at the retry time) stores a token.
    probe.set_status(200);
    let (driver, policy) = fx.restart(&ok);
    fx.advance(10 * MINUTE);
    pass(&driver, &policy).await;
    assert_eq!(fx.issued().len(), 2);
    fx.assert_settled(&driver, &policy).await;
}

/// Regression companion: the first token failing to be created also backs
/// off instead of retrying within the same pass.
#[tokio::test]
async fn regression_first_token_create_failing_does_not_retry_in_a_loop() {
    let fx = Fixture::new().await;
    fx.sim().set_error_rate(Endpoint::CreateToken, 1.0);
    let (driver, policy) = fx.restart(&PolicySpec::new("0s").retry(SLOW_RETRY));
    let tick = tokio::time::timeout(
        Duration::from_secs(10),
        driver.reconcile(&policy, false, &CancellationToken::new()),
    )
    .await
    .expect("reconcile returns after the failed attempt")
    .unwrap();
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    let creates = fx.sim().request_count(Endpoint::CreateToken);
    assert!(
        (1..=5).contains(&creates),
        "one driver attempt (the client's first try and its retries), not a loop: {creates}"
    );
    assert!(fx.issued().is_empty());
}
