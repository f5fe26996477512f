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

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use motherduck_rotator::motherduck::Endpoint;
use motherduck_rotator::secret::ExposeSecret;
use motherduck_rotator::simulator::{RunningSimulator, Simulator, SimulatorOptions};
use serde_json::{Value, json};

use crate::smoke_services::secrets_manager;
use crate::support::child_logs::printed;
use crate::support::services::{Moto, OpenBao, tool_path};

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
    dir: PathBuf,
    sim: RunningSimulator,
}

impl World {
    async fn new() -> World {
        let dir =
            std::env::temp_dir().join(format!("mdr-readme-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let sim = Simulator::spawn(SimulatorOptions::default()).await.unwrap();
        sim.sim.add_service_account("svc_orders");
        crate::support::write_secret(dir.join("admin.token"), sim.admin_token.expose_secret());
        World { dir, sim }
    }

    /// Writes `<name>.toml`: policy `orders-api` with the README's
    /// destinations (those given), verified by `verify`.
    fn config(&self, name: &str, stores: &str, destinations: &str, verify: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
[motherduck]
api_url = "{api}"
admin_token = {{ file = "admin.token" }}

[daemon]
orphan_min_age = "0s"
{stores}
[[policy]]
name = "orders-api"
service_account = "svc_orders"
schedule = {{ interval = "1d" }}
overlap = "0s"
verify = [{verify}]
destinations = [{destinations}]
"#,
                api = self.sim.base_url(),
            ),
        )
        .unwrap();
        path
    }

    async fn run(&self, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"));
        c.arg("--config")
            .arg(config)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ROLE_ARN")
            .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.dir.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-aws-credentials"),
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
        self.sim
            .sim
            .live_tokens("svc_orders")
            .into_iter()
            .map(|t| t.id)
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what}: {}", printed(out));
}

// ------------------------------------------------------------ Vault setup ---

/// A token whose only policy (besides `default`) is the README's.
async fn readme_vault_token(bao: &OpenBao) -> String {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = client
        .put(format!(
            "{}/v1/sys/policies/acl/motherduck-rotator",
            bao.addr
        ))
        .header("X-Vault-Token", &bao.root_token)
        .json(&json!({ "policy": readme_vault_policy() }))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "OpenBao rejects the README's Vault policy: {}",
        resp.text().await.unwrap_or_default()
    );
    let v: Value = client
        .post(format!("{}/v1/auth/token/create", bao.addr))
        .header("X-Vault-Token", &bao.root_token)
        .json(&json!({ "policies": ["motherduck-rotator"], "ttl": "1h", "renewable": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["auth"]["client_token"].as_str().unwrap().to_owned();
    assert_eq!(
        v["auth"]["policies"],
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
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "IAM {params:?}: HTTP {status}: {text}");
    text
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

// ------------------------------------------------------------------ Tests ---

/// Everything the README tells an operator and a consumer, end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_store_instructions_work_as_written() {
    let w = World::new().await;
    let bao = OpenBao::start().await;
    let moto = Moto::start().await;

    crate::support::write_secret(w.dir.join("vault.token"), readme_vault_token(&bao).await);
    // The operator creates the secret; the daemon (create_if_missing =
    // false, the README's setting) only writes versions of it.
    secrets_manager(&moto, "CreateSecret", json!({ "Name": SECRET })).await;
    let rotator = iam_user(&moto, "motherduck-rotator", &moto_iam_policy(&[])).await;
    enforce_iam(&moto, true).await;
    let rotator_env = aws_env(&rotator);
    let env: Vec<(&str, &str)> = rotator_env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let stores = format!(
        r#"
[stores.vault]
type = "vault"
address = "{}"
kv_version = 2
mount = "secret"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}
{}"#,
        bao.addr,
        aws_store(&moto)
    );
    let dests = format!(r#"{{ store = "vault", path = "{VAULT_PATH}" }}, {AWS_DEST}"#);
    let ok = w.config(
        "ok",
        &stores,
        &dests,
        r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#,
    );
    let failing = w.config(
        "failing",
        &stores,
        &dests,
        r#"{ type = "command", command = ["false"], timeout = "50ms", interval = "10ms", deadline = "50ms" }"#,
    );

    // A first token that fails verification is rolled back everywhere.
    let out = w.run(&failing, &["rotate", "orders-api"], &env).await;
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(w.live_ids().is_empty(), "the unverified token is revoked");
    // Two rotations, then one rolled back to the previous token.
    for round in 0..2 {
        let out = w.run(&ok, &["rotate", "orders-api"], &env).await;
        assert_ok(&format!("rotation {round}"), &out);
    }
    let current = w.live_ids();
    assert_eq!(current.len(), 1, "the first token was revoked");
    let out = w.run(&failing, &["rotate", "orders-api"], &env).await;
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert_eq!(w.live_ids(), current, "rolled back to the verified token");
    let out = w.run(&ok, &["sweep"], &env).await;
    assert_ok("sweep", &out);
    let out = w.run(&ok, &["status", "--json"], &env).await;
    assert_ok("status", &out);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["state"], "idle", "{status}");
    for d in status[0]["destinations"].as_array().unwrap() {
        assert_eq!(d["current_token_id"], json!(current[0]), "{d}");
    }
    let out = w.run(&ok, &["validate", "--online"], &env).await;
    assert_ok("validate --online", &out);
    let text = String::from_utf8_lossy(&out.stdout);
    for check in ["motherduck: ok", "(orders-api): ok"] {
        assert!(text.contains(check), "{text}");
    }
    assert_eq!(
        text.matches(": ok").count(),
        5,
        "config, motherduck, two stores, the service account\n{text}"
    );

    // The rest reads as a consumer, with full rights.
    enforce_iam(&moto, false).await;
    let record = vault_current(&bao).await;
    assert_eq!(record["token_id"], json!(current[0]));
    let token = record["token"].as_str().unwrap().to_owned();
    assert!(w.sim.sim.is_issued_secret(&token));

    // Each secret the daemon used is covered by the README's resources: the
    // secret by the first statement, its companions by both.
    let listed = secrets_manager(&moto, "ListSecrets", json!({})).await;
    let policy = readme_iam_policy();
    let resources = |i: usize| -> Vec<String> {
        policy["Statement"][i]["Resource"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_str()
                    .unwrap()
                    .replace("REGION", REGION)
                    .replace("ACCOUNT", ACCOUNT)
            })
            .collect()
    };
    let covered = |i: usize, arn: &str| resources(i).iter().any(|r| glob(r, arn));
    let mut names = Vec::new();
    for s in listed["SecretList"].as_array().unwrap() {
        let (name, arn) = (s["Name"].as_str().unwrap(), s["ARN"].as_str().unwrap());
        names.push(name.to_owned());
        assert!(
            covered(0, arn),
            "{arn} is not in the README's first statement"
        );
        if name != SECRET {
            assert!(
                covered(1, arn),
                "{arn} is not in the README's CreateSecret statement"
            );
        } else {
            assert!(!covered(1, arn), "the README lets the daemon create {arn}");
        }
    }
    names.sort();
    assert_eq!(names, vec![SECRET.to_owned(), format!("{SECRET}.journal")]);

    // The consumer commands, as written, with the CLIs on PATH (`vault` is
    // OpenBao's CLI under the name the README uses).
    let bin = w.dir.join("bin");
    std::os::unix::fs::symlink(tool_path("bao"), bin.join("vault")).unwrap();
    std::os::unix::fs::symlink(tool_path("aws"), bin.join("aws")).unwrap();
    std::os::unix::fs::symlink(tool_path("jq"), bin.join("jq")).unwrap();
    let block = readme_block("### How consumers read the token", "sh");
    let commands: Vec<String> = block
        .replace("\\\n", " ")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(commands.len(), 2, "{block}");
    assert!(commands[0].starts_with("vault kv get"), "{block}");
    assert!(commands[1].starts_with("aws secretsmanager"), "{block}");
    for command in &commands {
        let out = tokio::process::Command::new("sh")
            .arg("-ec")
            .arg(command)
            .current_dir(&w.dir)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("HOME", &w.dir)
            .env("VAULT_ADDR", &bao.addr)
            .env("VAULT_TOKEN", &bao.root_token)
            .env("AWS_ACCESS_KEY_ID", "consumer")
            .env("AWS_SECRET_ACCESS_KEY", "consumer")
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "`{command}` fails: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Compared without printing: the value is a token secret.
        assert!(
            String::from_utf8(out.stdout).unwrap().trim_end() == token,
            "`{command}` does not print the current token"
        );
    }

    // The Vault Agent template, rendered once by `bao agent`.
    let template = readme_block("A Vault Agent template", "hcl");
    let readme_dest = "/run/secrets/motherduck_token";
    assert!(template.contains(readme_dest), "{template}");
    let rendered = w.dir.join("motherduck_token");
    std::fs::write(w.dir.join("agent.token"), &bao.root_token).unwrap();
    std::fs::write(
        w.dir.join("agent.hcl"),
        format!(
            r#"
exit_after_auth = true
vault {{ address = "{addr}" }}
auto_auth {{
  method "token_file" {{
    config {{ token_file_path = "{dir}/agent.token" }}
  }}
}}
{template}"#,
            addr = bao.addr,
            dir = w.dir.display(),
            template = template.replace(readme_dest, &rendered.display().to_string()),
        ),
    )
    .unwrap();
    let agent = tokio::process::Command::new(tool_path("bao"))
        .arg("agent")
        .arg(format!("-config={}", w.dir.join("agent.hcl").display()))
        .current_dir(&w.dir)
        .env("HOME", &w.dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let agent = tokio::time::timeout(Duration::from_secs(60), agent)
        .await
        .expect("bao agent renders and exits")
        .unwrap();
    assert!(
        agent.status.success(),
        "bao agent: {}",
        String::from_utf8_lossy(&agent.stderr)
    );
    assert!(
        std::fs::read_to_string(&rendered).unwrap() == token,
        "the Vault Agent template does not render the current token"
    );

    // The External Secrets manifest: what it asks the operator to read
    // (remoteRef key and property of the AWSCURRENT version, the provider's
    // default) is the current token.
    let manifest = readme_block("An External Secrets Operator manifest", "yaml");
    let parsed = tokio::process::Command::new(tool_path("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let parsed = {
        use tokio::io::AsyncWriteExt;
        let mut child = parsed;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .await
            .unwrap();
        child.wait_with_output().await.unwrap()
    };
    assert!(parsed.status.success(), "{}", printed(&parsed));
    let es: Value = serde_json::from_slice(&parsed.stdout).unwrap();
    // external-secrets.io/v1beta1 is no longer served since ESO 0.17.
    assert_eq!(es["apiVersion"], "external-secrets.io/v1", "{es}");
    assert_eq!(es["kind"], "ExternalSecret");
    let store_kind = es["spec"]["secretStoreRef"]["kind"].as_str().unwrap();
    assert!(["SecretStore", "ClusterSecretStore"].contains(&store_kind));
    let refresh = es["spec"]["refreshInterval"].as_str().unwrap();
    humantime::parse_duration(refresh).unwrap();
    let data = es["spec"]["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{es}");
    let remote = &data[0]["remoteRef"];
    assert!(data[0]["secretKey"].is_string(), "{es}");
    let value = secrets_manager(
        &moto,
        "GetSecretValue",
        json!({ "SecretId": remote["key"], "VersionStage": "AWSCURRENT" }),
    )
    .await;
    let body: Value = serde_json::from_str(value["SecretString"].as_str().unwrap()).unwrap();
    let property = remote["property"].as_str().unwrap();
    assert!(
        body[property].as_str() == Some(token.as_str()),
        "the manifest's remoteRef does not resolve to the current token"
    );
}

/// Each Secrets Manager action the README grants is one the daemon needs:
/// without it, the first rotation of a policy writing only to AWS fails,
/// says access was denied, and leaves no live token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_iam_action_is_needed() {
    let w = World::new().await;
    let moto = Moto::start().await;
    let verify = r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#;
    let config = w.config("aws", &aws_store(&moto), AWS_DEST, verify);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    // TagResource is not in the list: moto does not ask for it when a secret
    // is created with tags, AWS does.
    let actions = [
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage",
        "secretsmanager:CreateSecret",
    ];
    for (i, action) in actions.iter().enumerate() {
        let granted = moto_iam_policy(&[]);
        let all: Vec<&Value> = granted["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["Action"].as_array().unwrap())
            .collect();
        assert!(
            all.contains(&&json!(action)),
            "README no longer grants {action}"
        );

        let reset = client
            .post(format!("{}/moto-api/reset", moto.endpoint))
            .send()
            .await
            .unwrap();
        assert!(reset.status().is_success());
        enforce_iam(&moto, false).await;
        secrets_manager(&moto, "CreateSecret", json!({ "Name": SECRET })).await;
        let user = format!("rotator-{i}");
        let keys = iam_user(&moto, &user, &moto_iam_policy(&[action])).await;
        enforce_iam(&moto, true).await;
        let env = aws_env(&keys);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

        let out = w.run(&config, &["rotate", "orders-api"], &env).await;
        let text = printed(&out);
        assert_eq!(out.status.code(), Some(1), "without {action}: {text}");
        assert!(
            text.contains("AccessDenied") || text.to_lowercase().contains("denied"),
            "without {action} the failure does not say access was denied: {text}"
        );
        assert!(
            w.live_ids().is_empty(),
            "without {action} a token was left live"
        );
    }

    // With all of them the same rotation succeeds.
    let reset = client
        .post(format!("{}/moto-api/reset", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(reset.status().is_success());
    enforce_iam(&moto, false).await;
    secrets_manager(&moto, "CreateSecret", json!({ "Name": SECRET })).await;
    let keys = iam_user(&moto, "rotator", &moto_iam_policy(&[])).await;
    enforce_iam(&moto, true).await;
    let env = aws_env(&keys);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = w.run(&config, &["rotate", "orders-api"], &env).await;
    assert_ok("rotation with the README's actions", &out);
    assert_eq!(w.live_ids().len(), 1);
}

/// Each line of the README's Vault policy is one the daemon needs: with any
/// one removed, a rotation fails before creating a token (the first read, or
/// the capability preflight), naming that path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_vault_policy_line_is_needed() {
    let w = World::new().await;
    let bao = OpenBao::start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let stores = format!(
        r#"
[stores.vault]
type = "vault"
address = "{}"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}
"#,
        bao.addr
    );
    let verify = r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#;
    let dest = format!(r#"{{ store = "vault", path = "{VAULT_PATH}" }}"#);
    let config = w.config("vault", &stores, &dest, verify);
    let policy = readme_vault_policy();
    let lines: Vec<&str> = policy.lines().filter(|l| l.starts_with("path ")).collect();
    assert_eq!(lines.len(), 8, "{policy}");
    for (i, line) in lines.iter().enumerate() {
        let path = line.split('"').nth(1).unwrap();
        let reduced: String = lines
            .iter()
            .filter(|l| *l != line)
            .map(|l| format!("{l}\n"))
            .collect();
        let name = format!("reduced-{i}");
        let resp = client
            .put(format!("{}/v1/sys/policies/acl/{name}", bao.addr))
            .header("X-Vault-Token", &bao.root_token)
            .json(&json!({ "policy": reduced }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
        let v: Value = client
            .post(format!("{}/v1/auth/token/create", bao.addr))
            .header("X-Vault-Token", &bao.root_token)
            .json(&json!({ "policies": [name], "ttl": "1h" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        crate::support::write_secret(
            w.dir.join("vault.token"),
            v["auth"]["client_token"].as_str().unwrap(),
        );
        let out = w.run(&config, &["validate", "--online"], &[]).await;
        let text = printed(&out);
        assert_eq!(out.status.code(), Some(1), "without `{path}`: {text}");
        assert!(
            text.contains("FAILED") && text.contains(&format!("`{path}` needs")),
            "validate --online does not name `{path}`: {text}"
        );
        let out = w.run(&config, &["rotate", "orders-api"], &[]).await;
        let text = printed(&out);
        assert_eq!(out.status.code(), Some(1), "without `{path}`: {text}");
        assert!(
            (text.contains("lacks capabilities") && text.contains(&format!("`{path}` needs")))
                || text.contains(&format!("`{path}`: permission denied")),
            "without `{path}` the rotation is not refused naming it: {text}"
        );
        assert_eq!(
            w.sim.sim.request_count(Endpoint::CreateToken),
            0,
            "without `{path}` a token was created"
        );
    }
}

/// The default credential chain, beyond environment variables: a named
/// profile in the shared files (with moto enforcing IAM, so only the
/// profile's keys can work), and web identity (IRSA: a projected token
/// exchanged with STS for a role's credentials, STS being moto too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_credential_chain_reads_profiles_and_web_identity() {
    let w = World::new().await;
    let moto = Moto::start().await;
    let verify = r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#;
    let config = w.config("aws", &aws_store(&moto), AWS_DEST, verify);
    secrets_manager(&moto, "CreateSecret", json!({ "Name": SECRET })).await;

    // A profile.
    let keys = iam_user(&moto, "rotator", &moto_iam_policy(&[])).await;
    let aws_dir = w.dir.join("aws");
    std::fs::create_dir_all(&aws_dir).unwrap();
    std::fs::write(
        aws_dir.join("config"),
        format!("[profile rotator]\nregion = {REGION}\n"),
    )
    .unwrap();
    std::fs::write(
        aws_dir.join("credentials"),
        format!(
            "[rotator]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            keys.0, keys.1
        ),
    )
    .unwrap();
    enforce_iam(&moto, true).await;
    let config_file = aws_dir.join("config").display().to_string();
    let credentials_file = aws_dir.join("credentials").display().to_string();
    let profile_env = [
        ("AWS_PROFILE", "rotator"),
        ("AWS_CONFIG_FILE", config_file.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", credentials_file.as_str()),
    ];
    let out = w
        .run(&config, &["rotate", "orders-api"], &profile_env)
        .await;
    assert_ok("rotation with a profile", &out);
    // The same profile with keys moto does not know is refused: the keys
    // above really were the ones used.
    std::fs::write(
        aws_dir.join("credentials"),
        "[rotator]\naws_access_key_id = AKIAUNKNOWN000000000\naws_secret_access_key = x\n",
    )
    .unwrap();
    let out = w
        .run(&config, &["rotate", "orders-api"], &profile_env)
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert_eq!(w.live_ids().len(), 1, "the refused run left no token");

    // Web identity. moto answers STS's unsigned AssumeRoleWithWebIdentity
    // only while it does not enforce IAM.
    enforce_iam(&moto, false).await;
    iam(
        &moto,
        &[
            ("Action", "CreateRole"),
            ("RoleName", "motherduck-rotator"),
            (
                "AssumeRolePolicyDocument",
                &json!({"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Federated": format!("arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.example")},
                    "Action": "sts:AssumeRoleWithWebIdentity"}]})
                .to_string(),
            ),
        ],
    )
    .await;
    std::fs::write(
        w.dir.join("web-identity.jwt"),
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyb3RhdG9yIn0.c2ln",
    )
    .unwrap();
    let token_file = w.dir.join("web-identity.jwt").display().to_string();
    let role_arn = format!("arn:aws:iam::{ACCOUNT}:role/motherduck-rotator");
    let web_env = [
        ("AWS_ROLE_ARN", role_arn.as_str()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.as_str()),
        ("AWS_ROLE_SESSION_NAME", "motherduck-rotator"),
        ("AWS_ENDPOINT_URL_STS", moto.endpoint.as_str()),
    ];
    let out = w.run(&config, &["rotate", "orders-api"], &web_env).await;
    assert_ok("rotation with web identity", &out);
    assert_eq!(w.live_ids().len(), 1);
    // Without the web identity variables nothing else in the chain has
    // credentials.
    let out = w.run(&config, &["rotate", "orders-api"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(
        printed(&out).contains("no usable AWS credentials"),
        "{}",
        printed(&out)
    );
}

/// The last link of the default credential chain: instance metadata
/// (IMDSv2), served here by wiremock at `AWS_EC2_METADATA_SERVICE_ENDPOINT`
/// with temporary credentials of a role holding the README's policy. moto
/// enforces IAM, so the rotation can only succeed with those credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_credential_chain_reads_instance_metadata() {
    use wiremock::matchers::{header_exists, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let w = World::new().await;
    let moto = Moto::start().await;
    let verify = r#"{ type = "motherduck", interval = "10ms", deadline = "10s" }"#;
    let config = w.config("aws", &aws_store(&moto), AWS_DEST, verify);
    secrets_manager(&moto, "CreateSecret", json!({ "Name": SECRET })).await;
    iam(
        &moto,
        &[
            ("Action", "CreateRole"),
            ("RoleName", "motherduck-rotator"),
            (
                "AssumeRolePolicyDocument",
                &json!({"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole"}]})
                .to_string(),
            ),
        ],
    )
    .await;
    iam(
        &moto,
        &[
            ("Action", "PutRolePolicy"),
            ("RoleName", "motherduck-rotator"),
            ("PolicyName", "motherduck-rotator"),
            ("PolicyDocument", &moto_iam_policy(&[]).to_string()),
        ],
    )
    .await;
    // What EC2 does for an instance profile: temporary credentials of the
    // role (taken from moto's STS while it does not enforce IAM).
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/", moto.endpoint))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            (
                "RoleArn",
                &format!("arn:aws:iam::{ACCOUNT}:role/motherduck-rotator"),
            ),
            ("RoleSessionName", "i-0123456789abcdef0"),
            ("WebIdentityToken", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        ]))
        .send()
        .await
        .unwrap();
    let xml = resp.text().await.unwrap();
    let creds = json!({
        "Code": "Success",
        "LastUpdated": "2026-01-01T00:00:00Z",
        "Type": "AWS-HMAC",
        "AccessKeyId": xml_field(&xml, "AccessKeyId"),
        "SecretAccessKey": xml_field(&xml, "SecretAccessKey"),
        "Token": xml_field(&xml, "SessionToken"),
        "Expiration": (chrono::Utc::now() + chrono::Duration::hours(6))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
    });

    let imds = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/latest/api/token"))
        .and(header_exists("x-aws-ec2-metadata-token-ttl-seconds"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
                .set_body_string("imds-session-token"),
        )
        .mount(&imds)
        .await;
    Mock::given(method("GET"))
        .and(path("/latest/meta-data/iam/security-credentials/"))
        .and(header_exists("x-aws-ec2-metadata-token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("motherduck-rotator"))
        .mount(&imds)
        .await;
    Mock::given(method("GET"))
        .and(path(
            "/latest/meta-data/iam/security-credentials/motherduck-rotator",
        ))
        .and(header_exists("x-aws-ec2-metadata-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&creds))
        .mount(&imds)
        .await;

    // A metadata service that answers badly is reported as a credentials
    // problem, not as Secrets Manager being unreachable.
    let broken = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/latest/api/token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("no-ttl-header"))
        .mount(&broken)
        .await;
    let broken_endpoint = broken.uri();
    let out = w
        .run(
            &config,
            &["rotate", "orders-api"],
            &[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                (
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                    broken_endpoint.as_str(),
                ),
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cannot load AWS credentials"),
        "{}",
        printed(&out)
    );

    enforce_iam(&moto, true).await;
    let endpoint = imds.uri();
    let imds_env = [
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.as_str()),
    ];
    let out = w.run(&config, &["rotate", "orders-api"], &imds_env).await;
    assert_ok("rotation with instance metadata credentials", &out);
    assert_eq!(w.live_ids().len(), 1);
    let asked = imds.received_requests().await.unwrap();
    assert!(
        asked.iter().any(|r| r
            .url
            .path()
            .ends_with("/security-credentials/motherduck-rotator")),
        "the credentials came from instance metadata"
    );
}
