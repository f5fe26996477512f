//! `rotate` killed at each of the driver's crash points, then the daemon
//! restarted on the same store.

use super::{VERIFY_FAILS, VERIFY_OK, World};

/// How the rotation killed at a crash point must end after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The killed run created nothing that survives: the first token is
    /// current.
    Unchanged,
    /// Either completed or rolled back; both are safe.
    Either,
    /// The new token is current and the old one revoked.
    Completed,
    /// The old token is current again, the new one revoked.
    RolledBack,
}

/// What the store and MotherDuck show right after the kill, proving the
/// process died where the test means it to.
struct AfterCrash {
    /// The journal state of the current record.
    state: &'static str,
    /// Whether a staged record is waiting.
    pending: bool,
    /// Live tokens of the service account.
    live: usize,
}

/// [`AfterCrash`] in one line: journal state, pending, live tokens.
fn after(state: &'static str, pending: bool, live: usize) -> AfterCrash {
    AfterCrash {
        state,
        pending,
        live,
    }
}

async fn crash_and_recover(point: &str, after: AfterCrash, outcome: Outcome) {
    let w = World::new().await;
    let good = w.config("good", VERIFY_OK);
    let crash_cfg = super::crash_config(point, &good, || w.config("failing", VERIFY_FAILS));

    // The first token, without crashing.
    w.rotate_ok("first", &good).await;
    let first = w.assert_converged();
    let first_id = first["token_id"].as_str().unwrap().to_owned();

    // The rotation, killed at the crash point.
    w.rotate_killed_at(&crash_cfg, point).await;
    let issued_by_crash = w.issued_count() - 1;
    let cur = w.current().unwrap();
    assert_eq!(
        (
            cur["rotation"]["state"].as_str().unwrap(),
            w.store().join("etl.json.pending").exists(),
            w.live_ids().len(),
        ),
        (after.state, after.pending, after.live),
        "state after the kill at `{point}` (journal state, pending, live tokens)\n{}",
        w.logs()
    );

    // The daemon restarts on the same store and recovers.
    let mut daemon = w.bin().spawn("daemon", &good, &["run"], None);
    let cur = w
        .converged_after_a_pass(&mut daemon, point, World::converged)
        .await;
    w.assert_stored_token_works().await;

    let id = cur["token_id"].as_str().unwrap();
    let state = cur["rotation"]["state"].as_str().unwrap();
    match outcome {
        Outcome::Unchanged => {
            assert_eq!(id, first_id, "{}", w.logs());
        }
        Outcome::Completed => {
            assert_ne!(id, first_id, "{}", w.logs());
            assert_eq!(state, "done");
        }
        Outcome::RolledBack => {
            assert_eq!(id, first_id, "{}", w.logs());
            assert_eq!(state, "rolled_back");
        }
        Outcome::Either => {}
    }
    // Whatever the killed run created is stored or revoked, and the daemon
    // itself rotated nothing more (its schedule is a day away).
    assert_eq!(
        w.issued_count(),
        1 + issued_by_crash,
        "the restart created no token\n{}",
        w.logs()
    );

    w.stop_ok(&mut daemon).await;
    crate::support::log_lines::assert_unique_keys(&w.log("daemon.err"));
    crate::support::log_lines::assert_plain_text(&w.log("first.err"));
    // Still converged after shutdown.
    w.assert_converged();
}

/// One test per crash point: name, point, state after the kill, outcome.
macro_rules! crash_point_tests {
    ($($name:ident: $point:literal, $after:expr, $outcome:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_and_recover($point, $after, Outcome::$outcome).await;
        }
    )*};
}

crash_point_tests! {
    crash_before_create_then_restart_converges: "before-create", after("done", false, 1), Unchanged;
    crash_after_create_then_restart_revokes_the_unstored_token: "after-create", after("done", false, 2), Unchanged;
    crash_after_stage_then_restart_converges: "after-stage", after("done", true, 2), Either;
    crash_before_promote_then_restart_converges: "before-promote", after("done", true, 2), Either;
    crash_after_promote_then_restart_completes: "after-promote", after("promoted", false, 2), Completed;
    crash_after_verify_then_restart_completes: "after-verify", after("verified", false, 2), Completed;
    crash_after_revoke_old_then_restart_completes: "after-revoke-old", after("verified", false, 1), Completed;
    crash_after_restore_then_restart_revokes_the_new_token: "after-restore", after("rolled_back", false, 2), RolledBack;
}
