//! Vault refusing to stage the new token.

use super::*;

/// Invariant 2: Vault refuses the write that stages the new token on every
/// attempt. The secret exists only in memory, so the new token is revoked
/// at once; consumers keep reading the old, live token; the next pass
/// rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_503_on_staging_revokes_the_new_token_and_the_next_pass_rotates() {
    let (w, driver, policy, old, old_secret) = World::started(Order::VaultFirst).await;

    let rule = w
        .vault_proxy
        .arm(vault_stage_write(), Answer::VaultUnavailable, ATTEMPTS);
    w.advance(HOUR);
    let failed_at = w.frozen.clock.now();
    let tick = w.ok_pass(&driver, &policy).await;
    assert_eq!(rule.intercepted(), ATTEMPTS, "every attempt was refused");
    assert!(
        matches!(&tick, Tick::Wait { until, .. } if *until > failed_at),
        "the policy backs off: {tick:?}"
    );

    let issued = w.issued();
    assert_eq!(issued.len(), 2, "one new token was created");
    let new = newest(&issued);
    assert!(w.revoked(&new), "the unstorable token {new} is revoked");
    assert_eq!(
        w.live_ids(),
        vec![old.clone()],
        "only the old token is live"
    );
    let (vault, aws) = w.consumers_read_live_tokens().await;
    assert_eq!((vault.as_str(), aws.as_str()), (old.as_str(), old.as_str()));
    assert!(
        w.vault_read().await.token.expose_secret() == old_secret.expose_secret(),
        "Vault consumers read the old secret, unchanged"
    );
    assert!(!w.vault_has_pending().await);
    assert!(!w.aws_has_pending().await, "AWS was never staged");

    assert_eq!(
        w.step_failures("stage", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(w.store_ops("vault", "stage", "failure"), ATTEMPTS as u64);
    assert_eq!(w.rotations("failed"), 1);
    assert_eq!(w.rollbacks(), 1);
    let reason = w.rolled_back_error(&driver, &policy, 0).await;
    assert_mentions(&reason, &["stage", VAULT_LABEL, "HTTP 503"]);
    w.assert_no_secret("the recorded error", &reason);

    // Within the backoff nothing happens; after it the rotation succeeds.
    let tick = w.ok_pass(&driver, &policy).await;
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    assert_eq!(w.issued().len(), 2, "no attempt during the backoff");
    w.advance(MINUTE);
    w.ok_pass(&driver, &policy).await;
    let now = w.assert_converged(&driver, &policy).await;
    assert_eq!(w.issued().len(), 3);
    assert_eq!(now, newest(&w.issued()), "the retry's token is current");
    assert!(
        w.revoked(&old),
        "the old token is revoked after the overlap"
    );
    assert_eq!(w.rotations("success"), 2);
}
