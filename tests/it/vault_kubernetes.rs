//! Kubernetes auth against a real OpenBao: the `kubernetes` auth method is
//! enabled and pointed at a stand-in Kubernetes API (wiremock) that answers
//! the TokenReview calls OpenBao makes to check a service-account JWT.
//! The real binary logs in with the pod's JWT file, rotates, and after its
//! Vault token is revoked and the projected JWT has rotated, logs in again
//! with the new JWT. A role that does not bind the service account is a
//! clear, permanent error that never shows the JWT.
//!
//! Also here, because it shares the set-up: a store in an OpenBao
//! namespace.

use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use motherduck_rotator::simulator::RunningSimulator;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::support::child_logs::printed;
use crate::support::config_toml;
use crate::support::daemon;
use crate::support::services::{OpenBao, tool_path};
use crate::support::world::{self, Scratch};

const NAMESPACE: &str = "prod";
const SERVICE_ACCOUNT: &str = "motherduck-rotator";

/// A service-account JWT as the kubelet projects it (unsigned here:
/// OpenBao delegates the signature check to the TokenReview API).
fn jwt(serial: u32) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        b64(json!({ "alg": "RS256", "kid": "test" })),
        b64(json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"),
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "kubernetes.io": {
                "namespace": NAMESPACE,
                "serviceaccount": { "name": SERVICE_ACCOUNT, "uid": "5f1c0e4e-0000-4000-8000-000000000001" }
            },
            "serial": serial,
        })),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("signature-{serial}")),
    )
}

/// The TokenReview endpoint: authenticates exactly the JWTs in `valid`, and
/// records every JWT it was asked about.
#[derive(Clone, Default)]
struct TokenReview {
    valid: Arc<Mutex<Vec<String>>>,
    reviewed: Arc<Mutex<Vec<String>>>,
}

impl Respond for TokenReview {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let token = body["spec"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.reviewed.lock().unwrap().push(token.clone());
        let ok = self.valid.lock().unwrap().contains(&token);
        let status = if ok {
            json!({
                "authenticated": true,
                "user": {
                    "username": format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"),
                    "uid": "5f1c0e4e-0000-4000-8000-000000000001",
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NAMESPACE}")],
                },
                "audiences": ["https://kubernetes.default.svc.cluster.local"],
            })
        } else {
            json!({ "authenticated": false, "error": "token has expired" })
        };
        ResponseTemplate::new(201).set_body_json(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "status": status,
        }))
    }
}

/// The JSON body `request` is answered with.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

struct World {
    dir: std::path::PathBuf,
    _scratch: Scratch,
    bao: OpenBao,
    sim: RunningSimulator,
    review: TokenReview,
    _k8s: MockServer,
    http: reqwest::Client,
}

impl World {
    async fn new() -> World {
        let scratch = Scratch::new("k8s");
        let dir = scratch.path().to_path_buf();
        let bao = OpenBao::start().await;
        let sim = world::simulator(&dir, &["svc_k8s"]).await;
        let review = TokenReview::default();
        let k8s = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/apis/authentication.k8s.io/v1/tokenreviews"))
            .respond_with(review.clone())
            .mount(&k8s)
            .await;
        let w = World {
            dir,
            _scratch: scratch,
            bao,
            sim,
            review,
            _k8s: k8s,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        w.root(
            "POST",
            "sys/auth/kubernetes",
            json!({ "type": "kubernetes" }),
        )
        .await;
        // OpenBao wants the cluster CA even for a plain-http API server;
        // any certificate will do.
        let ca = w.dir.join("k8s-ca.pem");
        let made = tokio::process::Command::new(tool_path("openssl"))
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=kubernetes-ca", "-keyout"])
            .arg(w.dir.join("k8s-ca.key"))
            .arg("-out")
            .arg(&ca)
            .output()
            .await
            .unwrap();
        assert!(made.status.success(), "{}", printed(&made));
        w.root(
            "POST",
            "auth/kubernetes/config",
            json!({
                "kubernetes_host": w._k8s.uri(),
                "kubernetes_ca_cert": std::fs::read_to_string(&ca).unwrap(),
                "disable_local_ca_jwt": true,
            }),
        )
        .await;
        w.root(
            "PUT",
            "sys/policies/acl/rotator",
            json!({ "policy": "path \"secret/*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\"] }" }),
        )
        .await;
        w
    }

    async fn root(&self, verb: &str, api: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(verb.parse().unwrap(), format!("{}/v1/{api}", self.bao.addr))
            .header("X-Vault-Token", &self.bao.root_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let text = crate::support::success_text(resp, &format!("{verb} {api}")).await;
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn role(&self, bound_service_account: &str) {
        self.root(
            "POST",
            "auth/kubernetes/role/motherduck-rotator",
            json!({
                "bound_service_account_names": [bound_service_account],
                "bound_service_account_namespaces": [NAMESPACE],
                "token_policies": ["rotator"],
                "token_ttl": "1h",
            }),
        )
        .await;
    }

    /// Every token the kubernetes login issued is revoked, and the
    /// kubelet projects `jwt`.
    async fn revoke_logins_and_project(&self, jwt: &str) {
        self.root(
            "PUT",
            "sys/leases/revoke-prefix/auth/kubernetes/login",
            Value::Null,
        )
        .await;
        self.project(jwt);
    }

    /// The kubelet projects a new JWT into the pod; the old one stops
    /// being valid.
    fn project(&self, jwt: &str) {
        *self.review.valid.lock().unwrap() = vec![jwt.to_owned()];
        crate::support::write_secret(self.dir.join("sa.token"), jwt);
    }

    fn config(&self) -> std::path::PathBuf {
        let path = self.dir.join("config.toml");
        let src = config_toml::motherduck(&self.sim.base_url())
            + &format!(
                r#"
[stores.vault]
type = "vault"
address = "{}"
auth = {{ method = "kubernetes", role = "motherduck-rotator", jwt_file = "sa.token" }}
"#,
                self.bao.addr
            )
            + &config_toml::policy(
                "k8s",
                "svc_k8s",
                r#"{ store = "vault", path = "motherduck/k8s" }"#,
                &config_toml::verify_motherduck("10s"),
            );
        std::fs::write(&path, src).unwrap();
        path
    }

    async fn rotate(&self) -> Output {
        let c = daemon::command_default_log(&self.config(), &self.dir)
            .args(["rotate", "k8s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("rotate finishes")
            .unwrap()
    }

    async fn stored_token_id(&self) -> Value {
        let v = self
            .root("GET", "secret/data/motherduck/k8s", Value::Null)
            .await;
        v["data"]["data"]["token_id"].clone()
    }

    fn live(&self) -> Vec<String> {
        world::live_ids(&self.sim.sim, "svc_k8s")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_login_rotates_and_logs_in_again_with_the_projected_jwt() {
    let w = World::new().await;
    w.role(SERVICE_ACCOUNT).await;
    let first = jwt(1);
    w.project(&first);

    let out = w.rotate().await;
    assert!(out.status.success(), "{}", printed(&out));
    let live = w.live();
    assert_eq!(live.len(), 1);
    assert_eq!(w.stored_token_id().await, json!(live[0]));
    assert_eq!(
        w.review.reviewed.lock().unwrap().as_slice(),
        std::slice::from_ref(&first),
        "OpenBao reviewed the pod's JWT"
    );

    // Every token the kubernetes login issued is revoked, and the kubelet
    // has projected a new JWT: the next run logs in with the new one.
    let second = jwt(2);
    w.revoke_logins_and_project(&second).await;
    let out = w.rotate().await;
    assert!(out.status.success(), "{}", printed(&out));
    let live = w.live();
    assert_eq!(live.len(), 1, "the first token was revoked");
    assert_eq!(w.stored_token_id().await, json!(live[0]));
    assert_eq!(
        w.review.reviewed.lock().unwrap().last(),
        Some(&second),
        "the login used the newly projected JWT"
    );
    let text = printed(&out);
    assert!(
        !text.contains(&first) && !text.contains(&second),
        "a JWT was printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_does_not_bind_the_service_account_is_a_clear_error() {
    let w = World::new().await;
    w.role("someone-else").await;
    let token = jwt(1);
    w.project(&token);

    let out = w.rotate().await;
    let text = printed(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("kubernetes login"), "{text}");
    assert!(!text.contains(&token), "the JWT was printed");
    assert!(
        w.live().is_empty(),
        "no token is created without Vault access"
    );
}

/// Within one process: after Vault revokes the login's token, the next
/// operation gets a 403, logs in again reading the JWT file anew (the
/// kubelet has rotated it), and succeeds.
#[tokio::test]
async fn a_revoked_token_is_replaced_by_a_new_kubernetes_login() {
    use motherduck_rotator::stores::vault::{
        KvVersion, VaultAuth, VaultConnection, VaultDestination, VaultSettings,
    };
    let w = World::new().await;
    w.role(SERVICE_ACCOUNT).await;
    let first = jwt(1);
    w.project(&first);
    let conn = VaultConnection::new(VaultSettings::new(
        &w.bao.addr,
        VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "motherduck-rotator".into(),
            jwt_path: w.dir.join("sa.token"),
        },
    ))
    .unwrap();
    let d =
        VaultDestination::new(conn, "vault", "secret", "motherduck/k8s", KvVersion::V2).unwrap();
    d.check().await.unwrap();
    assert_eq!(w.review.reviewed.lock().unwrap().len(), 1);

    let second = jwt(2);
    w.revoke_logins_and_project(&second).await;
    d.load().await.unwrap();
    assert_eq!(
        w.review.reviewed.lock().unwrap().as_slice(),
        [first, second].as_slice(),
        "one more login, with the new JWT"
    );
}

/// A store with `namespace` set writes into that OpenBao namespace (every
/// request, including the capability preflight and the lock, carries
/// `X-Vault-Namespace`), and nothing lands in the root namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_store_rotates_inside_its_namespace() {
    let w = World::new().await;
    w.root("POST", "sys/namespaces/platform", json!({})).await;
    let in_ns = |verb: &str, api: &str| {
        w.http
            .request(verb.parse().unwrap(), format!("{}/v1/{api}", w.bao.addr))
            .header("X-Vault-Token", &w.bao.root_token)
            .header("X-Vault-Namespace", "platform")
    };
    let r = in_ns("POST", "sys/mounts/kv")
        .json(&json!({ "type": "kv", "options": { "version": "2" } }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = in_ns("PUT", "sys/policies/acl/rotator")
        .json(&json!({ "policy": "path \"kv/*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\"] }" }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let created = json_of(
        in_ns("POST", "auth/token/create").json(&json!({ "policies": ["rotator"], "ttl": "1h" })),
    )
    .await;
    crate::support::write_secret(
        w.dir.join("ns.token"),
        created["auth"]["client_token"].as_str().unwrap(),
    );
    let config = w.config().with_file_name("ns.toml");
    std::fs::write(
        &config,
        std::fs::read_to_string(w.config())
            .unwrap()
            .replace(
                r#"auth = { method = "kubernetes", role = "motherduck-rotator", jwt_file = "sa.token" }"#,
                "namespace = \"platform\"\nmount = \"kv\"\nauth = { method = \"token\", token = { file = \"ns.token\" } }",
            ),
    )
    .unwrap();
    for round in 0..2 {
        let out = daemon::command_default_log(&config, &w.dir)
            .args(["rotate", "k8s"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "round {round}: {}", printed(&out));
    }
    let live = w.live();
    assert_eq!(live.len(), 1);
    let v = json_of(in_ns("GET", "kv/data/motherduck/k8s")).await;
    assert_eq!(
        v["data"]["data"]["token_id"],
        json!(live[0]),
        "{}",
        v["data"]["metadata"]
    );
    // The root namespace has no such mount or secret.
    let root = w
        .http
        .get(format!("{}/v1/kv/data/motherduck/k8s", w.bao.addr))
        .header("X-Vault-Token", &w.bao.root_token)
        .send()
        .await
        .unwrap();
    assert!(!root.status().is_success(), "{}", root.status());
}
