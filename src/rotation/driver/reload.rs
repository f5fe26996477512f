//! Telling consumers: the policy's reload actions, run after the new token
//! is current everywhere and before verification, and after a rollback
//! restored the previous token (invariant 11). Whether they ran is kept in
//! the journal (`reloaded_at`), so a restart between promotion and
//! verification reloads consumers before it verifies, and one after the
//! reload does not restart them again.

use super::*;
use crate::reload::{OnActionFailure, ReloadCause, ReloadContext};

impl Driver {
    /// Runs the policy's reload actions in order for the token `token_id`
    /// (its secret read only when an action passes it on). Returns a note
    /// on the actions that failed but were allowed to (`on_failure =
    /// "continue"`).
    ///
    /// # Errors
    /// The first failed action whose policy is to fail the rotation (step
    /// `reload`), or a shutdown or lost lease while waiting for a run.
    pub(super) async fn reload_consumers(
        &self,
        policy: &Policy,
        rotation_id: &str,
        token_id: &str,
        token: Option<SecretString>,
        cause: ReloadCause,
        cancel: &CancellationToken,
    ) -> Result<Option<String>, StepError> {
        let ctx = ReloadContext {
            policy: policy.name.clone(),
            rotation_id: rotation_id.to_owned(),
            service_account: policy.service_account.clone(),
            token_id: token_id.to_owned(),
            token,
            cause,
            now: self.clock.now(),
        };
        let mut notes = Vec::new();
        for spec in &policy.reload {
            let label = spec.action.label();
            let kind = spec.action.kind();
            info!(policy = %policy.name, rotation_id, step = "reload", cause = cause.as_str(), action = kind, target = %label, "telling consumers");
            let requested = tokio::select! {
                r = self.reloads.request(spec, ctx.clone()) => r,
                () = cancel.cancelled() => {
                    return Err(StepError {
                        step: "reload",
                        reason: "cancelled",
                        retryable: false,
                        message: "interrupted before the reload actions finished".to_owned(),
                    });
                }
            };
            match requested.result {
                Ok(()) => {
                    info!(policy = %policy.name, rotation_id, step = "reload", cause = cause.as_str(), action = kind, target = %label, joined = requested.joined, outcome = "success", "consumers told");
                }
                Err(e) => {
                    self.metrics.step_failed("reload", e.reason);
                    if spec.on_failure == OnActionFailure::Continue
                        || cause == ReloadCause::RolledBack
                    {
                        warn!(policy = %policy.name, rotation_id, step = "reload", cause = cause.as_str(), action = kind, target = %label, error = %e, on_failure = spec.on_failure.as_str(), outcome = "failure", "reload action failed; carrying on");
                        notes.push(format!("{kind} action failed: {e}"));
                        continue;
                    }
                    warn!(policy = %policy.name, rotation_id, step = "reload", cause = cause.as_str(), action = kind, target = %label, error = %e, outcome = "failure", "reload action failed");
                    return Err(StepError {
                        step: "reload",
                        reason: e.reason,
                        retryable: false,
                        message: format!("{kind} action failed: {e}"),
                    });
                }
            }
        }
        Ok((!notes.is_empty()).then(|| truncate(&notes.join("; "), 480)))
    }

    /// Records in every destination that the reload of `journal`'s
    /// rotation (after promotion, or after its rollback) is done.
    ///
    /// # Errors
    /// A journal write failed.
    pub(super) async fn record_reloaded(
        &self,
        policy: &Policy,
        journal: &Journal,
        note: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<Journal, StepError> {
        let now = self.clock.now();
        let recorded = Journal {
            reloaded_at: Some(now),
            reload_note: note,
            updated_at: now,
            ..journal.clone()
        };
        let all: Vec<usize> = (0..policy.destinations.len()).collect();
        self.write_journal(policy, &recorded, &all, cancel).await?;
        Ok(recorded)
    }

    /// Whether consumers must still be told that a rollback restored the
    /// previous token: the policy has actions, the rollback is recorded
    /// and finished, and its reload is not.
    pub(super) fn rollback_reload_pending<'a>(
        &self,
        policy: &Policy,
        views: &'a [DestinationView],
    ) -> Option<&'a Journal> {
        if policy.reload.is_empty() {
            return None;
        }
        plan::last_journal(views).filter(|j| {
            j.state == JournalState::RolledBack
                && j.reloaded_at.is_none()
                && j.previous_token_id.is_some()
        })
    }

    /// The secret of the token now current, for actions that pass it on
    /// after a rollback: read from the first destination whose current
    /// record holds token `token_id`.
    pub(super) async fn current_secret(
        &self,
        policy: &Policy,
        token_id: &str,
    ) -> Option<SecretString> {
        let views = self.load_all(policy).await.ok()?;
        for (i, v) in views.iter().enumerate() {
            let Some(c) = v.current.as_ref().filter(|c| c.meta.token_id == token_id) else {
                continue;
            };
            if let Ok(Some((s, _))) = policy.destinations[i]
                .read_secret(Slot::Current, &c.meta.rotation_id)
                .await
            {
                return Some(s);
            }
        }
        None
    }

    /// Tells consumers that the rollback of `journal`'s rotation made the
    /// previous token current again, and records it. Failures are logged
    /// and counted: the previous token is current either way.
    pub(super) async fn reload_after_rollback(
        &self,
        policy: &Policy,
        journal: &Journal,
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        let Some(old) = journal.previous_token_id.as_deref() else {
            return Ok(());
        };
        let token = if policy.reload.iter().any(|r| r.action.needs_token()) {
            self.current_secret(policy, old).await
        } else {
            None
        };
        let note = self
            .reload_consumers(
                policy,
                &journal.rotation_id,
                old,
                token,
                ReloadCause::RolledBack,
                cancel,
            )
            .await?;
        self.record_reloaded(policy, journal, note, cancel).await?;
        Ok(())
    }
}
