//! The real daemon process under systemd-style supervision: the sd_notify
//! protocol on a socket the test owns, SIGHUP reloads (good and bad),
//! SIGTERM at a safe point mid-rotation, and a second signal exiting at
//! once.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use motherduck_rotator::motherduck::Endpoint;
use motherduck_rotator::simulator::Fault;
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

use crate::support::config_toml;
use crate::support::services::free_port;
use crate::support::world::{self, Bench, Scratch};

/// Waits for `cond`, polling every 10 ms, at most `secs` seconds.
async fn eventually<F: FnMut() -> bool>(what: &str, secs: u64, mut cond: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// The exit status of `child`, which must end within `secs` seconds
/// (else a failure saying `what`).
async fn exit_within(secs: u64, child: &mut Child, what: &str) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(secs), child.wait())
        .await
        .expect(what)
        .unwrap()
}

struct Env {
    bench: Bench,
    port: u16,
}

impl Env {
    async fn new() -> Env {
        let scratch = Scratch::new("sig");
        let bench = Bench::new(scratch, &["svc_alpha", "svc_beta"], "info").await;
        Env {
            bench,
            port: free_port(),
        }
    }

    fn dir(&self) -> &Path {
        self.bench.dir()
    }

    fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// Writes the configuration with `policies` (TOML) appended.
    fn write_config(&self, extra_daemon: &str, policies: &str) {
        let src = config_toml::motherduck(&self.bench.sim.base_url())
            + "request_timeout = \"60s\"\n"
            + &format!(
                "\n[daemon]\nlisten = \"127.0.0.1:{}\"\nlog_format = \"json\"\norphan_min_age = \"0s\"\n{extra_daemon}\n",
                self.port
            )
            + &config_toml::file_store("local", "store")
            + policies;
        std::fs::write(self.config_path(), src).unwrap();
    }

    fn record(&self, file: &str) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.dir().join("store").join(file)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn state_of(&self, file: &str) -> Option<String> {
        self.record(file)
            .and_then(|r| r["rotation"]["state"].as_str().map(str::to_owned))
    }

    fn spawn(&self, notify: Option<&Path>) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"));
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("run")
            .current_dir(self.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", n).env("WATCHDOG_USEC", "300000");
        }
        cmd.spawn().unwrap()
    }

    async fn metrics(&self) -> String {
        match reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

/// The built-in check, as a policy's `verify` line.
const VERIFY: &str =
    "verify = [{ type = \"motherduck\", interval = \"10ms\", deadline = \"10s\" }]\n";

/// Policy `name` for `svc_<name>`, writing `<name>.json` in the file store,
/// verified by the `verify` line (none when empty).
fn local_policy(name: &str, verify: &str) -> String {
    config_toml::policy(
        name,
        &format!("svc_{name}"),
        &format!(r#"{{ store = "local", path = "{name}.json" }}"#),
        verify,
    )
}

/// Collects notification datagrams until one contains `want`.
async fn expect_notification(sock: &UnixDatagram, seen: &mut Vec<String>, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 4096];
    loop {
        if seen.iter().any(|m| m.lines().any(|l| l == want)) {
            return;
        }
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no `{want}` notification; got {seen:?}"))
            .unwrap();
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

#[tokio::test]
async fn sd_notify_reload_and_graceful_stop() {
    let env = Env::new().await;
    env.write_config("", &local_policy("alpha", VERIFY));
    let sock_path = env.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = env.spawn(Some(&sock_path));
    let mut seen = Vec::new();

    expect_notification(&sock, &mut seen, "READY=1").await;
    let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=running 1 policy")),
        "{ready}"
    );
    expect_notification(&sock, &mut seen, "WATCHDOG=1").await;
    eventually("alpha rotated", 20, || {
        env.state_of("alpha.json").as_deref() == Some("done")
    })
    .await;

    // A good reload adds a policy.
    env.write_config(
        "",
        &(local_policy("alpha", VERIFY) + &local_policy("beta", VERIFY)),
    );
    seen.clear();
    signal(&child, "HUP");
    expect_notification(&sock, &mut seen, "RELOADING=1").await;
    expect_notification(&sock, &mut seen, "READY=1").await;
    eventually("beta rotated after the reload", 20, || {
        env.state_of("beta.json").as_deref() == Some("done")
    })
    .await;
    let m = env.metrics().await;
    assert!(
        m.contains(r#"motherduck_rotator_config_reloads_total{outcome="success"} 1"#),
        "{m}"
    );

    // A bad reload keeps the running configuration.
    let alpha_before = env.record("alpha.json").unwrap()["token_id"].clone();
    std::fs::write(env.config_path(), "[motherduck\nnot toml").unwrap();
    signal(&child, "HUP");
    let mut failed = false;
    for _ in 0..2000 {
        if env
            .metrics()
            .await
            .contains(r#"motherduck_rotator_config_reloads_total{outcome="failure"} 1"#)
        {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(failed, "the failed reload was not counted");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthz", env.port))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(env.record("alpha.json").unwrap()["token_id"], alpha_before);

    seen.clear();
    signal(&child, "TERM");
    expect_notification(&sock, &mut seen, "STOPPING=1").await;
    let status = exit_within(20, &mut child, "exits after SIGTERM").await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once_and_a_restart_converges() {
    let env = Env::new().await;
    env.write_config("shutdown_timeout = \"60s\"", &local_policy("alpha", VERIFY));
    // The create hangs: the rotation is stuck in a step that cannot be
    // interrupted, so the first SIGTERM has to wait.
    env.bench
        .sim
        .sim
        .fail_next(Endpoint::CreateToken, 1, Fault::Hang);
    let mut child = env.spawn(None);
    eventually("the create to be in flight", 20, || {
        env.bench.sim.sim.request_count(Endpoint::CreateToken) >= 1
    })
    .await;
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the in-flight step"
    );
    signal(&child, "TERM");
    let status = exit_within(5, &mut child, "the second signal exits at once").await;
    assert_eq!(status.code(), Some(130));

    // Every step can be resumed: a restart completes the rotation.
    let mut child = env.spawn(None);
    eventually("alpha rotated after the restart", 20, || {
        env.state_of("alpha.json").as_deref() == Some("done")
    })
    .await;
    let stored = env.record("alpha.json").unwrap();
    let live = world::live_ids(&env.bench.sim.sim, "svc_alpha");
    assert_eq!(live, vec![stored["token_id"].as_str().unwrap().to_owned()]);
    signal(&child, "TERM");
    let status = exit_within(20, &mut child, "exits").await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn reload_and_stop_mid_verification() {
    let env = Env::new().await;
    let gate = env.dir().join("go");
    let waiting = local_policy(
        "alpha",
        &format!(
            r#"verify = [{{ type = "command", command = ["sh", "-c", "while [ ! -f '{gate}' ]; do sleep 0.01; done"], timeout = "60s", interval = "10ms", deadline = "60s" }}]
"#,
            gate = gate.display()
        ),
    );
    env.write_config("", &waiting);
    let mut child = env.spawn(None);
    eventually("the new token to be promoted", 20, || {
        env.state_of("alpha.json").as_deref() == Some("promoted")
    })
    .await;
    let rotation = env.record("alpha.json").unwrap()["rotation_id"].clone();

    // SIGHUP while verifying: the rotation keeps its policy (still waits on
    // the gate) even though the new configuration has no hook at all.
    env.write_config("", &local_policy("alpha", ""));
    signal(&child, "HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.state_of("alpha.json").as_deref(), Some("promoted"));

    // SIGTERM: the verification is interrupted at a safe point, not rolled
    // back, and the process exits 0.
    signal(&child, "TERM");
    let status = exit_within(20, &mut child, "exits after SIGTERM").await;
    assert_eq!(status.code(), Some(0));
    let rec = env.record("alpha.json").unwrap();
    assert_eq!(rec["rotation"]["state"], "promoted");
    assert_eq!(rec["rotation_id"], rotation);

    // The restart resumes that rotation (under the new configuration,
    // which has no hook) and completes it.
    std::fs::write(&gate, "").unwrap();
    let mut child = env.spawn(None);
    eventually("the resumed rotation to complete", 20, || {
        env.state_of("alpha.json").as_deref() == Some("done")
    })
    .await;
    assert_eq!(env.record("alpha.json").unwrap()["rotation_id"], rotation);
    assert_eq!(env.bench.sim.sim.live_tokens("svc_alpha").len(), 1);
    signal(&child, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
}
