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
    /// Consecutive failures of policies that have no token stored yet, by
    /// policy name. A rolled-back rotation's journal travels with the
    /// current record, so a policy without one would otherwise retry its
    /// first token at the initial backoff forever; this keeps the backoff
    /// growing for as long as the process runs.
    pub unrecorded_failures:
        Arc<std::sync::Mutex<std::collections::HashMap<String, UnrecordedFailure>>>,
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
            let r = d.load().await;
            self.metrics
                .store_op(d.kind(), crate::stores::StoreOp::Load, r.is_ok());
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
            self.metrics
                .token_created_timestamp_seconds
                .with_label_values(&[p])
                .set(c.created_at.timestamp() as f64);
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
        if let Some(n) = next {
            self.metrics
                .next_rotation_timestamp_seconds
                .with_label_values(&[p])
                .set(n.at.timestamp() as f64);
        }
    }

    /// Runs the policy's steps until it must wait. With `force`, starts a
    /// rotation now even if the schedule does not call for one.
    ///
    /// # Errors
    /// Unreadable stores or contradictory records; failed rotation steps
    /// are rolled back and reported as a `Wait` until the retry time.
    pub async fn reconcile(
        &self,
        policy: &Policy,
        force: bool,
        cancel: &CancellationToken,
    ) -> Result<Tick, DriveError> {
        let now = self.clock.now();
        let views = self.load_all(policy).await?;
        let (next, mut due) = due_of(policy, &views, now);
        self.publish_gauges(policy, &views, next.as_ref());
        if force {
            due = (now, "requested by `rotate`".to_owned());
        }
        match plan::decide(&views, now, due) {
            Step::Wait { until, why } => {
                return Ok(Tick::Wait {
                    until,
                    why: wait_text(&why),
                });
            }
            Step::Inconsistent { reason } => {
                return Err(self.inconsistent(policy, reason));
            }
            // A first token that failed has no record to carry its retry
            // time; this process remembers it (a forced pass ignores it).
            Step::Begin {
                previous_token_id: None,
                ..
            } if !force => {
                if let Some(f) = self.unrecorded_failure(&policy.name)
                    && f.retry_at > now
                {
                    return Ok(Tick::Wait {
                        until: f.retry_at,
                        why: "retry after a failed rotation".to_owned(),
                    });
                }
            }
            _ => {}
        }
        let lease = policy
            .lock
            .try_lock(&self.instance_id)
            .await
            .map_err(|source| DriveError::Store {
                policy: policy.name.clone(),
                source,
            })?;
        let Some(lease) = lease else {
            info!(policy = %policy.name, "another replica holds the lock; looking again later");
            return Ok(Tick::Busy {
                until: now
                    + chrono::Duration::from_std(self.lock_retry_interval).unwrap_or_default(),
            });
        };
        let gauge = self
            .metrics
            .rotation_in_progress
            .with_label_values(&[policy.name.as_str()]);
        gauge.set(1);
        // One span per rotation pass, carrying the policy and (once known)
        // the rotation id, so every event of the pass can be found by either.
        let span = tracing::info_span!(
            "rotation",
            policy = %policy.name,
            rotation_id = tracing::field::Empty
        );
        // Waiting (verification, retry sleeps) ends when the lease does.
        let fence = lease.fence();
        let pass_cancel = cancel.child_token();
        let watch = fence.expires().then(|| {
            let (f, c) = (fence.clone(), pass_cancel.clone());
            tokio::spawn(async move {
                while f.check().is_ok() {
                    tokio::time::sleep(FENCE_WATCH).await;
                }
                c.cancel();
            })
        });
        let result = FENCE
            .scope(
                fence.clone(),
                self.locked(policy, force, &pass_cancel, &span)
                    .instrument(span.clone()),
            )
            .await;
        if let Some(w) = watch {
            w.abort();
        }
        gauge.set(0);
        match (fence.check(), result) {
            // Cut short by the lease, not by a shutdown.
            (Err(reason), Ok(Tick::Stopped)) if !cancel.is_cancelled() => {
                Err(self.lease_lost(policy, reason))
            }
            (_, result) => result,
        }
    }

    /// The pass stops: its lease ended. Logged; nothing more is written and
    /// nothing is counted as a failed rotation (the new holder carries on).
    fn lease_lost(&self, policy: &Policy, reason: String) -> DriveError {
        warn!(policy = %policy.name, reason = %reason, "the lease ended during the pass; writing nothing more");
        self.metrics
            .rotation_step_failures_total
            .with_label_values(&[policy.name.as_str(), "lease", "lease_lost"])
            .inc();
        DriveError::LeaseLost {
            policy: policy.name.clone(),
            reason,
        }
    }

    /// The records contradict each other: counted (as a failure of the
    /// `plan` step), alerted on, and returned as the pass's error. Nothing
    /// is written; an operator must look.
    fn inconsistent(&self, policy: &Policy, reason: String) -> DriveError {
        self.metrics
            .rotation_step_failures_total
            .with_label_values(&[policy.name.as_str(), "plan", "inconsistent"])
            .inc();
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

    /// The steps under the lock.
    async fn locked(
        &self,
        policy: &Policy,
        mut force: bool,
        cancel: &CancellationToken,
        span: &tracing::Span,
    ) -> Result<Tick, DriveError> {
        // The secret of the rotation this pass created, so it is not read
        // back from a store needlessly.
        let mut fresh: Option<(String, SecretString, Option<SecretString>)> = None;
        let mut started: Option<tokio::time::Instant> = None;
        // Acknowledgements are accepted from promotion on: consumers see the
        // new token then and may acknowledge before verification starts.
        let mut ack_waiter: Option<verify::AckWaiter> = None;
        // When a rotation of this pass failed, no new one starts before its
        // retry time. The stores usually say so too, but not after the
        // first token of a policy failed: its rollback leaves no record to
        // carry the retry time, and the pass would begin again at once.
        let mut backoff_until: Option<DateTime<Utc>> = None;
        // The rotation id the span carries: the formatter appends every
        // `record` (a JSON line would repeat the key), so it is recorded
        // only when it changes.
        let mut recorded: Option<String> = None;
        loop {
            if let Err(reason) = fence_check() {
                return Err(self.lease_lost(policy, reason));
            }
            if cancel.is_cancelled() {
                return Ok(Tick::Stopped);
            }
            let now = self.clock.now();
            let views = self.load_all(policy).await?;
            let (next, mut due) = due_of(policy, &views, now);
            if force {
                due = (now, "requested by `rotate`".to_owned());
            }
            let step = plan::decide(&views, now, due);
            if let Some(rid) = step_rotation_id(&step) {
                record_rotation_id(span, &mut recorded, rid);
            }
            // `force` starts one rotation now; when the first step resumes
            // an unfinished rotation instead, that one is the rotation,
            // unless all it has left is revoking its old token: its new
            // token is already current, so a new rotation follows.
            force = force && matches!(step, Step::RevokeOld { .. });
            if let (Step::Begin { .. }, Some(until)) = (&step, backoff_until)
                && until > now
            {
                return Ok(Tick::Wait {
                    until,
                    why: "retry after a failed rotation".to_owned(),
                });
            }
            match step {
                Step::Wait { until, why } => {
                    self.publish_gauges(policy, &views, next.as_ref());
                    return Ok(Tick::Wait {
                        until,
                        why: wait_text(&why),
                    });
                }
                Step::Inconsistent { reason } => {
                    return Err(self.inconsistent(policy, reason));
                }
                // Bringing a lagging destination up to a verified rotation:
                // a failure there is retried by a later pass; it never
                // undoes a rotation consumers already verified.
                Step::Stage { journal, dests } if journal.state == JournalState::Verified => {
                    let secret = self.secret_for(policy, &views, &journal, &fresh).await?;
                    warn!(policy = %policy.name, rotation_id = %journal.rotation_id, destinations = ?dests, "a destination lacks the verified token; writing it there before the old token is revoked");
                    self.stage(policy, &journal, &dests, &secret, cancel)
                        .await
                        .map_err(|e| step_failed(policy, &e))?;
                }
                Step::Promote { journal, dests } if journal.state == JournalState::Verified => {
                    self.promote(policy, &journal, &dests, cancel)
                        .await
                        .map_err(|e| step_failed(policy, &e))?;
                }
                Step::Begin {
                    previous_token_id,
                    failures,
                    why,
                } => {
                    started = Some(tokio::time::Instant::now());
                    let failures =
                        self.carry_unrecorded(&policy.name, previous_token_id.is_some(), failures);
                    match self
                        .begin(policy, previous_token_id, failures, &why, cancel)
                        .await?
                    {
                        Began::Created(f) => {
                            record_rotation_id(span, &mut recorded, &f.0);
                            fresh = Some(f);
                        }
                        Began::Failed { retry_at } => backoff_until = Some(retry_at),
                    }
                }
                Step::Stage { journal, dests } => {
                    let secret = self.secret_for(policy, &views, &journal, &fresh).await?;
                    if let Err(e) = self.stage(policy, &journal, &dests, &secret, cancel).await {
                        backoff_until = Some(self.fail(policy, journal, e, cancel).await?);
                    }
                }
                Step::Promote { journal, dests } => {
                    if self.wants_ack(policy, &journal, &ack_waiter) {
                        let secret = self.secret_for(policy, &views, &journal, &fresh).await?;
                        ack_waiter = self.register_ack(&journal, &secret);
                    }
                    crate::crash::point("before-promote");
                    if let Err(e) = self.promote(policy, &journal, &dests, cancel).await {
                        backoff_until = Some(self.fail(policy, journal, e, cancel).await?);
                    }
                    crate::crash::point("after-promote");
                }
                Step::Verify { journal } => {
                    let secret = self.secret_for(policy, &views, &journal, &fresh).await?;
                    if self.wants_ack(policy, &journal, &ack_waiter) {
                        ack_waiter = self.register_ack(&journal, &secret);
                    }
                    // An acknowledgement recorded before a restart counts:
                    // the consumer has switched and will not send it again.
                    if journal.acknowledged_at.is_some()
                        && let Some(ack) = &secret.1
                    {
                        let _ = self
                            .verify
                            .acks
                            .acknowledge(&journal.rotation_id, ack.expose_secret());
                    }
                    let result = self
                        .verify_recording_ack(policy, &journal, secret.0, &mut ack_waiter, cancel)
                        .await;
                    // Acknowledgements end with verification.
                    drop(ack_waiter.take());
                    match result {
                        Ok(()) => {
                            // With no old token there is nothing to
                            // overlap: the rotation is done at once.
                            let overlap = if journal.previous_token_id.is_some() {
                                chrono::Duration::from_std(policy.overlap).unwrap_or_default()
                            } else {
                                chrono::Duration::zero()
                            };
                            let verified = Journal {
                                state: JournalState::Verified,
                                updated_at: now,
                                revoke_after: Some(self.clock.now() + overlap),
                                ..journal
                            };
                            let all: Vec<usize> = (0..policy.destinations.len()).collect();
                            if let Err(e) =
                                self.write_journal(policy, &verified, &all, cancel).await
                            {
                                backoff_until = Some(self.fail(policy, verified, e, cancel).await?);
                                continue;
                            }
                            crate::crash::point("after-verify");
                            self.record_success(policy, started.take());
                        }
                        // The watcher cut verification short: the lease
                        // ended, not a shutdown.
                        Err(_) if fence_check().is_err() => {
                            let reason = fence_check().err().unwrap_or_default();
                            return Err(self.lease_lost(policy, reason));
                        }
                        Err(e) if cancel.is_cancelled() => {
                            info!(policy = %policy.name, error = %e, "verification interrupted by shutdown; it resumes on restart");
                            return Ok(Tick::Stopped);
                        }
                        Err(e) => {
                            backoff_until = Some(self.fail(policy, journal, e, cancel).await?);
                        }
                    }
                }
                Step::Settle { journal, dests } => {
                    // Repeats the promotion where the record already holds
                    // the token; the journal keeps its state.
                    warn!(policy = %policy.name, rotation_id = %journal.rotation_id, destinations = ?dests, "a promotion was left unfinished; finishing it");
                    self.promote(policy, &journal, &dests, cancel)
                        .await
                        .map_err(|e| step_failed(policy, &e))?;
                }
                Step::MarkVerified { journal, dests } => {
                    self.write_journal(policy, &journal, &dests, cancel)
                        .await
                        .map_err(|e| step_failed(policy, &e))?;
                }
                Step::RevokeOld { journal } => {
                    self.revoke_old(policy, journal, cancel).await?;
                }
                Step::ContinueRollback { journal, dests } => {
                    self.roll_back(policy, &journal, &dests, cancel).await?;
                }
            }
        }
    }

    fn record_success(&self, policy: &Policy, started: Option<tokio::time::Instant>) {
        let p = policy.name.as_str();
        self.alerts.resolve(AlertKind::RotationFailed, p);
        self.alerts.resolve(AlertKind::RollbackHappened, p);
        self.metrics
            .rotations_total
            .with_label_values(&[p, "success"])
            .inc();
        self.metrics
            .last_success_timestamp_seconds
            .with_label_values(&[p])
            .set(self.clock.now().timestamp() as f64);
        if let Some(s) = started {
            self.metrics
                .rotation_duration_seconds
                .with_label_values(&[p])
                .observe(s.elapsed().as_secs_f64());
        }
    }

    /// Runs `f` under the policy's retry settings; `Err` once it gives up.
    async fn retrying<T, F, Fut>(
        &self,
        policy: &Policy,
        cancel: &CancellationToken,
        mut f: F,
    ) -> Result<T, StepError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StepError>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            if let Err(why) = fence_check() {
                return Err(StepError {
                    step: "lease",
                    reason: "lease_lost",
                    retryable: false,
                    message: why,
                });
            }
            let e = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            self.metrics
                .rotation_step_failures_total
                .with_label_values(&[policy.name.as_str(), e.step, e.reason])
                .inc();
            // Check-and-set refused the write: someone else wrote since the
            // records were read. Writing the same again would act on a
            // stale view; the caller reads the records and decides again.
            if e.reason == "store_conflict" {
                return Err(e);
            }
            match policy.retry.on_failure(attempts, e.retryable) {
                OnFailure::Retry(d) if !cancel.is_cancelled() => {
                    let d = jitter(d);
                    warn!(policy = %policy.name, step = e.step, attempt = attempts, error = %e, retry_in_ms = d.as_millis() as u64, "rotation step failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        () = cancel.cancelled() => return Err(e),
                    }
                }
                _ => return Err(e),
            }
        }
    }

    /// Claim is held; create the token and stage it everywhere. Returns the
    /// fresh secret, or the retry time when the attempt failed and was
    /// rolled back.
    async fn begin(
        &self,
        policy: &Policy,
        previous_token_id: Option<String>,
        failures: u32,
        why: &str,
        cancel: &CancellationToken,
    ) -> Result<Began, DriveError> {
        let rotation_id = uuid::Uuid::now_v7().simple().to_string();
        let span =
            tracing::info_span!("rotation", policy = %policy.name, rotation_id = %rotation_id);
        async {
            info!(
                step = "claim",
                reason = why,
                previous_token_id = previous_token_id.as_deref().unwrap_or("-"),
                "rotation started"
            );
            crate::crash::point("before-create");
            let now = self.clock.now();
            let mut journal = Journal {
                rotation_id: rotation_id.clone(),
                state: JournalState::Staged,
                previous_token_id: previous_token_id.clone(),
                new_token_id: String::new(),
                started_at: now,
                updated_at: now,
                revoke_after: None,
                last_error: None,
                failures,
                retry_at: None,
                acknowledged_at: None,
            };
            // A store that will refuse the new token is found before the
            // token exists, not by creating and revoking it.
            for d in &policy.destinations {
                if let Err(e) = d.preflight().await {
                    self.metrics
                        .store_op(d.kind(), crate::stores::StoreOp::Check, false);
                    let e = store_err("preflight", &e);
                    let retry_at = self.fail(policy, journal, e, cancel).await?;
                    return Ok(Began::Failed { retry_at });
                }
            }
            let req = CreateTokenRequest {
                name: policy.token_name(&rotation_id),
                ttl: policy.token_ttl.map(|d| d.as_secs()),
                token_type: policy.token_type,
                description: Some(format!(
                    "rotated by motherduck-rotator, policy {}",
                    policy.name
                )),
            };
            let created = self
                .retrying(policy, cancel, || async {
                    self.client
                        .create_token(&policy.service_account, &req)
                        .await
                        .map_err(|e| api_err("create", &e))
                })
                .await;
            let created = match created {
                Ok(c) => c,
                Err(e) => {
                    // No token was made (or the client revoked the one whose
                    // answer was lost); record the failure and back off.
                    let retry_at = self.fail(policy, journal, e, cancel).await?;
                    return Ok(Began::Failed { retry_at });
                }
            };
            crate::crash::point("after-create");
            info!(step = "create", token_id = %created.info.id, "token created");
            journal.new_token_id = created.info.id.clone();
            let ack_secret = policy
                .hooks
                .iter()
                .any(|h| matches!(h, HookSpec::Ack(_)))
                .then(verify::AckRegistry::generate_secret);
            let all: Vec<usize> = (0..policy.destinations.len()).collect();
            let fresh = (rotation_id.clone(), created.token, ack_secret);
            let meta = meta_of(&created.info, &policy.service_account, &rotation_id);
            if let Err(e) = self
                .stage_record(
                    policy,
                    &journal,
                    &meta,
                    &all,
                    &fresh.1,
                    fresh.2.as_ref(),
                    cancel,
                )
                .await
            {
                // The secret exists only in memory now: the token cannot be
                // kept, so it is revoked and the old one stays current.
                let retry_at = self.fail(policy, journal, e, cancel).await?;
                return Ok(Began::Failed { retry_at });
            }
            crate::crash::point("after-stage");
            Ok(Began::Created(fresh))
        }
        .instrument(span)
        .await
    }

    /// Stages in `dests`, reading the secret back from the stores if this
    /// pass did not create it.
    async fn stage(
        &self,
        policy: &Policy,
        journal: &Journal,
        dests: &[usize],
        secret: &(SecretString, Option<SecretString>),
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let views = self.load_all(policy).await.map_err(|e| StepError {
            step: "stage",
            reason: "store_unavailable",
            retryable: true,
            message: e.to_string(),
        })?;
        let meta = views
            .iter()
            .flat_map(|v| [&v.pending, &v.current])
            .flatten()
            .find(|r| r.meta.rotation_id == journal.rotation_id)
            .map(|r| r.meta.clone())
            .ok_or_else(|| StepError {
                step: "stage",
                reason: "store_corrupt",
                retryable: false,
                message: format!("no record of rotation `{}` to copy", journal.rotation_id),
            })?;
        self.stage_record(
            policy,
            journal,
            &meta,
            dests,
            &secret.0,
            secret.1.as_ref(),
            cancel,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn stage_record(
        &self,
        policy: &Policy,
        journal: &Journal,
        meta: &TokenMeta,
        dests: &[usize],
        token: &SecretString,
        ack: Option<&SecretString>,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let record = NewRecord {
            token: token.clone(),
            meta: meta.clone(),
            journal: Journal {
                state: JournalState::Staged,
                updated_at: self.clock.now(),
                ..journal.clone()
            },
            ack_secret: ack.cloned(),
        };
        for &i in dests {
            let d = &policy.destinations[i];
            self.retrying(policy, cancel, || async {
                let r = d.stage(&record).await;
                self.metrics
                    .store_op(d.kind(), crate::stores::StoreOp::Stage, r.is_ok());
                r.map_err(|e| store_err("stage", &e))
            })
            .await?;
            info!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "stage", destination = %d.label(), "new token staged");
        }
        Ok(())
    }

    async fn promote(
        &self,
        policy: &Policy,
        journal: &Journal,
        dests: &[usize],
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let journal = Journal {
            updated_at: self.clock.now(),
            ..journal.clone()
        };
        for &i in dests {
            let d = &policy.destinations[i];
            self.retrying(policy, cancel, || async {
                let r = d.promote(&journal).await;
                self.metrics
                    .store_op(d.kind(), crate::stores::StoreOp::Promote, r.is_ok());
                r.map_err(|e| store_err("promote", &e))
            })
            .await?;
            info!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "promote", destination = %d.label(), token_id = %journal.new_token_id, "new token is current");
        }
        Ok(())
    }

    async fn write_journal(
        &self,
        policy: &Policy,
        journal: &Journal,
        dests: &[usize],
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        for &i in dests {
            let d = &policy.destinations[i];
            self.retrying(policy, cancel, || async {
                let r = d.set_journal(journal).await;
                self.metrics
                    .store_op(d.kind(), crate::stores::StoreOp::Journal, r.is_ok());
                r.map_err(|e| store_err("journal", &e))
            })
            .await?;
        }
        Ok(())
    }

    /// The new token's secret (and ack secret): from this pass, or read
    /// back from a destination that holds the rotation's record.
    async fn secret_for(
        &self,
        policy: &Policy,
        views: &[DestinationView],
        journal: &Journal,
        fresh: &Option<(String, SecretString, Option<SecretString>)>,
    ) -> Result<(SecretString, Option<SecretString>), DriveError> {
        if let Some((rid, s, a)) = fresh
            && rid == &journal.rotation_id
        {
            return Ok((s.clone(), a.clone()));
        }
        for (i, v) in views.iter().enumerate() {
            let slot = if v
                .current
                .as_ref()
                .is_some_and(|c| c.meta.rotation_id == journal.rotation_id)
            {
                Slot::Current
            } else if v
                .pending
                .as_ref()
                .is_some_and(|p| p.meta.rotation_id == journal.rotation_id)
            {
                Slot::Pending
            } else {
                continue;
            };
            let d = &policy.destinations[i];
            match d.read_secret(slot, &journal.rotation_id).await {
                Ok(Some(s)) => return Ok(s),
                Ok(None) => {}
                Err(e) => {
                    warn!(policy = %policy.name, destination = %d.label(), error = %e, "cannot read the staged secret here")
                }
            }
        }
        Err(DriveError::Inconsistent {
            policy: policy.name.clone(),
            reason: format!(
                "no destination holds the secret of rotation `{}`",
                journal.rotation_id
            ),
        })
    }

    /// Whether the policy takes acknowledgements and none is registered
    /// for this rotation yet.
    fn wants_ack(
        &self,
        policy: &Policy,
        journal: &Journal,
        waiter: &Option<verify::AckWaiter>,
    ) -> bool {
        policy.hooks.iter().any(|h| matches!(h, HookSpec::Ack(_)))
            && waiter
                .as_ref()
                .is_none_or(|w| w.rotation_id() != journal.rotation_id)
    }

    fn register_ack(
        &self,
        journal: &Journal,
        secret: &(SecretString, Option<SecretString>),
    ) -> Option<verify::AckWaiter> {
        secret
            .1
            .as_ref()
            .map(|ack| self.verify.acks.register(journal.rotation_id.clone(), ack))
    }

    /// [`verify`](Self::verify), and meanwhile, when a consumer's
    /// acknowledgement arrives, records it in the journal of every
    /// destination (invariant 11): a restart before the rotation is
    /// recorded verified then counts it instead of waiting for it again.
    async fn verify_recording_ack(
        &self,
        policy: &Policy,
        journal: &Journal,
        token: SecretString,
        waiter: &mut Option<verify::AckWaiter>,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let verification = self.verify(policy, journal, token, cancel);
        tokio::pin!(verification);
        let mut unrecorded = journal.acknowledged_at.is_none();
        loop {
            let Some(w) = waiter.as_mut().filter(|_| unrecorded) else {
                return verification.await;
            };
            tokio::select! {
                r = &mut verification => return r,
                acked = w.acknowledged() => {
                    unrecorded = false;
                    if acked.is_err() {
                        continue;
                    }
                    let now = self.clock.now();
                    let recorded = Journal {
                        acknowledged_at: Some(now),
                        updated_at: now,
                        ..journal.clone()
                    };
                    let all: Vec<usize> = (0..policy.destinations.len()).collect();
                    match self.write_journal(policy, &recorded, &all, cancel).await {
                        Ok(()) => {
                            info!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "verify", "acknowledgement recorded");
                        }
                        Err(e) => {
                            warn!(policy = %policy.name, rotation_id = %journal.rotation_id, error = %e, "could not record the acknowledgement; it still counts in this pass");
                        }
                    }
                }
            }
        }
    }

    async fn verify(
        &self,
        policy: &Policy,
        journal: &Journal,
        token: SecretString,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let started = tokio::time::Instant::now();
        let ctx = VerifyContext {
            policy: policy.name.clone(),
            rotation_id: journal.rotation_id.clone(),
            service_account: policy.service_account.clone(),
            token_id: journal.new_token_id.clone(),
            token,
        };
        info!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "verify", hooks = policy.hooks.len(), "verifying the new token");
        let r = verify::run_all(&policy.hooks, &ctx, &self.verify, cancel).await;
        let outcome = if r.is_ok() { "success" } else { "failure" };
        self.metrics
            .verification_duration_seconds
            .with_label_values(&[policy.name.as_str(), outcome])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.metrics
                .rotation_step_failures_total
                .with_label_values(&[policy.name.as_str(), "verify", e.reason()])
                .inc();
        }
        r.map_err(|e| StepError {
            step: "verify",
            reason: e.reason(),
            retryable: false,
            message: e.to_string(),
        })?;
        info!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "verify", outcome = "success", "new token verified");
        Ok(())
    }

    async fn revoke_old(
        &self,
        policy: &Policy,
        journal: Journal,
        cancel: &CancellationToken,
    ) -> Result<(), DriveError> {
        if let Some(old) = &journal.previous_token_id {
            let r = self
                .retrying(policy, cancel, || async {
                    self.client
                        .revoke_token(&policy.service_account, old)
                        .await
                        .map_err(|e| api_err("revoke_old", &e))
                })
                .await;
            if let Err(e) = r {
                return Err(DriveError::Step {
                    policy: policy.name.clone(),
                    message: e.to_string(),
                });
            }
            info!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "revoke_old", token_id = %old, "old token revoked");
        }
        crate::crash::point("after-revoke-old");
        let done = Journal {
            state: JournalState::Done,
            updated_at: self.clock.now(),
            failures: 0,
            retry_at: None,
            last_error: None,
            ..journal
        };
        for d in &policy.destinations {
            let r = self
                .retrying(policy, cancel, || async {
                    let r = d.finish(&done).await;
                    self.metrics
                        .store_op(d.kind(), crate::stores::StoreOp::Finish, r.is_ok());
                    r.map_err(|e| store_err("finish", &e))
                })
                .await;
            if let Err(e) = r {
                return Err(DriveError::Step {
                    policy: policy.name.clone(),
                    message: e.to_string(),
                });
            }
        }
        info!(policy = %policy.name, rotation_id = %done.rotation_id, step = "done", token_id = %done.new_token_id, "rotation complete");
        Ok(())
    }

    /// A step gave up: record the failure and roll the rotation back.
    /// Returns when the next rotation may start.
    async fn fail(
        &self,
        policy: &Policy,
        journal: Journal,
        error: StepError,
        cancel: &CancellationToken,
    ) -> Result<DateTime<Utc>, DriveError> {
        // A step that failed because the lease ended (or failed while it
        // ended) is not this replica's to undo: the new holder decides.
        if let Err(reason) = fence_check() {
            return Err(self.lease_lost(policy, reason));
        }
        // A check-and-set conflict means the records changed under this
        // pass: nothing is rolled back on a stale view. The pass ends and
        // the next one reads the records and decides again.
        if error.reason == "store_conflict" {
            warn!(policy = %policy.name, rotation_id = %journal.rotation_id, step = error.step, error = %error, "the records changed during the pass; reading them again before anything else");
            return Err(DriveError::Step {
                policy: policy.name.clone(),
                message: format!(
                    "{error}; the records changed during the pass, the next pass decides again"
                ),
            });
        }
        let now = self.clock.now();
        let failures = journal.failures + 1;
        let retry_at = policy.retry.retry_at(now, failures);
        if journal.previous_token_id.is_none() {
            self.unrecorded_failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(
                    policy.name.clone(),
                    UnrecordedFailure {
                        failures,
                        last_error: truncate(
                            &format!(
                                "rotation {} failed at {}: {error}",
                                journal.rotation_id, error.step
                            ),
                            500,
                        ),
                        retry_at,
                    },
                );
        }
        // Invariant 10: once the new token may be current somewhere, the
        // rollback would make the previous token current again; never if
        // that token no longer works (an operator revoked it after a leak,
        // or it expired meanwhile).
        if let Some(old) = journal.previous_token_id.clone()
            && matches!(error.step, "promote" | "verify" | "journal")
        {
            match self.token_alive(policy, &old, cancel).await {
                Ok(true) => {}
                Ok(false) => return self.keep_new(policy, journal, error, &old, cancel).await,
                Err(e) => {
                    self.metrics
                        .rotations_total
                        .with_label_values(&[policy.name.as_str(), "failed"])
                        .inc();
                    let message = format!(
                        "rotation {} failed at {}: {error}; not rolled back, because whether the previous token {old} still works could not be checked ({e}); the next pass decides again",
                        journal.rotation_id, error.step
                    );
                    self.alerts
                        .fire(AlertKind::RotationFailed, &policy.name, message.clone());
                    return Err(DriveError::Step {
                        policy: policy.name.clone(),
                        message,
                    });
                }
            }
        }
        let rolled = Journal {
            state: JournalState::RolledBack,
            updated_at: now,
            last_error: Some(truncate(&error.to_string(), 500)),
            failures,
            retry_at: Some(retry_at),
            ..journal
        };
        warn!(policy = %policy.name, rotation_id = %rolled.rotation_id, step = error.step, error = %error, failures, "rotation failed; rolling back");
        let all: Vec<usize> = (0..policy.destinations.len()).collect();
        // The rotation has failed whether or not its rollback finishes in
        // this pass, so it is counted and reported now: a rollback cut
        // short is finished by a later pass, which counts nothing.
        let rolled_back = self.roll_back(policy, &rolled, &all, cancel).await;
        let outcome = if error.step == "verify" {
            "rolled_back"
        } else {
            "failed"
        };
        self.metrics
            .rotations_total
            .with_label_values(&[policy.name.as_str(), outcome])
            .inc();
        let summary = format!(
            "rotation {} failed at {}: {}",
            rolled.rotation_id, error.step, error
        );
        self.alerts
            .fire(AlertKind::RotationFailed, &policy.name, summary.clone());
        if error.step == "verify" {
            self.alerts
                .fire(AlertKind::RollbackHappened, &policy.name, summary);
        }
        rolled_back?;
        Ok(retry_at)
    }

    /// Whether token `id` of the policy's service account still works: it
    /// is listed (MotherDuck lists live tokens only) and not expired.
    async fn token_alive(
        &self,
        policy: &Policy,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<bool, StepError> {
        let tokens = self
            .retrying(policy, cancel, || async {
                self.client
                    .list_tokens(&policy.service_account)
                    .await
                    .map_err(|e| api_err("check_previous", &e))
            })
            .await?;
        let now = self.clock.now();
        Ok(tokens
            .iter()
            .any(|t| t.id == id && t.expire_at.is_none_or(|e| e > now)))
    }

    /// A rotation failed after its new token may have become current, and
    /// the previous token no longer works: restoring it would hand every
    /// consumer a dead token. The new token stays. After a failed
    /// verification the rotation is recorded as verified with no overlap
    /// (the dead token is "revoked" next, a 404 that counts as done); after
    /// a failed promotion or journal write it stays as it is and the next
    /// pass carries it forward. Either way it is counted as failed and
    /// alerted on.
    async fn keep_new(
        &self,
        policy: &Policy,
        journal: Journal,
        error: StepError,
        old: &str,
        cancel: &CancellationToken,
    ) -> Result<DateTime<Utc>, DriveError> {
        let now = self.clock.now();
        let summary = format!(
            "rotation {} failed at {}: {error}; the previous token {old} is revoked or expired, so the new token {} stays current",
            journal.rotation_id, error.step, journal.new_token_id
        );
        tracing::error!(policy = %policy.name, rotation_id = %journal.rotation_id, step = error.step, error = %error, previous_token_id = %old, "rotation failed, but the previous token no longer works; keeping the new token current");
        self.metrics
            .rotations_total
            .with_label_values(&[policy.name.as_str(), "failed"])
            .inc();
        self.alerts
            .fire(AlertKind::RotationFailed, &policy.name, summary.clone());
        if error.step != "verify" {
            return Err(DriveError::Step {
                policy: policy.name.clone(),
                message: summary,
            });
        }
        let kept = Journal {
            state: JournalState::Verified,
            updated_at: now,
            revoke_after: Some(now),
            last_error: Some(truncate(&summary, 500)),
            ..journal
        };
        let all: Vec<usize> = (0..policy.destinations.len()).collect();
        if let Err(e) = self.write_journal(policy, &kept, &all, cancel).await {
            return Err(DriveError::Step {
                policy: policy.name.clone(),
                message: format!("{summary}; recording that failed: {e}"),
            });
        }
        Ok(now)
    }

    /// Restores the old token in `dests`, then revokes the new one.
    async fn roll_back(
        &self,
        policy: &Policy,
        journal: &Journal,
        dests: &[usize],
        cancel: &CancellationToken,
    ) -> Result<(), DriveError> {
        for &i in dests {
            let d = &policy.destinations[i];
            let r = self
                .retrying(policy, cancel, || async {
                    let r = d.rollback(journal).await;
                    self.metrics
                        .store_op(d.kind(), crate::stores::StoreOp::Rollback, r.is_ok());
                    r.map_err(|e| store_err("rollback", &e))
                })
                .await;
            if let Err(e) = r {
                self.revoke_if_unreferenced(policy, journal, cancel).await;
                return Err(DriveError::Step {
                    policy: policy.name.clone(),
                    message: format!("rollback incomplete, it resumes on the next pass: {e}"),
                });
            }
        }
        crate::crash::point("after-restore");
        if !journal.new_token_id.is_empty() {
            let r = self
                .retrying(policy, cancel, || async {
                    self.client
                        .revoke_token(&policy.service_account, &journal.new_token_id)
                        .await
                        .map_err(|e| api_err("revoke_new", &e))
                })
                .await;
            if let Err(e) = r {
                // The orphan sweep revokes it later: no record references it.
                warn!(policy = %policy.name, rotation_id = %journal.rotation_id, error = %e, "failed to revoke the new token after rollback; the orphan sweep will");
            }
        }
        self.metrics
            .rollbacks_total
            .with_label_values(&[policy.name.as_str()])
            .inc();
        warn!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "rollback", new_token_id = %journal.new_token_id, reason = journal.last_error.as_deref().unwrap_or("-"), "rotation rolled back; the old token is current");
        Ok(())
    }

    /// After a rollback could not finish: revokes the new token anyway if
    /// no destination holds it, current, pending or previous. Then no pass
    /// can resume with it and its secret is lost, so it must not stay live
    /// (invariant 2) until the orphan sweep finds it. When the stores
    /// cannot even be read, nothing is revoked: the token may be current.
    async fn revoke_if_unreferenced(
        &self,
        policy: &Policy,
        journal: &Journal,
        cancel: &CancellationToken,
    ) {
        let new = journal.new_token_id.as_str();
        if new.is_empty() {
            return;
        }
        let Ok(views) = self.load_all(policy).await else {
            return;
        };
        if views
            .iter()
            .flat_map(DestinationView::token_ids)
            .any(|id| id == new)
        {
            return;
        }
        let r = self
            .retrying(policy, cancel, || async {
                self.client
                    .revoke_token(&policy.service_account, new)
                    .await
                    .map_err(|e| api_err("revoke_new", &e))
            })
            .await;
        match r {
            Ok(_) => {
                warn!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "rollback", new_token_id = %new, "the rollback is incomplete, but no destination holds the new token; revoked it")
            }
            Err(e) => {
                warn!(policy = %policy.name, rotation_id = %journal.rotation_id, error = %e, "failed to revoke the new token after an incomplete rollback; the orphan sweep will")
            }
        }
    }

    /// Unreferenced tokens of the policy: those old enough to be orphans,
    /// and when the youngest spared one comes of age.
    async fn sweep_candidates(&self, policy: &Policy) -> Result<Swept, DriveError> {
        let views = self.load_all(policy).await?;
        let referenced: std::collections::HashSet<&str> =
            views.iter().flat_map(DestinationView::token_ids).collect();
        let tokens = self
            .client
            .list_tokens(&policy.service_account)
            .await
            .map_err(|e| DriveError::Step {
                policy: policy.name.clone(),
                message: e.to_string(),
            })?;
        let now = self.clock.now();
        let margin = chrono::Duration::from_std(self.orphan_min_age).unwrap_or_default();
        let (orphans, young): (Vec<TokenInfo>, Vec<TokenInfo>) = tokens
            .into_iter()
            .filter(|t| {
                t.name
                    .as_deref()
                    .is_some_and(|n| policy.rotation_id_of(n).is_some())
            })
            .filter(|t| !referenced.contains(t.id.as_str()))
            .partition(|t| t.created_ts + margin <= now);
        let recheck_at = young.iter().map(|t| t.created_ts + margin).min();
        Ok(Swept {
            orphans,
            recheck_at,
        })
    }

    /// Finds tokens this daemon named for `policy` that no record
    /// references and that are older than the safety margin; revokes them
    /// unless `dry_run`. Judged under the policy's lock, so no rotation of
    /// another replica is between create and stage meanwhile; the lock is
    /// taken only when a first look without it finds candidates, because
    /// on AWS every acquisition writes a version of the lock secret, and
    /// hourly sweeps by many replicas would approach the versions quota.
    ///
    /// # Errors
    /// Store or MotherDuck failures. `Ok(None)`: the lock is busy.
    pub async fn sweep(&self, policy: &Policy, dry_run: bool) -> Result<Option<Swept>, DriveError> {
        let first = self.sweep_candidates(policy).await?;
        // Temporary files a killed write left behind are removed under the
        // lock too (a writer holding it may be using them).
        let mut leftovers = 0;
        for d in &policy.destinations {
            leftovers += d
                .leftovers(false)
                .await
                .map_err(|source| DriveError::Store {
                    policy: policy.name.clone(),
                    source,
                })?;
        }
        let _lease = if first.orphans.is_empty() && (leftovers == 0 || dry_run) {
            None
        } else {
            let lease = policy
                .lock
                .try_lock(&self.instance_id)
                .await
                .map_err(|source| DriveError::Store {
                    policy: policy.name.clone(),
                    source,
                })?;
            let Some(lease) = lease else { return Ok(None) };
            Some(lease)
        };
        if leftovers > 0 && !dry_run {
            self.remove_leftovers(policy).await;
        }
        // Under the lock, judged again: a rotation may have stored one of
        // them since.
        let Swept {
            orphans,
            recheck_at,
        } = if first.orphans.is_empty() {
            first
        } else {
            self.sweep_candidates(policy).await?
        };
        if orphans.is_empty() {
            self.alerts.resolve(AlertKind::OrphanFound, &policy.name);
        } else {
            self.alerts.fire(
                AlertKind::OrphanFound,
                &policy.name,
                format!(
                    "{} token(s) created by the rotator are referenced by no record{}",
                    orphans.len(),
                    if dry_run {
                        " (dry run: not revoked)"
                    } else {
                        "; revoking them"
                    }
                ),
            );
        }
        for t in &orphans {
            if let Some(Err(reason)) = _lease.as_ref().map(|l| l.fence().check()) {
                return Err(self.lease_lost(policy, reason));
            }
            self.metrics
                .orphans_found_total
                .with_label_values(&[policy.name.as_str()])
                .inc();
            if dry_run {
                info!(policy = %policy.name, token_id = %t.id, token_name = t.name.as_deref().unwrap_or(""), "orphaned token (dry run, not revoked)");
                continue;
            }
            self.client
                .revoke_token(&policy.service_account, &t.id)
                .await
                .map_err(|e| DriveError::Step {
                    policy: policy.name.clone(),
                    message: e.to_string(),
                })?;
            self.metrics
                .orphans_revoked_total
                .with_label_values(&[policy.name.as_str()])
                .inc();
            warn!(policy = %policy.name, token_id = %t.id, token_name = t.name.as_deref().unwrap_or(""), "orphaned token revoked");
        }
        Ok(Some(Swept {
            orphans,
            recheck_at,
        }))
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
