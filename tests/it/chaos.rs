//! Chaos against the real binary (invariants 1, 3 and 8): the `run` daemon
//! is killed with SIGKILL at random moments and right after each step it
//! logs, and restarted at once, over and over, while consumers read every
//! destination every 100 ms and check each token they read against the
//! simulator. The simulator adds latency and answers a few percent of
//! creates and revokes with 500.
//!
//! It fails on any read of a token that was already dead (revoked or
//! expired) when the read began, on a read of something that is not a
//! token, on a policy that stops rotating once the kills stop, on a
//! rotation completed twice, on live tokens that differ from the stored
//! ones once the daemon has settled, and on temporary files left in a
//! store.
//!
//! `CHAOS_SECONDS` sets how long the kills go on (default: 60 s for the
//! file store, 20 s each for OpenBao and moto). The long run, with its
//! figures printed:
//!
//! ```sh
//! CHAOS_SECONDS=600 cargo test --release --test it chaos -- --nocapture --test-threads 1
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use motherduck_rotator::motherduck::Endpoint;
use motherduck_rotator::simulator::{RunningSimulator, Simulator};

use crate::support::config_toml;
use crate::support::daemon::{self, Rotator, signal};
use crate::support::services::{Moto, OpenBao};
use crate::support::world::{self, Scratch};

/// The steps the daemon logs; a kill is aimed right after one of them.
const STEPS: &[&str] = &[
    "token created",
    "new token staged",
    "new token is current",
    "new token verified",
    "old token revoked",
    "rotation complete",
    "rotation rolled back; the old token is current",
];

/// Step retries of the chaos and fencing policies.
pub(crate) const RETRY: &str =
    "retry = { max_attempts = 3, initial_backoff = \"100ms\", max_backoff = \"1s\" }\n";

/// How long a consumer waits between two reads of its destinations.
const READ_EVERY: Duration = Duration::from_millis(100);

/// A place a consumer reads a token from.
#[derive(Clone)]
pub(crate) enum Source {
    /// The `token` field of a JSON record file.
    Json(PathBuf),
    /// A bare token file.
    Bare(PathBuf),
    /// The current version of a Vault KV v2 secret (`token` field).
    Vault { url: String, token: String },
    /// `AWSCURRENT` of a Secrets Manager secret (`token` field).
    Aws { endpoint: String, secret: String },
}

impl Source {
    /// The current version of `secret/<path>` on `bao`, labelled.
    pub(crate) fn vault(bao: &OpenBao, path: &str) -> (String, Source) {
        let url = format!("{}/v1/secret/data/{path}", bao.addr);
        let token = bao.root_token.clone();
        (format!("vault:{path}"), Source::Vault { url, token })
    }

    /// `AWSCURRENT` of the secret `name` on `moto`, labelled.
    pub(crate) fn aws(moto: &Moto, name: &str) -> (String, Source) {
        let (endpoint, secret) = (moto.endpoint.clone(), name.to_owned());
        (format!("aws:{name}"), Source::Aws { endpoint, secret })
    }

    /// The token read, `None` when nothing is stored yet.
    pub(crate) async fn read(&self, http: &reqwest::Client) -> Result<Option<String>, String> {
        let field = |v: &Value| {
            v["token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| "no `token` field".to_owned())
        };
        match self {
            Source::Json(path) => match std::fs::read(path) {
                Ok(bytes) => {
                    let v: Value = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
                    field(&v).map(Some)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", path.display())),
            },
            Source::Bare(path) => match std::fs::read_to_string(path) {
                Ok(s) => Ok(Some(s.trim_end().to_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", path.display())),
            },
            Source::Vault { url, token } => {
                let resp = http
                    .get(url)
                    .header("X-Vault-Token", token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !resp.status().is_success() {
                    return Err(format!("vault: HTTP {}", resp.status()));
                }
                let v: Value = resp.json().await.map_err(|e| e.to_string())?;
                field(&v["data"]["data"]).map(Some)
            }
            Source::Aws { endpoint, secret } => {
                let resp = aws_call(
                    http,
                    endpoint,
                    "GetSecretValue",
                    json!({ "SecretId": secret, "VersionStage": "AWSCURRENT" }),
                )
                .await?;
                let Some(v) = resp else { return Ok(None) };
                let record: Value = serde_json::from_str(v["SecretString"].as_str().unwrap_or(""))
                    .map_err(|e| format!("aws: not JSON: {e}"))?;
                field(&record).map(Some)
            }
        }
    }
}

/// One Secrets Manager call to moto; `None` for ResourceNotFound.
async fn aws_call(
    http: &reqwest::Client,
    endpoint: &str,
    action: &str,
    body: Value,
) -> Result<Option<Value>, String> {
    let (status, text) =
        crate::smoke_services::secrets_manager_raw(http, endpoint, action, &body).await?;
    if text.contains("ResourceNotFoundException") {
        return Ok(None);
    }
    if !status.is_success() {
        // The body names the error type; it never carries a secret.
        return Err(format!("aws {action}: HTTP {status}"));
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("aws {action}: {e}"))
}

/// What the consumers saw.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) reads: u64,
    pub(crate) dead: u64,
    pub(crate) unknown: u64,
    empty: u64,
    errors: u64,
    /// The first few failures, by token id (never a secret).
    pub(crate) examples: Vec<String>,
}

/// Reads every source every [`READ_EVERY`] until `stop`.
pub(crate) async fn consume(
    sources: Vec<(String, Source)>,
    sim: Simulator,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        for (label, src) in &sources {
            let began = sim.now();
            let got = src.read(&http).await;
            let mut t = tally.lock().unwrap();
            match got {
                Ok(None) => t.empty += 1,
                Err(e) => {
                    t.errors += 1;
                    if t.errors <= 5 {
                        eprintln!("chaos: read error on {label}: {e}");
                    }
                }
                Ok(Some(secret)) => {
                    t.reads += 1;
                    match sim.token_by_secret(&secret) {
                        None => {
                            t.unknown += 1;
                            if t.examples.len() < 10 {
                                t.examples
                                    .push(format!("{label}: read something that is not a token"));
                            }
                        }
                        Some(tok) => {
                            let revoked = tok.revoked_at.is_some_and(|r| r < began);
                            let expired = tok.expire_at.is_some_and(|e| e <= began);
                            if revoked || expired {
                                t.dead += 1;
                                if t.examples.len() < 10 {
                                    t.examples.push(format!(
                                        "{label}: read token {} at {began}, revoked at {:?}, expires {:?}",
                                        tok.id, tok.revoked_at, tok.expire_at
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(READ_EVERY).await;
    }
}

/// A policy of the chaos configuration.
struct PolicySpec {
    name: &'static str,
    schedule: &'static str,
    overlap: &'static str,
    /// `destinations = [...]` entries.
    destinations: Vec<String>,
    /// Where consumers read it.
    sources: Vec<(String, Source)>,
}

/// `[stores.vault]` on OpenBao's `secret/` (root token in `vault.token`)
/// and `[stores.aws]` on moto, with the shortest lease and lock TTLs and a
/// version budget moto does not need (it has no quota; these schedules
/// rotate every few seconds).
pub(crate) fn remote_stores_toml(bao: &OpenBao, moto: &Moto) -> String {
    config_toml::vault_store(&bao.addr, "2s")
        + &config_toml::aws_store(
            &moto.endpoint,
            "lock_ttl = \"3s\"\nversion_budget = 1000000\n",
        )
}

/// Which stores the run uses.
enum Stores {
    Files,
    Remote(Box<(OpenBao, Moto)>),
}

struct Chaos {
    sim: RunningSimulator,
    stores: Stores,
    policies: Vec<PolicySpec>,
    /// Runs the daemons, their logs in `logs/`.
    bin: Rotator,
    root: Scratch,
}

impl Chaos {
    async fn new(remote: bool) -> Chaos {
        let root = Scratch::kept_on_failure("chaos");
        let dir = root.path();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let sim = world::simulator(dir, &[]).await;
        sim.sim
            .set_latency(Duration::from_millis(3), Duration::from_millis(7));
        sim.sim.set_error_rate(Endpoint::CreateToken, 0.03);
        sim.sim.set_error_rate(Endpoint::RevokeToken, 0.03);
        let (stores, policies) = if remote {
            let (bao, moto) = world::remote_stores(dir).await;
            let policies = remote_policies(&bao, &moto);
            (Stores::Remote(Box::new((bao, moto))), policies)
        } else {
            (Stores::Files, file_policies(dir))
        };
        for p in &policies {
            sim.sim.add_service_account(&sa(p.name));
        }
        Chaos {
            bin: Rotator::new(dir, &dir.join("logs"), "info"),
            root,
            sim,
            stores,
            policies,
        }
    }

    /// Writes the configuration; `settle` puts every schedule a day away,
    /// so the daemon only finishes what is under way and sweeps.
    fn config(&self, settle: bool) -> PathBuf {
        let name = if settle { "settle.toml" } else { "chaos.toml" };
        let path = self.root.path().join(name);
        let stores = match &self.stores {
            Stores::Files => {
                config_toml::file_store("local", "store")
                    + &config_toml::file_store("other", "other")
            }
            Stores::Remote(remote) => remote_stores_toml(&remote.0, &remote.1),
        };
        let mut src = config_toml::motherduck_unthrottled(&self.sim.base_url())
            + &config_toml::daemon(
                "sweep_interval = \"10s\"\norphan_min_age = \"3s\"\nshutdown_timeout = \"10s\"\nlock_retry_interval = \"300ms\"\nrecheck_interval = \"1s\"\n",
            )
            + &stores;
        for p in &self.policies {
            let schedule = if settle {
                r#"{ interval = "1d" }"#
            } else {
                p.schedule
            };
            src.push_str(&config_toml::policy_on(
                p.name,
                &sa(p.name),
                schedule,
                p.overlap,
                &p.destinations.join(", "),
            ));
            src.push_str(
                r#"verify = [{ type = "motherduck", interval = "50ms", deadline = "5s" }]
"#,
            );
            src.push_str(RETRY);
        }
        std::fs::write(&path, src).unwrap();
        path
    }

    fn spawn(&self, config: &Path, log: &str) -> tokio::process::Child {
        self.bin.spawn(log, config, &["run"], None)
    }

    fn log(&self, name: &str) -> String {
        self.bin.log(&format!("{name}.err"))
    }

    /// The last lines of the last few logs, for a failure message.
    fn recent_logs(&self, names: &[String]) -> String {
        names
            .iter()
            .rev()
            .take(3)
            .rev()
            .map(|n| {
                let text = self.log(n);
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("--- {n}.err (last 40 lines)\n{tail}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every policy converged: `status` shows it idle with the same token
    /// current in every destination and nothing staged, exactly that token
    /// is live at MotherDuck, and every place a consumer reads (records,
    /// bare files, Vault's current version, `AWSCURRENT`) holds it. Returns
    /// a reason when not.
    async fn converged(&self, config: &Path, http: &reqwest::Client) -> Result<(), String> {
        let status = daemon::status_json(
            daemon::command(config, self.root.path(), "error").args(["status", "--json"]),
        )
        .await?;
        let list = status.as_array().cloned().unwrap_or_default();
        for spec in &self.policies {
            let p = list
                .iter()
                .find(|p| p["policy"] == spec.name)
                .ok_or(format!("{}: not in `status`", spec.name))?;
            if !p["error"].is_null() {
                return Err(format!("{}: {}", spec.name, p["error"]));
            }
            if p["state"] != "idle" {
                return Err(format!("{}: state {}", spec.name, p["state"]));
            }
            let id = p["token_id"]
                .as_str()
                .ok_or(format!("{}: no token", spec.name))?
                .to_owned();
            for d in p["destinations"].as_array().into_iter().flatten() {
                if d["current_token_id"] != id.as_str() || !d["pending_token_id"].is_null() {
                    return Err(format!("{}: destination {d}", spec.name));
                }
            }
            let live: Vec<String> = self
                .sim
                .sim
                .live_tokens(&sa(spec.name))
                .into_iter()
                .map(|t| t.id)
                .collect();
            if live != [id.clone()] {
                return Err(format!("{}: live tokens {live:?}, stored {id}", spec.name));
            }
            for (label, src) in &spec.sources {
                let secret = src.read(http).await?.ok_or(format!("{label}: empty"))?;
                let held = self.sim.sim.token_by_secret(&secret).map(|t| t.id);
                if held.as_deref() != Some(id.as_str()) {
                    return Err(format!("{label} holds {held:?}, the record {id}"));
                }
            }
        }
        Ok(())
    }

    /// Temporary files left in the file stores.
    fn temp_files(&self) -> Vec<String> {
        let mut left = Vec::new();
        for dir in ["store", "other"] {
            let Ok(entries) = std::fs::read_dir(self.root.path().join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.contains(".tmp-") || n.starts_with(".probe-") {
                    left.push(format!("{dir}/{n}"));
                }
            }
        }
        left
    }
}

fn sa(policy: &str) -> String {
    format!("svc_{policy}")
}

fn file_dest(store: &str, name: &str, bare: bool) -> String {
    if bare {
        format!(
            r#"{{ store = "{store}", path = "{name}.json", bare_token_file = "{name}.token" }}"#
        )
    } else {
        format!(r#"{{ store = "{store}", path = "{name}.json" }}"#)
    }
}

fn file_sources(root: &Path, dir: &str, name: &str, bare: bool) -> Vec<(String, Source)> {
    let mut s = vec![(
        format!("{dir}/{name}.json"),
        Source::Json(root.join(dir).join(format!("{name}.json"))),
    )];
    if bare {
        s.push((
            format!("{dir}/{name}.token"),
            Source::Bare(root.join(dir).join(format!("{name}.token"))),
        ));
    }
    s
}

/// Five policies on two file stores: one with two destinations and bare
/// files, one on a cron schedule (every 5 s), one without a bare file.
fn file_policies(root: &Path) -> Vec<PolicySpec> {
    let one = |name: &'static str, schedule: &'static str, overlap: &'static str, bare: bool| {
        PolicySpec {
            name,
            schedule,
            overlap,
            destinations: vec![file_dest("local", name, bare)],
            sources: file_sources(root, "store", name, bare),
        }
    };
    let mut two = one("bravo", r#"{ interval = "4s" }"#, "1s", true);
    two.destinations.push(file_dest("other", "bravo", true));
    two.sources
        .extend(file_sources(root, "other", "bravo", true));
    vec![
        one("alpha", r#"{ interval = "3s" }"#, "1s", true),
        two,
        one("cron", r#"{ cron = "*/5 * * * * *" }"#, "1s", true),
        one("delta", r#"{ interval = "5s" }"#, "2s", false),
        one("echo", r#"{ interval = "6s" }"#, "500ms", true),
    ]
}

/// Three policies on OpenBao KV v2 and moto: Vault alone, AWS alone, and
/// Vault (holding the lock) plus AWS.
fn remote_policies(bao: &OpenBao, moto: &Moto) -> Vec<PolicySpec> {
    let vault = |path: &str| {
        let dest = format!(r#"{{ store = "vault", path = "{path}" }}"#);
        (dest, Source::vault(bao, path))
    };
    let aws = |name: &str| {
        let dest = format!(r#"{{ store = "aws", path = "{name}" }}"#);
        (dest, Source::aws(moto, name))
    };
    let spec = |name, schedule, parts: Vec<(String, (String, Source))>| {
        let (destinations, sources) = parts.into_iter().unzip();
        PolicySpec {
            name,
            schedule,
            overlap: "1s",
            destinations,
            sources,
        }
    };
    vec![
        spec("vone", r#"{ interval = "4s" }"#, vec![vault("chaos/vone")]),
        spec("aone", r#"{ interval = "5s" }"#, vec![aws("chaos/aone")]),
        spec(
            "both",
            r#"{ cron = "*/6 * * * * *" }"#,
            vec![vault("chaos/both"), aws("chaos/both")],
        ),
    ]
}

/// The figures of one run.
#[derive(Debug, Default)]
struct Figures {
    kills: u32,
    aimed: u32,
    rotations: usize,
    reads: u64,
    dead: u64,
}

fn seconds(default: u64) -> Duration {
    let s = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(s)
}

/// The rotation ids of every `rotation complete` line in `log`, by policy.
fn completions(log: &str, into: &mut BTreeMap<String, Vec<String>>) {
    for line in log.lines() {
        if !line.contains(r#""message":"rotation complete""#) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let field = |k: &str| find_key(&v, k).unwrap_or_default();
        into.entry(field("policy"))
            .or_default()
            .push(field("rotation_id"));
    }
}

/// The first string value of key `k` anywhere in `v`.
fn find_key(v: &Value, k: &str) -> Option<String> {
    match v {
        Value::Object(m) => m
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| m.values().find_map(|x| find_key(x, k))),
        Value::Array(a) => a.iter().find_map(|x| find_key(x, k)),
        _ => None,
    }
}

async fn run_chaos(remote: bool, default_secs: u64) -> Figures {
    let what = if remote { "openbao+moto" } else { "file" };
    let chaos = Chaos::new(remote).await;
    let config = chaos.config(false);
    let settle_config = chaos.config(true);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sources: Vec<(String, Source)> = chaos
        .policies
        .iter()
        .flat_map(|p| p.sources.clone())
        .collect();
    let consumer = tokio::spawn(consume(
        sources,
        chaos.sim.sim.clone(),
        tally.clone(),
        stop.clone(),
    ));

    // Kills.
    let mut figures = Figures::default();
    let mut names: Vec<String> = Vec::new();
    let end = tokio::time::Instant::now() + seconds(default_secs);
    while tokio::time::Instant::now() < end {
        let name = format!("run-{:04}", names.len());
        let mut child = chaos.spawn(&config, &name);
        names.push(name.clone());
        if fastrand::bool() {
            figures.aimed += 1;
            let step = STEPS[fastrand::usize(..STEPS.len())];
            let needle = format!(r#""message":"{step}""#);
            let give_up = tokio::time::Instant::now() + Duration::from_secs(8);
            while tokio::time::Instant::now() < give_up && !chaos.log(&name).contains(&needle) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(50..3000))).await;
        }
        if let Ok(Some(status)) = child.try_wait() {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "chaos[{what}]: the daemon exited by itself: {status}\n{}",
                chaos.recent_logs(&names)
            );
        }
        signal(&child, libc::SIGKILL);
        let _ = child.wait().await;
        figures.kills += 1;
    }

    // After the last kill every policy must rotate again.
    let mut last = chaos.spawn(&config, "final");
    names.push("final".into());
    let give_up = tokio::time::Instant::now() + Duration::from_secs(45);
    let stuck = loop {
        let mut done = BTreeMap::new();
        completions(&chaos.log("final"), &mut done);
        let stuck: Vec<&str> = chaos
            .policies
            .iter()
            .map(|p| p.name)
            .filter(|n| !done.contains_key(*n))
            .collect();
        if stuck.is_empty() || tokio::time::Instant::now() > give_up {
            break stuck.into_iter().map(str::to_owned).collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    signal(&last, libc::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(20), last.wait()).await;
    signal(&last, libc::SIGKILL);
    let _ = last.wait().await;

    // Settle: schedules a day away; what is under way finishes, orphans
    // are swept.
    let mut settle = chaos.spawn(&settle_config, "settle");
    names.push("settle".into());
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let converged = loop {
        let r = chaos.converged(&settle_config, &http).await;
        if r.is_ok() || tokio::time::Instant::now() > give_up {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Let the consumers read the settled state a few more times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    consumer.await.unwrap();
    signal(&settle, libc::SIGTERM);
    let _ = tokio::time::timeout(Duration::from_secs(20), settle.wait()).await;

    let mut done = BTreeMap::new();
    for n in &names {
        completions(&chaos.log(n), &mut done);
    }
    let mut twice: HashMap<String, usize> = HashMap::new();
    for ids in done.values() {
        for id in ids {
            *twice.entry(id.clone()).or_default() += 1;
        }
    }
    twice.retain(|_, n| *n > 1);
    figures.rotations = done.values().map(Vec::len).sum();
    let t = tally.lock().unwrap();
    figures.reads = t.reads;
    figures.dead = t.dead;
    let temps = chaos.temp_files();
    eprintln!(
        "chaos[{what}]: {:?} of kills: {} kills ({} aimed after a logged step), {} rotations completed, {} consumer reads ({} before a first token, {} read errors), {} dead reads, {} reads of something not a token, stuck policies {:?}, rotations completed twice {}, temp files left {}",
        seconds(default_secs),
        figures.kills,
        figures.aimed,
        figures.rotations,
        t.reads,
        t.empty,
        t.errors,
        t.dead,
        t.unknown,
        stuck,
        twice.len(),
        temps.len(),
    );
    let logs = || chaos.recent_logs(&names);
    assert!(
        t.dead == 0 && t.unknown == 0,
        "chaos[{what}]: consumers read dead tokens: {:#?}\n{}",
        t.examples,
        logs()
    );
    assert!(
        stuck.is_empty(),
        "chaos[{what}]: policies stopped rotating after the last kill: {stuck:?}\n{}",
        logs()
    );
    assert!(
        twice.is_empty(),
        "chaos[{what}]: rotations completed more than once: {twice:?}\n{}",
        logs()
    );
    if let Err(e) = converged {
        panic!(
            "chaos[{what}]: not converged after settling: {e}\n{}",
            logs()
        );
    }
    assert!(
        temps.is_empty(),
        "chaos[{what}]: temporary files left: {temps:?}"
    );
    assert!(t.reads > 0, "chaos[{what}]: the consumers read nothing");
    assert!(figures.rotations > 0, "chaos[{what}]: nothing rotated");
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_file_store_kill_9_anywhere() {
    run_chaos(false, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_openbao_and_moto_kill_9_anywhere() {
    run_chaos(true, 20).await;
}
