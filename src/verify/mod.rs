//! Verification hooks: does the world work with the new token?
//!
//! After the driver has promoted a new token in every destination, it runs
//! the policy's hooks. Only when every hook has passed may the old token be
//! revoked (invariant 1); when one fails, the driver restores the old token
//! and revokes the new one (invariant 5). A hook therefore answers a single
//! question, "do the consumers work with the new token yet?", and answers it
//! by polling until yes or until its deadline.
//!
//! The hooks form a closed set, [`HookSpec`]:
//! - [`HttpProbe`]: an HTTP request to an application, expecting a status
//!   and optionally that a JSON field reports the new token id;
//! - [`CommandHook`]: a program that exits 0 once the consumer is happy;
//! - [`AckHook`]: an inbound acknowledgement that consumers post to the
//!   daemon's HTTP server ([`ack_router`], [`AckRegistry`]);
//! - [`BuiltinCheck`]: MotherDuck itself accepts the new token.
//!
//! # Ordering
//! [`run_all`] starts every hook at once and waits until all have passed.
//! Running them concurrently bounds the whole verification by the longest
//! deadline instead of the sum of all deadlines, and the hooks observe the
//! same promoted state independently, so nothing is gained by ordering them.
//! The first hook to fail definitively (its deadline passed, or a condition
//! that waiting cannot change) ends the run: the other hooks are dropped,
//! which aborts their requests and kills their processes, and that first
//! failure is returned.
//!
//! # Secrets
//! No error, log line or `Debug` output of this module contains the token,
//! a secret header value or an acknowledgement secret. Errors quote only
//! configuration (URLs without their query, program paths, JSON pointers),
//! token ids, statuses and exit codes; values an application reports are
//! quoted only when they look like a token id and never when they equal the
//! token itself.

mod ack;
mod builtin;
mod command;
mod http;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::motherduck::ApiError;
use crate::secret::SecretString;

pub use ack::{AckHook, AckRegistry, AckRejection, AckWaiter, AckWithdrawn, ack_router};
pub use builtin::BuiltinCheck;
pub use command::{
    CommandHook, CommandHookBuilder, ENV_POLICY, ENV_ROTATION_ID, ENV_SERVICE_ACCOUNT, ENV_TOKEN,
    ENV_TOKEN_ID, INHERITED_ENV,
};
pub use http::{HeaderValueSpec, HttpProbe, HttpProbeBuilder};

/// One verification hook of a policy. A closed set: the driver matches on
/// it, and adding a kind means touching every match on purpose.
#[derive(Debug, Clone)]
pub enum HookSpec {
    Http(HttpProbe),
    Command(CommandHook),
    Ack(AckHook),
    MotherDuck(BuiltinCheck),
}

impl HookSpec {
    pub fn kind(&self) -> HookKind {
        match self {
            HookSpec::Http(_) => HookKind::Http,
            HookSpec::Command(_) => HookKind::Command,
            HookSpec::Ack(_) => HookKind::Ack,
            HookSpec::MotherDuck(_) => HookKind::MotherDuck,
        }
    }

    /// A short name for errors and logs: the URL without its query, the
    /// program path, the rotation acknowledged, or the token checked.
    pub fn label(&self, ctx: &VerifyContext) -> String {
        match self {
            HookSpec::Http(p) => p.label().to_owned(),
            HookSpec::Command(c) => c.program().display().to_string(),
            HookSpec::Ack(_) => format!("rotation {}", ctx.rotation_id),
            HookSpec::MotherDuck(_) => format!("token {}", ctx.token_id),
        }
    }

    /// The longest this hook may take.
    pub fn deadline(&self) -> Duration {
        match self {
            HookSpec::Http(p) => p.deadline(),
            HookSpec::Command(c) => c.deadline(),
            HookSpec::Ack(a) => a.deadline(),
            HookSpec::MotherDuck(b) => b.deadline(),
        }
    }
}

/// The kind of a hook, for errors, logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookKind {
    Http,
    Command,
    Ack,
    MotherDuck,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Http => "http",
            HookKind::Command => "command",
            HookKind::Ack => "ack",
            HookKind::MotherDuck => "motherduck",
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the rotation driver knows about the token being verified.
#[derive(Debug, Clone)]
pub struct VerifyContext {
    /// The policy's name; handed to commands as `MDR_POLICY`.
    pub policy: String,
    /// The rotation id; keys acknowledgements and is handed to commands.
    pub rotation_id: String,
    /// The service account that owns the token.
    pub service_account: String,
    /// The new token's id, which an HTTP probe's `json_field` must report.
    pub token_id: String,
    /// The new token itself, for the built-in check and for commands that
    /// opted in with `pass_token`.
    pub token: SecretString,
}

/// What the hooks need from the rest of the daemon.
#[derive(Debug, Clone)]
pub struct VerifyDeps {
    /// The MotherDuck client the built-in check presents the token through.
    pub motherduck: crate::motherduck::Client,
    /// Where the HTTP server delivers inbound acknowledgements.
    pub acks: AckRegistry,
    /// Environment variables that must never reach a hook command, even if
    /// a hook asks to inherit them: the variables the configuration names as
    /// holding the admin token or store credentials.
    pub scrub_env: Vec<String>,
}

/// A hook did not pass.
#[derive(Debug, thiserror::Error)]
#[error("{kind} hook `{label}` failed: {failure}")]
pub struct VerifyError {
    pub kind: HookKind,
    /// The hook's label (see [`HookSpec::label`]).
    pub label: String,
    pub failure: Failure,
}

impl VerifyError {
    /// True when the run was cancelled (shutdown) rather than failed: the
    /// driver should then leave the rotation to be resumed, not roll back.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.failure, Failure::Cancelled)
    }

    /// A short, bounded classification for metrics and alerts.
    pub fn reason(&self) -> &'static str {
        match &self.failure {
            Failure::Cancelled => "cancelled",
            Failure::Deadline { last, .. } | Failure::Definitive(last) => last.code(),
        }
    }
}

/// How a hook ended without passing.
#[derive(Debug)]
pub enum Failure {
    /// The cancellation token fired.
    Cancelled,
    /// The deadline passed; `last` is what the latest finished attempt saw
    /// ([`Reason::Unfinished`] when none finished).
    Deadline {
        deadline: Duration,
        attempts: u32,
        last: Reason,
    },
    /// A condition that waiting cannot change.
    Definitive(Reason),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Cancelled => f.write_str("cancelled"),
            Failure::Deadline {
                deadline,
                attempts,
                last,
            } => {
                let within = humantime::format_duration(*deadline);
                if *attempts > 1 {
                    write!(
                        f,
                        "not passed within {within} after {attempts} attempts; last: {last}"
                    )
                } else {
                    write!(f, "not passed within {within}: {last}")
                }
            }
            Failure::Definitive(reason) => write!(f, "{reason}"),
        }
    }
}

/// What one attempt of a hook saw.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    #[error("expected status {}, got {actual}", fmt_statuses(expected))]
    Status { expected: Vec<u16>, actual: u16 },
    #[error("no answer within {}", humantime::format_duration(*after))]
    RequestTimeout { after: Duration },
    #[error("request failed: {message}")]
    Request { message: String },
    #[error("response body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("response body is not JSON: {message}")]
    NotJson { message: String },
    #[error("json field `{pointer}` is missing")]
    JsonFieldMissing { pointer: String },
    #[error("json field `{pointer}` is {found}, not a string")]
    JsonFieldNotString {
        pointer: String,
        found: &'static str,
    },
    /// `actual` is `None` when the reported value did not look like a token
    /// id and is therefore not repeated.
    #[error(
        "json field `{pointer}` is {}, expected `{expected}`",
        fmt_reported(actual)
    )]
    JsonFieldMismatch {
        pointer: String,
        expected: String,
        actual: Option<String>,
    },
    #[error(
        "json field `{pointer}` holds the token secret itself; it must hold the token id (`{expected}`)"
    )]
    JsonFieldIsSecret { pointer: String, expected: String },
    #[error("failed to start: {message}")]
    Spawn { message: String },
    #[error("exited with status {code}")]
    ExitCode { code: i32 },
    #[error("killed by signal {signal}")]
    Signal { signal: i32 },
    #[error(
        "did not exit within {}; its process group was killed",
        humantime::format_duration(*after)
    )]
    CommandTimeout { after: Duration },
    #[error("no acknowledgement received")]
    AckNotReceived,
    #[error("no acknowledgement is registered for rotation `{rotation_id}`")]
    AckNotRegistered { rotation_id: String },
    #[error("the acknowledgement registration was withdrawn")]
    AckWithdrawn,
    #[error("token rejected by MotherDuck (401)")]
    Rejected,
    #[error("{0}")]
    MotherDuck(#[source] ApiError),
    #[error("an attempt was still running at the deadline")]
    Unfinished,
}

impl Reason {
    /// A short, bounded classification for metrics and alerts.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Status { .. } => "status",
            Reason::RequestTimeout { .. } => "request_timeout",
            Reason::Request { .. } => "request",
            Reason::BodyTooLarge { .. } | Reason::NotJson { .. } => "body",
            Reason::JsonFieldMissing { .. }
            | Reason::JsonFieldNotString { .. }
            | Reason::JsonFieldMismatch { .. }
            | Reason::JsonFieldIsSecret { .. } => "json_field",
            Reason::Spawn { .. } => "spawn",
            Reason::ExitCode { .. } | Reason::Signal { .. } => "exit",
            Reason::CommandTimeout { .. } => "command_timeout",
            Reason::AckNotReceived => "ack_missing",
            Reason::AckNotRegistered { .. } | Reason::AckWithdrawn => "ack_unregistered",
            Reason::Rejected => "rejected",
            Reason::MotherDuck(_) => "motherduck",
            Reason::Unfinished => "unfinished",
        }
    }
}

fn fmt_statuses(statuses: &[u16]) -> String {
    let parts: Vec<String> = statuses.iter().map(u16::to_string).collect();
    parts.join(" or ")
}

fn fmt_reported(actual: &Option<String>) -> String {
    match actual {
        Some(v) => format!("`{v}`"),
        None => "a value that does not look like a token id (not shown)".to_owned(),
    }
}

/// Runs every hook concurrently until all have passed; see the module
/// documentation for why concurrently and what happens on a failure.
/// An empty list passes.
///
/// # Errors
/// The first hook failure, naming the hook; [`Failure::Cancelled`] when
/// `cancel` fires first.
pub async fn run_all(
    hooks: &[HookSpec],
    ctx: &VerifyContext,
    deps: &VerifyDeps,
    cancel: &CancellationToken,
) -> Result<(), VerifyError> {
    type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<(), VerifyError>> + Send + 'a>>;
    let mut running: Vec<Option<HookFuture<'_>>> = hooks
        .iter()
        .map(|hook| Some(Box::pin(run_one(hook, ctx, deps, cancel)) as HookFuture<'_>))
        .collect();
    // Polling the boxed futures by hand keeps them borrowing `hooks`, `ctx`
    // and `deps` (a JoinSet would need owned copies) and lets the first
    // error return at once; returning drops the rest, which aborts them.
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in running.iter_mut() {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => *slot = None,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    })
    .await
}

/// Runs one hook to its end.
async fn run_one(
    hook: &HookSpec,
    ctx: &VerifyContext,
    deps: &VerifyDeps,
    cancel: &CancellationToken,
) -> Result<(), VerifyError> {
    let kind = hook.kind();
    let label = hook.label(ctx);
    let span = tracing::info_span!("verify_hook", kind = kind.as_str(), label = %label);
    let started = Instant::now();
    let outcome = async {
        match hook {
            HookSpec::Http(probe) => {
                poll(probe.interval(), probe.deadline(), cancel, || {
                    probe.attempt(ctx)
                })
                .await
            }
            HookSpec::Command(command) => {
                poll(command.interval(), command.deadline(), cancel, || {
                    command.attempt(ctx, &deps.scrub_env)
                })
                .await
            }
            HookSpec::Ack(ack) => ack.wait(ctx, &deps.acks, cancel).await,
            HookSpec::MotherDuck(check) => {
                poll(check.interval(), check.deadline(), cancel, || {
                    check.attempt(ctx, &deps.motherduck)
                })
                .await
            }
        }
    }
    .instrument(span.clone())
    .await;
    match outcome {
        Ok(attempts) => {
            span.in_scope(|| {
                tracing::info!(
                    attempts,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "verification hook passed"
                );
            });
            Ok(())
        }
        Err(failure) => Err(VerifyError {
            kind,
            label,
            failure,
        }),
    }
}

/// Calls `attempt` until it succeeds, waiting `interval` between the end of
/// one attempt and the start of the next, with every attempt cut short at
/// the deadline. Gives up as soon as the next attempt could not start before
/// the deadline, rather than waiting for nothing. Returns the number of
/// attempts made.
async fn poll<F, Fut>(
    interval: Duration,
    deadline: Duration,
    cancel: &CancellationToken,
    mut attempt: F,
) -> Result<u32, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Reason>>,
{
    let end = Instant::now() + deadline;
    let mut attempts = 0u32;
    let mut last: Option<Reason> = None;
    loop {
        attempts += 1;
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Failure::Cancelled),
            outcome = tokio::time::timeout_at(end, attempt()) => outcome,
        };
        let reason = match outcome {
            Ok(Ok(())) => return Ok(attempts),
            Ok(Err(reason)) => reason,
            Err(_elapsed) => {
                // An attempt cut short says nothing about the consumer; the
                // last one that finished is the more useful report.
                return Err(Failure::Deadline {
                    deadline,
                    attempts,
                    last: last.unwrap_or(Reason::Unfinished),
                });
            }
        };
        tracing::debug!(attempt = attempts, reason = %reason, "verification attempt failed");
        let next = Instant::now() + interval;
        if next >= end {
            return Err(Failure::Deadline {
                deadline,
                attempts,
                last: reason,
            });
        }
        last = Some(reason);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(Failure::Cancelled),
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

/// Checks the timing settings every polling hook shares.
fn check_timing(interval: Duration, deadline: Duration) -> Result<(), String> {
    if interval.is_zero() {
        return Err("interval `0s` must be greater than zero".to_owned());
    }
    if deadline.is_zero() {
        return Err("deadline `0s` must be greater than zero".to_owned());
    }
    Ok(())
}

/// Checks that a per-attempt timeout fits in the deadline; a longer one
/// would never fire, which is a configuration mistake worth naming.
fn check_attempt_timeout(name: &str, timeout: Duration, deadline: Duration) -> Result<(), String> {
    if timeout.is_zero() {
        return Err(format!("{name} `0s` must be greater than zero"));
    }
    if timeout > deadline {
        return Err(format!(
            "{name} `{}` must not exceed the deadline `{}`",
            humantime::format_duration(timeout),
            humantime::format_duration(deadline)
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A context with a recognisable fake token, for tests that check the
    /// token never shows up.
    pub(crate) fn ctx() -> VerifyContext {
        VerifyContext {
            policy: "nightly".into(),
            rotation_id: "0192f000-0000-7000-8000-000000000001".into(),
            service_account: "svc_app".into(),
            token_id: "5f0c1e2a-1111-4222-8333-444455556666".into(),
            token: SecretString::from("eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2ln".to_owned()),
        }
    }

    /// Dependencies whose MotherDuck client points at a closed port; only
    /// the built-in check would use it.
    pub(crate) fn deps() -> VerifyDeps {
        let cfg = crate::motherduck::ClientConfig::new(
            "http://127.0.0.1:9",
            SecretString::from("admin-token-for-tests".to_owned()),
        );
        VerifyDeps {
            motherduck: crate::motherduck::Client::new(cfg).unwrap(),
            acks: AckRegistry::default(),
            scrub_env: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn poll_retries_until_an_attempt_passes() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let attempts = poll(
            Duration::from_secs(2),
            Duration::from_secs(60),
            &CancellationToken::new(),
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Reason::Rejected)
                } else {
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(attempts, 3);
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }

    /// The failure of `poll`, never cancelled, running `attempt` every
    /// `interval` seconds within `deadline` seconds.
    async fn poll_failure<F, Fut>(interval: u64, deadline: u64, attempt: F) -> Failure
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), Reason>>,
    {
        poll(
            Duration::from_secs(interval),
            Duration::from_secs(deadline),
            &CancellationToken::new(),
            attempt,
        )
        .await
        .unwrap_err()
    }

    #[tokio::test(start_paused = true)]
    async fn poll_gives_up_when_no_attempt_fits_before_the_deadline() {
        let started = Instant::now();
        let failure = poll_failure(4, 10, || async { Err(Reason::Rejected) }).await;
        // Attempts at 0, 4 and 8 s; a fourth at 12 s would be too late.
        assert_eq!(started.elapsed(), Duration::from_secs(8));
        let Failure::Deadline { attempts, last, .. } = &failure else {
            panic!("{failure:?}");
        };
        assert_eq!(*attempts, 3);
        assert!(matches!(last, Reason::Rejected));
        assert_eq!(
            failure.to_string(),
            "not passed within 10s after 3 attempts; last: token rejected by MotherDuck (401)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn poll_cuts_a_hanging_attempt_at_the_deadline() {
        let started = Instant::now();
        let failure = poll_failure(1, 10, std::future::pending::<Result<(), Reason>>).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(
            matches!(
                failure,
                Failure::Deadline {
                    attempts: 1,
                    last: Reason::Unfinished,
                    ..
                }
            ),
            "{failure:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn poll_stops_when_cancelled() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let failure = poll(
            Duration::from_secs(1),
            Duration::from_secs(60),
            &cancel,
            || async { Err(Reason::Rejected) },
        )
        .await
        .unwrap_err();
        assert!(matches!(failure, Failure::Cancelled), "{failure:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    /// A `/bin/sh -c <script>` hook with the given timeout, interval and
    /// deadline, in seconds.
    fn sh(script: &str, timeout: u64, interval: u64, deadline: u64) -> CommandHook {
        CommandHook::builder("/bin/sh")
            .args(["-c", script])
            .timeout(Duration::from_secs(timeout))
            .interval(Duration::from_secs(interval))
            .deadline(Duration::from_secs(deadline))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn run_all_passes_with_no_hooks() {
        run_all(&[], &ctx(), &deps(), &CancellationToken::new())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn run_all_names_the_hook_that_failed() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/healthz"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        let probe = HttpProbe::builder(format!("{}/healthz", server.uri()))
            .interval(Duration::from_millis(5))
            .deadline(Duration::from_millis(500))
            .request_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let command = sh("exit 3", 2, 2, 2);
        let hooks = [HookSpec::Http(probe), HookSpec::Command(command)];
        let err = run_all(&hooks, &ctx(), &deps(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, HookKind::Command);
        assert_eq!(err.label, "/bin/sh");
        assert_eq!(err.reason(), "exit");
        let msg = err.to_string();
        assert_eq!(
            msg,
            "command hook `/bin/sh` failed: not passed within 2s: exited with status 3"
        );
    }

    #[tokio::test]
    async fn run_all_fails_fast_without_waiting_for_slower_hooks() {
        let failing = sh("exit 1", 2, 2, 2);
        let slow = sh("exec sleep 30", 30, 1, 60);
        let hooks = [HookSpec::Command(slow), HookSpec::Command(failing)];
        let started = std::time::Instant::now();
        let err = run_all(&hooks, &ctx(), &deps(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err.failure, Failure::Deadline { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    }

    #[test]
    fn run_all_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let (ctx, deps, cancel) = (ctx(), deps(), CancellationToken::new());
        let fut = run_all(&[], &ctx, &deps, &cancel);
        assert_send(&fut);
    }

    #[test]
    fn timing_validation_quotes_values() {
        assert_eq!(
            check_timing(Duration::ZERO, Duration::from_secs(1)).unwrap_err(),
            "interval `0s` must be greater than zero"
        );
        assert_eq!(
            check_attempt_timeout("timeout", Duration::from_secs(2), Duration::from_secs(1))
                .unwrap_err(),
            "timeout `2s` must not exceed the deadline `1s`"
        );
    }
}
