//! The end-to-end proof that reload actions keep consumers working (issue
//! #15): the real daemon rotates a policy over and over while a consumer
//! process that reads its token only at start and on SIGHUP
//! (`consumer.py`) sends a request to the simulator every 50 ms.
//!
//! With a `signal` reload action (SIGHUP to the consumer's pid file) and an
//! `ack` hook the consumer calls once it has switched, 20 rotations cost
//! the consumer no failed request. Without the action (verified by the
//! built-in check, since a consumer that is never told never acknowledges),
//! the old token is revoked under the consumer and its requests fail: the
//! action is what keeps it alive.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::process::Child;

use crate::support::config_toml;
use crate::support::daemon::{self, PATIENCE};
use crate::support::world::{Bench, Scratch};

const SA: &str = "svc_app";

struct Run {
    bench: Bench,
}

impl Run {
    async fn new() -> Run {
        Run {
            bench: Bench::new(Scratch::new("zero-downtime"), &[SA], "info").await,
        }
    }

    fn dir(&self) -> &Path {
        self.bench.dir()
    }

    fn logs(&self) -> String {
        self.bench.bin.logs()
    }

    /// A configuration rotating every second with no overlap, writing an
    /// env file, with `verify` and `reload` (TOML lists) and the
    /// acknowledgement route on `port`.
    fn config(&self, name: &str, verify: &str, reload: &str, port: u16) -> PathBuf {
        let path = self.dir().join(format!("{name}.toml"));
        let src = config_toml::motherduck_unthrottled(&self.bench.sim.base_url())
            + &config_toml::daemon(&format!(
                "listen = \"127.0.0.1:{port}\"\nsweep_interval = \"1h\"\norphan_min_age = \"1m\"\nshutdown_timeout = \"10s\"\n"
            ))
            .replacen("listen = \"127.0.0.1:0\"\n", "", 1)
            + &config_toml::file_store("local", "store")
            + &format!(
                r#"
[[policy]]
name = "app"
service_account = "{SA}"
schedule = {{ interval = "1s" }}
overlap = "0s"
destinations = [{{ store = "local", path = "app.json", env_file = "app.env" }}]
retry = {{ max_attempts = 2, initial_backoff = "100ms", max_backoff = "200ms" }}
verify = {verify}
reload = {reload}
"#
            );
        std::fs::write(&path, src).unwrap();
        path
    }

    fn store(&self) -> PathBuf {
        self.dir().join("store")
    }

    fn state(&self) -> PathBuf {
        self.dir().join("consumer")
    }

    /// Starts the consumer on the current env file; waits for its pid file.
    async fn consumer(&self, ack: Option<u16>) -> Child {
        std::fs::create_dir_all(self.state()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/reload/consumer.py");
        let ack = ack.map_or("-".to_owned(), |p| format!("http://127.0.0.1:{p}"));
        let child = tokio::process::Command::new("python3")
            .arg(script)
            .arg(self.store().join("app.env"))
            .arg(self.store().join("app.json"))
            .arg(self.bench.sim.base_url())
            .arg(ack)
            .arg(self.state())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the consumer");
        self.eventually("the consumer wrote no pid file", async || {
            self.state().join("pid").exists().then_some(())
        })
        .await;
        child
    }

    fn counts(&self) -> Value {
        std::fs::read(self.state().join("counts"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn completed(&self) -> usize {
        self.bench
            .bin
            .log("daemon.err")
            .matches("rotation complete")
            .count()
    }

    async fn eventually<T>(&self, what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
        daemon::eventually(
            PATIENCE * 4,
            Duration::from_millis(20),
            what,
            || self.logs(),
            probe,
        )
        .await
    }

    /// Runs `rotations` rotations of the daemon on `config` with a
    /// consumer running, and returns the consumer's counts.
    async fn rotate_under_a_consumer(
        &self,
        config: &Path,
        rotations: usize,
        ack: Option<u16>,
    ) -> Value {
        // The first token, without a consumer to tell yet.
        let first = self.config("first", r#"[{ type = "motherduck" }]"#, "[]", 0);
        let status = self
            .bench
            .bin
            .run("first", &first, &["rotate", "app"], None)
            .await;
        assert!(status.success(), "{}", self.logs());
        let mut consumer = self.consumer(ack).await;
        let mut d = self.bench.bin.spawn("daemon", config, &["run"], None);
        self.eventually("the daemon did not rotate often enough", async || {
            (self.completed() >= rotations).then_some(())
        })
        .await;
        daemon::stop(&mut d, || self.logs()).await;
        std::fs::write(self.state().join("stop"), "").unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), consumer.wait()).await;
        self.counts()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_reload_and_an_acknowledgement_keep_a_consumer_working_across_20_rotations() {
    let run = Run::new().await;
    let port = crate::support::services::free_port();
    let pid_file = run.state().join("pid");
    let config = run.config(
        "told",
        r#"[{ type = "ack", deadline = "10s" }]"#,
        &format!(
            r#"[{{ type = "signal", signal = "HUP", pid_file = "{}", debounce = "0s", min_interval = "0s" }}]"#,
            pid_file.display()
        ),
        port,
    );
    let counts = run.rotate_under_a_consumer(&config, 20, Some(port)).await;
    eprintln!("with the reload action: {counts}");
    assert_eq!(counts["failed"], 0, "{counts}\n{}", run.logs());
    assert!(counts["ok"].as_u64().unwrap() > 100, "{counts}");
    assert!(counts["acks"].as_u64().unwrap() >= 20, "{counts}");
    assert!(
        !run.bench.bin.log("daemon.err").contains("rolled back"),
        "{}",
        run.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_reload_action_the_consumer_fails_once_its_token_is_revoked() {
    let run = Run::new().await;
    let config = run.config("untold", r#"[{ type = "motherduck" }]"#, "[]", 0);
    let counts = run.rotate_under_a_consumer(&config, 3, None).await;
    eprintln!("without the reload action: {counts}");
    assert!(
        counts["failed"].as_u64().unwrap() > 0,
        "{counts}\n{}",
        run.logs()
    );
    assert_eq!(counts["reloads"], 0);
}
