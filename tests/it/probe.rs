//! The file store's readiness check leaves nothing behind, even when the
//! process is killed in the middle of it.

use std::process::Command;

#[test]
fn a_check_killed_mid_probe_leaves_no_file_in_the_store() {
    let dir = std::env::temp_dir().join(format!("mdr-probe-{}", uuid::Uuid::new_v4().simple()));
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    crate::support::write_secret(dir.join("admin.token"), "md-admin-token-for-probe");
    std::fs::write(
        dir.join("config.toml"),
        r#"
[motherduck]
api_url = "http://127.0.0.1:1"
admin_token = { file = "admin.token" }

[stores.local]
type = "file"
directory = "store"

[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "30d"
destinations = [{ store = "local", path = "app.json" }]
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(["validate", "--online"])
        .current_dir(&dir)
        .env("MDR_CRASH_AT", "check-probe-written")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "the check reached its crash point: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in the store: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
