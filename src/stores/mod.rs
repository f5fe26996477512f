//! Destinations: where tokens are written, and where the rotation journal
//! lives.
//!
//! A destination holds up to three records, mirroring the staging labels AWS
//! uses for its own rotations:
//! - **current**: what consumers read (AWSCURRENT);
//! - **pending**: a staged new token consumers do not read yet (AWSPENDING);
//! - **previous**: the token before the last promotion, kept until it is
//!   revoked so a rollback can restore it (AWSPREVIOUS).
//!
//! Each record carries the journal of the latest rotation (its id, state,
//! the previous and new token ids, when the old token may be revoked), so a
//! restart or another replica resumes from the stores alone, without a local
//! database. Every operation is keyed by the rotation id and safe to repeat.

pub mod aws;
pub mod file;
mod lease;
mod record;
#[doc(hidden)]
pub mod testing;
pub mod vault;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::motherduck::TokenType;
use crate::secret::SecretString;

pub use lease::{Fence, Lease, wait_for_releases};

/// Metadata of a stored token: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenMeta {
    pub token_id: String,
    pub token_name: String,
    pub service_account: String,
    pub token_type: TokenType,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rotation_id: String,
}

/// Where a rotation stands, as recorded in a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalState {
    /// The new token is written where consumers do not read it yet.
    Staged,
    /// The new token is current; verification has not passed yet.
    Promoted,
    /// Verification passed; the old token is revoked after `revoke_after`.
    Verified,
    /// The old token is revoked; the rotation is complete.
    Done,
    /// Verification or a write failed; the old token is current again and
    /// the new one is revoked.
    RolledBack,
}

impl JournalState {
    /// Whether the rotation still needs work.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JournalState::Staged | JournalState::Promoted | JournalState::Verified
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JournalState::Staged => "staged",
            JournalState::Promoted => "promoted",
            JournalState::Verified => "verified",
            JournalState::Done => "done",
            JournalState::RolledBack => "rolled_back",
        }
    }
}

/// The journal of one rotation, stored with the records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub rotation_id: String,
    pub state: JournalState,
    /// The token being replaced; `None` for the first token of a policy.
    pub previous_token_id: Option<String>,
    pub new_token_id: String,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the previous token may be revoked (verification time plus the
    /// overlap period). Set in `Verified`.
    #[serde(default)]
    pub revoke_after: Option<DateTime<Utc>>,
    /// Why the rotation was rolled back. Never holds a secret.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Consecutive failed rotations, for the retry backoff.
    #[serde(default)]
    pub failures: u32,
    /// No new rotation before this instant (backoff after a rollback).
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
    /// When a consumer acknowledged the new token (the `ack` hook). Kept
    /// in the journal as soon as it arrives, so a restart before the
    /// rotation is recorded verified does not wait for an acknowledgement
    /// the consumer already sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// When the policy's reload actions told consumers about this
    /// rotation's token: after promotion (state `Promoted`), or after the
    /// rollback restored the previous token (state `RolledBack`). Kept so a
    /// restart neither skips the reload nor repeats one already done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloaded_at: Option<DateTime<Utc>>,
    /// What the reload actions reported when one failed and the policy
    /// said to carry on (`on_failure = "continue"`). Never holds a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_note: Option<String>,
}

/// A record as written: the secret, its metadata and the journal.
#[derive(Debug)]
pub struct NewRecord {
    pub token: SecretString,
    pub meta: TokenMeta,
    pub journal: Journal,
    /// The one-time secret consumers present to acknowledge this rotation,
    /// when the policy has an acknowledgement hook.
    pub ack_secret: Option<SecretString>,
}

/// A record as read back, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    pub meta: TokenMeta,
    pub journal: Option<Journal>,
}

/// Everything a destination holds, without secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationView {
    pub current: Option<RecordView>,
    pub pending: Option<RecordView>,
    pub previous: Option<RecordView>,
    /// Something consumers read beside the record (the file store's bare
    /// token file) does not hold `current`'s token: the step that made the
    /// record current stopped before it was done. Stores whose consumers
    /// read the record alone never set it.
    pub current_partial: bool,
}

impl DestinationView {
    /// Whether the step that made `current` current is finished here:
    /// every part consumers read holds it and no staged copy of the same
    /// rotation is left. A destination counts as promoted only then.
    pub fn current_settled(&self) -> bool {
        let Some(cur) = &self.current else {
            return true;
        };
        !self.current_partial
            && self
                .pending
                .as_ref()
                .is_none_or(|p| p.meta.rotation_id != cur.meta.rotation_id)
    }

    /// Every token id this destination references; orphan detection spares
    /// these.
    pub fn token_ids(&self) -> impl Iterator<Item = &str> {
        [&self.current, &self.pending, &self.previous]
            .into_iter()
            .flatten()
            .map(|r| r.meta.token_id.as_str())
    }
}

/// Which record to read a secret from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Current,
    Pending,
}

/// The store operations, a bounded set for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Load,
    ReadSecret,
    Stage,
    Promote,
    Journal,
    Rollback,
    Finish,
    Discard,
    Lock,
    Check,
}

impl StoreOp {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Load => "load",
            StoreOp::ReadSecret => "read_secret",
            StoreOp::Stage => "stage",
            StoreOp::Promote => "promote",
            StoreOp::Journal => "journal",
            StoreOp::Rollback => "rollback",
            StoreOp::Finish => "finish",
            StoreOp::Discard => "discard",
            StoreOp::Lock => "lock",
            StoreOp::Check => "check",
        }
    }
}

/// Whether a store failure can pass by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Network, timeouts, a server error: retry.
    Transient,
    /// Permission denied, a missing mount: needs an operator.
    Permanent,
    /// Unreadable or inconsistent stored data: needs an operator.
    Corrupt,
    /// A concurrent writer got there first (check-and-set): re-read.
    Conflict,
}

impl StoreErrorKind {
    /// A metric label value: unavailable, denied, corrupt, conflict.
    pub fn reason(self) -> &'static str {
        match self {
            StoreErrorKind::Transient => "unavailable",
            StoreErrorKind::Permanent => "denied",
            StoreErrorKind::Corrupt => "corrupt",
            StoreErrorKind::Conflict => "conflict",
        }
    }
}

/// A store failure. Names the destination and the operation, never a
/// secret.
#[derive(Debug, thiserror::Error)]
#[error("{destination}: {} failed: {message}", op.as_str())]
pub struct StoreError {
    pub destination: String,
    pub op: StoreOp,
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub(crate) fn new(
        destination: String,
        op: StoreOp,
        kind: StoreErrorKind,
        message: String,
    ) -> StoreError {
        StoreError {
            destination,
            op,
            kind,
            message,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::Transient | StoreErrorKind::Conflict
        )
    }
}

/// A destination of a policy: a store plus the place in it. A closed set:
/// adding a store kind means touching every match on purpose.
#[derive(Debug, Clone)]
pub enum Destination {
    File(file::FileDestination),
    Vault(vault::VaultDestination),
    Aws(aws::AwsDestination),
}

/// Dispatches a method call to the destination's store.
macro_rules! each {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            Destination::File($d) => $e,
            Destination::Vault($d) => $e,
            Destination::Aws($d) => $e,
        }
    };
}

impl Destination {
    /// A short description for logs and errors, e.g. `file:/var/lib/x/etl.json`.
    pub fn label(&self) -> String {
        each!(self, d => d.label())
    }

    /// Whether `other` is the same place in the same configured store
    /// (labels alone leave out the server address).
    pub fn same_place(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::File(a), Destination::File(b)) => a.label() == b.label(),
            (Destination::Vault(a), Destination::Vault(b)) => {
                a.store() == b.store() && a.label() == b.label()
            }
            (Destination::Aws(a), Destination::Aws(b)) => {
                a.store() == b.store() && a.label() == b.label()
            }
            _ => false,
        }
    }

    /// The store kind, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::File(_) => "file",
            Destination::Vault(_) => "vault",
            Destination::Aws(_) => "aws",
        }
    }

    /// Temporary files that writes cut off by a crash left in the store
    /// (they may hold a token); only the file store writes any. With
    /// `remove`, deletes them: call it only under the policy's lock, which
    /// every writer of the destination holds. Returns how many there were.
    ///
    /// # Errors
    /// The store's directory cannot be read, or a file not removed.
    pub async fn leftovers(&self, remove: bool) -> Result<usize, StoreError> {
        match self {
            Destination::File(d) => d.leftovers(remove).await,
            Destination::Vault(_) | Destination::Aws(_) => Ok(0),
        }
    }

    /// Reads all records, without secrets.
    ///
    /// # Errors
    /// Unreachable or corrupt store.
    pub async fn load(&self) -> Result<DestinationView, StoreError> {
        each!(self, d => d.load().await)
    }

    /// Reads the secret of the current or pending record, if that record
    /// belongs to `rotation_id`.
    ///
    /// # Errors
    /// Unreachable or corrupt store.
    pub async fn read_secret(
        &self,
        slot: Slot,
        rotation_id: &str,
    ) -> Result<Option<(SecretString, Option<SecretString>)>, StoreError> {
        each!(self, d => d.read_secret(slot, rotation_id).await)
    }

    /// Writes the new record where consumers do not read it yet.
    ///
    /// # Errors
    /// Any write failure; nothing consumers read has changed.
    pub async fn stage(&self, record: &NewRecord) -> Result<(), StoreError> {
        each!(self, d => d.stage(record).await)
    }

    /// Makes the staged record of `journal.rotation_id` current, keeping the
    /// replaced one as previous.
    ///
    /// # Errors
    /// Any write failure, or no staged record for this rotation.
    pub async fn promote(&self, journal: &Journal) -> Result<(), StoreError> {
        each!(self, d => d.promote(journal).await)
    }

    /// Rewrites the journal of the current record of this rotation.
    ///
    /// # Errors
    /// Any write failure.
    pub async fn set_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        each!(self, d => d.set_journal(journal).await)
    }

    /// Undoes `journal.rotation_id` here: restores the previous record if
    /// the new one was promoted, drops the staged one, records `journal`.
    ///
    /// # Errors
    /// Any write failure.
    pub async fn rollback(&self, journal: &Journal) -> Result<(), StoreError> {
        each!(self, d => d.rollback(journal).await)
    }

    /// Records completion and forgets the previous record (its token is
    /// revoked).
    ///
    /// # Errors
    /// Any write failure.
    pub async fn finish(&self, journal: &Journal) -> Result<(), StoreError> {
        each!(self, d => d.finish(journal).await)
    }

    /// Takes the policy's coordination lock if it is free.
    ///
    /// # Errors
    /// The lock cannot be attempted (permissions, unreachable store).
    pub async fn try_lock(&self, holder: &str) -> Result<Option<Lease>, StoreError> {
        match self {
            Destination::File(d) => Ok(d.try_lock(holder).await?.map(Lease::File)),
            Destination::Vault(d) => Ok(d.try_lock(holder).await?.map(Lease::Vault)),
            Destination::Aws(d) => Ok(d.try_lock(holder).await?.map(Lease::Aws)),
        }
    }

    /// Checks that the store is reachable and writable enough to rotate;
    /// used by readiness.
    ///
    /// # Errors
    /// What is wrong.
    pub async fn check(&self) -> Result<(), StoreError> {
        each!(self, d => d.check().await)
    }

    /// [`check`](Self::check) for a destination used only as a policy's
    /// lock (`lock = { store, path }`): only what taking the lock needs.
    ///
    /// # Errors
    /// What is wrong.
    /// The part of [`check`](Self::check) that destinations share, as a
    /// key and the check: every file destination in one directory shares
    /// that directory's probe. `None` where nothing is shared.
    pub fn shared_check(&self) -> Option<std::path::PathBuf> {
        match self {
            Destination::File(d) => Some(d.directory.clone()),
            Destination::Vault(_) | Destination::Aws(_) => None,
        }
    }

    /// The configured store (`[stores.<name>]`) it is in, as the
    /// `store:<name>` dependency of the health metrics.
    pub fn dependency(&self) -> String {
        let name = match self {
            Destination::File(d) => d.store.as_str(),
            Destination::Vault(d) => d.store(),
            Destination::Aws(d) => d.store(),
        };
        format!("store:{name}")
    }

    /// Which server (and, on Vault, mount) or directory the destination
    /// lives in: destinations with the same key answer readiness probes
    /// alike, so the daemon's periodic probe checks one of them.
    pub fn place_key(&self) -> String {
        match self {
            Destination::File(d) => format!("file:{}", d.directory.display()),
            Destination::Vault(d) => format!("vault:{}:{}", d.store(), d.mount()),
            Destination::Aws(d) => format!("aws:{}", d.store()),
        }
    }

    /// Runs the shared part named by [`shared_check`](Self::shared_check).
    ///
    /// # Errors
    /// What is wrong.
    pub async fn check_shared(&self) -> Result<(), StoreError> {
        match self {
            Destination::File(d) => d.check_directory().await,
            Destination::Vault(_) | Destination::Aws(_) => Ok(()),
        }
    }

    /// [`check`](Self::check) without its shared part (as a lock only,
    /// with `lock_only`).
    ///
    /// # Errors
    /// What is wrong.
    pub async fn check_own(&self, lock_only: bool) -> Result<(), StoreError> {
        match self {
            Destination::File(d) => d.check_records().await,
            Destination::Vault(_) | Destination::Aws(_) if lock_only => self.check_lock().await,
            Destination::Vault(_) | Destination::Aws(_) => self.check().await,
        }
    }

    pub async fn check_lock(&self) -> Result<(), StoreError> {
        match self {
            Destination::File(d) => d.check().await,
            Destination::Vault(d) => d.check_lock().await,
            Destination::Aws(d) => d.check_lock().await,
        }
    }

    /// What can be known before a token is created that would make staging
    /// or promoting it fail: on Vault, the token's capabilities on every
    /// path of the layout and a secret that keeps more than one version.
    /// Other stores have no cheap equivalent and always pass.
    ///
    /// # Errors
    /// What is missing, naming each path.
    pub async fn preflight(&self) -> Result<(), StoreError> {
        match self {
            Destination::Vault(d) => d.preflight().await,
            Destination::File(_) | Destination::Aws(_) => Ok(()),
        }
    }
}
