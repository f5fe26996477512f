//! The shipped configuration files stay valid, and `validate` reports a bad
//! one the way invariant 7 asks: file, line, column, field and reason, exit
//! code 64.

use std::path::{Path, PathBuf};
use std::process::Command;

use motherduck_rotator::config::{LoadOptions, load_with};

const BIN: &str = env!("CARGO_BIN_EXE_motherduck-rotator");

/// `validate` of the configuration at `path`.
fn validate(path: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(path)
        .arg("validate")
        .output()
        .expect("the binary runs")
}

/// The repository's `config/` folder.
fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// A scratch folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("mdr-config-files-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_shipped_configuration_is_valid() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .expect("the config/ folder exists")
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            load_with(
                path,
                LoadOptions {
                    resolve_secrets: false,
                },
            )
            .err()
            .map(|errors| errors.to_string())
        })
        .collect();
    assert!(
        failures.is_empty(),
        "invalid shipped configuration:\n{}",
        failures.join("\n")
    );
    assert!(
        files.len() >= 2,
        "expected at least config/demo.toml and config/example.toml, found {files:?}"
    );
}

#[test]
fn validate_reports_file_line_column_field_and_reason_and_exits_64() {
    let scratch = Scratch::new();
    let path = scratch.0.join("bad.toml");
    let inline_secret = "md-inline-admin-token-value";
    std::fs::write(
        &path,
        format!(
            "[motherduck]\n\
             admin_token = \"{inline_secret}\"\n\
             \n\
             [[policy]]\n\
             name = \"orders\"\n\
             service_account = \"svc_orders\"\n\
             token_ttl = \"1m\"\n\
             destinations = [{{ store = \"nowhere\", path = \"orders.json\" }}]\n"
        ),
    )
    .unwrap();

    let out = validate(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{stderr}");
    let p = path.display();
    for expected in [
        format!("{p}:2:1: `motherduck.admin_token`: inline secrets are not allowed"),
        format!("{p}:7:1: `policy[0].token_ttl`: `1m` is outside what MotherDuck accepts"),
        format!("{p}:8:19: `policy[0].destinations[0].store`: no store named `nowhere`"),
    ] {
        assert!(
            stderr.lines().any(|line| line.contains(&expected)),
            "no line with `{expected}` in stderr:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains(inline_secret)
            && !String::from_utf8_lossy(&out.stdout).contains(inline_secret),
        "the inline secret is echoed:\n{stderr}"
    );
}

#[test]
fn validate_reports_a_toml_syntax_error_with_its_place() {
    let scratch = Scratch::new();
    let path = scratch.0.join("broken.toml");
    std::fs::write(&path, "[motherduck\nadmin_token = { env = \"X\" }\n").unwrap();
    let out = validate(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{stderr}");
    let expected = format!("{}:1:12: unclosed table", path.display());
    assert!(
        stderr.contains(&expected),
        "no `{expected}` in stderr:\n{stderr}"
    );
}

#[test]
fn validate_skip_secrets_accepts_the_example() {
    let example = config_dir().join("example.toml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&example)
        .args(["validate", "--skip-secrets"])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("valid (3 policies, 0 warning(s))"),
        "stdout:\n{stdout}"
    );
}

#[test]
fn validate_refuses_secret_files_that_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let secret = "md-file-admin-token-value";
    let token = scratch.0.join("admin.token");
    crate::support::write_secret(&token, format!("{secret}\n"));
    let hook_key = scratch.0.join("hook.key");
    std::fs::write(&hook_key, "hook-hmac-key-value\n").unwrap();
    std::fs::set_permissions(&hook_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let path = scratch.0.join("exposed.toml");
    std::fs::write(
        &path,
        "[motherduck]\n\
         admin_token = { file = \"admin.token\" }\n\
         \n\
         [stores.local]\n\
         type = \"file\"\n\
         directory = \"state\"\n\
         \n\
         [[alerts.sink]]\n\
         type = \"webhook\"\n\
         url = \"http://127.0.0.1:9/alerts\"\n\
         hmac_secret = { file = \"hook.key\" }\n\
         \n\
         [[policy]]\n\
         name = \"orders\"\n\
         service_account = \"svc_orders\"\n\
         token_ttl = \"30d\"\n\
         destinations = [{ store = \"local\", path = \"orders.json\" }]\n",
    )
    .unwrap();
    let validate = || validate(&path);

    // Readable by others: refused at the key that names the file.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = validate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{stderr}");
    let expected = format!("{}:2:", path.display());
    let line = stderr
        .lines()
        .find(|l| l.contains("`motherduck.admin_token.file`"))
        .unwrap_or_else(|| panic!("no error for the admin token file:\n{stderr}"));
    assert!(
        line.contains(&expected)
            && line.contains("admin.token")
            && line.contains("readable by others (mode 644)")
            && line.contains("chmod 600"),
        "{line}"
    );
    // A file shared with this process's own group (Kubernetes' fsGroup
    // mount) is accepted, so the webhook's key draws no error.
    assert!(!stderr.contains("hook.key"), "{stderr}");
    assert!(
        !stderr.contains(secret) && !String::from_utf8_lossy(&out.stdout).contains(secret),
        "the secret is echoed:\n{stderr}"
    );

    // Owner-only: valid.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = validate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
}
