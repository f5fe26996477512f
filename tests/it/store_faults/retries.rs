//! Faults that clear within a pass.

use super::*;

/// Vault 503s on staging, an AWS server error on staging and AWS
/// throttling on promotion, each fewer times than the policy's attempts:
/// the driver retries within the pass, the rotation succeeds, and every
/// failed attempt is counted by step, reason and store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_that_clear_within_a_pass_are_retried_and_counted() {
    let (w, driver, policy, old, _) = World::started(Order::VaultFirst).await;
    let successes = (
        w.store_ops("vault", "stage", "success"),
        w.store_ops("aws", "stage", "success"),
        w.store_ops("aws", "promote", "success"),
    );

    let vault_stage =
        w.vault_proxy
            .arm(vault_stage_write(), Answer::VaultUnavailable, ATTEMPTS - 1);
    let aws_stage = w
        .aws_proxy
        .arm(aws("PutSecretValue"), Answer::AwsInternalError, 1);
    let aws_promote = w.throttle_label_moves(ATTEMPTS - 1);
    w.advance(HOUR);
    w.ok_pass(&driver, &policy).await;
    assert_eq!(vault_stage.intercepted(), ATTEMPTS - 1);
    assert_eq!(aws_stage.intercepted(), 1);
    assert_eq!(aws_promote.intercepted(), ATTEMPTS - 1);

    let now = w.assert_converged(&driver, &policy).await;
    assert_ne!(now, old);
    assert!(w.revoked(&old));
    assert_eq!(w.issued().len(), 2, "one rotation, no second attempt");
    assert_eq!(w.rotations("success"), 2);
    assert_eq!(w.rotations("failed"), 0);
    assert_eq!(w.rollbacks(), 0);

    // Counted per failed attempt: Vault's two and AWS's one at staging,
    // AWS's two at promotion.
    assert_eq!(
        w.step_failures("stage", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(
        w.step_failures("promote", "store_unavailable"),
        (ATTEMPTS - 1) as u64
    );
    assert_eq!(
        w.store_ops("vault", "stage", "failure"),
        (ATTEMPTS - 1) as u64
    );
    assert_eq!(w.store_ops("aws", "stage", "failure"), 1);
    assert_eq!(
        w.store_ops("aws", "promote", "failure"),
        (ATTEMPTS - 1) as u64
    );
    assert_eq!(
        (
            w.store_ops("vault", "stage", "success"),
            w.store_ops("aws", "stage", "success"),
            w.store_ops("aws", "promote", "success"),
        ),
        (successes.0 + 1, successes.1 + 1, successes.2 + 1)
    );
    // The exported text carries the same series.
    let text = w.metrics.render();
    let line = format!(
        "motherduck_rotator_rotation_step_failures_total{{reason=\"store_unavailable\",step=\"promote\"}} {}",
        ATTEMPTS - 1
    );
    assert!(text.contains(&line), "`{line}` missing in /metrics");
    w.assert_no_secret("/metrics", &text);
}
