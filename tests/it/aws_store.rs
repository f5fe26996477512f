//! The AWS Secrets Manager destination against a real moto server: full
//! rotations read back the way consumers read them, repeats of every
//! operation, rollback, an absent secret, the lock, an outage, and secrets
//! kept out of errors and `Debug`. wiremock stands in only for what moto
//! cannot produce: access denied and throttling.
//!
//! Known moto gap (DESIGN.md): after `UpdateSecretVersionStage`,
//! `GetSecretValue` without a stage still returns the old value, so every
//! consumer-style read here names `VersionStage=AWSCURRENT` explicitly.

use std::time::Duration;

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_secretsmanager::error::SdkError;
use aws_sdk_secretsmanager::operation::describe_secret::{
    DescribeSecretError, DescribeSecretOutput,
};
use chrono::{DateTime, Utc};
use motherduck_rotator::clock::Clock;
use motherduck_rotator::secret::{ExposeSecret, SecretString};
use motherduck_rotator::stores::aws::{
    AwsConnection, AwsConnectionSettings, AwsDestination, version_id_for,
};
use motherduck_rotator::stores::{JournalState, NewRecord, Slot, StoreError, StoreErrorKind};
use serde_json::{Value, json};
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::services::Moto;
use motherduck_rotator::stores::testing::{self as records, journal};

/// The static test credentials; the secret key must never be printed.
const ACCESS_KEY: &str = "AKIDMOTOTESTKEY00001";
const SECRET_KEY: &str = "moto-test-secret-key-do-not-print-0000000";

fn credentials() -> Credentials {
    Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "aws-store-tests")
}

fn connection(endpoint: &str) -> AwsConnection {
    let settings = AwsConnectionSettings {
        endpoint_url: Some(endpoint.to_owned()),
        // One retry is enough to show the SDK's retries are on; more would
        // only slow the outage tests down.
        max_attempts: 2,
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(10),
        operation_timeout: Duration::from_secs(20),
        ..AwsConnectionSettings::new("us-east-1")
    };
    AwsConnection::with_credentials(settings, credentials()).unwrap()
}

fn destination(conn: &AwsConnection, name: &str) -> AwsDestination {
    AwsDestination::new("aws-test", conn.clone(), name).unwrap()
}

/// A plain SDK client, as a consumer (or an operator's `aws` CLI) uses.
fn consumer(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(credentials())
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

/// `aws secretsmanager get-secret-value --secret-id NAME
/// --version-stage AWSCURRENT --query SecretString`, parsed.
async fn consumer_record(client: &aws_sdk_secretsmanager::Client, name: &str) -> Value {
    let out = client
        .get_secret_value()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    serde_json::from_str(out.secret_string().unwrap()).unwrap()
}

async fn consumer_token(client: &aws_sdk_secretsmanager::Client, name: &str) -> String {
    consumer_record(client, name).await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Version id → staging labels, from `DescribeSecret`.
async fn stages(
    client: &aws_sdk_secretsmanager::Client,
    name: &str,
) -> std::collections::HashMap<String, Vec<String>> {
    describe(client, name)
        .await
        .unwrap()
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
}

/// How many versions a secret has, unlabelled ones included.
/// `DescribeSecret` of `name`, as a consumer calls it.
async fn describe(
    client: &aws_sdk_secretsmanager::Client,
    name: &str,
) -> Result<DescribeSecretOutput, SdkError<DescribeSecretError>> {
    client.describe_secret().secret_id(name).send().await
}

async fn version_count(client: &aws_sdk_secretsmanager::Client, name: &str) -> usize {
    client
        .list_secret_version_ids()
        .secret_id(name)
        .include_deprecated(true)
        .send()
        .await
        .unwrap()
        .versions()
        .len()
}

fn t0() -> DateTime<Utc> {
    "2026-05-01T10:00:00Z".parse().unwrap()
}

fn rid() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn record(rid: &str, secret: &str, prev: Option<&str>) -> NewRecord {
    records::staged(rid, secret, prev, t0(), None)
}

/// Stages and promotes `r`.
async fn stage_and_promote(d: &AwsDestination, r: &NewRecord) {
    d.stage(r).await.unwrap();
    d.promote(&journal(r, JournalState::Promoted))
        .await
        .unwrap();
}

/// moto, a consumer's client, the destination `etl` (created if
/// missing), and the record of a first complete rotation into it.
async fn one_rotation() -> (
    Moto,
    aws_sdk_secretsmanager::Client,
    AwsDestination,
    NewRecord,
) {
    let moto = Moto::start().await;
    let client = consumer(&moto.endpoint);
    let d = destination(&connection(&moto.endpoint), "etl").create_if_missing(true, None);
    let r1 = record(&rid(), "eyJone", None);
    rotate(&d, &r1).await;
    (moto, client, d, r1)
}

/// Stages and promotes `r`, and finishes it as the driver would.
async fn rotate(d: &AwsDestination, r: &NewRecord) {
    stage_and_promote(d, r).await;
    d.set_journal(&journal(r, JournalState::Verified))
        .await
        .unwrap();
    d.finish(&journal(r, JournalState::Done)).await.unwrap();
}

/// Everything printable about an error, for leak checks.
/// The secret and acknowledgement secret of `r` in `slot`, which must be
/// there.
async fn secret_of(
    d: &AwsDestination,
    slot: Slot,
    r: &NewRecord,
) -> (SecretString, Option<SecretString>) {
    d.read_secret(slot, &r.meta.rotation_id)
        .await
        .unwrap()
        .unwrap()
}

fn printed(e: &StoreError) -> String {
    format!("{e} {e:?}")
}

fn assert_no_secret(text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "a secret leaked into: {text}");
    }
}

#[tokio::test]
async fn full_rotation_is_what_consumers_read() {
    let moto = Moto::start().await;
    let client = consumer(&moto.endpoint);
    let d = destination(&connection(&moto.endpoint), "prod/md/etl").create_if_missing(true, None);

    // The first token of a new secret.
    let r1 = record(&rid(), "eyJone.first.sig", None);
    d.stage(&r1).await.unwrap();
    let v = d.load().await.unwrap();
    assert!(v.current.is_none(), "staged is not current: {v:?}");
    assert_eq!(v.pending.unwrap().meta.rotation_id, r1.meta.rotation_id);
    rotate(&d, &r1).await;
    assert_eq!(
        consumer_token(&client, "prod/md/etl").await,
        "eyJone.first.sig"
    );

    // The second: staged, invisible to consumers until promoted.
    let r2 = record(&rid(), "eyJtwo.second.sig", Some(&r1.meta.token_id));
    d.stage(&r2).await.unwrap();
    assert_eq!(
        consumer_token(&client, "prod/md/etl").await,
        "eyJone.first.sig"
    );
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().meta.rotation_id, r1.meta.rotation_id);
    let pending = v.pending.unwrap();
    assert_eq!(pending.meta.rotation_id, r2.meta.rotation_id);
    assert_eq!(pending.journal.unwrap().state, JournalState::Staged);
    let (secret, ack) = secret_of(&d, Slot::Pending, &r2).await;
    assert_eq!(secret.expose_secret(), "eyJtwo.second.sig");
    assert!(ack.is_none());

    d.promote(&journal(&r2, JournalState::Promoted))
        .await
        .unwrap();
    let rec = consumer_record(&client, "prod/md/etl").await;
    assert_eq!(rec["token"], "eyJtwo.second.sig");
    // The same fields as the file store writes.
    for field in [
        "token_id",
        "token_name",
        "service_account",
        "token_type",
        "created_at",
        "expires_at",
        "rotation_id",
    ] {
        assert!(rec.get(field).is_some(), "`{field}` missing in {rec}");
    }
    assert_eq!(rec["rotation_id"], r2.meta.rotation_id.as_str());
    assert_eq!(rec["token_type"], "read_write");
    let labels = stages(&client, "prod/md/etl").await;
    let v1 = version_id_for(&r1.meta.rotation_id);
    let v2 = version_id_for(&r2.meta.rotation_id);
    assert_eq!(labels[&v2], vec!["AWSCURRENT".to_owned()]);
    assert_eq!(labels[&v1], vec!["AWSPREVIOUS".to_owned()]);
    let v = d.load().await.unwrap();
    assert_eq!(
        v.current.as_ref().unwrap().journal.as_ref().unwrap().state,
        JournalState::Promoted
    );
    assert_eq!(
        v.previous.as_ref().unwrap().meta.rotation_id,
        r1.meta.rotation_id
    );
    let ids: Vec<&str> = v.token_ids().collect();
    assert_eq!(
        ids,
        vec![r2.meta.token_id.as_str(), r1.meta.token_id.as_str()]
    );

    // Journal updates change nothing consumers read.
    let versions = version_count(&client, "prod/md/etl").await;
    d.set_journal(&journal(&r2, JournalState::Verified))
        .await
        .unwrap();
    assert_eq!(version_count(&client, "prod/md/etl").await, versions);
    assert_eq!(
        consumer_token(&client, "prod/md/etl").await,
        "eyJtwo.second.sig"
    );
    let done = journal(&r2, JournalState::Done);
    d.finish(&done).await.unwrap();
    assert_eq!(version_count(&client, "prod/md/etl").await, versions);
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().journal.unwrap(), done);
    assert!(v.previous.is_none(), "finish forgets the revoked token");
    assert!(v.pending.is_none());
    assert_eq!(
        stages(&client, "prod/md/etl").await[&v2],
        vec!["AWSCURRENT".to_owned()]
    );
    let (secret, _) = secret_of(&d, Slot::Current, &r2).await;
    assert_eq!(secret.expose_secret(), "eyJtwo.second.sig");
    assert!(
        d.read_secret(Slot::Current, &r1.meta.rotation_id)
            .await
            .unwrap()
            .is_none()
    );
    d.check().await.unwrap();
}

#[tokio::test]
async fn every_operation_repeats_harmlessly() {
    let (_moto, client, d, r1) = one_rotation().await;
    let r2 = record(&rid(), "eyJtwo", Some(&r1.meta.token_id));

    d.stage(&r2).await.unwrap();
    d.stage(&r2).await.unwrap();
    // A retry after a restart carries a newer journal timestamp; it is the
    // same record all the same.
    let mut later = record(&r2.meta.rotation_id, "eyJtwo", Some(&r1.meta.token_id));
    later.journal.updated_at = t0() + chrono::Duration::minutes(5);
    d.stage(&later).await.unwrap();
    assert_eq!(
        version_count(&client, "etl").await,
        2,
        "no second version for one rotation"
    );

    let promoted = journal(&r2, JournalState::Promoted);
    d.promote(&promoted).await.unwrap();
    let journal_versions = version_count(&client, "etl.journal").await;
    d.promote(&promoted).await.unwrap();
    d.stage(&r2).await.unwrap();
    assert_eq!(consumer_token(&client, "etl").await, "eyJtwo");

    let verified = journal(&r2, JournalState::Verified);
    d.set_journal(&verified).await.unwrap();
    d.set_journal(&verified).await.unwrap();
    assert_eq!(
        version_count(&client, "etl.journal").await,
        journal_versions + 1,
        "an unchanged journal is not written again"
    );
    let done = journal(&r2, JournalState::Done);
    d.finish(&done).await.unwrap();
    d.finish(&done).await.unwrap();
    assert_eq!(version_count(&client, "etl").await, 2);
    assert_eq!(
        version_count(&client, "etl.journal").await,
        journal_versions + 2
    );
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().journal.unwrap(), done);
    assert!(v.previous.is_none() && v.pending.is_none());
}

#[tokio::test]
async fn rollback_moves_awscurrent_back() {
    let (_moto, client, d, r1) = one_rotation().await;

    // Rolled back after promotion.
    let r2 = record(&rid(), "eyJtwo", Some(&r1.meta.token_id));
    stage_and_promote(&d, &r2).await;
    assert_eq!(consumer_token(&client, "etl").await, "eyJtwo");
    let mut rb = journal(&r2, JournalState::RolledBack);
    rb.last_error = Some("verify: probe returned 401".into());
    rb.failures = 1;
    d.rollback(&rb).await.unwrap();
    d.rollback(&rb).await.unwrap();
    assert_eq!(consumer_token(&client, "etl").await, "eyJone");
    let labels = stages(&client, "etl").await;
    assert_eq!(
        labels[&version_id_for(&r1.meta.rotation_id)],
        vec!["AWSCURRENT".to_owned()]
    );
    assert!(
        labels
            .get(&version_id_for(&r2.meta.rotation_id))
            .is_none_or(|l| l.is_empty()),
        "the undone version keeps no label: {labels:?}"
    );
    let v = d.load().await.unwrap();
    let cur = v.current.unwrap();
    assert_eq!(cur.meta.rotation_id, r1.meta.rotation_id);
    assert_eq!(cur.journal.unwrap(), rb, "the journal records the rollback");
    assert!(v.pending.is_none() && v.previous.is_none());

    // Rolled back before promotion: the staged version is dropped.
    let r3 = record(&rid(), "eyJthree", Some(&r1.meta.token_id));
    d.stage(&r3).await.unwrap();
    let rb3 = journal(&r3, JournalState::RolledBack);
    d.rollback(&rb3).await.unwrap();
    d.rollback(&rb3).await.unwrap();
    assert_eq!(consumer_token(&client, "etl").await, "eyJone");
    let v = d.load().await.unwrap();
    assert!(v.pending.is_none());
    assert_eq!(v.current.unwrap().journal.unwrap(), rb3);

    // The next rotation proceeds normally after a rollback.
    let r4 = record(&rid(), "eyJfour", Some(&r1.meta.token_id));
    rotate(&d, &r4).await;
    assert_eq!(consumer_token(&client, "etl").await, "eyJfour");
}

#[tokio::test]
async fn first_token_rolled_back_leaves_no_current_record() {
    let moto = Moto::start().await;
    let d = destination(&connection(&moto.endpoint), "etl").create_if_missing(true, None);
    let r1 = record(&rid(), "eyJone", None);
    stage_and_promote(&d, &r1).await;
    let rb = journal(&r1, JournalState::RolledBack);
    d.rollback(&rb).await.unwrap();
    d.rollback(&rb).await.unwrap();
    let v = d.load().await.unwrap();
    assert!(
        v.current.is_none() && v.pending.is_none(),
        "nothing usable: {v:?}"
    );
    // The next rotation replaces it.
    let r2 = record(&rid(), "eyJtwo", None);
    rotate(&d, &r2).await;
    assert_eq!(
        consumer_token(&consumer(&moto.endpoint), "etl").await,
        "eyJtwo"
    );
}

#[tokio::test]
async fn interrupted_promotion_is_finished_by_a_repeat() {
    let (_moto, client, d, r1) = one_rotation().await;
    let r2 = record(&rid(), "eyJtwo", Some(&r1.meta.token_id));
    d.stage(&r2).await.unwrap();
    // The process died right after promote's first call moved AWSCURRENT.
    let (v1, v2) = (
        version_id_for(&r1.meta.rotation_id),
        version_id_for(&r2.meta.rotation_id),
    );
    client
        .update_secret_version_stage()
        .secret_id("etl")
        .version_stage("AWSCURRENT")
        .remove_from_version_id(&v1)
        .move_to_version_id(&v2)
        .send()
        .await
        .unwrap();
    let v = d.load().await.unwrap();
    assert!(v.current.is_none(), "still reads as staged: {v:?}");
    assert_eq!(v.pending.unwrap().meta.rotation_id, r2.meta.rotation_id);

    let promoted = journal(&r2, JournalState::Promoted);
    d.promote(&promoted).await.unwrap();
    assert_eq!(
        stages(&client, "etl").await[&v2],
        vec!["AWSCURRENT".to_owned()]
    );
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().journal.unwrap(), promoted);
    assert_eq!(v.previous.unwrap().meta.rotation_id, r1.meta.rotation_id);
}

#[tokio::test]
async fn absent_secret_fails_clearly_unless_created() {
    let moto = Moto::start().await;
    let client = consumer(&moto.endpoint);
    let conn = connection(&moto.endpoint);

    let d = destination(&conn, "prod/absent");
    for e in [
        d.load().await.unwrap_err(),
        d.check().await.unwrap_err(),
        d.stage(&record(&rid(), "eyJnever", None))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("`prod/absent` does not exist") && text.contains("create_if_missing"),
            "{text}"
        );
        assert!(text.starts_with("aws:us-east-1/prod/absent: "), "{text}");
        assert_no_secret(&printed(&e), &["eyJnever"]);
    }
    let e = describe(&client, "prod/absent").await.unwrap_err();
    assert!(
        e.into_service_error().is_resource_not_found_exception(),
        "nothing was created"
    );

    let kms = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let d = destination(&conn, "prod/created").create_if_missing(true, Some(kms.to_owned()));
    assert_eq!(d.load().await.unwrap(), Default::default());
    d.check().await.unwrap();
    let r1 = record(&rid(), "eyJone", None);
    rotate(&d, &r1).await;
    assert_eq!(consumer_token(&client, "prod/created").await, "eyJone");
    let described = describe(&client, "prod/created").await.unwrap();
    assert_eq!(described.kms_key_id(), Some(kms));
    assert!(
        described
            .tags()
            .iter()
            .any(|t| t.key() == Some("managed-by") && t.value() == Some("motherduck-rotator")),
        "{:?}",
        described.tags()
    );
}

#[tokio::test]
async fn a_different_record_under_the_same_rotation_is_a_conflict() {
    let moto = Moto::start().await;
    let d = destination(&connection(&moto.endpoint), "etl").create_if_missing(true, None);
    let rid1 = rid();
    let r1 = record(&rid1, "eyJoriginal", None);
    rotate(&d, &r1).await;
    let e = d
        .stage(&record(&rid1, "eyJimpostor", None))
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Conflict, "{e}");
    assert!(
        e.to_string().contains("already holds a different record"),
        "{e}"
    );
    assert_no_secret(&printed(&e), &["eyJoriginal", "eyJimpostor"]);
    assert_eq!(
        consumer_token(&consumer(&moto.endpoint), "etl").await,
        "eyJoriginal"
    );
}

#[tokio::test]
async fn the_lock_is_exclusive_expires_and_is_released() {
    let moto = Moto::start().await;
    let conn = connection(&moto.endpoint);
    let clock_a = Clock::manual(t0());
    let a = destination(&conn, "etl").with_clock(clock_a);
    let b = destination(&conn, "etl").with_clock(Clock::manual(t0()));

    let lease_a = a.try_lock("replica-a").await.unwrap().expect("free lock");
    assert!(b.try_lock("replica-b").await.unwrap().is_none());
    assert!(
        a.try_lock("replica-a").await.unwrap().is_none(),
        "not re-entrant"
    );
    assert!(lease_a.renew().await.unwrap());

    // Replica a stalls past its lease; b takes over.
    let late = Clock::manual(t0() + chrono::Duration::minutes(11));
    let b_late = destination(&conn, "etl").with_clock(late.clone());
    let lease_b = b_late
        .try_lock("replica-b")
        .await
        .unwrap()
        .expect("expired lease taken over");
    assert!(
        !lease_a.renew().await.unwrap(),
        "a learns it lost the lease"
    );
    lease_a.release().await.unwrap();
    let c = destination(&conn, "etl").with_clock(late.clone());
    assert!(
        c.try_lock("replica-c").await.unwrap().is_none(),
        "a's release left b's lease alone"
    );

    lease_b.release().await.unwrap();
    // A lease taken from a released lock writes one version of the lock
    // secret; releasing it writes none (AWS limits versions per secret).
    let client = consumer(&moto.endpoint);
    let before = version_count(&client, "etl.lock").await;
    let lease_c = c.try_lock("replica-c").await.unwrap().expect("released");
    lease_c.release().await.unwrap();
    assert_eq!(version_count(&client, "etl.lock").await, before + 1);
    let lease_c = c.try_lock("replica-c").await.unwrap().expect("released");
    assert_eq!(lease_c.holder(), "replica-c");

    // Dropping a lease releases it in the background.
    drop(lease_c);
    let d = destination(&conn, "etl").with_clock(late);
    let lease_d = crate::support::daemon::eventually(
        Duration::from_secs(10),
        Duration::from_millis(5),
        "a dropped lease was not released",
        String::new,
        async || d.try_lock("replica-d").await.unwrap(),
    )
    .await;
    assert!(!format!("{lease_d:?}").is_empty());
    lease_d.release().await.unwrap();
}

#[tokio::test]
async fn concurrent_contenders_get_exactly_one_lease() {
    let moto = Moto::start().await;
    let conn = connection(&moto.endpoint);
    let contend = || {
        let conn = conn.clone();
        async move {
            let tasks: Vec<_> = (0..4)
                .map(|i| {
                    let d = destination(&conn, "etl");
                    tokio::spawn(async move { d.try_lock(&format!("replica-{i}")).await })
                })
                .collect();
            let mut leases = Vec::new();
            for t in tasks {
                if let Some(l) = t.await.unwrap().unwrap() {
                    leases.push(l);
                }
            }
            leases
        }
    };
    // Creating the lock secret: create-if-absent decides.
    let mut winners = contend().await;
    assert_eq!(winners.len(), 1, "{winners:?}");
    winners.pop().unwrap().release().await.unwrap();
    // A released lock: the compare-and-swap on AWSCURRENT decides.
    let mut winners = contend().await;
    assert_eq!(winners.len(), 1, "{winners:?}");
    winners.pop().unwrap().release().await.unwrap();
}

#[tokio::test]
async fn a_killed_server_is_a_transient_error() {
    let mut moto = Moto::start().await;
    let d = destination(&connection(&moto.endpoint), "etl").create_if_missing(true, None);
    let r1 = record(&rid(), "eyJone.killed", None);
    d.stage(&r1).await.unwrap();
    moto.kill();

    let errors = [
        d.promote(&journal(&r1, JournalState::Promoted))
            .await
            .unwrap_err(),
        d.load().await.unwrap_err(),
        d.stage(&r1).await.unwrap_err(),
        d.try_lock("replica-a").await.unwrap_err(),
        d.check().await.unwrap_err(),
    ];
    for e in &errors {
        assert_eq!(e.kind, StoreErrorKind::Transient, "{e}");
        assert!(e.is_retryable());
        assert!(
            e.to_string().contains("cannot reach Secrets Manager"),
            "{e}"
        );
        assert_no_secret(&printed(e), &["eyJone.killed", SECRET_KEY]);
    }
}

/// A scripted AWS endpoint answering `describe` to every DescribeSecret
/// and `create` to every CreateSecret, and the destination `prod/md/etl`
/// on it.
async fn describe_and_create_answered(
    describe: ResponseTemplate,
    create: ResponseTemplate,
) -> (MockServer, AwsDestination) {
    let server = MockServer::start().await;
    for (target, answer) in [("DescribeSecret", describe), ("CreateSecret", create)] {
        Mock::given(method("POST"))
            .and(header("x-amz-target", format!("secretsmanager.{target}")))
            .respond_with(answer)
            .mount(&server)
            .await;
    }
    let d = destination(&connection(&server.uri()), "prod/md/etl");
    (server, d)
}

/// moto grants every request; access denied and throttling need a scripted
/// server. The bodies are what AWS sends for its JSON 1.1 protocol.
#[tokio::test]
async fn access_denied_and_throttling_are_classified() {
    let aws_error = |status: u16, kind: &str, message: &str| {
        ResponseTemplate::new(status)
            .insert_header("content-type", "application/x-amz-json-1.1")
            .set_body_json(json!({"__type": kind, "message": message}))
    };
    let (_server, d) = describe_and_create_answered(
        aws_error(
            400,
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/rotator is not authorized to perform: secretsmanager:DescribeSecret",
        ),
        aws_error(400, "ThrottlingException", "Rate exceeded"),
    )
    .await;

    let denied = d.load().await.unwrap_err();
    assert_eq!(denied.kind, StoreErrorKind::Permanent, "{denied}");
    let text = denied.to_string();
    assert!(
        text.contains("access denied: `secretsmanager:DescribeSecret` on secret `prod/md/etl`"),
        "{text}"
    );
    assert!(!denied.is_retryable());

    let throttled = d.try_lock("replica-a").await.unwrap_err();
    assert_eq!(throttled.kind, StoreErrorKind::Transient, "{throttled}");
    assert!(
        throttled.to_string().contains("ThrottlingException"),
        "{throttled}"
    );
    for e in [&denied, &throttled] {
        assert_no_secret(&printed(e), &[SECRET_KEY]);
    }
}

/// An error body the SDK cannot parse (XML from a proxy, or moto's IAM
/// check) has no error code; its HTTP status still names the problem.
#[tokio::test]
async fn unparseable_error_bodies_are_reported_by_status() {
    let xml = |status: u16| {
        ResponseTemplate::new(status)
            .insert_header("content-type", "text/xml")
            .set_body_string(
                "<ErrorResponse><Error><Code>AccessDenied</Code></Error></ErrorResponse>",
            )
    };
    let (_server, d) = describe_and_create_answered(xml(403), xml(502)).await;

    let denied = d.load().await.unwrap_err();
    assert_eq!(denied.kind, StoreErrorKind::Permanent, "{denied}");
    let text = denied.to_string();
    assert!(
        text.contains("access denied: `secretsmanager:DescribeSecret` on secret `prod/md/etl`")
            && text.contains("HTTP 403"),
        "{text}"
    );
    let bad_gateway = d.try_lock("replica-a").await.unwrap_err();
    assert_eq!(bad_gateway.kind, StoreErrorKind::Transient, "{bad_gateway}");
    assert!(
        bad_gateway.to_string().contains("HTTP 502"),
        "{bad_gateway}"
    );
}

#[tokio::test]
async fn server_errors_are_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(500)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_json(json!({"__type": "InternalServiceError", "message": "oops"})),
        )
        .mount(&server)
        .await;
    let d = destination(&connection(&server.uri()), "etl");
    let e = d.load().await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("InternalServiceError"), "{e}");
}

#[tokio::test]
async fn secrets_never_reach_errors_or_debug() {
    let moto = Moto::start().await;
    let client = consumer(&moto.endpoint);
    let conn = connection(&moto.endpoint);
    let d = destination(&conn, "etl").create_if_missing(true, None);
    let r1 = record(&rid(), "eyJleak.check.one", None);
    let mut r2 = record(&rid(), "eyJleak.check.two", Some(&r1.meta.token_id));
    r2.ack_secret = Some(SecretString::from("ack-leak-check".to_owned()));
    rotate(&d, &r1).await;
    d.stage(&r2).await.unwrap();
    let lease = d.try_lock("replica-a").await.unwrap().unwrap();
    let secrets = [
        "eyJleak.check.one",
        "eyJleak.check.two",
        "ack-leak-check",
        SECRET_KEY,
    ];

    let mut texts = vec![
        format!("{conn:?}"),
        format!("{d:?}"),
        format!("{lease:?}"),
        format!("{:?}", d.load().await.unwrap()),
        format!("{r2:?}"),
    ];
    // A conflict on a record that holds a secret.
    let e = d
        .stage(&record(&r1.meta.rotation_id, "eyJleak.check.three", None))
        .await
        .unwrap_err();
    texts.push(printed(&e));
    // A corrupt record: the parse error must not quote the value.
    client
        .create_secret()
        .name("corrupt")
        .secret_string(r#"{"token": "eyJleak.check.one", "token_id": 5}"#)
        .send()
        .await
        .unwrap();
    let e = destination(&conn, "corrupt").load().await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("not a token record"), "{e}");
    texts.push(printed(&e));
    lease.release().await.unwrap();

    for text in &texts {
        assert_no_secret(text, &secrets);
    }
    assert!(texts[0].contains("us-east-1") && texts[1].contains("etl"));
}
