//! The rotation steps on a Secrets Manager destination: load, read a
//! secret, stage, promote, set the journal, roll back, finish, and the
//! readiness checks.

use tracing::debug;

use crate::secret::{ExposeSecret, SecretString};
use crate::stores::record::StoredRecord;
use crate::stores::{
    DestinationView, Journal, NewRecord, Slot, StoreError, StoreErrorKind, StoreOp,
};

use super::destination::AwsDestination;
use super::labels::Labels;
use super::record::version_id_for;
use super::{CURRENT, PENDING, PREVIOUS};

impl AwsDestination {
    /// Reads all records, without secrets.
    ///
    /// # Errors
    /// Unreachable service, access denied, a record that does not parse,
    /// or an absent secret without `create_if_missing`.
    pub async fn load(&self) -> Result<DestinationView, StoreError> {
        match self.snapshot(StoreOp::Load).await? {
            Some(v) => Ok(v),
            None if self.create_if_missing => Ok(DestinationView::default()),
            None => Err(self.not_found(StoreOp::Load)),
        }
    }

    /// The secret (and acknowledgement secret) of the current or pending
    /// version, if it belongs to `rotation_id`.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub async fn read_secret(
        &self,
        slot: Slot,
        rotation_id: &str,
    ) -> Result<Option<(SecretString, Option<SecretString>)>, StoreError> {
        let op = StoreOp::ReadSecret;
        let Some(labels) = self.describe(op).await? else {
            return Ok(None);
        };
        let version = match slot {
            Slot::Current => labels.current,
            Slot::Pending => labels.pending,
        };
        let Some(version) = version else {
            return Ok(None);
        };
        Ok(self
            .read_record(op, &version)
            .await?
            .filter(|r| r.rotation_id == rotation_id)
            .map(|r| (r.token, r.ack_secret)))
    }

    /// Writes the record as a new version labelled `AWSPENDING`, whose id is
    /// derived from the rotation id: a repeat finds that version and
    /// changes nothing. Creates the secret first when it is absent and
    /// `create_if_missing` is set.
    ///
    /// When the secret has no version yet, AWS also labels this first
    /// version `AWSCURRENT`; it is still reported as staged (not current)
    /// until `promote`.
    ///
    /// # Errors
    /// Service failures; `Conflict` when the rotation's version holds a
    /// different token.
    pub async fn stage(&self, record: &NewRecord) -> Result<(), StoreError> {
        let op = StoreOp::Stage;
        let vid = version_id_for(&record.meta.rotation_id);
        let labels = match self.describe(op).await? {
            Some(l) => l,
            None if self.create_if_missing => {
                let description = format!(
                    "MotherDuck token of service account {}, rotated by motherduck-rotator; consumers read `.token`",
                    record.meta.service_account
                );
                self.create_secret(op, &self.secret_name, description, None)
                    .await?;
                Labels::default()
            }
            None => return Err(self.not_found(op)),
        };
        if labels.ids().any(|v| v == vid) {
            // A repeat: the version exists.
            self.same_record_or_conflict(op, &vid, record).await?;
            return self.ensure_staged(op, &labels, &vid).await;
        }
        let body = StoredRecord::json(record);
        if self
            .put_value(op, &self.secret_name, &body, &vid, PENDING)
            .await?
        {
            debug!(destination = %self.label(), version_id = %vid, "record staged");
            return Ok(());
        }
        // The version exists but is not labelled (AWS lists only labelled
        // versions): compare, then label it.
        self.same_record_or_conflict(op, &vid, record).await?;
        let labels = self.describe_existing(op).await?;
        self.ensure_staged(op, &labels, &vid).await
    }

    async fn same_record_or_conflict(
        &self,
        op: StoreOp,
        vid: &str,
        record: &NewRecord,
    ) -> Result<(), StoreError> {
        let existing = self.read_record(op, vid).await?;
        let same = existing.as_ref().is_some_and(|e| {
            e.rotation_id == record.meta.rotation_id
                && e.token_id == record.meta.token_id
                && e.token.expose_secret() == record.token.expose_secret()
        });
        if same {
            return Ok(());
        }
        Err(self.err(
            op,
            StoreErrorKind::Conflict,
            format!(
                "version `{vid}` of secret `{}` already holds a different record for rotation `{}`",
                self.secret_name, record.meta.rotation_id
            ),
        ))
    }

    /// Labels `vid` `AWSPENDING` unless it is pending or current already.
    async fn ensure_staged(
        &self,
        op: StoreOp,
        labels: &Labels,
        vid: &str,
    ) -> Result<(), StoreError> {
        if labels.is(CURRENT, vid) || labels.is(PENDING, vid) {
            return Ok(());
        }
        self.relabel(op, PENDING, labels.pending.as_deref(), Some(vid))
            .await
    }

    /// Moves `AWSCURRENT` to the rotation's version (AWS moves
    /// `AWSPREVIOUS` to the replaced one), records `journal` for it, then
    /// removes `AWSPENDING` from it. The destination counts as promoted only
    /// when all three are done; a repeat finishes whichever had not
    /// happened.
    ///
    /// # Errors
    /// Service failures; `Corrupt` when the rotation is neither staged nor
    /// current.
    pub async fn promote(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Promote;
        let rid = &journal.rotation_id;
        let vid = version_id_for(rid);
        let labels = self.describe_existing(op).await?;
        let known = self.read_journal(op).await?;
        if !labels.is(CURRENT, &vid) {
            if !labels.is(PENDING, &vid) {
                return Err(self.err(
                    op,
                    StoreErrorKind::Corrupt,
                    format!("no staged record for rotation `{rid}`"),
                ));
            }
            self.relabel(op, CURRENT, labels.current.as_deref(), Some(&vid))
                .await?;
        }
        if known.as_ref().is_none_or(|k| k.version_id != vid) {
            self.write_journal(op, &vid, journal, known.as_ref())
                .await?;
        }
        // Last, so that until it is gone the promotion reads as unfinished
        // (see `interpret`) and is repeated.
        if labels.is(PENDING, &vid) {
            self.relabel(op, PENDING, Some(&vid), None).await?;
        }
        Ok(())
    }

    /// Records `journal` for the current version; what consumers read does
    /// not change.
    ///
    /// # Errors
    /// Service failures; `Corrupt` when there is no current version.
    pub async fn set_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Journal;
        let labels = self.describe_existing(op).await?;
        let Some(current) = labels.current else {
            return Err(self.err(op, StoreErrorKind::Corrupt, "no current version".into()));
        };
        let known = self.read_journal(op).await?;
        self.write_journal(op, &current, journal, known.as_ref())
            .await
    }

    /// Undoes `journal.rotation_id`: moves `AWSCURRENT` back to the previous
    /// version if the new one was promoted, removes the new version's
    /// labels, and records `journal` for the restored version.
    ///
    /// The journal is written first: until `AWSCURRENT` moves back (the
    /// commit point), the destination reads as the rotation still under
    /// way, exactly as a file destination does until its rename. When the
    /// new token is the destination's first, nothing older can be restored:
    /// the new version stays `AWSCURRENT` for lack of another (AWS always
    /// keeps one) and is reported as no current record.
    ///
    /// # Errors
    /// Service failures.
    pub async fn rollback(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Rollback;
        let vid = version_id_for(&journal.rotation_id);
        let Some(labels) = self.describe(op).await? else {
            return Ok(());
        };
        let known = self.read_journal(op).await?;
        let restore = labels.previous.clone().filter(|p| *p != vid);
        match (labels.is(CURRENT, &vid), restore) {
            (true, Some(prev)) => {
                self.write_journal(op, &prev, journal, known.as_ref())
                    .await?;
                if labels.is(PENDING, &vid) {
                    self.relabel(op, PENDING, Some(&vid), None).await?;
                }
                self.relabel(op, CURRENT, Some(&vid), Some(&prev)).await?;
                // AWS labelled the undone version AWSPREVIOUS; its token is
                // about to be revoked.
                self.relabel(op, PREVIOUS, Some(&vid), None).await?;
            }
            (true, None) => {
                self.write_journal(op, &vid, journal, known.as_ref())
                    .await?;
                if labels.is(PENDING, &vid) {
                    self.relabel(op, PENDING, Some(&vid), None).await?;
                }
            }
            (false, _) => {
                if let Some(current) = &labels.current {
                    self.write_journal(op, current, journal, known.as_ref())
                        .await?;
                }
                if labels.is(PENDING, &vid) {
                    self.relabel(op, PENDING, Some(&vid), None).await?;
                }
                // Left by a rollback interrupted after its commit point.
                if labels.is(PREVIOUS, &vid) {
                    self.relabel(op, PREVIOUS, Some(&vid), None).await?;
                }
            }
        }
        Ok(())
    }

    /// Records completion and removes `AWSPREVIOUS` (its token is revoked).
    ///
    /// # Errors
    /// Service failures; `Corrupt` when there is no current version.
    pub async fn finish(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Finish;
        let labels = self.describe_existing(op).await?;
        let Some(current) = labels.current.clone() else {
            return Err(self.err(op, StoreErrorKind::Corrupt, "no current version".into()));
        };
        let known = self.read_journal(op).await?;
        self.write_journal(op, &current, journal, known.as_ref())
            .await?;
        if let Some(prev) = labels.previous.as_deref().filter(|p| *p != current) {
            self.relabel(op, PREVIOUS, Some(prev), None).await?;
        }
        Ok(())
    }

    /// Checks that the secret exists (or may be created), its records parse,
    /// and the companions can be described.
    ///
    /// # Errors
    /// What is wrong.
    pub async fn check(&self) -> Result<(), StoreError> {
        let op = StoreOp::Check;
        if self.snapshot(op).await?.is_none() && !self.create_if_missing {
            return Err(self.not_found(op));
        }
        self.exists(op, &self.lock_secret_name()).await?;
        Ok(())
    }

    /// [`check`](Self::check) for a destination that only holds a
    /// policy's lock: Secrets Manager answers and the lock secret can be
    /// described (it is created on first use).
    ///
    /// # Errors
    /// What is wrong.
    pub async fn check_lock(&self) -> Result<(), StoreError> {
        self.exists(StoreOp::Check, &self.lock_secret_name())
            .await?;
        Ok(())
    }
}
