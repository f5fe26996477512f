//! The rotation state machine: given what the destinations hold and the
//! time, decide the next step. No IO, no clock.
//!
//! The machine is level-triggered: it looks at the journals stored in the
//! destination records and says what to do next, and the driver re-reads
//! the records after every step. Recovery after a crash is therefore the
//! same code path as normal progress: whatever step the records show as
//! unfinished is the next step.
//!
//! ```text
//! claim → create → stage → promote → verify → (overlap) → revoke old → done
//!                               └─ verify failed → restore old → revoke new
//! ```

use chrono::{DateTime, Utc};

use crate::stores::{DestinationView, Journal, JournalState};

/// Where one destination stands with respect to the active rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestStatus {
    /// Holds nothing of this rotation.
    Absent,
    /// Holds the new token staged (pending).
    Staged,
    /// The new token is current in the record, but the promotion did not
    /// finish: a part consumers read still holds the old token, or the
    /// staged copy is left ([`DestinationView::current_settled`]).
    Promoting,
    /// The new token is current; journal `Promoted`.
    Promoted,
    /// The new token is current; journal `Verified`.
    Verified,
    /// The new token is current; journal `Done`.
    Done,
    /// Restored to the previous token; journal `RolledBack`.
    RolledBack,
}

/// The next step for a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do before `until`.
    Wait {
        until: DateTime<Utc>,
        why: WaitReason,
    },
    /// Start a rotation replacing `previous_token_id`.
    Begin {
        previous_token_id: Option<String>,
        /// Consecutive failures so far, carried into the new journal.
        failures: u32,
        why: String,
    },
    /// Stage the new token in the destinations at these indexes.
    Stage { journal: Journal, dests: Vec<usize> },
    /// Promote the staged token in these destinations.
    Promote { journal: Journal, dests: Vec<usize> },
    /// Run the verification hooks against the new token.
    Verify { journal: Journal },
    /// Finish a promotion in these destinations whose record already holds
    /// the rotation's token (a part consumers read, or the removal of the
    /// staged copy, is missing), without changing the journal's state.
    Settle { journal: Journal, dests: Vec<usize> },
    /// Record `Verified` (with `revoke_after`) in these destinations.
    MarkVerified { journal: Journal, dests: Vec<usize> },
    /// Revoke the previous token, then record `Done` everywhere.
    RevokeOld { journal: Journal },
    /// Finish restoring the previous token in these destinations, then
    /// revoke the new one.
    ContinueRollback { journal: Journal, dests: Vec<usize> },
    /// The records contradict each other; an operator must look.
    Inconsistent { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The schedule says when; `detail` explains.
    Schedule(String),
    /// The overlap period before the old token is revoked.
    Overlap,
}

/// Since when the policy's replaced token should have been revoked and is
/// not yet: the rotation is verified, its overlap is over, and the old
/// token is still to be revoked. `None` otherwise.
pub fn superseded_since(views: &[DestinationView], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    last_journal(views)
        .filter(|j| j.state == JournalState::Verified && j.previous_token_id.is_some())
        .and_then(|j| j.revoke_after)
        .filter(|t| *t <= now)
}

/// The policy's failed rotations since its last success, as the records
/// say: the count the last journal carries while it is rolled back, else 0.
pub fn failures_in_a_row(views: &[DestinationView]) -> u32 {
    last_journal(views)
        .filter(|j| j.state == JournalState::RolledBack)
        .map_or(0, |j| j.failures)
}

/// Status of each destination for `journal.rotation_id`.
pub fn statuses(views: &[DestinationView], rotation_id: &str) -> Vec<DestStatus> {
    views
        .iter()
        .map(|v| {
            let cur = v
                .current
                .as_ref()
                .filter(|c| c.meta.rotation_id == rotation_id);
            if let Some(c) = cur {
                if !v.current_settled() {
                    return DestStatus::Promoting;
                }
                return match c.journal.as_ref().map(|j| j.state) {
                    Some(JournalState::Verified) => DestStatus::Verified,
                    Some(JournalState::Done) => DestStatus::Done,
                    Some(JournalState::RolledBack) => DestStatus::RolledBack,
                    _ => DestStatus::Promoted,
                };
            }
            let rolled_back = v.current.as_ref().is_some_and(|c| {
                c.journal.as_ref().is_some_and(|j| {
                    j.rotation_id == rotation_id && j.state == JournalState::RolledBack
                })
            });
            if rolled_back {
                return DestStatus::RolledBack;
            }
            if v.pending
                .as_ref()
                .is_some_and(|p| p.meta.rotation_id == rotation_id)
            {
                return DestStatus::Staged;
            }
            DestStatus::Absent
        })
        .collect()
}

/// The journal of the unfinished rotation, if any: the newest active
/// journal found in a current or pending record. A staged copy left behind
/// by a rotation that a current record shows as done does not make it
/// active again.
///
/// # Errors
/// Two different rotations are both active.
pub fn active_journal(views: &[DestinationView]) -> Result<Option<Journal>, String> {
    let finished = |rid: &str| {
        views.iter().any(|v| {
            v.current.as_ref().is_some_and(|c| {
                c.meta.rotation_id == rid
                    && c.journal
                        .as_ref()
                        .is_some_and(|j| j.rotation_id == rid && j.state == JournalState::Done)
            })
        })
    };
    let mut found: Option<Journal> = None;
    for v in views {
        let staged = v
            .pending
            .as_ref()
            .filter(|p| !p.journal.as_ref().is_some_and(|j| finished(&j.rotation_id)));
        for r in [v.current.as_ref(), staged].into_iter().flatten() {
            let Some(j) = &r.journal else { continue };
            if !j.state.is_active() {
                continue;
            }
            match &found {
                None => found = Some(j.clone()),
                Some(f) if f.rotation_id == j.rotation_id => {
                    // Prefer the most advanced copy.
                    if rank(j.state) > rank(f.state) {
                        found = Some(j.clone());
                    }
                }
                Some(f) => {
                    return Err(format!(
                        "rotations `{}` and `{}` are both unfinished",
                        f.rotation_id, j.rotation_id
                    ));
                }
            }
        }
    }
    Ok(found)
}

fn rank(s: JournalState) -> u8 {
    match s {
        JournalState::Staged => 0,
        JournalState::Promoted => 1,
        JournalState::Verified => 2,
        JournalState::Done | JournalState::RolledBack => 3,
    }
}

/// The journal describing the latest finished rotation, for failure counts
/// and retry times: the newest by `updated_at` among current records.
pub fn last_journal(views: &[DestinationView]) -> Option<&Journal> {
    views
        .iter()
        .filter_map(|v| v.current.as_ref()?.journal.as_ref())
        .max_by_key(|j| j.updated_at)
}

/// Indexes of destinations whose status is one of `which`.
fn where_status(st: &[DestStatus], which: &[DestStatus]) -> Vec<usize> {
    st.iter()
        .enumerate()
        .filter(|(_, s)| which.contains(s))
        .map(|(i, _)| i)
        .collect()
}

/// Decides the next step.
///
/// `due` is when the schedule wants the next rotation (computed from the
/// current token's times and any retry backoff), with a human reason;
/// `now` is the wall clock.
pub fn decide(views: &[DestinationView], now: DateTime<Utc>, due: (DateTime<Utc>, String)) -> Step {
    let journal = match active_journal(views) {
        Ok(j) => j,
        Err(reason) => return Step::Inconsistent { reason },
    };
    let Some(journal) = journal else {
        return idle(views, now, due);
    };
    let st = statuses(views, &journal.rotation_id);
    use DestStatus::*;

    if st.contains(&RolledBack) {
        let mut rest = where_status(&st, &[Staged, Promoting, Promoted, Verified]);
        // A destination whose rollback was interrupted after the current
        // record was restored but before the staged one was removed still
        // needs its rollback finished (regression: without this the staged
        // record kept the rotation "active" with nothing left to do, and
        // the driver looped).
        for (i, v) in views.iter().enumerate() {
            let stale_pending = v
                .pending
                .as_ref()
                .is_some_and(|p| p.meta.rotation_id == journal.rotation_id);
            if st[i] == RolledBack && stale_pending && !rest.contains(&i) {
                rest.push(i);
            }
        }
        rest.sort_unstable();
        // Carry on with the journal the rollback wrote (reason, failure
        // count, retry time), not the active copy.
        let rolled = views
            .iter()
            .filter_map(|v| v.current.as_ref()?.journal.as_ref())
            .find(|j| j.rotation_id == journal.rotation_id && j.state == JournalState::RolledBack)
            .cloned()
            .unwrap_or(Journal {
                state: JournalState::RolledBack,
                ..journal
            });
        return Step::ContinueRollback {
            journal: rolled,
            dests: rest,
        };
    }
    match journal.state {
        JournalState::Staged | JournalState::Promoted => {
            let absent = where_status(&st, &[Absent]);
            if !absent.is_empty() {
                // The secret comes from memory, or from a staged or
                // promoted destination after a restart.
                return Step::Stage {
                    journal: Journal {
                        state: JournalState::Staged,
                        ..journal
                    },
                    dests: absent,
                };
            }
            let staged = where_status(&st, &[Staged, Promoting]);
            if !staged.is_empty() {
                return Step::Promote {
                    journal: Journal {
                        state: JournalState::Promoted,
                        ..journal
                    },
                    dests: staged,
                };
            }
            Step::Verify {
                journal: Journal {
                    state: JournalState::Promoted,
                    ..journal
                },
            }
        }
        JournalState::Verified => {
            // Verified only after every destination was promoted; one that
            // fell behind since (a part consumers read was reverted) is
            // brought back first, before its old token can be revoked.
            let unsettled = where_status(&st, &[Promoting]);
            if !unsettled.is_empty() {
                return Step::Settle {
                    journal,
                    dests: unsettled,
                };
            }
            // A destination that lost its record, was restored from a
            // backup, or was added by a reload: the verified token is
            // staged and promoted there too before the old one goes.
            let absent = where_status(&st, &[Absent]);
            if !absent.is_empty() {
                return Step::Stage {
                    journal,
                    dests: absent,
                };
            }
            let staged = where_status(&st, &[Staged]);
            if !staged.is_empty() {
                return Step::Promote {
                    journal,
                    dests: staged,
                };
            }
            let behind = where_status(&st, &[Promoted]);
            if !behind.is_empty() {
                return Step::MarkVerified {
                    journal,
                    dests: behind,
                };
            }
            match journal.revoke_after {
                Some(t) if t > now => Step::Wait {
                    until: t,
                    why: WaitReason::Overlap,
                },
                _ => Step::RevokeOld { journal },
            }
        }
        // Not active; `active_journal` filtered these out.
        JournalState::Done | JournalState::RolledBack => idle(views, now, due),
    }
}

/// No rotation under way: begin one when due, or when a destination lacks
/// the current token.
fn idle(views: &[DestinationView], now: DateTime<Utc>, due: (DateTime<Utc>, String)) -> Step {
    // A finished rotation whose promotion was left unfinished somewhere (a
    // bare file still holding the old token, a staged copy left behind):
    // finish it before anything else.
    let mut settle: Option<(Journal, Vec<usize>)> = None;
    for (i, v) in views.iter().enumerate() {
        if v.current_settled() {
            continue;
        }
        let Some(j) = v.current.as_ref().and_then(|c| {
            c.journal
                .as_ref()
                .filter(|j| j.rotation_id == c.meta.rotation_id && j.state == JournalState::Done)
        }) else {
            continue;
        };
        match &mut settle {
            None => settle = Some((j.clone(), vec![i])),
            Some((s, dests)) if s.rotation_id == j.rotation_id => dests.push(i),
            Some(_) => {}
        }
    }
    if let Some((journal, dests)) = settle {
        return Step::Settle { journal, dests };
    }
    let failures = failures_in_a_row(views);
    // Every destination's current token, newest first.
    let mut currents: Vec<_> = views.iter().filter_map(|v| v.current.as_ref()).collect();
    currents.sort_by_key(|c| std::cmp::Reverse(c.meta.created_at));
    let previous_token_id = currents.first().map(|c| c.meta.token_id.clone());

    let missing = views.iter().filter(|v| v.current.is_none()).count();
    let disagree = currents
        .windows(2)
        .any(|w| w[0].meta.token_id != w[1].meta.token_id);
    let retry_at = last_journal(views)
        .filter(|j| j.state == JournalState::RolledBack)
        .and_then(|j| j.retry_at);
    let backing_off = retry_at.is_some_and(|t| t > now);

    if (missing > 0 || disagree) && !backing_off {
        let why = if currents.is_empty() {
            "no token stored yet".to_owned()
        } else if missing > 0 {
            format!("{missing} destination(s) hold no token")
        } else {
            "destinations hold different tokens".to_owned()
        };
        return Step::Begin {
            previous_token_id,
            failures,
            why,
        };
    }
    let (at, why) = due;
    if at <= now {
        Step::Begin {
            previous_token_id,
            failures,
            why,
        }
    } else {
        Step::Wait {
            until: at,
            why: WaitReason::Schedule(why),
        }
    }
}

/// What to do after a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Try the same step again after this delay.
    Retry(std::time::Duration),
    /// Give up on this rotation: restore the old token, revoke the new.
    RollBack,
}

/// Retry settings of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per step before the rotation is rolled back.
    pub max_attempts: u32,
    /// First delay between attempts and after a rolled-back rotation.
    pub initial_backoff: std::time::Duration,
    /// Largest delay.
    pub max_backoff: std::time::Duration,
}

impl RetryPolicy {
    /// Delay before attempt `n + 1` (n ≥ 1): doubling from the initial
    /// backoff, capped. Jitter is added by the driver.
    pub fn backoff(&self, n: u32) -> std::time::Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(20));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// After `attempts` failed attempts at a step.
    pub fn on_failure(&self, attempts: u32, retryable: bool) -> OnFailure {
        if retryable && attempts < self.max_attempts {
            OnFailure::Retry(self.backoff(attempts))
        } else {
            OnFailure::RollBack
        }
    }

    /// When the next rotation may start after `failures` consecutive
    /// rolled-back rotations.
    pub fn retry_at(&self, now: DateTime<Utc>, failures: u32) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.backoff(failures.max(1)))
            .unwrap_or(chrono::Duration::MAX)
    }
}

/// Also the record fixtures of other modules' tests.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::motherduck::TokenType;
    use crate::stores::{RecordView, TokenMeta};

    pub(crate) fn t(s: &str) -> DateTime<Utc> {
        format!("2026-05-01T{s}Z").parse().unwrap()
    }

    fn meta(rid: &str, created: &str) -> TokenMeta {
        TokenMeta {
            token_id: format!("tok-{rid}"),
            token_name: format!("rotator.p.{rid}"),
            service_account: "svc".into(),
            token_type: TokenType::ReadWrite,
            created_at: t(created),
            expires_at: None,
            rotation_id: rid.into(),
        }
    }

    /// The journal of rotation `rid` (token `tok-<rid>`, replacing
    /// `tok-<prev>`), started at 10:00.
    pub(crate) fn journal(rid: &str, state: JournalState, prev: Option<&str>) -> Journal {
        Journal {
            rotation_id: rid.into(),
            state,
            previous_token_id: prev.map(|p| format!("tok-{p}")),
            new_token_id: format!("tok-{rid}"),
            started_at: t("10:00:00"),
            updated_at: t("10:00:00"),
            revoke_after: None,
            last_error: None,
            failures: 0,
            retry_at: None,
            acknowledged_at: None,
            reloaded_at: None,
            reload_note: None,
        }
    }

    /// The record of rotation `rid`'s token, created at 10:00.
    pub(crate) fn rec(rid: &str, j: Option<Journal>) -> RecordView {
        RecordView {
            meta: meta(rid, "10:00:00"),
            journal: j,
        }
    }

    /// A destination holding `current` (rotation id + journal state) and
    /// optionally a pending record.
    fn dest(
        current: Option<(&str, JournalState)>,
        pending: Option<(&str, JournalState)>,
    ) -> DestinationView {
        DestinationView {
            current: current.map(|(r, s)| rec(r, Some(journal(r, s, Some("r0"))))),
            pending: pending.map(|(r, s)| rec(r, Some(journal(r, s, Some("r0"))))),
            previous: None,
            current_partial: false,
        }
    }

    const NOW: &str = "12:00:00";

    fn not_due() -> (DateTime<Utc>, String) {
        (t("13:00:00"), "interval".into())
    }

    fn check(views: &[DestinationView], want: &str) {
        let got = describe(&decide(views, t(NOW), not_due()));
        assert_eq!(got, want, "views: {views:#?}");
    }

    /// A compact description of a step for table-driven checks.
    fn describe(s: &Step) -> String {
        match s {
            Step::Wait { until, why } => format!("wait {} {why:?}", until.format("%H:%M")),
            Step::Begin {
                previous_token_id,
                failures,
                why,
            } => format!("begin prev={previous_token_id:?} failures={failures} ({why})"),
            Step::Stage { journal, dests } => format!("stage {} {dests:?}", journal.rotation_id),
            Step::Promote { journal, dests } => {
                format!("promote {} {dests:?}", journal.rotation_id)
            }
            Step::Verify { journal } => format!("verify {}", journal.rotation_id),
            Step::MarkVerified { journal, dests } => {
                format!("mark-verified {} {dests:?}", journal.rotation_id)
            }
            Step::RevokeOld { journal } => format!(
                "revoke-old {} {:?}",
                journal.rotation_id, journal.previous_token_id
            ),
            Step::ContinueRollback { journal, dests } => {
                format!("rollback {} {dests:?}", journal.rotation_id)
            }
            Step::Settle { journal, dests } => {
                format!("settle {} {dests:?}", journal.rotation_id)
            }
            Step::Inconsistent { reason } => format!("inconsistent: {reason}"),
        }
    }

    /// `dest` whose bare token file (or other consumer-read part) lags.
    fn partial(v: DestinationView) -> DestinationView {
        DestinationView {
            current_partial: true,
            ..v
        }
    }

    /// Regression: a destination counted as promoted as soon as its record
    /// carried the rotation id, though its staged copy and its bare token
    /// file said otherwise; the rotation went on to verify and revoked the
    /// old token the bare file still held.
    #[test]
    fn a_promotion_is_finished_only_when_every_part_is() {
        // The record was renamed; the staged copy is still there.
        check(
            &[dest(Some(("r2", Promoted)), Some(("r2", Staged)))],
            "promote r2 [0]",
        );
        // The record was renamed; the bare file holds the old token.
        check(
            &[partial(dest(Some(("r2", Promoted)), None))],
            "promote r2 [0]",
        );
        // Two destinations: the first done, the second half-way.
        check(
            &[
                dest(Some(("r2", Promoted)), None),
                dest(Some(("r2", Promoted)), Some(("r2", Staged))),
            ],
            "promote r2 [1]",
        );
        check(
            &[
                partial(dest(Some(("r2", Promoted)), None)),
                dest(Some(("r1", Done)), Some(("r2", Staged))),
            ],
            "promote r2 [0, 1]",
        );
        // Verified, then a part fell behind: finished before any revoke.
        check(
            &[partial(dest(Some(("r2", Verified)), None))],
            "settle r2 [0]",
        );
    }

    /// Regression: the staged copy a finished rotation left behind kept it
    /// "active"; the policy looped verify, revoke (404), "rotation
    /// complete" and never rotated again.
    #[test]
    fn a_finished_rotations_leftover_staged_copy_does_not_keep_it_active() {
        check(
            &[dest(Some(("r2", Done)), Some(("r2", Staged)))],
            "settle r2 [0]",
        );
        check(
            &[
                dest(Some(("r2", Done)), None),
                partial(dest(Some(("r2", Done)), Some(("r2", Staged)))),
            ],
            "settle r2 [1]",
        );
        // Done in one destination only: the other still finishes.
        check(
            &[
                dest(Some(("r2", Done)), None),
                dest(Some(("r2", Verified)), None),
            ],
            "revoke-old r2 Some(\"tok-r0\")",
        );
        // Settled: idle again, and due rotations begin.
        check(
            &[dest(Some(("r2", Done)), None)],
            "wait 13:00 Schedule(\"interval\")",
        );
    }

    use JournalState::*;

    #[test]
    fn idle_states() {
        // Nothing stored: begin at once.
        check(
            &[DestinationView::default()],
            "begin prev=None failures=0 (no token stored yet)",
        );
        // Done and not due: wait for the schedule.
        check(
            &[dest(Some(("r1", Done)), None)],
            "wait 13:00 Schedule(\"interval\")",
        );
        // One destination missing the token: begin.
        check(
            &[dest(Some(("r1", Done)), None), DestinationView::default()],
            "begin prev=Some(\"tok-r1\") failures=0 (1 destination(s) hold no token)",
        );
        // Due: begin, replacing the current token.
        let got = decide(
            &[dest(Some(("r1", Done)), None)],
            t(NOW),
            (t("11:59:00"), "cron slot".into()),
        );
        assert_eq!(
            describe(&got),
            "begin prev=Some(\"tok-r1\") failures=0 (cron slot)"
        );
    }

    #[test]
    fn forward_progress_across_destinations() {
        // Staged in one, absent in the other: stage the missing one.
        check(
            &[
                dest(Some(("r1", Done)), Some(("r2", Staged))),
                dest(Some(("r1", Done)), None),
            ],
            "stage r2 [1]",
        );
        // Staged everywhere: promote all.
        check(
            &[
                dest(Some(("r1", Done)), Some(("r2", Staged))),
                dest(Some(("r1", Done)), Some(("r2", Staged))),
            ],
            "promote r2 [0, 1]",
        );
        // Promoted in one, staged in the other: promote the rest.
        check(
            &[
                dest(Some(("r2", Promoted)), None),
                dest(Some(("r1", Done)), Some(("r2", Staged))),
            ],
            "promote r2 [1]",
        );
        // Promoted everywhere: verify.
        check(
            &[
                dest(Some(("r2", Promoted)), None),
                dest(Some(("r2", Promoted)), None),
            ],
            "verify r2",
        );
        // Verified in one: record it in the other.
        check(
            &[
                dest(Some(("r2", Verified)), None),
                dest(Some(("r2", Promoted)), None),
            ],
            "mark-verified r2 [1]",
        );
    }

    #[test]
    fn overlap_then_revoke() {
        let mut j = journal("r2", Verified, Some("r1"));
        j.revoke_after = Some(t("12:30:00"));
        let view = DestinationView {
            current: Some(rec("r2", Some(j.clone()))),
            pending: None,
            previous: Some(rec("r1", Some(journal("r1", Done, None)))),
            current_partial: false,
        };
        check(std::slice::from_ref(&view), "wait 12:30 Overlap");
        let step = decide(&[view], t("12:30:00"), not_due());
        assert_eq!(describe(&step), "revoke-old r2 Some(\"tok-r1\")");
    }

    #[test]
    fn rollback_in_progress_is_finished() {
        let mut rolled = journal("r2", RolledBack, Some("r1"));
        rolled.failures = 1;
        let restored = DestinationView {
            current: Some(rec("r1", Some(rolled))),
            pending: None,
            previous: None,
            current_partial: false,
        };
        check(
            &[restored.clone(), dest(Some(("r2", Promoted)), None)],
            "rollback r2 [1]",
        );
        // All restored: nothing active; the failure count carries over and
        // the retry time is respected.
        let mut j = journal("r2", RolledBack, Some("r1"));
        j.failures = 2;
        j.retry_at = Some(t("12:10:00"));
        j.updated_at = t("11:00:00");
        let v = DestinationView {
            current: Some(rec("r1", Some(j))),
            pending: None,
            previous: None,
            current_partial: false,
        };
        let got = decide(
            std::slice::from_ref(&v),
            t(NOW),
            (t("12:10:00"), "retry".into()),
        );
        assert_eq!(describe(&got), "wait 12:10 Schedule(\"retry\")");
        let got = decide(&[v], t("12:10:00"), (t("12:10:00"), "retry".into()));
        assert_eq!(
            describe(&got),
            "begin prev=Some(\"tok-r1\") failures=2 (retry)"
        );
    }

    #[test]
    fn rollback_interrupted_before_the_staged_record_was_removed_is_finished() {
        let mut rolled = journal("r2", RolledBack, Some("r1"));
        rolled.failures = 1;
        let view = DestinationView {
            current: Some(rec("r1", Some(rolled))),
            pending: Some(rec("r2", Some(journal("r2", Staged, Some("r1"))))),
            previous: None,
            current_partial: false,
        };
        check(std::slice::from_ref(&view), "rollback r2 [0]");
        // Once the staged record is gone, nothing is active.
        let done = DestinationView {
            pending: None,
            ..view
        };
        check(&[done], "wait 13:00 Schedule(\"interval\")");
    }

    #[test]
    fn contradictions_are_reported() {
        check(
            &[
                dest(Some(("r2", Promoted)), None),
                dest(Some(("r3", Promoted)), None),
            ],
            "inconsistent: rotations `r2` and `r3` are both unfinished",
        );
    }

    /// Regression (issue: a destination that falls behind is never
    /// repaired): a verified rotation with a destination that lost its
    /// record, was restored from a backup or was added by a reload was
    /// "inconsistent" at every pass; the old token was never revoked and no
    /// rotation started again. The verified token is staged and promoted
    /// there, and only then is the old one revoked.
    #[test]
    fn a_verified_rotation_repairs_a_lagging_destination() {
        // Restored from a backup: it holds the token before.
        check(
            &[
                dest(Some(("r2", Verified)), None),
                dest(Some(("r1", Done)), None),
            ],
            "stage r2 [1]",
        );
        // Lost its record, or added by a reload.
        check(
            &[
                dest(Some(("r2", Verified)), None),
                DestinationView::default(),
            ],
            "stage r2 [1]",
        );
        check(
            &[
                dest(Some(("r2", Verified)), None),
                dest(Some(("r1", Done)), Some(("r2", Verified))),
            ],
            "promote r2 [1]",
        );
        check(
            &[
                dest(Some(("r2", Verified)), None),
                dest(Some(("r2", Verified)), None),
            ],
            "revoke-old r2 Some(\"tok-r0\")",
        );
    }

    #[test]
    fn retry_policy() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_backoff: std::time::Duration::from_secs(10),
            max_backoff: std::time::Duration::from_secs(25),
        };
        assert_eq!(p.backoff(1).as_secs(), 10);
        assert_eq!(p.backoff(2).as_secs(), 20);
        assert_eq!(p.backoff(3).as_secs(), 25);
        assert_eq!(p.backoff(1000).as_secs(), 25);
        assert_eq!(p.on_failure(1, true), OnFailure::Retry(p.backoff(1)));
        assert_eq!(p.on_failure(3, true), OnFailure::RollBack);
        assert_eq!(p.on_failure(1, false), OnFailure::RollBack);
        assert_eq!(p.retry_at(t(NOW), 0), t("12:00:10"));
    }
}
