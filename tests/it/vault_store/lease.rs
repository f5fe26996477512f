//! The lease, and an outage.

use super::*;

#[tokio::test]
async fn the_lease_is_exclusive_expires_and_is_taken_over_safely() {
    let (bao, api) = start().await;
    let path = "motherduck/lease";
    // Two daemons, each with its own connection, on one path.
    let a = root_dest(&bao, path);
    let b = root_dest(&bao, path);
    let la = a
        .try_lock("replica-a")
        .await
        .unwrap()
        .expect("a free lease");
    assert_eq!(la.holder(), "replica-a");
    assert!(b.try_lock("replica-b").await.unwrap().is_none());
    assert!(
        a.try_lock("replica-a").await.unwrap().is_none(),
        "not re-entrant"
    );
    let (_, body) = api.read(&format!("secret/data/{path}.lock")).await;
    assert_eq!(body["data"]["data"]["holder"], "replica-a");
    let until = la.renew().await.unwrap();
    assert_eq!(la.expires_at().await, until);
    la.release().await.unwrap();

    let lb = b
        .try_lock("replica-b")
        .await
        .unwrap()
        .expect("free after release");
    // Eleven minutes on, b's ten-minute lease has expired: a takes over.
    let later = Utc::now() + chrono::Duration::minutes(11);
    assert!(
        a.try_lock_at("replica-a", Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    let la = a
        .try_lock_at("replica-a", later)
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    let e = lb.renew().await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Conflict, "{e}");
    assert!(lb.is_lost());
    // b's release, on drop, deletes only its own version: a keeps the lease.
    drop(lb);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(b.try_lock_at("replica-b", later).await.unwrap().is_none());
    assert!(!la.is_lost());

    // Dropping a lease releases it (best effort, in the background).
    drop(la);
    let mut taken = None;
    for _ in 0..200 {
        taken = b.try_lock_at("replica-b", later).await.unwrap();
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(taken.is_some(), "the dropped lease was released");
}

#[tokio::test]
async fn a_stopped_server_is_a_transient_error() {
    let mut bao = OpenBao::start().await;
    let conn = connect(&bao.addr, token_auth(&bao.root_token));
    let d = dest(&conn, "secret", "motherduck/outage", KvVersion::V2);
    let s1 = secret("r1");
    let r1 = record("r1", &s1, None);
    d.stage(&r1).await.unwrap();
    d.load().await.unwrap();
    bao.kill();
    let e = promote_err(&d, &r1).await;
    assert_eq!(e.kind, StoreErrorKind::Transient, "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("cannot reach Vault"), "{e}");
    assert_clean(&e, &[&s1, &bao.root_token]);
    for e in [
        d.load().await.unwrap_err(),
        d.check().await.unwrap_err(),
        d.try_lock("a").await.unwrap_err(),
    ] {
        assert_eq!(e.kind, StoreErrorKind::Transient, "{e}");
        assert_clean(&e, &[&s1, &bao.root_token]);
    }
}
