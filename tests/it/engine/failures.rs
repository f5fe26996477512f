//! MotherDuck and the stores failing at each step.

use super::*;

/// A policy with a 10-minute overlap that has rotated once: its driver,
/// the first token's id and the new token's.
async fn rotated_once(fx: &Fixture) -> (Driver, Policy, String, String) {
    let (driver, policy) = fx.restart(&PolicySpec::new("10m"));
    let old = first_token(fx, &driver, &policy).await;
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let new = str_of(&fx.current(), "token_id").to_owned();
    (driver, policy, old, new)
}

// ---------------------------------------------------------------------------
// 3. MotherDuck failures at each step
// ---------------------------------------------------------------------------

#[tokio::test]
async fn create_failing_keeps_the_old_token_and_retries_later() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s").retry(SLOW_RETRY);
    let (driver, policy, old) = fx.first_token(&spec).await;

    fx.sim()
        .fail_next(Endpoint::CreateToken, 100, Fault::Status(500));
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    assert_eq!(fx.issued().len(), 1, "no token was created");
    let cur = fx.current();
    assert_rolled_back(&cur, &old, "create: ");
    assert_eq!(cur["rotation"]["failures"], 1);
    fx.assert_settled(&driver, &policy).await;

    // MotherDuck recovers; after the backoff the rotation goes through.
    fx.sim().clear_faults();
    fx.advance(10 * MINUTE);
    pass(&driver, &policy).await;
    assert_eq!(fx.issued().len(), 2);
    fx.assert_replaced(&old, &driver, &policy).await;
}

#[tokio::test]
async fn create_answer_lost_after_commit_leaves_no_second_live_token() {
    let fx = Fixture::new().await;
    let (driver, policy, old) = fx.first_token(&PolicySpec::new("0s")).await;

    // The server creates the token but the answer is lost: its secret is
    // gone, so that token must not survive.
    fx.sim()
        .fail_next(Endpoint::CreateToken, 1, Fault::StatusAfterCommit(502));
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 3, "old, the lost one, the stored one");
    let (lost, new) = (&issued[1], &issued[2]);
    assert!(
        lost.revoked_at.is_some(),
        "the token whose secret was lost is revoked"
    );
    assert_eq!(lost.name, new.name, "the retry reused the rotation's name");
    assert_eq!(str_of(&fx.current(), "token_id"), new.id);
    assert!(fx.revoked(&old));
    fx.assert_settled(&driver, &policy).await;
}

#[tokio::test]
async fn revoking_the_old_token_failing_keeps_the_new_one_and_resumes() {
    let fx = Fixture::new().await;
    let (driver, policy, old, new) = rotated_once(&fx).await;
    assert_ne!(new, old);

    fx.advance(10 * MINUTE);
    fx.sim()
        .fail_next(Endpoint::RevokeToken, 100, Fault::Status(500));
    let err = failing_pass(&driver, &policy).await;
    assert!(err.to_string().contains("revoke_old"), "{err}");
    // Verified and stored, so nothing is rolled back: the new token stays
    // current and the old one stays live until the revoke succeeds.
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), new);
    assert_eq!(journal_state(&cur), "verified");
    assert!(fx.is_live(&old) && fx.is_live(&new));
    fx.assert_stored_token_works().await;

    fx.sim().clear_faults();
    pass(&driver, &policy).await;
    fx.assert_replaced(&old, &driver, &policy).await;
}

#[tokio::test]
async fn builtin_check_failing_beyond_its_deadline_rolls_back() {
    let fx = Fixture::new().await;
    let check = |deadline: &str| {
        PolicySpec::new("0s")
            .verify(format!(
                r#"[{{ type = "motherduck", interval = "10ms", deadline = "{deadline}" }}]"#
            ))
            .retry(SLOW_RETRY)
    };
    let (_, _, old) = fx.first_token(&check("10s")).await;

    fx.sim()
        .fail_next(Endpoint::ActiveAccounts, 10_000, Fault::Status(500));
    let (driver, policy) = fx.restart(&check("60ms"));
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    fx.sim().clear_faults();
    let issued = fx.issued();
    assert_eq!(issued.len(), 2);
    assert!(fx.revoked(&issued[1].id), "the unverified token is revoked");
    let cur = fx.current();
    assert_rolled_back(&cur, &old, "verify: motherduck hook");
    fx.assert_settled(&driver, &policy).await;
}

// ---------------------------------------------------------------------------
// 4. Store failures at each step
// ---------------------------------------------------------------------------

/// Two destinations: `local` (which also holds the lock) and `second`.
fn two_dests() -> String {
    r#"[{ store = "local", path = "etl.json", bare_token_file = "etl.token" }, { store = "second", path = "etl.json" }]"#
        .to_owned()
}

/// Regression: a verified rotation whose second destination lost its
/// record (a restored backup, a restarted dev server) was "inconsistent"
/// at every pass: the old token was never revoked, no rotation started
/// again, and nothing alerted. The verified token is written there too,
/// and the old token is revoked only then.
#[tokio::test]
async fn a_verified_rotation_repairs_a_destination_that_lost_its_record() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("30m").destinations(two_dests());
    let (driver, policy, old) = fx.first_token(&spec).await;

    // A rotation, verified, waiting out its overlap.
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let new = fx.issued()[1].id.clone();
    assert_eq!(journal_state(&fx.current()), "verified");
    // The second destination loses everything.
    for f in ["etl.json", "etl.json.previous"] {
        let _ = std::fs::remove_file(fx.store2().join(f));
    }
    let tick = pass(&driver, &policy).await;
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    let second = read_json(&fx.store2().join("etl.json")).expect("written again");
    assert_eq!(str_of(&second, "token_id"), new);
    assert_eq!(str_of(&second, "token"), str_of(&fx.current(), "token"));
    assert!(fx.is_live(&old), "the overlap still runs");

    // The overlap ends (before the next rotation is due): the old token
    // goes, both hold the new one.
    fx.advance(31 * MINUTE);
    pass(&driver, &policy).await;
    assert!(fx.revoked(&old));
    let second = read_json(&fx.store2().join("etl.json")).unwrap();
    assert_eq!(journal_state(&second), "done");
    assert_eq!(journal_state(&fx.current()), "done");
    fx.assert_settled(&driver, &policy).await;
}

#[tokio::test]
async fn stage_failing_in_one_destination_revokes_the_new_token() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s").destinations(two_dests());
    let (driver, policy, old) = fx.first_token(&spec).await;
    assert_eq!(
        str_of(
            &read_json(&fx.store2().join("etl.json")).unwrap(),
            "token_id"
        ),
        old
    );

    // The second store's directory becomes group-readable: the store
    // refuses to write a secret there (a permanent error, no retry).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(fx.store2(), std::fs::Permissions::from_mode(0o750)).unwrap();
    }
    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 2);
    let new = &issued[1].id;
    assert!(
        fx.revoked(new),
        "invariant 2: an unstorable token is revoked"
    );
    assert_eq!(fx.live_ids(), vec![old.clone()]);
    for dir in [fx.store(), fx.store2()] {
        let cur = read_json(&dir.join("etl.json")).unwrap();
        assert_eq!(str_of(&cur, "token_id"), old, "{}", dir.display());
        assert_eq!(journal_state(&cur), "rolled_back");
        assert!(
            str_of(&cur["rotation"], "last_error").starts_with("stage: "),
            "{}",
            cur["rotation"]
        );
        assert!(!dir.join("etl.json.pending").exists(), "{}", dir.display());
    }
    fx.assert_settled(&driver, &policy).await;
}

/// Regression: a store that cannot be written at all at stage time made
/// the rollback fail too, and the driver then skipped revoking the new
/// token, whose secret existed only in memory (invariant 2).
#[tokio::test]
async fn regression_unwritable_store_at_stage_still_revokes_the_new_token() {
    let fx = Fixture::new().await;
    let (driver, policy, old) = fx.first_token(&PolicySpec::new("0s")).await;

    freeze(&fx.store());
    fx.advance(HOUR);
    let err = failing_pass(&driver, &policy).await;
    assert!(err.to_string().contains("rollback incomplete"), "{err}");
    let issued = fx.issued();
    assert_eq!(issued.len(), 2);
    assert!(fx.revoked(&issued[1].id), "the unstorable token is revoked");
    assert_eq!(fx.live_ids(), vec![old.clone()]);
    assert_eq!(str_of(&fx.current(), "token_id"), old);

    // Once the store is writable again the next pass rotates normally.
    thaw(&fx.store());
    pass(&driver, &policy).await;
    assert_eq!(fx.issued().len(), 3);
    assert!(fx.revoked(&old));
    fx.assert_settled(&driver, &policy).await;
}

/// A record file name this long (209 bytes) leaves room for the store's
/// temporary file of `P.pending` (255 bytes, the usual NAME_MAX) but not
/// for that of `P.previous` (256 bytes): staging works, promoting over an
/// existing token fails on every attempt, and the rollback (which writes
/// only `P`) works. A promote-only store failure, without timing tricks.
fn promote_breaking_name() -> String {
    "p".repeat(204) + ".json"
}

#[tokio::test]
async fn promote_failing_rolls_back_to_the_old_token() {
    let fx = Fixture::new().await;
    let name = promote_breaking_name();
    assert_eq!(name.len(), 209);
    // The trick needs NAME_MAX = 255 (ext4, xfs, btrfs, tmpfs, overlayfs).
    let probe = |len: usize| {
        let p = fx.root.join("n".repeat(len));
        let ok = std::fs::write(&p, b"").is_ok();
        let _ = std::fs::remove_file(&p);
        ok
    };
    assert!(
        probe(255) && !probe(256),
        "the temporary directory's file system does not have NAME_MAX 255; this test cannot break promotion alone there"
    );
    let spec = PolicySpec::new("0s").destinations(format!(
        r#"[{{ store = "local", path = "{name}", bare_token_file = "etl.token" }}]"#
    ));
    let (driver, policy) = fx.restart(&spec);
    pass(&driver, &policy).await;
    let cur = fx.record(&name);
    assert_eq!(journal_state(&cur), "done");
    let old = str_of(&cur, "token_id").to_owned();
    let old_secret = str_of(&cur, "token").to_owned();

    fx.advance(HOUR);
    pass(&driver, &policy).await;
    let issued = fx.issued();
    assert_eq!(issued.len(), 2);
    assert!(fx.revoked(&issued[1].id), "the unpromoted token is revoked");
    assert_eq!(fx.live_ids(), vec![old.clone()]);
    let cur = fx.record(&name);
    assert_rolled_back(&cur, &old, "promote: ");
    assert_eq!(fx.bare(), old_secret);
    assert!(!fx.store().join(format!("{name}.pending")).exists());
    fx.assert_no_orphans(&driver, &policy).await;
}

#[tokio::test]
async fn finish_failing_leaves_the_new_token_current_and_resumes() {
    let fx = Fixture::new().await;
    let (driver, policy, old, new) = rotated_once(&fx).await;

    fx.advance(10 * MINUTE);
    freeze(&fx.store());
    let err = failing_pass(&driver, &policy).await;
    assert!(err.to_string().contains("finish"), "{err}");
    // The old token was revoked (verified, stored, overlap over) but the
    // journal could not record it: the new token stays current.
    assert!(fx.revoked(&old));
    let cur = fx.current();
    assert_eq!(str_of(&cur, "token_id"), new);
    assert_eq!(journal_state(&cur), "verified");
    assert_eq!(fx.live_ids(), vec![new.clone()]);
    fx.assert_stored_token_works().await;

    // The repeat treats the already revoked token as done (404).
    thaw(&fx.store());
    pass(&driver, &policy).await;
    assert_eq!(journal_state(&fx.current()), "done");
    assert!(!fx.store().join("etl.json.previous").exists());
    fx.assert_settled_with(2, &driver, &policy).await;
}

/// A pass that cannot read the policy's records fails before any rotation
/// begins. Each such pass is counted (step `read`), and after
/// `failed_passes_before_alert` (3) in a row the policy is reported like a
/// failed rotation: the RotationFailed alert and `consecutive_failures`.
/// The first pass that reads the records again clears both.
#[tokio::test]
async fn passes_that_cannot_read_the_records_are_counted_and_alert_after_three() {
    use motherduck_rotator::alerts::AlertKind;
    let fx = Fixture::new().await;
    let (driver, policy) = fx.restart(&PolicySpec::new("0s"));
    let first = first_token(&fx, &driver, &policy).await;
    let record = fx.store().join("etl.json");
    let good = std::fs::read(&record).unwrap();
    std::fs::write(&record, "not a record").unwrap();

    let read_failures = || {
        driver
            .metrics
            .rotation_step_failures_total
            .with_label_values(&["read", "store_corrupt"])
            .get()
    };
    let gauge = || {
        driver
            .metrics
            .consecutive_failures
            .with_label_values(&["etl"])
            .get()
    };
    let cancel = CancellationToken::new();
    for n in 1..=3u64 {
        let r = driver.reconcile(&policy, false, &cancel).await;
        assert!(r.is_err(), "pass {n}: {r:?}");
        assert_eq!(read_failures(), n);
        let alerting = n >= 3;
        assert_eq!(
            driver.alerts.is_firing(AlertKind::RotationFailed, "etl"),
            alerting,
            "pass {n}"
        );
        assert_eq!(gauge(), if alerting { 3 } else { 0 }, "pass {n}");
    }

    // The store's dependency health saw each failed read.
    let m = &driver.metrics;
    assert_eq!(
        m.dependency_failures_total
            .with_label_values(&["store:local", "load", "corrupt"])
            .get(),
        3
    );
    assert_eq!(m.dependency_up.with_label_values(&["store:local"]).get(), 0);

    std::fs::write(&record, good).unwrap();
    let r = driver.reconcile(&policy, false, &cancel).await;
    assert!(matches!(r, Ok(Tick::Wait { .. })), "{r:?}");
    assert!(!driver.alerts.is_firing(AlertKind::RotationFailed, "etl"));
    assert_eq!(m.dependency_up.with_label_values(&["store:local"]).get(), 1);
    assert_eq!(gauge(), 0);
    assert_eq!(read_failures(), 3);
    assert_eq!(str_of(&fx.current(), "token_id"), first);
}

/// An old token that cannot be revoked is visible: the superseded-token
/// gauges count it and age it from the end of its overlap, and once it is
/// `old_token_limit` (15 min) late the OldTokenNotRevoked alert fires. The
/// revoke keeps being retried; when it goes through, both clear.
#[tokio::test]
async fn an_old_token_that_cannot_be_revoked_is_counted_aged_and_alerted_on() {
    use motherduck_rotator::alerts::AlertKind;
    let fx = Fixture::new().await;
    let (driver, policy, old, _new) = rotated_once(&fx).await;
    let m = driver.metrics.clone();
    let gauges = |now| {
        m.refresh_superseded(now);
        (
            m.superseded_tokens.with_label_values::<&str>(&[]).get(),
            m.superseded_token_oldest_age_seconds
                .with_label_values::<&str>(&[])
                .get(),
        )
    };
    let overlap_end = fx.now() + chrono::Duration::minutes(10);
    assert_eq!(gauges(fx.now()), (0, 0.0), "within the overlap");

    fx.advance(10 * MINUTE);
    fx.sim()
        .fail_next(Endpoint::RevokeToken, 10_000, Fault::Status(500));
    failing_pass(&driver, &policy).await;
    fx.advance(5 * MINUTE);
    failing_pass(&driver, &policy).await;
    assert_eq!(gauges(fx.now()), (1, 300.0));
    assert_eq!(fx.now() - overlap_end, chrono::Duration::minutes(5));
    assert!(
        !driver
            .alerts
            .is_firing(AlertKind::OldTokenNotRevoked, "etl")
    );

    fx.advance(11 * MINUTE);
    failing_pass(&driver, &policy).await;
    assert_eq!(gauges(fx.now()), (1, 960.0));
    assert!(
        driver
            .alerts
            .is_firing(AlertKind::OldTokenNotRevoked, "etl")
    );
    assert!(fx.is_live(&old));

    fx.sim().clear_faults();
    pass(&driver, &policy).await;
    assert!(fx.revoked(&old));
    assert_eq!(gauges(fx.now()), (0, 0.0));
    assert!(
        !driver
            .alerts
            .is_firing(AlertKind::OldTokenNotRevoked, "etl")
    );
}
