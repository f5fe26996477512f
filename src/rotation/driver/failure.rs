//! What a failed step leads to: retry, keep the new token when the old one
//! is dead, or roll back; and revoking tokens no record references.

use super::*;

impl Driver {
    /// A step gave up: record the failure and roll the rotation back.
    /// Returns when the next rotation may start.
    pub(super) async fn fail(
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
            && matches!(error.step, "promote" | "reload" | "verify" | "journal")
        {
            match self.token_alive(policy, &old, cancel).await {
                Ok(true) => {}
                Ok(false) => return self.keep_new(policy, journal, error, &old, cancel).await,
                Err(e) => {
                    self.metrics
                        .rotation_finished(&policy.name, "failed", failures);
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
        // `reloaded_at` now stands for telling consumers that the old
        // token is back, which is still to do.
        let rolled = Journal {
            state: JournalState::RolledBack,
            updated_at: now,
            last_error: Some(truncate(&error.to_string(), 500)),
            failures,
            retry_at: Some(retry_at),
            reloaded_at: None,
            reload_note: None,
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
            .rotation_finished(&policy.name, outcome, failures);
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
    pub(super) async fn token_alive(
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
    pub(super) async fn keep_new(
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
            .rotation_finished(&policy.name, "failed", journal.failures + 1);
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
    pub(super) async fn roll_back(
        &self,
        policy: &Policy,
        journal: &Journal,
        dests: &[usize],
        cancel: &CancellationToken,
    ) -> Result<(), DriveError> {
        for &i in dests {
            let d = &policy.destinations[i];
            let r = self
                .store_retrying(policy, cancel, d, crate::stores::StoreOp::Rollback, || {
                    d.rollback(journal)
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
        // Consumers told of the new token are told it is gone before it is
        // revoked. A restart before this is recorded tells them then.
        if !policy.reload.is_empty()
            && journal.reloaded_at.is_none()
            && let Err(e) = self.reload_after_rollback(policy, journal, cancel).await
        {
            warn!(policy = %policy.name, rotation_id = %journal.rotation_id, error = %e, "could not tell consumers that the previous token is current again; the next pass tries again");
        }
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
        self.metrics.rollbacks_total.inc();
        warn!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "rollback", new_token_id = %journal.new_token_id, reason = journal.last_error.as_deref().unwrap_or("-"), "rotation rolled back; the old token is current");
        Ok(())
    }

    /// After a rollback could not finish: revokes the new token anyway if
    /// no destination holds it, current, pending or previous. Then no pass
    /// can resume with it and its secret is lost, so it must not stay live
    /// (invariant 2) until the orphan sweep finds it. When the stores
    /// cannot even be read, nothing is revoked: the token may be current.
    pub(super) async fn revoke_if_unreferenced(
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
}
