//! Readiness checks (`/readyz`, `validate --online`) against servers that
//! accept connections and never answer: each check is cut off after
//! `CHECK_DEADLINE` and named, and the checks run at once, so a hung store
//! turns readiness red in one deadline, not after every request timeout
//! and retry of every destination in turn. A policy's lock kept on a store
//! of its own is checked too. Runs on tokio's paused clock.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use motherduck_rotator::clock::Clock;
use motherduck_rotator::config::{self, Config, Env};
use motherduck_rotator::daemon;
use motherduck_rotator::metrics::Metrics;
use motherduck_rotator::rotation::driver::Driver;
use motherduck_rotator::verify::AckRegistry;

use crate::support::config_toml;
use crate::support::world::Scratch;

struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// A loopback port that accepts connections and never answers.
fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            match s {
                Ok(s) => held.push(s),
                Err(_) => return,
            }
        }
    });
    format!("http://{addr}")
}

/// A scratch directory with an owner-only `store/` and the secret files
/// `admin.token` and `vault.token` holding `admin` and `vault`.
fn scratch(admin: &str, vault: &str) -> Scratch {
    let scratch = Scratch::new("ready");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(scratch.path().join("store"))
            .unwrap();
    }
    crate::support::write_secret(scratch.path().join("admin.token"), admin);
    crate::support::write_secret(scratch.path().join("vault.token"), vault);
    scratch
}

/// `src` parsed as `<dir>/config.toml`, and the daemon's driver for it.
fn driver(dir: &Path, src: &str) -> (Config, Driver) {
    let config = config::parse(&dir.join("config.toml"), src, &NoEnv)
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    let driver = daemon::driver_for(
        &config,
        Clock::System,
        Arc::new(Metrics::new()),
        AckRegistry::default(),
    )
    .unwrap();
    (config, driver)
}

/// A policy `<p>` for `svc_<p>` writing to `destination`.
fn policy(p: &str, destination: &str, lines: &str) -> String {
    config_toml::policy(p, &format!("svc_{p}"), destination, lines)
}

#[tokio::test(start_paused = true)]
async fn hung_servers_fail_readiness_within_one_deadline_and_the_lock_store_is_checked() {
    let scratch = scratch("md-admin-token-for-readiness", "vault-token-for-readiness");
    let src = config_toml::motherduck(&black_hole())
        + &config_toml::file_store("local", "store")
        + &config_toml::vault_store_named("vault", &black_hole(), "")
        + &policy("a", r#"{ store = "vault", path = "md/a" }"#, "")
        + &policy("b", r#"{ store = "vault", path = "md/b" }"#, "")
        + &policy(
            "c",
            r#"{ store = "local", path = "c.json" }"#,
            "lock = { store = \"vault\", path = \"locks/c\" }\n",
        )
        + &config_toml::vault_store_named("vault2", &black_hole(), "")
        + "\n# The same mount and path as its destination, on another server."
        + &policy(
            "d",
            r#"{ store = "vault", path = "md/d" }"#,
            "lock = { store = \"vault2\", path = \"md/d\" }\n",
        );
    let (config, driver) = driver(scratch.path(), &src);

    let started = tokio::time::Instant::now();
    let r = daemon::readiness(&driver, &config).await;
    let took = started.elapsed();

    assert!(!r.ready);
    let failing: Vec<(&str, &str)> = r
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| (c.name.as_str(), c.reason.as_deref().unwrap_or("")))
        .collect();
    let names: Vec<&str> = failing.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "motherduck",
            "store vault:secret/md/a (a)",
            "store vault:secret/md/b (b)",
            "lock vault:secret/locks/c (c)",
            "store vault:secret/md/d (d)",
            "lock vault:secret/md/d (d)",
        ],
        "{failing:?}"
    );
    for (name, reason) in &failing {
        assert!(reason.contains("no answer within 10s"), "{name}: {reason}");
    }
    assert!(
        r.checks
            .iter()
            .any(|c| c.ok && c.name.starts_with("store file:")),
        "the file destination is checked and fine: {:?}",
        r.checks
    );
    assert!(
        took >= daemon::CHECK_DEADLINE && took < daemon::CHECK_DEADLINE + Duration::from_secs(1),
        "the checks run at once and are cut off at the deadline: took {took:?}"
    );
}

/// A lock kept on an OpenBao KV v2 mount of its own is checked for what
/// taking the lock needs, and a lock on a mount that is not there fails
/// readiness naming the mount (before, `validate --online` passed and the
/// first rotation failed).
#[tokio::test]
async fn a_lock_on_its_own_vault_mount_is_checked() {
    let bao = crate::support::services::OpenBao::start().await;
    let sim = motherduck_rotator::simulator::Simulator::spawn(Default::default())
        .await
        .unwrap();
    let scratch = {
        use motherduck_rotator::secret::ExposeSecret;
        scratch(sim.admin_token.expose_secret(), &bao.root_token)
    };
    let config_for = |mount: &str| {
        let src = config_toml::motherduck(&sim.base_url())
            + &config_toml::file_store("local", "store")
            + &config_toml::vault_store_named(
                "vault",
                &bao.addr,
                &format!("mount = \"{mount}\"\n"),
            )
            + &policy(
                "c",
                r#"{ store = "local", path = "c.json" }"#,
                "lock = { store = \"vault\", path = \"locks/c\" }\n",
            );
        driver(scratch.path(), &src)
    };
    for (mount, ok) in [("secret", true), ("nolockmount", false)] {
        let (config, driver) = config_for(mount);
        let r = daemon::readiness(&driver, &config).await;
        let lock = r
            .checks
            .iter()
            .find(|c| c.name == format!("lock vault:{mount}/locks/c (c)"))
            .unwrap_or_else(|| panic!("no lock check: {:?}", r.checks));
        assert_eq!(lock.ok, ok, "{mount}: {:?}", lock.reason);
        assert_eq!(r.ready, ok, "{:?}", r.checks);
        assert_eq!(
            driver.metrics.ready.with_label_values::<&str>(&[]).get(),
            i64::from(ok),
            "the ready gauge follows readiness"
        );
        if !ok {
            let reason = lock.reason.as_deref().unwrap_or("");
            assert!(reason.contains("nolockmount"), "{reason}");
        }
    }
}

/// `status` looks at every policy at once and gives up on a store that
/// does not answer after the same deadline, instead of waiting out each
/// destination's request timeout in turn.
#[tokio::test(start_paused = true)]
async fn status_gives_up_on_a_hung_store_after_one_deadline() {
    let scratch = scratch("md-admin-token-for-status", "vault-token-for-status");
    let mut src = config_toml::motherduck(&black_hole())
        + &config_toml::vault_store_named("vault", &black_hole(), "");
    for p in ["a", "b", "c"] {
        src.push_str(&policy(
            p,
            &format!(r#"{{ store = "vault", path = "md/{p}" }}"#),
            "",
        ));
    }
    let path = scratch.path().join("config.toml");
    std::fs::write(&path, src).unwrap();
    let started = tokio::time::Instant::now();
    let code = motherduck_rotator::cli::ops::status(
        &path,
        &motherduck_rotator::cli::ops::StatusArgs { json: true },
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(code, std::process::ExitCode::from(1));
    assert!(
        took >= daemon::CHECK_DEADLINE && took < daemon::CHECK_DEADLINE + Duration::from_secs(1),
        "took {took:?}"
    );
}

/// After the first full pass the daemon's periodic pass checks one
/// destination per place (a directory, a Vault server and mount) instead of
/// every destination: at 10,000 policies the full pass read 30,000 records
/// every 30 s. A destination that failed keeps being checked until it
/// passes, so readiness does not turn green by skipping it.
#[tokio::test(start_paused = true)]
async fn the_periodic_pass_checks_one_destination_per_place_and_every_failing_one() {
    let scratch = scratch("md-admin-token-for-probe", "vault-token-for-probe");
    let mut src = config_toml::motherduck(&black_hole())
        + &config_toml::file_store("local", "store")
        + &config_toml::vault_store_named("vault", &black_hole(), "");
    for p in ["a", "b", "c", "d"] {
        src += &policy(
            p,
            &format!(r#"{{ store = "local", path = "{p}.json" }}"#),
            "",
        );
    }
    src += &policy("v1", r#"{ store = "vault", path = "md/v1" }"#, "");
    src += &policy("v2", r#"{ store = "vault", path = "md/v2" }"#, "");
    let (config, driver) = driver(scratch.path(), &src);
    // c's record is not a record.
    std::fs::write(scratch.path().join("store/c.json"), "not json").unwrap();

    let names = |r: &motherduck_rotator::http::Readiness| -> Vec<(String, bool)> {
        r.checks.iter().map(|c| (c.name.clone(), c.ok)).collect()
    };
    let full = daemon::readiness(&driver, &config).await;
    assert_eq!(
        names(&full)
            .iter()
            .filter(|(n, _)| n.starts_with("store "))
            .count(),
        6,
        "the first pass checks every destination: {:?}",
        names(&full)
    );
    let file = |p: &str| {
        format!(
            "store file:{} ({p})",
            scratch.path().join(format!("store/{p}.json")).display()
        )
    };
    let c = &file("c");
    // The checks feed the dependency health: the hung servers are down
    // after one deadline, the file store is up.
    let m = &driver.metrics;
    let up = |dep: &str| m.dependency_up.with_label_values(&[dep]).get();
    assert_eq!(
        (up("motherduck"), up("store:vault"), up("store:local")),
        (0, 0, 1)
    );
    assert_eq!(
        m.dependency_failures_total
            .with_label_values(&["store:vault", "check", "timeout"])
            .get(),
        2,
        "one failed check per Vault destination"
    );
    assert_eq!(
        m.dependency_failures_total
            .with_label_values(&["motherduck", "check", "timeout"])
            .get(),
        1
    );
    assert!(
        names(&full).contains(&(c.to_owned(), false)),
        "{:?}",
        names(&full)
    );

    let light = daemon::readiness_after(&driver, &config, &full).await;
    assert_eq!(
        names(&light),
        [
            ("config".to_owned(), true),
            ("motherduck".to_owned(), false),
            (file("a"), true),
            (c.to_owned(), false),
            // The hung server failed both: both stay checked.
            ("store vault:secret/md/v1 (v1)".to_owned(), false),
            ("store vault:secret/md/v2 (v2)".to_owned(), false),
        ],
    );
    assert!(!light.ready);

    // Fixed: checked once more, passes, and is left to the policy's own
    // passes from then on.
    std::fs::remove_file(scratch.path().join("store/c.json")).unwrap();
    let fixed = daemon::readiness_after(&driver, &config, &light).await;
    assert!(
        names(&fixed).contains(&(c.to_owned(), true)),
        "{:?}",
        names(&fixed)
    );
    let next = daemon::readiness_after(&driver, &config, &fixed).await;
    assert!(
        !names(&next).iter().any(|(n, _)| n == c),
        "{:?}",
        names(&next)
    );
}
