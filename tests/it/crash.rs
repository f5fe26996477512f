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

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use motherduck_rotator::motherduck::{Client, TokenCheck};
use motherduck_rotator::secret::{ExposeSecret, SecretString};
use motherduck_rotator::simulator::{RunningSimulator, Simulator, SimulatorOptions};

use crate::harness::client_with_token;
use crate::support::child_logs::ChildLogs;

const SA: &str = "svc_etl";
const BIN: &str = env!("CARGO_BIN_EXE_motherduck-rotator");
/// Upper bound for a child process to finish or a state to be reached.
const PATIENCE: Duration = Duration::from_secs(30);

/// The built-in check: the stored token authenticates.
const VERIFY_OK: &str = r#"[{ type = "motherduck", interval = "20ms", deadline = "5s" }]"#;
/// A hook that always fails, quickly: the rotation rolls back.
const VERIFY_FAILS: &str = r#"[{ type = "command", command = ["/bin/sh", "-c", "exit 1"], interval = "10ms", deadline = "100ms", timeout = "100ms" }]"#;

/// A test directory with the admin token, a simulator, and config files.
struct World {
    root: PathBuf,
    running: RunningSimulator,
    admin: Client,
    out: ChildLogs,
}

impl World {
    async fn new() -> World {
        let running = Simulator::spawn(SimulatorOptions::default())
            .await
            .expect("simulator starts");
        running.sim.add_service_account(SA);
        let admin = client_with_token(&running.base_url(), running.admin_token.clone());
        let root =
            std::env::temp_dir().join(format!("mdr-crash-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).unwrap();
        let token = root.join("admin.token");
        crate::support::write_secret(&token, running.admin_token.expose_secret());
        World {
            out: ChildLogs::new(&root),
            root,
            running,
            admin,
        }
    }

    /// Writes `<name>.toml`: one policy on a far schedule (the daemon never
    /// rotates on its own during a test), no overlap, and a sweep at start
    /// that revokes any unreferenced token at once.
    fn config(&self, name: &str, verify: &str) -> PathBuf {
        let path = self.root.join(format!("{name}.toml"));
        let src = format!(
            r#"
[motherduck]
api_url = "{url}"
admin_token = {{ file = "admin.token" }}
request_timeout = "5s"
rate_limit_per_second = 1000

[daemon]
listen = "127.0.0.1:0"
log_format = "json"
sweep_interval = "1h"
orphan_min_age = "0s"
shutdown_timeout = "10s"
lock_retry_interval = "1s"

[stores.local]
type = "file"
directory = "store"

[[policy]]
name = "etl"
service_account = "{SA}"
schedule = {{ interval = "1d" }}
overlap = "0s"
verify = {verify}
destinations = [{{ store = "local", path = "etl.json", bare_token_file = "etl.token" }}]
retry = {{ max_attempts = 2, initial_backoff = "10ms", max_backoff = "20ms" }}
"#,
            url = self.running.base_url(),
        );
        std::fs::write(&path, src).unwrap();
        path
    }

    /// [`config`](Self::config) with each `(from, to)` replaced once in
    /// its text (each must be there); the path as a string for `--config`.
    fn config_edited(&self, name: &str, verify: &str, edits: &[(&str, &str)]) -> String {
        let path = self.config(name, verify);
        let mut src = std::fs::read_to_string(&path).unwrap();
        for (from, to) in edits {
            assert!(src.contains(from), "`{from}` is not in the test config");
            src = src.replacen(from, to, 1);
        }
        std::fs::write(&path, src).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// The current record, if any.
    fn current(&self) -> Option<Value> {
        let bytes = std::fs::read(self.store().join("etl.json")).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
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

    fn sim_revoked(&self, id: &str) -> bool {
        self.running
            .sim
            .issued_tokens()
            .iter()
            .any(|t| t.id == id && t.revoked_at.is_some())
    }

    fn issued_count(&self) -> usize {
        self.running
            .sim
            .issued_tokens()
            .iter()
            .filter(|t| t.username == SA)
            .count()
    }

    /// Starts the binary with `args`; its output goes to `<log>.out` and
    /// `<log>.err`.
    fn spawn(&self, log: &str, args: &[&str], crash_at: Option<&str>) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .env_remove("MDR_CRASH_AT")
            .env_remove("MOTHERDUCK_ROTATOR_CONFIG")
            .env("MDR_LOG", "info,motherduck_rotator=debug")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        self.out.attach(&mut cmd, log);
        if let Some(p) = crash_at {
            cmd.env("MDR_CRASH_AT", p);
        }
        cmd.spawn().expect("the binary starts")
    }

    /// Runs the binary to its end.
    async fn run(&self, log: &str, args: &[&str], crash_at: Option<&str>) -> ExitStatus {
        let mut child = self.spawn(log, args, crash_at);
        self.out.wait(log, &mut child, PATIENCE).await
    }

    fn log(&self, name: &str) -> String {
        self.out.read(name)
    }

    /// Every child's output, for failure messages.
    fn logs(&self) -> String {
        self.out.all()
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
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("still running") as i32;
    // SAFETY: kill(2) on a child we started; no memory is involved.
    let r = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(r, 0, "kill failed");
}

/// How the rotation killed at a crash point must end after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The killed run created nothing that survives: the first token is
    /// current.
    Unchanged,
    /// Either completed or rolled back; both are safe.
    Either,
    /// The new token is current and the old one revoked.
    Completed,
    /// The old token is current again, the new one revoked.
    RolledBack,
}

/// What the store and MotherDuck show right after the kill, proving the
/// process died where the test means it to.
struct AfterCrash {
    /// The journal state of the current record.
    state: &'static str,
    /// Whether a staged record is waiting.
    pending: bool,
    /// Live tokens of the service account.
    live: usize,
}

async fn crash_and_recover(point: &str, after: AfterCrash, outcome: Outcome) {
    let w = World::new().await;
    let good = w.config("good", VERIFY_OK);
    let crash_cfg = if point == "after-restore" {
        w.config("failing", VERIFY_FAILS)
    } else {
        good.clone()
    };
    let good = good.to_str().unwrap().to_owned();

    // The first token, without crashing.
    let status = w
        .run("first", &["--config", &good, "rotate", "etl"], None)
        .await;
    assert!(status.success(), "first rotate: {status}\n{}", w.logs());
    let first = w
        .converged()
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    let first_id = first["token_id"].as_str().unwrap().to_owned();

    // The rotation, killed at the crash point.
    let status = w
        .run(
            "crashed",
            &["--config", crash_cfg.to_str().unwrap(), "rotate", "etl"],
            Some(point),
        )
        .await;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed at `{point}`: {status}\n{}",
        w.logs()
    );
    assert!(
        w.log("crashed.err")
            .contains(&format!("MDR_CRASH_AT={point}: killing the process")),
        "{}",
        w.logs()
    );
    let issued_by_crash = w.issued_count() - 1;
    let cur = w.current().unwrap();
    assert_eq!(
        (
            cur["rotation"]["state"].as_str().unwrap(),
            w.store().join("etl.json.pending").exists(),
            w.live_ids().len(),
        ),
        (after.state, after.pending, after.live),
        "state after the kill at `{point}` (journal state, pending, live tokens)\n{}",
        w.logs()
    );

    // The daemon restarts on the same store and recovers.
    let mut daemon = w.spawn("daemon", &["--config", &good, "run"], None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let cur = loop {
        // The policy loop logs `waiting` when a pass is over.
        let passed = w.log("daemon.err").contains(r#""message":"waiting""#);
        match w.converged() {
            Ok(cur) if passed => break cur,
            Ok(_) => {}
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("not converged after `{point}`: {e}\n{}", w.logs())
            }
            Err(_) => {}
        }
        if let Ok(Some(s)) = daemon.try_wait() {
            panic!("the daemon exited: {s}\n{}", w.logs());
        }
        assert!(
            tokio::time::Instant::now() <= deadline,
            "the daemon made no pass\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    w.assert_stored_token_works().await;

    let id = cur["token_id"].as_str().unwrap();
    let state = cur["rotation"]["state"].as_str().unwrap();
    match outcome {
        Outcome::Unchanged => {
            assert_eq!(id, first_id, "{}", w.logs());
        }
        Outcome::Completed => {
            assert_ne!(id, first_id, "{}", w.logs());
            assert_eq!(state, "done");
        }
        Outcome::RolledBack => {
            assert_eq!(id, first_id, "{}", w.logs());
            assert_eq!(state, "rolled_back");
        }
        Outcome::Either => {}
    }
    // Whatever the killed run created is stored or revoked, and the daemon
    // itself rotated nothing more (its schedule is a day away).
    assert_eq!(
        w.issued_count(),
        1 + issued_by_crash,
        "the restart created no token\n{}",
        w.logs()
    );

    sigterm(&daemon);
    let status = tokio::time::timeout(PATIENCE, daemon.wait())
        .await
        .unwrap_or_else(|_| panic!("the daemon did not stop on SIGTERM\n{}", w.logs()))
        .unwrap();
    assert!(status.success(), "daemon exit: {status}\n{}", w.logs());
    crate::support::log_lines::assert_unique_keys(&w.log("daemon.err"));
    crate::support::log_lines::assert_plain_text(&w.log("first.err"));
    // Still converged after shutdown.
    w.converged()
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_create_then_restart_converges() {
    crash_and_recover(
        "before-create",
        AfterCrash {
            state: "done",
            pending: false,
            live: 1,
        },
        Outcome::Unchanged,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_create_then_restart_revokes_the_unstored_token() {
    crash_and_recover(
        "after-create",
        AfterCrash {
            state: "done",
            pending: false,
            live: 2,
        },
        Outcome::Unchanged,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_stage_then_restart_converges() {
    crash_and_recover(
        "after-stage",
        AfterCrash {
            state: "done",
            pending: true,
            live: 2,
        },
        Outcome::Either,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_promote_then_restart_converges() {
    crash_and_recover(
        "before-promote",
        AfterCrash {
            state: "done",
            pending: true,
            live: 2,
        },
        Outcome::Either,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_promote_then_restart_completes() {
    crash_and_recover(
        "after-promote",
        AfterCrash {
            state: "promoted",
            pending: false,
            live: 2,
        },
        Outcome::Completed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_verify_then_restart_completes() {
    crash_and_recover(
        "after-verify",
        AfterCrash {
            state: "verified",
            pending: false,
            live: 2,
        },
        Outcome::Completed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_revoke_old_then_restart_completes() {
    crash_and_recover(
        "after-revoke-old",
        AfterCrash {
            state: "verified",
            pending: false,
            live: 1,
        },
        Outcome::Completed,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_restore_then_restart_revokes_the_new_token() {
    crash_and_recover(
        "after-restore",
        AfterCrash {
            state: "rolled_back",
            pending: false,
            live: 2,
        },
        Outcome::RolledBack,
    )
    .await;
}

/// The second file destination the promote regression tests add.
const SECOND_DEST: (&str, &str) = (
    r#"destinations = [{ store = "local", path = "etl.json", bare_token_file = "etl.token" }]"#,
    r#"destinations = [{ store = "local", path = "etl.json", bare_token_file = "etl.token" }, { store = "local", path = "etl2.json", bare_token_file = "etl2.token" }]"#,
);

impl World {
    /// Converged in every destination named (record file, bare file): no
    /// unfinished rotation, nothing pending, the bare file equal to its
    /// record, the same token everywhere and exactly it live.
    fn converged_in(&self, dests: &[(&str, &str)]) -> Result<String, String> {
        let mut stored = None;
        for (record, bare) in dests {
            let bytes =
                std::fs::read(self.store().join(record)).map_err(|e| format!("{record}: {e}"))?;
            let cur: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            let state = cur["rotation"]["state"].as_str().unwrap_or("none");
            if state != "done" && state != "rolled_back" {
                return Err(format!("{record}: rotation unfinished: {state}"));
            }
            if self.store().join(format!("{record}.pending")).exists() {
                return Err(format!("{record}: a pending record is left"));
            }
            let held = std::fs::read_to_string(self.store().join(bare)).unwrap_or_default();
            if held.trim_end() != cur["token"].as_str().unwrap_or_default() {
                return Err(format!("{bare} differs from {record}"));
            }
            let id = cur["token_id"].as_str().unwrap_or_default().to_owned();
            match &stored {
                None => stored = Some(id),
                Some(s) if *s == id => {}
                Some(s) => return Err(format!("{record} holds {id}, another holds {s}")),
            }
        }
        let id = stored.ok_or("no destination")?;
        let live = self.live_ids();
        if live != [id.clone()] {
            return Err(format!("live tokens {live:?}, stored {id}"));
        }
        Ok(id)
    }
}

/// Kill inside the file store's promote (`MDR_CRASH_AT=point`, with `#N`
/// for the Nth destination), restart the daemon: it must finish promote in
/// every destination (record, bare file, pending removed) before the old
/// token is revoked, and then rotate no more.
async fn crash_inside_promote(point: &str, two_destinations: bool) {
    let w = World::new().await;
    let mut dests = vec![("etl.json", "etl.token")];
    let cfg = if two_destinations {
        dests.push(("etl2.json", "etl2.token"));
        w.config_edited("good", VERIFY_OK, &[SECOND_DEST])
    } else {
        w.config("good", VERIFY_OK).to_str().unwrap().to_owned()
    };
    let status = w
        .run("first", &["--config", &cfg, "rotate", "etl"], None)
        .await;
    assert!(status.success(), "first rotate: {status}\n{}", w.logs());
    let first = w
        .converged_in(&dests)
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));

    let status = w
        .run("crashed", &["--config", &cfg, "rotate", "etl"], Some(point))
        .await;
    let name = point.split('#').next().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "killed at `{point}`: {status}\n{}",
        w.logs()
    );
    assert!(
        w.log("crashed.err")
            .contains(&format!("MDR_CRASH_AT={name}: killing the process")),
        "{}",
        w.logs()
    );
    assert_eq!(w.issued_count(), 2, "{}", w.logs());

    let mut daemon = w.spawn("daemon", &["--config", &cfg, "run"], None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let id = loop {
        let passed = w.log("daemon.err").contains(r#""message":"waiting""#);
        match w.converged_in(&dests) {
            Ok(id) if passed => break id,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("not converged after `{point}`: {e}\n{}", w.logs())
            }
            _ => {}
        }
        if let Ok(Some(s)) = daemon.try_wait() {
            panic!("the daemon exited: {s}\n{}", w.logs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(
        id,
        first,
        "the interrupted rotation completes\n{}",
        w.logs()
    );
    w.assert_stored_token_works().await;
    // Completed once: the daemon does not go round verify and revoke again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let done = w
        .log("daemon.err")
        .matches(r#""message":"rotation complete""#)
        .count();
    assert_eq!(done, 1, "rotation completed {done} times\n{}", w.logs());
    assert_eq!(
        w.issued_count(),
        2,
        "the restart created no token\n{}",
        w.logs()
    );
    sigterm(&daemon);
    let status = tokio::time::timeout(PATIENCE, daemon.wait())
        .await
        .unwrap_or_else(|_| panic!("the daemon did not stop on SIGTERM\n{}", w.logs()))
        .unwrap();
    assert!(status.success(), "daemon exit: {status}\n{}", w.logs());
    w.converged_in(&dests)
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_promote_before_the_rename() {
    crash_inside_promote("promote-before-rename", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_promote_after_the_rename() {
    crash_inside_promote("promote-after-rename", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_promote_after_the_bare_file() {
    crash_inside_promote("promote-after-bare", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_promote_after_removing_the_pending_record() {
    crash_inside_promote("promote-after-pending", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_the_first_of_two_promotes_after_the_rename() {
    crash_inside_promote("promote-after-rename#1", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_the_second_of_two_promotes_before_the_rename() {
    crash_inside_promote("promote-before-rename#2", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_the_second_of_two_promotes_after_the_rename() {
    crash_inside_promote("promote-after-rename#2", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_the_second_of_two_promotes_after_the_bare_file() {
    crash_inside_promote("promote-after-bare#2", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_the_second_of_two_promotes_after_removing_the_pending_record() {
    crash_inside_promote("promote-after-pending#2", true).await;
}

/// Regression (invariant 11): an acknowledgement lived only in memory. A
/// daemon restarted (kill -9, an upgrade) after a consumer acknowledged the
/// new token but before the rotation was recorded verified waited for an
/// acknowledgement the consumer would not send again, and rolled back a
/// rotation consumers had already switched to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_survives_a_restart() {
    let w = World::new().await;
    let first_cfg = w.config("first", VERIFY_OK);
    let status = w
        .run(
            "first",
            &["--config", first_cfg.to_str().unwrap(), "rotate", "etl"],
            None,
        )
        .await;
    assert!(status.success(), "{}", w.logs());
    let first = w.converged().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Verification needs the consumer's acknowledgement and a second hook
    // that passes only once a file exists.
    let gate = w.root.join("go");
    let port = crate::support::services::free_port();
    let verify = format!(
        r#"[{{ type = "ack", deadline = "4s" }}, {{ type = "command", command = ["/bin/sh", "-c", "test -e '{}'"], interval = "20ms", deadline = "60s", timeout = "5s" }}]"#,
        gate.display()
    );
    let listen = format!(r#"listen = "127.0.0.1:{port}""#);
    let cfg = w.config_edited(
        "acked",
        &verify,
        &[
            (r#"listen = "127.0.0.1:0""#, &listen),
            (
                r#"schedule = { interval = "1d" }"#,
                r#"schedule = { interval = "2s" }"#,
            ),
        ],
    );
    let mut daemon = w.spawn("daemon", &["--config", &cfg, "run"], None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (rid, ack) = loop {
        if let Some(cur) = w.current()
            && cur["token_id"] != first.as_str()
            && cur["rotation"]["state"] == "promoted"
            && let Some(ack) = cur["ack_secret"].as_str()
        {
            break (
                cur["rotation_id"].as_str().unwrap().to_owned(),
                ack.to_owned(),
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no promotion\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/rotations/{rid}/ack");
    let resp = http.post(&url).bearer_auth(&ack).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", w.logs());
    // Recorded in the journal, then the daemon dies.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while w.current().unwrap()["rotation"]["acknowledged_at"].is_null() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the acknowledgement was not recorded\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.start_kill().unwrap();
    let _ = daemon.wait().await;

    // Restarted; the other hook passes now. No new acknowledgement comes.
    let mut daemon = w.spawn("again", &["--config", &cfg, "run"], None);
    std::fs::write(&gate, "").unwrap();
    let needle = format!(r#""message":"rotation complete","policy":"etl","rotation_id":"{rid}""#);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !w.log("again.err").contains(&needle) {
        assert!(
            !w.log("again.err").contains("rotation rolled back"),
            "the acknowledged rotation was rolled back\n{}",
            w.logs()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "not completed\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        w.sim_revoked(&first),
        "the old token is revoked\n{}",
        w.logs()
    );
    // Verified: the rotation no longer takes acknowledgements.
    let resp = http.post(&url).bearer_auth(&ack).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    sigterm(&daemon);
    let _ = tokio::time::timeout(PATIENCE, daemon.wait()).await;
}

/// Regression: `rotate` of a policy verified by an acknowledgement served
/// no acknowledgement route, so it could never be acknowledged and always
/// rolled back, though the README's troubleshooting recommends it. It now
/// serves the route on `daemon.listen` while it runs; when that address is
/// taken (a daemon runs), it says so and rotates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_receives_acknowledgements_on_the_listen_address() {
    let w = World::new().await;
    let first_cfg = w.config("first", VERIFY_OK);
    let status = w
        .run(
            "first",
            &["--config", first_cfg.to_str().unwrap(), "rotate", "etl"],
            None,
        )
        .await;
    assert!(status.success(), "{}", w.logs());
    let first = w.converged().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let port = crate::support::services::free_port();
    let listen = format!(r#"listen = "127.0.0.1:{port}""#);
    let cfg = w.config_edited(
        "acked",
        r#"[{ type = "ack", deadline = "20s" }]"#,
        &[(r#"listen = "127.0.0.1:0""#, &listen)],
    );
    let mut rotate = w.spawn("acked", &["--config", &cfg, "rotate", "etl"], None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (rid, ack) = loop {
        if let Some(cur) = w.current()
            && cur["token_id"] != first.as_str()
            && let Some(ack) = cur["ack_secret"].as_str()
        {
            break (
                cur["rotation_id"].as_str().unwrap().to_owned(),
                ack.to_owned(),
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no promotion\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/rotations/{rid}/ack"))
        .bearer_auth(&ack)
        .send()
        .await
        .unwrap_or_else(|e| panic!("rotate serves no acknowledgement route: {e}\n{}", w.logs()));
    assert_eq!(resp.status(), 200);
    let status = w.out.wait("acked", &mut rotate, PATIENCE).await;
    assert!(status.success(), "{status}\n{}", w.logs());
    let cur = w
        .converged()
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    assert_eq!(
        cur["rotation_id"],
        rid.as_str(),
        "the acknowledged rotation is current"
    );

    // The address taken, as by a running daemon: nothing is rotated.
    let _held = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let issued = w.issued_count();
    let status = w
        .run("taken", &["--config", &cfg, "rotate", "etl"], None)
        .await;
    assert_eq!(status.code(), Some(1), "{}", w.logs());
    assert!(
        w.log("taken.err").contains("cannot be used"),
        "{}",
        w.logs()
    );
    assert_eq!(w.issued_count(), issued, "no token created");
}

/// Two `rotate` processes on one store: the second finds the first inside
/// its rotation (held in verification by a hook that waits for a file) and
/// is refused the lock; exactly one rotation happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotate_processes_rotate_once() {
    let w = World::new().await;
    let gate = w.root.join("go");
    let verify = format!(
        r#"[{{ type = "command", command = ["/bin/sh", "-c", "test -e '{}'"], interval = "10ms", deadline = "30s", timeout = "5s" }}]"#,
        gate.display()
    );
    let cfg = w.config("gated", &verify);
    let cfg = cfg.to_str().unwrap();

    std::fs::write(&gate, "").unwrap();
    let status = w
        .run("first", &["--config", cfg, "rotate", "etl"], None)
        .await;
    assert!(status.success(), "{}", w.logs());
    let first = w.converged().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(&gate).unwrap();

    // A rotates and waits in verification.
    let mut a = w.spawn("a", &["--config", cfg, "rotate", "etl"], None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let cur = w.current().unwrap();
        if cur["token_id"] != first.as_str() && cur["rotation"]["state"] == "promoted" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never reached verification\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // B is refused while A holds the lock.
    let status = w.run("b", &["--config", cfg, "rotate", "etl"], None).await;
    assert_eq!(status.code(), Some(1), "{}", w.logs());
    assert!(
        w.log("b.out")
            .contains("etl: another replica holds the lock; not rotated"),
        "{}",
        w.logs()
    );
    assert_eq!(w.issued_count(), 2, "B created nothing\n{}", w.logs());

    // A finishes.
    std::fs::write(&gate, "").unwrap();
    let status = tokio::time::timeout(PATIENCE, a.wait())
        .await
        .expect("A finishes")
        .unwrap();
    assert!(status.success(), "A: {status}\n{}", w.logs());
    assert!(w.log("a.out").contains("etl: rotated"), "{}", w.logs());
    let cur = w
        .converged()
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    assert_ne!(cur["token_id"], first.as_str());
    assert_eq!(w.issued_count(), 2, "exactly one rotation");
    w.assert_stored_token_works().await;
}

/// SIGTERM while a rotation waits in verification: the daemon stops at a
/// safe point (exit 0) and the next start completes the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_verification_then_restart_completes() {
    let w = World::new().await;
    let gate = w.root.join("go");
    let verify = format!(
        r#"[{{ type = "command", command = ["/bin/sh", "-c", "test -e '{}'"], interval = "10ms", deadline = "30s", timeout = "5s" }}]"#,
        gate.display()
    );
    let cfg = w.config("gated", &verify);
    let cfg = cfg.to_str().unwrap();

    // The daemon creates the first token and waits in its verification.
    let mut daemon = w.spawn("daemon1", &["--config", cfg, "run"], None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !w
        .current()
        .is_some_and(|c| c["rotation"]["state"] == "promoted")
        || !w.log("daemon1.err").contains("verifying the new token")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached verification\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sigterm(&daemon);
    let status = tokio::time::timeout(PATIENCE, daemon.wait())
        .await
        .expect("the daemon stops")
        .unwrap();
    assert!(status.success(), "{status}\n{}", w.logs());
    assert_eq!(
        w.current().unwrap()["rotation"]["state"],
        "promoted",
        "left for the next start, not rolled back"
    );

    std::fs::write(&gate, "").unwrap();
    let mut daemon = w.spawn("daemon2", &["--config", cfg, "run"], None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if w.converged().is_ok() && w.log("daemon2.err").contains(r#""message":"waiting""#) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not converged\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.issued_count(), 1, "the same token was completed");
    w.assert_stored_token_works().await;
    sigterm(&daemon);
    let status = tokio::time::timeout(PATIENCE, daemon.wait())
        .await
        .expect("the daemon stops")
        .unwrap();
    assert!(status.success(), "{status}\n{}", w.logs());
}

/// A token created just before a crash is younger than `orphan_min_age`
/// when the daemon restarts, so the start-up sweep spares it; the daemon
/// sweeps that policy again as soon as the token is old enough, rather
/// than at the next periodic sweep (an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_orphan_is_revoked_once_old_enough_after_a_restart() {
    let w = World::new().await;
    let good = w.config_edited(
        "good",
        VERIFY_OK,
        &[(r#"orphan_min_age = "0s""#, r#"orphan_min_age = "1500ms""#)],
    );
    let status = w
        .run("first", &["--config", &good, "rotate", "etl"], None)
        .await;
    assert!(status.success(), "first rotate: {status}\n{}", w.logs());
    let first_id = w.converged().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = w
        .run(
            "crashed",
            &["--config", &good, "rotate", "etl"],
            Some("after-create"),
        )
        .await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", w.logs());
    assert_eq!(w.live_ids().len(), 2, "the crash left an unstored token");

    let mut daemon = w.spawn("daemon", &["--config", &good, "run"], None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    // The simulator sees the revocation a moment before the daemon logs
    // it, so wait for both.
    while w.live_ids() != [first_id.clone()]
        || !w.log("daemon.err").contains("orphaned token revoked")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orphan was never revoked\n{}",
            w.logs()
        );
        if let Ok(Some(s)) = daemon.try_wait() {
            panic!("the daemon exited: {s}\n{}", w.logs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = w.log("daemon.err");
    assert!(
        log.contains("sweeping again once they are old enough"),
        "the start-up sweep found the token already old: the test proves nothing\n{log}"
    );
    sigterm(&daemon);
    let status = tokio::time::timeout(PATIENCE, daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{}", w.logs());
    w.converged()
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
}

/// A rotation started by a one-shot `rotate` while the daemon runs (or by
/// another replica) leaves its old token valid for the overlap, with
/// nothing in that process left to revoke it. The daemon, waiting for its
/// next rotation a day away, reads the records again every
/// `recheck_interval` and revokes the old token once the overlap ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_finishes_a_rotation_started_by_rotate() {
    let w = World::new().await;
    let good = w.config_edited(
        "good",
        VERIFY_OK,
        &[
            (r#"overlap = "0s""#, r#"overlap = "1s""#),
            (
                r#"lock_retry_interval = "1s""#,
                "lock_retry_interval = \"1s\"\nrecheck_interval = \"1s\"",
            ),
        ],
    );
    let status = w
        .run("first", &["--config", &good, "rotate", "etl"], None)
        .await;
    assert!(status.success(), "first rotate: {status}\n{}", w.logs());
    let first_id = w.current().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut daemon = w.spawn("daemon", &["--config", &good, "run"], None);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !w.log("daemon.err").contains(r#""message":"waiting""#) {
        assert!(tokio::time::Instant::now() < deadline, "{}", w.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = w
        .run("second", &["--config", &good, "rotate", "etl"], None)
        .await;
    assert!(status.success(), "second rotate: {status}\n{}", w.logs());
    let second_id = w.current().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(second_id, first_id);
    assert!(
        w.live_ids().contains(&first_id),
        "the old token stays valid for the overlap"
    );
    // Another `rotate` during the overlap cannot begin yet, and says why.
    let status = w
        .run("third", &["--config", &good, "rotate", "etl"], None)
        .await;
    assert_eq!(status.code(), Some(1), "{}", w.logs());
    assert!(
        w.log("third.out")
            .contains("is in its overlap period until"),
        "{}",
        w.logs()
    );
    assert_eq!(w.current().unwrap()["token_id"], second_id.as_str());
    while w.converged().is_err() || !w.log("daemon.err").contains("old token revoked") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon never revoked the old token\n{}",
            w.logs()
        );
        if let Ok(Some(s)) = daemon.try_wait() {
            panic!("the daemon exited: {s}\n{}", w.logs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        w.live_ids(),
        std::slice::from_ref(&second_id),
        "{}",
        w.logs()
    );

    // `rotate --wait` behind a rotation in its overlap waits for it to
    // end, then rotates, then waits out its own overlap.
    let status = w
        .run("fourth", &["--config", &good, "rotate", "etl"], None)
        .await;
    assert!(status.success(), "fourth rotate: {status}\n{}", w.logs());
    let fourth_id = w.current().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = w
        .run(
            "fifth",
            &["--config", &good, "rotate", "--wait", "etl"],
            None,
        )
        .await;
    assert!(status.success(), "rotate --wait: {status}\n{}", w.logs());
    let cur = w
        .converged()
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    let fifth_id = cur["token_id"].as_str().unwrap();
    assert!(
        ![first_id.as_str(), second_id.as_str(), fourth_id.as_str()].contains(&fifth_id),
        "rotate --wait made a new token\n{}",
        w.logs()
    );
    sigterm(&daemon);
    let status = tokio::time::timeout(PATIENCE, daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{}", w.logs());
}

/// A policy's first token failing verification leaves no record to carry
/// the failure; `rotate` still reports it, with the step and the reason,
/// and exits 1, and no token is left live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_reports_a_failed_first_token() {
    let w = World::new().await;
    let bad = w.config("bad", VERIFY_FAILS);
    let bad = bad.to_str().unwrap().to_owned();
    let status = w
        .run("first", &["--config", &bad, "rotate", "etl"], None)
        .await;
    assert_eq!(status.code(), Some(1), "{}", w.logs());
    let out = w.log("first.out");
    assert!(
        out.contains("etl: failed: rotation ")
            && out.contains(" failed at verify: ")
            && out.contains("no token is stored yet"),
        "{out}"
    );
    assert!(w.live_ids().is_empty(), "{}", w.logs());
    assert!(w.current().is_none());
}

/// `validate --online` also asks MotherDuck for each policy's service
/// account, so a misspelt one is found before its first rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_online_finds_a_missing_service_account() {
    let w = World::new().await;
    std::fs::create_dir_all(w.store()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(w.store(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let good = w.config("good", VERIFY_OK);
    let status = w
        .run(
            "good",
            &["--config", good.to_str().unwrap(), "validate", "--online"],
            None,
        )
        .await;
    assert!(status.success(), "{}", w.logs());
    assert!(
        w.log("good.out")
            .contains(&format!("service account {SA} (etl): ok")),
        "{}",
        w.logs()
    );
    let bad = w.root.join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good).unwrap().replace(
            &format!(r#"service_account = "{SA}""#),
            r#"service_account = "svc_nobody""#,
        ),
    )
    .unwrap();
    let status = w
        .run(
            "bad",
            &["--config", bad.to_str().unwrap(), "validate", "--online"],
            None,
        )
        .await;
    assert_eq!(status.code(), Some(1), "{}", w.logs());
    assert!(
        w.log("bad.out")
            .contains("service account svc_nobody (etl): FAILED: no such user in MotherDuck"),
        "{}",
        w.logs()
    );
}

/// A destination that lost its record (a store restored from an old
/// backup, an in-memory dev server restarted) makes the policy due at
/// once, and `status` says so instead of showing the scheduled time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_lost_destination_record_as_due_now() {
    let w = World::new().await;
    let good = w.config_edited(
        "good",
        VERIFY_OK,
        &[(
            r#"destinations = [{ store = "local", path = "etl.json", bare_token_file = "etl.token" }]"#,
            r#"destinations = [{ store = "local", path = "etl.json", bare_token_file = "etl.token" }, { store = "local", path = "etl-copy.json" }]"#,
        )],
    );
    let status = w
        .run("first", &["--config", &good, "rotate", "etl"], None)
        .await;
    assert!(status.success(), "{}", w.logs());
    std::fs::remove_file(w.store().join("etl-copy.json")).unwrap();
    let status = w
        .run("status", &["--config", &good, "status", "--json"], None)
        .await;
    assert!(status.success(), "{}", w.logs());
    let out: Value = serde_json::from_str(&w.log("status.out")).unwrap();
    let reason = out[0]["next_due_reason"].as_str().unwrap_or_default();
    assert_eq!(reason, "1 destination(s) hold no token", "{out}");
    let due: DateTime<Utc> = out[0]["next_due"].as_str().unwrap().parse().unwrap();
    assert!(due <= Utc::now(), "{out}");
}

/// `rotate --wait` after a crash resumes the interrupted rotation, waits
/// out its overlap and reports it as its rotation; it does not start a
/// second one behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_wait_after_a_crash_finishes_that_rotation_only() {
    let w = World::new().await;
    let good = w.config_edited(
        "good",
        VERIFY_OK,
        &[(r#"overlap = "0s""#, r#"overlap = "1s""#)],
    );
    let status = w
        .run("first", &["--config", &good, "rotate", "etl"], None)
        .await;
    assert!(status.success(), "{}", w.logs());
    let status = w
        .run(
            "crashed",
            &["--config", &good, "rotate", "etl"],
            Some("after-promote"),
        )
        .await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", w.logs());
    assert_eq!(w.issued_count(), 2);
    let status = w
        .run(
            "resume",
            &["--config", &good, "rotate", "--wait", "etl"],
            None,
        )
        .await;
    assert!(status.success(), "{}", w.logs());
    assert_eq!(w.issued_count(), 2, "no second rotation\n{}", w.logs());
    let cur = w
        .converged()
        .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    let out = w.log("resume.out");
    assert!(
        out.contains(&format!(
            "etl: rotated: token {} is current, the old token is revoked",
            cur["token_id"].as_str().unwrap()
        )),
        "{out}"
    );
}
