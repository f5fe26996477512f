//! The shipped Prometheus alert rules: valid, and behaving as their unit
//! tests (deploy/prometheus/alerts.test.yml) say, checked by the real
//! `promtool`.

use std::path::Path;
use std::process::Command;

use crate::support::services::tool_path;

fn promtool(args: &[&str]) -> (bool, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let out = Command::new(tool_path("promtool"))
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_are_valid() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
}

#[test]
fn alert_rule_unit_tests_pass() {
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(ok, "{out}");
    // Every shipped alert is exercised by at least one unit test.
    let tests = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.test.yml"),
    )
    .unwrap();
    for name in [
        "RotationFailed",
        "RotationOverdue",
        "TokenExpiringSoon",
        "RotatorDown",
        "RotatorNotReady",
        "RollbackHappened",
        "MotherDuckRotatorOldTokenNotRevoked",
        "MotherDuckRotatorDependencyDown",
    ] {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "no unit test for {name}"
        );
    }
}
