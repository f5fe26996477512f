//! Reload actions: telling consumers that read the token only at start
//! that a new one is current.
//!
//! The driver runs a policy's actions after the new token is current in
//! every destination and before verification (invariant 11), and again
//! after a rollback has restored the previous token, so a consumer that was
//! told about the new token is told to go back. The actions form a closed
//! set, [`ReloadAction`]:
//! - `command`: a program, with the command hook's environment rules (the
//!   token only with `pass_token`);
//! - `signal`: a signal to the process a pid file names, or to a systemd
//!   unit through `systemctl kill --signal=… UNIT`;
//! - `http`: a request to the consumer, expecting a status;
//! - `kubernetes`: a rollout restart of Deployments, StatefulSets and
//!   DaemonSets, the same patch `kubectl rollout restart` sends.
//!
//! Every action names a target ([`ReloadAction::target_key`]). Requests for
//! one target within its `debounce` window run it once, and it runs at
//! most once per `min_interval` ([`Reloader`]): several policies rotating
//! at once restart a shared consumer once, not once each.
//!
//! # Secrets
//! No error or log line of this module holds a token: errors quote the
//! configuration (program paths, pid files, units, URLs without query,
//! object names), statuses and the Kubernetes API's own messages.

mod command;
mod debounce;
mod http;
mod kubernetes;
mod signal;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::secret::SecretString;
use crate::verify::{CommandHook, HttpProbe};

pub use debounce::{Reloader, Requested};
pub use kubernetes::{KubernetesAction, Workload, WorkloadKind, rollout_restart_patch};
pub use signal::{SignalAction, SignalTarget, parse_signal};

/// One reload action of a policy, with what happens around it.
#[derive(Debug, Clone)]
pub struct ReloadSpec {
    pub action: ReloadAction,
    /// Whether a failure fails the rotation.
    pub on_failure: OnActionFailure,
    /// Requests for the same target within this window run it once.
    pub debounce: Duration,
    /// The target runs at most once per this interval.
    pub min_interval: Duration,
}

/// What a failed action means for the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnActionFailure {
    /// The rotation fails and is rolled back (the default).
    Fail,
    /// Logged and counted; the rotation carries on to verification.
    Continue,
}

impl OnActionFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnActionFailure::Fail => "fail",
            OnActionFailure::Continue => "continue",
        }
    }
}

/// The reload actions, a closed set.
#[derive(Debug, Clone)]
pub enum ReloadAction {
    /// A program run once; exit 0 passes.
    Command(CommandHook),
    Signal(SignalAction),
    /// One request; an expected status passes.
    Http(HttpProbe),
    Kubernetes(KubernetesAction),
}

impl ReloadAction {
    /// The kind, for metrics and logs: a bounded set.
    pub fn kind(&self) -> &'static str {
        match self {
            ReloadAction::Command(_) => "command",
            ReloadAction::Signal(_) => "signal",
            ReloadAction::Http(_) => "http",
            ReloadAction::Kubernetes(_) => "kubernetes",
        }
    }

    /// What the action does, for logs, errors and `status`; never a secret
    /// (URLs lose their query).
    pub fn label(&self) -> String {
        match self {
            ReloadAction::Command(c) => command::label(c),
            ReloadAction::Signal(s) => s.label(),
            ReloadAction::Http(h) => format!("{} {}", h.method(), h.label()),
            ReloadAction::Kubernetes(k) => k.label(),
        }
    }

    /// The target this action reloads, for debouncing: actions of
    /// different policies with the same key run once for all. A command
    /// handed the token is one policy's own.
    pub fn target_key(&self, policy: &str) -> String {
        match self {
            ReloadAction::Command(c) if c.pass_token() => {
                format!("command {policy} {}", command::label(c))
            }
            ReloadAction::Command(c) => format!("command {}", command::label(c)),
            other => format!("{} {}", other.kind(), other.label()),
        }
    }

    /// Whether the action hands the token to the consumer (a command with
    /// `pass_token`), so the driver must read it.
    pub fn needs_token(&self) -> bool {
        matches!(self, ReloadAction::Command(c) if c.pass_token())
    }

    /// Runs the action once.
    ///
    /// # Errors
    /// What went wrong, without any secret.
    pub async fn run(&self, ctx: &ReloadContext, scrub_env: &[String]) -> Result<(), ActionError> {
        match self {
            ReloadAction::Command(c) => command::run(c, ctx, scrub_env).await,
            ReloadAction::Signal(s) => s.run(ctx, scrub_env).await,
            ReloadAction::Http(h) => http::run(h, ctx).await,
            ReloadAction::Kubernetes(k) => k.run(ctx).await,
        }
    }
}

/// Why consumers are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadCause {
    /// The new token became current.
    Promoted,
    /// A rollback made the previous token current again.
    RolledBack,
}

impl ReloadCause {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadCause::Promoted => "promote",
            ReloadCause::RolledBack => "rollback",
        }
    }
}

/// What an action knows of the rotation it reports.
#[derive(Debug, Clone)]
pub struct ReloadContext {
    pub policy: String,
    pub rotation_id: String,
    pub service_account: String,
    /// The id of the token now current.
    pub token_id: String,
    /// The token now current; only read when an action passes it on.
    pub token: Option<SecretString>,
    pub cause: ReloadCause,
    /// The wall clock when the reload was asked for: the `restartedAt`
    /// a Kubernetes rollout restart records.
    pub now: DateTime<Utc>,
}

/// A failed action. Cheap to clone: a debounced run hands its result to
/// every policy that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// A short, bounded classification for metrics and alerts.
    pub reason: &'static str,
    /// Lowercase, quoting configuration only.
    pub message: String,
}

impl ActionError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> ActionError {
        ActionError {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for ReloadCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one action of a policy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOutcome {
    pub kind: &'static str,
    pub label: String,
    pub on_failure: OnActionFailure,
    /// Whether this request joined a run another request started.
    pub joined: bool,
    pub result: Result<(), ActionError>,
}

/// The verification context a reused command hook or HTTP probe needs.
fn verify_context(ctx: &ReloadContext) -> crate::verify::VerifyContext {
    crate::verify::VerifyContext {
        policy: ctx.policy.clone(),
        rotation_id: ctx.rotation_id.clone(),
        service_account: ctx.service_account.clone(),
        token_id: ctx.token_id.clone(),
        token: ctx
            .token
            .clone()
            .unwrap_or_else(|| SecretString::from(String::new())),
    }
}
