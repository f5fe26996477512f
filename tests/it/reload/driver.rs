//! The driver runs reload actions between promote and verify, and after a
//! rollback; in process, against the simulator on a frozen clock and a
//! file store. The actions and hooks are shell scripts that log what they
//! saw, so each test reads the order of events from one file.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use motherduck_rotator::config::{Config, Policy};
use motherduck_rotator::metrics::Metrics;
use motherduck_rotator::rotation::driver::{Driver, Tick};

use crate::support::config_toml;
use crate::support::driver::Frozen;
use crate::support::world;

const SA: &str = "svc_etl";
const HOUR: Duration = Duration::from_secs(3600);

struct Fx {
    root: PathBuf,
    frozen: Frozen,
}

impl Fx {
    async fn new() -> Fx {
        Fx {
            root: world::scratch_dir("reload"),
            frozen: Frozen::start(15, SA).await,
        }
    }

    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("events.log")
    }

    /// The lines the actions and hooks logged, in order; a failing hook's
    /// repeated attempts count once.
    fn events(&self) -> Vec<String> {
        let mut lines: Vec<String> = std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.dedup_by(|a, b| a == b && a.starts_with("verify "));
        lines
    }

    /// A reload command action: logs `reload <cause> <token id>
    /// <whether the record holds that token> <whether it got the token>`,
    /// then runs `then` (shell).
    fn reload_command(&self, then: &str, more: &str) -> String {
        let script = format!(
            r#"r=no; grep -q "\"token_id\": \"$MDR_TOKEN_ID\"" {rec} && r=yes; t=no; [ -n "$MOTHERDUCK_TOKEN" ] && [ "$MOTHERDUCK_TOKEN" = "$(cat {bare})" ] && t=yes; echo "reload $MDR_RELOAD_CAUSE $MDR_TOKEN_ID $r $t" >> {log}; {then}"#,
            rec = self.store().join("etl.json").display(),
            bare = self.store().join("etl.token").display(),
            log = self.log_path().display(),
        );
        format!(
            r#"{{ type = "command", command = ["/bin/sh", "-c", '{script}'], debounce = "0s", min_interval = "0s"{more} }}"#
        )
    }

    /// A verification command hook that logs `verify <token id>` and exits
    /// with `code`.
    fn verify_command(&self, code: i32) -> String {
        let script = format!(
            r#"echo "verify $MDR_TOKEN_ID" >> {log}; exit {code}"#,
            log = self.log_path().display()
        );
        format!(
            r#"[{{ type = "command", command = ["/bin/sh", "-c", '{script}'], interval = "10ms", deadline = "{deadline}", timeout = "{deadline}" }}]"#,
            deadline = if code == 0 { "5s" } else { "100ms" }
        )
    }

    fn config(&self, verify: &str, reload: &[String]) -> Config {
        let src = format!(
            r#"{head}{local}
[[policy]]
name = "etl"
service_account = "{SA}"
schedule = {{ interval = "1h" }}
overlap = "0s"
verify = {verify}
reload = [{reload}]
destinations = [{{ store = "local", path = "etl.json", bare_token_file = "etl.token" }}]
retry = {{ max_attempts = 1, initial_backoff = "10m", max_backoff = "1h" }}
"#,
            head = self.frozen.head_toml("0s", "reload-a"),
            local = config_toml::file_store("local", &self.store().display().to_string()),
            reload = reload.join(", "),
        );
        self.frozen
            .parse(&self.root.join("config.toml"), &src, Vec::new())
    }

    fn driver(&self, config: &Config) -> (Driver, Policy) {
        (
            self.frozen
                .driver(config, std::sync::Arc::new(Metrics::new())),
            config.policies[0].clone(),
        )
    }

    fn current(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.store().join("etl.json")).unwrap()).unwrap()
    }

    fn token_id(&self) -> String {
        self.current()["token_id"].as_str().unwrap().to_owned()
    }

    fn issued(&self) -> Vec<String> {
        world::issued_ids(&self.frozen.running.sim, SA)
    }

    fn live(&self, id: &str) -> bool {
        world::is_live(&self.frozen.running.sim, id)
    }
}

async fn pass(driver: &Driver, policy: &Policy) -> Tick {
    driver
        .reconcile(policy, false, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("reconcile failed: {e}"))
}

#[tokio::test]
async fn consumers_are_told_after_promotion_and_before_verification() {
    let fx = Fx::new().await;
    let config = fx.config(
        &fx.verify_command(0),
        &[fx.reload_command("", ", pass_token = true")],
    );
    let (driver, policy) = fx.driver(&config);
    pass(&driver, &policy).await;
    let first = fx.token_id();
    fx.frozen.advance(HOUR);
    pass(&driver, &policy).await;
    let second = fx.token_id();
    assert_ne!(first, second);
    // The record held the new token when the action ran (promotion was
    // done), the action got the token it opted into, and verification
    // came after it.
    assert_eq!(
        fx.events(),
        [
            format!("reload promote {first} yes yes"),
            format!("verify {first}"),
            format!("reload promote {second} yes yes"),
            format!("verify {second}"),
        ]
    );
    let j = &fx.current()["rotation"];
    assert_eq!(j["state"], "done");
    assert!(j["reloaded_at"].is_string(), "{j}");
    assert!(
        !fx.live(&first),
        "the old token is revoked after the reload and verification"
    );
    let m = &driver.metrics;
    assert_eq!(
        m.reload_actions_total
            .with_label_values(&["command", "success"])
            .get(),
        2
    );
}

#[tokio::test]
async fn a_command_gets_no_token_without_pass_token() {
    let fx = Fx::new().await;
    let config = fx.config("[]", &[fx.reload_command("", "")]);
    let (driver, policy) = fx.driver(&config);
    pass(&driver, &policy).await;
    let id = fx.token_id();
    assert_eq!(fx.events(), [format!("reload promote {id} yes no")]);
}

#[tokio::test]
async fn a_rollback_tells_consumers_that_the_old_token_is_back() {
    let fx = Fx::new().await;
    let reload = [fx.reload_command("", ", pass_token = true")];
    let (driver, policy) = fx.driver(&fx.config(&fx.verify_command(0), &reload));
    pass(&driver, &policy).await;
    let old = fx.token_id();

    let (driver, policy) = fx.driver(&fx.config(&fx.verify_command(1), &reload));
    fx.frozen.advance(HOUR);
    pass(&driver, &policy).await;
    let new = fx.issued()[1].clone();
    assert_eq!(
        fx.events()[2..],
        [
            format!("reload promote {new} yes yes"),
            format!("verify {new}"),
            // The record holds the old token again, and the action is
            // handed the old token.
            format!("reload rollback {old} yes yes"),
        ]
    );
    assert_eq!(fx.token_id(), old);
    let j = &fx.current()["rotation"];
    assert_eq!(j["state"], "rolled_back");
    assert!(
        j["reloaded_at"].is_string(),
        "the rollback's reload is recorded: {j}"
    );
    assert!(!fx.live(&new), "the new token is revoked");
    assert!(fx.live(&old));
}

#[tokio::test]
async fn a_failed_reload_action_fails_the_rotation_before_verification() {
    let fx = Fx::new().await;
    let failing = fx.reload_command(
        r#"[ "$MDR_RELOAD_CAUSE" = promote ] && [ -e {flag} ] && exit 3; exit 0"#,
        "",
    );
    let flag = fx.root.join("fail");
    let failing = failing.replace("{flag}", &flag.display().to_string());
    let (driver, policy) = fx.driver(&fx.config(&fx.verify_command(0), &[failing]));
    pass(&driver, &policy).await;
    let old = fx.token_id();

    std::fs::write(&flag, "").unwrap();
    fx.frozen.advance(HOUR);
    pass(&driver, &policy).await;
    let new = fx.issued()[1].clone();
    assert_eq!(
        fx.events()[2..],
        [
            format!("reload promote {new} yes no"),
            // No verification: the rotation failed at the reload.
            format!("reload rollback {old} yes no"),
        ]
    );
    assert_eq!(fx.token_id(), old);
    let j = &fx.current()["rotation"];
    assert_eq!(j["state"], "rolled_back");
    let e = j["last_error"].as_str().unwrap();
    assert!(
        e.starts_with("reload: command action failed: command `/bin/sh -c"),
        "{e}"
    );
    assert!(e.ends_with("exited with status 3"), "{e}");
    assert!(!fx.live(&new));
    assert_eq!(
        driver
            .metrics
            .rotation_step_failures_total
            .with_label_values(&["reload", "exit"])
            .get(),
        1
    );
}

#[tokio::test]
async fn on_failure_continue_carries_on_to_verification_and_notes_the_failure() {
    let fx = Fx::new().await;
    let (driver, policy) = fx.driver(&fx.config(
        &fx.verify_command(0),
        &[fx.reload_command("exit 3", r#", on_failure = "continue""#)],
    ));
    pass(&driver, &policy).await;
    let id = fx.token_id();
    assert_eq!(
        fx.events(),
        [
            format!("reload promote {id} yes no"),
            format!("verify {id}")
        ]
    );
    let j = &fx.current()["rotation"];
    assert_eq!(j["state"], "done");
    let note = j["reload_note"].as_str().unwrap();
    assert!(note.contains("exited with status 3"), "{note}");
}

/// Invariant 11 across a restart: a pass stopped while the action runs
/// (the process going down between promotion and the recorded reload)
/// leaves the rotation promoted with no reload recorded, and the restarted
/// driver tells consumers before it verifies.
#[tokio::test]
async fn a_restart_between_promotion_and_the_recorded_reload_reloads_before_verifying() {
    let fx = Fx::new().await;
    let hang = fx.root.join("hang");
    let action = fx.reload_command(
        &format!("while [ -e {} ]; do sleep 0.01; done", hang.display()),
        "",
    );
    let (driver, policy) =
        fx.driver(&fx.config(&fx.verify_command(0), std::slice::from_ref(&action)));
    pass(&driver, &policy).await;
    let old = fx.token_id();

    std::fs::write(&hang, "").unwrap();
    fx.frozen.advance(HOUR);
    let cancel = CancellationToken::new();
    let run = {
        let (driver, policy, cancel) = (driver.clone(), policy.clone(), cancel.clone());
        tokio::spawn(async move { driver.reconcile(&policy, false, &cancel).await })
    };
    // Wait for the action to start, then stop the pass.
    for _ in 0..500 {
        if fx.events().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let tick = run.await.unwrap().unwrap();
    assert_eq!(tick, Tick::Stopped);
    let new = fx.issued()[1].clone();
    let j = &fx.current()["rotation"];
    assert_eq!(
        (j["state"].as_str(), fx.token_id()),
        (Some("promoted"), new.clone())
    );
    assert!(j.get("reloaded_at").is_none(), "{j}");
    std::fs::remove_file(&hang).unwrap();

    // The restart.
    let (driver, policy) = fx.driver(&fx.config(&fx.verify_command(0), &[action]));
    pass(&driver, &policy).await;
    assert_eq!(
        fx.events()[2..],
        [
            format!("reload promote {new} yes no"),
            format!("reload promote {new} yes no"),
            format!("verify {new}"),
        ]
    );
    assert_eq!(fx.current()["rotation"]["state"], "done");
    assert!(!fx.live(&old));
}

/// A pass stopped while the rollback's action runs leaves the rollback
/// recorded with no reload; the restarted driver tells consumers that the
/// old token is back before anything else, once.
#[tokio::test]
async fn a_restart_before_the_rollbacks_reload_was_recorded_tells_consumers_then() {
    let fx = Fx::new().await;
    let hang = fx.root.join("hang");
    let action = fx.reload_command(
        &format!(
            r#"[ "$MDR_RELOAD_CAUSE" = rollback ] && while [ -e {} ]; do sleep 0.01; done; exit 0"#,
            hang.display()
        ),
        "",
    );
    let reload = std::slice::from_ref(&action);
    let (driver, policy) = fx.driver(&fx.config(&fx.verify_command(0), reload));
    pass(&driver, &policy).await;
    let old = fx.token_id();

    std::fs::write(&hang, "").unwrap();
    let (driver, policy) = fx.driver(&fx.config(&fx.verify_command(1), reload));
    fx.frozen.advance(HOUR);
    let cancel = CancellationToken::new();
    let run = {
        let (driver, policy, cancel) = (driver.clone(), policy.clone(), cancel.clone());
        tokio::spawn(async move { driver.reconcile(&policy, false, &cancel).await })
    };
    for _ in 0..500 {
        if fx
            .events()
            .last()
            .is_some_and(|l| l.starts_with("reload rollback"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let _ = run.await.unwrap();
    let j = &fx.current()["rotation"];
    assert_eq!(
        (j["state"].as_str(), fx.token_id()),
        (Some("rolled_back"), old.clone())
    );
    assert!(j.get("reloaded_at").is_none(), "{j}");
    std::fs::remove_file(&hang).unwrap();

    // The restart tells consumers first, and records it.
    let (driver, policy) = fx.driver(&fx.config(&fx.verify_command(0), reload));
    let tick = pass(&driver, &policy).await;
    assert!(matches!(tick, Tick::Wait { .. }), "{tick:?}");
    let new = fx.issued()[1].clone();
    assert_eq!(
        fx.events()[2..],
        [
            format!("reload promote {new} yes no"),
            format!("verify {new}"),
            format!("reload rollback {old} yes no"),
            format!("reload rollback {old} yes no"),
        ]
    );
    assert!(fx.current()["rotation"]["reloaded_at"].is_string());
    // Once: a further pass tells nobody again.
    pass(&driver, &policy).await;
    assert_eq!(fx.events().len(), 6);
}
