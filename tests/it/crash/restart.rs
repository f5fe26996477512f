//! What a daemon started after a stop or a crash finishes.

use std::os::unix::process::ExitStatusExt;

use crate::support::daemon::{self, PATIENCE};

use super::{ROTATE, World};

/// SIGTERM while a rotation waits in verification: the daemon stops at a
/// safe point (exit 0) and the next start completes the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_verification_then_restart_completes() {
    let w = World::new().await;
    let (verify, gate) = w.gate("10ms", "30s");
    let cfg = w.config("gated", &format!("[{verify}]"));

    // The daemon creates the first token and waits in its verification.
    let mut daemon = w.bin().spawn("daemon1", &cfg, &["run"], None);
    w.eventually("never reached verification", async || {
        (w.current()
            .is_some_and(|c| c["rotation"]["state"] == "promoted")
            && w.log("daemon1.err").contains("verifying the new token"))
        .then_some(())
    })
    .await;
    w.stop_ok(&mut daemon).await;
    assert_eq!(
        w.current().unwrap()["rotation"]["state"],
        "promoted",
        "left for the next start, not rolled back"
    );

    std::fs::write(&gate, "").unwrap();
    let mut daemon = w.bin().spawn("daemon2", &cfg, &["run"], None);
    w.eventually("not converged", async || {
        (w.converged().is_ok() && w.passed("daemon2")).then_some(())
    })
    .await;
    assert_eq!(w.issued_count(), 1, "the same token was completed");
    w.assert_stored_token_works().await;
    w.stop_ok(&mut daemon).await;
}

/// A token created just before a crash is younger than `orphan_min_age`
/// when the daemon restarts, so the start-up sweep spares it; the daemon
/// sweeps that policy again as soon as the token is old enough, rather
/// than at the next periodic sweep (an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_orphan_is_revoked_once_old_enough_after_a_restart() {
    let w = World::new().await;
    let good = w.good_config(&[(r#"orphan_min_age = "0s""#, r#"orphan_min_age = "1500ms""#)]);
    w.rotate_ok("first", &good).await;
    let first_id = w.converged().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = w
        .bin()
        .run("crashed", &good, ROTATE, Some("after-create"))
        .await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", w.logs());
    assert_eq!(w.live_ids().len(), 2, "the crash left an unstored token");

    let mut daemon = w.bin().spawn("daemon", &good, &["run"], None);
    // The simulator sees the revocation a moment before the daemon logs
    // it, so wait for both.
    daemon::until_converged(
        &mut daemon,
        PATIENCE,
        "the orphan was never revoked",
        || w.logs(),
        async || {
            if w.live_ids() != [first_id.clone()] {
                return Err(format!("live tokens {:?}", w.live_ids()));
            }
            if !w.log("daemon.err").contains("orphaned token revoked") {
                return Err("no revocation logged".to_owned());
            }
            Ok(())
        },
    )
    .await;
    let log = w.log("daemon.err");
    assert!(
        log.contains("sweeping again once they are old enough"),
        "the start-up sweep found the token already old: the test proves nothing\n{log}"
    );
    w.stop_ok(&mut daemon).await;
    w.assert_converged();
}

/// A rotation started by a one-shot `rotate` while the daemon runs (or by
/// another replica) leaves its old token valid for the overlap, with
/// nothing in that process left to revoke it. The daemon, waiting for its
/// next rotation a day away, reads the records again every
/// `recheck_interval` and revokes the old token once the overlap ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_finishes_a_rotation_started_by_rotate() {
    let w = World::new().await;
    let good = w.good_config(&[
        (r#"overlap = "0s""#, r#"overlap = "1s""#),
        (
            r#"lock_retry_interval = "1s""#,
            "lock_retry_interval = \"1s\"\nrecheck_interval = \"1s\"",
        ),
    ]);
    w.rotate_ok("first", &good).await;
    let first_id = w.current_id();

    let mut daemon = w.bin().spawn("daemon", &good, &["run"], None);
    let started = tokio::time::Instant::now();
    w.eventually("", async || w.passed("daemon").then_some(()))
        .await;
    w.rotate_ok("second", &good).await;
    let second_id = w.current_id();
    assert_ne!(second_id, first_id);
    assert!(
        w.live_ids().contains(&first_id),
        "the old token stays valid for the overlap"
    );
    // Another `rotate` during the overlap cannot begin yet, and says why.
    w.run_refused(
        "third",
        &good,
        ROTATE,
        "third.out",
        "is in its overlap period until",
    )
    .await;
    assert_eq!(w.current().unwrap()["token_id"], second_id.as_str());
    daemon::until_converged(
        &mut daemon,
        PATIENCE.saturating_sub(started.elapsed()),
        "the daemon never revoked the old token",
        || w.logs(),
        async || {
            w.converged()?;
            if w.log("daemon.err").contains("old token revoked") {
                Ok(())
            } else {
                Err("no revocation logged".to_owned())
            }
        },
    )
    .await;
    assert_eq!(
        w.live_ids(),
        std::slice::from_ref(&second_id),
        "{}",
        w.logs()
    );

    // `rotate --wait` behind a rotation in its overlap waits for it to
    // end, then rotates, then waits out its own overlap.
    w.rotate_ok("fourth", &good).await;
    let fourth_id = w.current_id();
    let status = w
        .bin()
        .run("fifth", &good, &["rotate", "--wait", "etl"], None)
        .await;
    assert!(status.success(), "rotate --wait: {status}\n{}", w.logs());
    let cur = w.assert_converged();
    let fifth_id = cur["token_id"].as_str().unwrap();
    assert!(
        ![first_id.as_str(), second_id.as_str(), fourth_id.as_str()].contains(&fifth_id),
        "rotate --wait made a new token\n{}",
        w.logs()
    );
    w.stop_ok(&mut daemon).await;
}

/// `rotate --wait` after a crash resumes the interrupted rotation, waits
/// out its overlap and reports it as its rotation; it does not start a
/// second one behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_wait_after_a_crash_finishes_that_rotation_only() {
    let w = World::new().await;
    let good = w.good_config(&[(r#"overlap = "0s""#, r#"overlap = "1s""#)]);
    let status = w.bin().run("first", &good, ROTATE, None).await;
    assert!(status.success(), "{}", w.logs());
    let status = w
        .bin()
        .run("crashed", &good, ROTATE, Some("after-promote"))
        .await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", w.logs());
    assert_eq!(w.issued_count(), 2);
    let status = w
        .bin()
        .run("resume", &good, &["rotate", "--wait", "etl"], None)
        .await;
    assert!(status.success(), "{}", w.logs());
    assert_eq!(w.issued_count(), 2, "no second rotation\n{}", w.logs());
    let cur = w.assert_converged();
    let out = w.log("resume.out");
    assert!(
        out.contains(&format!(
            "etl: rotated: token {} is current, the old token is revoked",
            cur["token_id"].as_str().unwrap()
        )),
        "{out}"
    );
}
