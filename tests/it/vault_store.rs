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

mod auth;
mod kv;
mod lease;
mod tls;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use motherduck_rotator::rotation::plan;
use motherduck_rotator::secret::{ExposeSecret, SecretString};
use motherduck_rotator::stores::vault::{
    KvVersion, TokenAction, VaultAuth, VaultConnection, VaultDestination, VaultSettings,
    VaultSetupError,
};
use motherduck_rotator::stores::{
    Journal, JournalState, NewRecord, Slot, StoreError, StoreErrorKind,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::services::{OpenBao, free_port, tool_path};
use motherduck_rotator::stores::testing::{self as records, journal};

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
        let field = async |method, what: &str| {
            let v = self
                .root(method, &format!("auth/approle/role/{role}/{what}"), None)
                .await;
            v["data"][what.replace('-', "_")]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let role_id = field(reqwest::Method::GET, "role-id").await;
        let secret_id = field(reqwest::Method::POST, "secret-id").await;
        (role_id, secret_id)
    }

    /// `POST /v1/<path>` of `body` as root.
    async fn post(&self, path: &str, body: Value) -> Value {
        self.root(reqwest::Method::POST, path, Some(body)).await
    }

    /// What a consumer gets from `GET /v1/<path>` with the root token.
    async fn read(&self, path: &str) -> (u16, Value) {
        self.call(&self.root, reqwest::Method::GET, path, None)
            .await
    }
}

/// A fresh OpenBao dev server and root access to it.
async fn start() -> (OpenBao, Api) {
    let bao = OpenBao::start().await;
    let api = Api::new(&bao);
    (bao, api)
}

/// Stages the second rotation, `r2` (replacing `id-r1`), in `d`: its
/// secret and record.
async fn stage_second(d: &VaultDestination) -> (String, NewRecord) {
    let s2 = secret("r2");
    let r2 = record("r2", &s2, Some("id-r1"));
    d.stage(&r2).await.unwrap();
    (s2, r2)
}

/// Promotes `r` in `d`, which must succeed.
async fn promote(d: &VaultDestination, r: &NewRecord) {
    d.promote(&journal(r, JournalState::Promoted))
        .await
        .unwrap();
}

/// The error of promoting `r` in `d`, which must fail.
async fn promote_err(d: &VaultDestination, r: &NewRecord) -> StoreError {
    d.promote(&journal(r, JournalState::Promoted))
        .await
        .unwrap_err()
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

/// A KV v2 destination at `secret/<path>` on `bao`, with the root token.
fn root_dest(bao: &OpenBao, path: &str) -> VaultDestination {
    dest(
        &connect(&bao.addr, token_auth(&bao.root_token)),
        "secret",
        path,
        KvVersion::V2,
    )
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
    let expires = "2026-04-01T00:00:00Z".parse().unwrap();
    records::staged(rid, token, prev, now, Some(expires))
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
