//! The Vault destination against a real OpenBao dev server: full rotations
//! on KV v2 and KV v1 read back the way consumers read them, repeats of
//! every operation, rollback, a write behind the store's back, permission
//! denied, AppRole login with token renewal and re-login, the lease, TLS
//! with a CA file, mutual TLS against a listener that requires a client
//! certificate (certificates made with the `openssl` CLI), an outage, and
//! secrets kept out of errors and `Debug`.
//!
//! Setup (the KV v1 mount, AppRole, policies, limited tokens) goes through
//! Vault's HTTP API as root, the way an operator would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use motherduck_rotator::motherduck::TokenType;
use motherduck_rotator::rotation::plan;
use motherduck_rotator::secret::{ExposeSecret, SecretString};
use motherduck_rotator::stores::vault::{
    KvVersion, TokenAction, VaultAuth, VaultConnection, VaultDestination, VaultSettings,
    VaultSetupError,
};
use motherduck_rotator::stores::{
    Journal, JournalState, NewRecord, Slot, StoreError, StoreErrorKind, TokenMeta,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::services::{OpenBao, free_port, tool_path};

/// The root token and a plain HTTP client, as an operator or a consumer
/// uses them.
struct Api {
    addr: String,
    root: String,
    http: reqwest::Client,
}

impl Api {
    fn new(bao: &OpenBao) -> Api {
        Api {
            addr: bao.addr.clone(),
            root: bao.root_token.clone(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    /// A request with `token`; returns the status and the JSON body (or
    /// `null`).
    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A root request that must succeed.
    async fn root(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(&self.root, method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    async fn policy(&self, name: &str, hcl: &str) {
        self.root(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await;
    }

    /// A token with `policies` (and `default`), renewable, with `ttl`.
    async fn token(&self, policies: &[&str], ttl: &str) -> String {
        let v = self
            .root(
                reqwest::Method::POST,
                "auth/token/create",
                Some(json!({ "policies": policies, "ttl": ttl })),
            )
            .await;
        v["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    async fn enable_kv1(&self, mount: &str) {
        self.root(
            reqwest::Method::POST,
            &format!("sys/mounts/{mount}"),
            Some(json!({ "type": "kv", "options": { "version": "1" } })),
        )
        .await;
    }

    async fn enable_approle(&self) {
        self.root(
            reqwest::Method::POST,
            "sys/auth/approle",
            Some(json!({ "type": "approle" })),
        )
        .await;
    }

    /// Creates an AppRole role; returns its role id and a new secret id.
    async fn approle(&self, role: &str, settings: Value) -> (String, String) {
        self.root(
            reqwest::Method::POST,
            &format!("auth/approle/role/{role}"),
            Some(settings),
        )
        .await;
        let v = self
            .root(
                reqwest::Method::GET,
                &format!("auth/approle/role/{role}/role-id"),
                None,
            )
            .await;
        let role_id = v["data"]["role_id"].as_str().unwrap().to_owned();
        let v = self
            .root(
                reqwest::Method::POST,
                &format!("auth/approle/role/{role}/secret-id"),
                None,
            )
            .await;
        let secret_id = v["data"]["secret_id"].as_str().unwrap().to_owned();
        (role_id, secret_id)
    }

    /// What a consumer gets from `GET /v1/<path>` with the root token.
    async fn read(&self, path: &str) -> (u16, Value) {
        self.call(&self.root, reqwest::Method::GET, path, None)
            .await
    }
}

fn settings(addr: &str, auth: VaultAuth) -> VaultSettings {
    VaultSettings {
        request_timeout: Duration::from_secs(10),
        ..VaultSettings::new(addr, auth)
    }
}

fn token_auth(token: &str) -> VaultAuth {
    VaultAuth::Token(SecretString::from(token.to_owned()))
}

fn connect(addr: &str, auth: VaultAuth) -> VaultConnection {
    VaultConnection::new(settings(addr, auth)).unwrap()
}

fn dest(conn: &VaultConnection, mount: &str, path: &str, kv: KvVersion) -> VaultDestination {
    VaultDestination::new(conn.clone(), "vault-test", mount, path, kv).unwrap()
}

/// A secret that looks like a MotherDuck token and is unique to the test.
fn secret(rid: &str) -> String {
    format!(
        "eyJhbGciOiJIUzI1NiJ9.{rid}-{}.sig",
        uuid::Uuid::new_v4().simple()
    )
}

fn record(rid: &str, token: &str, prev: Option<&str>) -> NewRecord {
    let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    NewRecord {
        token: SecretString::from(token.to_owned()),
        meta: TokenMeta {
            token_id: format!("id-{rid}"),
            token_name: format!("rotator.etl.{rid}"),
            service_account: "svc_etl".into(),
            token_type: TokenType::ReadWrite,
            created_at: now,
            expires_at: Some("2026-04-01T00:00:00Z".parse().unwrap()),
            rotation_id: rid.into(),
        },
        journal: Journal {
            rotation_id: rid.into(),
            state: JournalState::Staged,
            previous_token_id: prev.map(str::to_owned),
            new_token_id: format!("id-{rid}"),
            started_at: now,
            updated_at: now,
            revoke_after: None,
            last_error: None,
            failures: 0,
            retry_at: None,
            acknowledged_at: None,
        },
        ack_secret: None,
    }
}

fn journal(r: &NewRecord, state: JournalState) -> Journal {
    Journal {
        state,
        ..r.journal.clone()
    }
}

/// Asserts that an error carries none of `secrets`, in `Display` or
/// `Debug`.
fn assert_clean(e: &StoreError, secrets: &[&str]) {
    let shown = format!("{e} {e:?}");
    for s in secrets {
        assert!(!shown.contains(s), "a secret leaked into: {shown}");
    }
}

/// Runs a record through stage → promote → verified → done, repeating
/// every step, as the driver does after a crash.
async fn rotate_fully(d: &VaultDestination, r: &NewRecord) {
    d.load().await.unwrap();
    d.stage(r).await.unwrap();
    d.stage(r).await.unwrap();
    d.load().await.unwrap();
    let promoted = journal(r, JournalState::Promoted);
    d.promote(&promoted).await.unwrap();
    d.promote(&promoted).await.unwrap();
    d.load().await.unwrap();
    let verified = Journal {
        revoke_after: Some("2026-01-01T01:00:00Z".parse().unwrap()),
        ..journal(r, JournalState::Verified)
    };
    d.set_journal(&verified).await.unwrap();
    d.set_journal(&verified).await.unwrap();
    d.load().await.unwrap();
    let done = journal(r, JournalState::Done);
    d.finish(&done).await.unwrap();
    d.finish(&done).await.unwrap();
}

#[tokio::test]
async fn kv2_full_rotation_with_the_least_privilege_policy() {
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    let root = connect(&bao.addr, token_auth(&bao.root_token));
    let path = "motherduck/etl";
    // The policy the store documents is the one the rotation runs under.
    let hcl = dest(&root, "secret", path, KvVersion::V2).required_policy_hcl();
    api.policy("rotator", &hcl).await;
    let limited = api.token(&["rotator"], "1h").await;
    let conn = connect(&bao.addr, token_auth(&limited));
    let d = dest(&conn, "secret", path, KvVersion::V2);
    // An operator's own metadata on the secret survives the rotations.
    api.root(
        reqwest::Method::POST,
        &format!("secret/metadata/{path}"),
        Some(json!({ "custom_metadata": { "owner": "team-data" } })),
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
    let s2 = secret("r2");
    let r2 = record("r2", &s2, Some("id-r1"));
    d.stage(&r2).await.unwrap();
    d.load().await.unwrap();
    d.promote(&journal(&r2, JournalState::Promoted))
        .await
        .unwrap();
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
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    let conn = connect(&bao.addr, token_auth(&bao.root_token));
    let path = "motherduck/rb";
    let d = dest(&conn, "secret", path, KvVersion::V2);
    let s1 = secret("r1");
    let r1 = record("r1", &s1, None);
    rotate_fully(&d, &r1).await;
    let s2 = secret("r2");
    let r2 = record("r2", &s2, Some("id-r1"));
    d.stage(&r2).await.unwrap();
    d.load().await.unwrap();
    d.promote(&journal(&r2, JournalState::Promoted))
        .await
        .unwrap();
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
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    let conn = connect(&bao.addr, token_auth(&bao.root_token));
    let path = "motherduck/cas";
    let d = dest(&conn, "secret", path, KvVersion::V2);
    let s1 = secret("r1");
    rotate_fully(&d, &record("r1", &s1, None)).await;
    let s2 = secret("r2");
    let r2 = record("r2", &s2, Some("id-r1"));
    d.stage(&r2).await.unwrap();
    d.load().await.unwrap();

    // An operator replaces the token by hand between load and promote.
    let manual = secret("manual");
    api.root(
        reqwest::Method::POST,
        &format!("secret/data/{path}"),
        Some(json!({ "data": {
            "token": manual, "token_id": "id-manual", "token_name": "by-hand",
            "service_account": "svc_etl", "token_type": "read_write",
            "created_at": "2026-01-02T00:00:00Z", "rotation_id": "manual"
        }})),
    )
    .await;
    let e = d
        .promote(&journal(&r2, JournalState::Promoted))
        .await
        .unwrap_err();
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
    d.promote(&journal(&r2, JournalState::Promoted))
        .await
        .unwrap();
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
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    let conn = connect(&bao.addr, token_auth(&bao.root_token));
    let path = "motherduck/crash";
    let d = dest(&conn, "secret", path, KvVersion::V2);
    rotate_fully(&d, &record("r1", &secret("r1"), None)).await;
    let s2 = secret("r2");
    let r2 = record("r2", &s2, Some("id-r1"));
    d.stage(&r2).await.unwrap();

    // `promote` wrote the new version of `P`, then the process died before
    // the journal: copy the staged data over by hand.
    let (_, staged) = api.read(&format!("secret/data/{path}.pending")).await;
    api.root(
        reqwest::Method::POST,
        &format!("secret/data/{path}"),
        Some(json!({ "data": staged["data"]["data"], "options": { "cas": 1 } })),
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
    d.promote(&journal(&r2, JournalState::Promoted))
        .await
        .unwrap();
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
    api.root(
        reqwest::Method::POST,
        &format!("secret/metadata/{path}.pending"),
        Some(json!({ "custom_metadata": {
            "rotation_record_version": "1", "rotation_id": "r3",
            "rotation_state": "staged", "rotation_new_token_id": "id-r3",
            "rotation_started_at": "2026-01-01T00:00:00Z",
            "rotation_updated_at": "2026-01-01T00:00:00Z", "rotation_failures": "0"
        }})),
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
async fn permission_denied_is_permanent_and_names_the_path() {
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    let path = "motherduck/ro";
    api.policy(
        "read-only",
        r#"
path "secret/data/motherduck/ro*" { capabilities = ["read"] }
path "secret/metadata/motherduck/ro*" { capabilities = ["read"] }
"#,
    )
    .await;
    let limited = api.token(&["read-only"], "1h").await;
    let d = dest(
        &connect(&bao.addr, token_auth(&limited)),
        "secret",
        path,
        KvVersion::V2,
    );
    let s1 = secret("r1");
    d.load().await.unwrap();
    let e = d.stage(&record("r1", &s1, None)).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
    assert!(!e.is_retryable());
    let msg = e.to_string();
    assert!(msg.contains("permission denied"), "{msg}");
    assert!(
        msg.contains("secret/metadata/motherduck/ro.pending"),
        "{msg}"
    );
    assert_clean(&e, &[&s1, &limited]);

    let e = d.check().await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("lacks capabilities"), "{msg}");
    assert!(
        msg.contains("`secret/data/motherduck/ro` needs create, update"),
        "{msg}"
    );

    // A token Vault does not know: the message says the token may be the
    // problem, not only the policy.
    let bogus = "s.thisTokenDoesNotExist0123";
    let d = dest(
        &connect(&bao.addr, token_auth(bogus)),
        "secret",
        path,
        KvVersion::V2,
    );
    let e = d.check().await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("token is not valid") || msg.contains("the token must be valid"),
        "{msg}"
    );
    assert_clean(&e, &[bogus]);

    // With AppRole, a 403 first causes a fresh login; denied again, it is
    // permanent.
    api.enable_approle().await;
    let (role_id, secret_id) = api
        .approle(
            "ro",
            json!({ "token_policies": ["read-only"], "token_ttl": "1h" }),
        )
        .await;
    let conn = connect(
        &bao.addr,
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: SecretString::from(role_id.clone()),
            secret_id: SecretString::from(secret_id.clone()),
        },
    );
    let d = dest(&conn, "secret", path, KvVersion::V2);
    d.load().await.unwrap();
    let before = conn.token_status().accessor;
    let e = d.stage(&record("r1", &s1, None)).await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
    assert!(e.to_string().contains("ro.pending"), "{e}");
    assert_ne!(conn.token_status().accessor, before, "it logged in again");
    assert_clean(&e, &[&s1, &role_id, &secret_id]);
}

#[tokio::test]
async fn approle_login_renewal_and_login_after_revocation() {
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    let path = "motherduck/approle";
    let probe = dest(
        &connect(&bao.addr, token_auth(&bao.root_token)),
        "secret",
        path,
        KvVersion::V2,
    );
    api.policy("rotator", &probe.required_policy_hcl()).await;
    api.enable_approle().await;
    let (role_id, secret_id) = api
        .approle(
            "rotator",
            json!({ "token_policies": ["rotator"], "token_ttl": "3s", "token_max_ttl": "1h" }),
        )
        .await;
    let conn = connect(
        &bao.addr,
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: SecretString::from(role_id.clone()),
            secret_id: SecretString::from(secret_id.clone()),
        },
    );
    let t0 = Instant::now();
    assert_eq!(conn.ensure_token(t0).await.unwrap(), TokenAction::LoggedIn);
    let status = conn.token_status();
    let lease = status.lease.unwrap();
    assert_eq!(lease.ttl, Some(Duration::from_secs(3)));
    assert!(lease.renewable);
    let accessor = status.accessor.unwrap();
    assert_eq!(
        conn.ensure_token(t0 + Duration::from_secs(1))
            .await
            .unwrap(),
        TokenAction::Kept
    );
    // Past two thirds of the 3 s TTL: renewed, same token.
    let later = t0 + Duration::from_millis(2100);
    assert_eq!(
        conn.ensure_token(later).await.unwrap(),
        TokenAction::Renewed
    );
    let status = conn.token_status();
    assert_eq!(status.accessor.as_deref(), Some(accessor.as_str()));
    assert_eq!(status.lease.unwrap().since, later);
    assert_eq!(
        conn.ensure_token(later + Duration::from_secs(1))
            .await
            .unwrap(),
        TokenAction::Kept
    );

    let d = dest(&conn, "secret", path, KvVersion::V2);
    d.check().await.unwrap();
    let s1 = secret("r1");
    rotate_fully(&d, &record("r1", &s1, None)).await;

    // The token is revoked behind the daemon's back: the next request gets
    // a 403, logs in again and succeeds.
    api.root(
        reqwest::Method::POST,
        "auth/token/revoke-accessor",
        Some(json!({ "accessor": accessor })),
    )
    .await;
    let v = d.load().await.unwrap();
    assert_eq!(v.current.unwrap().meta.rotation_id, "r1");
    assert_ne!(conn.token_status().accessor.unwrap(), accessor);

    // A batch token cannot be renewed: past two thirds, log in again.
    let (batch_role, batch_secret) = api
        .approle(
            "batch",
            json!({ "token_policies": ["rotator"], "token_type": "batch", "token_ttl": "3s" }),
        )
        .await;
    let batch = connect(
        &bao.addr,
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: SecretString::from(batch_role),
            secret_id: SecretString::from(batch_secret),
        },
    );
    let t1 = Instant::now();
    assert_eq!(batch.ensure_token(t1).await.unwrap(), TokenAction::LoggedIn);
    assert!(!batch.token_status().lease.unwrap().renewable);
    assert_eq!(
        batch
            .ensure_token(t1 + Duration::from_millis(2500))
            .await
            .unwrap(),
        TokenAction::LoggedIn
    );
    dest(&batch, "secret", path, KvVersion::V2)
        .load()
        .await
        .unwrap();

    // A static token with a short TTL is looked up, then renewed.
    let short = api.token(&["rotator"], "3s").await;
    let st = connect(&bao.addr, token_auth(&short));
    let t2 = Instant::now();
    assert_eq!(st.ensure_token(t2).await.unwrap(), TokenAction::LookedUp);
    assert_eq!(
        st.ensure_token(t2 + Duration::from_millis(2500))
            .await
            .unwrap(),
        TokenAction::Renewed
    );

    // Wrong credentials: a permanent login error that shows none of them.
    let wrong = connect(
        &bao.addr,
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: SecretString::from(role_id.clone()),
            secret_id: SecretString::from("00000000-0000-0000-0000-000000000000".to_owned()),
        },
    );
    let e = dest(&wrong, "secret", path, KvVersion::V2)
        .load()
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
    assert!(e.to_string().contains("approle login failed"), "{e}");
    assert_clean(
        &e,
        &[
            &role_id,
            &secret_id,
            "00000000-0000-0000-0000-000000000000",
            &s1,
        ],
    );
    let printed = format!("{conn:?} {wrong:?} {d:?} {st:?}");
    for s in [&role_id, &secret_id, &short, &s1] {
        assert!(!printed.contains(s.as_str()), "{printed}");
    }
}

#[tokio::test]
async fn the_lease_is_exclusive_expires_and_is_taken_over_safely() {
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    let path = "motherduck/lease";
    // Two daemons, each with its own connection, on one path.
    let a = dest(
        &connect(&bao.addr, token_auth(&bao.root_token)),
        "secret",
        path,
        KvVersion::V2,
    );
    let b = dest(
        &connect(&bao.addr, token_auth(&bao.root_token)),
        "secret",
        path,
        KvVersion::V2,
    );
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
async fn kv1_full_rotation_rollback_and_no_lease() {
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
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

    let s2 = secret("r2");
    let r2 = record("r2", &s2, Some("id-r1"));
    d.stage(&r2).await.unwrap();
    d.promote(&journal(&r2, JournalState::Promoted))
        .await
        .unwrap();
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
async fn a_stopped_server_is_a_transient_error() {
    let mut bao = OpenBao::start().await;
    let conn = connect(&bao.addr, token_auth(&bao.root_token));
    let d = dest(&conn, "secret", "motherduck/outage", KvVersion::V2);
    let s1 = secret("r1");
    let r1 = record("r1", &s1, None);
    d.stage(&r1).await.unwrap();
    d.load().await.unwrap();
    bao.kill();
    let e = d
        .promote(&journal(&r1, JournalState::Promoted))
        .await
        .unwrap_err();
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

#[tokio::test]
async fn corrupt_records_and_journals_are_clear_errors_without_secrets() {
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    let conn = connect(&bao.addr, token_auth(&bao.root_token));
    let d = dest(&conn, "secret", "motherduck/bad", KvVersion::V2);
    let leaked = "eyJsecret-should-never-be-printed";
    api.root(
        reqwest::Method::POST,
        "secret/data/motherduck/bad",
        Some(json!({ "data": { "token": leaked, "token_id": 5 } })),
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
    api.root(
        reqwest::Method::POST,
        "secret/metadata/motherduck/badjournal",
        Some(json!({ "custom_metadata": custom })),
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

/// An OpenBao dev server with TLS (`-dev-tls`), which writes its CA to a
/// directory; killed on drop.
struct TlsBao {
    child: tokio::process::Child,
    dir: PathBuf,
    addr: String,
    root: String,
}

impl TlsBao {
    async fn start() -> TlsBao {
        let bao = tool_path("bao");
        let root = format!("root-{}", uuid::Uuid::new_v4());
        let dir = std::env::temp_dir().join(format!("mdr-it-baotls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // Ready once it answers on TLS (the certificate is not checked
        // here; the product checks it).
        let probe = reqwest::Client::builder()
            .no_proxy()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        for _attempt in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(dir.join("bao.log")).unwrap();
            let mut child = tokio::process::Command::new(&bao)
                .arg("server")
                .arg("-dev")
                .arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.display()))
                .arg(format!("-dev-root-token-id={root}"))
                .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                .arg("-dev-no-store-token")
                .current_dir(&dir)
                .env("HOME", &dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .expect("spawn bao -dev-tls");
            let addr = format!("https://127.0.0.1:{port}");
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                let ok = probe
                    .get(format!("{addr}/v1/sys/mounts/secret"))
                    .header("X-Vault-Token", &root)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok && dir.join("vault-ca.pem").is_file() {
                    return TlsBao {
                        child,
                        dir,
                        addr,
                        root,
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.start_kill();
        }
        panic!(
            "bao -dev-tls did not start: {}",
            std::fs::read_to_string(dir.join("bao.log")).unwrap_or_default()
        );
    }
}

impl Drop for TlsBao {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn https_with_a_ca_file() {
    let bao = TlsBao::start().await;
    let mut s = settings(&bao.addr, token_auth(&bao.root));
    s.ca_file = Some(bao.dir.join("vault-ca.pem"));
    let d = dest(
        &VaultConnection::new(s).unwrap(),
        "secret",
        "motherduck/tls",
        KvVersion::V2,
    );
    d.check().await.unwrap();
    rotate_fully(&d, &record("r1", &secret("r1"), None)).await;

    // Without the CA the server's certificate is not trusted.
    let untrusted = dest(
        &connect(&bao.addr, token_auth(&bao.root)),
        "secret",
        "motherduck/tls",
        KvVersion::V2,
    );
    let e = untrusted.load().await.unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Transient, "{e}");
    assert!(
        e.to_string().contains("TLS handshake with Vault failed"),
        "{e}"
    );
    assert!(e.to_string().contains("`ca_file`"), "{e}");
    assert_clean(&e, &[&bao.root]);

    // Plain http to a host that is not loopback is refused up front.
    let e = VaultConnection::new(settings("http://vault.example:8200", token_auth(&bao.root)))
        .unwrap_err();
    assert!(e.to_string().contains("use https"), "{e}");
}

/// Runs the `openssl` CLI in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(tool_path("openssl"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("spawn openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA in `dir`: `<name>.pem` and `<name>.key`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=mdr test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A certificate signed by the CA `ca` in `dir`, with the X.509 v3
/// extensions `ext`: `<name>.pem` and `<name>.key`.
fn make_cert(dir: &Path, ca: &str, name: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN=mdr test {name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-set_serial",
            &format!("0x{}", uuid::Uuid::new_v4().simple()),
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A temporary directory with TLS material made by `openssl`:
/// - `ca`: the CA that OpenBao trusts for clients and that signs its
///   certificate;
/// - `server`: for `IP:127.0.0.1`;
/// - `client`: a client certificate signed by `ca`;
/// - `other-ca` and `stranger`: a client certificate signed by a CA the
///   server does not trust.
///
/// Removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!("mdr-it-mtls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        let d = &pki.dir;
        make_ca(d, "ca");
        make_cert(
            d,
            "ca",
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        make_cert(d, "ca", "client", "extendedKeyUsage=clientAuth\n");
        make_ca(d, "other-ca");
        make_cert(d, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n");
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port `p` with `p + 1` free too: every `bao` TCP listener also binds
/// its cluster port on the next port.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two adjacent free loopback ports in 100 tries");
}

/// An error and its causes, `: `-separated (for a probe's failure).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// An OpenBao dev server with a second listener that requires a client
/// certificate signed by [`Pki`]'s `ca` (`tls_require_and_verify_client_cert`);
/// killed, and its directory removed, on drop.
struct MtlsBao {
    child: tokio::process::Child,
    pki: Pki,
    /// `https://127.0.0.1:PORT`, the listener that requires a client
    /// certificate.
    addr: String,
    /// `http://127.0.0.1:PORT`, the dev listener, for reading back as a
    /// consumer.
    plain: String,
    root: String,
}

impl MtlsBao {
    async fn start() -> MtlsBao {
        let bao = tool_path("bao");
        let root = format!("root-{}", uuid::Uuid::new_v4());
        let pki = Pki::new();
        let dir = pki.dir.clone();
        // Ready once a request with the client certificate succeeds on
        // the mutual TLS listener.
        let mut identity = std::fs::read(pki.path("client.pem")).unwrap();
        identity.extend(std::fs::read(pki.path("client.key")).unwrap());
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .tls_certs_only([reqwest::Certificate::from_pem(
                &std::fs::read(pki.path("ca.pem")).unwrap(),
            )
            .unwrap()])
            .identity(reqwest::Identity::from_pem(&identity).unwrap())
            .build()
            .unwrap();
        let log_path = dir.join("bao.log");
        let mut last_probe = String::from("no probe");
        for _attempt in 0..3 {
            // Two pairs that do not overlap (each listener binds its
            // cluster port on the next port).
            let plain_port = free_port_pair();
            let tls_port = loop {
                let p = free_port_pair();
                if p.abs_diff(plain_port) > 1 {
                    break p;
                }
            };
            let config = dir.join("mtls.hcl");
            std::fs::write(
                &config,
                format!(
                    r#"listener "tcp" {{
  address                            = "127.0.0.1:{tls_port}"
  tls_cert_file                      = "{server}"
  tls_key_file                       = "{server_key}"
  tls_client_ca_file                 = "{ca}"
  tls_require_and_verify_client_cert = true
}}
"#,
                    server = pki.path("server.pem").display(),
                    server_key = pki.path("server.key").display(),
                    ca = pki.path("ca.pem").display(),
                ),
            )
            .unwrap();
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = tokio::process::Command::new(&bao)
                .arg("server")
                .arg("-dev")
                .arg(format!("-dev-root-token-id={root}"))
                .arg(format!("-dev-listen-address=127.0.0.1:{plain_port}"))
                .arg("-dev-no-store-token")
                .arg(format!("-config={}", config.display()))
                .current_dir(&dir)
                .env("HOME", &dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .expect("spawn bao");
            let addr = format!("https://127.0.0.1:{tls_port}");
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                let ok = match probe
                    .get(format!("{addr}/v1/sys/mounts/secret"))
                    .header("X-Vault-Token", &root)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => true,
                    Ok(r) => {
                        last_probe = format!("HTTP {}", r.status());
                        false
                    }
                    Err(e) => {
                        last_probe = error_chain(&e);
                        false
                    }
                };
                if ok {
                    return MtlsBao {
                        child,
                        pki,
                        addr,
                        plain: format!("http://127.0.0.1:{plain_port}"),
                        root,
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        panic!(
            "bao with a mutual TLS listener did not start (last probe: {last_probe}): {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// Settings for the mutual TLS listener that trust `ca.pem`, with the
    /// client certificate `<cert>.pem` / `<cert>.key`, if any.
    fn client_settings(&self, cert: Option<&str>) -> VaultSettings {
        let mut s = settings(&self.addr, token_auth(&self.root));
        s.ca_file = Some(self.pki.path("ca.pem"));
        if let Some(c) = cert {
            s.client_cert = Some(self.pki.path(&format!("{c}.pem")));
            s.client_key = Some(self.pki.path(&format!("{c}.key")));
        }
        s
    }

    /// Root access through the plain dev listener.
    fn api(&self) -> Api {
        Api {
            addr: self.plain.clone(),
            root: self.root.clone(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }
}

impl Drop for MtlsBao {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn mutual_tls_with_a_client_certificate() {
    let bao = MtlsBao::start().await;
    let d = dest(
        &VaultConnection::new(bao.client_settings(Some("client"))).unwrap(),
        "secret",
        "motherduck/mtls",
        KvVersion::V2,
    );
    d.check().await.unwrap();
    let s1 = secret("r1");
    rotate_fully(&d, &record("r1", &s1, None)).await;

    // Where a consumer reads it.
    let (status, body) = bao.api().read("secret/data/motherduck/mtls").await;
    assert_eq!(status, 200);
    assert!(
        body["data"]["data"]["token"] == s1.as_str(),
        "token not written"
    );
    let cur = d.load().await.unwrap().current.unwrap();
    assert_eq!(cur.meta.rotation_id, "r1");
}

#[tokio::test]
async fn mutual_tls_refuses_a_missing_or_foreign_client_certificate() {
    let bao = MtlsBao::start().await;
    // Written with the right certificate first, so a refusal is not a
    // missing secret.
    let good = dest(
        &VaultConnection::new(bao.client_settings(Some("client"))).unwrap(),
        "secret",
        "motherduck/mtls",
        KvVersion::V2,
    );
    let s1 = secret("r1");
    good.stage(&record("r1", &s1, None)).await.unwrap();

    // The TLS alert OpenBao (Go) sends for each.
    for (cert, alert) in [
        (None, "CertificateRequired"),
        (Some("stranger"), "UnknownCA"),
    ] {
        let d = dest(
            &VaultConnection::new(bao.client_settings(cert)).unwrap(),
            "secret",
            "motherduck/mtls",
            KvVersion::V2,
        );
        let s2 = secret("r2");
        for e in [
            d.check().await.unwrap_err(),
            d.load().await.unwrap_err(),
            d.stage(&record("r2", &s2, None)).await.unwrap_err(),
        ] {
            // Retried like any failure to talk to Vault, but worded so an
            // operator looks at the certificates, not the network.
            assert_eq!(e.kind, StoreErrorKind::Transient, "{cert:?}: {e}");
            let m = e.to_string();
            for part in [
                "TLS handshake with Vault failed",
                "`client_cert` and `client_key`",
                alert,
            ] {
                assert!(m.contains(part), "{cert:?}: no {part:?} in: {m}");
            }
            assert!(!m.contains("cannot reach"), "{cert:?}: {m}");
            assert_clean(&e, &[&s1, &s2, &bao.root]);
        }
    }

    // Nothing was written by the refused clients.
    let (_, body) = bao.api().read("secret/data/motherduck/mtls.pending").await;
    assert!(
        body["data"]["data"]["token"] == s1.as_str(),
        "pending token changed"
    );
    let (status, _) = bao.api().read("secret/data/motherduck/mtls").await;
    assert_eq!(status, 404);
}

/// A client certificate and key that do not belong together, or a key
/// that cannot be read, fail when the connection is built (at startup and
/// in `validate`), naming the files and quoting no key material.
#[test]
fn a_mismatched_or_unreadable_client_key_is_a_setup_error() {
    let pki = Pki::new();
    let key_material: Vec<String> = ["client.key", "stranger.key"]
        .iter()
        .map(|k| {
            let pem = std::fs::read_to_string(pki.path(k)).unwrap();
            pem.lines().nth(1).unwrap().to_owned()
        })
        .collect();
    let setup = |cert: &str, key: PathBuf| {
        let mut s = settings("https://127.0.0.1:8200", token_auth("t"));
        s.ca_file = Some(pki.path("ca.pem"));
        s.client_cert = Some(pki.path(cert));
        s.client_key = Some(key);
        let e = VaultConnection::new(s).unwrap_err();
        let shown = format!("{e} {e:?}");
        for k in &key_material {
            assert!(!shown.contains(k.as_str()), "key material in: {e}");
        }
        e
    };

    // The client certificate with another certificate's key.
    let e = setup("client.pem", pki.path("stranger.key"));
    assert!(
        matches!(
            e,
            VaultSetupError::BadPem {
                what: "client certificate and key",
                ..
            }
        ),
        "{e}"
    );
    let m = e.to_string();
    for part in [
        pki.path("client.pem").display().to_string(),
        pki.path("stranger.key").display().to_string(),
        "does the key belong to the certificate?".to_owned(),
    ] {
        assert!(m.contains(&part), "no {part:?} in: {m}");
    }

    // A key path that cannot be read (a directory: as root, file
    // permissions would not stop the read).
    let e = setup("client.pem", pki.dir.clone());
    assert!(
        matches!(
            e,
            VaultSetupError::ReadFile {
                what: "client key",
                ..
            }
        ),
        "{e}"
    );
    let m = e.to_string();
    assert!(m.contains(&pki.dir.display().to_string()), "{m}");

    // A key file that holds a certificate, not a key.
    let e = setup("client.pem", pki.path("client.pem"));
    assert!(matches!(e, VaultSetupError::BadPem { .. }), "{e}");
    assert!(e.to_string().contains("private key"), "{e}");
}

/// The binary's `validate` reads `client_cert`, `client_key` and
/// `ca_file` relative to the configuration file, accepts a matching pair
/// and reports a mismatched one against the field, exiting 64.
#[test]
fn validate_reads_relative_mutual_tls_files() {
    let pki = Pki::new();
    crate::support::write_secret(pki.path("admin.token"), "md-admin-token\n");
    crate::support::write_secret(pki.path("vault.token"), "vault-token\n");
    let validate = |key: &str| {
        let config = pki.path(&format!("config-{key}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[motherduck]
admin_token = {{ file = "admin.token" }}

[stores.vault]
type = "vault"
address = "https://127.0.0.1:8200"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}
ca_file = "ca.pem"
client_cert = "client.pem"
client_key = "{key}"

[[policy]]
name = "mtls"
service_account = "svc_mtls"
schedule = {{ interval = "1d" }}
destinations = [{{ store = "vault", path = "motherduck/mtls" }}]
"#
            ),
        )
        .unwrap();
        // Run from elsewhere: the paths are relative to the file.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"))
            .arg("--config")
            .arg(&config)
            .arg("validate")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = validate("client.key");
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(stdout.contains("valid (1 policies"), "stdout:\n{stdout}");

    let (code, _, stderr) = validate("stranger.key");
    assert_eq!(code, Some(64), "stderr:\n{stderr}");
    for part in [
        "`stores.vault.client_cert`",
        "stranger.key",
        "does the key belong to the certificate?",
    ] {
        assert!(stderr.contains(part), "no {part:?} in stderr:\n{stderr}");
    }
}

/// The futures are `Send`, so the daemon can run them on spawned tasks.
#[allow(dead_code)]
fn futures_are_send(d: VaultDestination, j: Journal, r: NewRecord) {
    fn send<T: Send>(_: T) {}
    send(d.load());
    send(d.stage(&r));
    send(d.promote(&j));
    send(d.set_journal(&j));
    send(d.rollback(&j));
    send(d.finish(&j));
    send(d.try_lock("x"));
    send(d.check());
    send(d.read_secret(Slot::Current, "x"));
}

/// A secret that keeps one version cannot give its previous record back:
/// the check and the preflight before each rotation refuse it, naming the
/// setting, and `max_versions = 0` (the mount's default) is fine.
#[tokio::test]
async fn a_secret_keeping_one_version_is_refused_before_rotating() {
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    let path = "motherduck/one-version";
    let d = dest(
        &connect(&bao.addr, token_auth(&bao.root_token)),
        "secret",
        path,
        KvVersion::V2,
    );
    d.check().await.unwrap();
    d.preflight().await.unwrap();
    api.root(
        reqwest::Method::POST,
        &format!("secret/metadata/{path}"),
        Some(json!({ "max_versions": 1 })),
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
    api.root(
        reqwest::Method::POST,
        &format!("secret/metadata/{path}"),
        Some(json!({ "max_versions": 0 })),
    )
    .await;
    d.preflight().await.unwrap();
}

/// Client certificates are short-lived where they are issued automatically
/// (cert-manager, Vault Agent): a renewed certificate written over the
/// configured files is used from the next request on, without a restart.
/// Shown by swapping in a certificate from a CA the server does not trust
/// (refused from the next request) and then a good one again (accepted),
/// the way Kubernetes swaps a projected secret: a new file behind the path.
#[tokio::test]
async fn a_renewed_client_certificate_is_used_without_a_restart() {
    let bao = MtlsBao::start().await;
    let live_cert = bao.pki.path("live.pem");
    let live_key = bao.pki.path("live.key");
    let install = |name: &str| {
        for (ext, live) in [("pem", &live_cert), ("key", &live_key)] {
            let staged = bao.pki.path(&format!("staged.{ext}"));
            std::fs::copy(bao.pki.path(&format!("{name}.{ext}")), &staged).unwrap();
            std::fs::rename(&staged, live).unwrap();
        }
    };
    install("client");
    let mut s = bao.client_settings(None);
    s.client_cert = Some(live_cert.clone());
    s.client_key = Some(live_key.clone());
    let d = dest(
        &VaultConnection::new(s).unwrap(),
        "secret",
        "motherduck/renewed",
        KvVersion::V2,
    );
    d.check().await.unwrap();

    install("stranger");
    let e = d.load().await.unwrap_err();
    assert!(e.to_string().contains("UnknownCA"), "{e}");

    install("client");
    d.load().await.unwrap();
    rotate_fully(&d, &record("r1", &secret("r1"), None)).await;

    // A half-written update (a key that is not PEM) is not taken up: the
    // connection keeps the certificate it has.
    std::fs::write(&live_key, "not a key").unwrap();
    d.load().await.unwrap();
}

/// Regression: OpenBao answers the renewal of a token past its maximum TTL
/// with `500 past the max TTL, cannot renew`. A 5xx was taken for a passing
/// fault and failed the pass (a stall, readiness flipping, once a
/// rollback) instead of logging in again. Any refused renewal logs in again
/// when the method can. A wiremock stand-in answers exactly that way.
#[tokio::test]
async fn a_renewal_refused_past_the_max_ttl_logs_in_again() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    let login = |token: &str| {
        json!({
            "request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
            "data": null, "wrap_info": null, "warnings": null,
            "auth": {
                "client_token": token, "accessor": format!("acc-{token}"),
                "policies": ["rotator"], "token_policies": ["rotator"], "metadata": null,
                "lease_duration": 4, "renewable": true, "entity_id": "",
                "token_type": "service", "orphan": true
            }
        })
    };
    Mock::given(method("POST"))
        .and(path("/v1/auth/approle/login"))
        .respond_with(ResponseTemplate::new(200).set_body_json(login("hvs.first")))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/auth/approle/login"))
        .respond_with(ResponseTemplate::new(200).set_body_json(login("hvs.second")))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/auth/token/renew-self"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({ "errors": ["past the max TTL, cannot renew"] })),
        )
        .mount(&server)
        .await;
    let conn = connect(
        &server.uri(),
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: SecretString::from("role".to_owned()),
            secret_id: SecretString::from("secret".to_owned()),
        },
    );
    let t0 = Instant::now();
    assert_eq!(conn.ensure_token(t0).await.unwrap(), TokenAction::LoggedIn);
    let first = conn.token_status().accessor;
    // Past two thirds of the 4 s TTL: the renewal is refused, so it logs in.
    let later = t0 + Duration::from_secs(3);
    assert_eq!(
        conn.ensure_token(later).await.unwrap(),
        TokenAction::LoggedIn
    );
    assert_ne!(conn.token_status().accessor, first);
    assert_eq!(
        conn.token_status().accessor.as_deref(),
        Some("acc-hvs.second")
    );
}
