//! Starting the real binary, signalling it and waiting for it.
//!
//! Every child gets the same environment: static AWS test credentials (moto
//! accepts any), and nothing inherited that would change what it does
//! (`AWS_PROFILE`, `MDR_CRASH_AT`, `MOTHERDUCK_ROTATOR_CONFIG`).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::child_logs::ChildLogs;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_motherduck-rotator");

/// Upper bound for a child process to finish or a state to be reached.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The binary with `--config config`, run in `cwd` with `MDR_LOG=log`,
/// stdin closed and killed when dropped; `args` still to be added.
pub fn command(config: &Path, cwd: &Path, log: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .current_dir(cwd)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env_remove("MDR_CRASH_AT")
        .env_remove("MOTHERDUCK_ROTATOR_CONFIG")
        .env("MDR_LOG", log)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary as several named children of one test: each in `cwd`,
/// with its output in `<name>.out` and `<name>.err` of one log directory.
pub struct Rotator {
    /// The working directory of every child.
    cwd: PathBuf,
    /// `MDR_LOG` of every child.
    log_filter: &'static str,
    /// Where the children's output goes.
    pub out: ChildLogs,
}

impl Rotator {
    pub fn new(cwd: &Path, logs: &Path, log_filter: &'static str) -> Rotator {
        Rotator {
            cwd: cwd.to_path_buf(),
            log_filter,
            out: ChildLogs::new(logs),
        }
    }

    /// [`command`] for this test, output not redirected.
    pub fn command(&self, config: &Path, args: &[&str]) -> Command {
        let mut cmd = command(config, &self.cwd, self.log_filter);
        cmd.args(args);
        cmd
    }

    /// Starts `args` as child `name`, killed at `crash_at`
    /// (`MDR_CRASH_AT`) when given.
    pub fn spawn(&self, name: &str, config: &Path, args: &[&str], crash_at: Option<&str>) -> Child {
        let mut cmd = self.command(config, args);
        self.out.attach(&mut cmd, name);
        if let Some(point) = crash_at {
            cmd.env("MDR_CRASH_AT", point);
        }
        cmd.spawn().expect("the binary starts")
    }

    /// [`Rotator::spawn`], then waits up to [`PATIENCE`] for the end.
    pub async fn run(
        &self,
        name: &str,
        config: &Path,
        args: &[&str],
        crash_at: Option<&str>,
    ) -> ExitStatus {
        let mut child = self.spawn(name, config, args, crash_at);
        self.out.wait(name, &mut child, PATIENCE).await
    }

    /// One output file, e.g. `daemon.err`; empty if it does not exist.
    pub fn log(&self, file: &str) -> String {
        self.out.read(file)
    }

    /// Every child's output, for failure messages.
    pub fn logs(&self) -> String {
        self.out.all()
    }
}

/// Runs `cmd` (the binary's `status --json`), parses what it prints and
/// returns its `policies` list.
pub async fn status_json(cmd: &mut Command) -> Result<serde_json::Value, String> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let mut report: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "status --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(report["policies"].take())
}

/// Sends `sig` to `child` if it still runs.
pub fn signal(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a child we started; no memory is involved.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

/// Sends SIGTERM to `child`, which must still run.
pub fn sigterm(child: &Child) {
    let pid = child.id().expect("still running") as i32;
    // SAFETY: kill(2) on a child we started; no memory is involved.
    let r = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(r, 0, "kill failed");
}

/// SIGTERM, then the exit status, failing with `logs()` when the child
/// does not stop within [`PATIENCE`].
pub async fn stop(child: &mut Child, logs: impl Fn() -> String) -> ExitStatus {
    sigterm(child);
    tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the daemon did not stop on SIGTERM\n{}", logs()))
        .unwrap()
}

/// Polls `probe` every `every` until it returns `Some`, failing with
/// `what` and `logs()` once `patience` has passed.
pub async fn eventually<T>(
    patience: Duration,
    every: Duration,
    what: &str,
    logs: impl Fn() -> String,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(t) = probe().await {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}\n{}", logs());
        tokio::time::sleep(every).await;
    }
}

/// Polls `probe` every 10 ms until it returns `Ok`, failing with `what`,
/// the last reason and `logs()` once `patience` has passed, or at once
/// when `daemon` exits.
pub async fn until_converged<T>(
    daemon: &mut Child,
    patience: Duration,
    what: &str,
    logs: impl Fn() -> String,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match probe().await {
            Ok(t) => return t,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("{what}: {e}\n{}", logs())
            }
            Err(_) => {}
        }
        if let Ok(Some(s)) = daemon.try_wait() {
            panic!("the daemon exited: {s}\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`command`] without `MDR_LOG`: the binary's default log filter.
pub fn command_default_log(config: &Path, cwd: &Path) -> Command {
    let mut cmd = command(config, cwd, "");
    cmd.env_remove("MDR_LOG");
    cmd
}
