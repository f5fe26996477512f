//! The forward steps of a rotation: create the token, stage it, promote it,
//! and journal each move.

use super::*;

impl Driver {
    /// Claim is held; create the token and stage it everywhere. Returns the
    /// fresh secret, or the retry time when the attempt failed and was
    /// rolled back.
    pub(super) async fn begin(
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
                reloaded_at: None,
                reload_note: None,
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
    pub(super) async fn stage(
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
    pub(super) async fn stage_record(
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
            self.store_retrying(policy, cancel, d, crate::stores::StoreOp::Stage, || {
                d.stage(&record)
            })
            .await?;
            info!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "stage", destination = %d.label(), "new token staged");
        }
        Ok(())
    }

    pub(super) async fn promote(
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
            self.store_retrying(policy, cancel, d, crate::stores::StoreOp::Promote, || {
                d.promote(&journal)
            })
            .await?;
            info!(policy = %policy.name, rotation_id = %journal.rotation_id, step = "promote", destination = %d.label(), token_id = %journal.new_token_id, "new token is current");
        }
        Ok(())
    }

    pub(super) async fn write_journal(
        &self,
        policy: &Policy,
        journal: &Journal,
        dests: &[usize],
        cancel: &CancellationToken,
    ) -> Result<(), StepError> {
        for &i in dests {
            let d = &policy.destinations[i];
            self.store_retrying(policy, cancel, d, crate::stores::StoreOp::Journal, || {
                d.set_journal(journal)
            })
            .await?;
        }
        Ok(())
    }

    /// The new token's secret (and ack secret): from this pass, or read
    /// back from a destination that holds the rotation's record.
    pub(super) async fn secret_for(
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
}
