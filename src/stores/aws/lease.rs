//! The coordination lock on `N.lock`: a compare-and-swap on its
//! `AWSCURRENT` label.

use std::time::Duration;

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::stores::lease::{Claim, ExpiringLease, Held, abandoned_lease, claim};
use crate::stores::{Fence, StoreError, StoreErrorKind, StoreOp};

use super::calls::Which;
use super::destination::AwsDestination;
use super::{CURRENT, PENDING};

/// The lock's released state: one fixed version, labelled with a label of
/// its own so Secrets Manager never removes it.
const RELEASED_LOCK_VERSION: &str = "00000000-0000-0000-0000-000000000000";
const RELEASED_LOCK_LABEL: &str = "RELEASED";
const RELEASED_LOCK_VALUE: &str = r#"{"holder":"","lease_id":"","acquired_at":"1970-01-01T00:00:00Z","expires_at":"1970-01-01T00:00:00Z","released":true}"#;

pub(super) fn ttl(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The lock companion's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockDoc {
    holder: String,
    lease_id: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    #[serde(default)]
    released: bool,
}

impl LockDoc {
    fn json(&self) -> String {
        // Strings and timestamps: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl AwsDestination {
    /// Takes the coordination lock if it is free, released, or expired.
    /// `Ok(None)`: another holder has it, or won the race for it.
    ///
    /// # Errors
    /// The lock cannot be attempted (permissions, unreachable service, a
    /// lock value that does not parse).
    pub async fn try_lock(&self, holder: &str) -> Result<Option<AwsLease>, StoreError> {
        let op = StoreOp::Lock;
        let lock = self.lock_secret_name();
        let now = self.clock.now();
        // The lease is counted from before any write that may take it.
        let sent = tokio::time::Instant::now();
        let lease_id = uuid::Uuid::new_v4().hyphenated().to_string();
        let doc = LockDoc {
            holder: holder.to_owned(),
            lease_id: lease_id.clone(),
            acquired_at: now,
            expires_at: now + ttl(self.lock_ttl),
            released: false,
        };
        let body = doc.json();
        // The first holder ever: create-if-absent is atomic.
        let description = format!(
            "coordination lock of secret {} (motherduck-rotator); holds no secret",
            self.secret_name
        );
        if self
            .create_secret(op, &lock, description, Some((&body, &lease_id)))
            .await?
        {
            return Ok(Some(self.lease(doc, lease_id, sent)));
        }
        let Some((seen, text)) = self.get_value(op, &lock, Which::Stage(CURRENT)).await? else {
            return Err(self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("lock secret `{lock}` has no current value"),
            ));
        };
        let current: LockDoc = serde_json::from_str(&text).map_err(|e| {
            self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("lock secret `{lock}` does not hold a lease: {e}"),
            )
        })?;
        let mut reclaimed = false;
        if !current.released {
            match claim(&self.lock_location(), &seen, current.expires_at, now) {
                Claim::Expired => {}
                Claim::TakeBack => {
                    info!(destination = %self.label(), expires_at = %current.expires_at, "taking back the lock this process could not release");
                    reclaimed = true;
                }
                Claim::Held => {
                    debug!(destination = %self.label(), holder = %current.holder, expires_at = %current.expires_at, "lock is held");
                    return Ok(None);
                }
            }
        }
        // Free or expired: write our lease as an inert version, then swap
        // AWSCURRENT to it only if it still sits on the version we read.
        if !self.put_value(op, &lock, &body, &lease_id, PENDING).await? {
            return Err(self.err(
                op,
                StoreErrorKind::Conflict,
                format!("lease version `{lease_id}` of `{lock}` exists already"),
            ));
        }
        match self
            .move_label(&lock, CURRENT, Some(&seen), Some(&lease_id))
            .await
        {
            Ok(()) => {
                if !current.released && !reclaimed {
                    info!(destination = %self.label(), previous_holder = %current.holder, expired_at = %current.expires_at, "took over an expired lock");
                }
                Ok(Some(self.lease(doc, lease_id, sent)))
            }
            Err(e) if e.code() == Some("InvalidParameterException") => {
                debug!(destination = %self.label(), reason = e.message().unwrap_or(""), "lost the race for the lock");
                Ok(None)
            }
            Err(e) => Err(self.sdk_err(op, "UpdateSecretVersionStage", &lock, &e)),
        }
    }

    fn lease(&self, doc: LockDoc, version: String, sent: tokio::time::Instant) -> AwsLease {
        let shared = LeaseShared {
            fence: Fence::expiring(self.label(), sent, self.lock_ttl),
            dest: self.clone(),
            holder: doc.holder,
            lease_id: doc.lease_id,
            acquired_at: doc.acquired_at,
            version: tokio::sync::Mutex::new(version),
            releasing: std::sync::atomic::AtomicBool::new(false),
        };
        AwsLease {
            held: Held::start(shared, self.lock_ttl),
        }
    }
}

/// Holds a destination's coordination lock; renewed in the background
/// every third of the lock TTL, and released (best-effort) when dropped.
pub struct AwsLease {
    held: Held<LeaseShared>,
}

struct LeaseShared {
    dest: AwsDestination,
    holder: String,
    lease_id: String,
    acquired_at: DateTime<Utc>,
    /// The lock secret's version that holds our lease now; every renewal
    /// and the release swap `AWSCURRENT` away from it. A mutex held across
    /// the swap keeps a renewal and the release from racing.
    version: tokio::sync::Mutex<String>,
    /// Set when the release starts: a renewal already under way must not
    /// move `AWSCURRENT` on from the released version.
    releasing: std::sync::atomic::AtomicBool,
    fence: Fence,
}

impl std::fmt::Debug for AwsLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = self.held.lease();
        f.debug_struct("AwsLease")
            .field("lock", &shared.dest.lock_secret_name())
            .field("holder", &shared.holder)
            .field("lease_id", &shared.lease_id)
            .finish()
    }
}

impl AwsLease {
    pub fn lease_id(&self) -> &str {
        &self.held.lease().lease_id
    }

    pub fn holder(&self) -> &str {
        &self.held.lease().holder
    }

    /// What the holder checks before each write.
    pub fn fence(&self) -> Fence {
        self.held.fence()
    }

    /// Extends the lease by the lock TTL from now. `Ok(false)`: the lease
    /// was lost (it expired and another holder took it over).
    ///
    /// # Errors
    /// Service failures.
    pub async fn renew(&self) -> Result<bool, StoreError> {
        self.held.lease().renew().await
    }

    /// Releases the lock now. Releasing a lease that was already lost is
    /// not an error and leaves the new holder's lease alone.
    ///
    /// # Errors
    /// Service failures; the lease then expires by itself.
    pub async fn release(self) -> Result<(), StoreError> {
        self.held.release().await
    }
}

impl LeaseShared {
    /// Writes `value` as the inert version `next` of the lock (labelled
    /// `label`), then swaps `AWSCURRENT` to it from our version. `Ok(false)`:
    /// our version is no longer current.
    async fn swap(
        &self,
        op: StoreOp,
        value: &str,
        next: String,
        label: &str,
    ) -> Result<bool, StoreError> {
        let d = &self.dest;
        let lock = d.lock_secret_name();
        let mut version = self.version.lock().await;
        if label != RELEASED_LOCK_LABEL && self.releasing.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(false);
        }
        if !d.put_value(op, &lock, value, &next, label).await? {
            return Err(d.err(
                op,
                StoreErrorKind::Conflict,
                format!("version `{next}` of `{lock}` exists with different content"),
            ));
        }
        match d
            .move_label(&lock, CURRENT, Some(&version), Some(&next))
            .await
        {
            Ok(()) => {
                *version = next;
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some("InvalidParameterException" | "ResourceNotFoundException")
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(d.sdk_err(op, "UpdateSecretVersionStage", &lock, &e)),
        }
    }

    /// One renewal from the version we believe is ours.
    async fn renew_once(&self) -> Result<bool, StoreError> {
        let now = self.dest.clock.now();
        let sent = tokio::time::Instant::now();
        let doc = LockDoc {
            holder: self.holder.clone(),
            lease_id: self.lease_id.clone(),
            acquired_at: self.acquired_at,
            expires_at: now + ttl(self.dest.lock_ttl),
            released: false,
        };
        let next = uuid::Uuid::new_v4().hyphenated().to_string();
        let swapped = self.swap(StoreOp::Lock, &doc.json(), next, PENDING).await?;
        if swapped {
            self.fence.renewed(sent, self.dest.lock_ttl);
        }
        Ok(swapped)
    }
}

impl ExpiringLease for LeaseShared {
    fn label(&self) -> String {
        self.dest.label()
    }

    fn fence(&self) -> &Fence {
        &self.fence
    }

    async fn renew(&self) -> Result<bool, StoreError> {
        if self.renew_once().await? {
            return Ok(true);
        }
        if self.releasing.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        // Our version is no longer current. A renewal whose answer was lost
        // may have moved `AWSCURRENT` to a version of ours: read the lock
        // before calling the lease lost.
        let op = StoreOp::Lock;
        let lock = self.dest.lock_secret_name();
        if let Some((seen, text)) = self
            .dest
            .get_value(op, &lock, Which::Stage(CURRENT))
            .await?
            && serde_json::from_str::<LockDoc>(&text)
                .is_ok_and(|l| l.lease_id == self.lease_id && !l.released)
        {
            info!(destination = %self.dest.label(), lease_id = %self.lease_id, "a renewal whose answer was lost had been applied; the lock is still ours");
            *self.version.lock().await = seen;
            if self.renew_once().await? {
                return Ok(true);
            }
        }
        self.fence.lost();
        Ok(false)
    }

    /// Swaps `AWSCURRENT` to the lock's fixed released version: written
    /// once (a repeat with the same token and content is a no-op), so a
    /// release adds no version.
    async fn release(&self) -> Result<(), StoreError> {
        self.releasing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let swapped = self
            .swap(
                StoreOp::Lock,
                RELEASED_LOCK_VALUE,
                RELEASED_LOCK_VERSION.to_owned(),
                RELEASED_LOCK_LABEL,
            )
            .await?;
        if !swapped {
            info!(destination = %self.dest.label(), lease_id = %self.lease_id, "lock was already taken over; nothing to release");
        }
        Ok(())
    }

    /// Notes the lease as given up by this process: see
    /// [`abandoned_lease`].
    async fn abandon(&self) {
        let version = self.version.lock().await.clone();
        abandoned_lease(self.dest.lock_location(), version);
    }
}
