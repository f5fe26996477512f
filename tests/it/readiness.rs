//! Readiness checks (`/readyz`, `validate --online`) against servers that
//! accept connections and never answer: each check is cut off after
//! `CHECK_DEADLINE` and named, and the checks run at once, so a hung store
//! turns readiness red in one deadline, not after every request timeout
//! and retry of every destination in turn. A policy's lock kept on a store
//! of its own is checked too. Runs on tokio's paused clock.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use motherduck_rotator::clock::Clock;
use motherduck_rotator::config::{self, Env};
use motherduck_rotator::daemon;
use motherduck_rotator::metrics::Metrics;
use motherduck_rotator::verify::AckRegistry;

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

#[tokio::test(start_paused = true)]
async fn hung_servers_fail_readiness_within_one_deadline_and_the_lock_store_is_checked() {
    let dir = std::env::temp_dir().join(format!("mdr-ready-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.join("store"))
            .unwrap();
    }
    crate::support::write_secret(dir.join("admin.token"), "md-admin-token-for-readiness");
    crate::support::write_secret(dir.join("vault.token"), "vault-token-for-readiness");
    let api = black_hole();
    let vault = black_hole();
    let src = format!(
        r#"
[motherduck]
api_url = "{api}"
admin_token = {{ file = "admin.token" }}

[stores.local]
type = "file"
directory = "store"

[stores.vault]
type = "vault"
address = "{vault}"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}

[[policy]]
name = "a"
service_account = "svc_a"
schedule = {{ interval = "1d" }}
overlap = "0s"
destinations = [{{ store = "vault", path = "md/a" }}]

[[policy]]
name = "b"
service_account = "svc_b"
schedule = {{ interval = "1d" }}
overlap = "0s"
destinations = [{{ store = "vault", path = "md/b" }}]

[[policy]]
name = "c"
service_account = "svc_c"
schedule = {{ interval = "1d" }}
overlap = "0s"
destinations = [{{ store = "local", path = "c.json" }}]
lock = {{ store = "vault", path = "locks/c" }}

[stores.vault2]
type = "vault"
address = "{vault2}"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}

# The same mount and path as its destination, on another server.
[[policy]]
name = "d"
service_account = "svc_d"
schedule = {{ interval = "1d" }}
overlap = "0s"
destinations = [{{ store = "vault", path = "md/d" }}]
lock = {{ store = "vault2", path = "md/d" }}
"#,
        vault2 = black_hole(),
    );
    let config = config::parse(&dir.join("config.toml"), &src, &NoEnv)
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    let driver = daemon::driver_for(
        &config,
        Clock::System,
        Arc::new(Metrics::new()),
        AckRegistry::default(),
    )
    .unwrap();

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
    std::fs::remove_dir_all(&dir).ok();
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
    let dir = std::env::temp_dir().join(format!("mdr-ready-{}", uuid::Uuid::new_v4().simple()));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("store"))
            .unwrap();
    }
    {
        use motherduck_rotator::secret::ExposeSecret;
        crate::support::write_secret(dir.join("admin.token"), sim.admin_token.expose_secret());
    }
    crate::support::write_secret(dir.join("vault.token"), &bao.root_token);
    let config_for = |mount: &str| {
        let src = format!(
            r#"
[motherduck]
api_url = "{api}"
admin_token = {{ file = "admin.token" }}

[stores.local]
type = "file"
directory = "store"

[stores.vault]
type = "vault"
address = "{addr}"
mount = "{mount}"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}

[[policy]]
name = "c"
service_account = "svc_c"
schedule = {{ interval = "1d" }}
overlap = "0s"
destinations = [{{ store = "local", path = "c.json" }}]
lock = {{ store = "vault", path = "locks/c" }}
"#,
            api = sim.base_url(),
            addr = bao.addr,
        );
        config::parse(&dir.join("config.toml"), &src, &NoEnv)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"))
    };
    for (mount, ok) in [("secret", true), ("nolockmount", false)] {
        let config = config_for(mount);
        let driver = daemon::driver_for(
            &config,
            Clock::System,
            Arc::new(Metrics::new()),
            AckRegistry::default(),
        )
        .unwrap();
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
    std::fs::remove_dir_all(&dir).ok();
}

/// `status` looks at every policy at once and gives up on a store that
/// does not answer after the same deadline, instead of waiting out each
/// destination's request timeout in turn.
#[tokio::test(start_paused = true)]
async fn status_gives_up_on_a_hung_store_after_one_deadline() {
    let dir = std::env::temp_dir().join(format!("mdr-ready-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    crate::support::write_secret(dir.join("admin.token"), "md-admin-token-for-status");
    crate::support::write_secret(dir.join("vault.token"), "vault-token-for-status");
    let mut src = format!(
        r#"
[motherduck]
api_url = "{api}"
admin_token = {{ file = "admin.token" }}

[stores.vault]
type = "vault"
address = "{vault}"
auth = {{ method = "token", token = {{ file = "vault.token" }} }}
"#,
        api = black_hole(),
        vault = black_hole(),
    );
    for p in ["a", "b", "c"] {
        src.push_str(&format!(
            r#"
[[policy]]
name = "{p}"
service_account = "svc_{p}"
schedule = {{ interval = "1d" }}
overlap = "0s"
destinations = [{{ store = "vault", path = "md/{p}" }}]
"#
        ));
    }
    let path = dir.join("config.toml");
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
    std::fs::remove_dir_all(&dir).ok();
}
