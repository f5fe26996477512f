//! The policy's coordination lease, as every store holds it.
//!
//! Taking a lease is each store's own atomic primitive (an `flock`, a
//! Vault check-and-set write, a Secrets Manager label swap); everything
//! after that follows the rules here, once for all stores:
//!
//! - **Fencing** ([`Fence`]): the holder checks before each write that the
//!   lease is still its own and valid for long enough (invariant 9).
//! - **Renewal** ([`Held`]): an expiring lease is renewed in the background
//!   every third of its TTL until it is released, dropped, or found taken
//!   over; a failed renewal is retried at the next tick.
//! - **Lost**: a renewal that finds the lease taken over marks the fence
//!   lost ([`Fence::lost`]); the holder then writes nothing more.
//! - **Release on drop**: a lease dropped without [`Held::release`] is
//!   released in the background, with retries; one whose release is given
//!   up is noted as abandoned, so this process may **take it back** at once
//!   ([`claim`]) instead of waiting for it to expire.
//!
//! A store supplies the primitives through [`ExpiringLease`]: renew once
//! (re-reading the lock record when an earlier renewal's outcome is
//! unknown), release, and note the lease abandoned. A file lock never
//! expires: its fence is [`Fence::unbounded`], it needs no renewal, and
//! closing the file releases it.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{StoreError, StoreErrorKind, aws, file, vault};

/// Proof of holding a policy's coordination lock; released on drop.
#[derive(Debug)]
pub enum Lease {
    File(file::FileLease),
    Vault(vault::VaultLease),
    Aws(aws::AwsLease),
}

impl Lease {
    /// What the holder checks before each write; see [`Fence`].
    pub fn fence(&self) -> Fence {
        match self {
            Lease::File(l) => l.fence(),
            Lease::Vault(l) => l.fence(),
            Lease::Aws(l) => l.fence(),
        }
    }
}

/// What a lease holder checks before each write (invariant 9): whether
/// its lease is still its own and valid for long enough. The lease updates
/// it (each renewal moves `valid_until`; a renewal that finds the lease
/// taken over marks it lost); the driver reads it. Time is the monotonic
/// clock measured from before the renewal was sent, so a process paused
/// past its lease sees it expired the moment it resumes, whatever the wall
/// clock or an injected clock says.
#[derive(Clone, Debug)]
pub struct Fence(Arc<FenceState>);

#[derive(Debug)]
struct FenceState {
    /// `None`: valid for as long as the process lives (an `flock`).
    valid_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    lost: std::sync::atomic::AtomicBool,
    /// How long before `valid_until` the holder stops writing: a write
    /// under way when the lease ends would be one no lease covers.
    margin: Duration,
    /// The lock's place, for messages.
    label: String,
}

impl Fence {
    /// A lease that lasts as long as the process holds it (a file lock).
    pub fn unbounded(label: String) -> Fence {
        Fence(Arc::new(FenceState {
            valid_until: std::sync::Mutex::new(None),
            lost: std::sync::atomic::AtomicBool::new(false),
            margin: Duration::ZERO,
            label,
        }))
    }

    /// A lease valid for `ttl` from `sent` (when the write that took it
    /// was sent), renewed in the background every third of it; writes stop
    /// a quarter of the TTL before it ends.
    pub fn expiring(label: String, sent: tokio::time::Instant, ttl: Duration) -> Fence {
        Fence(Arc::new(FenceState {
            valid_until: std::sync::Mutex::new(Some(sent + ttl)),
            lost: std::sync::atomic::AtomicBool::new(false),
            margin: ttl / 4,
            label,
        }))
    }

    /// A renewal sent at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: tokio::time::Instant, ttl: Duration) {
        let mut v = self
            .0
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if v.is_some_and(|until| until < sent + ttl) {
            *v = Some(sent + ttl);
        }
    }

    /// Another holder took the lease over. Logged once.
    pub(crate) fn lost(&self) {
        if !self.0.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::warn!(destination = %self.0.label, "the lease was taken over by another holder");
        }
    }

    /// Whether a renewal found the lease taken over by another holder.
    pub fn is_lost(&self) -> bool {
        self.0.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the holder may still write.
    ///
    /// # Errors
    /// Why not: the lease was taken over, or ends within the margin.
    pub fn check(&self) -> Result<(), String> {
        if self.is_lost() {
            return Err(format!(
                "the lease on {} was taken over by another holder",
                self.0.label
            ));
        }
        let until = *self
            .0
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match until {
            Some(until) if tokio::time::Instant::now() + self.0.margin >= until => Err(format!(
                "the lease on {} was not renewed in time and may have been taken over",
                self.0.label
            )),
            _ => Ok(()),
        }
    }

    /// Whether the lease can end at all (a file lock cannot while held).
    pub fn expires(&self) -> bool {
        self.0
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

/// The store-specific half of an expiring lease (Vault, AWS): the state of
/// one lease taken, and the primitives [`Held`] builds the shared rules
/// from. The store marks its [`Fence`] renewed or lost where it learns so.
pub(crate) trait ExpiringLease: Send + Sync + 'static {
    /// The lock's place, for logs.
    fn label(&self) -> String;

    /// The fence of this lease, which the store marks renewed or lost.
    fn fence(&self) -> &Fence;

    /// Renews the lease once, from the lock record version believed ours.
    /// `Ok(false)`: the lease was taken over (the fence is marked lost).
    /// When an earlier renewal's outcome is unknown, the store reads the
    /// lock record before concluding so.
    fn renew(&self) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives the lease up, never touching a successor's. Repeatable.
    fn release(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Notes the lease as given up by this process, by the lock record's
    /// location and the mark of our version: see [`abandoned_lease`].
    fn abandon(&self) -> impl Future<Output = ()> + Send;
}

/// An expiring lease held: renewed in the background every third of its
/// TTL, released by [`release`](Held::release) or, best effort, on drop.
pub(crate) struct Held<L: ExpiringLease> {
    lease: Arc<L>,
    /// Stops the renewals. A renewal under way when it fires finishes (the
    /// store serializes it with the release), and no new one starts.
    stop: CancellationToken,
    /// [`release`](Held::release) was called, so dropping does nothing.
    released: bool,
}

impl<L: ExpiringLease> Held<L> {
    /// Starts renewing `lease`, taken with time to live `ttl`.
    pub(crate) fn start(lease: L, ttl: Duration) -> Held<L> {
        let lease = Arc::new(lease);
        let stop = CancellationToken::new();
        let every = (ttl / 3).max(Duration::from_millis(100));
        let (task_lease, task_stop) = (lease.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = task_stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let renewed = task_lease.renew().await;
                if task_stop.is_cancelled() {
                    // Released or dropped meanwhile.
                    return;
                }
                match renewed {
                    Ok(true) => {}
                    // Taken over: the fence says so, and says why.
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(destination = %task_lease.label(), error = %e, "renewing the lease failed; retrying");
                    }
                }
            }
        });
        Held {
            lease,
            stop,
            released: false,
        }
    }

    /// The store's state of this lease.
    pub(crate) fn lease(&self) -> &L {
        &self.lease
    }

    /// What the holder checks before each write.
    pub(crate) fn fence(&self) -> Fence {
        self.lease.fence().clone()
    }

    /// Stops the renewals and releases the lease now; a failed release
    /// notes the lease abandoned.
    ///
    /// # Errors
    /// The release failed; the lease then ends when it expires, or when
    /// this process next takes the lock.
    pub(crate) async fn release(mut self) -> Result<(), StoreError> {
        self.released = true;
        self.stop.cancel();
        let result = self.lease.release().await;
        if result.is_err() {
            self.lease.abandon().await;
        }
        result
    }
}

impl<L: ExpiringLease> Drop for Held<L> {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.released {
            return;
        }
        // Best effort: a lease not released ends when it expires.
        let lease = self.lease.clone();
        let abandoned = lease.clone();
        release_in_background(
            lease.label(),
            move || {
                let lease = lease.clone();
                async move { lease.release().await }
            },
            move || async move { abandoned.abandon().await },
        );
    }
}

/// Whether an unreleased lock record, ending at `expires_at`, may be taken
/// at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// It has expired: take it over.
    Expired,
    /// It is unexpired, but this process gave it up without releasing it
    /// (see [`abandoned_lease`]): take it back.
    TakeBack,
    /// Another holder has it.
    Held,
}

/// Decides [`Claim`] for the record at `location` whose version is `mark`.
pub(crate) fn claim(
    location: &str,
    mark: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Claim {
    if expires_at <= now {
        Claim::Expired
    } else if reclaim_abandoned(location, mark) {
        Claim::TakeBack
    } else {
        Claim::Held
    }
}

/// Releases a dropped lease in the background, retrying transient failures
/// (a 503, throttling) a few times over about 8 seconds: a lease left
/// behind blocks the policy, for this replica too, until it expires (or
/// until this process takes it back, see [`abandoned_lease`]).
///
/// `abandon` runs when the release is given up, to note the lease as
/// abandoned by this process.
fn release_in_background<F, Fut, A, AFut>(label: String, release: F, abandon: A)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
    A: FnOnce() -> AFut + Send + 'static,
    AFut: Future<Output = ()> + Send + 'static,
{
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    RELEASES.spawn_on(
        async move {
            if !release_with_retries(&label, release).await {
                abandon().await;
            }
        },
        &handle,
    );
}

/// `false` if the release was given up.
async fn release_with_retries<F, Fut>(label: &str, release: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    const ATTEMPTS: u32 = 5;
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        match release().await {
            Ok(()) => return true,
            Err(e) if e.kind == StoreErrorKind::Transient && attempt < ATTEMPTS => {
                tracing::debug!(destination = %label, error = %e, attempt, "releasing the lease failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::warn!(destination = %label, error = %e, "releasing the lease failed; it ends when it expires, or when this process next takes the lock");
                return false;
            }
        }
    }
    false
}

/// Leases this process gave up but could not release, by lock location:
/// the version of the lock record that was ours. The record is unexpired,
/// so another replica must wait for it; but this process knows the lease
/// has no holder any more (its holder was dropped), so while the record is
/// still at that very version it may take it back at once. A write by
/// anyone else changes the version, and the entry then matches nothing.
static ABANDONED: LazyLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
    LazyLock::new(Default::default);

/// Notes that releasing the lease at `location`, whose record was at
/// `version`, failed.
pub(crate) fn abandoned_lease(location: String, version: String) {
    if let Ok(mut m) = ABANDONED.lock() {
        m.insert(location, version);
    }
}

/// Whether the unexpired lease record at `location`, now at `version`, is
/// one this process abandoned; the entry is consumed, so it is taken back
/// at most once.
fn reclaim_abandoned(location: &str, version: &str) -> bool {
    let Ok(mut m) = ABANDONED.lock() else {
        return false;
    };
    if m.get(location).is_some_and(|v| v == version) {
        m.remove(location);
        true
    } else {
        false
    }
}

/// Releases still under way, so a process can let them finish before it
/// exits: a one-shot `rotate` ends right after its lease is dropped, and a
/// release cut off by the exit would leave the lock held (blocking every
/// replica) until it expires.
static RELEASES: LazyLock<tokio_util::task::TaskTracker> =
    LazyLock::new(tokio_util::task::TaskTracker::new);

/// Waits up to `limit` for lease releases under way; `false` if some were
/// still running then. For the end of the process: releases started later
/// are still tracked, but this returns once none is left.
pub async fn wait_for_releases(limit: Duration) -> bool {
    RELEASES.close();
    tokio::time::timeout(limit, RELEASES.wait()).await.is_ok()
}
