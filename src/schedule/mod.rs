//! When is a policy next due: cron in an IANA zone, fixed intervals, jitter,
//! rotation windows and "rotate before expiry", whichever comes first.
//!
//! Everything here except [`sleep_until_wall`] is pure: the functions take
//! `now` and the token's times as values and never read a clock, so the
//! driver, the `plan` command and the tests all see the same answers. The
//! state that decides "when" is the current token's `created_at` and
//! `expires_at` as the stores report them, not an in-memory timer; a due time
//! in the past simply means "due now", so a restart neither skips nor doubles
//! a rotation.
//!
//! # Why `croner` and not `tokio-cron-scheduler`
//!
//! `tokio-cron-scheduler` was evaluated and not used: its time-zone jobs keep
//! the UTC offset they were created with and so run an hour off after a DST
//! change (its issues #87 and #107), it polls every 500 ms, and a repeated job
//! can stop scheduling for good (#113). Instead this module asks `croner` for
//! the next occurrence in the schedule's own zone, and the driver sleeps
//! until then with [`sleep_until_wall`].
//!
//! # Daylight saving time
//!
//! Cron patterns are evaluated on the local wall clock of their zone, with
//! `croner`'s rules, which follow Vixie cron:
//!
//! - A pattern with a single fixed second, minute and hour (`30 2 * * *`) is
//!   a *fixed-time* job. If its time does not exist on a spring-forward day,
//!   it runs once at the first instant after the gap (03:00 local in
//!   Europe/Berlin and America/New_York). If its time happens twice on a
//!   fall-back day, it runs once, at the earlier instant.
//! - Any other pattern (`0 * * * *`, `*/15 * * * *`) is an *interval* job: it
//!   runs at every real instant whose local time matches, so a skipped hour
//!   is skipped and a repeated hour runs twice, which keeps "hourly" meaning
//!   once per real hour.
//!
//! Rotation windows are spans of real time: an occurrence runs from the first
//! instant the local clock reads its start to the first instant it reads its
//! end. A start inside a spring-forward gap therefore opens at the end of the
//! gap (a window lying wholly inside the gap does not occur that day), and a
//! repeated hour on a fall-back day is never entered twice.

mod cron;
#[cfg(test)]
mod tests;
mod wall;
mod window;

pub use cron::{CronSchedule, parse_cron, parse_timezone};
pub use wall::sleep_until_wall;
pub use window::{Window, in_window, next_window_start, parse_window};

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, TimeZone, Utc};
use sha2::{Digest, Sha256};

/// What makes a policy due, besides the token's expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cadence {
    /// Rotate at the first cron occurrence after the token was created.
    Cron(CronSchedule),
    /// Rotate a fixed time after the token was created.
    Interval(Duration),
}

/// A policy's validated schedule: everything that decides when it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// The regular cadence; `None` means the policy rotates only because its
    /// token is about to expire.
    pub cadence: Option<Cadence>,
    /// Upper bound of a delay added to each cadence slot so that many
    /// policies on the same schedule do not all hit MotherDuck at once;
    /// zero means none.
    pub jitter: Duration,
    /// Spans in which rotations are allowed; empty means any time.
    pub windows: Vec<Window>,
    /// Rotate this long before the current token expires, if it expires.
    pub rotate_before_expiry: Option<Duration>,
}

/// The current token's lifetime as the stores report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    /// When the token was created; cadences count from here.
    pub created_at: DateTime<Utc>,
    /// When MotherDuck stops accepting the token, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a policy is due: a closed set, so it can label metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DueReason {
    /// No token is stored for the policy yet.
    NoToken,
    /// The cron schedule reached a slot.
    Cron,
    /// The fixed interval since the token's creation ran out.
    Interval,
    /// The token is about to expire.
    Expiry,
    /// A failed rotation's backoff decided the time.
    Retry,
}

impl DueReason {
    /// A stable snake_case name for metric labels and log fields.
    pub fn as_str(self) -> &'static str {
        match self {
            DueReason::NoToken => "no_token",
            DueReason::Cron => "cron",
            DueReason::Interval => "interval",
            DueReason::Expiry => "expiry",
            DueReason::Retry => "retry",
        }
    }
}

impl fmt::Display for DueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DueReason::NoToken => "no token stored yet",
            DueReason::Cron => "cron schedule",
            DueReason::Interval => "fixed interval",
            DueReason::Expiry => "token expiry",
            DueReason::Retry => "retry after a failed rotation",
        })
    }
}

/// When a policy is next due, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// When to rotate; a time in the past means "now".
    pub at: DateTime<Utc>,
    /// Which rule decided `at`.
    pub reason: DueReason,
    /// The time the rule produced before jitter, windows and backoff moved
    /// it; jitter is derived from it, and the `plan` output shows it.
    pub slot: DateTime<Utc>,
    /// A sentence for humans naming the rule and its values, e.g.
    /// "cron `0 3 * * *` (Europe/Berlin) slot 2026-03-29T03:00:00+02:00".
    pub detail: String,
}

impl fmt::Display for Due {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", rfc3339(self.at), self.detail)
    }
}

/// Works out when the policy `policy` is next due.
///
/// - With no token the policy is due at `now`: consumers have nothing to use,
///   so neither jitter nor windows delay it.
/// - A cron cadence is due at its first slot strictly after the token's
///   `created_at`, an interval at `created_at` plus the interval. Jitter adds
///   an offset in `[0, jitter)` derived from SHA-256 of the policy name and
///   the slot, so every replica and every restart picks the same time.
/// - With `rotate_before_expiry` and an expiring token, the policy is also
///   due that long before `expires_at`; jitter does not apply to this time,
///   because it may only delay and the deadline is what it protects.
/// - `not_before` (a backoff after a failed rotation) is a lower bound on
///   each of those times; where it moved the winner, the reason is
///   [`DueReason::Retry`].
/// - Windows then move a time that falls outside them to the next opening.
///   A time already in the past is judged at `now`, since that is when the
///   rotation would happen. A window never delays a rotation past the
///   token's expiry: if the next opening is at or after `expires_at`, the
///   unwindowed time stands, since an outage is worse than rotating outside
///   a window.
/// - The earliest of the cadence and expiry times wins; on a tie the cadence.
///
/// A result in the past means "due now". Because the base is the token's
/// own `created_at`, a daemon that was down across several slots gets one
/// past time, rotates once, and the new token's `created_at` moves the next
/// slot into the future.
///
/// Returns `None` when nothing will ever make the policy due: no cadence and
/// a token that never expires (or no `rotate_before_expiry`), or a time past
/// the representable range.
pub fn next_due(
    policy: &str,
    spec: &ScheduleSpec,
    token: Option<&TokenTimes>,
    now: DateTime<Utc>,
    not_before: Option<DateTime<Utc>>,
) -> Option<Due> {
    let Some(token) = token else {
        let due = Due {
            at: now,
            reason: DueReason::NoToken,
            slot: now,
            detail: "no token stored yet".to_owned(),
        };
        return Some(apply_not_before(due, not_before, now, None));
    };

    let cadence = spec
        .cadence
        .as_ref()
        .and_then(|c| cadence_due(policy, c, spec.jitter, token));
    let expiry = expiry_due(spec.rotate_before_expiry, token);

    [cadence, expiry]
        .into_iter()
        .flatten()
        .map(|due| {
            let due = apply_not_before(due, not_before, now, token.expires_at);
            place_in_windows(due, &spec.windows, now, token.expires_at)
        })
        .min_by_key(|due| due.at)
}

/// Says whether `due` has arrived at `now`.
pub fn is_due(due: &Due, now: DateTime<Utc>) -> bool {
    due.at <= now
}

/// The next `n` due times, assuming each rotation happens exactly when due
/// (or at `now` for one already past) and creates a token that lives for
/// `token_ttl`, or forever if `None`.
///
/// This feeds the `plan` command, so an operator can see a schedule's
/// effect, DST changes and windows included, before enabling it. The list is
/// shorter than `n` when the policy stops being due.
pub fn upcoming(
    policy: &str,
    spec: &ScheduleSpec,
    token: Option<&TokenTimes>,
    now: DateTime<Utc>,
    token_ttl: Option<Duration>,
    n: usize,
) -> Vec<Due> {
    let ttl = token_ttl.and_then(|d| TimeDelta::from_std(d).ok());
    let mut current = token.copied();
    let mut now = now;
    let mut plan = Vec::new();
    while plan.len() < n {
        let Some(due) = next_due(policy, spec, current.as_ref(), now, None) else {
            break;
        };
        let rotated_at = due.at.max(now);
        current = Some(TokenTimes {
            created_at: rotated_at,
            expires_at: ttl.and_then(|ttl| rotated_at.checked_add_signed(ttl)),
        });
        now = rotated_at;
        plan.push(due);
    }
    plan
}

fn rfc3339<Z: TimeZone>(t: DateTime<Z>) -> String
where
    Z::Offset: fmt::Display,
{
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A delay in `[0, jitter)` that depends only on the policy name and the
/// slot, so replicas and restarts agree on it without talking to each other.
fn jitter_offset(policy: &str, slot: DateTime<Utc>, jitter: Duration) -> Duration {
    let span = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if span == 0 {
        return Duration::ZERO;
    }
    let digest = Sha256::digest(format!("{policy}|{}", rfc3339(slot)).as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_be_bytes(head) % span)
}

fn cadence_due(
    policy: &str,
    cadence: &Cadence,
    jitter: Duration,
    token: &TokenTimes,
) -> Option<Due> {
    let (slot, reason, mut detail) = match cadence {
        Cadence::Cron(schedule) => {
            let slot = schedule.next_after(token.created_at)?;
            let detail = format!(
                "cron {schedule} slot {}",
                rfc3339(slot.with_timezone(&schedule.tz))
            );
            (slot, DueReason::Cron, detail)
        }
        Cadence::Interval(every) => {
            let slot = token
                .created_at
                .checked_add_signed(TimeDelta::from_std(*every).ok()?)?;
            let detail = format!(
                "interval {} after token created at {}",
                humantime::format_duration(*every),
                rfc3339(token.created_at)
            );
            (slot, DueReason::Interval, detail)
        }
    };
    let offset = jitter_offset(policy, slot, jitter);
    let at = slot.checked_add_signed(TimeDelta::from_std(offset).ok()?)?;
    if !offset.is_zero() {
        let offset = Duration::from_secs(offset.as_secs());
        detail.push_str(&format!(", jitter +{}", humantime::format_duration(offset)));
    }
    Some(Due {
        at,
        reason,
        slot,
        detail,
    })
}

fn expiry_due(before: Option<Duration>, token: &TokenTimes) -> Option<Due> {
    let (before, expires_at) = (before?, token.expires_at?);
    let at = expires_at.checked_sub_signed(TimeDelta::from_std(before).ok()?)?;
    Some(Due {
        at,
        reason: DueReason::Expiry,
        slot: at,
        detail: format!(
            "token expires at {}, rotate {} before",
            rfc3339(expires_at),
            humantime::format_duration(before)
        ),
    })
}

fn apply_not_before(
    due: Due,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Due {
    // A backoff never runs past the expiry of a token that still works:
    // the retry comes halfway between now (or the due time) and the expiry
    // instead, so repeated failures retry more often as it nears, never
    // after it. Once the token has expired the backoff applies as it is.
    let not_before = match (not_before, expires_at) {
        (Some(nb), Some(exp)) if nb >= exp && now < exp => {
            let from = due.at.max(now);
            Some(from + (exp - from) / 2)
        }
        (nb, _) => nb,
    };
    match not_before {
        Some(nb) if nb > due.at => Due {
            at: nb,
            reason: DueReason::Retry,
            detail: format!("retry not before {} ({})", rfc3339(nb), due.detail),
            slot: due.slot,
        },
        _ => due,
    }
}

/// Moves `due` into the next window if it falls outside all of them, unless
/// that would push it to or past the token's expiry.
fn place_in_windows(
    mut due: Due,
    windows: &[Window],
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Due {
    // A time in the past is acted on now, so "now" is what must be allowed.
    let effective = due.at.max(now);
    if in_window(windows, effective) {
        return due;
    }
    let Some(opening) = next_window_start(windows, effective) else {
        return due;
    };
    match expires_at {
        Some(expiry) if opening >= expiry => {
            due.detail.push_str(&format!(
                ", outside the rotation windows because the next one opens at {}, after the token expires",
                rfc3339(opening)
            ));
        }
        _ => {
            due.detail.push_str(&format!(
                ", moved into the rotation window opening at {}",
                rfc3339(opening)
            ));
            due.at = opening;
        }
    }
    due
}
