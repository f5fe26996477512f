//! Shared helpers for the integration tests.

pub mod child_logs;
pub mod config_toml;
pub mod daemon;
pub mod driver;
pub mod fault_proxy;
pub mod log_lines;
pub mod observability;
pub mod services;
pub mod tcp_fault;
pub mod world;

/// Asserts that a finished command succeeded; otherwise fails with `what`
/// followed by the command's stderr.
#[track_caller]
pub fn assert_success(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The body of `resp`, which must have succeeded; otherwise fails with
/// `what`, the status and the body.
pub async fn success_text(resp: reqwest::Response, what: &str) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{what}: HTTP {status}: {text}");
    text
}

/// Writes a secret file the way an operator must: owner-only (mode 0600).
/// The daemon refuses a secret file that others can read.
pub fn write_secret(path: impl AsRef<std::path::Path>, content: impl AsRef<[u8]>) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = path.as_ref();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(content.as_ref())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    // `mode` applies only on creation; an existing file is narrowed too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
