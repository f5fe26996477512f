//! The command hook: a program that exits 0 once the consumer works with the
//! new token.
//!
//! # Environment
//! The child does not inherit the daemon's environment. The daemon's
//! environment may hold the admin token or store credentials (the config
//! names them by environment variable), and a verification script has no
//! business with them. The child gets:
//! - the variables in [`INHERITED_ENV`] (`PATH`, `HOME`, locale, time zone,
//!   temporary directory, user name), so ordinary scripts run;
//! - the variables the hook lists in `inherit_env`, for what its script
//!   needs (say `KUBECONFIG`);
//! - minus every variable in [`VerifyDeps::scrub_env`](super::VerifyDeps),
//!   whatever the hook asked for;
//! - plus `MDR_POLICY`, `MDR_ROTATION_ID`, `MDR_TOKEN_ID`,
//!   `MDR_SERVICE_ACCOUNT`, and `MOTHERDUCK_TOKEN` only when `pass_token` is
//!   set (the name the MotherDuck DuckDB extension reads).
//!
//! # Processes
//! Each run starts in its own process group. On a timeout, a cancellation,
//! the deadline, and also after the command exits, the whole group is sent
//! SIGKILL, so a script's background children cannot outlive the check
//! (and keep a token they were handed). A process that leaves the group on
//! purpose (`setsid`) escapes this, as it would escape any supervisor short
//! of a cgroup.
//!
//! # Output
//! The last 4 KiB of stdout and of stderr are logged at debug level with
//! the token replaced, and never put into errors: a script that prints its
//! environment would otherwise print the token.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Reason, VerifyContext, check_attempt_timeout, check_timing};
use crate::secret::ExposeSecret;

/// Variables passed through from the daemon's environment so that ordinary
/// scripts find their tools, home directory and locale.
pub const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
];

pub const ENV_POLICY: &str = "MDR_POLICY";
pub const ENV_ROTATION_ID: &str = "MDR_ROTATION_ID";
pub const ENV_TOKEN_ID: &str = "MDR_TOKEN_ID";
pub const ENV_SERVICE_ACCOUNT: &str = "MDR_SERVICE_ACCOUNT";
/// Set only with `pass_token`.
pub const ENV_TOKEN: &str = "MOTHERDUCK_TOKEN";

/// How much of each output stream is kept for the debug log.
const TAIL_BYTES: usize = 4 * 1024;

/// How long to keep reading output after the command has exited and its
/// group was killed; a process that left the group may hold the pipe open.
const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// Partial copies of the token shorter than this are not redacted at the
/// edges of the kept output; shorter fragments cannot be told apart from
/// ordinary text and reveal too little to matter.
const MIN_PARTIAL: usize = 8;

/// A validated command hook, built through [`CommandHook::builder`].
#[derive(Debug, Clone)]
pub struct CommandHook {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    interval: Duration,
    deadline: Duration,
    pass_token: bool,
    inherit_env: Vec<String>,
}

/// Collects the settings of a [`CommandHook`].
#[derive(Debug, Clone)]
pub struct CommandHookBuilder {
    hook: CommandHook,
}

impl CommandHook {
    /// Starts a hook running `program` (an absolute path, or a name looked
    /// up in the child's `PATH`) with the defaults: no arguments, 30 s per
    /// run, every 5 s for up to 2 min, the token not passed.
    pub fn builder(program: impl Into<PathBuf>) -> CommandHookBuilder {
        CommandHookBuilder {
            hook: CommandHook {
                program: program.into(),
                args: Vec::new(),
                timeout: Duration::from_secs(30),
                interval: Duration::from_secs(5),
                deadline: Duration::from_secs(120),
                pass_token: false,
                inherit_env: Vec::new(),
            },
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    pub fn pass_token(&self) -> bool {
        self.pass_token
    }

    pub fn inherit_env(&self) -> &[String] {
        &self.inherit_env
    }

    /// One run of the command; exit 0 passes.
    pub(super) async fn attempt(
        &self,
        ctx: &VerifyContext,
        scrub: &[String],
    ) -> Result<(), Reason> {
        self.attempt_with(ctx, scrub, &[]).await
    }

    /// [`attempt`](Self::attempt) with `extra` variables set too (a reload
    /// action's `MDR_RELOAD_CAUSE`).
    pub(crate) async fn attempt_with(
        &self,
        ctx: &VerifyContext,
        scrub: &[String],
        extra: &[(&str, &str)],
    ) -> Result<(), Reason> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(child_env(std::env::vars_os(), self, ctx, scrub))
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if self.pass_token {
            cmd.env(ENV_TOKEN, ctx.token.expose_secret());
        }
        let mut child = cmd.spawn().map_err(|e| Reason::Spawn {
            message: e.to_string(),
        })?;
        // From here on, dropping this future (cancellation, deadline) kills
        // the group through the guard, and tokio reaps the child.
        let group = GroupKill {
            pgid: child.id().and_then(|id| libc::pid_t::try_from(id).ok()),
        };

        let mut out = Tail::default();
        let mut err = Tail::default();
        let result = {
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            // Output is read while the command runs: a full pipe would
            // otherwise block it.
            let mut pumps = std::pin::pin!(async {
                tokio::join!(pump(stdout, &mut out), pump(stderr, &mut err));
            });
            let mut pumped = false;
            let waited = tokio::time::timeout(self.timeout, async {
                loop {
                    tokio::select! {
                        status = child.wait() => break status,
                        () = pumps.as_mut(), if !pumped => pumped = true,
                    }
                }
            })
            .await;
            let result = match waited {
                Ok(Ok(status)) => exit_reason(status),
                Ok(Err(e)) => Err(Reason::Spawn {
                    message: format!("failed to wait for the command: {e}"),
                }),
                Err(_elapsed) => {
                    group.kill();
                    let _ = child.wait().await;
                    Err(Reason::CommandTimeout {
                        after: self.timeout,
                    })
                }
            };
            // Whatever the command left running in its group goes too; that
            // also closes the pipes those processes held.
            group.kill();
            if !pumped {
                let _ = tokio::time::timeout(OUTPUT_GRACE, pumps.as_mut()).await;
            }
            result
        };

        // Scrubbed whether or not the token was passed: a script may read it
        // from the store it verifies.
        let secret = ctx.token.expose_secret().as_bytes();
        tracing::debug!(
            program = %self.program.display(),
            outcome = %match &result {
                Ok(()) => "passed".to_owned(),
                Err(r) => r.to_string(),
            },
            stdout = %out.scrubbed(secret),
            stderr = %err.scrubbed(secret),
            "verification command finished"
        );
        result
    }
}

/// The child's environment apart from the token; see the module
/// documentation. A pure function of its inputs so tests can feed it a
/// made-up parent environment.
fn child_env(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    hook: &CommandHook,
    ctx: &VerifyContext,
    scrub: &[String],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = parent
        .into_iter()
        .filter(|(name, _)| {
            let Some(name) = name.to_str() else {
                return false;
            };
            let wanted =
                INHERITED_ENV.contains(&name) || hook.inherit_env.iter().any(|n| n == name);
            let scrubbed = scrub.iter().any(|n| n == name);
            if wanted && scrubbed {
                tracing::debug!(
                    variable = name,
                    "not passing a variable to the verification command: it holds a credential"
                );
            }
            wanted && !scrubbed && !is_reserved(name)
        })
        .collect();
    for (name, value) in [
        (ENV_POLICY, &ctx.policy),
        (ENV_ROTATION_ID, &ctx.rotation_id),
        (ENV_TOKEN_ID, &ctx.token_id),
        (ENV_SERVICE_ACCOUNT, &ctx.service_account),
    ] {
        env.push((name.into(), value.into()));
    }
    env
}

/// Names the daemon sets itself, or that carry a MotherDuck token (DuckDB
/// reads `motherduck_token` in any case).
fn is_reserved(name: &str) -> bool {
    name.eq_ignore_ascii_case(ENV_TOKEN) || name.starts_with("MDR_")
}

fn exit_reason(status: ExitStatus) -> Result<(), Reason> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => Err(Reason::ExitCode { code }),
        (None, Some(signal)) => Err(Reason::Signal { signal }),
        (None, None) => Err(Reason::ExitCode { code: -1 }),
    }
}

/// Kills a process group; also on drop, so an attempt abandoned at any
/// await point takes its processes with it.
struct GroupKill {
    pgid: Option<libc::pid_t>,
}

impl GroupKill {
    fn kill(&self) {
        // 0 and 1 would name our own group and every process we may
        // signal; a child's pid is never either, but the check is cheap.
        if let Some(pgid) = self.pgid.filter(|p| *p > 1) {
            // SAFETY: kill(2) takes plain integers and touches no memory of
            // ours. A negative pid addresses the group the child leads
            // (process_group(0) made its pgid its pid). ESRCH, when the
            // group is already gone, is the expected outcome and ignored.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last [`TAIL_BYTES`] of a stream.
#[derive(Default)]
struct Tail {
    bytes: VecDeque<u8>,
    /// Whether earlier bytes were dropped, so the first kept bytes may be
    /// the end of a token.
    truncated: bool,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend(chunk);
        let excess = self.bytes.len().saturating_sub(TAIL_BYTES);
        if excess > 0 {
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }

    /// The kept text with every copy of `secret` replaced, including a
    /// partial copy cut off at either edge.
    fn scrubbed(&self, secret: &[u8]) -> String {
        let bytes: Vec<u8> = self.bytes.iter().copied().collect();
        String::from_utf8_lossy(&scrub(&bytes, secret, self.truncated)).into_owned()
    }
}

const REDACTED: &[u8] = b"[REDACTED]";

fn scrub(bytes: &[u8], secret: &[u8], cut_at_start: bool) -> Vec<u8> {
    if secret.is_empty() {
        return bytes.to_vec();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    // A suffix of the secret at the very start, when earlier bytes were cut.
    if cut_at_start
        && let Some(k) = (MIN_PARTIAL..secret.len())
            .rev()
            .find(|&k| bytes.starts_with(&secret[secret.len() - k..]))
    {
        out.extend_from_slice(REDACTED);
        i = k;
    }
    while i < bytes.len() {
        if bytes[i..].starts_with(secret) {
            out.extend_from_slice(REDACTED);
            i += secret.len();
            continue;
        }
        // A prefix of the secret at the very end, when output was cut off.
        let rest = &bytes[i..];
        if rest.len() >= MIN_PARTIAL && rest.len() < secret.len() && secret.starts_with(rest) {
            out.extend_from_slice(REDACTED);
            break;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Reads a stream to its end, keeping the tail.
async fn pump<R: AsyncRead + Unpin>(reader: Option<R>, tail: &mut Tail) {
    let Some(mut reader) = reader else {
        return;
    };
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail.push(&buf[..n]),
        }
    }
}

impl CommandHookBuilder {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.hook.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hook.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The bound on one run; the process group is killed when it passes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.hook.timeout = timeout;
        self
    }

    /// The pause between the end of one run and the start of the next.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.hook.interval = interval;
        self
    }

    /// How long the hook may keep trying in all.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.hook.deadline = deadline;
        self
    }

    /// Hand the new token to the command as `MOTHERDUCK_TOKEN`.
    pub fn pass_token(mut self, pass: bool) -> Self {
        self.hook.pass_token = pass;
        self
    }

    /// Further variables to pass through from the daemon's environment.
    pub fn inherit_env<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hook
            .inherit_env
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Validates every setting.
    ///
    /// # Errors
    /// A lowercase message quoting the offending value: an empty program, an
    /// invalid or reserved variable name in `inherit_env`, zero durations,
    /// or a run timeout above the deadline.
    pub fn build(self) -> Result<CommandHook, String> {
        let hook = self.hook;
        if hook.program.as_os_str().is_empty() {
            return Err("the command program must not be empty".to_owned());
        }
        for name in &hook.inherit_env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(format!(
                    "invalid environment variable name `{name}` in inherit_env"
                ));
            }
            if name.eq_ignore_ascii_case(ENV_TOKEN) {
                return Err(format!(
                    "inherit_env may not name `{name}`; set pass_token to hand the new token to the command"
                ));
            }
            if name.starts_with("MDR_") {
                return Err(format!(
                    "inherit_env may not name `{name}`; the daemon sets the `MDR_` variables itself"
                ));
            }
        }
        check_timing(hook.interval, hook.deadline)?;
        check_attempt_timeout("timeout", hook.timeout, hook.deadline)?;
        Ok(hook)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ctx, deps};
    use super::super::{Failure, HookSpec, VerifyError, run_all};
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn sh(script: &str) -> CommandHookBuilder {
        CommandHook::builder("/bin/sh")
            .args(["-c", script])
            .timeout(Duration::from_millis(200))
            .interval(Duration::from_millis(10))
            .deadline(Duration::from_millis(200))
    }

    async fn run(hook: CommandHook) -> Result<(), VerifyError> {
        run_all(
            &[HookSpec::Command(hook)],
            &ctx(),
            &deps(),
            &CancellationToken::new(),
        )
        .await
    }

    fn temp_file(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mdr-verify-{tag}-{}", uuid::Uuid::new_v4()))
    }

    /// Whether `pid` is gone. A killed process whose parent died is
    /// re-parented to pid 1, which in some containers never reaps it; such
    /// a zombie runs no code any more and counts as dead.
    fn is_dead(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return true;
        }
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'))
            })
            .unwrap_or(true)
    }

    async fn assert_dead_soon(pid: libc::pid_t) {
        for _ in 0..200 {
            if is_dead(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("process {pid} is still alive");
    }

    fn read_pids(file: &Path) -> Vec<libc::pid_t> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    #[tokio::test]
    async fn exit_zero_passes() {
        run(sh("exit 0").build().unwrap()).await.unwrap();
    }

    #[tokio::test]
    async fn non_zero_exit_fails_with_the_code() {
        let hook = sh("echo oops >&2; exit 7")
            .timeout(Duration::from_secs(1))
            .interval(Duration::from_secs(1))
            .deadline(Duration::from_secs(1))
            .build()
            .unwrap();
        let err = run(hook).await.unwrap_err();
        assert_eq!(err.label, "/bin/sh");
        assert!(err.to_string().ends_with("exited with status 7"), "{err}");
    }

    #[tokio::test]
    async fn missing_program_fails_to_start() {
        let hook = CommandHook::builder("/nonexistent/mdr-check")
            .timeout(Duration::from_millis(20))
            .interval(Duration::from_millis(10))
            .deadline(Duration::from_millis(20))
            .build()
            .unwrap();
        let err = run(hook).await.unwrap_err();
        assert!(err.to_string().contains("failed to start"), "{err}");
        assert_eq!(err.reason(), "spawn");
    }

    #[tokio::test]
    async fn context_variables_are_set_and_the_token_only_on_request() {
        let ctx = ctx();
        let script = format!(
            r#"test "$MDR_POLICY" = '{}' && test "$MDR_ROTATION_ID" = '{}' \
               && test "$MDR_TOKEN_ID" = '{}' && test "$MDR_SERVICE_ACCOUNT" = '{}' \
               && test -n "$PATH" && test -z "${{MOTHERDUCK_TOKEN+set}}""#,
            ctx.policy, ctx.rotation_id, ctx.token_id, ctx.service_account
        );
        run(sh(&script).build().unwrap()).await.unwrap();

        let with_token = format!(
            r#"test "$MOTHERDUCK_TOKEN" = '{}'"#,
            ctx.token.expose_secret()
        );
        run(sh(&with_token).pass_token(true).build().unwrap())
            .await
            .unwrap();
        let err = run(sh(&with_token)
            .timeout(Duration::from_secs(1))
            .interval(Duration::from_secs(1))
            .deadline(Duration::from_secs(1))
            .build()
            .unwrap())
        .await
        .unwrap_err();
        assert!(
            !err.to_string().contains(ctx.token.expose_secret()),
            "{err}"
        );
    }

    #[test]
    fn environment_is_an_allowlist_minus_scrubbed_names() {
        let parent = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/mdr"),
            ("MOTHERDUCK_ADMIN_TOKEN", "admin-secret"),
            ("motherduck_token", "lowercase-secret"),
            ("KUBECONFIG", "/etc/kube"),
            ("VAULT_TOKEN", "vault-secret"),
            ("MDR_POLICY", "spoofed"),
            ("RANDOM_OTHER", "x"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let hook = CommandHook::builder("/bin/true")
            .inherit_env(["KUBECONFIG", "VAULT_TOKEN", "motherduck_token"])
            .build();
        // `motherduck_token` is refused at build time already.
        assert_eq!(
            hook.unwrap_err(),
            "inherit_env may not name `motherduck_token`; set pass_token to hand the new token to the command"
        );
        let hook = CommandHook::builder("/bin/true")
            .inherit_env(["KUBECONFIG", "VAULT_TOKEN"])
            .build()
            .unwrap();
        let env = child_env(parent, &hook, &ctx(), &["VAULT_TOKEN".to_owned()]);
        let mut names: Vec<String> = env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "HOME",
                "KUBECONFIG",
                "MDR_POLICY",
                "MDR_ROTATION_ID",
                "MDR_SERVICE_ACCOUNT",
                "MDR_TOKEN_ID",
                "PATH"
            ]
        );
        let policy = env.iter().find(|(k, _)| k == "MDR_POLICY").unwrap();
        assert_eq!(policy.1, "nightly");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let pids = temp_file("timeout");
        let script = format!("sleep 30 & echo $! >> '{}'; wait", pids.display());
        let hook = sh(&script)
            .timeout(Duration::from_millis(100))
            .interval(Duration::from_secs(1))
            .deadline(Duration::from_secs(1))
            .build()
            .unwrap();
        let err = run(hook).await.unwrap_err();
        assert!(
            matches!(
                err.failure,
                Failure::Deadline {
                    attempts: 1,
                    last: Reason::CommandTimeout { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("did not exit within 100ms; its process group was killed"),
            "{err}"
        );
        let grandchildren = read_pids(&pids);
        assert_eq!(grandchildren.len(), 1, "{grandchildren:?}");
        assert_dead_soon(grandchildren[0]).await;
        let _ = std::fs::remove_file(&pids);
    }

    #[tokio::test]
    async fn cancellation_kills_the_whole_process_group() {
        let pids = temp_file("cancel");
        let script = format!("sleep 30 & echo $! >> '{}'; wait", pids.display());
        let hook = sh(&script)
            .timeout(Duration::from_secs(30))
            .interval(Duration::from_secs(1))
            .deadline(Duration::from_secs(60))
            .build()
            .unwrap();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let watched = pids.clone();
        tokio::spawn(async move {
            while read_pids(&watched).is_empty() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            trigger.cancel();
        });
        let err = run_all(&[HookSpec::Command(hook)], &ctx(), &deps(), &cancel)
            .await
            .unwrap_err();
        assert!(err.is_cancelled(), "{err}");
        assert_eq!(err.to_string(), "command hook `/bin/sh` failed: cancelled");
        let grandchildren = read_pids(&pids);
        assert_eq!(grandchildren.len(), 1, "{grandchildren:?}");
        assert_dead_soon(grandchildren[0]).await;
        let _ = std::fs::remove_file(&pids);
    }

    #[tokio::test]
    async fn background_children_do_not_outlive_a_passing_command() {
        let pids = temp_file("leftover");
        let script = format!("sleep 30 & echo $! >> '{}'; exit 0", pids.display());
        let started = std::time::Instant::now();
        run(sh(&script).build().unwrap()).await.unwrap();
        // The sleep held stdout open; the run must not have waited for it.
        assert!(started.elapsed() < Duration::from_secs(5));
        let grandchildren = read_pids(&pids);
        assert_eq!(grandchildren.len(), 1, "{grandchildren:?}");
        assert_dead_soon(grandchildren[0]).await;
        let _ = std::fs::remove_file(&pids);
    }

    #[test]
    fn output_tail_is_bounded_and_scrubbed() {
        let secret = b"eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2ln";
        let mut tail = Tail::default();
        tail.push(b"token=");
        tail.push(secret);
        tail.push(b" done\n");
        assert_eq!(tail.scrubbed(secret), "token=[REDACTED] done\n");

        // A token cut by the 4 KiB window at the start, and one cut short at
        // the end, leave no fragment either.
        let mut tail = Tail::default();
        tail.push(secret);
        tail.push(&vec![b'x'; TAIL_BYTES - secret.len()]);
        tail.push(&secret[..20]);
        // 20 bytes fell out of the window: the first token lost its start.
        assert!(
            tail.bytes
                .iter()
                .copied()
                .eq(secret[20..].iter().copied().chain(
                    std::iter::repeat_n(b'x', TAIL_BYTES - secret.len())
                        .chain(secret[..20].iter().copied())
                ))
        );
        assert!(tail.truncated);
        assert_eq!(tail.bytes.len(), TAIL_BYTES);
        let shown = tail.scrubbed(secret);
        assert!(shown.starts_with("[REDACTED]x"), "{}", &shown[..20]);
        assert!(
            shown.ends_with("x[REDACTED]"),
            "{}",
            &shown[shown.len() - 20..]
        );
        assert!(!shown.contains("c2ln") && !shown.contains("eyJ"));
    }

    #[test]
    fn builder_rejects_bad_settings() {
        assert_eq!(
            CommandHook::builder("").build().unwrap_err(),
            "the command program must not be empty"
        );
        assert_eq!(
            CommandHook::builder("/bin/true")
                .inherit_env(["MDR_POLICY"])
                .build()
                .unwrap_err(),
            "inherit_env may not name `MDR_POLICY`; the daemon sets the `MDR_` variables itself"
        );
        assert_eq!(
            CommandHook::builder("/bin/true")
                .inherit_env(["A=B"])
                .build()
                .unwrap_err(),
            "invalid environment variable name `A=B` in inherit_env"
        );
        assert_eq!(
            CommandHook::builder("/bin/true")
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap_err(),
            "timeout `5m` must not exceed the deadline `2m`"
        );
    }
}
