//! Regressions, each naming the bug it pins.

use super::verification::probed;
use super::*;

/// One pass, which must return within 10 s: after the failed attempt,
/// not in a loop of retries.
async fn pass_within_10s(driver: &Driver, policy: &Policy) -> Tick {
    tokio::time::timeout(
        Duration::from_secs(10),
        driver.reconcile(policy, false, &CancellationToken::new()),
    )
    .await
    .expect("reconcile returns after the failed attempt")
    .unwrap()
}

/// Regression: when the very first token of a policy failed verification,
/// the rollback left no record to carry the retry time, so the same
/// reconcile pass began a new rotation at once, forever.
#[tokio::test]
async fn regression_first_token_failing_verification_does_not_retry_in_a_loop() {
    let (fx, probe, ok, failing) = probed(500).await;
    let (driver, policy) = fx.restart(&failing);
    let started = fx.now();
    let tick = pass_within_10s(&driver, &policy).await;
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == started + chrono::Duration::minutes(10)),
        "{tick:?}"
    );
    let issued = fx.issued();
    assert_eq!(issued.len(), 1, "one attempt");
    assert!(issued[0].revoked_at.is_some());
    assert!(fx.live_ids().is_empty());
    assert!(!fx.store().join("etl.json").exists());
    assert!(!fx.store().join("etl.token").exists());

    // Consumers recover; the next pass (at the retry time) stores a token.
    probe.set_status(200);
    let (driver, policy) = fx.restart(&ok);
    fx.advance(10 * MINUTE);
    pass(&driver, &policy).await;
    fx.assert_settled_with(2, &driver, &policy).await;
}

/// Regression companion: the first token failing to be created also backs
/// off instead of retrying within the same pass.
#[tokio::test]
async fn regression_first_token_create_failing_does_not_retry_in_a_loop() {
    let fx = Fixture::new().await;
    fx.sim().set_error_rate(Endpoint::CreateToken, 1.0);
    let (driver, policy) = fx.restart(&PolicySpec::new("0s").retry(SLOW_RETRY));
    let tick = pass_within_10s(&driver, &policy).await;
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    let creates = fx.sim().request_count(Endpoint::CreateToken);
    assert!(
        (1..=5).contains(&creates),
        "one driver attempt (the client's first try and its retries), not a loop: {creates}"
    );
    assert!(fx.issued().is_empty());
}
