//! Every permission the README grants is needed.

use super::*;

/// Resets moto, creates the README's secret, and makes `user` with the
/// README's IAM policy less the actions `without`, then enforces IAM. The
/// user's credentials as environment variables.
async fn fresh_user(
    moto: &Moto,
    client: &reqwest::Client,
    user: &str,
    without: &[&str],
) -> Vec<(&'static str, String)> {
    let reset = client
        .post(format!("{}/moto-api/reset", moto.endpoint))
        .send()
        .await
        .unwrap();
    assert!(reset.status().is_success());
    enforce_iam(moto, false).await;
    secrets_manager(moto, "CreateSecret", json!({ "Name": SECRET })).await;
    let keys = iam_user(moto, user, &moto_iam_policy(without)).await;
    enforce_iam(moto, true).await;
    aws_env(&keys)
}

/// Each Secrets Manager action the README grants is one the daemon needs:
/// without it, the first rotation of a policy writing only to AWS fails,
/// says access was denied, and leaves no live token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_iam_action_is_needed() {
    let (w, moto, config) = World::with_aws().await;
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

        let env = fresh_user(&moto, &client, &format!("rotator-{i}"), &[action]).await;
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
    let env = fresh_user(&moto, &client, "rotator", &[]).await;
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
        let resp = put_policy(&client, &bao, &name, &reduced).await;
        assert!(resp.status().is_success());
        let auth = create_token(&client, &bao, json!({ "policies": [name], "ttl": "1h" })).await;
        crate::support::write_secret(
            w.dir().join("vault.token"),
            auth["client_token"].as_str().unwrap(),
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
            w.bench.sim.sim.request_count(Endpoint::CreateToken),
            0,
            "without `{path}` a token was created"
        );
    }
}
