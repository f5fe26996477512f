//! Real Prometheus and Alertmanager servers for the observability tests,
//! and a small HTTP receiver that records the webhooks sent to it.
//!
//! Like the services in [`super::services`], each server is the Debian
//! binary (`/usr/bin/prometheus`, `/usr/bin/prometheus-alertmanager`, found
//! with [`tool_path`], so a missing one is a loud panic naming the setup
//! script, never a skipped test). Each runs on a free loopback port with a
//! private temporary directory for its configuration, data and log, is
//! polled for readiness in small steps under an overall cap, and is killed
//! when dropped. A server that exits during startup is retried on a fresh
//! port (another process may have taken the port first); one that never
//! becomes ready fails the test with the tail of its log.
//!
//! The generated configuration files are JSON, which YAML parsers (and so
//! both servers) read as YAML: no quoting pitfalls with paths and URLs.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use serde::Deserialize;
use serde_json::{Value, json};

use super::services::{free_port, tool_path};

/// How long a server may take to become ready, across all spawn attempts.
const READY_DEADLINE: Duration = Duration::from_secs(60);
const READY_POLL: Duration = Duration::from_millis(20);
const SPAWN_ATTEMPTS: usize = 3;

/// The scrape job name the shipped rules expect (`up{job="motherduck-rotator"}`).
pub const JOB: &str = "motherduck-rotator";

/// Prometheus' scrape and rule evaluation interval. Prometheus 2.42 accepts
/// sub-second intervals; 200 ms keeps the tests quick without flooding the
/// daemon.
pub const SCRAPE_INTERVAL: &str = "200ms";

/// Step of [`poll`].
pub const POLL_STEP: Duration = Duration::from_millis(50);

/// A temporary directory, removed with its contents on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("mdr-it-{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `content` to `name` inside the directory, owner-only (mode
    /// 0600, as it may be a secret); returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        super::write_secret(&path, content);
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last `lines` lines of a log file, for panic messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A loopback HTTP client: never via a proxy, short timeouts.
pub fn http_client() -> reqwest::Client {
    crate::support::services::probe_client()
}

/// Whether `GET url` answers with JSON that `accept` takes.
async fn answers_json(
    http: &reqwest::Client,
    url: String,
    accept: impl FnOnce(&Value) -> bool,
) -> bool {
    match http.get(url).send().await {
        Ok(r) => r.json::<Value>().await.is_ok_and(|v| accept(&v)),
        Err(_) => false,
    }
}

/// Polls `probe` every [`POLL_STEP`] until it returns `Ok`, at most `cap`.
/// `Err` carries the current state ("why not yet"); on timeout the test
/// fails with `what`, the last state and `context()` (logs, say).
pub async fn poll<T>(
    what: &str,
    cap: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
    context: impl AsyncFnOnce() -> String,
) -> T {
    let deadline = Instant::now() + cap;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(state) => state,
        };
        if Instant::now() >= deadline {
            panic!(
                "timed out after {cap:?} waiting for {what}\nlast state: {last}\n{}",
                context().await
            );
        }
        tokio::time::sleep(POLL_STEP).await;
    }
}

/// A server process, killed and reaped on drop.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start Prometheus or Alertmanager on a config file of its own.
struct Launch {
    name: &'static str,
    bin: PathBuf,
    config_file: &'static str,
    /// The flag naming its data folder.
    data_flag: &'static str,
    /// One more flag it is started with.
    extra_arg: &'static str,
    /// The API path whose JSON shows the config it runs on.
    status_path: &'static str,
}

impl Launch {
    /// Writes `config` in `dir` and starts the server on a free loopback
    /// port, ready once `/-/ready` answers and the JSON at `status_path`
    /// is `ours` (given the config file's path): our server, not another
    /// test's that took the port. Its URL, an HTTP client and the server.
    async fn start(
        self,
        dir: &TempDir,
        config: &Value,
        ours: impl Fn(&Value, &str) -> bool,
    ) -> (String, reqwest::Client, Server) {
        let config_path = dir.write(self.config_file, &config.to_string());
        let data = dir.path().join("data");
        let http = http_client();
        let ours = &ours;
        let (server, port) = launch(
            self.name,
            dir.path(),
            |port| {
                let mut cmd = Command::new(&self.bin);
                cmd.arg(format!("--config.file={}", config_path.display()))
                    .arg(format!("{}={}", self.data_flag, data.display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg(self.extra_arg);
                cmd
            },
            |port| {
                let http = http.clone();
                let want = config_path.display().to_string();
                let status_path = self.status_path;
                async move {
                    let base = format!("http://127.0.0.1:{port}");
                    let ready = matches!(
                        http.get(format!("{base}/-/ready")).send().await,
                        Ok(r) if r.status() == reqwest::StatusCode::OK
                    );
                    ready
                        && answers_json(&http, format!("{base}{status_path}"), |v| ours(v, &want))
                            .await
                }
            },
        )
        .await;
        (format!("http://127.0.0.1:{port}"), http, server)
    }
}

/// Spawns `command(port)` in `dir` until `ready(port)` holds, retrying on a
/// fresh port when the process exits during startup.
async fn launch<F>(
    name: &str,
    dir: &Path,
    command: impl Fn(u16) -> Command,
    ready: impl Fn(u16) -> F,
) -> (Server, u16)
where
    F: Future<Output = bool>,
{
    let deadline = Instant::now() + READY_DEADLINE;
    let mut failures = Vec::new();
    for attempt in 1..=SPAWN_ATTEMPTS {
        let port = free_port();
        let log = dir.join(format!("{name}-{attempt}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let mut cmd = command(port);
        cmd.current_dir(dir)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        let mut server = Server { child, log };
        loop {
            if let Some(status) = server.child.try_wait().expect("try_wait on child") {
                failures.push(format!(
                    "attempt {attempt} on port {port} exited during startup with {status}; \
                     log tail:\n{}",
                    log_tail(&server.log, 40)
                ));
                break;
            }
            if ready(port).await {
                return (server, port);
            }
            assert!(
                Instant::now() < deadline,
                "{name} on port {port} not ready within {READY_DEADLINE:?}; \
                 earlier attempts: {failures:#?}\nlog tail:\n{}",
                log_tail(&server.log, 40)
            );
            tokio::time::sleep(READY_POLL).await;
        }
    }
    panic!(
        "{name} failed to start {SPAWN_ATTEMPTS} times:\n{}",
        failures.join("\n\n")
    );
}

/// `host:port` of an `http://host:port[/...]` URL.
fn host_port(url: &str) -> String {
    let u = reqwest::Url::parse(url).unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
    format!(
        "{}:{}",
        u.host_str().expect("URL has a host"),
        u.port_or_known_default().expect("URL has a port")
    )
}

/// One target of the `motherduck-rotator` scrape job.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    /// `host:port` of the daemon's HTTP server.
    pub addr: String,
    /// Sent as `Authorization: Bearer <file content>` when set.
    pub bearer_token_file: Option<PathBuf>,
}

impl ScrapeTarget {
    pub fn new(addr: impl Into<String>) -> ScrapeTarget {
        ScrapeTarget {
            addr: addr.into(),
            bearer_token_file: None,
        }
    }

    pub fn with_bearer_token_file(mut self, path: impl Into<PathBuf>) -> ScrapeTarget {
        self.bearer_token_file = Some(path.into());
        self
    }
}

/// One instant-vector sample of a query result.
#[derive(Debug, Clone)]
pub struct Sample {
    pub metric: BTreeMap<String, String>,
    pub value: f64,
}

/// One alert of Prometheus' `/api/v1/alerts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromAlert {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
}

/// A running Prometheus server; killed on drop.
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    http: reqwest::Client,
    server: Server,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job [`JOB`]) every
    /// [`SCRAPE_INTERVAL`], evaluating `rule_files` as often, and sending
    /// alerts to the Alertmanager at `alertmanager_url` (if any). Returns
    /// once `/-/ready` answers 200 and the server is the one just started.
    pub async fn start(
        targets: &[ScrapeTarget],
        rule_files: &[PathBuf],
        alertmanager_url: Option<&str>,
    ) -> Prometheus {
        let bin = tool_path("prometheus");
        let dir = TempDir::new("prometheus");
        let mut scrape_configs = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            // Job names must be unique; extra targets keep the job label.
            let mut sc = json!({
                "job_name": if i == 0 { JOB.to_owned() } else { format!("{JOB}-{i}") },
                "static_configs": [{ "targets": [t.addr] }],
            });
            if i > 0 {
                sc["relabel_configs"] = json!([{ "target_label": "job", "replacement": JOB }]);
            }
            if let Some(f) = &t.bearer_token_file {
                sc["authorization"] = json!({ "type": "Bearer", "credentials_file": f });
            }
            scrape_configs.push(sc);
        }
        let rule_files: Vec<PathBuf> = rule_files
            .iter()
            .map(|p| {
                std::fs::canonicalize(p)
                    .unwrap_or_else(|e| panic!("rule file {}: {e}", p.display()))
            })
            .collect();
        let mut config = json!({
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "evaluation_interval": SCRAPE_INTERVAL,
            },
            "rule_files": rule_files,
            "scrape_configs": scrape_configs,
        });
        if let Some(am) = alertmanager_url {
            config["alerting"] = json!({
                "alertmanagers": [{
                    "api_version": "v2",
                    "static_configs": [{ "targets": [host_port(am)] }],
                }]
            });
        }
        let launch = Launch {
            name: "prometheus",
            bin,
            config_file: "prometheus.yml",
            data_flag: "--storage.tsdb.path",
            extra_arg: "--log.level=info",
            status_path: "/api/v1/status/flags",
        };
        let (url, http, server) = launch
            .start(&dir, &config, |v, config_path| {
                v["data"]["config.file"] == config_path
            })
            .await;
        Prometheus {
            url,
            http,
            server,
            _dir: dir,
        }
    }

    /// The tail of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.server.log, 30)
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> (reqwest::StatusCode, Value) {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), params)
            .expect("valid Prometheus API URL");
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on Prometheus: {e}\n{}", self.log_tail()));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("GET {path} on Prometheus answered {status} with non-JSON ({e}): {body}")
        });
        (status, v)
    }

    /// Evaluates `expr` now (`/api/v1/query`). `Err` holds Prometheus' error
    /// (`bad_data: parse error ...`) when the query is rejected.
    pub async fn try_query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let (status, v) = self.get("/api/v1/query", &[("query", expr)]).await;
        if v["status"] != "success" {
            return Err(format!(
                "HTTP {status}, {}: {}",
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("?")
            ));
        }
        let parse_value = |pair: &Value| -> f64 {
            let text = pair[1].as_str().unwrap_or("NaN");
            text.parse()
                .unwrap_or_else(|e| panic!("sample value {text:?} of {expr}: {e}"))
        };
        let data = &v["data"];
        Ok(match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .expect("vector result is an array")
                .iter()
                .map(|s| Sample {
                    metric: serde_json::from_value(s["metric"].clone()).unwrap_or_default(),
                    value: parse_value(&s["value"]),
                })
                .collect(),
            Some("scalar") => vec![Sample {
                metric: BTreeMap::new(),
                value: parse_value(&data["result"]),
            }],
            other => panic!("unexpected resultType {other:?} for {expr}: {v}"),
        })
    }

    /// [`Prometheus::try_query`], failing the test when the query is
    /// rejected.
    pub async fn query(&self, expr: &str) -> Vec<Sample> {
        self.try_query(expr)
            .await
            .unwrap_or_else(|e| panic!("query {expr} failed: {e}"))
    }

    /// The values of `label` on series matching `selector`
    /// (`/api/v1/label/<label>/values`), as Grafana's `label_values()`.
    pub async fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let (status, v) = self
            .get(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", selector)],
            )
            .await;
        assert_eq!(v["status"], "success", "label values: HTTP {status}: {v}");
        serde_json::from_value(v["data"].clone()).expect("label values are strings")
    }

    /// Pending and firing alerts (`/api/v1/alerts`).
    pub async fn alerts(&self) -> Vec<PromAlert> {
        let (status, v) = self.get("/api/v1/alerts", &[]).await;
        assert_eq!(v["status"], "success", "alerts: HTTP {status}: {v}");
        serde_json::from_value(v["data"]["alerts"].clone()).expect("alerts shape")
    }

    /// The names of the loaded alerting rules (`/api/v1/rules`).
    pub async fn alert_rule_names(&self) -> Vec<String> {
        let (status, v) = self.get("/api/v1/rules", &[("type", "alert")]).await;
        assert_eq!(v["status"], "success", "rules: HTTP {status}: {v}");
        v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect()
    }
}

/// One alert of Alertmanager's `/api/v2/alerts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AmAlert {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: chrono::DateTime<chrono::Utc>,
    pub ends_at: chrono::DateTime<chrono::Utc>,
    pub status: AmAlertStatus,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmAlertStatus {
    /// `active`, `suppressed` or `unprocessed`.
    pub state: String,
}

impl AmAlert {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }

    /// Still active: not yet past its `endsAt`.
    pub fn is_active(&self) -> bool {
        self.ends_at > chrono::Utc::now()
    }
}

/// A running Alertmanager (clustering off); killed on drop.
pub struct Alertmanager {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    http: reqwest::Client,
    server: Server,
    _dir: TempDir,
}

impl Alertmanager {
    /// Starts an Alertmanager routing every alert, one group per label set,
    /// to the webhook at `receiver_url` at once (`group_wait: 0s`), with
    /// resolved notifications, a 1 s `group_interval` and a 1 m
    /// `repeat_interval`.
    pub async fn start(receiver_url: &str) -> Alertmanager {
        let bin = tool_path("prometheus-alertmanager");
        let dir = TempDir::new("alertmanager");
        // A unique receiver name tells our server from another test's.
        let receiver = format!("mdr-it-{}", uuid::Uuid::new_v4().simple());
        let config = json!({
            "route": {
                "receiver": receiver,
                "group_by": ["..."],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1m",
            },
            "receivers": [{
                "name": receiver,
                "webhook_configs": [{ "url": receiver_url, "send_resolved": true }],
            }],
        });
        let launch = Launch {
            name: "alertmanager",
            bin,
            config_file: "alertmanager.yml",
            data_flag: "--storage.path",
            // Empty: no gossip listener, so no second port to race for.
            extra_arg: "--cluster.listen-address=",
            status_path: "/api/v2/status",
        };
        let (url, http, server) = launch
            .start(&dir, &config, |v, _| {
                v["config"]["original"]
                    .as_str()
                    .is_some_and(|c| c.contains(&receiver))
            })
            .await;
        Alertmanager {
            url,
            http,
            server,
            _dir: dir,
        }
    }

    /// The tail of the server's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.server.log, 30)
    }

    /// The alerts Alertmanager holds (`/api/v2/alerts`: active, silenced and
    /// inhibited; resolved ones are left out by Alertmanager itself).
    pub async fn alerts(&self) -> Vec<AmAlert> {
        let resp = self
            .http
            .get(format!("{}/api/v2/alerts", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /api/v2/alerts: {e}\n{}", self.log_tail()));
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "GET /api/v2/alerts: {status}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET /api/v2/alerts: unexpected body ({e}): {body}"))
    }
}

/// One request the [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP server on `127.0.0.1:0` that answers 200 to every request and
/// records path, headers and body. Stops on drop.
pub struct WebhookReceiver {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start() -> WebhookReceiver {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = received.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Received {
                        path: uri.path().to_owned(),
                        headers,
                        body,
                    });
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("webhook receiver");
        });
        WebhookReceiver {
            base_url: format!("http://{addr}"),
            received,
            task,
        }
    }

    /// The URL of `path` (which starts with `/`) on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What was received on `path`.
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
