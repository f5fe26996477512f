//! Observability end to end, against the real Debian `prometheus` and
//! `prometheus-alertmanager` servers (issue 5, items 5 and 6):
//!
//! - every query of `deploy/grafana/dashboard.json` parses and returns data
//!   from a Prometheus scraping the real daemon (with bearer auth) during a
//!   short run of quick rotations, one of which fails verification;
//! - a forced failure makes the shipped `RotationFailed` rule fire and
//!   reach Alertmanager, the daemon's own `MotherDuckRotationFailed` alert
//!   reaches Alertmanager, an HMAC-signed webhook and a Slack webhook, and
//!   recovery resolves all of them.
//!
//! Real waiting is bounded: everything is polled in 50 ms steps under an
//! overall cap, and Prometheus scrapes and evaluates every 200 ms. Each test
//! takes about 6-8 s, most of it Prometheus' own start-up: its discovery
//! manager hands the first (even static) targets to the scrape and notify
//! managers only after a fixed 5 s, which no 2.42 flag changes. The daemon
//! starts right away, so its rotations run during that time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use motherduck_rotator::motherduck::Endpoint;
use motherduck_rotator::secret::ExposeSecret;
use motherduck_rotator::simulator::{Fault, RunningSimulator, Simulator, SimulatorOptions};
use serde_json::Value;
use sha2::Sha256;

use crate::support::observability::{
    Alertmanager, Prometheus, Received, Sample, ScrapeTarget, TempDir, WebhookReceiver,
    http_client, log_tail, poll,
};
use crate::support::services::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_motherduck-rotator");
/// Cap on each wait for an observable effect.
const CAP: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The daemon process, its config directory and its log; killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
    /// `127.0.0.1:PORT` of its HTTP server.
    addr: String,
}

impl Daemon {
    /// Checks `config.toml` in `dir` with `validate`, then runs the daemon.
    fn start(dir: &Path, addr: String) -> Daemon {
        let config = dir.join("config.toml");
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("validate")
            .current_dir(dir)
            .output()
            .expect("run motherduck-rotator validate");
        assert!(
            out.status.success(),
            "`motherduck-rotator validate` rejected the test configuration:\n{}{}\n--- config ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&config).unwrap_or_default()
        );
        let log = dir.join("daemon.log");
        let file = std::fs::File::create(&log).expect("create daemon log");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .arg("run")
            .current_dir(dir)
            .env("MDR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("clone log handle")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn the daemon");
        Daemon { child, log, addr }
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulator with the given service accounts, and its admin token
/// written to `admin.token` in `dir`.
async fn simulator(dir: &TempDir, accounts: &[&str]) -> RunningSimulator {
    let sim = Simulator::spawn(SimulatorOptions::default())
        .await
        .expect("spawn simulator");
    for sa in accounts {
        sim.sim.add_service_account(sa);
    }
    dir.write("admin.token", sim.admin_token.expose_secret());
    sim
}

/// The common head of the daemon configuration.
fn config_head(sim: &RunningSimulator, addr: &str, extra_daemon: &str) -> String {
    format!(
        r#"
[motherduck]
api_url = "{url}"
admin_token = {{ file = "admin.token" }}
request_timeout = "10s"

[daemon]
listen = "{addr}"
log_format = "json"
{extra_daemon}

[stores.local]
type = "file"
directory = "store"
"#,
        url = sim.base_url(),
    )
}

fn summarize(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| format!("{:?} = {}", s.metric, s.value))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One query target of the dashboard.
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
}

/// Every target of every panel (rows included) of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &[Value], out: &mut Vec<PanelQuery>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            assert!(
                p["type"] == "row" || !targets.is_empty(),
                "panel {title:?} has no query"
            );
            for t in targets {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: target without `expr`: {t}"));
                // Importable: every query goes to the data source chosen on
                // import, not to one that exists only on the author's Grafana.
                let ds = if t["datasource"].is_null() {
                    &p["datasource"]
                } else {
                    &t["datasource"]
                };
                assert_eq!(
                    ds["uid"], "${datasource}",
                    "panel {title:?} does not use the dashboard's data source variable"
                );
                out.push(PanelQuery {
                    panel: title.clone(),
                    ref_id: t["refId"].as_str().unwrap_or("?").to_owned(),
                    expr: expr.to_owned(),
                });
            }
            if let Some(inner) = p["panels"].as_array() {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(
        dashboard["panels"]
            .as_array()
            .expect("dashboard has panels"),
        &mut out,
    );
    out
}

/// Replaces the Grafana variables the dashboard uses; any other variable
/// is a test failure (it would need a substitution here).
fn substitute(expr: &str, policy: &str, rate_interval: &str) -> String {
    let out = expr
        .replace("${__rate_interval}", rate_interval)
        .replace("$__rate_interval", rate_interval)
        .replace("${policy}", policy)
        .replace("$policy", policy);
    assert!(
        !out.contains('$'),
        "unknown Grafana variable left in query {expr:?} after substitution: {out:?}"
    );
    out
}

/// Every panel query of the shipped dashboard parses and returns data from
/// a real Prometheus scraping the real daemon, which rotates two policies
/// every few seconds. One token creation is refused (400: a failed step
/// and a failed rotation), and the first rotation of `alpha` fails verification (and is
/// rolled back), so failure, rollback and step-failure series exist; the
/// tokens expire, so the expiry gauges exist. `/metrics` is bearer-protected and
/// Prometheus scrapes it with the token.
/// `Ok` when nothing is `missing`, else what is.
fn none_missing(missing: Vec<String>) -> Result<(), String> {
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing: {}", missing.join(", ")))
    }
}

/// Whether a Slack message on `hook` names `alert` and `status` (e.g.
/// `[firing]`).
fn on_slack(hook: &WebhookReceiver, alert: &str, status: &str) -> bool {
    slack_texts(hook)
        .iter()
        .any(|t| t.contains(alert) && t.contains(status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data() {
    let t0 = Instant::now();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/dashboard.json"))
            .expect("read dashboard.json"),
    )
    .expect("dashboard.json is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(!queries.is_empty());

    let dir = TempDir::new("e2e-dashboard");
    let sim = simulator(&dir, &["svc_alpha", "svc_beta"]).await;
    sim.sim
        .fail_next(Endpoint::CreateToken, 1, Fault::Status(400));
    let metrics_token = uuid::Uuid::new_v4().simple().to_string();
    let token_file = dir.write("metrics.token", &metrics_token);
    let addr = format!("127.0.0.1:{}", free_port());
    // The first rotation of `alpha` fails verification for its whole
    // deadline (the hook remembers the first rotation id and refuses it);
    // every later one passes.
    let first = dir.path().join("alpha-first-rotation");
    let script = format!(
        r#"f={f}; [ -f "$f" ] || echo "$MDR_ROTATION_ID" > "$f"; [ "$(cat "$f")" != "$MDR_ROTATION_ID" ]"#,
        f = first.display()
    );
    let config = format!(
        r#"{head}
[[policy]]
name = "alpha"
service_account = "svc_alpha"
token_ttl = "1h"
schedule = {{ interval = "2s" }}
overlap = "0s"
retry = {{ max_attempts = 2, initial_backoff = "200ms", max_backoff = "1s" }}
verify = [{{ type = "command", command = ["/bin/sh", "-c", '{script}'], interval = "100ms", deadline = "1s", timeout = "1s" }}]
destinations = [{{ store = "local", path = "alpha.json" }}]

[[policy]]
name = "beta"
service_account = "svc_beta"
token_ttl = "2h"
schedule = {{ interval = "3s" }}
overlap = "0s"
retry = {{ max_attempts = 2, initial_backoff = "200ms", max_backoff = "1s" }}
verify = [{{ type = "motherduck", interval = "20ms", deadline = "5s" }}]
destinations = [{{ store = "local", path = "beta.json", bare_token_file = "beta.token" }}]
"#,
        head = config_head(
            &sim,
            &addr,
            r#"metrics_bearer_token = { file = "metrics.token" }"#
        ),
    );
    dir.write("config.toml", &config);

    let prom = Prometheus::start(
        &[ScrapeTarget::new(&addr).with_bearer_token_file(&token_file)],
        &[],
        None,
    )
    .await;
    let daemon = Daemon::start(dir.path(), addr.clone());
    let t_started = t0.elapsed();

    // /metrics wants the bearer token; Prometheus presents it.
    let http = http_client();
    let metrics_url = format!("http://{}/metrics", daemon.addr);
    poll(
        "the daemon's /metrics to refuse a request without the bearer token",
        CAP,
        async || match http.get(&metrics_url).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => Ok(()),
            Ok(r) => Err(format!("status {}", r.status())),
            Err(e) => Err(e.to_string()),
        },
        async || daemon.log_tail(),
    )
    .await;
    let wrong = http
        .get(&metrics_url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
    let right = http
        .get(&metrics_url)
        .bearer_auth(&metrics_token)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(right.status(), reqwest::StatusCode::OK);
    poll(
        "Prometheus to scrape the daemon (up == 1)",
        CAP,
        async || {
            let s = prom.query(r#"up{job="motherduck-rotator"}"#).await;
            if s.len() == 1 && s[0].value == 1.0 {
                Ok(())
            } else {
                Err(summarize(&s))
            }
        },
        async || {
            format!(
                "daemon:\n{}\nprometheus:\n{}",
                daemon.log_tail(),
                prom.log_tail()
            )
        },
    )
    .await;

    // Every query parses at once (a syntax error does not go away), and
    // returns at least one non-NaN sample within the cap.
    let exprs: Vec<(String, String)> = queries
        .iter()
        .map(|q| {
            (
                format!("panel {:?} target {}", q.panel, q.ref_id),
                substitute(&q.expr, ".*", "1m"),
            )
        })
        .collect();
    let mut pending: Vec<usize> = (0..exprs.len()).collect();
    let mut last: Vec<String> = vec![String::new(); exprs.len()];
    let deadline = Instant::now() + CAP;
    loop {
        let mut still = Vec::new();
        for &i in &pending {
            let (name, expr) = &exprs[i];
            let samples = match prom.try_query(expr).await {
                Ok(s) => s,
                Err(e) => panic!("{name}: Prometheus rejects the query `{expr}`: {e}"),
            };
            if samples.iter().any(|s| !s.value.is_nan()) {
                continue;
            }
            last[i] = if samples.is_empty() {
                "no series".to_owned()
            } else {
                format!("only NaN: {}", summarize(&samples))
            };
            still.push(i);
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let missing: Vec<String> = pending
                .iter()
                .map(|&i| format!("{}: `{}` -> {}", exprs[i].0, exprs[i].1, last[i]))
                .collect();
            panic!(
                "dashboard queries without data after {CAP:?}:\n{}\n--- daemon log ---\n{}",
                missing.join("\n"),
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t_data = t0.elapsed();

    // The run really had a failed verification and successful rotations
    // of both policies.
    // (Outcomes are counted per replica, not per policy; only alpha's
    // hook ever refuses a token.)
    let rolled_back = prom
        .query(r#"motherduck_rotator_rotations_total{outcome="rolled_back"}"#)
        .await;
    assert!(
        rolled_back.iter().any(|s| s.value >= 1.0),
        "alpha never rolled back: {}",
        summarize(&rolled_back)
    );
    let ok = prom
        .query(r#"motherduck_rotator_last_success_timestamp_seconds > 0"#)
        .await;
    assert_eq!(ok.len(), 2, "both policies rotated: {}", summarize(&ok));

    // The `policy` variable: its `label_values()` query lists both
    // policies, and a single chosen policy narrows every query using it.
    let var = dashboard["templating"]["list"]
        .as_array()
        .expect("templating list")
        .iter()
        .find(|v| v["name"] == "policy")
        .expect("a `policy` variable");
    let definition = var["definition"].as_str().expect("variable definition");
    let args = definition
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected variable query {definition}"));
    let (selector, label) = args.split_once(',').expect("label_values(metric, label)");
    let mut values = prom.label_values(label.trim(), selector.trim()).await;
    values.sort();
    assert_eq!(values, ["alpha", "beta"], "{definition}");
    for q in queries.iter().filter(|q| q.expr.contains("$policy")) {
        let all = prom.query(&substitute(&q.expr, ".*", "1m")).await;
        let expr = substitute(&q.expr, "alpha", "1m");
        let narrowed = prom.query(&expr).await;
        let of_alpha = |s: &&Sample| s.metric.get("policy").map(String::as_str) == Some("alpha");
        assert!(
            narrowed.iter().all(|s| of_alpha(&s))
                && (narrowed.is_empty() != all.iter().any(|s| of_alpha(&s))),
            "panel {:?} target {} with policy=alpha: `{expr}` -> {}; with all policies: {}",
            q.panel,
            q.ref_id,
            summarize(&narrowed),
            summarize(&all)
        );
    }
    eprintln!(
        "dashboard e2e: {} queries; services and daemon up after {:?}, all with data after {:?}, done after {:?}",
        exprs.len(),
        t_started,
        t_data,
        t0.elapsed()
    );
    drop(daemon);
}

/// `hex` as bytes, if it is valid lower- or upper-case hex.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether `header` is `sha256=<hex HMAC-SHA256 of body under key>`.
fn signature_valid(key: &[u8], body: &[u8], header: &str) -> bool {
    let Some(sig) = header.strip_prefix("sha256=").and_then(decode_hex) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Alertmanager webhook notifications on `/alertmanager`: (notification
/// status, per-alert status, alertname, policy) of every alert in them.
fn am_notified(hook: &WebhookReceiver) -> Vec<(String, String, String, String)> {
    hook.received_at("/alertmanager")
        .iter()
        .flat_map(|r| {
            let v = r.json();
            let status = v["status"].as_str().unwrap_or("").to_owned();
            v["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |a| {
                    (
                        status.clone(),
                        a["status"].as_str().unwrap_or("").to_owned(),
                        a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                        a["labels"]["policy"].as_str().unwrap_or("").to_owned(),
                    )
                })
        })
        .collect()
}

/// The daemon's own webhook notifications on `/hook` for `alertname`.
fn daemon_hooks(hook: &WebhookReceiver, alertname: &str) -> Vec<(Received, Value)> {
    hook.received_at("/hook")
        .into_iter()
        .map(|r| {
            let v = r.json();
            (r, v)
        })
        .filter(|(_, v)| v["alertname"] == alertname)
        .collect()
}

fn slack_texts(hook: &WebhookReceiver) -> Vec<String> {
    hook.received_at("/slack")
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Daemon, simulator, Prometheus (with the shipped rules), Alertmanager
/// and a webhook receiver. Verification of the `flaky` policy fails until
/// the test creates the `ok` file: every rotation is rolled back. Then:
/// 1. the shipped `RotationFailed` rule fires and reaches Alertmanager (and
///    through it the receiver);
/// 2. the daemon's `MotherDuckRotationFailed` reaches Alertmanager, the
///    HMAC-signed webhook (once, though several rotations failed) and
///    Slack.
///
/// After `ok` appears the next rotation succeeds, and every one of them
/// resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_alerts_fire_and_resolve_end_to_end() {
    let t0 = Instant::now();
    let dir = TempDir::new("e2e-alerts");
    let sim = simulator(&dir, &["svc_flaky"]).await;
    let hook = WebhookReceiver::start().await;
    let am = Alertmanager::start(&hook.url("/alertmanager")).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let shipped_rules = repo().join("deploy/prometheus/alerts.yml");
    let prom = Prometheus::start(
        &[ScrapeTarget::new(&addr)],
        std::slice::from_ref(&shipped_rules),
        Some(&am.url),
    )
    .await;
    let mut rules = prom.alert_rule_names().await;
    rules.sort();
    assert_eq!(
        rules,
        [
            "MotherDuckRotatorDependencyDown",
            "MotherDuckRotatorOldTokenNotRevoked",
            "RollbackHappened",
            "RotationFailed",
            "RotationOverdue",
            "RotatorDown",
            "RotatorNotReady",
            "TokenExpiringSoon"
        ],
        "the shipped rules are loaded"
    );

    let hmac_key = format!("hmac-{}", uuid::Uuid::new_v4().simple());
    dir.write("hook.key", &hmac_key);
    dir.write("slack.url", &hook.url("/slack"));
    let runbook = "https://runbooks.example.com/motherduck-rotator";
    let ok_file = dir.path().join("ok");
    let config = format!(
        r#"{head}
[alerts]
repeat_interval = "1h"
expiry_warning = "24h"
max_per_minute = 30
runbook_url = "{runbook}"

[[alerts.sink]]
type = "alertmanager"
url = "{am}"

[[alerts.sink]]
type = "webhook"
url = "{webhook}"
hmac_secret = {{ file = "hook.key" }}

[[alerts.sink]]
type = "slack"
webhook_url = {{ file = "slack.url" }}

[[policy]]
name = "flaky"
service_account = "svc_flaky"
schedule = {{ interval = "1h" }}
overlap = "0s"
retry = {{ max_attempts = 1, initial_backoff = "300ms", max_backoff = "300ms" }}
verify = [{{ type = "command", command = ["/bin/sh", "-c", 'test -f "{ok}"'], interval = "100ms", deadline = "1s", timeout = "1s" }}]
destinations = [{{ store = "local", path = "flaky.json" }}]
"#,
        head = config_head(&sim, &addr, ""),
        am = am.url,
        webhook = hook.url("/hook"),
        ok = ok_file.display(),
    );
    dir.write("config.toml", &config);
    let daemon = Daemon::start(dir.path(), addr.clone());
    let t_started = t0.elapsed();

    let diagnostics = async || {
        format!(
            "--- prometheus alerts ---\n{:?}\n--- alertmanager alerts ---\n{:?}\n\
             --- received ---\n{:?}\n--- daemon log ---\n{}\n--- prometheus log ---\n{}\n\
             --- alertmanager log ---\n{}",
            prom.alerts().await,
            am.alerts().await,
            hook.received()
                .iter()
                .map(|r| format!("{} {}", r.path, String::from_utf8_lossy(&r.body)))
                .collect::<Vec<_>>(),
            daemon.log_tail(),
            prom.log_tail(),
            am.log_tail()
        )
    };

    // Phase 1: everything fires.
    poll(
        "RotationFailed (rule) and MotherDuckRotationFailed (daemon) to fire everywhere",
        CAP,
        async || {
            let mut missing = Vec::new();
            // Several failed rotations, so the daemon's deduplication is
            // exercised below.
            let failures = prom
                .query(r#"motherduck_rotator_rotations_total{outcome="rolled_back"}"#)
                .await;
            if !failures.iter().any(|s| s.value >= 2.0) {
                missing.push(format!(
                    "two rolled-back rotations ({})",
                    summarize(&failures)
                ));
            }
            let prom_alerts = prom.alerts().await;
            if !prom_alerts.iter().any(|a| {
                a.labels["alertname"] == "RotationFailed"
                    && a.labels.get("policy").map(String::as_str) == Some("flaky")
                    && a.state == "firing"
            }) {
                missing.push("RotationFailed firing in Prometheus".to_owned());
            }
            // The shipped RollbackHappened rule fires too (verification
            // failed).
            if !prom_alerts
                .iter()
                .any(|a| a.labels["alertname"] == "RollbackHappened" && a.state == "firing")
            {
                missing.push("RollbackHappened firing in Prometheus".to_owned());
            }
            let am_alerts = am.alerts().await;
            for name in ["RotationFailed", "MotherDuckRotationFailed"] {
                if !am_alerts.iter().any(|a| {
                    a.label("alertname") == name && a.label("policy") == "flaky" && a.is_active()
                }) {
                    missing.push(format!("{name} active in Alertmanager"));
                }
            }
            let notified = am_notified(&hook);
            for name in ["RotationFailed", "MotherDuckRotationFailed"] {
                if !notified
                    .iter()
                    .any(|(_, s, n, p)| s == "firing" && n == name && p == "flaky")
                {
                    missing.push(format!("{name} firing notified by Alertmanager"));
                }
            }
            if !daemon_hooks(&hook, "MotherDuckRotationFailed")
                .iter()
                .any(|(_, v)| v["status"] == "firing")
            {
                missing.push("firing MotherDuckRotationFailed on the webhook".to_owned());
            }
            if !on_slack(&hook, "MotherDuckRotationFailed", "[firing]") {
                missing.push("firing MotherDuckRotationFailed on Slack".to_owned());
            }
            none_missing(missing)
        },
        diagnostics,
    )
    .await;
    let t_fired = t0.elapsed();

    // The rules carry their runbook links.
    let prom_alerts = prom.alerts().await;
    assert!(
        prom_alerts
            .iter()
            .all(|a| a.annotations.contains_key("runbook_url")),
        "{prom_alerts:?}"
    );
    // The daemon's alert in Alertmanager carries its labels and annotations.
    let am_alerts = am.alerts().await;
    let direct = am_alerts
        .iter()
        .find(|a| a.label("alertname") == "MotherDuckRotationFailed")
        .expect("daemon alert in Alertmanager");
    assert_eq!(direct.status.state, "active", "{direct:?}");
    assert_eq!(direct.label("severity"), "critical", "{direct:?}");
    assert_eq!(direct.label("source"), "motherduck-rotator", "{direct:?}");
    assert_eq!(
        direct.annotations.get("runbook_url").map(String::as_str),
        Some(runbook),
        "{direct:?}"
    );
    assert!(
        direct
            .annotations
            .get("summary")
            .is_some_and(|s| s.contains("verify")),
        "{direct:?}"
    );
    let from_rule = am_alerts
        .iter()
        .find(|a| a.label("alertname") == "RotationFailed")
        .expect("rule alert in Alertmanager");
    assert_eq!(
        from_rule.label("job"),
        "motherduck-rotator",
        "{from_rule:?}"
    );
    assert!(
        from_rule.annotations.contains_key("runbook_url"),
        "{from_rule:?}"
    );

    // Every webhook body is signed with the configured key (and only that
    // key); the firing alert was sent once although rotations kept failing.
    let bodies = hook.received_at("/hook");
    for r in &bodies {
        let sig = r
            .header("x-rotator-signature")
            .unwrap_or_else(|| panic!("unsigned webhook: {:?}", r.headers));
        assert!(
            signature_valid(hmac_key.as_bytes(), &r.body, sig),
            "bad signature {sig} for {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(!signature_valid(b"another key", &r.body, sig));
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{:?}",
            r.headers
        );
    }
    let fired = daemon_hooks(&hook, "MotherDuckRotationFailed");
    let firing: Vec<&Value> = fired
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["status"] == "firing")
        .collect();
    assert_eq!(firing.len(), 1, "deduplicated: {firing:?}");
    assert_eq!(firing[0]["policy"], "flaky");
    assert_eq!(firing[0]["severity"], "critical");
    assert_eq!(firing[0]["runbook_url"], runbook);
    assert!(firing[0]["ends_at"].is_null(), "{}", firing[0]);
    // The same alert, with the same start, in Alertmanager and the webhook.
    let hook_start: chrono::DateTime<chrono::Utc> = firing[0]["starts_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("starts_at in {}", firing[0]));
    assert_eq!(hook_start, direct.starts_at, "{direct:?} vs {}", firing[0]);
    assert!(
        daemon_hooks(&hook, "MotherDuckRotationRolledBack")
            .iter()
            .any(|(_, v)| v["status"] == "firing"),
        "the rollback alert reached the webhook too"
    );

    // Phase 2: recovery. The next rotation verifies; everything resolves.
    std::fs::write(&ok_file, "").expect("create the ok file");
    let t_recover = Instant::now();
    poll(
        "RotationFailed and MotherDuckRotationFailed to resolve everywhere",
        CAP,
        async || {
            let mut missing = Vec::new();
            if prom.alerts().await.iter().any(|a| {
                a.labels["alertname"] == "RotationFailed"
                    && a.labels.get("policy").map(String::as_str) == Some("flaky")
            }) {
                missing.push("RotationFailed still in Prometheus".to_owned());
            }
            let am_alerts = am.alerts().await;
            for name in ["RotationFailed", "MotherDuckRotationFailed"] {
                if am_alerts.iter().any(|a| {
                    a.label("alertname") == name && a.label("policy") == "flaky" && a.is_active()
                }) {
                    missing.push(format!("{name} still active in Alertmanager"));
                }
            }
            let notified = am_notified(&hook);
            for name in ["RotationFailed", "MotherDuckRotationFailed"] {
                if !notified
                    .iter()
                    .any(|(_, s, n, p)| s == "resolved" && n == name && p == "flaky")
                {
                    missing.push(format!("{name} resolution notified by Alertmanager"));
                }
            }
            for name in ["MotherDuckRotationFailed", "MotherDuckRotationRolledBack"] {
                if !daemon_hooks(&hook, name)
                    .iter()
                    .any(|(_, v)| v["status"] == "resolved" && v["ends_at"].is_string())
                {
                    missing.push(format!("resolved {name} on the webhook"));
                }
            }
            if !on_slack(&hook, "MotherDuckRotationFailed", "[resolved]") {
                missing.push("resolved MotherDuckRotationFailed on Slack".to_owned());
            }
            none_missing(missing)
        },
        diagnostics,
    )
    .await;
    let t_resolved = t_recover.elapsed();
    let success = prom
        .query(r#"motherduck_rotator_last_success_timestamp_seconds{policy="flaky"} > 0"#)
        .await;
    assert!(
        success.iter().any(|s| s.value >= 1.0),
        "{}",
        summarize(&success)
    );
    // Resolved exactly once, and signed like the rest.
    let resolved: Vec<(Received, Value)> = daemon_hooks(&hook, "MotherDuckRotationFailed")
        .into_iter()
        .filter(|(_, v)| v["status"] == "resolved")
        .collect();
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    let (r, v) = &resolved[0];
    assert!(signature_valid(
        hmac_key.as_bytes(),
        &r.body,
        r.header("x-rotator-signature").unwrap_or("")
    ));
    assert_eq!(v["starts_at"], firing[0]["starts_at"], "same alert: {v}");
    eprintln!(
        "alerting e2e: services and daemon up after {t_started:?}, everything fired after \
         {t_fired:?}, resolved {t_resolved:?} after recovery, total {:?}",
        t0.elapsed()
    );
    drop(daemon);
}
