//! The README's Vault and AWS instructions, taken from README.md and run as
//! written against OpenBao and moto:
//!
//! - the least-privilege Vault policy (HCL) is the only policy of the
//!   daemon's Vault token, and the AWS IAM policy (JSON) is the only policy
//!   of its AWS user, with moto enforcing IAM; rotations, rollbacks,
//!   `status` and `sweep` all succeed under them;
//! - the consumer commands (`vault kv get …`, `aws secretsmanager
//!   get-secret-value … | jq -r .token`) run through `sh` with the CLIs on
//!   `PATH` print the current token;
//! - the Vault Agent template renders the current token with `bao agent`;
//! - the External Secrets manifest names the secret and property a consumer
//!   reads the current token from.
//!
//! moto checks IAM *actions* but evaluates every Secrets Manager call
//! against the resource `*`, so the policy runs with `Resource: "*"` and the
//! README's resource ARNs are checked separately against the ARNs moto gave
//! the secrets the daemon used.

mod credentials;
mod instructions;
mod permissions;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use motherduck_rotator::motherduck::Endpoint;
use reqwest::Response;
use serde_json::{Value, json};

use crate::smoke_services::secrets_manager;
use crate::support::child_logs::printed;
use crate::support::config_toml;
use crate::support::services::{Moto, OpenBao, tool_path};
use crate::support::world::{self, Bench, Scratch};

const ACCOUNT: &str = "123456789012"; // moto's default account
const REGION: &str = "us-east-1";
const SECRET: &str = "prod/motherduck/orders-api";
const VAULT_PATH: &str = "motherduck/orders-api";

// ------------------------------------------------------------ README text ---

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md")
}

/// The body of the first fenced block in `lang` after the text `marker`.
fn readme_block(marker: &str, lang: &str) -> String {
    let text = readme();
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("README.md no longer contains {marker:?}"));
    let fence = format!("```{lang}\n");
    let start = text[at..]
        .find(&fence)
        .unwrap_or_else(|| panic!("no ```{lang} block after {marker:?} in README.md"))
        + at
        + fence.len();
    let end = text[start..].find("```").expect("unterminated block") + start;
    text[start..end].to_owned()
}

fn readme_vault_policy() -> String {
    readme_block("Least-privilege Vault policy", "hcl")
}

/// The README's IAM policy document, parsed.
fn readme_iam_policy() -> Value {
    let text = readme_block("Least-privilege IAM policy", "json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("README IAM policy is not JSON: {e}"))
}

/// The IAM policy as moto can evaluate it: every `Resource` is `*`, and the
/// actions named in `without` are dropped.
fn moto_iam_policy(without: &[&str]) -> Value {
    let mut policy = readme_iam_policy();
    for statement in policy["Statement"].as_array_mut().unwrap() {
        statement["Resource"] = json!("*");
        let actions = statement["Action"].as_array_mut().unwrap();
        actions.retain(|a| !without.contains(&a.as_str().unwrap()));
    }
    policy
}

/// `*` and `?` glob match, as IAM resource patterns use them.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[test]
fn glob_matches_like_iam() {
    assert!(glob("a-??????", "a-Ab3dE9"));
    assert!(!glob("a-??????", "a-Ab3dE"));
    assert!(!glob("a-??????", "a.journal-Ab3dE9"));
    assert!(glob("arn:*:x", "arn:aws:eu:x"));
    assert!(!glob("arn:*:x", "arn:aws:eu:y"));
}

// ------------------------------------------------------------------ World ---

struct World {
    bench: Bench,
}

impl World {
    async fn new() -> World {
        let bench = Bench::new(Scratch::new("readme"), &["svc_orders"], "info").await;
        std::fs::create_dir_all(bench.dir().join("bin")).unwrap();
        World { bench }
    }

    fn dir(&self) -> &Path {
        self.bench.dir()
    }

    /// A world with moto, and `aws.toml` writing to the README's AWS
    /// destination, verified by the built-in check.
    async fn with_aws() -> (World, Moto, PathBuf) {
        let w = World::new().await;
        let moto = Moto::start().await;
        let verify = r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#;
        let config = w.config("aws", &aws_store(&moto), AWS_DEST, verify);
        (w, moto, config)
    }

    /// Writes `<name>.toml`: policy `orders-api` with the README's
    /// destinations (those given), verified by `verify`.
    fn config(&self, name: &str, stores: &str, destinations: &str, verify: &str) -> PathBuf {
        let path = self.dir().join(format!("{name}.toml"));
        let src = config_toml::motherduck(&self.bench.sim.base_url())
            + "\n[daemon]\norphan_min_age = \"0s\"\n"
            + stores
            + &config_toml::policy(
                "orders-api",
                "svc_orders",
                destinations,
                &format!("verify = [{verify}]\n"),
            );
        std::fs::write(&path, src).unwrap();
        path
    }

    async fn run(&self, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"));
        c.arg("--config")
            .arg(config)
            .args(args)
            .current_dir(self.dir())
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ROLE_ARN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.dir().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir().join("no-aws-credentials"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            c.env(k, v);
        }
        tokio::time::timeout(Duration::from_secs(120), c.output())
            .await
            .expect("the rotator finishes")
            .unwrap()
    }

    fn live_ids(&self) -> Vec<String> {
        world::live_ids(&self.bench.sim.sim, "svc_orders")
    }
}

fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what}: {}", printed(out));
}

// ------------------------------------------------------------ Vault setup ---

/// As root on `bao`: `PUT` the ACL policy `name` with the HCL `text`.
async fn put_policy(client: &reqwest::Client, bao: &OpenBao, name: &str, text: &str) -> Response {
    client
        .put(format!("{}/v1/sys/policies/acl/{name}", bao.addr))
        .header("X-Vault-Token", &bao.root_token)
        .json(&json!({ "policy": text }))
        .send()
        .await
        .unwrap()
}

/// As root on `bao`: a new token as `body` asks; its `auth` block.
async fn create_token(client: &reqwest::Client, bao: &OpenBao, body: Value) -> Value {
    let v: Value = client
        .post(format!("{}/v1/auth/token/create", bao.addr))
        .header("X-Vault-Token", &bao.root_token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["auth"].clone()
}

/// A token whose only policy (besides `default`) is the README's.
async fn readme_vault_token(bao: &OpenBao) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = put_policy(&client, bao, "motherduck-rotator", &readme_vault_policy()).await;
    assert!(
        resp.status().is_success(),
        "OpenBao rejects the README's Vault policy: {}",
        resp.text().await.unwrap_or_default()
    );
    let body = json!({ "policies": ["motherduck-rotator"], "ttl": "1h", "renewable": true });
    let auth = create_token(&client, bao, body).await;
    let token = auth["client_token"].as_str().unwrap().to_owned();
    assert_eq!(
        auth["policies"],
        json!(["default", "motherduck-rotator"]),
        "the token has only the README's policy"
    );
    token
}

async fn vault_current(bao: &OpenBao) -> Value {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/v1/secret/data/{VAULT_PATH}", bao.addr))
        .header("X-Vault-Token", &bao.root_token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["data"]["data"]
        .clone()
}

// -------------------------------------------------------------- IAM setup ---

/// Calls an IAM action through moto's query protocol (unsigned: only while
/// moto does not enforce IAM).
async fn iam(moto: &Moto, params: &[(&str, &str)]) -> String {
    let what = format!("IAM {params:?}");
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/", moto.endpoint))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=00",
        )
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[params, &[("Version", "2010-05-08")]].concat()))
        .send()
        .await
        .unwrap();
    crate::support::success_text(resp, &what).await
}

fn form(params: &[(&str, &str)]) -> String {
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn xml_field(xml: &str, field: &str) -> String {
    let open = format!("<{field}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{field}> in IAM answer"))
        + open.len();
    let end = xml[start..].find('<').unwrap() + start;
    xml[start..end].to_owned()
}

/// An IAM user with `policy` as its only (inline) policy, and its keys.
async fn iam_user(moto: &Moto, name: &str, policy: &Value) -> (String, String) {
    iam(moto, &[("Action", "CreateUser"), ("UserName", name)]).await;
    iam(
        moto,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", name),
            ("PolicyName", "motherduck-rotator"),
            ("PolicyDocument", &policy.to_string()),
        ],
    )
    .await;
    let keys = iam(moto, &[("Action", "CreateAccessKey"), ("UserName", name)]).await;
    (
        xml_field(&keys, "AccessKeyId"),
        xml_field(&keys, "SecretAccessKey"),
    )
}

/// From now on moto authenticates and authorizes every request (`0`), or no
/// longer does (`inf`).
async fn enforce_iam(moto: &Moto, on: bool) {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/moto-api/reset-auth", moto.endpoint))
        .body(if on { "0" } else { "inf" })
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "moto reset-auth");
}

fn aws_env(keys: &(String, String)) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", keys.0.clone()),
        ("AWS_SECRET_ACCESS_KEY", keys.1.clone()),
        ("AWS_DEFAULT_REGION", REGION.to_owned()),
    ]
}

fn aws_store(moto: &Moto) -> String {
    format!(
        r#"
[stores.aws]
type = "aws"
region = "{REGION}"
endpoint_url = "{}"
create_if_missing = false
"#,
        moto.endpoint
    )
}

const AWS_DEST: &str = r#"{ store = "aws", path = "prod/motherduck/orders-api" }"#;
