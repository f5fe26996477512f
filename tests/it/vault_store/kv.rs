//! Full rotations on KV v2 and KV v1, rollback, conflicts, crash recovery,
//! and records the store cannot use.

use super::*;

#[tokio::test]
async fn kv2_full_rotation_with_the_least_privilege_policy() {
    let (bao, api) = start().await;
    let root = connect(&bao.addr, token_auth(&bao.root_token));
    let path = "motherduck/etl";
    // The policy the store documents is the one the rotation runs under.
    let hcl = dest(&root, "secret", path, KvVersion::V2).required_policy_hcl();
    api.policy("rotator", &hcl).await;
    let limited = api.token(&["rotator"], "1h").await;
    let conn = connect(&bao.addr, token_auth(&limited));
    let d = dest(&conn, "secret", path, KvVersion::V2);
    // An operator's own metadata on the secret survives the rotations.
    api.post(
        &format!("secret/metadata/{path}"),
        json!({ "custom_metadata": { "owner": "team-data" } }),
    )
    .await;
    d.check().await.unwrap();

    let s1 = secret("r1");
    let r1 = record("r1", &s1, None);
    d.stage(&r1).await.unwrap();
    d.stage(&r1).await.unwrap();
    let v = d.load().await.unwrap();
    assert!(v.current.is_none(), "staged is not visible to consumers");
    let pending = v.pending.unwrap();
    assert_eq!(pending.meta.rotation_id, "r1");
    assert_eq!(pending.journal, Some(r1.journal.clone()));
    assert_eq!(api.read(&format!("secret/data/{path}")).await.0, 404);
    let (tok, ack) = d.read_secret(Slot::Pending, "r1").await.unwrap().unwrap();
    assert_eq!(tok.expose_secret(), s1);
    assert!(ack.is_none());
    assert!(
        d.read_secret(Slot::Pending, "other")
            .await
            .unwrap()
            .is_none()
    );

    let promoted = journal(&r1, JournalState::Promoted);
    d.promote(&promoted).await.unwrap();
    d.promote(&promoted).await.unwrap();
    // A consumer: `vault kv get -field=token secret/motherduck/etl`.
    let (status, body) = api.read(&format!("secret/data/{path}")).await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"]["data"];
    assert_eq!(data["token"], s1.as_str());
    let mut keys: Vec<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "expires_at",
            "rotation_id",
            "service_account",
            "token",
            "token_id",
            "token_name",
            "token_type"
        ],
        "the data is the record, the journal is not in it"
    );
    let custom = &body["data"]["metadata"]["custom_metadata"];
    assert_eq!(custom["owner"], "team-data");
    assert_eq!(custom["rotation_state"], "promoted");
    assert_eq!(custom["rotation_id"], "r1");
    assert!(!custom.to_string().contains(&s1), "no secret in metadata");
    let v = d.load().await.unwrap();
    assert_eq!(v.current.as_ref().unwrap().journal, Some(promoted.clone()));
    assert!(v.pending.is_none() && v.previous.is_none());
    assert_eq!(
        api.read(&format!("secret/metadata/{path}.pending")).await.0,
        404,
        "the staged copy is deleted with all its versions"
    );

    let verified = Journal {
        revoke_after: Some("2026-01-01T01:00:00Z".parse().unwrap()),
        ..journal(&r1, JournalState::Verified)
    };
    d.set_journal(&verified).await.unwrap();
    d.set_journal(&verified).await.unwrap();
    let done = journal(&r1, JournalState::Done);
    d.finish(&done).await.unwrap();
    d.finish(&done).await.unwrap();
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().journal, Some(done));

    // The second rotation keeps the first token as the previous record
    // until it finishes.
    let (s2, r2) = stage_second(&d).await;
    d.load().await.unwrap();
    promote(&d, &r2).await;
    let v = d.load().await.unwrap();
    assert_eq!(v.current.as_ref().unwrap().meta.rotation_id, "r2");
    assert_eq!(v.previous.as_ref().unwrap().meta.rotation_id, "r1");
    let ids: Vec<&str> = v.token_ids().collect();
    assert_eq!(ids, ["id-r2", "id-r1"]);
    let (tok, _) = d.read_secret(Slot::Current, "r2").await.unwrap().unwrap();
    assert_eq!(tok.expose_secret(), s2);
    let (_, body) = api.read(&format!("secret/data/{path}")).await;
    assert_eq!(body["data"]["data"]["token"], s2.as_str());
    assert_eq!(body["data"]["metadata"]["version"], 2);
    assert_eq!(
        body["data"]["metadata"]["custom_metadata"]["rotation_previous_version"],
        "1"
    );
    d.finish(&journal(&r2, JournalState::Done)).await.unwrap();
    let v = d.load().await.unwrap();
    assert!(v.previous.is_none(), "finish forgets the revoked token");
    d.check().await.unwrap();
}

#[tokio::test]
async fn kv2_rollback_restores_the_previous_version_as_a_new_version() {
    let (bao, api) = start().await;
    let conn = connect(&bao.addr, token_auth(&bao.root_token));
    let path = "motherduck/rb";
    let d = dest(&conn, "secret", path, KvVersion::V2);
    let s1 = secret("r1");
    let r1 = record("r1", &s1, None);
    rotate_fully(&d, &r1).await;
    let (_, r2) = stage_second(&d).await;
    d.load().await.unwrap();
    promote(&d, &r2).await;
    d.load().await.unwrap();

    let rb = Journal {
        last_error: Some("verify: http probe answered 401".into()),
        failures: 1,
        retry_at: Some("2026-01-01T00:10:00Z".parse().unwrap()),
        ..journal(&r2, JournalState::RolledBack)
    };
    d.rollback(&rb).await.unwrap();
    d.rollback(&rb).await.unwrap();
    let (_, body) = api.read(&format!("secret/data/{path}")).await;
    assert_eq!(body["data"]["data"]["token"], s1.as_str());
    assert_eq!(body["data"]["metadata"]["version"], 3, "a new version");
    let (_, v1) = api.read(&format!("secret/data/{path}?version=1")).await;
    assert_eq!(
        body["data"]["data"], v1["data"]["data"],
        "version 3 is version 1's data"
    );
    let v = d.load().await.unwrap();
    let cur = v.current.unwrap();
    assert_eq!(cur.meta.rotation_id, "r1");
    assert_eq!(
        cur.journal,
        Some(rb.clone()),
        "the journal records the rollback"
    );
    assert!(v.previous.is_none() && v.pending.is_none());

    // A rollback before promotion only drops the staged record.
    let r3 = record("r3", &secret("r3"), Some("id-r1"));
    d.stage(&r3).await.unwrap();
    d.load().await.unwrap();
    d.rollback(&journal(&r3, JournalState::RolledBack))
        .await
        .unwrap();
    let v = d.load().await.unwrap();
    assert!(v.pending.is_none());
    assert_eq!(v.current.unwrap().meta.rotation_id, "r1");
    let (_, body) = api.read(&format!("secret/data/{path}")).await;
    assert_eq!(body["data"]["data"]["token"], s1.as_str());

    // The first token of a destination has nothing to go back to: it is
    // deleted (it is about to be revoked).
    let first = dest(&conn, "secret", "motherduck/first", KvVersion::V2);
    let f1 = record("f1", &secret("f1"), None);
    first.stage(&f1).await.unwrap();
    first
        .promote(&journal(&f1, JournalState::Promoted))
        .await
        .unwrap();
    first
        .rollback(&journal(&f1, JournalState::RolledBack))
        .await
        .unwrap();
    first
        .rollback(&journal(&f1, JournalState::RolledBack))
        .await
        .unwrap();
    assert_eq!(api.read("secret/data/motherduck/first").await.0, 404);
    let v = first.load().await.unwrap();
    assert!(v.current.is_none() && v.pending.is_none() && v.previous.is_none());
    // …and the next rotation starts from there.
    rotate_fully(&first, &record("f2", &secret("f2"), None)).await;
}

#[tokio::test]
async fn kv2_a_write_behind_the_stores_back_is_a_conflict() {
    let (bao, api) = start().await;
    let path = "motherduck/cas";
    let d = root_dest(&bao, path);
    let s1 = secret("r1");
    rotate_fully(&d, &record("r1", &s1, None)).await;
    let (s2, r2) = stage_second(&d).await;
    d.load().await.unwrap();

    // An operator replaces the token by hand between load and promote.
    let manual = secret("manual");
    api.post(
        &format!("secret/data/{path}"),
        json!({ "data": {
            "token": manual, "token_id": "id-manual", "token_name": "by-hand",
            "service_account": "svc_etl", "token_type": "read_write",
            "created_at": "2026-01-02T00:00:00Z", "rotation_id": "manual"
        }}),
    )
    .await;
    let e = promote_err(&d, &r2).await;
    assert_eq!(e.kind, StoreErrorKind::Conflict, "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("changed since it was loaded"), "{e}");
    assert_clean(&e, &[&s1, &s2, &manual, &bao.root_token]);
    let (_, body) = api.read(&format!("secret/data/{path}")).await;
    assert_eq!(body["data"]["data"]["token"], manual.as_str(), "untouched");

    // After a fresh load the promotion goes through, keeping the manual
    // record as the previous one.
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().meta.rotation_id, "manual");
    promote(&d, &r2).await;
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().meta.rotation_id, "r2");
    assert_eq!(v.previous.unwrap().meta.rotation_id, "manual");

    // Many replicas racing to create the same lease: Vault's check-and-set
    // lets exactly one write win.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let c = connect(&bao.addr, token_auth(&bao.root_token));
        let d = dest(&c, "secret", "motherduck/race", KvVersion::V2);
        set.spawn(async move {
            d.try_lock(&format!("replica-{i}"))
                .await
                .unwrap()
                .map(|l| (l, d))
        });
    }
    let winners: Vec<_> = set.join_all().await.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1, "exactly one replica holds the lease");
}

/// The journal is written after the record on `P` and before it on
/// `P.pending`; a crash between the two requests must leave something the
/// state machine continues from.
#[tokio::test]
async fn kv2_a_crash_between_record_and_journal_is_recovered() {
    let (bao, api) = start().await;
    let path = "motherduck/crash";
    let d = root_dest(&bao, path);
    rotate_fully(&d, &record("r1", &secret("r1"), None)).await;
    let (_, r2) = stage_second(&d).await;

    // `promote` wrote the new version of `P`, then the process died before
    // the journal: copy the staged data over by hand.
    let (_, staged) = api.read(&format!("secret/data/{path}.pending")).await;
    api.post(
        &format!("secret/data/{path}"),
        json!({ "data": staged["data"]["data"], "options": { "cas": 1 } }),
    )
    .await;
    let v = d.load().await.unwrap();
    let cur = v.current.as_ref().unwrap();
    assert_eq!(cur.meta.rotation_id, "r2");
    assert_eq!(cur.journal, None, "a journal of another version is ignored");
    assert_eq!(
        v.pending.as_ref().unwrap().journal,
        Some(r2.journal.clone())
    );
    assert_eq!(
        v.previous.as_ref().unwrap().meta.rotation_id,
        "r1",
        "the replaced token stays referenced"
    );
    let now: DateTime<Utc> = "2026-01-01T00:05:00Z".parse().unwrap();
    let step = plan::decide(
        std::slice::from_ref(&v),
        now,
        (now + chrono::Duration::days(1), "interval".into()),
    );
    // Not promoted yet: the journal and the removal of the staged copy
    // are part of the promotion, which is repeated and finishes them.
    assert!(
        matches!(&step, plan::Step::Promote { dests, .. } if dests == &[0]),
        "{step:?}"
    );
    promote(&d, &r2).await;
    let v = d.load().await.unwrap();
    assert!(v.pending.is_none(), "the staged copy is gone");
    assert!(v.current_settled());
    assert_eq!(
        v.current.as_ref().unwrap().journal,
        Some(journal(&r2, JournalState::Promoted))
    );
    let step = plan::decide(
        std::slice::from_ref(&v),
        now,
        (now + chrono::Duration::days(1), "interval".into()),
    );
    assert!(matches!(step, plan::Step::Verify { .. }), "{step:?}");
    // The driver goes on: verified, then done. The previous record is the
    // version before.
    let verified = journal(&r2, JournalState::Verified);
    d.set_journal(&verified).await.unwrap();
    let v = d.load().await.unwrap();
    assert!(v.pending.is_none());
    assert_eq!(v.current.as_ref().unwrap().journal, Some(verified));
    assert_eq!(v.previous.unwrap().meta.rotation_id, "r1");
    d.finish(&journal(&r2, JournalState::Done)).await.unwrap();
    assert!(d.load().await.unwrap().previous.is_none());

    // `stage` wrote the journal of `P.pending`, then died before the data:
    // nothing is staged (the created token is an orphan for the sweep).
    let r3 = record("r3", &secret("r3"), Some("id-r2"));
    api.post(
        &format!("secret/metadata/{path}.pending"),
        json!({ "custom_metadata": {
            "rotation_record_version": "1", "rotation_id": "r3",
            "rotation_state": "staged", "rotation_new_token_id": "id-r3",
            "rotation_started_at": "2026-01-01T00:00:00Z",
            "rotation_updated_at": "2026-01-01T00:00:00Z", "rotation_failures": "0"
        }}),
    )
    .await;
    let v = d.load().await.unwrap();
    assert!(v.pending.is_none());
    let step = plan::decide(
        std::slice::from_ref(&v),
        now,
        (now + chrono::Duration::days(1), "interval".into()),
    );
    assert!(matches!(step, plan::Step::Wait { .. }), "{step:?}");
    // The repeat (or the next rotation) stages over it.
    d.stage(&r3).await.unwrap();
    let v = d.load().await.unwrap();
    assert_eq!(v.pending.unwrap().journal, Some(r3.journal.clone()));
}

#[tokio::test]
async fn kv1_full_rotation_rollback_and_no_lease() {
    let (bao, api) = start().await;
    api.enable_kv1("kv1").await;
    let conn = connect(&bao.addr, token_auth(&bao.root_token));
    let path = "motherduck/etl";
    let d = dest(&conn, "kv1", path, KvVersion::V1);
    assert_eq!(d.label(), "vault:kv1/motherduck/etl (kv v1)");
    d.check().await.unwrap();
    // A KV v2 destination on a KV v1 mount is refused by the check.
    let wrong = dest(&conn, "kv1", "motherduck/other", KvVersion::V2);
    let e = wrong.check().await.unwrap_err();
    assert!(e.to_string().contains("configured for KV v2"), "{e}");
    // Taking its lock is refused the same way, and writes nothing (on
    // KV v1 the lease would land at `kv1/data/…`, where nothing reads).
    let e = wrong.try_lock("replica-a").await.unwrap_err();
    assert!(e.to_string().contains("configured for KV v2"), "{e}");
    assert_eq!(
        api.read("kv1/data/motherduck/other.lock").await.0,
        404,
        "no stray lease"
    );

    let s1 = secret("r1");
    let r1 = record("r1", &s1, None);
    d.stage(&r1).await.unwrap();
    d.stage(&r1).await.unwrap();
    assert_eq!(api.read(&format!("kv1/{path}")).await.0, 404);
    let promoted = journal(&r1, JournalState::Promoted);
    d.promote(&promoted).await.unwrap();
    d.promote(&promoted).await.unwrap();
    // A consumer: `vault kv get -field=token kv1/motherduck/etl`; the
    // journal is visible beside the token.
    let (status, body) = api.read(&format!("kv1/{path}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["token"], s1.as_str());
    assert_eq!(body["data"]["rotation"]["state"], "promoted");
    rotate_fully(&d, &r1).await;
    let v = d.load().await.unwrap();
    assert_eq!(
        v.current.unwrap().journal.unwrap().state,
        JournalState::Done
    );

    let (s2, r2) = stage_second(&d).await;
    promote(&d, &r2).await;
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().meta.rotation_id, "r2");
    assert_eq!(v.previous.unwrap().meta.rotation_id, "r1");
    let (_, body) = api.read(&format!("kv1/{path}.previous")).await;
    assert_eq!(
        body["data"]["token"],
        s1.as_str(),
        "documented sibling path"
    );
    let (_, body) = api.read(&format!("kv1/{path}")).await;
    assert_eq!(body["data"]["token"], s2.as_str());

    let rb = journal(&r2, JournalState::RolledBack);
    d.rollback(&rb).await.unwrap();
    d.rollback(&rb).await.unwrap();
    let (_, body) = api.read(&format!("kv1/{path}")).await;
    assert_eq!(body["data"]["token"], s1.as_str());
    let v = d.load().await.unwrap();
    let cur = v.current.unwrap();
    assert_eq!(cur.meta.rotation_id, "r1");
    assert_eq!(cur.journal, Some(rb));
    assert!(v.previous.is_none() && v.pending.is_none());

    let e = d.try_lock("replica-a").await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Permanent);
    assert!(e.to_string().contains("another destination"), "{e}");
}

#[tokio::test]
async fn corrupt_records_and_journals_are_clear_errors_without_secrets() {
    let (bao, api) = start().await;
    let conn = connect(&bao.addr, token_auth(&bao.root_token));
    let d = dest(&conn, "secret", "motherduck/bad", KvVersion::V2);
    let leaked = "eyJsecret-should-never-be-printed";
    api.post(
        "secret/data/motherduck/bad",
        json!({ "data": { "token": leaked, "token_id": 5 } }),
    )
    .await;
    let e = d.load().await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("not a valid token record"), "{e}");
    assert_clean(&e, &[leaked, &bao.root_token]);

    // A journal key an operator broke by hand.
    let ok = dest(&conn, "secret", "motherduck/badjournal", KvVersion::V2);
    let r1 = record("r1", &secret("r1"), None);
    ok.stage(&r1).await.unwrap();
    ok.promote(&journal(&r1, JournalState::Promoted))
        .await
        .unwrap();
    let (_, meta) = api.read("secret/metadata/motherduck/badjournal").await;
    let mut custom = meta["data"]["custom_metadata"].clone();
    custom["rotation_state"] = json!("exploded");
    api.post(
        "secret/metadata/motherduck/badjournal",
        json!({ "custom_metadata": custom }),
    )
    .await;
    let e = ok.load().await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("rotation_state"), "{e}");

    // No secret in any Debug output.
    let printed = format!("{conn:?} {d:?}");
    assert!(!printed.contains(&bao.root_token), "{printed}");
    let lease = d.try_lock("replica-a").await.unwrap().unwrap();
    let printed = format!("{lease:?}");
    assert!(!printed.contains(&bao.root_token), "{printed}");
    lease.release().await.unwrap();
}

/// A secret that keeps one version cannot give its previous record back:
/// the check and the preflight before each rotation refuse it, naming the
/// setting, and `max_versions = 0` (the mount's default) is fine.
#[tokio::test]
async fn a_secret_keeping_one_version_is_refused_before_rotating() {
    let (bao, api) = start().await;
    let path = "motherduck/one-version";
    let d = root_dest(&bao, path);
    d.check().await.unwrap();
    d.preflight().await.unwrap();
    api.post(
        &format!("secret/metadata/{path}"),
        json!({ "max_versions": 1 }),
    )
    .await;
    for e in [
        d.check().await.unwrap_err(),
        d.preflight().await.unwrap_err(),
    ] {
        assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("max_versions = 1") && text.contains(&format!("secret/metadata/{path}")),
            "{text}"
        );
    }
    api.post(
        &format!("secret/metadata/{path}"),
        json!({ "max_versions": 0 }),
    )
    .await;
    d.preflight().await.unwrap();
}
