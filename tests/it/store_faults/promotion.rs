//! Promotion is all or nothing across stores.

use super::*;

/// After a failed promotion: the old token is current and live in both
/// stores, nothing is staged, the new token is revoked; then the next pass
/// converges on a third token.
async fn assert_rolled_back_everywhere_then_recover(
    w: &World,
    driver: &Driver,
    policy: &Policy,
    old: &str,
    old_secret: &SecretString,
) {
    let new = newest(&w.issued());
    assert_ne!(new, old);
    assert!(w.revoked(&new), "the new token {new} is revoked");
    assert_eq!(w.live_ids(), vec![old.to_owned()]);
    let (vault, aws) = w.consumers_read_live_tokens().await;
    assert_eq!(vault, old, "Vault is rolled back");
    assert_eq!(aws, old, "AWS is rolled back");
    for (store, read) in [("vault", w.vault_read().await), ("aws", w.aws_read().await)] {
        assert!(
            read.token.expose_secret() == old_secret.expose_secret(),
            "{store} consumers read the old secret"
        );
    }
    assert!(!w.vault_has_pending().await);
    assert!(!w.aws_has_pending().await);
    assert_eq!(w.rotations("failed"), 1);
    assert_eq!(w.rollbacks(), 1);

    w.advance(MINUTE);
    w.ok_pass(driver, policy).await;
    let now = w.assert_converged(driver, policy).await;
    assert_eq!(now, newest(&w.issued()));
    assert!(w.revoked(old));
}

/// Store `first` was promoted (the first token, then this rotation's)
/// before store `then` failed every promotion attempt; the rotation is
/// rolled back with an error naming `cause` and holding no secret.
async fn assert_promotion_failed_after(
    w: &World,
    driver: &Driver,
    policy: &Policy,
    (first, then): (&str, &str),
    cause: &[&str],
) {
    let name = |store: &str| if store == "aws" { "AWS" } else { "Vault" };
    assert_eq!(
        w.store_ops(first, "promote", "success"),
        2,
        "{} was promoted (first token, then this one) before {} failed",
        name(first),
        name(then)
    );
    assert_eq!(
        w.step_failures("promote", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(w.store_ops(then, "promote", "failure"), ATTEMPTS as u64);
    let reason = w.rolled_back_error(driver, policy, 1).await;
    assert_mentions(&reason, &[&["promote"], cause].concat());
    w.assert_no_secret("the recorded error", &reason);
}

/// Vault is promoted first; then AWS throttles every attempt to move
/// AWSCURRENT. The rollback must undo Vault's promotion too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_throttling_while_promoting_rolls_vault_back_too() {
    let (w, driver, policy, old, old_secret) = World::started(Order::VaultFirst).await;

    let rule = w.throttle_label_moves(ATTEMPTS);
    w.advance(HOUR);
    w.ok_pass(&driver, &policy).await;
    assert_eq!(rule.intercepted(), ATTEMPTS);
    let cause = [AWS_LABEL, "UpdateSecretVersionStage", "ThrottlingException"];
    assert_promotion_failed_after(&w, &driver, &policy, ("vault", "aws"), &cause).await;
    assert_rolled_back_everywhere_then_recover(&w, &driver, &policy, &old, &old_secret).await;
}

/// AWS is promoted first (it holds the lock too); then Vault answers 503
/// to `matcher` on every promotion attempt. The rollback must move
/// AWSCURRENT back as well as restore Vault. `vault_writes`: how many
/// versions of the current record the failed rotation leaves behind.
async fn vault_503_while_promoting_after_aws(matcher: Match, vault_writes: u64) {
    let (w, driver, policy, old, old_secret) = World::started(Order::AwsFirst).await;
    let versions = w.vault_versions().await;

    let rule = w
        .vault_proxy
        .arm(matcher, Answer::VaultUnavailable, ATTEMPTS);
    w.advance(HOUR);
    w.ok_pass(&driver, &policy).await;
    assert_eq!(rule.intercepted(), ATTEMPTS);
    assert_eq!(w.vault_versions().await, versions + vault_writes);
    let cause = [VAULT_LABEL, "HTTP 503"];
    assert_promotion_failed_after(&w, &driver, &policy, ("aws", "vault"), &cause).await;
    assert_rolled_back_everywhere_then_recover(&w, &driver, &policy, &old, &old_secret).await;
}

/// The write of the current record itself is refused: Vault never shows
/// the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_503_on_the_promoting_write_rolls_aws_back_too() {
    vault_503_while_promoting_after_aws(vault_promote_write(), 0).await;
}

/// The write of the current record commits (Vault's consumers see the new
/// token), but the journal written right after it is refused: the rollback
/// must find the previous version without a journal and write it back, a
/// second new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_503_on_the_journal_after_the_promoting_write_rolls_both_back() {
    vault_503_while_promoting_after_aws(
        Match::VaultExact {
            method: "POST",
            path: format!("/v1/secret/metadata/{VAULT_PATH}"),
        },
        2,
    )
    .await;
}

/// A pass that fails because its rollback cannot finish; the error says
/// so, names `cause` and holds no secret.
async fn fails_with_rollback_cut_short(
    w: &World,
    driver: &Driver,
    policy: &Policy,
    cause: &[&str],
) {
    let err = w
        .pass(driver, policy)
        .await
        .expect_err("the rollback cannot finish");
    let text = err.to_string();
    let mentions = [&["rollback incomplete", "rollback"], cause].concat();
    assert_mentions(&text, &mentions);
    w.assert_no_secret("the error", &text);
}

/// Consumers of both stores still read `old`, Vault's with its secret.
async fn assert_consumers_keep(w: &World, old: &str, old_secret: &SecretString) {
    let (vault, aws_id) = w.consumers_read_live_tokens().await;
    assert_eq!((vault.as_str(), aws_id.as_str()), (old, old));
    assert!(w.vault_read().await.token.expose_secret() == old_secret.expose_secret());
}

/// `step` and then the rollback failed on every attempt; the rotation is
/// counted as failed and alerted on all the same.
fn assert_failed_with_rollback_cut_short(w: &World, driver: &Driver, step: &str) {
    assert_eq!(w.step_failures(step, "store_unavailable"), ATTEMPTS as u64);
    assert_eq!(
        w.step_failures("rollback", "store_unavailable"),
        ATTEMPTS as u64
    );
    assert_eq!(
        w.rotations("failed"),
        1,
        "the failed rotation is counted although its rollback was cut short"
    );
    assert!(driver.alerts.is_firing(AlertKind::RotationFailed, POLICY));
}

/// The next pass rotates past `old`, revoking it, and the failure alert
/// resolves.
async fn rotate_past(w: &World, driver: &Driver, policy: &Policy, old: &str) {
    w.ok_pass(driver, policy).await;
    let now = w.assert_converged(driver, policy).await;
    assert_eq!(now, newest(&w.issued()));
    assert!(w.revoked(old));
    assert!(!driver.alerts.is_firing(AlertKind::RotationFailed, POLICY));
}

/// Vault refuses every metadata write under the destination, through the
/// staging attempts and the rollback's: the rollback cannot even record
/// itself in Vault. The new token, whose secret no store holds, is revoked
/// anyway; consumers keep the old token; the pass reports the store and
/// the step; the next pass rotates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_refusing_the_rollback_too_still_revokes_the_new_token() {
    let (w, driver, policy, old, old_secret) = World::started(Order::VaultFirst).await;

    // Staging writes `P.pending`'s metadata first; the rollback writes
    // `P`'s. Both paths contain this; the lock's data path does not.
    let rule = w.vault_proxy.arm(
        Match::VaultContains {
            method: "POST",
            path: format!("/metadata/{VAULT_PATH}"),
        },
        Answer::VaultUnavailable,
        2 * ATTEMPTS,
    );
    w.advance(HOUR);
    fails_with_rollback_cut_short(&w, &driver, &policy, &[VAULT_LABEL, "HTTP 503"]).await;
    assert_eq!(rule.intercepted(), 2 * ATTEMPTS, "staging, then rollback");

    let new = newest(&w.issued());
    assert!(w.revoked(&new), "the unstorable token {new} is revoked");
    assert_eq!(w.live_ids(), vec![old.clone()], "no orphan");
    assert_consumers_keep(&w, &old, &old_secret).await;
    assert!(!w.vault_has_pending().await);
    assert!(!w.aws_has_pending().await);
    assert_failed_with_rollback_cut_short(&w, &driver, "stage");

    // No store could record a retry time; the daemon's loop backs off on
    // the error. The next pass rotates.
    w.advance(MINUTE);
    rotate_past(&w, &driver, &policy, &old).await;
}

/// Throttling that outlasts the promotion and the rollback's own retries.
/// Vault is restored; in AWS the rollback records its journal (its commit
/// point: AWSCURRENT never moved) but cannot take the AWSPENDING label off
/// the new version. The pass ends in an error naming the store and the
/// step; the new token, referenced by no record any more, is revoked at
/// once; the failed rotation is counted; the next pass after the backoff
/// rotates and clears the leftover label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_throttling_that_outlasts_the_rollback_still_revokes_and_counts() {
    let (w, driver, policy, old, old_secret) = World::started(Order::VaultFirst).await;

    let rule = w.throttle_label_moves(2 * ATTEMPTS);
    w.advance(HOUR);
    fails_with_rollback_cut_short(&w, &driver, &policy, &[AWS_LABEL, "ThrottlingException"]).await;
    assert_eq!(rule.intercepted(), 2 * ATTEMPTS, "promote, then rollback");

    // Consumers never noticed: both stores serve the old, live token.
    assert_consumers_keep(&w, &old, &old_secret).await;
    let new = newest(&w.issued());
    assert!(
        w.aws_has_pending().await,
        "the rollback was cut short: AWSPENDING is still on the new version"
    );
    let obs = driver.observe(&policy).await.unwrap();
    assert!(
        obs.views.iter().all(|v| v.pending.is_none()),
        "the leftover label reads as nothing staged"
    );
    assert!(
        w.revoked(&new),
        "the unreferenced new token {new} is revoked"
    );
    assert_eq!(w.live_ids(), vec![old.clone()], "no orphan");

    assert_eq!(w.store_ops("aws", "rollback", "failure"), ATTEMPTS as u64);
    assert_failed_with_rollback_cut_short(&w, &driver, "promote");

    // Within the backoff nothing happens; after it the rotation succeeds
    // and its staging moves the leftover label.
    let tick = w.ok_pass(&driver, &policy).await;
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    assert_eq!(w.issued().len(), 2);
    w.advance(MINUTE);
    rotate_past(&w, &driver, &policy, &old).await;
}
