//! A failed verification rolls back to the old token.

use super::*;

/// The probe hook twice: with a generous deadline for the passes meant to
/// succeed (a loaded machine may answer slowly), and with a short one for
/// the passes meant to fail (they wait out the whole deadline).
pub(super) fn probe_specs(probe: &Probe) -> (PolicySpec, PolicySpec) {
    let spec = |deadline| {
        PolicySpec::new("0s")
            .verify(probe.hook(deadline))
            .retry(SLOW_RETRY)
    };
    (spec("10s"), spec("60ms"))
}

/// A fixture, a probe answering `status` and its [`probe_specs`].
pub(super) async fn probed(status: u16) -> (Fixture, Probe, PolicySpec, PolicySpec) {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    probe.set_status(status);
    let (ok, failing) = probe_specs(&probe);
    (fx, probe, ok, failing)
}

#[tokio::test]
async fn failed_verification_restores_the_old_token_revokes_the_new_and_backs_off() {
    let (fx, probe, ok, failing) = probed(200).await;
    let (_, _, old) = fx.first_token(&ok).await;
    let old_secret = str_of(&fx.current(), "token").to_owned();

    // The application stops answering 200: the new token fails verification.
    probe.set_status(500);
    let (driver, policy) = fx.restart(&failing);
    fx.advance(HOUR);
    let failed_at = fx.now();
    let tick = pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 2, "one attempt");
    let new = issued[1].id.clone();
    assert!(fx.revoked(&new), "the new token is revoked");
    assert!(fx.is_live(&old), "the old token stays live");
    let cur = fx.current();
    assert_eq!(
        str_of(&cur, "token_id"),
        old,
        "the old token is current again"
    );
    assert_eq!(str_of(&cur, "token"), old_secret);
    assert_eq!(
        fx.bare(),
        old_secret,
        "the bare file holds the old token again"
    );
    let j = &cur["rotation"];
    assert_eq!(journal_state(&cur), "rolled_back");
    assert_eq!(str_of(j, "new_token_id"), new);
    assert_eq!(j["failures"], 1);
    let last_error = str_of(j, "last_error");
    assert!(last_error.starts_with("verify: http hook"), "{last_error}");
    assert!(!last_error.contains(&old_secret));
    let retry_at = ts(&j["retry_at"]);
    assert_eq!(retry_at, failed_at + chrono::Duration::minutes(10));
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == retry_at),
        "{tick:?}"
    );
    assert!(!fx.store().join("etl.json.previous").exists());
    assert!(!fx.store().join("etl.json.pending").exists());
    fx.assert_settled(&driver, &policy).await;

    // Before the retry time nothing happens, even though the schedule is due.
    probe.set_status(200);
    let (driver, policy) = fx.restart(&ok);
    fx.advance(5 * MINUTE);
    let tick = pass(&driver, &policy).await;
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == retry_at),
        "{tick:?}"
    );
    assert_eq!(fx.issued().len(), 2);

    // At the retry time it tries again, and succeeds.
    fx.advance(5 * MINUTE);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 3);
    let third = issued[2].id.clone();
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), third);
    assert_eq!(journal_state(&cur), "done");
    assert_eq!(
        cur["rotation"]["failures"], 0,
        "success resets the failure count"
    );
    assert!(fx.revoked(&old));
    fx.assert_settled(&driver, &policy).await;
}

/// Regression (invariant 10): a failed verification restored the previous
/// token without asking whether it still worked. When an operator had
/// revoked it (a leak), the rollback made a dead token current everywhere
/// and revoked the only live one.
#[tokio::test]
async fn a_failed_verification_keeps_the_new_token_when_the_old_one_is_dead() {
    let (fx, probe, ok, failing) = probed(200).await;
    let (_, _, old) = fx.first_token(&ok).await;
    // The old token leaked and an operator revoked it; the application is
    // down, so the replacement fails verification.
    fx.frozen.admin.revoke_token(SA, &old).await.unwrap();
    probe.set_status(500);
    let (driver, policy) = fx.restart(&failing);
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 2, "one attempt");
    let new = issued[1].id.clone();
    assert!(fx.is_live(&new), "the new token is not revoked");
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), new, "the new token stays current");
    assert_eq!(fx.bare(), str_of(&cur, "token"));
    assert_eq!(journal_state(&cur), "done");
    fx.assert_stored_token_works().await;
    fx.assert_settled(&driver, &policy).await;
}

/// The same when the old token expired meanwhile: the rollback checks its
/// expiry, not only whether it was revoked.
#[tokio::test]
async fn a_failed_verification_keeps_the_new_token_when_the_old_one_expired() {
    let (fx, probe, ok, failing) = probed(200).await;
    let ok = ok.ttl("2h");
    let failing = failing.ttl("2h");
    let (_, _, old) = fx.first_token(&ok).await;
    probe.set_status(500);
    let (driver, policy) = fx.restart(&failing);
    fx.advance(2 * HOUR + MINUTE);
    assert!(!fx.is_live(&old), "the old token expired");
    pass(&driver, &policy).await;
    let new = fx.issued()[1].id.clone();
    assert!(fx.is_live(&new), "the new token is not revoked");
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), new, "the new token stays current");
    assert_eq!(journal_state(&cur), "done");
}

#[tokio::test]
async fn consecutive_failed_verifications_back_off_longer() {
    let (fx, probe, ok, failing) = probed(200).await;
    let (_, _, old) = fx.first_token(&ok).await;
    probe.set_status(503);
    let (driver, policy) = fx.restart(&failing);
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let j = fx.current()["rotation"].clone();
    assert_eq!(j["failures"], 1);
    fx.advance(10 * MINUTE);
    let second_failure = fx.now();
    pass(&driver, &policy).await;
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), old);
    assert_eq!(cur["rotation"]["failures"], 2);
    assert_eq!(
        ts(&cur["rotation"]["retry_at"]),
        second_failure + chrono::Duration::minutes(20),
        "the backoff doubles"
    );
    assert_eq!(fx.live_ids(), vec![old]);
    fx.assert_no_orphans(&driver, &policy).await;
}

/// A policy whose first token keeps failing verification has no stored
/// record to carry its failure count; the running driver remembers it, so
/// the retries still back off longer each time.
#[tokio::test]
async fn a_first_token_that_keeps_failing_backs_off_longer() {
    let (fx, _probe, _, failing) = probed(503).await;
    let (driver, policy) = fx.restart(&failing);
    let mut gaps = Vec::new();
    for _ in 0..3 {
        let started = fx.now();
        let Tick::Wait { until, .. } = pass(&driver, &policy).await else {
            panic!("a failed first rotation waits for its retry");
        };
        gaps.push((until - started).num_minutes());
        // A pass before the retry time (the daemon re-reads its policies
        // every few minutes) waits for it and creates nothing.
        let issued = fx.issued().len();
        fx.advance(5 * MINUTE);
        let tick = pass(&driver, &policy).await;
        assert_eq!(
            tick,
            Tick::Wait {
                until,
                why: "retry after a failed rotation".into()
            }
        );
        assert_eq!(fx.issued().len(), issued, "no token before the retry time");
        fx.advance((until - fx.now()).to_std().unwrap());
    }
    assert_eq!(gaps, vec![10, 20, 40], "the backoff doubles");
    assert!(
        fx.live_ids().is_empty(),
        "every unverified token was revoked"
    );
    assert_eq!(fx.issued().len(), 3);
}
