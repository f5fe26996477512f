//! One-shot commands on the crash tests' store: `rotate` against another
//! `rotate`, its report of a failed first token, `validate --online` and
//! `status`.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::support::daemon::PATIENCE;

use super::{ROTATE, SA, VERIFY_FAILS, VERIFY_OK, World};

/// Two `rotate` processes on one store: the second finds the first inside
/// its rotation (held in verification by a hook that waits for a file) and
/// is refused the lock; exactly one rotation happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rotate_processes_rotate_once() {
    let w = World::new().await;
    let (verify, gate) = w.gate("10ms", "30s");
    let cfg = w.config("gated", &format!("[{verify}]"));

    std::fs::write(&gate, "").unwrap();
    let status = w.bin().run("first", &cfg, ROTATE, None).await;
    assert!(status.success(), "{}", w.logs());
    let first = w.converged().unwrap()["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(&gate).unwrap();

    // A rotates and waits in verification.
    let mut a = w.bin().spawn("a", &cfg, ROTATE, None);
    w.eventually("A never reached verification", async || {
        let cur = w.current().unwrap();
        (cur["token_id"] != first.as_str() && cur["rotation"]["state"] == "promoted").then_some(())
    })
    .await;

    // B is refused while A holds the lock.
    w.run_refused(
        "b",
        &cfg,
        ROTATE,
        "b.out",
        "etl: another replica holds the lock; not rotated",
    )
    .await;
    assert_eq!(w.issued_count(), 2, "B created nothing\n{}", w.logs());

    // A finishes.
    std::fs::write(&gate, "").unwrap();
    let status = tokio::time::timeout(PATIENCE, a.wait())
        .await
        .expect("A finishes")
        .unwrap();
    assert!(status.success(), "A: {status}\n{}", w.logs());
    assert!(w.log("a.out").contains("etl: rotated"), "{}", w.logs());
    let cur = w.assert_converged();
    assert_ne!(cur["token_id"], first.as_str());
    assert_eq!(w.issued_count(), 2, "exactly one rotation");
    w.assert_stored_token_works().await;
}

/// A policy's first token failing verification leaves no record to carry
/// the failure; `rotate` still reports it, with the step and the reason,
/// and exits 1, and no token is left live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_reports_a_failed_first_token() {
    let w = World::new().await;
    let bad = w.config("bad", VERIFY_FAILS);
    let status = w.bin().run("first", &bad, ROTATE, None).await;
    assert_eq!(status.code(), Some(1), "{}", w.logs());
    let out = w.log("first.out");
    assert!(
        out.contains("etl: failed: rotation ")
            && out.contains(" failed at verify: ")
            && out.contains("no token is stored yet"),
        "{out}"
    );
    assert!(w.live_ids().is_empty(), "{}", w.logs());
    assert!(w.current().is_none());
}

/// `validate --online` also asks MotherDuck for each policy's service
/// account, so a misspelt one is found before its first rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_online_finds_a_missing_service_account() {
    let w = World::new().await;
    std::fs::create_dir_all(w.store()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(w.store(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let good = w.config("good", VERIFY_OK);
    let status = w
        .bin()
        .run("good", &good, &["validate", "--online"], None)
        .await;
    assert!(status.success(), "{}", w.logs());
    assert!(
        w.log("good.out")
            .contains(&format!("service account {SA} (etl): ok")),
        "{}",
        w.logs()
    );
    let bad = w.root().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good).unwrap().replace(
            &format!(r#"service_account = "{SA}""#),
            r#"service_account = "svc_nobody""#,
        ),
    )
    .unwrap();
    w.run_refused(
        "bad",
        &bad,
        &["validate", "--online"],
        "bad.out",
        "service account svc_nobody (etl): FAILED: no such user in MotherDuck",
    )
    .await;
}

/// A destination that lost its record (a store restored from an old
/// backup, an in-memory dev server restarted) makes the policy due at
/// once, and `status` says so instead of showing the scheduled time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_a_lost_destination_record_as_due_now() {
    let w = World::new().await;
    let good = w.good_config(
        &[(
            r#"destinations = [{ store = "local", path = "etl.json", bare_token_file = "etl.token" }]"#,
            r#"destinations = [{ store = "local", path = "etl.json", bare_token_file = "etl.token" }, { store = "local", path = "etl-copy.json" }]"#,
        )],
    );
    let status = w.bin().run("first", &good, ROTATE, None).await;
    assert!(status.success(), "{}", w.logs());
    std::fs::remove_file(w.store().join("etl-copy.json")).unwrap();
    let status = w
        .bin()
        .run("status", &good, &["status", "--json"], None)
        .await;
    assert!(status.success(), "{}", w.logs());
    let out: Value = serde_json::from_str(&w.log("status.out")).unwrap();
    let reason = out["policies"][0]["next_due_reason"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(reason, "1 destination(s) hold no token", "{out}");
    let due: DateTime<Utc> = out["policies"][0]["next_due"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(due <= Utc::now(), "{out}");
}
