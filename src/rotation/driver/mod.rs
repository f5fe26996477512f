//! The driver: executes the state machine's steps against MotherDuck, the
//! stores and the verification hooks.
//!
//! [`Driver::reconcile`] reads every destination, asks [`plan::decide`] for
//! the next step, takes the policy's lock before changing anything, and
//! repeats until the policy has to wait (for its schedule, the overlap
//! period, or a retry). Each step re-reads the records first, so a second
//! replica, or this one after a restart, always continues from what the
//! stores say.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::plan::{self, OnFailure, Step, WaitReason};
use crate::alerts::AlertKind;
use crate::clock::Clock;
use crate::config::Policy;
use crate::metrics::Metrics;
use crate::motherduck::{Client, CreateTokenRequest, TokenInfo};
use crate::schedule::{self, TokenTimes};
use crate::secret::{ExposeSecret, SecretString};
use crate::stores::{
    DestinationView, Fence, Journal, JournalState, NewRecord, Slot, StoreError, TokenMeta,
};
use crate::verify::{self, HookSpec, VerifyContext, VerifyDeps};

mod failure;
mod pass;
mod reload;
mod steps;
mod sweep;
mod verification;

/// What a reconcile pass ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// Nothing to do before this instant.
    Wait { until: DateTime<Utc>, why: String },
    /// Another replica holds the lock; look again at this instant.
    Busy { until: DateTime<Utc> },
    /// Shutdown was requested; the policy is at a safe point.
    Stopped,
}

/// A step failure, classified for the retry policy.
#[derive(Debug)]
struct StepError {
    step: &'static str,
    reason: &'static str,
    retryable: bool,
    message: String,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

fn store_err(step: &'static str, e: &StoreError) -> StepError {
    StepError {
        step,
        reason: match e.kind {
            crate::stores::StoreErrorKind::Transient => "store_unavailable",
            crate::stores::StoreErrorKind::Permanent => "store_denied",
            crate::stores::StoreErrorKind::Corrupt => "store_corrupt",
            crate::stores::StoreErrorKind::Conflict => "store_conflict",
        },
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

fn api_err(step: &'static str, e: &crate::motherduck::ApiError) -> StepError {
    StepError {
        step,
        reason: e.reason(),
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

/// Why reconcile stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("policy `{policy}`: {source}")]
    Store {
        policy: String,
        #[source]
        source: StoreError,
    },
    #[error("policy `{policy}`: the stored records are inconsistent: {reason}")]
    Inconsistent { policy: String, reason: String },
    #[error("policy `{policy}`: {message}")]
    Step { policy: String, message: String },
    /// The pass stopped writing because its lease ended (invariant 9).
    #[error("policy `{policy}`: stopped: {reason}; another replica may carry on")]
    LeaseLost { policy: String, reason: String },
}

tokio::task_local! {
    /// The lease of the rotation pass running in this task. Every write to
    /// a store or to MotherDuck goes through [`Driver::retrying`], which
    /// checks it first; a failed step checks it before rolling anything
    /// back. Set by [`Driver::reconcile`] and [`Driver::sweep`] around the
    /// work they do under the lock.
    static FENCE: Fence;
}

/// Whether the pass in this task may still write: `Ok` outside a pass.
fn fence_check() -> Result<(), String> {
    FENCE.try_with(Fence::check).unwrap_or(Ok(()))
}

/// A step failed where nothing is rolled back (the rotation is verified
/// already, or only a journal was to be written): the pass ends and a
/// later one tries again.
fn step_failed(policy: &Policy, e: &StepError) -> DriveError {
    DriveError::Step {
        policy: policy.name.clone(),
        message: e.to_string(),
    }
}

/// How often a pass waiting on something looks at its lease.
const FENCE_WATCH: Duration = Duration::from_millis(100);

/// Executes rotations. Cheap to clone.
#[derive(Clone)]
pub struct Driver {
    pub client: Client,
    pub clock: Clock,
    pub verify: VerifyDeps,
    pub metrics: Arc<Metrics>,
    /// Names this replica in lock files.
    pub instance_id: String,
    pub lock_retry_interval: Duration,
    /// Tokens younger than this are never swept as orphans.
    pub orphan_min_age: Duration,
    /// Where failures, rollbacks, orphans and near-expiry are reported.
    pub alerts: crate::alerts::Alerter,
    /// Runs the policies' reload actions, debounced per target across
    /// policies.
    pub reloads: crate::reload::Reloader,
    /// Consecutive failures of policies that have no token stored yet, by
    /// policy name. A rolled-back rotation's journal travels with the
    /// current record, so a policy without one would otherwise retry its
    /// first token at the initial backoff forever; this keeps the backoff
    /// growing for as long as the process runs.
    pub unrecorded_failures:
        Arc<std::sync::Mutex<std::collections::HashMap<String, UnrecordedFailure>>>,
    /// Passes in a row that failed before a rotation could begin, by
    /// policy name.
    pub failed_passes: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    /// After this many failed passes in a row the policy's failure alert
    /// is raised (`daemon.failed_passes_before_alert`).
    pub failed_passes_before_alert: u32,
}

/// The last failure of a policy that has no token stored yet, which no
/// record can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnrecordedFailure {
    /// Consecutive failures.
    pub failures: u32,
    /// `rotation <id> failed at <step>: <error>`.
    pub last_error: String,
    /// When the next attempt may begin.
    pub retry_at: DateTime<Utc>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

/// What the stores say of a policy, for `status` and `plan`.
#[derive(Debug, Clone)]
pub struct Observation {
    pub views: Vec<DestinationView>,
    pub next: Option<schedule::Due>,
    pub step: Step,
    pub now: DateTime<Utc>,
}

impl Observation {
    /// The current token (newest among destinations).
    pub fn current(&self) -> Option<&TokenMeta> {
        self.views
            .iter()
            .filter_map(|v| v.current.as_ref().map(|c| &c.meta))
            .max_by_key(|m| m.created_at)
    }
}

/// The due time for `decide`, from the current token's times and backoff.
fn due_of(
    policy: &Policy,
    views: &[DestinationView],
    now: DateTime<Utc>,
) -> (Option<schedule::Due>, (DateTime<Utc>, String)) {
    let current = views
        .iter()
        .filter_map(|v| v.current.as_ref().map(|c| &c.meta))
        .max_by_key(|m| m.created_at);
    // Schedule from the later of MotherDuck's `created_ts` and our own
    // rotation start: with a server clock behind ours, `created_ts` can fall
    // just before the cron slot that triggered the rotation, which would
    // make the same slot due again.
    let started = |rid: &str| {
        views
            .iter()
            .filter_map(|v| v.current.as_ref()?.journal.as_ref())
            .find(|j| j.rotation_id == rid)
            .map(|j| j.started_at)
    };
    let times = current.map(|m| TokenTimes {
        created_at: started(&m.rotation_id).map_or(m.created_at, |s| s.max(m.created_at)),
        expires_at: m.expires_at,
    });
    let not_before = plan::last_journal(views)
        .filter(|j| j.state == JournalState::RolledBack)
        .and_then(|j| j.retry_at);
    let due = schedule::next_due(
        &policy.name,
        &policy.schedule,
        times.as_ref(),
        now,
        not_before,
    );
    let pair = match &due {
        Some(d) => (d.at, d.detail.clone()),
        // Nothing makes it due: wait a long while, re-checked periodically.
        None => (
            now + chrono::Duration::days(3650),
            "no schedule and no expiry".to_owned(),
        ),
    };
    (due, pair)
}

impl Driver {
    /// `failures` from the stores, or for a policy with no token stored
    /// yet the count this process remembers (see
    /// [`Driver::unrecorded_failures`]).
    fn carry_unrecorded(&self, policy: &str, has_token: bool, failures: u32) -> u32 {
        let mut map = self
            .unrecorded_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if has_token {
            map.remove(policy);
            failures
        } else {
            failures.max(map.get(policy).map_or(0, |f| f.failures))
        }
    }

    /// Counts one call to a destination's store, in the store metrics and
    /// the store's dependency health.
    fn store_call(
        &self,
        d: &crate::stores::Destination,
        op: crate::stores::StoreOp,
        started: tokio::time::Instant,
        error: Option<&StoreError>,
    ) {
        self.metrics.store_op(d.kind(), op, error.is_none());
        self.metrics.dependency_call(
            &d.dependency(),
            op.as_str(),
            started.elapsed(),
            error.map(|e| e.kind.reason()),
        );
    }

    /// The last failure of `policy` while it has no token stored yet, as
    /// this process saw it.
    pub fn unrecorded_failure(&self, policy: &str) -> Option<UnrecordedFailure> {
        self.unrecorded_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(policy)
            .cloned()
    }

    async fn load_all(&self, policy: &Policy) -> Result<Vec<DestinationView>, DriveError> {
        let mut views = Vec::with_capacity(policy.destinations.len());
        for d in &policy.destinations {
            let started = tokio::time::Instant::now();
            let r = d.load().await;
            self.store_call(d, crate::stores::StoreOp::Load, started, r.as_ref().err());
            views.push(r.map_err(|source| DriveError::Store {
                policy: policy.name.clone(),
                source,
            })?);
        }
        Ok(views)
    }

    /// Reads the stores and says what would happen next, changing nothing.
    ///
    /// # Errors
    /// A store cannot be read.
    pub async fn observe(&self, policy: &Policy) -> Result<Observation, DriveError> {
        let now = self.clock.now();
        let views = self.load_all(policy).await?;
        let (next, due) = due_of(policy, &views, now);
        let step = plan::decide(&views, now, due);
        Ok(Observation {
            views,
            next,
            step,
            now,
        })
    }

    fn publish_gauges(
        &self,
        policy: &Policy,
        obs_views: &[DestinationView],
        next: Option<&schedule::Due>,
    ) {
        let p = policy.name.as_str();
        let current = obs_views
            .iter()
            .filter_map(|v| v.current.as_ref().map(|c| &c.meta))
            .max_by_key(|m| m.created_at);
        if let Some(c) = current {
            let warn_at = c.expires_at.map(|e| {
                e - chrono::Duration::from_std(self.alerts.settings().expiry_warning)
                    .unwrap_or_default()
            });
            match warn_at {
                Some(w) if self.clock.now() >= w => self.alerts.fire(
                    AlertKind::TokenExpiringSoon,
                    p,
                    format!(
                        "the current token {} expires at {} and has not been replaced",
                        c.token_id,
                        c.expires_at.map(|e| e.to_rfc3339()).unwrap_or_default()
                    ),
                ),
                _ => self.alerts.resolve(AlertKind::TokenExpiringSoon, p),
            }
            match c.expires_at {
                Some(e) => self
                    .metrics
                    .token_expiry_timestamp_seconds
                    .with_label_values(&[p])
                    .set(e.timestamp() as f64),
                None => {
                    let _ = self
                        .metrics
                        .token_expiry_timestamp_seconds
                        .remove_label_values(&[p]);
                }
            }
        }
        let now = self.clock.now();
        let superseded = plan::superseded_since(obs_views, now);
        self.metrics.set_superseded(p, superseded);
        match superseded {
            Some(since) if now - since > chrono::Duration::minutes(1) => {
                let late = (now - since).to_std().unwrap_or_default();
                let previous = plan::last_journal(obs_views)
                    .and_then(|j| j.previous_token_id.clone())
                    .unwrap_or_default();
                warn!(policy = %p, previous_token_id = %previous, overdue = %humantime::format_duration(Duration::from_secs(late.as_secs())), "the replaced token outlived its overlap and is not revoked yet; retrying");
                let limit = self.alerts.settings().old_token_limit;
                if late > limit {
                    self.alerts.fire(
                        AlertKind::OldTokenNotRevoked,
                        p,
                        format!(
                            "the replaced token {previous} should have been revoked at {} and is still not",
                            since.to_rfc3339()
                        ),
                    );
                }
            }
            Some(_) => {}
            None => self.alerts.resolve(AlertKind::OldTokenNotRevoked, p),
        }
        let has_token = obs_views.iter().any(|v| v.current.is_some());
        let failures = self.carry_unrecorded(p, has_token, plan::failures_in_a_row(obs_views));
        self.metrics
            .consecutive_failures
            .with_label_values(&[p])
            .set(i64::from(failures));
        if let Some(n) = next {
            self.metrics
                .next_rotation_timestamp_seconds
                .with_label_values(&[p])
                .set(n.at.timestamp() as f64);
        }
    }

    /// The pass stops: its lease ended. Logged; nothing more is written and
    /// nothing is counted as a failed rotation (the new holder carries on).
    fn lease_lost(&self, policy: &Policy, reason: String) -> DriveError {
        warn!(policy = %policy.name, reason = %reason, "the lease ended during the pass; writing nothing more");
        self.metrics.step_failed("lease", "lease_lost");
        DriveError::LeaseLost {
            policy: policy.name.clone(),
            reason,
        }
    }

    /// The records contradict each other: counted (as a failure of the
    /// `plan` step), alerted on, and returned as the pass's error. Nothing
    /// is written; an operator must look.
    fn inconsistent(&self, policy: &Policy, reason: String) -> DriveError {
        self.metrics.step_failed("plan", "inconsistent");
        self.alerts.fire(
            AlertKind::RotationFailed,
            &policy.name,
            format!("the stored records are inconsistent: {reason}"),
        );
        DriveError::Inconsistent {
            policy: policy.name.clone(),
            reason,
        }
    }

    /// Removes the temporary files killed writes left in the policy's
    /// destinations. Only under the policy's lock, from the sweep (at
    /// start-up, then every `sweep_interval`): listing a directory is too
    /// much work for every rotation pass. A failure is logged; the next
    /// sweep tries again.
    async fn remove_leftovers(&self, policy: &Policy) {
        for d in &policy.destinations {
            match d.leftovers(true).await {
                Ok(0) => {}
                Ok(n) => {
                    info!(policy = %policy.name, destination = %d.label(), files = n, "removed temporary files left by an interrupted write");
                }
                Err(e) => {
                    warn!(policy = %policy.name, error = %e, "could not remove temporary files left by an interrupted write");
                }
            }
        }
    }
}

/// What [`Driver::sweep`] found. Derefs to the orphans.
#[derive(Debug, Default)]
pub struct Swept {
    /// Unreferenced tokens of the policy old enough to be orphans; revoked
    /// unless the sweep was a dry run.
    pub orphans: Vec<TokenInfo>,
    /// When the earliest unreferenced token spared for being younger than
    /// `orphan_min_age` becomes old enough to be judged.
    pub recheck_at: Option<DateTime<Utc>>,
}

impl std::ops::Deref for Swept {
    type Target = Vec<TokenInfo>;
    fn deref(&self) -> &Vec<TokenInfo> {
        &self.orphans
    }
}

/// How [`Driver::begin`] ended.
enum Began {
    /// The token is created and staged everywhere: the rotation id, the
    /// secret and the acknowledgement secret.
    Created((String, SecretString, Option<SecretString>)),
    /// The attempt failed and was rolled back; no rotation before this.
    Failed { retry_at: DateTime<Utc> },
}

/// The rotation a step works on, if it is one of an unfinished rotation.
/// Puts the rotation a pass works on into its span, once per rotation:
/// recording a field again appends it again in the text log.
fn record_rotation_id(span: &tracing::Span, recorded: &mut Option<String>, rid: &str) {
    if recorded.as_deref() != Some(rid) {
        span.record("rotation_id", rid);
        *recorded = Some(rid.to_owned());
    }
}

fn step_rotation_id(step: &Step) -> Option<&str> {
    match step {
        Step::Stage { journal, .. }
        | Step::Promote { journal, .. }
        | Step::Verify { journal }
        | Step::MarkVerified { journal, .. }
        | Step::Settle { journal, .. }
        | Step::RevokeOld { journal }
        | Step::ContinueRollback { journal, .. } => Some(&journal.rotation_id),
        Step::Wait { .. } | Step::Begin { .. } | Step::Inconsistent { .. } => None,
    }
}

fn meta_of(info: &TokenInfo, service_account: &str, rotation_id: &str) -> TokenMeta {
    TokenMeta {
        token_id: info.id.clone(),
        token_name: info.name.clone().unwrap_or_default(),
        service_account: service_account.to_owned(),
        token_type: info.token_type,
        created_at: info.created_ts,
        expires_at: info.expire_at,
        rotation_id: rotation_id.to_owned(),
    }
}

fn wait_text(why: &WaitReason) -> String {
    match why {
        WaitReason::Schedule(s) => s.clone(),
        WaitReason::Overlap => "overlap period before the old token is revoked".to_owned(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Adds up to 20% random jitter so replicas and policies spread out.
fn jitter(d: Duration) -> Duration {
    let extra = d.as_millis() as u64 / 5;
    if extra == 0 {
        return d;
    }
    d + Duration::from_millis(fastrand::u64(0..=extra))
}
