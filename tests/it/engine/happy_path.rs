//! The happy path: a first token, a rotation, the old token revoked after
//! the overlap.

use super::*;

/// What the probe saw while the second rotation was being verified.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AtVerify {
    live: Vec<String>,
    current_token_id: String,
    state: String,
}

#[tokio::test]
async fn happy_path_first_token_then_rotation_then_revocation_after_overlap() {
    let fx = Fixture::new().await;
    let seen: Arc<Mutex<Vec<AtVerify>>> = Arc::default();
    let probe = {
        let (sim, store, seen) = (fx.sim().clone(), fx.store(), seen.clone());
        Probe::start(move || {
            let cur = read_json(&store.join("etl.json")).unwrap();
            let mut live: Vec<String> = sim.live_tokens(SA).into_iter().map(|t| t.id).collect();
            live.sort();
            seen.lock().unwrap().push(AtVerify {
                live,
                current_token_id: str_of(&cur, "token_id").to_owned(),
                state: journal_state(&cur).to_owned(),
            });
        })
        .await
    };
    let builtin = r#"{ type = "motherduck", interval = "10ms", deadline = "5s" }"#;
    let hooks = format!("[{}, {builtin}]", probe.hook_entry("5s"));
    let spec = PolicySpec::new("10m").verify(hooks);
    let (driver, policy) = fx.restart(&spec);
    let t0 = fx.now();

    // First run: no token stored yet, so one is created at once.
    let tick = pass(&driver, &policy).await;
    let cur = fx.current();
    let first = str_of(&cur, "token_id").to_owned();
    assert_eq!(fx.live_ids(), vec![first.clone()]);
    assert_eq!(fx.issued().len(), 1);
    assert!(cur["rotation"]["previous_token_id"].is_null());
    // With no old token there is no overlap to wait out.
    assert_eq!(journal_state(&cur), "done");
    assert_eq!(fx.bare(), str_of(&cur, "token"));
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == t0 + chrono::Duration::hours(1)),
        "{tick:?}"
    );
    fx.assert_settled(&driver, &policy).await;

    // Not due yet: a pass changes nothing.
    fx.advance(50 * MINUTE);
    pass(&driver, &policy).await;
    assert_eq!(fx.issued().len(), 1);

    // Past the interval: the second token replaces the first.
    fx.advance(10 * MINUTE);
    let rotated_at = fx.now();
    seen.lock().unwrap().clear();
    let tick = pass(&driver, &policy).await;
    let cur = fx.current();
    let second = str_of(&cur, "token_id").to_owned();
    assert_ne!(second, first);
    assert_eq!(fx.issued().len(), 2, "exactly one new token");
    assert_eq!(journal_state(&cur), "verified");
    assert_eq!(str_of(&cur["rotation"], "previous_token_id"), first);
    assert_eq!(str_of(&cur["rotation"], "new_token_id"), second);
    assert_eq!(
        ts(&cur["rotation"]["revoke_after"]),
        rotated_at + chrono::Duration::minutes(10)
    );
    assert_eq!(fx.bare(), str_of(&cur, "token"), "bare token file updated");
    let previous = fx.record("etl.json.previous");
    assert_eq!(
        str_of(&previous, "token_id"),
        first,
        "old record kept until revoked"
    );
    // The overlap: both tokens live.
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(fx.live_ids(), both);
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == rotated_at + chrono::Duration::minutes(10))
    );

    // Invariant 1, observed from the verification hook: while the new token
    // was being verified it was already the stored current token, and the
    // old one was still live.
    let seen_now = seen.lock().unwrap().clone();
    assert!(!seen_now.is_empty(), "the probe was called");
    for s in &seen_now {
        assert_eq!(s.current_token_id, second);
        assert_eq!(s.state, "promoted");
        assert_eq!(s.live, both, "the old token is live during verification");
    }
    assert!(probe.hits() >= 1);

    // Within the overlap nothing is revoked, however often we look.
    fx.advance(9 * MINUTE);
    pass(&driver, &policy).await;
    assert_eq!(fx.live_ids(), both);

    // After the overlap the old token is revoked and the rotation is done.
    fx.advance(MINUTE);
    let tick = pass(&driver, &policy).await;
    assert!(fx.revoked(&first));
    assert_eq!(fx.live_ids(), vec![second.clone()]);
    let cur = fx.current();
    assert_eq!(journal_state(&cur), "done");
    assert_eq!(str_of(&cur, "token_id"), second);
    assert!(!fx.store().join("etl.json.previous").exists());
    assert!(
        matches!(tick, Tick::Wait { until, .. } if until == rotated_at + chrono::Duration::hours(1))
    );
    fx.assert_settled(&driver, &policy).await;
}
