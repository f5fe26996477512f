//! The orphan sweep: tokens the rotator created that no record references.

use super::*;

impl Driver {
    /// Unreferenced tokens of the policy: those old enough to be orphans,
    /// and when the youngest spared one comes of age.
    pub(super) async fn sweep_candidates(&self, policy: &Policy) -> Result<Swept, DriveError> {
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
            let Some(lease) = self.try_lock(policy).await? else {
                return Ok(None);
            };
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
            self.metrics.orphans_found_total.inc();
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
            self.metrics.orphans_revoked_total.inc();
            warn!(policy = %policy.name, token_id = %t.id, token_name = t.name.as_deref().unwrap_or(""), "orphaned token revoked");
        }
        Ok(Some(Swept {
            orphans,
            recheck_at,
        }))
    }
}
