//! One reconcile pass: read, decide, take the lock, run steps until the
//! policy has to wait.

use super::*;

impl Driver {
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
        // Boxed: the pass's state is large, and on the caller's stack it
        // would be copied at every layer that awaits it.
        let r = Box::pin(self.reconcile_once(policy, force, cancel)).await;
        self.count_pass(policy, &r);
        r
    }

    /// Accounts for a pass that failed before a rotation could begin (the
    /// records unreadable, the lock unavailable): counted as a failure of
    /// step `read`, and once `failed_passes_before_alert` passes in a row
    /// have failed, reported like a failed rotation (the RotationFailed
    /// alert and `consecutive_failures`) until a pass gets through.
    fn count_pass(&self, policy: &Policy, r: &Result<Tick, DriveError>) {
        let p = policy.name.as_str();
        let mut map = self
            .failed_passes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match r {
            Err(DriveError::Store { source, .. }) => {
                let e = store_err("read", source);
                self.metrics.step_failed(e.step, e.reason);
                let n = map.entry(p.to_owned()).or_insert(0);
                *n += 1;
                if *n >= self.failed_passes_before_alert {
                    warn!(policy = %p, failed_passes = *n, error = %source, "the policy's records could not be read or locked for several passes in a row");
                    self.alerts.fire(
                        AlertKind::RotationFailed,
                        p,
                        format!("{n} passes in a row could not read or lock the policy's records: {source}"),
                    );
                    self.metrics
                        .consecutive_failures
                        .with_label_values(&[p])
                        .set(i64::from(*n));
                }
            }
            // The pass got through to the records: whatever the rotation
            // itself did is reported by the rotation.
            Ok(_) | Err(_) => {
                if map
                    .remove(p)
                    .is_some_and(|n| n >= self.failed_passes_before_alert)
                    && self
                        .metrics
                        .consecutive_failures
                        .with_label_values(&[p])
                        .get()
                        == 0
                {
                    self.alerts.resolve(AlertKind::RotationFailed, p);
                }
            }
        }
    }

    async fn reconcile_once(
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
            // Unless a rollback's consumers are still to be told, which
            // takes the lock.
            Step::Wait { until, why } if self.rollback_reload_pending(policy, &views).is_none() => {
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
        let Some(lease) = self.try_lock(policy).await? else {
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

    /// The steps under the lock.
    pub(super) async fn locked(
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
            // A rollback finished in the stores whose consumers were not
            // told yet (the process stopped in between): tell them before
            // anything else, while the rolled-back token may still live.
            if matches!(step, Step::Wait { .. } | Step::Begin { .. })
                && let Some(rolled) = self.rollback_reload_pending(policy, &views).cloned()
            {
                record_rotation_id(span, &mut recorded, &rolled.rotation_id);
                warn!(policy = %policy.name, rotation_id = %rolled.rotation_id, step = "reload", "a rollback's consumers were not told yet; telling them");
                if let Err(e) = self.reload_after_rollback(policy, &rolled, cancel).await {
                    if cancel.is_cancelled() {
                        return Ok(Tick::Stopped);
                    }
                    return Err(step_failed(policy, &e));
                }
                continue;
            }
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
                Step::Verify { mut journal } => {
                    let secret = self.secret_for(policy, &views, &journal, &fresh).await?;
                    if self.wants_ack(policy, &journal, &ack_waiter) {
                        ack_waiter = self.register_ack(&journal, &secret);
                    }
                    // Consumers are told before they are tested (invariant
                    // 11), once: the journal says whether they were, also
                    // across a restart. An acknowledgement says they have
                    // the token already.
                    if !policy.reload.is_empty()
                        && journal.reloaded_at.is_none()
                        && journal.acknowledged_at.is_none()
                    {
                        crate::crash::point("before-reload");
                        let told = self
                            .reload_consumers(
                                policy,
                                &journal.rotation_id,
                                &journal.new_token_id,
                                Some(secret.0.clone()),
                                crate::reload::ReloadCause::Promoted,
                                cancel,
                            )
                            .await;
                        match told {
                            Ok(note) => {
                                match self.record_reloaded(policy, &journal, note, cancel).await {
                                    Ok(recorded) => journal = recorded,
                                    Err(e) => {
                                        warn!(policy = %policy.name, rotation_id = %journal.rotation_id, error = %e, "could not record that consumers were told; a restart before verification tells them again");
                                    }
                                }
                                crate::crash::point("after-reload");
                            }
                            Err(_) if cancel.is_cancelled() => {
                                if let Err(reason) = fence_check() {
                                    return Err(self.lease_lost(policy, reason));
                                }
                                info!(policy = %policy.name, rotation_id = %journal.rotation_id, "reload interrupted by shutdown; it runs again on restart");
                                return Ok(Tick::Stopped);
                            }
                            Err(e) => {
                                drop(ack_waiter.take());
                                backoff_until = Some(self.fail(policy, journal, e, cancel).await?);
                                continue;
                            }
                        }
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

    pub(super) fn record_success(&self, policy: &Policy, started: Option<tokio::time::Instant>) {
        let p = policy.name.as_str();
        self.alerts.resolve(AlertKind::RotationFailed, p);
        self.alerts.resolve(AlertKind::RollbackHappened, p);
        self.metrics.rotation_finished(p, "success", 0);
        self.metrics
            .last_success_timestamp_seconds
            .with_label_values(&[p])
            .set(self.clock.now().timestamp() as f64);
        if let Some(s) = started {
            self.metrics
                .rotation_duration_seconds
                .observe(s.elapsed().as_secs_f64());
        }
    }

    /// Takes the policy's lock for this instance; `None` when another
    /// holds it.
    pub(super) async fn try_lock(
        &self,
        policy: &Policy,
    ) -> Result<Option<crate::stores::Lease>, DriveError> {
        let started = tokio::time::Instant::now();
        let r = policy.lock.try_lock(&self.instance_id).await;
        self.store_call(
            &policy.lock,
            crate::stores::StoreOp::Lock,
            started,
            r.as_ref().err(),
        );
        r.map_err(|source| DriveError::Store {
            policy: policy.name.clone(),
            source,
        })
    }

    /// Runs the store call `f` on `d` under the policy's retry settings,
    /// counting each attempt in the store metrics as `op`; `Err` (for the
    /// step named as `op`) once it gives up.
    pub(super) async fn store_retrying<F, Fut>(
        &self,
        policy: &Policy,
        cancel: &CancellationToken,
        d: &crate::stores::Destination,
        op: crate::stores::StoreOp,
        f: F,
    ) -> Result<(), StepError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        self.retrying(policy, cancel, || async {
            let started = tokio::time::Instant::now();
            let r = f().await;
            self.store_call(d, op, started, r.as_ref().err());
            r.map_err(|e| store_err(op.as_str(), &e))
        })
        .await
    }

    /// Runs `f` under the policy's retry settings; `Err` once it gives up.
    pub(super) async fn retrying<T, F, Fut>(
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
            self.metrics.step_failed(e.step, e.reason);
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
}
