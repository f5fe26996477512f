//! The coordination lease on a KV v2 destination (`P.lock`).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info};

use crate::stores::lease::{Claim, ExpiringLease, Held, abandoned_lease, claim};
use crate::stores::{Fence, StoreError, StoreErrorKind, StoreOp};

use super::destination::{KvVersion, Sibling, VaultDestination};

/// The data of `P.lock` (KV v2).
#[derive(Debug, Serialize, Deserialize)]
struct LockData {
    holder: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ttl_seconds: u64,
}

impl VaultDestination {
    /// Takes the policy's coordination lease if it is free or expired
    /// (see [`VaultLease`]), at the system clock's time.
    ///
    /// # Errors
    /// KV v1 (no check-and-set, so no safe lease): always a permanent
    /// error. Otherwise an unreachable Vault, a missing permission, or an
    /// unreadable lease record.
    pub async fn try_lock(&self, holder: &str) -> Result<Option<VaultLease>, StoreError> {
        self.try_lock_at(holder, Utc::now()).await
    }

    /// [`try_lock`](Self::try_lock) at `now`, for tests that step time.
    ///
    /// # Errors
    /// As [`try_lock`](Self::try_lock).
    pub async fn try_lock_at(
        &self,
        holder: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<VaultLease>, StoreError> {
        let op = StoreOp::Lock;
        if self.kv == KvVersion::V1 {
            return Err(self.err(
                op,
                StoreErrorKind::Permanent,
                "a KV v1 mount has no check-and-set, so it cannot hold the multi-replica lock; configure the policy's lock on another destination (a KV v2 path, AWS or a file)".to_owned(),
            ));
        }
        // On a mount of another kind or version the lease would be
        // written somewhere nothing reads (`kv/data/P.lock` on KV v1).
        self.mount_ok
            .get_or_try_init(|| self.check_mount(op))
            .await?;
        let lp = self.sib(Sibling::Lock);
        let cas = match self.v2_meta(op, &lp).await? {
            None => 0,
            Some(meta) => {
                if meta.version > 0 && meta.readable.contains(&meta.version) {
                    let data = self.v2_data(op, &lp, meta.version).await?;
                    if let Some(data) = data {
                        let lock = LockData::deserialize(&data.0).map_err(|e| {
                            self.err(
                                op,
                                StoreErrorKind::Corrupt,
                                format!("`{}` is not a lease record: {e}", self.api("data", &lp)),
                            )
                        })?;
                        let mark = abandoned_mark(meta.version, lock.expires_at);
                        match claim(&self.lease_location(), &mark, lock.expires_at, now) {
                            Claim::Expired => {
                                info!(destination = %self.label(), previous_holder = %lock.holder, expired_at = %lock.expires_at, "taking over an expired lease");
                            }
                            Claim::TakeBack => {
                                info!(destination = %self.label(), expires_at = %lock.expires_at, "taking back the lease this process could not release");
                            }
                            Claim::Held => {
                                debug!(destination = %self.label(), holder = %lock.holder, expires_at = %lock.expires_at, "the lease is held");
                                return Ok(None);
                            }
                        }
                    }
                }
                meta.version
            }
        };
        let lease_ttl = chrono::Duration::from_std(self.lease_ttl).unwrap_or(chrono::Duration::MAX);
        let lock = LockData {
            holder: holder.to_owned(),
            acquired_at: now,
            expires_at: now + lease_ttl,
            ttl_seconds: self.lease_ttl.as_secs(),
        };
        let data = serde_json::to_value(&lock).unwrap_or(Value::Null);
        let sent = tokio::time::Instant::now();
        match self.v2_write(op, &lp, &data, cas).await {
            Ok(version) => Ok(Some(VaultLease::start(
                self.clone(),
                holder.to_owned(),
                version,
                lock.expires_at,
                sent,
            ))),
            // Another replica wrote first.
            Err(e) if e.kind == StoreErrorKind::Conflict => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The policy's coordination lease on a KV v2 destination: the secret
/// `P.lock`, written with check-and-set.
///
/// - **Take**: when `P.lock` does not exist, write it with `cas=0`
///   (create-if-absent); when its latest version is deleted or its
///   `expires_at` has passed, write with `cas` = that version (a safe
///   takeover: of several replicas seeing the same expired lease, exactly
///   one write succeeds).
/// - **Renew**: rewrite it with `cas` = our version and a new
///   `expires_at`. A background task renews every third of the TTL while
///   the lease is held, so a long verification keeps it; [`renew`] is
///   there for callers that want to renew at a point of their choosing,
///   and [`is_lost`] says whether a renewal found the lease taken over.
/// - **Release**: soft-delete exactly our version (never a newer one a
///   successor wrote), explicitly with [`release`] or best effort on drop.
///
/// A crashed holder's lease blocks others until it expires (the TTL,
/// ten minutes by default). Expiry compares the replicas' own clocks:
/// keep their skew well below the TTL. Check-and-set on the records
/// bounds what a holder that lost its lease (paused past the TTL) can do:
/// its writes fail once the successor has written.
///
/// [`renew`]: VaultLease::renew
/// [`is_lost`]: VaultLease::is_lost
/// [`release`]: VaultLease::release
pub struct VaultLease {
    held: Held<LeaseShared>,
}

struct LeaseShared {
    dest: VaultDestination,
    holder: String,
    state: tokio::sync::Mutex<LeaseState>,
    fence: Fence,
}

#[derive(Debug, Clone, Copy)]
struct LeaseState {
    /// Our version of `P.lock`.
    version: u64,
    expires_at: DateTime<Utc>,
    released: bool,
    /// The `expires_at` of a renewal whose outcome is unknown (the request
    /// failed without an answer): if Vault applied it, the record is ours
    /// at a newer version, and a conflict must not be taken for a loss.
    unanswered: Option<DateTime<Utc>>,
}

impl fmt::Debug for VaultLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.held.lease();
        let state = shared.state.try_lock().map(|s| *s).ok();
        f.debug_struct("VaultLease")
            .field("destination", &shared.dest.label())
            .field("holder", &shared.holder)
            .field("state", &state)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl VaultLease {
    fn start(
        dest: VaultDestination,
        holder: String,
        version: u64,
        expires_at: DateTime<Utc>,
        sent: tokio::time::Instant,
    ) -> VaultLease {
        let ttl = dest.lease_ttl;
        let fence = Fence::expiring(dest.label(), sent, ttl);
        let shared = LeaseShared {
            dest,
            holder,
            state: tokio::sync::Mutex::new(LeaseState {
                version,
                expires_at,
                released: false,
                unanswered: None,
            }),
            fence,
        };
        VaultLease {
            held: Held::start(shared, ttl),
        }
    }

    /// Who holds it (the daemon's instance id).
    pub fn holder(&self) -> &str {
        &self.held.lease().holder
    }

    /// When the lease expires unless renewed.
    pub async fn expires_at(&self) -> DateTime<Utc> {
        self.held.lease().state.lock().await.expires_at
    }

    /// What the holder checks before each write.
    pub fn fence(&self) -> Fence {
        self.held.fence()
    }

    /// Whether a renewal found the lease taken over by another holder; the
    /// holder must then stop changing the destination.
    pub fn is_lost(&self) -> bool {
        self.held.fence().is_lost()
    }

    /// Extends the lease by its TTL from now.
    ///
    /// # Errors
    /// `Conflict` when another holder took the lease over (it had
    /// expired); `Permanent` after release; transient Vault failures.
    pub async fn renew(&self) -> Result<DateTime<Utc>, StoreError> {
        self.held.lease().renew_at(Utc::now()).await
    }

    /// [`renew`](Self::renew) at `now`, for tests that step time.
    ///
    /// # Errors
    /// As [`renew`](Self::renew).
    pub async fn renew_at(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        self.held.lease().renew_at(now).await
    }

    /// Gives the lease up: deletes our version of `P.lock`.
    ///
    /// # Errors
    /// The delete failed; the lease then ends when it expires, or when
    /// this process next takes the lock.
    pub async fn release(self) -> Result<(), StoreError> {
        self.held.release().await
    }
}

/// What identifies an abandoned lease record: its version and its expiry.
/// A version number alone repeats once the lock's metadata is deleted (an
/// operator clearing a stuck lock) and another holder's versions count up
/// again; the expiry, to the nanosecond, is that record's own.
fn abandoned_mark(version: u64, expires_at: DateTime<Utc>) -> String {
    format!(
        "{version}@{}",
        expires_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    )
}

impl LeaseShared {
    async fn renew_at(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        let op = StoreOp::Lock;
        let d = &self.dest;
        let mut st = self.state.lock().await;
        if st.released {
            return Err(d.err(
                op,
                StoreErrorKind::Permanent,
                "the lease was released".into(),
            ));
        }
        let ttl = chrono::Duration::from_std(d.lease_ttl).unwrap_or(chrono::Duration::MAX);
        let lock = LockData {
            holder: self.holder.clone(),
            acquired_at: now,
            expires_at: now + ttl,
            ttl_seconds: d.lease_ttl.as_secs(),
        };
        let data = serde_json::to_value(&lock).unwrap_or(Value::Null);
        let sent = tokio::time::Instant::now();
        match d
            .v2_write(op, &d.sib(Sibling::Lock), &data, st.version)
            .await
        {
            Ok(v) => {
                st.version = v;
                st.expires_at = lock.expires_at;
                st.unanswered = None;
                self.fence.renewed(sent, d.lease_ttl);
                Ok(lock.expires_at)
            }
            Err(e) if e.kind == StoreErrorKind::Conflict && st.unanswered.is_some() => {
                // An earlier renewal may have been applied without its
                // answer reaching us: the record is then ours at a newer
                // version. Read it before calling the lease lost.
                let lp = d.sib(Sibling::Lock);
                let ours = match d.v2_meta(op, &lp).await? {
                    Some(meta) if meta.version > 0 => d
                        .v2_data(op, &lp, meta.version)
                        .await?
                        .and_then(|data| LockData::deserialize(&data.0).ok())
                        .filter(|l| l.holder == self.holder && Some(l.expires_at) == st.unanswered)
                        .map(|l| (meta.version, l.expires_at)),
                    _ => None,
                };
                st.unanswered = None;
                match ours {
                    Some((version, expires_at)) => {
                        info!(destination = %d.label(), "a renewal whose answer was lost had been applied; the lease is still ours");
                        st.version = version;
                        st.expires_at = expires_at;
                        Err(d.err(
                            op,
                            StoreErrorKind::Transient,
                            "the lease record moved on by our own earlier renewal; renewing again"
                                .into(),
                        ))
                    }
                    None => Err(self.taken_over()),
                }
            }
            Err(e) if e.kind == StoreErrorKind::Conflict => Err(self.taken_over()),
            Err(e) => {
                if e.kind == StoreErrorKind::Transient {
                    st.unanswered = Some(lock.expires_at);
                }
                Err(e)
            }
        }
    }

    /// Marks the lease lost: another holder took it over.
    fn taken_over(&self) -> StoreError {
        self.fence.lost();
        let d = &self.dest;
        d.err(
            StoreOp::Lock,
            StoreErrorKind::Conflict,
            format!(
                "the lease `{}` was taken over by another holder after it expired; stop changing this destination",
                d.api("data", &d.sib(Sibling::Lock))
            ),
        )
    }
}

impl ExpiringLease for LeaseShared {
    fn label(&self) -> String {
        self.dest.label()
    }

    fn fence(&self) -> &Fence {
        &self.fence
    }

    /// A conflict is the lease taken over.
    async fn renew(&self) -> Result<bool, StoreError> {
        match self.renew_at(Utc::now()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind == StoreErrorKind::Conflict => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        if st.released {
            return Ok(());
        }
        let d = &self.dest;
        // Marked released only once done, so a failed release can be
        // repeated; the state lock keeps renewals out meanwhile.
        d.v2_delete_version(StoreOp::Lock, &d.sib(Sibling::Lock), st.version)
            .await?;
        st.released = true;
        Ok(())
    }

    /// Notes the lease as given up by this process: see
    /// [`abandoned_lease`].
    async fn abandon(&self) {
        let st = self.state.lock().await;
        if !st.released {
            abandoned_lease(
                self.dest.lease_location(),
                abandoned_mark(st.version, st.expires_at),
            );
        }
    }
}
