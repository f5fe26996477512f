//! `motherduck-rotator simulator` as a real process: it writes an admin token
//! file, serves the documented JSON, and stops cleanly on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::services::free_port;

#[tokio::test]
async fn standalone_simulator_creates_and_lists_tokens() {
    let dir = std::env::temp_dir().join(format!("mdr-cli-sim-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin.token");
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"))
        .args([
            "simulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-token-file",
        ])
        .arg(&token_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Wait for the socket: poll in short steps, bounded.
    let mut ready = false;
    for _ in 0..500 {
        if http.get(format!("{base}/v1/nothing")).send().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ready, "simulator did not start listening on {base}");

    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert!(token.starts_with("eyJ"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "admin token file is owner-only");
    }

    let r = http
        .post(format!("{base}/v1/users"))
        .bearer_auth(token)
        .json(&json!({"username": "svc_cli"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"username": "svc_cli"})
    );

    let r = http
        .post(format!("{base}/v1/users/svc_cli/tokens"))
        .bearer_auth(token)
        .json(&json!({"name": "cli-token", "ttl": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let created: Value = r.json().await.unwrap();
    for field in [
        "token",
        "id",
        "name",
        "created_ts",
        "expire_at",
        "read_only",
        "token_type",
    ] {
        assert!(
            created.get(field).is_some(),
            "create response lacks `{field}`: {created:#}"
        );
    }

    let r = http
        .get(format!("{base}/v1/users/svc_cli/tokens"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let listed: Value = r.json().await.unwrap();
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["id"], created["id"]);
    assert!(
        tokens[0].get("token").is_none(),
        "lists never carry secrets"
    );

    // SIGTERM stops it cleanly.
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("simulator exits after SIGTERM")
        .unwrap();
    assert!(out.success(), "{out:?}");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        e.read_to_string(&mut stderr).await.unwrap();
    }
    assert!(stderr.contains("simulator listening"), "{stderr}");
    assert!(
        !stderr.contains(token),
        "the admin token must never be logged"
    );
    assert!(!stderr.contains(created["token"].as_str().unwrap()));

    // A token file that cannot be created is a clear error.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_motherduck-rotator"))
        .args(["simulator", "--listen", "127.0.0.1:1", "--admin-token-file"])
        .arg(dir.join("missing-dir/x"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("failed to create admin token file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
