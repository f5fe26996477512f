//! Smoke tests for the real test services: they start, answer the APIs the
//! product uses, and go away when killed. A missing binary fails these tests
//! with a message naming `scripts/setup-test-env.sh`.

use serde_json::{Value, json};

use crate::support::services::{Moto, OpenBao, find_tool};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// Calls a Secrets Manager action through moto's JSON protocol. moto routes
/// on the service named in the SigV4 credential scope, so the request carries
/// a SigV4-shaped (unverified) `Authorization` header.
pub(crate) async fn secrets_manager(moto: &Moto, action: &str, body: Value) -> Value {
    let (status, text) = secrets_manager_raw(&client(), &moto.endpoint, action, &body)
        .await
        .unwrap_or_else(|e| panic!("{action}: {e}"));
    assert!(status.is_success(), "{action}: HTTP {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{action}: not JSON ({e}): {text}"))
}

/// [`secrets_manager`] without assertions: the status and the body, for
/// callers that expect failures (a consumer reading a secret not written
/// yet).
pub(crate) async fn secrets_manager_raw(
    http: &reqwest::Client,
    endpoint: &str,
    action: &str,
    body: &Value,
) -> Result<(reqwest::StatusCode, String), String> {
    let resp = http
        .post(format!("{endpoint}/"))
        .header("X-Amz-Target", format!("secretsmanager.{action}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header("X-Amz-Date", "20260101T000000Z")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 \
             Credential=AKIDEXAMPLE/20260101/us-east-1/secretsmanager/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target, \
             Signature=0000000000000000000000000000000000000000000000000000000000000000",
        )
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, text))
}

#[tokio::test]
async fn openbao_kv2_write_then_read() {
    let bao = OpenBao::start().await;
    let url = format!("{}/v1/secret/data/smoke", bao.addr);

    let written: Value = client()
        .post(&url)
        .header("X-Vault-Token", &bao.root_token)
        .json(&json!({ "data": { "token": "smoke-value" } }))
        .send()
        .await
        .expect("write secret")
        .error_for_status()
        .expect("write secret status")
        .json()
        .await
        .expect("write response JSON");
    assert_eq!(written["data"]["version"], 1, "write response: {written}");

    let read: Value = client()
        .get(&url)
        .header("X-Vault-Token", &bao.root_token)
        .send()
        .await
        .expect("read secret")
        .error_for_status()
        .expect("read secret status")
        .json()
        .await
        .expect("read response JSON");
    assert_eq!(
        read["data"]["data"]["token"], "smoke-value",
        "read response: {read}"
    );
    assert_eq!(
        read["data"]["metadata"]["version"], 1,
        "read response: {read}"
    );
}

#[tokio::test]
async fn openbao_rejects_other_tokens() {
    let bao = OpenBao::start().await;
    let status = client()
        .get(format!("{}/v1/secret/data/smoke", bao.addr))
        .header("X-Vault-Token", "not-the-root-token")
        .send()
        .await
        .expect("read secret")
        .status();
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN);
}

/// A request to `url` fails to connect: nothing listens there any more.
async fn assert_unreachable(url: &str) {
    let err = client()
        .get(url)
        .send()
        .await
        .expect_err("request after kill must fail");
    assert!(err.is_connect(), "expected a connection error, got {err:?}");
}

#[tokio::test]
async fn openbao_kill_makes_it_unreachable() {
    let mut bao = OpenBao::start().await;
    let health = format!("{}/v1/sys/health", bao.addr);
    client()
        .get(&health)
        .send()
        .await
        .expect("healthy before kill");

    bao.kill();

    assert_unreachable(&health).await;
}

#[tokio::test]
async fn moto_secrets_manager_create_then_get() {
    let moto = Moto::start().await;

    let created = secrets_manager(
        &moto,
        "CreateSecret",
        json!({ "Name": "smoke/token", "SecretString": "smoke-value" }),
    )
    .await;
    assert_eq!(created["Name"], "smoke/token", "CreateSecret: {created}");
    let arn = created["ARN"]
        .as_str()
        .expect("CreateSecret returns an ARN");
    assert!(
        arn.starts_with("arn:aws:secretsmanager:us-east-1:"),
        "ARN {arn} should be in the region of the credential scope"
    );

    let got = secrets_manager(
        &moto,
        "GetSecretValue",
        json!({ "SecretId": "smoke/token" }),
    )
    .await;
    assert_eq!(got["SecretString"], "smoke-value", "GetSecretValue: {got}");
    assert_eq!(
        got["VersionId"], created["VersionId"],
        "GetSecretValue: {got}"
    );
    assert_eq!(
        got["VersionStages"],
        json!(["AWSCURRENT"]),
        "GetSecretValue: {got}"
    );
}

#[tokio::test]
async fn moto_kill_makes_it_unreachable() {
    let mut moto = Moto::start().await;
    let url = format!("{}/moto-api/data.json", moto.endpoint);
    client().get(&url).send().await.expect("up before kill");

    moto.kill();

    assert_unreachable(&url).await;
}

#[test]
fn missing_tool_fails_loudly_naming_the_setup_command() {
    let err = find_tool("mdr-no-such-test-tool").unwrap_err();
    assert!(err.contains("`mdr-no-such-test-tool` not found"), "{err}");
    assert!(
        err.contains("run scripts/setup-test-env.sh (or scripts/test.sh)"),
        "{err}"
    );
}
