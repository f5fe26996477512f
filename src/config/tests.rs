//! Configuration validation, data-driven: every case is a TOML text fed to
//! the pure [`parse_with`] through [`check`], with a fake environment and a
//! scratch directory holding the secret files the cases refer to.
//!
//! An error case lists every error the text must produce, in order, each as
//! `("line:column", "field", "part of the reason")`. When a case fails, the
//! whole table is still run and the report shows each failing case's actual
//! errors in the same form, ready to compare.

use std::path::PathBuf;

use chrono::{NaiveTime, Weekday};

use super::*;
use crate::schedule::Cadence;
use crate::verify::HookKind;

/// The admin token the scratch directory's `admin.token` file holds.
const FILE_TOKEN: &str = "md-admin-token-from-file";
/// The admin token `MD_TOKEN` holds.
const ENV_TOKEN: &str = "md-admin-token-from-env";
/// The admin token the `md_admin` systemd credential holds.
const CREDENTIAL_TOKEN: &str = "md-admin-token-from-credential";
/// A value shaped like a MotherDuck token (a JWT), for the cases that must
/// not echo it.
const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzdmNfYXBwIn0.c2lnbmF0dXJlLXNlY3JldA";

/// Environment variables for the fake environment: the admin token, a
/// probe's API key, and (for some tests) `CREDENTIALS_DIRECTORY`.
struct FakeEnv(BTreeMap<String, String>);

impl FakeEnv {
    fn new() -> FakeEnv {
        FakeEnv(BTreeMap::from([
            ("MD_TOKEN".to_owned(), ENV_TOKEN.to_owned()),
            ("PROBE_KEY".to_owned(), "probe-api-key".to_owned()),
            ("EMPTY_VAR".to_owned(), "  ".to_owned()),
        ]))
    }

    fn with(mut self, name: &str, value: &str) -> FakeEnv {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }
}

impl Env for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// A directory beside the configuration file holding the secrets the cases
/// reference by relative path; removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("mdr-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("credentials")).unwrap();
        std::fs::create_dir_all(dir.join("a-directory")).unwrap();
        std::fs::write(dir.join("admin.token"), format!("{FILE_TOKEN}\n")).unwrap();
        std::fs::write(dir.join("empty.token"), " \n").unwrap();
        std::fs::write(dir.join("broken.token"), "first-half\nsecond-half\n").unwrap();
        std::fs::write(dir.join("probe.key"), "probe-key-from-file\n").unwrap();
        std::fs::write(dir.join("credentials/md_admin"), CREDENTIAL_TOKEN).unwrap();
        Scratch { dir }
    }

    /// Where the configuration "is": relative paths resolve against `dir`.
    fn config_path(&self) -> PathBuf {
        self.dir.join("rotator.toml")
    }

    fn credentials_dir(&self) -> String {
        self.dir.join("credentials").display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Text as written in the tables below: a raw string that starts with a
/// line break, which is not part of the configuration.
fn text(src: &str) -> &str {
    src.strip_prefix('\n').unwrap_or(src)
}

fn parse_in(
    scratch: &Scratch,
    src: &str,
    env: &FakeEnv,
    resolve: bool,
) -> Result<Config, ConfigErrors> {
    parse_with(
        &scratch.config_path(),
        text(src),
        env,
        LoadOptions {
            resolve_secrets: resolve,
        },
    )
}

/// Parses a configuration that must be valid.
fn valid(src: &str) -> Config {
    let scratch = Scratch::new();
    parse_in(&scratch, src, &FakeEnv::new(), true)
        .unwrap_or_else(|e| panic!("expected a valid configuration, got:\n{e}"))
}

/// One expected error: `("line:column", "field", "part of the reason")`.
type Expected = (&'static str, &'static str, &'static str);

struct Case {
    name: &'static str,
    toml: &'static str,
    errors: &'static [Expected],
}

/// Runs `src` and compares its errors with `expected`; `None` when they
/// match, otherwise a report of what was found instead.
fn check(src: &str, env: &FakeEnv, resolve: bool, expected: &[Expected]) -> Option<String> {
    let scratch = Scratch::new();
    let actual = match parse_in(&scratch, src, env, resolve) {
        Ok(_) => Vec::new(),
        Err(ConfigErrors(errors)) => errors,
    };
    let matches = actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(a, (pos, field, reason))| {
                format!("{}:{}", a.line, a.column) == *pos
                    && a.field == *field
                    && a.reason.contains(reason)
                    && a.file == scratch.config_path()
            });
    if matches {
        return None;
    }
    let found: Vec<String> = actual
        .iter()
        .map(|a| {
            format!(
                "    (\"{}:{}\", \"{}\", \"{}\")",
                a.line, a.column, a.field, a.reason
            )
        })
        .collect();
    Some(format!(
        "found {} error(s):\n{}",
        actual.len(),
        found.join("\n")
    ))
}

fn run_cases(cases: &[Case], env: &FakeEnv, resolve: bool) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            check(c.toml, env, resolve, c.errors)
                .map(|report| format!("case `{}`: {report}", c.name))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------
// A valid configuration and the types it becomes
// ---------------------------------------------------------------------------

const FULL: &str = r#"
[motherduck]
api_url = "http://127.0.0.1:8787"
admin_token = { file = "admin.token" }
request_timeout = "20s"
max_retries = 6
rate_limit_per_second = 3

[daemon]
listen = "0.0.0.0:9100"
log_format = "json"
rotation_concurrency = 2
sweep_interval = "30m"
orphan_min_age = "10m"
shutdown_timeout = "45s"
lock_retry_interval = "15s"
instance_id = "rotator-a"

[stores.local]
type = "file"
directory = "secrets"

[[policy]]
name = "orders-api"
service_account = "svc_orders"
token_type = "read_scaling"
token_ttl = "30d"
token_name_prefix = "mdr"
schedule = { cron = "0 3 * * mon", timezone = "Europe/Berlin" }
jitter = "20m"
windows = [{ days = ["mon-fri"], start = "02:00", end = "05:30", timezone = "Europe/Berlin" }]
rotate_before_expiry = "7d"
overlap = "1h"
destinations = [
  { store = "local", path = "orders.json", bare_token_file = "orders.token" },
  { store = "local", path = "orders-replica.json" },
]
retry = { max_attempts = 5, initial_backoff = "1m", max_backoff = "2h" }

[[policy.verify]]
type = "http"
url = "https://orders.example.com/health"
method = "post"
headers = { X-Api-Key = { env = "PROBE_KEY" }, Accept = "application/json" }
expect_status = [200, 204]
json_field = "/motherduck/token_id"
interval = "5s"
deadline = "3m"
request_timeout = "4s"

[[policy.verify]]
type = "command"
command = ["/usr/local/bin/check-orders", "--quick"]
pass_token = true
inherit_env = ["KUBECONFIG"]
timeout = "20s"
interval = "10s"
deadline = "4m"

[[policy.verify]]
type = "ack"
deadline = "15m"

[[policy.verify]]
type = "motherduck"
interval = "2s"
deadline = "30s"

[[policy]]
name = "reports"
service_account = "svc_reports"
schedule = { interval = "12h" }
destinations = [{ store = "local", path = "reports.json" }]
verify = [{ type = "motherduck" }]
"#;

#[test]
fn full_configuration_becomes_validated_types() {
    let scratch = Scratch::new();
    let config = parse_in(&scratch, FULL, &FakeEnv::new(), true)
        .unwrap_or_else(|e| panic!("expected a valid configuration, got:\n{e}"));
    assert_eq!(config.source, scratch.config_path());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    let md = &config.motherduck;
    assert_eq!(md.api_url, "http://127.0.0.1:8787");
    assert_eq!(
        md.admin_token.expose_secret(),
        FILE_TOKEN,
        "trimmed file content"
    );
    assert_eq!(md.admin_token_env, None);
    assert_eq!(md.request_timeout, Duration::from_secs(20));
    assert_eq!(md.max_retries, 6);
    assert_eq!(md.rate_limit_per_second.get(), 3);

    let d = &config.daemon;
    assert_eq!(d.listen, "0.0.0.0:9100".parse::<SocketAddr>().unwrap());
    assert_eq!(d.log_format, LogFormat::Json);
    assert_eq!(d.rotation_concurrency.get(), 2);
    assert_eq!(d.sweep_interval, Duration::from_secs(30 * 60));
    assert_eq!(d.orphan_min_age, Duration::from_secs(10 * 60));
    assert_eq!(d.shutdown_timeout, Duration::from_secs(45));
    assert_eq!(d.lock_retry_interval, Duration::from_secs(15));
    assert_eq!(d.instance_id, "rotator-a");

    assert_eq!(config.policies.len(), 2);
    let p = &config.policies[0];
    assert_eq!(p.name, "orders-api");
    assert_eq!(p.service_account, "svc_orders");
    assert_eq!(p.token_type, TokenType::ReadScaling);
    assert_eq!(p.token_ttl, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(p.token_name_stem(), "mdr.orders-api.");
    assert_eq!(p.overlap, Duration::from_secs(3600));

    let Some(Cadence::Cron(cron)) = &p.schedule.cadence else {
        panic!("expected a cron cadence, got {:?}", p.schedule.cadence);
    };
    assert_eq!(cron.expression(), "0 3 * * mon");
    assert_eq!(cron.time_zone(), chrono_tz::Europe::Berlin);
    assert_eq!(p.schedule.jitter, Duration::from_secs(20 * 60));
    assert_eq!(
        p.schedule.rotate_before_expiry,
        Some(Duration::from_secs(7 * 86_400))
    );
    let [window] = p.schedule.windows.as_slice() else {
        panic!("expected one window, got {:?}", p.schedule.windows);
    };
    assert_eq!(
        window.days().collect::<Vec<_>>(),
        [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri
        ]
    );
    assert_eq!(window.start(), NaiveTime::from_hms_opt(2, 0, 0).unwrap());
    assert_eq!(window.end(), NaiveTime::from_hms_opt(5, 30, 0).unwrap());
    assert_eq!(window.time_zone(), chrono_tz::Europe::Berlin);

    let dir = scratch.dir.join("secrets");
    let files: Vec<(PathBuf, Option<&str>)> = p
        .destinations
        .iter()
        .map(|d| {
            let Destination::File(f) = d;
            assert_eq!(f.store, "local");
            (f.path(), f.bare_token_file.as_deref())
        })
        .collect();
    assert_eq!(
        files,
        [
            (dir.join("orders.json"), Some("orders.token")),
            (dir.join("orders-replica.json"), None),
        ],
        "relative store directories resolve against the configuration's folder"
    );

    let kinds: Vec<HookKind> = p.hooks.iter().map(HookSpec::kind).collect();
    assert_eq!(
        kinds,
        [
            HookKind::Http,
            HookKind::Command,
            HookKind::Ack,
            HookKind::MotherDuck
        ]
    );
    let HookSpec::Http(http) = &p.hooks[0] else {
        unreachable!()
    };
    assert_eq!(http.label(), "https://orders.example.com/health");
    assert_eq!(http.method().as_str(), "POST");
    assert_eq!(http.expect_status(), [200, 204]);
    assert_eq!(http.json_field(), Some("/motherduck/token_id"));
    assert_eq!(http.interval(), Duration::from_secs(5));
    assert_eq!(http.deadline(), Duration::from_secs(180));
    assert_eq!(http.request_timeout(), Duration::from_secs(4));
    let debug = format!("{http:?}");
    assert!(
        !debug.contains("probe-api-key") && debug.contains("[REDACTED]"),
        "the secret header is resolved and redacted: {debug}"
    );
    let HookSpec::Command(cmd) = &p.hooks[1] else {
        unreachable!()
    };
    assert_eq!(cmd.program(), Path::new("/usr/local/bin/check-orders"));
    assert_eq!(cmd.args(), ["--quick"]);
    assert!(cmd.pass_token());
    assert_eq!(cmd.inherit_env(), ["KUBECONFIG"]);
    assert_eq!(cmd.timeout(), Duration::from_secs(20));
    assert_eq!(cmd.interval(), Duration::from_secs(10));
    assert_eq!(cmd.deadline(), Duration::from_secs(240));
    assert_eq!(p.hooks[2].deadline(), Duration::from_secs(15 * 60));
    let HookSpec::MotherDuck(builtin) = &p.hooks[3] else {
        unreachable!()
    };
    assert_eq!(builtin.interval(), Duration::from_secs(2));
    assert_eq!(builtin.deadline(), Duration::from_secs(30));

    assert_eq!(p.retry.max_attempts, 5);
    assert_eq!(p.retry.initial_backoff, Duration::from_secs(60));
    assert_eq!(p.retry.max_backoff, Duration::from_secs(7200));

    let r = &config.policies[1];
    assert_eq!(
        r.schedule.cadence,
        Some(Cadence::Interval(Duration::from_secs(12 * 3600)))
    );
    assert_eq!(r.token_type, TokenType::ReadWrite);
}

#[test]
fn omitted_settings_take_their_defaults() {
    let config = valid(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "/var/lib/mdr" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.json" }]
verify = [
  { type = "http", url = "https://app.example.com/health" },
  { type = "command", command = ["true"] },
  { type = "ack" },
  { type = "motherduck" },
]
"#,
    );
    let md = &config.motherduck;
    assert_eq!(md.api_url, "https://api.motherduck.com");
    assert_eq!(md.admin_token.expose_secret(), ENV_TOKEN);
    assert_eq!(md.admin_token_env.as_deref(), Some("MD_TOKEN"));
    assert_eq!(md.request_timeout, Duration::from_secs(15));
    assert_eq!(md.max_retries, 4);
    assert_eq!(md.rate_limit_per_second.get(), 10);

    let d = &config.daemon;
    assert_eq!(d.listen, "127.0.0.1:9464".parse::<SocketAddr>().unwrap());
    assert_eq!(d.log_format, LogFormat::Auto);
    assert_eq!(d.rotation_concurrency.get(), 4);
    assert_eq!(d.sweep_interval, Duration::from_secs(3600));
    assert_eq!(d.orphan_min_age, Duration::from_secs(300));
    assert_eq!(d.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(d.lock_retry_interval, Duration::from_secs(30));
    assert!(
        d.instance_id.ends_with(&format!(":{}", std::process::id())),
        "host:pid, got {}",
        d.instance_id
    );

    let p = &config.policies[0];
    assert_eq!(p.token_type, TokenType::ReadWrite);
    assert_eq!(p.token_ttl, None);
    assert_eq!(p.token_name("r1"), "rotator.app.r1");
    assert_eq!(p.overlap, Duration::from_secs(300));
    assert_eq!(p.schedule.jitter, Duration::ZERO);
    assert!(p.schedule.windows.is_empty());
    assert_eq!(p.schedule.rotate_before_expiry, None);
    assert_eq!(p.retry.max_attempts, 3);
    assert_eq!(p.retry.initial_backoff, Duration::from_secs(30));
    assert_eq!(p.retry.max_backoff, Duration::from_secs(3600));
    let Destination::File(f) = &p.destinations[0];
    assert_eq!(f.path(), Path::new("/var/lib/mdr/app.json"));
    assert_eq!(f.bare_token_file, None);

    let HookSpec::Http(http) = &p.hooks[0] else {
        unreachable!()
    };
    assert_eq!(http.method().as_str(), "GET");
    assert_eq!(http.expect_status(), [200]);
    assert_eq!(http.json_field(), None);
    assert_eq!(http.interval(), Duration::from_secs(2));
    assert_eq!(http.deadline(), Duration::from_secs(120));
    assert_eq!(http.request_timeout(), Duration::from_secs(10));
    let HookSpec::Command(cmd) = &p.hooks[1] else {
        unreachable!()
    };
    assert!(!cmd.pass_token());
    assert!(cmd.inherit_env().is_empty());
    assert_eq!(cmd.timeout(), Duration::from_secs(30));
    assert_eq!(cmd.interval(), Duration::from_secs(5));
    assert_eq!(cmd.deadline(), Duration::from_secs(120));
    assert_eq!(p.hooks[2].deadline(), Duration::from_secs(600));
    let HookSpec::MotherDuck(builtin) = &p.hooks[3] else {
        unreachable!()
    };
    assert_eq!(builtin.interval(), Duration::from_secs(5));
    assert_eq!(builtin.deadline(), Duration::from_secs(60));
}

#[test]
fn expiring_tokens_rotate_a_third_of_their_lifetime_before_expiry_by_default() {
    let config = valid(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "3d"
destinations = [{ store = "local", path = "app.json" }]
verify = [{ type = "motherduck" }]
"#,
    );
    let s = &config.policies[0].schedule;
    assert_eq!(s.cadence, None, "expiry alone makes the policy due");
    assert_eq!(s.rotate_before_expiry, Some(Duration::from_secs(86_400)));
}

/// The cron forms config/example.toml tells users about.
#[test]
fn documented_cron_forms_are_accepted() {
    for cron in [
        "0 3 * * tue",
        "30 0 3 * * *",
        "0 3 * * MON-FRI",
        "0 3 L * *",
        "0 3 15W * *",
        "0 3 * * mon#1",
        "0 3 * * 5#L",
        "0 3 1 jan *",
        "*/15 * * * *",
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@yearly",
    ] {
        let src = format!(
            "motherduck = {{ admin_token = {{ env = \"MD_TOKEN\" }} }}\n\
             stores.local = {{ type = \"file\", directory = \"store\" }}\n\
             [[policy]]\n\
             name = \"app\"\n\
             service_account = \"svc_app\"\n\
             schedule = {{ cron = \"{cron}\", timezone = \"America/New_York\" }}\n\
             destinations = [{{ store = \"local\", path = \"app.json\" }}]\n\
             verify = [{{ type = \"motherduck\" }}]\n"
        );
        let scratch = Scratch::new();
        let config = parse_in(&scratch, &src, &FakeEnv::new(), true)
            .unwrap_or_else(|e| panic!("cron `{cron}`: {e}"));
        let Some(Cadence::Cron(c)) = &config.policies[0].schedule.cadence else {
            panic!("cron `{cron}`: no cron cadence");
        };
        assert_eq!(c.expression(), cron);
    }
}

#[test]
fn secrets_resolve_from_file_env_and_credential() {
    let scratch = Scratch::new();
    let env = FakeEnv::new().with("CREDENTIALS_DIRECTORY", &scratch.credentials_dir());
    let doc = |secret: &str| {
        format!(
            "motherduck = {{ admin_token = {secret} }}\n\
             stores.local = {{ type = \"file\", directory = \"store\" }}\n\
             [[policy]]\n\
             name = \"app\"\n\
             service_account = \"svc_app\"\n\
             schedule = {{ interval = \"1d\" }}\n\
             destinations = [{{ store = \"local\", path = \"app.json\" }}]\n\
             verify = [{{ type = \"http\", url = \"https://a.example.com/\", headers = {{ Authorization = {{ file = \"probe.key\" }} }} }}]\n"
        )
    };
    let absolute = format!(
        "{{ file = \"{}\" }}",
        scratch.dir.join("admin.token").display()
    );
    for (secret, token, env_name) in [
        ("{ file = \"admin.token\" }", FILE_TOKEN, None),
        (absolute.as_str(), FILE_TOKEN, None),
        ("{ env = \"MD_TOKEN\" }", ENV_TOKEN, Some("MD_TOKEN")),
        ("{ credential = \"md_admin\" }", CREDENTIAL_TOKEN, None),
    ] {
        let config = parse_in(&scratch, &doc(secret), &env, true)
            .unwrap_or_else(|e| panic!("{secret}: {e}"));
        assert_eq!(
            config.motherduck.admin_token.expose_secret(),
            token,
            "{secret}"
        );
        assert_eq!(
            config.motherduck.admin_token_env.as_deref(),
            env_name,
            "{secret}"
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains(token),
            "Debug shows the admin token: {debug}"
        );
        assert!(
            !debug.contains("probe-key-from-file"),
            "Debug shows a header secret: {debug}"
        );
    }
}

/// Without `resolve_secrets` the form of a reference is still checked.
#[rustfmt::skip]
const UNRESOLVED_FORM_ERRORS: &[Case] = &[
    Case {
        name: "inline token, not resolving",
        toml: r#"
[motherduck]
admin_token = "md-inline-secret"
"#,
        errors: &[("2:1", "motherduck.admin_token", "inline secrets are not allowed")],
    },
    Case {
        name: "two references, not resolving",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN", credential = "md_admin" } }
"#,
        errors: &[("1:30", "motherduck.admin_token", "give exactly one of `file`, `env` or `credential`, not `env` and `credential`")],
    },
    Case {
        name: "bad credential name, not resolving",
        toml: r#"
motherduck = { admin_token = { credential = "../md_admin" } }
"#,
        errors: &[("1:32", "motherduck.admin_token.credential", "invalid credential name `../md_admin`")],
    },
    Case {
        name: "bad variable name, not resolving",
        toml: r#"
motherduck = { admin_token = { env = "MD TOKEN" } }
"#,
        errors: &[("1:32", "motherduck.admin_token.env", "`MD TOKEN` is not an environment variable name")],
    },
];

#[test]
fn without_resolving_secrets_references_are_checked_for_form_only() {
    // Nothing these references name exists, and that is fine for linting.
    let src = r#"
motherduck = { admin_token = { credential = "md_admin" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.json" }]
verify = [{ type = "http", url = "https://a.example.com/", headers = { Authorization = { env = "UNSET_VAR" }, X-Key = { file = "missing.key" } } }]
"#;
    let scratch = Scratch::new();
    let config = parse_in(&scratch, src, &FakeEnv::new(), false)
        .unwrap_or_else(|e| panic!("expected a valid configuration, got:\n{e}"));
    assert_eq!(config.policies.len(), 1);
    assert!(
        parse_in(&scratch, src, &FakeEnv::new(), true).is_err(),
        "the same text fails when the secrets are read"
    );

    run_cases(UNRESOLVED_FORM_ERRORS, &FakeEnv::new(), false);
}

#[test]
fn warnings_name_the_line_and_field_but_do_not_fail() {
    let config = valid(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "no-hook"
service_account = "svc_app"
schedule = { interval = "1d" }
overlap = "10m"
destinations = [{ store = "local", path = "a.json" }]

[[policy]]
name = "never-expires"
service_account = "svc_app"
schedule = { interval = "1d" }
rotate_before_expiry = "1d"
destinations = [{ store = "local", path = "b.json" }]
verify = [{ type = "motherduck" }]
"#,
    );
    assert_eq!(config.warnings.len(), 2, "{:#?}", config.warnings);
    assert!(
        config.warnings[0].ends_with(
            ":4: `policy[0].name`: policy `no-hook` has no verification hook; it relies on the overlap period (10m) alone"
        ),
        "{}",
        config.warnings[0]
    );
    assert!(
        config.warnings[1].ends_with(
            ":14: `policy[1].rotate_before_expiry`: has no effect: `token_ttl` is not set, tokens never expire"
        ),
        "{}",
        config.warnings[1]
    );

    let empty = valid(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
"#,
    );
    assert_eq!(empty.policies.len(), 0);
    assert!(
        empty.warnings[0].contains("no [[policy]] defined"),
        "{:?}",
        empty.warnings
    );
}

#[test]
fn inline_secrets_never_appear_in_errors() {
    let scratch = Scratch::new();
    for src in [
        format!("[motherduck]\nadmin_token = \"{JWT}\"\n"),
        "[motherduck]\nadmin_token = 918273645546372819\n".to_owned(),
        format!("motherduck = {{ admin_token = {{ env = \"{JWT}\" }} }}\n"),
        format!("motherduck = {{ admin_token = {{ credential = \"{JWT}\" }} }}\n"),
        format!("motherduck = {{ admin_token = {{ file = \"{JWT}\" }} }}\n"),
    ] {
        for resolve in [true, false] {
            let errors = parse_in(&scratch, &src, &FakeEnv::new(), resolve)
                .expect_err("a pasted token is refused");
            let shown = format!("{errors} {errors:?}");
            assert!(
                !shown.contains("918273645546372819") && !shown.contains("eyJ"),
                "the secret is echoed: {shown}"
            );
            assert_eq!(errors.0.len(), 1, "{errors}");
            assert!(
                errors.0[0].field.starts_with("motherduck.admin_token"),
                "{errors}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Every kind of error, with its exact place
// ---------------------------------------------------------------------------

/// Errors that serde or the TOML parser reports: one per file, since they
/// stop the parse.
#[rustfmt::skip]
const PARSE_ERRORS: &[Case] = &[
    Case {
        name: "toml syntax",
        toml: r#"
[motherduck
admin_token = { env = "MD_TOKEN" }
"#,
        errors: &[("1:12", "", "unclosed table, expected `]`")],
    },
    Case {
        name: "unquoted string",
        toml: r#"
[motherduck]
admin_token = md-secret
"#,
        errors: &[("2:15", "", "string values must be quoted")],
    },
    Case {
        name: "unknown top-level field",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
polcy = []
"#,
        errors: &[("2:1", "polcy", "unknown field `polcy`, expected one of `motherduck`, `daemon`, `stores`, `policy`")],
    },
    Case {
        name: "unknown field in [motherduck]",
        toml: r#"
[motherduck]
admin_token = { env = "MD_TOKEN" }
api_uri = "https://api.motherduck.com"
"#,
        errors: &[("3:1", "motherduck.api_uri", "unknown field `api_uri`, expected one of `api_url`")],
    },
    Case {
        name: "unknown field in [daemon]",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[daemon]
listen_address = "127.0.0.1:9464"
"#,
        errors: &[("3:1", "daemon.listen_address", "unknown field `listen_address`")],
    },
    Case {
        name: "unknown field in a policy",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
token_tll = "1d"
"#,
        errors: &[("5:1", "policy[0].token_tll", "unknown field `token_tll`, expected one of `name`")],
    },
    Case {
        name: "unknown field in the second policy",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "a"
service_account = "svc_a"
[[policy]]
name = "b"
service_account = "svc_b"
overlapp = "5m"
"#,
        errors: &[("8:1", "policy[1].overlapp", "unknown field `overlapp`")],
    },
    Case {
        name: "unknown field in a store table",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.local]
type = "file"
directory = "store"
mode = "0600"
"#,
        errors: &[("5:1", "stores.local.mode", "unknown field `mode`, expected `directory`")],
    },
    Case {
        name: "unknown field in an inline store",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", dir = "store" }
"#,
        errors: &[("2:33", "stores.local.dir", "unknown field `dir`, expected `directory`")],
    },
    Case {
        name: "unknown store type",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.vault]
type = "vault"
"#,
        errors: &[("3:8", "stores.vault.type", "unknown variant `vault`, expected `file`")],
    },
    Case {
        name: "store without a type",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.local]
directory = "store"
"#,
        errors: &[("2:1", "stores.local", "missing field `type`")],
    },
    Case {
        name: "unknown field in an inline hook",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
verify = [{ type = "motherduck" }, { type = "http", url = "https://a.example.com/", timeout = "5s" }]
"#,
        errors: &[("5:85", "policy[0].verify[1].timeout", "unknown field `timeout`, expected one of `url`, `method`, `headers`")],
    },
    Case {
        name: "unknown field in a hook table",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
[[policy.verify]]
type = "command"
command = ["true"]
env = ["A=1"]
"#,
        errors: &[("8:1", "policy[0].verify[0].env", "unknown field `env`, expected one of `command`")],
    },
    Case {
        name: "unknown hook type",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
verify = [{ type = "webhook", url = "https://a.example.com/" }]
"#,
        errors: &[("5:20", "policy[0].verify[0].type", "unknown variant `webhook`, expected one of `http`, `command`, `ack`, `motherduck`")],
    },
    Case {
        name: "unknown field in a destination",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
destinations = [{ store = "local", file = "app.json" }]
"#,
        errors: &[("5:36", "policy[0].destinations[0].file", "unknown field `file`, expected one of `store`, `path`")],
    },
    Case {
        name: "unknown field in a secret reference",
        toml: r#"
[motherduck]
admin_token = { path = "/etc/md.token" }
"#,
        errors: &[("2:17", "motherduck.admin_token.path", "unknown field `path`, expected one of `file`, `env`, `credential`")],
    },
    Case {
        name: "unknown field in a schedule",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { every = "1h" }
"#,
        errors: &[("5:14", "policy[0].schedule.every", "unknown field `every`, expected one of `cron`, `timezone`, `interval`")],
    },
    Case {
        name: "missing [motherduck]",
        toml: r#"
[daemon]
listen = "127.0.0.1:9464"
"#,
        errors: &[("1:1", "", "missing field `motherduck`")],
    },
    Case {
        name: "missing admin token",
        toml: r#"
[motherduck]
api_url = "https://api.motherduck.com"
"#,
        errors: &[("1:1", "motherduck", "missing field `admin_token`")],
    },
    Case {
        name: "policy without service account",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
"#,
        errors: &[("2:1", "policy[0]", "missing field `service_account`")],
    },
    Case {
        name: "window without start",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
windows = [{ days = ["sat"], end = "04:00" }]
"#,
        errors: &[("5:12", "policy[0].windows[0]", "missing field `start`")],
    },
    Case {
        name: "number where a string belongs",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = 3600 }
"#,
        errors: &[("5:25", "policy[0].schedule.interval", "invalid type: integer `3600`, expected a string")],
    },
    Case {
        name: "string where a number belongs",
        toml: r#"
[motherduck]
admin_token = { env = "MD_TOKEN" }
max_retries = "4"
"#,
        errors: &[("3:15", "motherduck.max_retries", "invalid type: string \"4\", expected u32")],
    },
    Case {
        name: "negative count",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
daemon = { rotation_concurrency = -1 }
"#,
        errors: &[("2:35", "daemon.rotation_concurrency", "invalid value: integer `-1`")],
    },
    Case {
        name: "table where a list belongs",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
destinations = { store = "local", path = "app.json" }
"#,
        errors: &[("5:16", "policy[0].destinations", "invalid type: map, expected a sequence")],
    },
];

#[test]
fn parse_errors_name_the_place_and_field() {
    run_cases(PARSE_ERRORS, &FakeEnv::new(), true);
}

/// Errors of the `[motherduck]` and `[daemon]` sections and of secrets.
#[rustfmt::skip]
const SETTINGS_ERRORS: &[Case] = &[
    Case {
        name: "inline admin token",
        toml: r#"
[motherduck]
admin_token = "md-inline-secret"
"#,
        errors: &[("2:1", "motherduck.admin_token", "inline secrets are not allowed; reference it with { file = \"...\" }, { env = \"VAR\" } or { credential = \"name\" }")],
    },
    Case {
        name: "inline numeric admin token",
        toml: r#"
[motherduck]
admin_token = 1234567
"#,
        errors: &[("2:1", "motherduck.admin_token", "inline secrets are not allowed")],
    },
    Case {
        name: "empty secret reference",
        toml: r#"
[motherduck]
admin_token = {}
"#,
        errors: &[("2:15", "motherduck.admin_token", "a secret reference needs one of `file`, `env` or `credential`")],
    },
    Case {
        name: "two secret references",
        toml: r#"
[motherduck]
admin_token = { file = "admin.token", env = "MD_TOKEN" }
"#,
        errors: &[("2:15", "motherduck.admin_token", "give exactly one of `file`, `env` or `credential`, not `file` and `env`")],
    },
    Case {
        name: "environment variable unset",
        toml: r#"
[motherduck]
admin_token = { env = "MD_TOKEN_UNSET" }
"#,
        errors: &[("2:17", "motherduck.admin_token.env", "environment variable `MD_TOKEN_UNSET` is not set or empty")],
    },
    Case {
        name: "environment variable blank",
        toml: r#"
[motherduck]
admin_token = { env = "EMPTY_VAR" }
"#,
        errors: &[("2:17", "motherduck.admin_token.env", "environment variable `EMPTY_VAR` is not set or empty")],
    },
    Case {
        name: "not a variable name",
        toml: r#"
[motherduck]
admin_token = { env = "$MD_TOKEN" }
"#,
        errors: &[("2:17", "motherduck.admin_token.env", "`$MD_TOKEN` is not an environment variable name (letters, digits and `_`, not starting with a digit)")],
    },
    Case {
        name: "token pasted as a variable name",
        toml: r#"
[motherduck]
admin_token = { env = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl" }
"#,
        errors: &[("2:17", "motherduck.admin_token.env", "this looks like a token rather than a variable name; never put the secret itself in the configuration (the value is not shown)")],
    },
    Case {
        name: "credential without CREDENTIALS_DIRECTORY",
        toml: r#"
[motherduck]
admin_token = { credential = "md_admin" }
"#,
        errors: &[("2:17", "motherduck.admin_token.credential", "credential `md_admin` needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=); it is not set")],
    },
    Case {
        name: "credential name with a slash",
        toml: r#"
[motherduck]
admin_token = { credential = "../md_admin" }
"#,
        errors: &[("2:17", "motherduck.admin_token.credential", "invalid credential name `../md_admin`: it must be a file name")],
    },
    Case {
        name: "secret file missing",
        toml: r#"
[motherduck]
admin_token = { file = "missing.token" }
"#,
        errors: &[("2:17", "motherduck.admin_token.file", "missing.token`: No such file or directory")],
    },
    Case {
        name: "secret file is a directory",
        toml: r#"
[motherduck]
admin_token = { file = "a-directory" }
"#,
        errors: &[("2:17", "motherduck.admin_token.file", "failed to read secret file")],
    },
    Case {
        name: "secret file empty",
        toml: r#"
[motherduck]
admin_token = { file = "empty.token" }
"#,
        errors: &[("2:17", "motherduck.admin_token.file", "empty.token` is empty")],
    },
    Case {
        name: "secret file path empty",
        toml: r#"
[motherduck]
admin_token = { file = "" }
"#,
        errors: &[("2:17", "motherduck.admin_token.file", "the secret file path is empty")],
    },
    Case {
        name: "admin token with a line break inside",
        toml: r#"
[motherduck]
admin_token = { file = "broken.token" }
"#,
        errors: &[("2:15", "motherduck.admin_token", "contains characters not allowed in an HTTP header")],
    },
    Case {
        name: "plain http api url off loopback",
        toml: r#"
[motherduck]
api_url = "http://api.motherduck.com"
admin_token = { env = "MD_TOKEN" }
"#,
        errors: &[("2:1", "motherduck.api_url", "MotherDuck API URL `http://api.motherduck.com` must use https (plain http is allowed only for loopback addresses)")],
    },
    Case {
        name: "api url with a query",
        toml: r#"
[motherduck]
api_url = "https://api.motherduck.com/?region=eu"
admin_token = { env = "MD_TOKEN" }
"#,
        errors: &[("2:1", "motherduck.api_url", "a query or fragment is not allowed")],
    },
    Case {
        name: "api url not a url",
        toml: r#"
[motherduck]
api_url = "api.motherduck.com"
admin_token = { env = "MD_TOKEN" }
"#,
        errors: &[("2:1", "motherduck.api_url", "invalid MotherDuck API URL `api.motherduck.com`")],
    },
    Case {
        name: "bad motherduck numbers and durations",
        toml: r#"
[motherduck]
admin_token = { env = "MD_TOKEN" }
request_timeout = "0s"
max_retries = 21
rate_limit_per_second = 0
"#,
        errors: &[
            ("3:1", "motherduck.request_timeout", "must be greater than zero"),
            ("4:1", "motherduck.max_retries", "`21` is more than the maximum of 20"),
            ("5:1", "motherduck.rate_limit_per_second", "must be at least 1"),
        ],
    },
    Case {
        name: "bad daemon settings",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[daemon]
listen = "localhost:9464"
log_format = "yaml"
rotation_concurrency = 0
sweep_interval = "500ms"
orphan_min_age = "five minutes"
shutdown_timeout = "30"
lock_retry_interval = "0s"
instance_id = " "
"#,
        errors: &[
            ("3:1", "daemon.listen", "`localhost:9464` is not an address like 127.0.0.1:9464"),
            ("4:1", "daemon.log_format", "`yaml` is not one of auto, text, json"),
            ("5:1", "daemon.rotation_concurrency", "must be at least 1"),
            ("6:1", "daemon.sweep_interval", "must be at least 1s"),
            ("7:1", "daemon.orphan_min_age", "invalid duration `five minutes`"),
            ("8:1", "daemon.shutdown_timeout", "invalid duration `30`: time unit needed"),
            ("9:1", "daemon.lock_retry_interval", "must be greater than zero"),
            ("10:1", "daemon.instance_id", "` ` must be non-empty text without control characters"),
        ],
    },
    Case {
        name: "bad store name",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.Local]
type = "file"
directory = "store"
"#,
        errors: &[("2:1", "stores.Local", "store name `Local` may contain only a-z, 0-9, `_` and `-`")],
    },
];

#[test]
fn settings_and_secret_errors_name_the_place_and_field() {
    run_cases(SETTINGS_ERRORS, &FakeEnv::new(), true);
}

/// Errors of policies. Every case starts with the same two lines, so a
/// policy's first line is line 3.
#[rustfmt::skip]
const POLICY_ERRORS: &[Case] = &[
    Case {
        name: "bad policy name",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "Orders.API"
service_account = "svc_orders"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("4:1", "policy[0].name", "policy name `Orders.API` must be 1-64 characters of a-z, 0-9, `_` and `-`")],
    },
    Case {
        name: "duplicate policy names",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "b.json" }]
"#,
        errors: &[("9:1", "policy[1].name", "duplicate policy name `app`")],
    },
    Case {
        name: "bad service account name",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "9-app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("5:1", "policy[0].service_account", "`9-app` is not a valid service account name: it must start with an alphabetic character; it may only contain letters, numbers and underscores")],
    },
    Case {
        name: "bad token type and prefix",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_type = "read_only"
token_name_prefix = "my.rotator"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[
            ("6:1", "policy[0].token_type", "`read_only` is not one of read_write, read_scaling"),
            ("7:1", "policy[0].token_name_prefix", "`my.rotator` must be 1-32 characters of letters, digits, `_` and `-`"),
        ],
    },
    Case {
        name: "bad durations",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1 fortnight" }
jitter = "-5m"
overlap = "5"
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[
            ("6:14", "policy[0].schedule.interval", "invalid duration `1 fortnight`: unknown time unit \"fortnight\""),
            ("7:1", "policy[0].jitter", "invalid duration `-5m`"),
            ("8:1", "policy[0].overlap", "invalid duration `5`: time unit needed"),
        ],
    },
    Case {
        name: "token ttl too short",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "4m 59s"
rotate_before_expiry = "1m"
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:1", "policy[0].token_ttl", "`4m 59s` is outside what MotherDuck accepts (whole seconds from 5m to 365d)")],
    },
    Case {
        name: "token ttl too long",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "366d"
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:1", "policy[0].token_ttl", "`366d` is outside what MotherDuck accepts")],
    },
    Case {
        name: "token ttl not whole seconds",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "1h 500ms"
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:1", "policy[0].token_ttl", "`1h 500ms` is outside what MotherDuck accepts (whole seconds")],
    },
    Case {
        name: "rotate before expiry not shorter than the ttl",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "1d"
rotate_before_expiry = "24h"
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("7:1", "policy[0].rotate_before_expiry", "`1day` must be shorter than `token_ttl` (`1day`)")],
    },
    Case {
        name: "rotate before expiry within the overlap",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "1d"
rotate_before_expiry = "1h"
overlap = "1h"
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("7:1", "policy[0].rotate_before_expiry", "`1h` must be longer than `overlap` (`1h`): the old token has to outlive the overlap period after the rotation starts")],
    },
    Case {
        name: "default rotate before expiry within the overlap",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
token_ttl = "10m"
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("3:1", "policy[0].rotate_before_expiry", "the default (a third of `token_ttl`, `3m 20s`) must be longer than `overlap` (`5m`): the old token has to outlive the overlap period after the rotation starts; set `rotate_before_expiry` longer than `overlap`, or shorten `overlap`")],
    },
    Case {
        name: "cron and interval together",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { cron = "0 3 * * *", interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:12", "policy[0].schedule", "give either `cron` or `interval`, not both")],
    },
    Case {
        name: "neither cron nor interval",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { timezone = "UTC" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:12", "policy[0].schedule", "give `cron` (with an optional `timezone`) or `interval`")],
    },
    Case {
        name: "timezone with an interval",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d", timezone = "UTC" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:31", "policy[0].schedule.timezone", "`timezone` applies to `cron` only")],
    },
    Case {
        name: "interval below a second",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "500ms" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:14", "policy[0].schedule.interval", "must be at least 1s")],
    },
    Case {
        name: "bad cron",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { cron = "0 25 * * *" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:14", "policy[0].schedule.cron", "invalid cron expression `0 25 * * *`")],
    },
    Case {
        name: "cron that never fires",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { cron = "0 0 30 2 *" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:14", "policy[0].schedule.cron", "cron expression `0 0 30 2 *` never matches a date")],
    },
    Case {
        name: "bad timezone",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { cron = "0 3 * * *", timezone = "CEST" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:34", "policy[0].schedule.timezone", "unknown time zone `CEST`: expected an iana name such as `Europe/Berlin` or `UTC`")],
    },
    Case {
        name: "bad windows",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
[[policy.windows]]
days = ["mon", "funday"]
start = "02:00"
end = "04:00"
[[policy.windows]]
start = "02:00"
end = "04:00"
[[policy.windows]]
days = ["sat"]
start = "2am"
end = "04:00"
[[policy.windows]]
days = ["sat"]
start = "02:00"
end = "24:00"
[[policy.windows]]
days = ["sun"]
start = "02:00"
end = "02:00"
[[policy.windows]]
days = ["sun"]
start = "02:00"
end = "04:00"
timezone = "Berlin"
"#,
        errors: &[
            ("9:8", "policy[0].windows[0].days", "unknown day `funday`: expected `mon`, `tue`"),
            ("12:1", "policy[0].windows[1].days", "window needs at least one day, e.g. `mon-sun`"),
            ("17:1", "policy[0].windows[2].start", "invalid window start `2am`: expected HH:MM between 00:00 and 23:59"),
            ("22:1", "policy[0].windows[3].end", "invalid window end `24:00`"),
            ("26:1", "policy[0].windows[4].end", "window start `02:00` equals its end"),
            ("31:1", "policy[0].windows[5].timezone", "unknown time zone `Berlin`"),
        ],
    },
    Case {
        name: "nothing makes the policy due",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("4:1", "policy[0].name", "nothing would ever make this policy due: set `schedule`, or `token_ttl` for expiry-driven rotation")],
    },
    Case {
        name: "no destinations",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
"#,
        errors: &[("4:1", "policy[0].name", "a policy needs at least one entry in `destinations`")],
    },
    Case {
        name: "unknown store",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "vault", path = "a.json" }]
"#,
        errors: &[("7:19", "policy[0].destinations[0].store", "no store named `vault` (defined: local)")],
    },
    Case {
        name: "unknown store, none defined",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
"#,
        errors: &[("6:19", "policy[0].destinations[0].store", "no store named `local` (defined: none)")],
    },
    Case {
        name: "file names that are not plain",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
[[policy.destinations]]
store = "local"
path = "../app.json"
[[policy.destinations]]
store = "local"
path = ".app.json"
bare_token_file = "tokens/app"
[[policy.destinations]]
store = "local"
path = "app.json"
bare_token_file = "app.json"
"#,
        errors: &[
            ("9:1", "policy[0].destinations[0].path", "`../app.json` must be a plain file name inside the store's directory"),
            ("12:1", "policy[0].destinations[1].path", "`.app.json` must be a plain file name"),
            ("13:1", "policy[0].destinations[1].bare_token_file", "`tokens/app` must be a plain file name, different from `path`"),
            ("17:1", "policy[0].destinations[2].bare_token_file", "`app.json` must be a plain file name, different from `path`"),
        ],
    },
    Case {
        name: "two policies write the same file",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
stores.other = { type = "file", directory = "./store/" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.json" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "other", path = "app.json" }]
"#,
        errors: &[("13:36", "policy[1].destinations[0].path", "/store/app.json` is already written by policy `a`")],
    },
    Case {
        name: "a bare token file is another policy's record",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json", bare_token_file = "token" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "token" }]
"#,
        errors: &[("12:36", "policy[1].destinations[0].path", "/store/token` is already written by policy `a`")],
    },
    Case {
        name: "a file is another record's working file",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app", bare_token_file = "app.lock" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.pending" }]
[[policy]]
name = "c"
service_account = "svc_c"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "x" }, { store = "local", path = "x.previous.json", bare_token_file = "x.previous" }]
"#,
        errors: &[
            ("7:50", "policy[0].destinations[0].bare_token_file", "/store/app.lock` is already used by policy `a` as a working file of its record `"),
            ("12:36", "policy[1].destinations[0].path", "/store/app.pending` is already used by policy `a` as a working file of its record `"),
            ("17:95", "policy[2].destinations[1].bare_token_file", "/store/x.previous` is already used by policy `c` as a working file"),
        ],
    },
    Case {
        name: "a record's working file is another policy's file",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.json.previous" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "app.json" }]
"#,
        errors: &[("12:36", "policy[1].destinations[0].path", "the file store keeps `")],
    },
    Case {
        name: "bad retry",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
[policy.retry]
max_attempts = 0
initial_backoff = "10m"
max_backoff = "5m"
"#,
        errors: &[
            ("9:1", "policy[0].retry.max_attempts", "must be at least 1"),
            ("11:1", "policy[0].retry.max_backoff", "must not be less than `initial_backoff`"),
        ],
    },
    Case {
        name: "zero initial backoff",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
retry = { initial_backoff = "0s" }
"#,
        errors: &[("8:11", "policy[0].retry.initial_backoff", "must be greater than zero")],
    },
];

#[test]
fn policy_errors_name_the_place_and_field() {
    run_cases(POLICY_ERRORS, &FakeEnv::new(), true);
}

/// Errors of verification hooks; each case's hook is on line 7.
#[rustfmt::skip]
const HOOK_ERRORS: &[Case] = &[
    Case {
        name: "command hook without a program",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "command", command = [] }]
"#,
        errors: &[("8:41", "policy[0].verify[0].command", "needs at least the program to run")],
    },
    Case {
        name: "command hook with an empty program",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "command", command = [""] }]
"#,
        errors: &[("8:41", "policy[0].verify[0].command", "the command program must not be empty")],
    },
    Case {
        name: "command hook timing",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [
  { type = "command", command = ["check"], timeout = "5m", deadline = "1m" },
  { type = "command", command = ["check"], interval = "0s" },
]
"#,
        errors: &[
            ("9:44", "policy[0].verify[0].timeout", "timeout `5m` must not exceed the deadline `1m`"),
            ("10:44", "policy[0].verify[1].interval", "interval `0s` must be greater than zero"),
        ],
    },
    Case {
        name: "command hook inheriting a secret",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "command", command = ["check"], inherit_env = ["KUBECONFIG", "MD_TOKEN"] }]
"#,
        errors: &[("8:81", "policy[0].verify[0].inherit_env[1]", "`MD_TOKEN` holds a secret this configuration references; a verification command must not inherit it")],
    },
    Case {
        name: "command hook inheriting MOTHERDUCK_TOKEN",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "command", command = ["check"], inherit_env = ["MOTHERDUCK_TOKEN"] }]
"#,
        errors: &[("8:66", "policy[0].verify[0].inherit_env", "inherit_env may not name `MOTHERDUCK_TOKEN`; set pass_token")],
    },
    Case {
        name: "http hook over plain http off loopback",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "http", url = "http://app.internal:8080/health" }]
"#,
        errors: &[("8:28", "policy[0].verify[0].url", "probe url `http://app.internal:8080/health` must use https (plain http is allowed only for loopback addresses)")],
    },
    Case {
        name: "http hook with credentials in the url",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "http", url = "https://user:hunter2@app.example.com/" }]
"#,
        errors: &[("8:28", "policy[0].verify[0].url", "probe url must not contain credentials")],
    },
    Case {
        name: "http hook with a literal authorization header",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "http", url = "https://app.example.com/", headers = { Authorization = "Bearer hunter2" } }]
"#,
        errors: &[("8:74", "policy[0].verify[0].headers.Authorization", "header `Authorization` carries a credential; give its value as a secret reference, not a literal")],
    },
    Case {
        name: "http hook with an unset header secret",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "http", url = "https://app.example.com/", headers = { Authorization = { env = "PROBE_TOKEN" } } }]
"#,
        errors: &[("8:92", "policy[0].verify[0].headers.Authorization.env", "environment variable `PROBE_TOKEN` is not set or empty")],
    },
    Case {
        name: "http hook settings",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
[[policy.verify]]
type = "http"
url = "https://app.example.com/"
json_field = "token_id"
[[policy.verify]]
type = "http"
url = "https://app.example.com/"
expect_status = [200, 700]
[[policy.verify]]
type = "http"
url = "https://app.example.com/"
method = "GET POST"
[[policy.verify]]
type = "http"
url = "https://app.example.com/"
request_timeout = "1m"
deadline = "30s"
"#,
        errors: &[
            ("11:1", "policy[0].verify[0].json_field", "json_field `token_id` is not a JSON pointer"),
            ("15:17", "policy[0].verify[1].expect_status", "expected status `700` is not an HTTP status (100-599)"),
            ("19:1", "policy[0].verify[2].method", "invalid http method `GET POST`"),
            ("23:1", "policy[0].verify[3].request_timeout", "request_timeout `1m` must not exceed the deadline `30s`"),
        ],
    },
    Case {
        name: "ack and built-in hook timing",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "ack", deadline = "0s" }, { type = "motherduck", interval = "0s" }]
"#,
        errors: &[
            ("8:27", "policy[0].verify[0].deadline", "deadline `0s` must be greater than zero"),
            ("8:69", "policy[0].verify[1].interval", "interval `0s` must be greater than zero"),
        ],
    },
];

#[test]
fn hook_errors_name_the_place_and_field() {
    run_cases(HOOK_ERRORS, &FakeEnv::new(), true);
}

/// One problem in each section; none hides another.
#[rustfmt::skip]
const SEVERAL_PROBLEMS: &[Case] = &[Case {
    name: "several problems",
    toml: r#"
[motherduck]
api_url = "http://api.motherduck.com"
admin_token = { env = "MD_TOKEN_UNSET" }

[daemon]
log_format = "xml"

[stores.local]
type = "file"
directory = "store"

[[policy]]
name = "a"
service_account = "svc_a"
token_ttl = "1m"
schedule = { cron = "0 3 * * *", timezone = "Mars/Olympus" }
destinations = [{ store = "local", path = "a.json" }]
verify = [{ type = "http", url = "http://a.example.com/" }]

[[policy]]
name = "a"
service_account = "svc a"
schedule = { interval = "1d" }
destinations = [{ store = "nope", path = "b.json" }]
retry = { initial_backoff = "1h", max_backoff = "1m" }
"#,
    errors: &[
        ("2:1", "motherduck.api_url", "must use https"),
        ("3:17", "motherduck.admin_token.env", "`MD_TOKEN_UNSET` is not set"),
        ("6:1", "daemon.log_format", "`xml` is not one of auto, text, json"),
        ("15:1", "policy[0].token_ttl", "`1m` is outside what MotherDuck accepts"),
        ("16:34", "policy[0].schedule.timezone", "unknown time zone `Mars/Olympus`"),
        ("18:28", "policy[0].verify[0].url", "must use https"),
        ("21:1", "policy[1].name", "duplicate policy name `a`"),
        ("22:1", "policy[1].service_account", "`svc a` is not a valid service account name"),
        ("24:19", "policy[1].destinations[0].store", "no store named `nope`"),
        ("25:35", "policy[1].retry.max_backoff", "must not be less than `initial_backoff`"),
    ],
}];

#[test]
fn every_problem_in_a_file_is_reported() {
    run_cases(SEVERAL_PROBLEMS, &FakeEnv::new(), true);
}

#[test]
fn errors_print_as_file_line_column_field_reason() {
    let e = ConfigError {
        file: PathBuf::from("/etc/mdr.toml"),
        line: 7,
        column: 3,
        field: "policy[0].token_ttl".to_owned(),
        reason: "`1m` is outside what MotherDuck accepts".to_owned(),
    };
    assert_eq!(
        e.to_string(),
        "/etc/mdr.toml:7:3: `policy[0].token_ttl`: `1m` is outside what MotherDuck accepts"
    );
    let syntax = ConfigError {
        field: String::new(),
        ..e.clone()
    };
    assert_eq!(
        syntax.to_string(),
        "/etc/mdr.toml:7:3: `1m` is outside what MotherDuck accepts"
    );
    assert_eq!(
        ConfigErrors(vec![e.clone(), syntax])
            .to_string()
            .lines()
            .count(),
        2,
        "one problem per line"
    );
}

#[test]
fn an_unreadable_file_is_one_error_without_a_position() {
    let scratch = Scratch::new();
    let path = scratch.dir.join("absent.toml");
    let errors = load(&path).expect_err("the file does not exist");
    assert_eq!(errors.0.len(), 1);
    let shown = errors.to_string();
    assert!(
        shown.starts_with(&format!(
            "{}: failed to read the configuration file: ",
            path.display()
        )),
        "{shown}"
    );
}
