//! The daemon's HTTP endpoints on the real process: `/metrics` passes
//! `promtool check metrics` and carries every documented metric with HELP
//! text, `/healthz` answers, and `/readyz` explains itself in JSON.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use motherduck_rotator::secret::ExposeSecret;

use crate::support::config_toml;
use crate::support::daemon;
use crate::support::services::tool_path;
use crate::support::world::{self, Scratch};

const REQUIRED: &[&str] = &[
    "motherduck_rotator_rotations_total",
    "motherduck_rotator_rotation_duration_seconds",
    "motherduck_rotator_last_success_timestamp_seconds",
    "motherduck_rotator_next_rotation_timestamp_seconds",
    "motherduck_rotator_token_expiry_timestamp_seconds",
    "motherduck_rotator_consecutive_failures",
    "motherduck_rotator_rotation_in_progress",
    "motherduck_rotator_ready",
    "motherduck_rotator_rollbacks_total",
    "motherduck_rotator_orphans_revoked_total",
    "motherduck_rotator_api_requests_total",
    "motherduck_rotator_api_request_duration_seconds",
    "motherduck_rotator_store_operations_total",
    "motherduck_rotator_verification_duration_seconds",
    "motherduck_rotator_config_reloads_total",
    "motherduck_rotator_build_info",
    "motherduck_rotator_dependency_up",
    "motherduck_rotator_dependency_request_duration_seconds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
];

#[tokio::test]
async fn metrics_health_and_readiness() {
    let scratch = Scratch::new("http");
    let dir = scratch.path();
    let sim = world::simulator(dir, &["svc_http"]).await;
    let port = crate::support::services::free_port();
    let src = config_toml::motherduck(&sim.base_url())
        + &format!("\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n")
        + &config_toml::file_store("local", "store")
        + &config_toml::policy(
            "web",
            "svc_http",
            r#"{ store = "local", path = "web.json" }"#,
            &format!(
                "token_ttl = \"1h\"\n{}",
                config_toml::verify_motherduck("10s")
            ),
        );
    std::fs::write(dir.join("config.toml"), src).unwrap();
    let mut child = daemon::command_default_log(&dir.join("config.toml"), dir)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Wait (10 ms steps, bounded) for the first rotation to be reflected.
    let mut body = String::new();
    for _ in 0..2000 {
        if let Ok(r) = http.get(format!("{base}/metrics")).send().await {
            body = r.text().await.unwrap_or_default();
            // The success counter moves at verification, the token gauges
            // when the pass ends: wait for both.
            if body.contains(r#"motherduck_rotator_rotations_total{outcome="success"} 1"#)
                && body.contains("motherduck_rotator_token_expiry_timestamp_seconds{")
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        body.contains(r#"motherduck_rotator_rotations_total{outcome="success"} 1"#),
        "{body}"
    );
    // Live traffic and probes feed each dependency's health.
    for dep in ["motherduck", "store:local"] {
        let line = format!(r#"motherduck_rotator_dependency_up{{dependency="{dep}"}} 1"#);
        assert!(body.contains(&line), "{line} missing:\n{body}");
    }
    assert!(
        body.contains(
            r#"motherduck_rotator_dependency_request_duration_seconds_count{dependency="motherduck",operation="create_token"} "#
        ),
        "{body}"
    );
    for name in REQUIRED {
        assert!(body.contains(&format!("# TYPE {name} ")), "missing {name}");
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }
    assert!(
        body.contains(
            r#"motherduck_rotator_api_requests_total{endpoint="create_token",status_class="2xx"} 1"#
        ),
        "{body}"
    );
    assert!(!body.contains(sim.admin_token.expose_secret()));

    // promtool's linter accepts the exposition.
    let mut promtool = std::process::Command::new(tool_path("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let lint = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics: {lint}");
    assert!(lint.trim().is_empty(), "promtool lint findings: {lint}");

    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: serde_json::Value = r.json().await.unwrap();
    assert_eq!(ready["ready"], true);
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"config") && names.contains(&"motherduck"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("store file:")),
        "{names:?}"
    );

    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
