//! Secret references: where they resolve from, what is checked without
//! reading them, and that a pasted secret is never echoed. The errors of a
//! reference's form are cases in `data/secrets/`.

use super::*;

#[test]
fn secrets_resolve_from_file_env_and_credential() {
    let scratch = Scratch::new();
    let env = FakeEnv::new().with("CREDENTIALS_DIRECTORY", &scratch.credentials_dir());
    let doc = |secret: &str| {
        format!(
            "motherduck = {{ admin_token = {secret} }}\n\
             stores.local = {{ type = \"file\", directory = \"store\" }}\n\
             [[policy]]\n\
             name = \"app\"\n\
             service_account = \"svc_app\"\n\
             schedule = {{ interval = \"1d\" }}\n\
             destinations = [{{ store = \"local\", path = \"app.json\" }}]\n\
             verify = [{{ type = \"http\", url = \"https://a.example.com/\", headers = {{ Authorization = {{ file = \"probe.key\" }} }} }}]\n"
        )
    };
    let absolute = format!(
        "{{ file = \"{}\" }}",
        scratch.dir.join("admin.token").display()
    );
    for (secret, token, env_name) in [
        ("{ file = \"admin.token\" }", FILE_TOKEN, None),
        (absolute.as_str(), FILE_TOKEN, None),
        ("{ env = \"MD_TOKEN\" }", ENV_TOKEN, Some("MD_TOKEN")),
        ("{ credential = \"md_admin\" }", CREDENTIAL_TOKEN, None),
    ] {
        let config = parse_in(&scratch, &doc(secret), &env, true)
            .unwrap_or_else(|e| panic!("{secret}: {e}"));
        assert_eq!(
            config.motherduck.admin_token.expose_secret(),
            token,
            "{secret}"
        );
        assert_eq!(
            config.motherduck.admin_token_env.as_deref(),
            env_name,
            "{secret}"
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains(token),
            "Debug shows the admin token: {debug}"
        );
        assert!(
            !debug.contains("probe-key-from-file"),
            "Debug shows a header secret: {debug}"
        );
    }
}

#[test]
fn without_resolving_secrets_references_are_checked_for_form_only() {
    // Nothing these references name exists, and that is fine for linting.
    let src = r#"
motherduck = { admin_token = { credential = "md_admin" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.json" }]
verify = [{ type = "http", url = "https://a.example.com/", headers = { Authorization = { env = "UNSET_VAR" }, X-Key = { file = "missing.key" } } }]
"#;
    let scratch = Scratch::new();
    let config = parse_in(&scratch, src, &FakeEnv::new(), false)
        .unwrap_or_else(|e| panic!("expected a valid configuration, got:\n{e}"));
    assert_eq!(config.policies.len(), 1);
    assert!(
        parse_in(&scratch, src, &FakeEnv::new(), true).is_err(),
        "the same text fails when the secrets are read"
    );
}

#[test]
fn inline_secrets_never_appear_in_errors() {
    let scratch = Scratch::new();
    for src in [
        format!("[motherduck]\nadmin_token = \"{JWT}\"\n"),
        "[motherduck]\nadmin_token = 918273645546372819\n".to_owned(),
        format!("motherduck = {{ admin_token = {{ env = \"{JWT}\" }} }}\n"),
        format!("motherduck = {{ admin_token = {{ credential = \"{JWT}\" }} }}\n"),
        format!("motherduck = {{ admin_token = {{ file = \"{JWT}\" }} }}\n"),
    ] {
        for resolve in [true, false] {
            let errors = parse_in(&scratch, &src, &FakeEnv::new(), resolve)
                .expect_err("a pasted token is refused");
            let shown = format!("{errors} {errors:?}");
            assert!(
                !shown.contains("918273645546372819") && !shown.contains("eyJ"),
                "the secret is echoed: {shown}"
            );
            assert_eq!(errors.0.len(), 1, "{errors}");
            assert!(
                errors.0[0].field.starts_with("motherduck.admin_token"),
                "{errors}"
            );
        }
    }
}
