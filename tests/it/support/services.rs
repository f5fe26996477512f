//! Real external services for the integration tests (DESIGN.md, "Real
//! services for tests"): an OpenBao dev server and a moto server standing in
//! for AWS Secrets Manager.
//!
//! Each instance runs as a child process on its own loopback port with a
//! private temporary directory (used as `HOME` and for the captured log), and
//! is killed when dropped. The binaries come from `scripts/setup-test-env.sh`;
//! a missing binary is a loud panic naming that script, never a skipped test.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long a service may take to become ready, across all spawn attempts.
/// Generous because moto is a Python program and the test suite starts many
/// services at once on small machines.
const READY_DEADLINE: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Spawn attempts, each on a fresh port, when the process exits during
/// startup (typically: another process grabbed the port first).
const SPAWN_ATTEMPTS: usize = 3;
const SETUP_HINT: &str = "run scripts/setup-test-env.sh (or scripts/test.sh)";

/// The project-local tool directory: `$MDR_TOOLS_DIR`, by default
/// `<crate root>/.tools`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("MDR_TOOLS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools"),
    }
}

/// Locates a test-service binary: `$MDR_<NAME>_BIN` (upper-case, `-` → `_`),
/// then `$MDR_TOOLS_DIR/venv/bin/<name>`, then `/usr/bin/<name>`.
///
/// # Errors
/// When none exists: a message naming the binary and the setup command.
pub fn find_tool(name: &str) -> Result<PathBuf, String> {
    let var = format!("MDR_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!(
                "{var}={} does not point to a file; fix it or unset it and {SETUP_HINT}",
                path.display()
            ));
        }
        return Ok(path);
    }
    let venv = tools_dir().join("venv").join("bin").join(name);
    if venv.is_file() {
        return Ok(venv);
    }
    let system = Path::new("/usr/bin").join(name);
    if system.is_file() {
        return Ok(system);
    }
    Err(format!(
        "test service binary `{name}` not found (looked at ${var}, {}, {}); {SETUP_HINT}",
        venv.display(),
        system.display()
    ))
}

/// [`find_tool`], failing the test loudly when the binary is missing: a
/// missing service is never a reason to skip.
///
/// # Panics
/// If the binary is missing, with the message of [`find_tool`].
pub fn tool_path(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local_addr of bound socket")
        .port()
}

/// A free port `p` whose neighbour `p + 1` is free too. `bao server -dev`
/// always binds its (unused) cluster listener on the API port + 1.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = first
            .local_addr()
            .expect("local_addr of bound socket")
            .port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two adjacent free loopback ports in 100 tries");
}

/// A temporary directory removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("mdr-it-{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running service process; dropping it kills the process, then removes
/// its directory (the `Drop` impl runs before the fields are dropped).
struct Process {
    child: Option<Child>,
    _dir: TempDir,
}

impl Process {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGKILL and waits (briefly, blocking) until the process is gone, so
/// its ports are closed when this returns.
fn kill_and_reap(child: &mut Child) {
    let _ = child.start_kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    eprintln!(
        "warning: child process {:?} still running 10 s after SIGKILL",
        child.id()
    );
}

/// The last lines of a log file, for panic messages.
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(40);
            lines[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// An HTTP client for talking to loopback services: never via a proxy, and
/// with short timeouts so a wedged process cannot stall a readiness loop.
pub fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("build reqwest client")
}

/// Spawns `command(port)` until `ready(port, log)` holds, retrying on a new
/// port when the process exits during startup.
async fn launch(
    name: &'static str,
    dir: TempDir,
    pick_port: fn() -> u16,
    command: impl Fn(u16) -> Command,
    ready: impl AsyncFn(u16, &Path) -> bool,
) -> (Process, u16) {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut failures = Vec::new();
    for attempt in 1..=SPAWN_ATTEMPTS {
        let port = pick_port();
        let log = dir.0.join(format!("{name}-{attempt}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let mut cmd = command(port);
        cmd.current_dir(&dir.0)
            .env("HOME", &dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}; {SETUP_HINT}"));
        loop {
            if let Some(status) = child.try_wait().expect("try_wait on child") {
                failures.push(format!(
                    "attempt {attempt} on port {port} exited during startup with {status}; \
                     log tail:\n{}",
                    log_tail(&log)
                ));
                break;
            }
            if ready(port, &log).await {
                let process = Process {
                    child: Some(child),
                    _dir: dir,
                };
                return (process, port);
            }
            if Instant::now() >= deadline {
                kill_and_reap(&mut child);
                panic!(
                    "{name} on port {port} not ready within {READY_DEADLINE:?}; \
                     earlier attempts: {failures:#?}\nlog tail:\n{}",
                    log_tail(&log)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    panic!(
        "{name} failed to start {SPAWN_ATTEMPTS} times:\n{}",
        failures.join("\n\n")
    );
}

/// An OpenBao dev server (`bao server -dev`): in-memory, unsealed, KV v2
/// mounted at `secret/`, root token [`OpenBao::root_token`].
pub struct OpenBao {
    /// `http://127.0.0.1:PORT`
    pub addr: String,
    pub root_token: String,
    process: Process,
}

impl OpenBao {
    /// Starts a dev server and returns once it is unsealed, answers
    /// `GET /v1/sys/health` with 200 and has `secret/` mounted.
    pub async fn start() -> OpenBao {
        let bao = tool_path("bao");
        let root_token = format!("root-{}", uuid::Uuid::new_v4());
        let client = probe_client();
        let (process, port) = launch(
            "bao",
            TempDir::new("bao"),
            free_port_pair,
            |port| {
                let mut cmd = Command::new(&bao);
                cmd.arg("server")
                    .arg("-dev")
                    .arg(format!("-dev-root-token-id={root_token}"))
                    .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                    .arg("-dev-no-store-token");
                cmd
            },
            async |port, _log| {
                let base = format!("http://127.0.0.1:{port}");
                let healthy = answers_ok(client.get(format!("{base}/v1/sys/health"))).await;
                // The dev server mounts `secret/` just after unsealing; the
                // token check also proves this is our server, not another
                // test's that happened to take the port.
                let mounts = client
                    .get(format!("{base}/v1/sys/mounts/secret"))
                    .header("X-Vault-Token", &root_token);
                healthy && answers_ok(mounts).await
            },
        )
        .await;
        OpenBao {
            addr: format!("http://127.0.0.1:{port}"),
            root_token,
            process,
        }
    }

    /// Kills the server to simulate an outage; its address then refuses
    /// connections. All data is lost (dev mode is in-memory).
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// Whether `req` is answered with 200 OK.
async fn answers_ok(req: reqwest::RequestBuilder) -> bool {
    matches!(req.send().await, Ok(resp) if resp.status() == reqwest::StatusCode::OK)
}

/// A moto server (`moto_server`), speaking the AWS Secrets Manager JSON
/// protocol at [`Moto::endpoint`]. Requests need an `Authorization` header
/// whose credential scope names `secretsmanager` (moto routes on it).
pub struct Moto {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    process: Process,
}

impl Moto {
    /// Starts a moto server and returns once it serves `GET /moto-api/data.json`.
    pub async fn start() -> Moto {
        let moto = tool_path("moto_server");
        let client = probe_client();
        let (process, port) = launch(
            "moto_server",
            TempDir::new("moto"),
            free_port,
            |port| {
                let mut cmd = Command::new(&moto);
                cmd.arg("-H")
                    .arg("127.0.0.1")
                    .arg("-p")
                    .arg(port.to_string())
                    .env("PYTHONUNBUFFERED", "1");
                cmd
            },
            async |port, log| {
                // Werkzeug logs this line only after binding, so it proves the
                // port is ours and not another test's moto.
                let bound = std::fs::read_to_string(log).is_ok_and(|text| {
                    text.contains(&format!("Running on http://127.0.0.1:{port}"))
                });
                let data = client.get(format!("http://127.0.0.1:{port}/moto-api/data.json"));
                bound && answers_ok(data).await
            },
        )
        .await;
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            process,
        }
    }

    /// Kills the server to simulate an outage; all its state is lost.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}
