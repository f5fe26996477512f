//! The rotation steps on a Vault destination: load, read a secret, stage,
//! promote, set the journal, roll back, finish.

use crate::secret::SecretString;
use crate::stores::{
    DestinationView, Journal, NewRecord, RecordView, Slot, StoreError, StoreErrorKind, StoreOp,
};

use super::destination::{KvVersion, Sibling, VaultDestination};
use super::kv::V2Read;
use super::record::{
    Record, SensitiveValue, Tag, journal_metadata, new_record_value, with_inline_journal,
};

impl VaultDestination {
    /// Reads all records, without secrets. On KV v2, remembers the current
    /// version so a later write can tell whether `P` changed meanwhile.
    ///
    /// # Errors
    /// Unreachable Vault, missing permission, a corrupt record or journal.
    pub async fn load(&self) -> Result<DestinationView, StoreError> {
        let op = StoreOp::Load;
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_read(op, &self.sib(Sibling::Current)).await?;
                let previous = self.v2_previous(op, &cur).await?;
                let pend = self.v2_read(op, &self.sib(Sibling::Pending)).await?;
                self.observe(cur.version());
                let view = |r: &V2Read| {
                    r.record.as_ref().map(|rec| RecordView {
                        meta: rec.meta(),
                        journal: r.journal().cloned(),
                    })
                };
                Ok(DestinationView {
                    current: view(&cur),
                    pending: view(&pend),
                    previous: previous.map(|(_, _, r)| RecordView {
                        meta: r.meta(),
                        journal: None,
                    }),
                    current_partial: false,
                })
            }
            KvVersion::V1 => {
                let view = |r: Option<(SensitiveValue, Record)>| {
                    r.map(|(_, rec)| RecordView {
                        meta: rec.meta(),
                        journal: rec.fields.rotation.clone(),
                    })
                };
                Ok(DestinationView {
                    current: view(self.v1_read(op, &self.sib(Sibling::Current)).await?),
                    pending: view(self.v1_read(op, &self.sib(Sibling::Pending)).await?),
                    previous: view(self.v1_read(op, &self.sib(Sibling::Previous)).await?),
                    current_partial: false,
                })
            }
        }
    }

    /// Reads the secret (and acknowledgement secret) of the current or
    /// pending record, if that record belongs to `rotation_id`.
    ///
    /// # Errors
    /// Unreachable Vault, missing permission, a corrupt record.
    pub async fn read_secret(
        &self,
        slot: Slot,
        rotation_id: &str,
    ) -> Result<Option<(SecretString, Option<SecretString>)>, StoreError> {
        let op = StoreOp::ReadSecret;
        let sib = match slot {
            Slot::Current => Sibling::Current,
            Slot::Pending => Sibling::Pending,
        };
        let record = match self.kv {
            KvVersion::V2 => self.v2_read(op, &self.sib(sib)).await?.record,
            KvVersion::V1 => self.v1_read(op, &self.sib(sib)).await?.map(|(_, r)| r),
        };
        Ok(record
            .filter(|r| r.rotation_id() == rotation_id)
            .map(|r| (r.token, r.ack_secret)))
    }

    /// Writes the new record to `P.pending`, where consumers do not read
    /// it. Repeating it for the same rotation changes nothing.
    ///
    /// # Errors
    /// Any failed write; nothing consumers read has changed.
    pub async fn stage(&self, record: &NewRecord) -> Result<(), StoreError> {
        let op = StoreOp::Stage;
        let pp = self.sib(Sibling::Pending);
        let rid = &record.meta.rotation_id;
        match self.kv {
            KvVersion::V2 => {
                let pend = self.v2_read(op, &pp).await?;
                if pend.is_rotation(rid) {
                    if pend.journal() != Some(&record.journal) {
                        let custom =
                            journal_metadata(&pend.custom(), &record.journal, pend.version(), None);
                        self.v2_set_custom(op, &pp, custom).await?;
                    }
                    return Ok(());
                }
                let cas = pend.version();
                // The journal first, tagged with the version about to be
                // written: until that version exists it is ignored, so a
                // crash in between leaves nothing staged (module docs).
                let custom = journal_metadata(&pend.custom(), &record.journal, cas + 1, None);
                self.v2_set_custom(op, &pp, custom).await?;
                let data = new_record_value(record, false);
                let written = self.v2_write(op, &pp, &data.0, cas).await?;
                if written != cas + 1 {
                    let custom = journal_metadata(&pend.custom(), &record.journal, written, None);
                    self.v2_set_custom(op, &pp, custom).await?;
                }
                Ok(())
            }
            KvVersion::V1 => {
                let data = new_record_value(record, true);
                self.v1_write(op, &pp, &data.0).await
            }
        }
    }

    /// Makes the staged record of `journal.rotation_id` current: on KV v2
    /// a new version of `P` (check-and-set on the version read), the
    /// replaced version becoming the previous record; on KV v1 the current
    /// record is copied to `P.previous` first. Repeating it finishes what a
    /// crash interrupted.
    ///
    /// # Errors
    /// Any failed write; `Conflict` when `P` changed since it was loaded;
    /// `Corrupt` when there is no staged record for this rotation.
    pub async fn promote(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Promote;
        let rid = &journal.rotation_id;
        let p = self.sib(Sibling::Current);
        let pp = self.sib(Sibling::Pending);
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_read(op, &p).await?;
                let pend = self.v2_read(op, &pp).await?;
                if cur.is_rotation(rid) {
                    // Already promoted (a repeat after a crash): write the
                    // journal if the crash came before it, drop the staged
                    // copy.
                    if cur.tag == Tag::Stale {
                        let (prev, _) = cur.previous_version();
                        self.v2_set_journal(op, &cur.custom(), journal, cur.version(), prev)
                            .await?;
                    }
                    if pend.is_rotation(rid) {
                        self.v2_destroy_all(op, &pp).await?;
                    }
                    self.observe(cur.version());
                    return Ok(());
                }
                self.check_observed(op, cur.version())?;
                let Some(data) = pend.data.as_ref().filter(|_| pend.is_rotation(rid)) else {
                    return Err(self.no_staged_record(op, rid, &self.api("data", &pp)));
                };
                let previous = cur.record.is_some().then(|| cur.version());
                let written = self.v2_write(op, &p, &data.0, cur.version()).await?;
                self.observe(written);
                self.v2_set_journal(op, &cur.custom(), journal, written, previous)
                    .await?;
                self.v2_destroy_all(op, &pp).await
            }
            KvVersion::V1 => {
                let current = self.v1_read(op, &p).await?;
                let pending = self.v1_read(op, &pp).await?;
                if current
                    .as_ref()
                    .is_some_and(|(_, c)| c.rotation_id() == rid)
                {
                    if pending
                        .as_ref()
                        .is_some_and(|(_, r)| r.rotation_id() == rid)
                    {
                        self.v1_delete(op, &pp).await?;
                    }
                    return Ok(());
                }
                let Some((new, _)) = pending.filter(|(_, r)| r.rotation_id() == rid) else {
                    return Err(self.no_staged_record(op, rid, &self.api("", &pp)));
                };
                if let Some((cur, _)) = &current {
                    self.v1_write(op, &self.sib(Sibling::Previous), &cur.0)
                        .await?;
                }
                let new = with_inline_journal(&new.0, journal);
                self.v1_write(op, &p, &new.0).await?;
                self.v1_delete(op, &pp).await
            }
        }
    }

    /// Rewrites the journal of the current record.
    ///
    /// # Errors
    /// Any failed write; `Conflict` when `P` changed since it was loaded;
    /// `Corrupt` when there is no current record.
    pub async fn set_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Journal;
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_current(op).await?;
                let (prev, _) = cur.previous_version();
                let done = cur.journal() == Some(journal);
                self.v2_journal_current(op, &cur, journal, prev, done).await
            }
            KvVersion::V1 => {
                let (data, cur) = self.v1_current(op).await?;
                if cur.fields.rotation.as_ref() == Some(journal) {
                    return Ok(());
                }
                let data = with_inline_journal(&data.0, journal);
                self.v1_write(op, &self.sib(Sibling::Current), &data.0)
                    .await
            }
        }
    }

    /// Undoes `journal.rotation_id` here: when its record is current, the
    /// previous record becomes current again (KV v2: its data written as a
    /// new version, with check-and-set); a staged record is dropped; the
    /// journal records the rollback. When the rotation's token was the
    /// destination's first, nothing older exists and the current version
    /// is deleted.
    ///
    /// # Errors
    /// Any failed write; `Conflict` when `P` changed since it was loaded;
    /// `Corrupt` when the previous record cannot be read back.
    pub async fn rollback(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Rollback;
        let rid = &journal.rotation_id;
        let p = self.sib(Sibling::Current);
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_read(op, &p).await?;
                if cur.is_rotation(rid) {
                    self.check_observed(op, cur.version())?;
                    let (prev_version, _) = cur.previous_version();
                    match self.v2_previous(op, &cur).await? {
                        Some((_, data, _)) => {
                            let written = self.v2_write(op, &p, &data.0, cur.version()).await?;
                            self.observe(written);
                            self.v2_set_journal(op, &cur.custom(), journal, written, None)
                                .await?;
                        }
                        None if prev_version.is_none() => {
                            // The destination's first token: nothing older
                            // to restore, and this one is about to be
                            // revoked.
                            self.v2_delete_version(op, &p, cur.version()).await?;
                            self.v2_set_journal(op, &cur.custom(), journal, cur.version(), None)
                                .await?;
                        }
                        None => {
                            return Err(self.err(
                                op,
                                StoreErrorKind::Corrupt,
                                format!(
                                    "cannot restore the previous record: version {} of `{}` is deleted, destroyed or pruned by max_versions; restore it by hand",
                                    prev_version.unwrap_or_default(),
                                    self.api("data", &p)
                                ),
                            ));
                        }
                    }
                } else if cur.record.is_some() && cur.journal() != Some(journal) {
                    self.check_observed(op, cur.version())?;
                    let prev = match &cur.tag {
                        Tag::Valid {
                            previous_version, ..
                        } => *previous_version,
                        Tag::Stale => None,
                    };
                    self.v2_set_journal(op, &cur.custom(), journal, cur.version(), prev)
                        .await?;
                }
                self.v2_drop_pending_of(op, rid).await
            }
            KvVersion::V1 => {
                let current = self.v1_read(op, &p).await?;
                let prev_path = self.sib(Sibling::Previous);
                match current {
                    Some((_, cur)) if cur.rotation_id() == rid => {
                        match self.v1_read(op, &prev_path).await? {
                            Some((prev, _)) => {
                                let prev = with_inline_journal(&prev.0, journal);
                                self.v1_write(op, &p, &prev.0).await?;
                                self.v1_delete(op, &prev_path).await?;
                            }
                            None => self.v1_delete(op, &p).await?,
                        }
                    }
                    Some((data, cur)) if cur.fields.rotation.as_ref() != Some(journal) => {
                        let data = with_inline_journal(&data.0, journal);
                        self.v1_write(op, &p, &data.0).await?;
                    }
                    Some(_) | None => {}
                }
                self.v1_drop_pending_of(op, rid).await
            }
        }
    }

    /// Records completion and forgets the previous record (its token is
    /// revoked). On KV v2 the old version stays in the history, holding a
    /// revoked token.
    ///
    /// # Errors
    /// Any failed write; `Conflict` when `P` changed since it was loaded;
    /// `Corrupt` when there is no current record.
    pub async fn finish(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Finish;
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_current(op).await?;
                let done = matches!(&cur.tag, Tag::Valid { journal: j, previous_version: None } if j == journal);
                self.v2_journal_current(op, &cur, journal, None, done).await
            }
            KvVersion::V1 => {
                let (data, cur) = self.v1_current(op).await?;
                if cur.fields.rotation.as_ref() != Some(journal) {
                    let data = with_inline_journal(&data.0, journal);
                    self.v1_write(op, &self.sib(Sibling::Current), &data.0)
                        .await?;
                }
                self.v1_delete(op, &self.sib(Sibling::Previous)).await
            }
        }
    }

    fn no_staged_record(&self, op: StoreOp, rid: &str, api_path: &str) -> StoreError {
        self.err(
            op,
            StoreErrorKind::Corrupt,
            format!("no staged record for rotation `{rid}` at `{api_path}`"),
        )
    }

    /// The current KV v2 version, which must hold a record.
    async fn v2_current(&self, op: StoreOp) -> Result<V2Read, StoreError> {
        let cur = self.v2_read(op, &self.sib(Sibling::Current)).await?;
        if cur.record.is_none() {
            return Err(self.err(op, StoreErrorKind::Corrupt, "no current record".into()));
        }
        Ok(cur)
    }

    /// Writes `journal` for the current version `cur` (unless `done`: it is
    /// there already), then drops a staged copy of the same rotation: after
    /// a crash inside `promote` it is still there, and must not look like
    /// an active stage.
    async fn v2_journal_current(
        &self,
        op: StoreOp,
        cur: &V2Read,
        journal: &Journal,
        previous_version: Option<u64>,
        done: bool,
    ) -> Result<(), StoreError> {
        if !done {
            self.check_observed(op, cur.version())?;
            self.v2_set_journal(op, &cur.custom(), journal, cur.version(), previous_version)
                .await?;
        }
        if cur.is_rotation(&journal.rotation_id) {
            self.v2_drop_pending_of(op, &journal.rotation_id).await?;
        }
        Ok(())
    }

    /// The current KV v1 record, which must exist.
    async fn v1_current(&self, op: StoreOp) -> Result<(SensitiveValue, Record), StoreError> {
        self.v1_read(op, &self.sib(Sibling::Current))
            .await?
            .ok_or_else(|| self.err(op, StoreErrorKind::Corrupt, "no current record".into()))
    }

    /// Deletes KV v1 `P.pending` if it holds rotation `rid`.
    async fn v1_drop_pending_of(&self, op: StoreOp, rid: &str) -> Result<(), StoreError> {
        let pp = self.sib(Sibling::Pending);
        if self
            .v1_read(op, &pp)
            .await?
            .is_some_and(|(_, r)| r.rotation_id() == rid)
        {
            self.v1_delete(op, &pp).await?;
        }
        Ok(())
    }
}
