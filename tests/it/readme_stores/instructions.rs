//! The README's store instructions, followed as written.

use super::*;

/// Everything the README tells an operator and a consumer, end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_store_instructions_work_as_written() {
    let w = World::new().await;
    let bao = OpenBao::start().await;
    let moto = Moto::start().await;

    crate::support::write_secret(w.dir().join("vault.token"), readme_vault_token(&bao).await);
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
    assert_eq!(status["policies"][0]["state"], "idle", "{status}");
    for d in status["policies"][0]["destinations"].as_array().unwrap() {
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
    assert!(w.bench.sim.sim.is_issued_secret(&token));

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
    let bin = w.dir().join("bin");
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
            .current_dir(w.dir())
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("HOME", w.dir())
            .env("VAULT_ADDR", &bao.addr)
            .env("VAULT_TOKEN", &bao.root_token)
            .env("AWS_ACCESS_KEY_ID", "consumer")
            .env("AWS_SECRET_ACCESS_KEY", "consumer")
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .output()
            .await
            .unwrap();
        crate::support::assert_success(&out, &format!("`{command}` fails: "));
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
    let rendered = w.dir().join("motherduck_token");
    std::fs::write(w.dir().join("agent.token"), &bao.root_token).unwrap();
    std::fs::write(
        w.dir().join("agent.hcl"),
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
            dir = w.dir().display(),
            template = template.replace(readme_dest, &rendered.display().to_string()),
        ),
    )
    .unwrap();
    let agent = tokio::process::Command::new(tool_path("bao"))
        .arg("agent")
        .arg(format!("-config={}", w.dir().join("agent.hcl").display()))
        .current_dir(w.dir())
        .env("HOME", w.dir())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let agent = tokio::time::timeout(Duration::from_secs(60), agent)
        .await
        .expect("bao agent renders and exits")
        .unwrap();
    crate::support::assert_success(&agent, "bao agent: ");
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
