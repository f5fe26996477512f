//! What the staging labels, the records and the journal companion mean:
//! [`interpret`] turns one snapshot into a [`DestinationView`].

use std::collections::HashMap;

use crate::stores::{DestinationView, JournalState, RecordView};

use super::record::JournalDoc;
use super::{CURRENT, PENDING, PREVIOUS};

/// Which version carries each staging label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Labels {
    pub(super) current: Option<String>,
    pub(super) pending: Option<String>,
    pub(super) previous: Option<String>,
}

impl Labels {
    pub(super) fn from_stages(map: Option<&HashMap<String, Vec<String>>>) -> Labels {
        let mut labels = Labels::default();
        for (version, stages) in map.into_iter().flatten() {
            for stage in stages {
                let slot = match stage.as_str() {
                    CURRENT => &mut labels.current,
                    PENDING => &mut labels.pending,
                    PREVIOUS => &mut labels.previous,
                    _ => continue,
                };
                *slot = Some(version.clone());
            }
        }
        labels
    }

    pub(super) fn is(&self, label: &str, version: &str) -> bool {
        let slot = match label {
            CURRENT => &self.current,
            PENDING => &self.pending,
            _ => &self.previous,
        };
        slot.as_deref() == Some(version)
    }

    /// The labelled versions, each once.
    pub(super) fn ids(&self) -> impl Iterator<Item = &str> {
        let mut seen: Vec<&str> = Vec::with_capacity(3);
        for v in [&self.current, &self.pending, &self.previous]
            .into_iter()
            .flatten()
        {
            if !seen.contains(&v.as_str()) {
                seen.push(v);
            }
        }
        seen.into_iter()
    }
}

/// What the labels, the records (by version id, with the journal each was
/// staged with) and the journal companion mean, in the terms of the file
/// store:
///
/// - the current record is the `AWSCURRENT` version, with the companion's
///   journal when the companion annotates that version, otherwise with its
///   staging-time journal (a promotion that has not recorded its journal
///   yet). It is absent while that version is also `AWSPENDING` and not
///   annotated (staged, not promoted: the first version of a secret gets
///   `AWSCURRENT` from AWS), and absent when the companion records the
///   rollback of that very version's rotation (a first token rolled back:
///   nothing usable is left);
/// - the pending record is the `AWSPENDING` version, unless its rotation was
///   rolled back or it is already current and annotated (a leftover label);
/// - the previous record is the `AWSPREVIOUS` version, unless its rotation
///   was rolled back. Its journal is not kept.
///
/// A rollback whose journal is written but whose `AWSCURRENT` has not moved
/// back yet reads as the rotation still under way.
pub(super) fn interpret(
    labels: &Labels,
    records: &HashMap<String, RecordView>,
    journal: Option<&JournalDoc>,
) -> DestinationView {
    let annotates = |v: &str| journal.is_some_and(|j| j.version_id == v);
    let rolled_back = journal
        .filter(|j| j.rotation.state == JournalState::RolledBack)
        .map(|j| j.rotation.rotation_id.as_str());
    fn record<'a>(
        v: &'a Option<String>,
        records: &'a HashMap<String, RecordView>,
    ) -> Option<(&'a str, &'a RecordView)> {
        v.as_deref().and_then(|id| records.get(id).map(|r| (id, r)))
    }

    let current = record(&labels.current, records).and_then(|(id, r)| {
        let undone = rolled_back == Some(r.meta.rotation_id.as_str());
        if undone && annotates(id) {
            return None;
        }
        if !undone && labels.is(PENDING, id) && !annotates(id) {
            return None;
        }
        Some(RecordView {
            meta: r.meta.clone(),
            journal: if annotates(id) {
                journal.map(|j| j.rotation.clone())
            } else {
                r.journal.clone()
            },
        })
    });
    let pending = record(&labels.pending, records).and_then(|(id, r)| {
        let undone = rolled_back == Some(r.meta.rotation_id.as_str());
        let leftover = labels.is(CURRENT, id) && annotates(id);
        (!undone && !leftover).then(|| r.clone())
    });
    let previous = record(&labels.previous, records).and_then(|(id, r)| {
        let undone = rolled_back == Some(r.meta.rotation_id.as_str());
        (!undone && !labels.is(CURRENT, id)).then(|| RecordView {
            meta: r.meta.clone(),
            journal: None,
        })
    });
    // A promotion that stopped after the journal annotated the new current
    // version but before its `AWSPENDING` label was removed: the view shows
    // no pending record (the version is current), and the promotion is
    // reported unfinished so it is completed.
    let current_partial = labels
        .current
        .as_deref()
        .is_some_and(|id| labels.is(PENDING, id) && annotates(id) && current.is_some());
    DestinationView {
        current,
        pending,
        previous,
        current_partial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::Journal;

    use crate::rotation::plan::tests::t;
    use crate::rotation::plan::{self, DestStatus, Step};

    /// The journal of rotation `rid`, the policy's first.
    fn journal(rid: &str, state: JournalState) -> Journal {
        plan::tests::journal(rid, state, None)
    }

    fn view(rid: &str) -> RecordView {
        plan::tests::rec(rid, Some(journal(rid, JournalState::Staged)))
    }

    /// Versions `v-<rid>` for each rotation id.
    fn records(rids: &[&str]) -> HashMap<String, RecordView> {
        rids.iter().map(|r| (format!("v-{r}"), view(r))).collect()
    }

    fn labels(current: Option<&str>, pending: Option<&str>, previous: Option<&str>) -> Labels {
        let v = |r: Option<&str>| r.map(|r| format!("v-{r}"));
        Labels {
            current: v(current),
            pending: v(pending),
            previous: v(previous),
        }
    }

    fn doc(rid_of_version: &str, j: Journal) -> JournalDoc {
        JournalDoc {
            version_id: format!("v-{rid_of_version}"),
            rotation: j,
        }
    }

    fn status(v: &DestinationView, rid: &str) -> DestStatus {
        plan::statuses(std::slice::from_ref(v), rid)[0]
    }

    fn step(v: &DestinationView) -> Step {
        plan::decide(
            std::slice::from_ref(v),
            t("11:00:00"),
            (t("23:00:00"), "schedule".into()),
        )
    }

    #[test]
    fn staged_first_version_is_pending_not_current() {
        // AWS labels a secret's first version AWSCURRENT as well.
        let v = interpret(
            &labels(Some("r1"), Some("r1"), None),
            &records(&["r1"]),
            None,
        );
        assert!(v.current.is_none());
        assert_eq!(status(&v, "r1"), DestStatus::Staged);
        assert!(matches!(step(&v), Step::Promote { .. }));
    }

    #[test]
    fn promotion_interrupted_at_each_point_resumes() {
        let recs = records(&["r1", "r2"]);
        let old = Some(doc("r1", journal("r1", JournalState::Done)));
        // AWSCURRENT moved, AWSPENDING not yet removed: promote again.
        let v = interpret(
            &labels(Some("r2"), Some("r2"), Some("r1")),
            &recs,
            old.as_ref(),
        );
        assert_eq!(status(&v, "r2"), DestStatus::Staged);
        assert!(matches!(step(&v), Step::Promote { .. }));
        // Journal written for the new version, AWSPENDING still on it (the
        // last part of promote): not promoted yet, promote again.
        let promoted = doc("r2", journal("r2", JournalState::Promoted));
        let v = interpret(
            &labels(Some("r2"), Some("r2"), Some("r1")),
            &recs,
            Some(&promoted),
        );
        assert!(v.current_partial, "a leftover AWSPENDING is unfinished");
        assert_eq!(status(&v, "r2"), DestStatus::Promoting);
        assert!(matches!(step(&v), Step::Promote { .. }));
        // AWSPENDING removed before the journal (the order of earlier
        // versions): what consumers read is promoted; verify.
        let v = interpret(&labels(Some("r2"), None, Some("r1")), &recs, old.as_ref());
        assert_eq!(status(&v, "r2"), DestStatus::Promoted);
        assert!(matches!(step(&v), Step::Verify { .. }));
        // Journal written.
        let j = doc("r2", journal("r2", JournalState::Promoted));
        let v = interpret(&labels(Some("r2"), None, Some("r1")), &recs, Some(&j));
        assert_eq!(status(&v, "r2"), DestStatus::Promoted);
        assert_eq!(v.previous.unwrap().meta.rotation_id, "r1");
    }

    #[test]
    fn rollback_commits_when_awscurrent_moves_back() {
        let recs = records(&["r1", "r2"]);
        let rb = journal("r2", JournalState::RolledBack);
        // Journal written for the version to restore, labels not moved:
        // still the rotation under way, as a file store before its rename.
        let v = interpret(
            &labels(Some("r2"), None, Some("r1")),
            &recs,
            Some(&doc("r1", rb.clone())),
        );
        assert_eq!(v.current.as_ref().unwrap().meta.rotation_id, "r2");
        assert_eq!(status(&v, "r2"), DestStatus::Promoted);
        // AWSCURRENT moved back; AWS put AWSPREVIOUS on the undone version.
        let v = interpret(
            &labels(Some("r1"), None, Some("r2")),
            &recs,
            Some(&doc("r1", rb.clone())),
        );
        assert_eq!(status(&v, "r2"), DestStatus::RolledBack);
        assert!(v.previous.is_none(), "the undone version is not previous");
        assert!(v.pending.is_none());
        let cur = v.current.as_ref().unwrap();
        assert_eq!(cur.meta.rotation_id, "r1");
        assert_eq!(cur.journal.as_ref(), Some(&rb));
        assert!(matches!(step(&v), Step::Wait { .. }));
    }

    #[test]
    fn rollback_before_promotion_hides_the_pending_version() {
        let recs = records(&["r1", "r2"]);
        let rb = journal("r2", JournalState::RolledBack);
        // The pending label is still there (removed right after).
        let v = interpret(
            &labels(Some("r1"), Some("r2"), None),
            &recs,
            Some(&doc("r1", rb)),
        );
        assert!(v.pending.is_none());
        assert_eq!(status(&v, "r2"), DestStatus::RolledBack);
        assert!(
            matches!(step(&v), Step::Wait { .. }),
            "no rollback loop over a leftover label"
        );
    }

    #[test]
    fn first_token_rolled_back_leaves_no_current_record() {
        let recs = records(&["r1"]);
        let rb = journal("r1", JournalState::RolledBack);
        let v = interpret(&labels(Some("r1"), None, None), &recs, Some(&doc("r1", rb)));
        assert_eq!(v, DestinationView::default());
        assert!(matches!(step(&v), Step::Begin { .. }));
    }

    #[test]
    fn finished_rotation_keeps_its_journal() {
        let recs = records(&["r1", "r2", "r3"]);
        let done = journal("r2", JournalState::Done);
        let v = interpret(
            &labels(Some("r2"), Some("r3"), None),
            &recs,
            Some(&doc("r2", done.clone())),
        );
        assert_eq!(v.current.unwrap().journal, Some(done));
        assert_eq!(v.pending.unwrap().meta.rotation_id, "r3");
    }
}
