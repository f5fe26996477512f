//! Two drivers on one store, restarts, and the orphan sweep.

use super::*;

// ---------------------------------------------------------------------------
// 5. Two drivers on one store
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_drivers_on_one_store_rotate_once_per_slot() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s");
    let ca = fx.config_with_id(&spec, "replica-a");
    let cb = fx.config_with_id(&spec, "replica-b");
    let (a, b) = (fx.driver(&ca), fx.driver(&cb));
    let (pa, pb) = (ca.policies[0].clone(), cb.policies[0].clone());
    let cancel = CancellationToken::new();

    for slot in 0..4 {
        if slot > 0 {
            fx.advance(HOUR);
        }
        let (ra, rb) = tokio::join!(
            a.reconcile(&pa, false, &cancel),
            b.reconcile(&pb, false, &cancel)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(
            !matches!(ra, Tick::Stopped) && !matches!(rb, Tick::Stopped),
            "{ra:?} {rb:?}"
        );
        // A replica that found the lock taken looks again later; do so now.
        for (d, p, r) in [(&a, &pa, &ra), (&b, &pb, &rb)] {
            if matches!(r, Tick::Busy { .. }) {
                pass(d, p).await;
            }
        }
        assert_eq!(fx.issued().len(), slot + 1, "one rotation in slot {slot}");
        fx.assert_settled(&a, &pa).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_driver_is_kept_out_while_the_first_verifies() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    let spec = PolicySpec::new("0s").verify(probe.hook("20s"));
    let ca = fx.config_with_id(&spec, "replica-a");
    let cb = fx.config_with_id(&spec, "replica-b");
    let (a, b) = (fx.driver(&ca), fx.driver(&cb));
    let (pa, pb) = (ca.policies[0].clone(), cb.policies[0].clone());
    let old = first_token(&fx, &a, &pa).await;

    // Replica A rotates and sits in verification until the probe says 200.
    probe.set_status(503);
    fx.advance(HOUR);
    let task = pass_until_verifying(&a, &pa, &probe, "A never reached verification").await;
    assert_eq!(journal_state(&fx.current()), "promoted");

    // Replica B sees the unfinished rotation but may not touch it.
    let tick = b
        .reconcile(&pb, false, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(tick, Tick::Busy { .. }), "{tick:?}");
    let forced = b
        .reconcile(&pb, true, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(forced, Tick::Busy { .. }), "{forced:?}");
    assert_eq!(fx.issued().len(), 2, "B created nothing");

    probe.set_status(200);
    let tick = task.await.unwrap().unwrap();
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    assert_eq!(fx.issued().len(), 2);
    assert!(fx.revoked(&old));
    // B now finds nothing to do.
    pass(&b, &pb).await;
    fx.assert_settled_with(2, &b, &pb).await;
}

// ---------------------------------------------------------------------------
// 6. Restarts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn restarts_never_skip_or_double_a_rotation() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s");
    // Every pass is made by a freshly started daemon.
    let (d, p) = fx.restart(&spec);
    pass(&d, &p).await;
    assert_eq!(fx.issued().len(), 1);

    let mut last_rotation = fx.now();
    for slot in 1..=3 {
        // Exactly at the slot.
        fx.advance(
            (last_rotation + chrono::Duration::hours(1) - fx.now())
                .to_std()
                .unwrap(),
        );
        last_rotation = fx.now();
        let (d, p) = fx.restart(&spec);
        pass(&d, &p).await;
        // Restarted again within the same slot: nothing more happens.
        let (d, p) = fx.restart(&spec);
        pass(&d, &p).await;
        fx.advance(30 * MINUTE);
        let (d, p) = fx.restart(&spec);
        pass(&d, &p).await;
        assert_eq!(fx.issued().len(), 1 + slot, "exactly one rotation per slot");
        // One second before the next slot: still nothing.
        fx.advance(30 * MINUTE - Duration::from_secs(1));
        let (d, p) = fx.restart(&spec);
        pass(&d, &p).await;
        assert_eq!(fx.issued().len(), 1 + slot, "not early");
        fx.assert_settled(&d, &p).await;
    }

    // Down for three intervals: the missed slots amount to one rotation.
    fx.advance(3 * HOUR);
    let before = fx.issued().len();
    let (d, p) = fx.restart(&spec);
    pass(&d, &p).await;
    assert_eq!(fx.issued().len(), before + 1, "one catch-up rotation");
    let (d, p) = fx.restart(&spec);
    let tick = pass(&d, &p).await;
    assert_eq!(fx.issued().len(), before + 1, "and only one");
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == fx.now() + chrono::Duration::hours(1)),
        "the next slot counts from the catch-up rotation: {tick:?}"
    );
    fx.assert_settled(&d, &p).await;
}

// ---------------------------------------------------------------------------
// 7. Orphan sweep
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sweep_revokes_only_unreferenced_old_enough_tokens_of_the_policy() {
    let mut fx = Fixture::new().await;
    fx.orphan_min_age = "10m";
    let spec = PolicySpec::new("0s");
    let (driver, policy, stored) = fx.first_token(&spec).await;

    // A token named like one of this policy's rotations, but stored nowhere
    // (a crash between create and stage), and tokens that are not ours.
    let orphan = fx
        .create_raw(&policy.token_name("0190aaaabbbbccccdddd"))
        .await;
    let foreign = fx.create_raw("hand-made-token").await;
    let other_policy = fx.create_raw("rotator.other.0190aaaabbbbccccdddd").await;
    let same_stem_with_dot = fx
        .create_raw(&format!("{}x.y", policy.token_name_stem()))
        .await;

    // Too young: spared.
    let found = driver.sweep(&policy, true).await.unwrap().unwrap();
    assert!(found.is_empty(), "{found:?}");

    fx.advance(11 * MINUTE);
    let young = fx.create_raw(&policy.token_name("0190eeeeffff")).await;
    let found = driver.sweep(&policy, true).await.unwrap().unwrap();
    let ids: Vec<&str> = found.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec![orphan.as_str()], "dry run lists the orphan");
    assert!(fx.is_live(&orphan), "dry run revokes nothing");

    let found = driver.sweep(&policy, false).await.unwrap().unwrap();
    let ids: Vec<&str> = found.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec![orphan.as_str()]);
    assert!(fx.revoked(&orphan));
    for id in [
        &stored,
        &foreign,
        &other_policy,
        &same_stem_with_dot,
        &young,
    ] {
        assert!(fx.is_live(id), "`{id}` must be untouched");
    }
    assert!(
        driver
            .sweep(&policy, false)
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );

    // Once old enough, the young one goes too.
    fx.advance(10 * MINUTE);
    let found = driver.sweep(&policy, false).await.unwrap().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, young);
    assert!(fx.is_live(&stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_skips_while_a_rotation_holds_the_lock() {
    let fx = Fixture::new().await;
    let probe = Probe::start(|| {}).await;
    let spec = PolicySpec::new("0s").verify(probe.hook("20s"));
    let (driver, policy, _) = fx.first_token(&spec).await;
    probe.set_status(503);
    fx.advance(HOUR);
    let task = pass_until_verifying(&driver, &policy, &probe, "never reached verification").await;
    // Another replica's sweep must not judge tokens mid-rotation: with an
    // unreferenced token of the policy about (an orphan of some earlier
    // crash), its first look finds a candidate, and the lock it then needs
    // is held, so it skips and revokes nothing.
    let (other, p2) = fx.restart(&spec);
    let orphan = fx.create_raw(&policy.token_name("0190eeeeffff")).await;
    assert!(other.sweep(&p2, false).await.unwrap().is_none());
    assert!(fx.is_live(&orphan));
    probe.set_status(200);
    task.await.unwrap().unwrap();
    // Once the rotation is over, the sweep takes the lock and revokes it.
    let found = other.sweep(&p2, false).await.unwrap().unwrap();
    let ids: Vec<&str> = found.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec![orphan.as_str()]);
    fx.assert_settled(&driver, &policy).await;
}

/// A sweep that finds no candidate does not take the lock (on AWS every
/// acquisition writes a version of the lock secret): it completes even
/// while another replica holds the lock, and revokes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_with_nothing_to_judge_takes_no_lock() {
    let fx = Fixture::new().await;
    let spec = PolicySpec::new("0s");
    let (driver, policy, stored) = fx.first_token(&spec).await;
    let _held = policy
        .lock
        .try_lock("another-replica")
        .await
        .unwrap()
        .expect("the lock is free");
    let found = driver.sweep(&policy, false).await.unwrap();
    assert!(
        found.is_some_and(|f| f.is_empty()),
        "the sweep ran without the lock and found nothing"
    );
    assert!(fx.is_live(&stored));
}
