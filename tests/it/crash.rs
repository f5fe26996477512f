//! Crash safety of the real binary (invariant 3): `rotate` is killed with
//! SIGKILL at each of the driver's crash points (`MDR_CRASH_AT`), then the
//! daemon is started on the same store and must converge: no unfinished
//! rotation, exactly the stored token live at MotherDuck, and that token
//! authenticates. Also: two `rotate` processes on one store rotate once
//! (invariant 4).
//!
//! The simulator runs in the test process on the system clock, which the
//! child processes share. Children's logs go to files in the test's
//! directory and are printed when an assertion fails.

mod acknowledgements;
mod one_shot;
mod points;
mod promote;
mod remote;
mod restart;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;

use motherduck_rotator::motherduck::{Client, TokenCheck};
use motherduck_rotator::secret::SecretString;

use crate::harness::client_with_token;
use crate::support::config_toml;
use crate::support::daemon::{self, PATIENCE, Rotator};
use crate::support::world::{self, Bench, Scratch};

const SA: &str = "svc_etl";

/// The built-in check: the stored token authenticates.
const VERIFY_OK: &str = r#"[{ type = "motherduck", interval = "20ms", deadline = "5s" }]"#;
/// A hook that always fails, quickly: the rotation rolls back.
const VERIFY_FAILS: &str = r#"[{ type = "command", command = ["/bin/sh", "-c", "exit 1"], interval = "10ms", deadline = "100ms", timeout = "100ms" }]"#;

/// Step retries, quick.
const RETRY: &str =
    "retry = { max_attempts = 2, initial_backoff = \"10ms\", max_backoff = \"20ms\" }\n";

/// The `rotate` of the one policy.
const ROTATE: &[&str] = &["rotate", "etl"];

/// A test directory with the admin token, a simulator, and config files.
struct World {
    bench: Bench,
    admin: Client,
}

impl World {
    async fn new() -> World {
        let bench = Bench::new(
            Scratch::new("crash"),
            &[SA],
            "info,motherduck_rotator=debug",
        )
        .await;
        let admin = client_with_token(&bench.sim.base_url(), bench.sim.admin_token.clone());
        World { bench, admin }
    }

    fn root(&self) -> &Path {
        self.bench.dir()
    }

    fn bin(&self) -> &Rotator {
        &self.bench.bin
    }

    /// Writes `<name>.toml`: one policy on a far schedule (the daemon never
    /// rotates on its own during a test), no overlap, and a sweep at start
    /// that revokes any unreferenced token at once.
    fn config(&self, name: &str, verify: &str) -> PathBuf {
        let path = self.root().join(format!("{name}.toml"));
        let src = config_toml::motherduck_unthrottled(&self.bench.sim.base_url())
            + &config_toml::daemon(
                "sweep_interval = \"1h\"\norphan_min_age = \"0s\"\nshutdown_timeout = \"10s\"\nlock_retry_interval = \"1s\"\n",
            )
            + &config_toml::file_store("local", "store")
            + &config_toml::policy(
                "etl",
                SA,
                r#"{ store = "local", path = "etl.json", bare_token_file = "etl.token" }"#,
                &format!("verify = {verify}\n{RETRY}"),
            );
        std::fs::write(&path, src).unwrap();
        path
    }

    /// [`config`](Self::config) with each `(from, to)` replaced once in
    /// its text (each must be there).
    fn config_edited(&self, name: &str, verify: &str, edits: &[(&str, &str)]) -> PathBuf {
        let path = self.config(name, verify);
        let mut src = std::fs::read_to_string(&path).unwrap();
        for (from, to) in edits {
            assert!(src.contains(from), "`{from}` is not in the test config");
            src = src.replacen(from, to, 1);
        }
        std::fs::write(&path, src).unwrap();
        path
    }

    fn store(&self) -> PathBuf {
        self.root().join("store")
    }

    /// The current record, if any.
    fn current(&self) -> Option<Value> {
        let bytes = std::fs::read(self.store().join("etl.json")).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// The token id of the current record, which must exist.
    fn current_id(&self) -> String {
        self.current().unwrap()["token_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn live_ids(&self) -> Vec<String> {
        world::live_ids(&self.bench.sim.sim, SA)
    }

    fn sim_revoked(&self, id: &str) -> bool {
        self.bench
            .sim
            .sim
            .issued_tokens()
            .iter()
            .any(|t| t.id == id && t.revoked_at.is_some())
    }

    fn issued_count(&self) -> usize {
        world::issued_count(&self.bench.sim.sim, SA)
    }

    /// `rotate` as child `log`, which must succeed.
    async fn rotate_ok(&self, log: &str, config: &Path) {
        let status = self.bin().run(log, config, ROTATE, None).await;
        assert!(status.success(), "{log} rotate: {status}\n{}", self.logs());
    }

    /// `rotate` as child `crashed`, killed at `point`; proves it died
    /// there.
    async fn rotate_killed_at(&self, config: &Path, point: &str) {
        let status = self.bin().run("crashed", config, ROTATE, Some(point)).await;
        assert_killed_at(self.bin(), status, point);
    }

    /// Runs `args` as child `name`, which must exit 1 and say `says` in
    /// its output file `file` (e.g. `name.out`).
    async fn run_refused(&self, name: &str, config: &Path, args: &[&str], file: &str, says: &str) {
        let status = self.bin().run(name, config, args, None).await;
        assert_eq!(status.code(), Some(1), "{}", self.logs());
        assert!(self.log(file).contains(says), "{}", self.logs());
    }

    fn log(&self, name: &str) -> String {
        self.bin().log(name)
    }

    /// Every child's output, for failure messages.
    fn logs(&self) -> String {
        self.bin().logs()
    }

    /// [`config_edited`](Self::config_edited) of `good.toml`, verified by
    /// the built-in check.
    fn good_config(&self, edits: &[(&str, &str)]) -> PathBuf {
        self.config_edited("good", VERIFY_OK, edits)
    }

    /// Polls `probe` every 10 ms until it returns `Some`, failing with
    /// `what` and every log after [`PATIENCE`].
    async fn eventually<T>(&self, what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
        daemon::eventually(
            PATIENCE,
            Duration::from_millis(10),
            what,
            || self.logs(),
            probe,
        )
        .await
    }

    /// Stops `daemon` with SIGTERM; it must exit 0.
    async fn stop_ok(&self, daemon: &mut tokio::process::Child) {
        let status = daemon::stop(daemon, || self.logs()).await;
        assert!(status.success(), "daemon exit: {status}\n{}", self.logs());
    }

    /// Waits until the daemon started as `daemon` has finished a pass and
    /// `converged` holds, as after the crash at `point`.
    async fn converged_after_a_pass<T>(
        &self,
        daemon: &mut tokio::process::Child,
        point: &str,
        converged: impl Fn(&World) -> Result<T, String>,
    ) -> T {
        let what = format!("not converged after `{point}`");
        daemon::until_converged(
            daemon,
            PATIENCE,
            &what,
            || self.logs(),
            async || {
                let t = converged(self)?;
                if self.passed("daemon") {
                    Ok(t)
                } else {
                    Err("the daemon made no pass".to_owned())
                }
            },
        )
        .await
    }

    /// Whether the daemon logging to `<log>.err` finished a pass: the
    /// policy loop logs `waiting` when a pass is over.
    fn passed(&self, log: &str) -> bool {
        self.log(&format!("{log}.err"))
            .contains(r#""message":"waiting""#)
    }

    /// Converged: no unfinished rotation, nothing pending, exactly the
    /// stored token live, the bare file equal to it.
    fn converged(&self) -> Result<Value, String> {
        let cur = self.current().ok_or("no current record")?;
        let state = cur["rotation"]["state"].as_str().unwrap_or("none");
        if state != "done" && state != "rolled_back" {
            return Err(format!("rotation unfinished: {state}"));
        }
        if self.store().join("etl.json.pending").exists() {
            return Err("a pending record is left".into());
        }
        let id = cur["token_id"].as_str().unwrap().to_owned();
        let live = self.live_ids();
        if live != [id.clone()] {
            return Err(format!("live tokens {live:?}, stored {id}"));
        }
        let bare = std::fs::read_to_string(self.store().join("etl.token")).unwrap_or_default();
        if bare.trim_end() != cur["token"].as_str().unwrap() {
            return Err("the bare token file differs from the record".into());
        }
        Ok(cur)
    }

    /// [`converged`](Self::converged), failing the test when not.
    fn assert_converged(&self) -> Value {
        self.converged()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// The stored secret authenticates: no secret was lost or mangled.
    async fn assert_stored_token_works(&self) {
        let cur = self.current().unwrap();
        let secret = SecretString::from(cur["token"].as_str().unwrap().to_owned());
        assert_eq!(
            self.admin.check_token(&secret).await.unwrap(),
            TokenCheck::ValidNonAdmin,
            "the stored token must authenticate"
        );
    }

    /// A hook that passes once the file `go` in the test directory exists,
    /// polled every `interval`, and `go`'s path.
    fn gate(&self, interval: &str, deadline: &str) -> (String, PathBuf) {
        let gate = self.root().join("go");
        let verify = format!(
            r#"{{ type = "command", command = ["/bin/sh", "-c", "test -e '{}'"], interval = "{interval}", deadline = "{deadline}", timeout = "5s" }}"#,
            gate.display()
        );
        (verify, gate)
    }
}

/// `status` is that of a child killed at crash point `point` (with `#N`
/// for the Nth time there), which logged to `crashed.err` that it was.
fn assert_killed_at(bin: &Rotator, status: ExitStatus, point: &str) {
    let name = point.split('#').next().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed at `{point}`: {status}\n{}",
        bin.logs()
    );
    assert!(
        bin.log("crashed.err")
            .contains(&format!("MDR_CRASH_AT={name}: killing the process")),
        "{}",
        bin.logs()
    );
}

/// The configuration the crashing `rotate` runs with: `good`, but one
/// whose verification fails (made by `failing`) to reach `after-restore`.
fn crash_config(point: &str, good: &Path, failing: impl FnOnce() -> PathBuf) -> PathBuf {
    if point == "after-restore" {
        failing()
    } else {
        good.to_path_buf()
    }
}
