//! The rotation driver end to end, in process: the simulator (frozen clock),
//! the file store in a temporary directory, and a manual wall clock moved in
//! step with the simulator's. Each test drives `Driver::reconcile` pass by
//! pass and checks the stores and MotherDuck against the design's
//! invariants: the old token is revoked only after the new one is stored and
//! verified (1), a new token that cannot be stored is revoked (2), every
//! step resumes from the stores alone (3), one rotation per policy at a time
//! (4), and a failed verification restores the old token (5).

mod concurrency;
mod failures;
mod happy_path;
mod regressions;
mod verification;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use motherduck_rotator::config::{Config, Policy};
use motherduck_rotator::metrics::Metrics;
use motherduck_rotator::motherduck::{CreateTokenRequest, Endpoint, TokenCheck, TokenType};
use motherduck_rotator::rotation::driver::{Driver, Tick};
use motherduck_rotator::secret::SecretString;
use motherduck_rotator::simulator::{Fault, IssuedToken, Simulator};

use crate::support::config_toml;
use crate::support::driver::Frozen;
use crate::support::world;

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
    frozen: Frozen,
    orphan_min_age: &'static str,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture {
            root: world::scratch_dir("engine"),
            frozen: Frozen::start(11, SA).await,
            orphan_min_age: "0s",
        }
    }

    fn sim(&self) -> &Simulator {
        &self.frozen.running.sim
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
        self.frozen.advance(d);
    }

    fn now(&self) -> DateTime<Utc> {
        self.frozen.clock.now()
    }

    fn config(&self, spec: &PolicySpec) -> Config {
        self.config_with_id(spec, "engine-a")
    }

    /// A freshly parsed configuration: every call builds new destination
    /// values, as a restarted or second daemon would.
    fn config_with_id(&self, spec: &PolicySpec, instance_id: &str) -> Config {
        let src = format!(
            r#"{head}{local}{second}
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
            head = self.frozen.head_toml(self.orphan_min_age, instance_id),
            local = config_toml::file_store("local", &self.store().display().to_string()),
            second = config_toml::file_store("second", &self.store2().display().to_string()),
            ttl = spec
                .ttl
                .map(|t| format!("token_ttl = \"{t}\""))
                .unwrap_or_default(),
            overlap = spec.overlap,
            verify = spec.verify,
            destinations = spec.destinations,
            retry = spec.retry,
        );
        self.frozen
            .parse(&self.root.join("config.toml"), &src, Vec::new())
    }

    /// The daemon's driver for `config`, with the fixture's clock and a
    /// client that records its backoff instead of sleeping.
    fn driver(&self, config: &Config) -> Driver {
        self.frozen.driver(config, Arc::new(Metrics::new()))
    }

    /// A fresh configuration and driver: a restarted daemon.
    fn restart(&self, spec: &PolicySpec) -> (Driver, Policy) {
        let config = self.config(spec);
        let driver = self.driver(&config);
        (driver, config.policies[0].clone())
    }

    /// A restarted daemon for `spec`, run until its first rotation is
    /// done; the token it stored.
    async fn first_token(&self, spec: &PolicySpec) -> (Driver, Policy, String) {
        let (driver, policy) = self.restart(spec);
        let token = first_token(self, &driver, &policy).await;
        (driver, policy, token)
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
        world::live_ids(self.sim(), SA)
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
        self.frozen
            .admin
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
        let check = self.frozen.admin.check_token(&secret).await.unwrap();
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

    /// Exactly `issued` tokens were ever issued, and all is settled.
    async fn assert_settled_with(&self, issued: usize, driver: &Driver, policy: &Policy) {
        assert_eq!(self.issued().len(), issued);
        self.assert_settled(driver, policy).await;
    }

    /// The rotation away from `old` is over: `old` is revoked, the journal
    /// says `done`, and all is settled.
    async fn assert_replaced(&self, old: &str, driver: &Driver, policy: &Policy) {
        assert!(self.revoked(old));
        assert_eq!(journal_state(&self.current()), "done");
        self.assert_settled(driver, policy).await;
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

/// Record `cur` holds `old` again, its journal rolled back by a failure
/// whose message starts with `error_prefix`.
fn assert_rolled_back(cur: &Value, old: &str, error_prefix: &str) {
    assert_eq!(str_of(cur, "token_id"), old);
    assert_eq!(journal_state(cur), "rolled_back");
    assert!(
        str_of(&cur["rotation"], "last_error").starts_with(error_prefix),
        "{}",
        cur["rotation"]
    );
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

/// One reconcile pass that must fail; its error.
async fn failing_pass(
    driver: &Driver,
    policy: &Policy,
) -> motherduck_rotator::rotation::driver::DriveError {
    driver
        .reconcile(policy, false, &CancellationToken::new())
        .await
        .expect_err("the pass fails")
}

/// Starts a pass in the background and waits (10 s at most) until it asks
/// `probe` to verify; the pass, still running.
async fn pass_until_verifying(
    driver: &Driver,
    policy: &Policy,
    probe: &Probe,
    what: &str,
) -> tokio::task::JoinHandle<Result<Tick, motherduck_rotator::rotation::driver::DriveError>> {
    let hits = probe.hits();
    let task = {
        let (d, p) = (driver.clone(), policy.clone());
        tokio::spawn(async move { d.reconcile(&p, false, &CancellationToken::new()).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while probe.hits() == hits {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task
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
