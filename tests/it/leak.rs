//! Secrets never leak: run the real binary through full rotations, a
//! rollback, status, plan and sweep with debug logging, capture everything
//! it prints, and search it for every token secret the simulator issued.

use std::process::{Command, Output};

use motherduck_rotator::secret::ExposeSecret;

use crate::support::config_toml;
use crate::support::world::{self, Scratch};

/// Every substring that looks like a JWT (`eyJ…` with two dots).
fn jwt_candidates(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("eyJ") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || matches!(bytes[end], b'-' | b'_' | b'.'))
        {
            end += 1;
        }
        out.push(text[start..end].to_owned());
        i = start + 3;
    }
    out
}

// Multi-threaded: the blocking child-process calls below must not stall
// the in-process simulator the children talk to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_secret_in_any_output() {
    let scratch = Scratch::new("leak");
    let dir = scratch.path();
    let running = world::simulator(dir, &["svc_leak_a", "svc_leak_b", "svc_leak_c"]).await;
    let config = dir.join("config.toml");
    let admin_token = format!(r#"{{ file = "{}" }}"#, dir.join("admin.token").display());
    let src = config_toml::motherduck_with(&running.base_url(), &admin_token)
        + "\n[daemon]\norphan_min_age = \"0s\"\n"
        + &config_toml::file_store("local", &dir.join("store").display().to_string())
        + &config_toml::policy(
            "alpha",
            "svc_leak_a",
            r#"{ store = "local", path = "alpha.json", bare_token_file = "alpha.token" }"#,
            &config_toml::verify_motherduck("5s"),
        )
        + &config_toml::policy(
            "beta",
            "svc_leak_b",
            r#"{ store = "local", path = "beta.json" }"#,
            r#"# The hook is handed the token and prints it: the daemon must not pass
# that output on unscrubbed.
verify = [{ type = "command", command = ["sh", "-c", "echo token=$MOTHERDUCK_TOKEN; echo err=$MOTHERDUCK_TOKEN >&2"], pass_token = true, timeout = "5s", interval = "10ms", deadline = "10s" }]
"#,
        )
        + &config_toml::policy(
            "gamma",
            "svc_leak_c",
            r#"{ store = "local", path = "gamma.json" }"#,
            r#"# Always fails: exercises the rollback path and its messages.
verify = [{ type = "command", command = ["sh", "-c", "echo $MOTHERDUCK_TOKEN; exit 3"], pass_token = true, timeout = "50ms", interval = "10ms", deadline = "100ms" }]
retry = { max_attempts = 1, initial_backoff = "1s", max_backoff = "1s" }
"#,
        );
    std::fs::write(&config, src).unwrap();

    let bin = env!("CARGO_BIN_EXE_motherduck-rotator");
    let run = |args: &[&str]| -> Output {
        Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("MDR_LOG", "debug")
            .output()
            .unwrap()
    };
    let mut transcript = String::new();
    let mut record = |o: Output| {
        transcript.push_str(&String::from_utf8_lossy(&o.stdout));
        transcript.push_str(&String::from_utf8_lossy(&o.stderr));
        o
    };
    // Two rounds: the second replaces (and revokes) the first tokens.
    let first = record(run(&["rotate", "--all"]));
    assert_eq!(
        first.status.code(),
        Some(1),
        "gamma always rolls back: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    record(run(&["rotate", "alpha", "beta"]));
    record(run(&["status"]));
    record(run(&["status", "--json"]));
    record(run(&["plan"]));
    record(run(&["sweep", "--dry-run"]));
    record(run(&["validate"]));
    record(run(&["rotate", "--all", "--dry-run"]));

    // The runs did happen: tokens were issued and the output talks about them.
    let issued = running.sim.issued_tokens();
    assert!(issued.len() >= 6, "{} tokens issued", issued.len());
    assert!(transcript.contains("rotation complete"), "{transcript}");
    assert!(transcript.contains("rolled back"), "{transcript}");

    let admin = running.admin_token.expose_secret();
    assert!(!transcript.contains(admin), "the admin token leaked");
    let leaked: Vec<String> = jwt_candidates(&transcript)
        .into_iter()
        .filter(|c| running.sim.is_issued_secret(c.trim_end_matches('.')))
        .collect();
    assert!(
        leaked.is_empty(),
        "{} token secret(s) in the output",
        leaked.len()
    );
    // Stricter: nothing JWT-shaped at all.
    assert!(
        jwt_candidates(&transcript).is_empty(),
        "JWT-shaped text in the output"
    );
    // The tokens really are in the store: the scan looked for real values.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("store/alpha.json")).unwrap()).unwrap();
    assert!(
        running
            .sim
            .is_issued_secret(stored["token"].as_str().unwrap())
    );
}
