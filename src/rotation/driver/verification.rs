//! Verification of a new token by the policy's hooks (acknowledgements
//! included), and revocation of the old one after the overlap.

use super::*;

impl Driver {
    /// Whether the policy takes acknowledgements and none is registered
    /// for this rotation yet.
    pub(super) fn wants_ack(
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

    pub(super) fn register_ack(
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
    pub(super) async fn verify_recording_ack(
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

    pub(super) async fn verify(
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
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.metrics.step_failed("verify", e.reason());
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

    pub(super) async fn revoke_old(
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
                .store_retrying(policy, cancel, d, crate::stores::StoreOp::Finish, || {
                    d.finish(&done)
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
}
