//! Configuration validation, data-driven: every case is a TOML text fed to
//! the pure [`parse_with`] through [`check`], with a fake environment and a
//! scratch directory holding the secret files the cases refer to. The
//! expectation is the rendered result: every error as
//! `line:column: `field`: reason`, in order, or a summary of the valid
//! configuration with its warnings (see [`render`]). `UPDATE_EXPECT=1 cargo
//! test` rewrites the expectations; review each one before committing it.
//!
//! One file a section of the configuration; the few tests that look at
//! something a rendering cannot show (what `Debug` hides, several
//! environments for one text) keep a small body of their own.

mod hooks;
mod parse;
mod policy;
mod secrets;
mod settings;
mod valid;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use expect_test::{Expect, expect};

use super::*;
use crate::schedule::Cadence;
use crate::secret::ExposeSecret;
use crate::stores::Destination;
use crate::stores::aws::AwsDestination;
use crate::stores::vault::KvVersion;
use crate::stores::vault::{VaultConnection, VaultDestination};
use crate::verify::HookSpec;

/// The admin token the scratch directory's `admin.token` file holds.
const FILE_TOKEN: &str = "md-admin-token-from-file";
/// The admin token `MD_TOKEN` holds.
const ENV_TOKEN: &str = "md-admin-token-from-env";
/// The admin token the `md_admin` systemd credential holds.
const CREDENTIAL_TOKEN: &str = "md-admin-token-from-credential";
/// The Vault token the scratch directory's `vault.token` file holds.
const VAULT_TOKEN: &str = "hvs.vault-token-from-file";
/// The AppRole role id and secret id of the scratch directory and of
/// `VAULT_SECRET_ID`.
const ROLE_ID: &str = "role-id-from-file-0001";
const SECRET_ID: &str = "secret-id-from-env-0002";
/// A self-signed CA certificate (public, no key), for `ca_file`.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBkTCCATegAwIBAgIUQWJ3kjUwcnyQgRhxwagEWWsW7fAwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSbWRyLWNvbmZpZy10ZXN0LWNhMCAXDTI2MTEyNDA3NTkyNFoY
DzIxMjYxMDMxMDc1OTI0WjAdMRswGQYDVQQDDBJtZHItY29uZmlnLXRlc3QtY2Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASfo+Nw0d7GFM1xEiG2m5H5h7g3QCdy
d2skbMFgpT3Mtd5wmQs76aGdXiwEtYcf4z2qQl6yEwjPI2/etAQyG+DSo1MwUTAd
BgNVHQ4EFgQUv2OR+pp4NZvGsnfnj6m2TQ5iorswHwYDVR0jBBgwFoAUv2OR+pp4
NZvGsnfnj6m2TQ5iorswDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF
AiEA5j2j7oLFbY/3k7ZG/zXHl9ixdtxFY7DaSSyebQcXa8ICIC56oCdVlHSzWvjZ
ixP7KURtFm2ZnUSX7VmJfPth86ZW
-----END CERTIFICATE-----
";
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
            ("VAULT_SECRET_ID".to_owned(), SECRET_ID.to_owned()),
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
        std::fs::write(dir.join("vault.token"), format!("{VAULT_TOKEN}\n")).unwrap();
        std::fs::write(dir.join("vault-role-id"), ROLE_ID).unwrap();
        std::fs::write(dir.join("sa.jwt"), "kubernetes-service-account-jwt\n").unwrap();
        std::fs::write(dir.join("ca.pem"), CA_PEM).unwrap();
        std::fs::write(dir.join("not-a-cert.pem"), "not a certificate\n").unwrap();
        std::fs::write(dir.join("client.crt"), "not a certificate\n").unwrap();
        std::fs::write(dir.join("client.key"), "not a key\n").unwrap();
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

/// Text as written in the cases: a raw string that starts with a line
/// break, which is not part of the configuration.
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

/// Checks the rendering of `src` (secrets read from the fake environment
/// and the scratch directory) against `expect`.
fn check(src: &str, expect: Expect) {
    check_with(&FakeEnv::new(), true, src, expect);
}

/// [`check`] without reading secrets, as `validate` does on a machine that
/// does not hold them.
fn check_unresolved(src: &str, expect: Expect) {
    check_with(&FakeEnv::new(), false, src, expect);
}

fn check_with(env: &FakeEnv, resolve: bool, src: &str, expect: Expect) {
    let scratch = Scratch::new();
    let result = parse_in(&scratch, src, env, resolve);
    expect.assert_eq(&render(&scratch, &result));
}

/// The errors, one a line as `validate` prints them but without the file
/// (which must be the configuration's own), or a summary of the valid
/// configuration. The scratch directory shows as `$DIR`.
fn render(scratch: &Scratch, result: &Result<Config, ConfigErrors>) -> String {
    let mut out = String::new();
    match result {
        Err(ConfigErrors(errors)) => {
            for e in errors {
                assert_eq!(e.file, scratch.config_path(), "{e}");
                let shown = e.to_string();
                let prefix = format!("{}:", e.file.display());
                writeln!(out, "{}", shown.strip_prefix(&prefix).unwrap_or(&shown)).unwrap();
            }
        }
        Ok(config) => summary(&mut out, scratch, config).unwrap(),
    }
    out.replace(&scratch.dir.display().to_string(), "$DIR")
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The validated values of a configuration: a line for each section's
/// settings, then each policy, then the warnings.
fn summary(out: &mut String, scratch: &Scratch, config: &Config) -> std::fmt::Result {
    let d = fmt_duration;
    assert_eq!(config.source, scratch.config_path());
    let md = &config.motherduck;
    writeln!(
        out,
        "motherduck: api_url {}, admin_token {} (env {}), request_timeout {}, max_retries {}, rate_limit_per_second {}",
        md.api_url,
        md.admin_token.expose_secret(),
        md.admin_token_env.as_deref().unwrap_or("none"),
        d(md.request_timeout),
        md.max_retries,
        md.rate_limit_per_second
    )?;
    let dm = &config.daemon;
    // The default instance id is the host's name and the process id.
    let pid = format!(":{}", std::process::id());
    let instance_id = match dm.instance_id.strip_suffix(&pid) {
        Some(_) => "<host>:<pid>",
        None => dm.instance_id.as_str(),
    };
    writeln!(
        out,
        "daemon: listen {}, metrics_bearer_token {}, log_format {:?}, rotation_concurrency {}, sweep_interval {}, orphan_min_age {}, shutdown_timeout {}, lock_retry_interval {}, recheck_interval {}, instance_id {instance_id}",
        dm.listen,
        dm.metrics_bearer_token
            .as_ref()
            .map_or("none", |t| t.expose_secret()),
        dm.log_format,
        dm.rotation_concurrency,
        d(dm.sweep_interval),
        d(dm.orphan_min_age),
        d(dm.shutdown_timeout),
        d(dm.lock_retry_interval),
        d(dm.recheck_interval)
    )?;
    let a = &config.alerts;
    writeln!(
        out,
        "alerts: repeat_interval {}, expiry_warning {}, max_per_minute {}, max_attempts {}, runbook_url {}, sinks {:?}",
        d(a.repeat_interval),
        d(a.expiry_warning),
        a.max_per_minute,
        a.max_attempts,
        a.runbook_url.as_deref().unwrap_or("none"),
        a.sinks
    )?;
    let addresses: Vec<&str> = config
        .vault_connections
        .iter()
        .map(|c| c.address())
        .collect();
    writeln!(out, "vault connections: {addresses:?}")?;
    for p in &config.policies {
        policy_summary(out, p)?;
    }
    for w in &config.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}

fn policy_summary(out: &mut String, p: &Policy) -> std::fmt::Result {
    let d = fmt_duration;
    let or_none = |v: Option<Duration>| v.map_or("none".to_owned(), d);
    writeln!(
        out,
        "policy {}: service_account {}, token_type {:?}, token_ttl {}, token names {}, overlap {}",
        p.name,
        p.service_account,
        p.token_type,
        or_none(p.token_ttl),
        p.token_name("<rotation id>"),
        d(p.overlap)
    )?;
    let s = &p.schedule;
    let cadence = match &s.cadence {
        Some(Cadence::Cron(c)) => format!("cron `{}` ({})", c.expression(), c.time_zone()),
        Some(Cadence::Interval(i)) => format!("interval {}", d(*i)),
        None => "no cadence".to_owned(),
    };
    writeln!(
        out,
        "  schedule: {cadence}, jitter {}, rotate_before_expiry {}",
        d(s.jitter),
        or_none(s.rotate_before_expiry)
    )?;
    for w in &s.windows {
        let days: Vec<String> = w.days().map(|day| day.to_string()).collect();
        writeln!(
            out,
            "  window: {} {}-{} ({})",
            days.join(","),
            w.start(),
            w.end(),
            w.time_zone()
        )?;
    }
    for h in &p.hooks {
        match h {
            HookSpec::Http(h) => writeln!(
                out,
                "  hook http: {} {}, expect_status {:?}, json_field {}, interval {}, deadline {}, request_timeout {}",
                h.method(),
                h.label(),
                h.expect_status(),
                h.json_field().unwrap_or("none"),
                d(h.interval()),
                d(h.deadline()),
                d(h.request_timeout())
            )?,
            HookSpec::Command(c) => writeln!(
                out,
                "  hook command: {} {:?}, pass_token {}, inherit_env {:?}, timeout {}, interval {}, deadline {}",
                c.program().display(),
                c.args(),
                c.pass_token(),
                c.inherit_env(),
                d(c.timeout()),
                d(c.interval()),
                d(c.deadline())
            )?,
            HookSpec::Ack(_) => writeln!(out, "  hook ack: deadline {}", d(h.deadline()))?,
            HookSpec::MotherDuck(b) => writeln!(
                out,
                "  hook motherduck: interval {}, deadline {}",
                d(b.interval()),
                d(b.deadline())
            )?,
        }
    }
    for dest in &p.destinations {
        writeln!(out, "  destination: {}", destination_summary(dest))?;
    }
    writeln!(out, "  lock: {}", destination_summary(&p.lock))?;
    writeln!(
        out,
        "  retry: max_attempts {}, initial_backoff {}, max_backoff {}",
        p.retry.max_attempts,
        d(p.retry.initial_backoff),
        d(p.retry.max_backoff)
    )
}

fn destination_summary(dest: &Destination) -> String {
    match dest {
        Destination::File(f) => format!(
            "file store {}: {}, bare_token_file {}",
            f.store,
            f.path().display(),
            f.bare_token_file.as_deref().unwrap_or("none")
        ),
        Destination::Vault(v) => format!(
            "vault store {}: {} at {} (namespace {}, {} auth), mount {}, path {}, {:?}, lease_ttl {}",
            v.store(),
            v.label(),
            v.connection().address(),
            v.connection().namespace().unwrap_or("none"),
            v.connection().token_status().method,
            v.mount(),
            v.path(),
            v.kv_version(),
            fmt_duration(v.lease_ttl())
        ),
        Destination::Aws(a) => format!(
            "aws store {}: {}, secret {}, lock_ttl {}, version_budget {}",
            a.store(),
            a.label(),
            a.secret_name(),
            fmt_duration(a.lock_ttl()),
            a.version_budget()
        ),
    }
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

/// Every shipped configuration in `config/` is valid without its secrets
/// (the integration tests check the same through the binary).
#[test]
fn shipped_configurations_validate_without_secrets() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let config = load_with(
            &path,
            LoadOptions {
                resolve_secrets: false,
            },
        )
        .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        seen.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            config,
        ));
    }
    let get = |name: &str| {
        &seen
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("config/{name} is missing"))
            .1
    };

    let vault = get("vault.toml");
    let kv: Vec<KvVersion> = vault
        .policies
        .iter()
        .flat_map(|p| &p.destinations)
        .filter_map(|d| match d {
            Destination::Vault(v) => Some(v.kv_version()),
            _ => None,
        })
        .collect();
    assert!(
        kv.contains(&KvVersion::V2) && kv.contains(&KvVersion::V1),
        "config/vault.toml shows KV v2 and KV v1: {kv:?}"
    );
    assert!(
        vault
            .policies
            .iter()
            .any(|p| p.destinations.iter().all(|d| d.label() != p.lock.label())),
        "config/vault.toml shows a lock kept elsewhere"
    );
    assert!(!vault.vault_connections.is_empty());

    let aws = get("aws.toml");
    let debug = format!("{:?}", aws.policies);
    assert!(
        debug.contains("create_if_missing: true") && debug.contains("kms_key_id: Some("),
        "config/aws.toml shows create_if_missing with a KMS key"
    );
}

/// Regression: a file that is not UTF-8 was reported as "stream did not
/// contain valid UTF-8", without saying where.
#[test]
fn invalid_utf8_is_reported_with_its_position() {
    let bytes = b"[motherduck]\nadmin_token = { env = \"T\" }\n# caf\xe9 au lait\n";
    assert_eq!(super::decode_utf8(bytes), Err((3, 6)));
    let dir = std::env::temp_dir().join(format!("mdr-utf8-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, bytes).unwrap();
    let e = super::load(&path).unwrap_err().to_string();
    assert!(e.contains("config.toml:3:6"), "{e}");
    assert!(e.contains("not valid UTF-8"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

// Cases not yet written as checks.

/// One expected error: `("line:column", "field", "part of the reason")`.
type Expected = (&'static str, &'static str, &'static str);

struct Case {
    name: &'static str,
    toml: &'static str,
    errors: &'static [Expected],
}

/// Runs `src` and compares its errors with `expected`; `None` when they
/// match, otherwise a report of what was found instead.
fn check_case(src: &str, env: &FakeEnv, resolve: bool, expected: &[Expected]) -> Option<String> {
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
            check_case(c.toml, env, resolve, c.errors)
                .map(|report| format!("case `{}`: {report}", c.name))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn vault_of(d: &Destination) -> &VaultDestination {
    match d {
        Destination::Vault(v) => v,
        other => panic!("expected a Vault destination, got {other:?}"),
    }
}

fn aws_of(d: &Destination) -> &AwsDestination {
    match d {
        Destination::Aws(a) => a,
        other => panic!("expected an AWS destination, got {other:?}"),
    }
}

const STORES: &str = r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }

[stores.vault]
type = "vault"
address = "https://vault.example.com:8200/"
namespace = "admin/team-a"
kv_version = 2
mount = "kv/"
auth = { method = "approle", mount = "approle-prod", role_id = { file = "vault-role-id" }, secret_id = { env = "VAULT_SECRET_ID" } }
ca_file = "ca.pem"
lease_ttl = "2m"
request_timeout = "5s"

[stores.legacy]
type = "vault"
address = "http://127.0.0.1:8200"
kv_version = 1
mount = "kv1"
auth = { method = "token", token = { file = "vault.token" } }

[stores.k8s]
type = "vault"
address = "https://vault.internal"
[stores.k8s.auth]
method = "kubernetes"
role = "rotator"
jwt_file = "sa.jwt"

[stores.unused]
type = "vault"
address = "https://vault.unused.example.com"
auth = { method = "token", token = { file = "vault.token" } }

[stores.aws]
type = "aws"
region = "eu-central-1"
create_if_missing = true
kms_key_id = "alias/motherduck"
lock_ttl = "90s"

[stores.moto]
type = "aws"
region = "us-east-1"
endpoint_url = "http://127.0.0.1:5000"

[stores.local]
type = "file"
directory = "store"

[[policy]]
name = "orders"
service_account = "svc_orders"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [
  { store = "vault", path = "motherduck/orders" },
  { store = "legacy", path = "motherduck/orders" },
  { store = "aws", path = "prod/motherduck/orders" },
]

[[policy]]
name = "reports"
service_account = "svc_reports"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [{ store = "legacy", path = "reports" }, { store = "k8s", path = "reports" }]
lock = { store = "local", path = "reports.json" }

[[policy]]
name = "etl"
service_account = "svc_etl"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [{ store = "moto", path = "etl" }]
lock = { store = "moto", path = "etl" }
"#;

#[test]
fn vault_and_aws_stores_become_validated_types() {
    let scratch = Scratch::new();
    let config = parse_in(&scratch, STORES, &FakeEnv::new(), true)
        .unwrap_or_else(|e| panic!("expected a valid configuration, got:\n{e}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    let orders = &config.policies[0];
    let v = vault_of(&orders.destinations[0]);
    assert_eq!(
        v.mount(),
        "kv",
        "surrounding slashes of a mount are dropped"
    );
    assert_eq!(v.path(), "motherduck/orders");
    assert_eq!(v.kv_version(), KvVersion::V2);
    assert_eq!(v.lease_ttl(), Duration::from_secs(120));
    assert_eq!(v.label(), "vault:kv/motherduck/orders");
    assert_eq!(v.connection().address(), "https://vault.example.com:8200");
    assert_eq!(v.connection().token_status().method, "approle");
    let debug = format!("{:?}", v.connection());
    assert!(
        debug.contains("\"admin/team-a\"") && debug.contains("\"approle-prod\""),
        "namespace and auth mount: {debug}"
    );
    let legacy = vault_of(&orders.destinations[1]);
    assert_eq!(legacy.kv_version(), KvVersion::V1);
    assert_eq!(legacy.label(), "vault:kv1/motherduck/orders (kv v1)");
    assert_eq!(legacy.connection().token_status().method, "token");
    let a = aws_of(&orders.destinations[2]);
    assert_eq!(a.label(), "aws:eu-central-1/prod/motherduck/orders");
    assert_eq!(a.store(), "aws");
    assert_eq!(a.secret_name(), "prod/motherduck/orders");
    let debug = format!("{a:?}");
    for part in [
        "create_if_missing: true",
        "kms_key_id: Some(\"alias/motherduck\")",
        "lock_ttl: 90s",
        "endpoint_url: None",
    ] {
        assert!(debug.contains(part), "{part} in {debug}");
    }
    assert_eq!(
        orders.lock.label(),
        orders.destinations[0].label(),
        "by default the lock is on the first destination"
    );

    let reports = &config.policies[1];
    let k8s = vault_of(&reports.destinations[1]);
    assert_eq!(k8s.mount(), "secret", "the default mount");
    assert_eq!(k8s.lease_ttl(), crate::stores::vault::DEFAULT_LEASE_TTL);
    let debug = format!("{:?}", k8s.connection());
    assert!(
        debug.contains("mount: \"kubernetes\"") && debug.contains("role: \"rotator\""),
        "{debug}"
    );
    assert!(
        debug.contains(&scratch.dir.join("sa.jwt").display().to_string()),
        "a relative jwt_file resolves against the configuration's folder: {debug}"
    );
    let Destination::File(lock) = &reports.lock else {
        panic!(
            "expected the lock on the file store, got {:?}",
            reports.lock
        );
    };
    assert_eq!(lock.path(), scratch.dir.join("store/reports.json"));

    let etl = &config.policies[2];
    let moto = aws_of(&etl.destinations[0]);
    let debug = format!("{moto:?}");
    for part in [
        "region: \"us-east-1\"",
        "endpoint_url: Some(\"http://127.0.0.1:5000\")",
        "create_if_missing: false",
        "kms_key_id: None",
        "lock_ttl: 600s",
    ] {
        assert!(debug.contains(part), "{part} in {debug}");
    }
    assert_eq!(
        etl.lock.label(),
        moto.label(),
        "a lock on the policy's own destination"
    );

    // One connection per used Vault store, in store-name order; `unused`
    // has no destination, so no token to keep alive.
    let addresses: Vec<&str> = config
        .vault_connections
        .iter()
        .map(VaultConnection::address)
        .collect();
    assert_eq!(
        addresses,
        [
            "https://vault.internal",
            "http://127.0.0.1:8200",
            "https://vault.example.com:8200"
        ]
    );

    let shown = format!("{config:?}");
    for secret in [
        VAULT_TOKEN,
        ROLE_ID,
        SECRET_ID,
        "kubernetes-service-account-jwt",
    ] {
        assert!(!shown.contains(secret), "Debug shows `{secret}`");
    }
}

#[test]
fn destinations_on_one_store_share_its_connection() {
    let config = valid(STORES);
    let orders = vault_of(&config.policies[0].destinations[1]);
    let reports = vault_of(&config.policies[1].destinations[0]);
    // Equal addresses alone would not prove it: the token state is shared.
    assert_eq!(
        orders.connection().address(),
        reports.connection().address()
    );
    assert!(
        config
            .vault_connections
            .iter()
            .any(|c| format!("{c:?}") == format!("{:?}", orders.connection())),
        "the store's connection is exposed"
    );
}

#[test]
fn vault_and_aws_secrets_are_not_read_without_resolving() {
    // Every file and variable named here is missing, and the JWT is the
    // default path of a pod: a linting machine has none of them.
    let src = r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.vault]
type = "vault"
address = "https://vault.example.com"
auth = { method = "approle", role_id = { file = "/nonexistent/role-id" }, secret_id = { env = "UNSET_SECRET_ID" } }
ca_file = "/nonexistent/ca.pem"
client_cert = "/nonexistent/client.crt"
client_key = "/nonexistent/client.key"
[stores.token]
type = "vault"
address = "https://vault.example.com"
kv_version = 1
auth = { method = "token", token = { credential = "vault_token" } }
[stores.k8s]
type = "vault"
address = "https://vault.example.com"
auth = { method = "kubernetes", role = "rotator" }
[stores.aws]
type = "aws"
region = "us-east-1"
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [{ store = "vault", path = "a" }, { store = "token", path = "b" }, { store = "k8s", path = "c" }]
lock = { store = "aws", path = "app" }
"#;
    let scratch = Scratch::new();
    let config = parse_in(&scratch, src, &FakeEnv::new(), false)
        .unwrap_or_else(|e| panic!("expected a valid configuration, got:\n{e}"));
    assert_eq!(config.vault_connections.len(), 3);
    assert_eq!(config.policies[0].destinations.len(), 3);

    let errors = parse_in(&scratch, src, &FakeEnv::new(), true)
        .expect_err("the same text fails when the secrets are read");
    let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "stores.vault.auth.role_id.file",
            "stores.vault.auth.secret_id.env",
            "stores.vault.ca_file",
            "stores.token.auth.token.credential",
            "stores.k8s.auth.jwt_file",
        ],
        "{errors}"
    );
    assert!(
        errors.0[4]
            .reason
            .contains("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        "{errors}"
    );
}

#[test]
fn vault_credentials_never_appear_in_errors() {
    let scratch = Scratch::new();
    for auth in [
        format!("{{ method = \"token\", token = \"{JWT}\" }}"),
        format!("{{ method = \"token\", token = {{ env = \"{JWT}\" }} }}"),
        format!(
            "{{ method = \"approle\", role_id = \"{JWT}\", secret_id = {{ env = \"VAULT_SECRET_ID\" }} }}"
        ),
        format!(
            "{{ method = \"approle\", role_id = {{ file = \"vault-role-id\" }}, secret_id = \"{JWT}\" }}"
        ),
    ] {
        let src = format!(
            "motherduck = {{ admin_token = {{ env = \"MD_TOKEN\" }} }}\n\
             [stores.v]\n\
             type = \"vault\"\n\
             address = \"https://vault.example.com\"\n\
             auth = {auth}\n"
        );
        for resolve in [true, false] {
            let errors = parse_in(&scratch, &src, &FakeEnv::new(), resolve)
                .expect_err("a pasted secret is refused");
            let shown = format!("{errors} {errors:?}");
            assert!(!shown.contains("eyJ"), "the secret is echoed: {shown}");
            assert_eq!(errors.0.len(), 1, "{errors}");
            assert!(errors.0[0].field.starts_with("stores.v.auth."), "{errors}");
        }
    }
    // Credentials in the address are not repeated either.
    let errors = parse_in(
        &scratch,
        "motherduck = { admin_token = { env = \"MD_TOKEN\" } }\n\
         stores.v = { type = \"vault\", address = \"https://admin:hunter2@vault.example.com\", auth = { method = \"token\", token = { env = \"MD_TOKEN\" } } }\n",
        &FakeEnv::new(),
        true,
    )
    .expect_err("credentials in the address are refused");
    let shown = format!("{errors} {errors:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(errors.0[0].field, "stores.v.address");
}

#[test]
fn vault_credential_variables_are_kept_from_commands() {
    let src = r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.v = { type = "vault", address = "https://vault.example.com", auth = { method = "approle", role_id = { file = "vault-role-id" }, secret_id = { env = "VAULT_SECRET_ID" } } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "v", path = "app" }]
verify = [{ type = "command", command = ["true"], inherit_env = ["HOME", "VAULT_SECRET_ID"] }]
"#;
    let expected = &[(
        "8:74",
        "policy[0].verify[0].inherit_env[1]",
        "`VAULT_SECRET_ID` holds a secret this configuration references",
    )];
    if let Some(report) = check_case(src, &FakeEnv::new(), true, expected) {
        panic!("{report}");
    }
}

#[test]
fn a_lease_ttl_on_a_kv_v1_store_is_warned_about() {
    let config = valid(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
[stores.v1]
type = "vault"
address = "https://vault.example.com"
kv_version = 1
lease_ttl = "5m"
auth = { method = "token", token = { file = "vault.token" } }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [{ store = "local", path = "app.json" }, { store = "v1", path = "app" }]
"#,
    );
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(
        config.warnings[0].ends_with(
            ":7: `stores.v1.lease_ttl`: has no effect: a KV v1 store cannot hold a lock"
        ),
        "{}",
        config.warnings[0]
    );
    assert!(
        matches!(config.policies[0].lock, Destination::File(_)),
        "a KV v1 destination after the first is fine"
    );
}

/// Errors of Vault stores. Each case's store starts on line 2.
#[rustfmt::skip]
const VAULT_ERRORS: &[Case] = &[
    Case {
        name: "vault store without address and auth",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
"#,
        errors: &[("2:1", "stores.v", "missing field `address`")],
    },
    Case {
        name: "unknown field in a vault store",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
adress = "https://vault.example.com"
"#,
        errors: &[("4:1", "stores.v.adress", "unknown field `adress`, expected one of `address`, `namespace`, `kv_version`, `mount`, `auth`, `ca_file`, `client_cert`, `client_key`, `lease_ttl`, `request_timeout`")],
    },
    Case {
        name: "a file store setting in a vault store",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.v = { type = "vault", directory = "store" }
"#,
        errors: &[("2:30", "stores.v.directory", "unknown field `directory`, expected one of `address`")],
    },
    Case {
        name: "kv version as a string",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
kv_version = "2"
auth = { method = "token", token = { env = "MD_TOKEN" } }
"#,
        errors: &[("5:14", "stores.v.kv_version", "invalid type: string \"2\", expected i64")],
    },
    Case {
        name: "unknown auth method",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
auth = { method = "ldap", username = "rotator" }
"#,
        errors: &[("5:19", "stores.v.auth.method", "unknown variant `ldap`, expected one of `token`, `approle`, `kubernetes`")],
    },
    Case {
        name: "unknown field in auth",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
[stores.v.auth]
method = "kubernetes"
role = "rotator"
jwt_path = "/var/run/token"
"#,
        errors: &[("8:1", "stores.v.auth.jwt_path", "unknown field `jwt_path`, expected one of `method`, `mount`, `token`, `role_id`, `secret_id`, `role`, `jwt_file`")],
    },
    Case {
        name: "unknown field in a vault secret reference",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { path = "vault.token" } }
"#,
        errors: &[("5:38", "stores.v.auth.token.path", "unknown field `path`, expected one of `file`, `env`, `credential`")],
    },
    Case {
        name: "bad vault settings",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "http://vault.example.com:8200"
namespace = "team a"
kv_version = 3
mount = "kv//x"
auth = { method = "token", token = { file = "vault.token" } }
lease_ttl = "500ms"
request_timeout = "0s"
"#,
        errors: &[
            ("4:1", "stores.v.address", "Vault address `http://vault.example.com:8200` uses plain http; use https (http is allowed only for a loopback address)"),
            ("5:1", "stores.v.namespace", "`team a` is not a namespace"),
            ("6:1", "stores.v.kv_version", "`3` is not a KV secrets engine version: use 1 or 2"),
            ("7:1", "stores.v.mount", "mount `kv//x` must not have an empty, `.` or `..` segment"),
            ("9:1", "stores.v.lease_ttl", "must be at least 1s"),
            ("10:1", "stores.v.request_timeout", "must be greater than zero"),
        ],
    },
    Case {
        name: "address not a url, and a missing CA file",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "vault.example.com:8200"
auth = { method = "token", token = { file = "vault.token" } }
ca_file = "missing-ca.pem"
"#,
        errors: &[
            ("4:1", "stores.v.address", "invalid Vault address `vault.example.com:8200`"),
            ("6:1", "stores.v.ca_file", "failed to read CA file `"),
        ],
    },
    Case {
        name: "vault address with an unsupported scheme",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.v = { type = "vault", address = "ftp://vault.example.com", auth = { method = "token", token = { file = "vault.token" } } }
"#,
        errors: &[("2:30", "stores.v.address", "unsupported scheme `ftp`")],
    },
    Case {
        name: "CA file without a certificate",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.v]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
ca_file = "not-a-cert.pem"
"#,
        errors: &[("6:1", "stores.v.ca_file", "not-a-cert.pem` is not usable")],
    },
    Case {
        name: "client certificate without key, and key without certificate",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_cert = "client.crt"
[stores.b]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_key = "client.key"
"#,
        errors: &[
            ("6:1", "stores.a.client_cert", "a client certificate needs its key: set `client_key` too (both or neither)"),
            ("11:1", "stores.b.client_key", "a client key needs its certificate: set `client_cert` too (both or neither)"),
        ],
    },
    Case {
        name: "client certificate and key missing or unusable",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_cert = "missing.crt"
client_key = "client.key"
[stores.b]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_cert = "client.crt"
client_key = "missing.key"
[stores.c]
type = "vault"
address = "https://vault.example.com"
auth = { method = "token", token = { file = "vault.token" } }
client_cert = "client.crt"
client_key = "client.key"
"#,
        errors: &[
            ("6:1", "stores.a.client_cert", "failed to read client certificate `"),
            ("13:1", "stores.b.client_key", "failed to read client key `"),
            ("18:1", "stores.c.client_cert", "client certificate and key `"),
        ],
    },
    Case {
        name: "token auth: missing token, inline token, foreign keys",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "vault", address = "https://vault.example.com", auth = { method = "token" } }
stores.b = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = "hvs.inline" } }
stores.c = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = { file = "vault.token" }, role = "x" } }
"#,
        errors: &[
            ("2:76", "stores.a.auth.token", "method `token` needs `token`"),
            ("3:96", "stores.b.auth.token", "inline secrets are not allowed"),
            ("4:130", "stores.c.auth.role", "does not apply to method `token`, which takes `token`"),
        ],
    },
    Case {
        name: "token auth: unreadable and broken token files",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = { file = "missing.token" } } }
stores.b = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = { file = "broken.token" } } }
"#,
        errors: &[
            ("2:106", "stores.a.auth.token.file", "missing.token`: No such file or directory"),
            ("3:104", "stores.b.auth.token", "the Vault token contains characters not allowed in an HTTP header"),
        ],
    },
    Case {
        name: "approle auth: missing ids, bad mount, unset variable, foreign keys",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "vault"
address = "https://vault.example.com"
auth = { method = "approle", mount = "", role_id = { file = "vault-role-id" } }
[stores.b]
type = "vault"
address = "https://vault.example.com"
auth = { method = "approle", role_id = { env = "UNSET_ROLE_ID" }, secret_id = { env = "VAULT_SECRET_ID" }, jwt_file = "sa.jwt" }
"#,
        errors: &[
            ("5:8", "stores.a.auth.secret_id", "method `approle` needs `secret_id`"),
            ("5:30", "stores.a.auth.mount", "mount `` must not be empty"),
            ("9:42", "stores.b.auth.role_id.env", "environment variable `UNSET_ROLE_ID` is not set or empty"),
            ("9:108", "stores.b.auth.jwt_file", "does not apply to method `approle`, which takes `mount`, `role_id`, `secret_id`"),
        ],
    },
    Case {
        name: "kubernetes auth: missing role, bad role, missing and empty jwt files, foreign keys",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "vault", address = "https://vault.example.com", auth = { method = "kubernetes", jwt_file = "sa.jwt" } }
stores.b = { type = "vault", address = "https://vault.example.com", auth = { method = "kubernetes", role = "my role", jwt_file = "missing.jwt" } }
stores.c = { type = "vault", address = "https://vault.example.com", auth = { method = "kubernetes", role = "r", jwt_file = "", token = { env = "MD_TOKEN" } } }
"#,
        errors: &[
            ("2:76", "stores.a.auth.role", "method `kubernetes` needs `role`"),
            ("3:101", "stores.b.auth.role", "`my role` is not a role name: it must be non-empty, without whitespace or `/`"),
            ("3:119", "stores.b.auth.jwt_file", "missing.jwt`: No such file or directory (os error 2) (the service-account token Kubernetes auth logs in with)"),
            ("4:113", "stores.c.auth.jwt_file", "the JWT file path is empty"),
            ("4:136", "stores.c.auth.token", "does not apply to method `kubernetes`, which takes `mount`, `role`, `jwt_file`"),
        ],
    },
];

#[test]
fn vault_store_errors_name_the_place_and_field() {
    run_cases(VAULT_ERRORS, &FakeEnv::new(), true);
}

/// Errors of AWS stores.
#[rustfmt::skip]
const AWS_ERRORS: &[Case] = &[
    Case {
        name: "aws store without region",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "aws", create_if_missing = true }
"#,
        errors: &[("2:12", "stores.a", "missing field `region`")],
    },
    Case {
        name: "unknown field in an aws store",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "aws"
region = "us-east-1"
endpoint = "https://vpce.example.com"
"#,
        errors: &[("5:1", "stores.a.endpoint", "unknown field `endpoint`, expected one of `region`, `endpoint_url`, `create_if_missing`, `kms_key_id`, `lock_ttl`")],
    },
    Case {
        name: "create_if_missing as a string",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "aws"
region = "us-east-1"
create_if_missing = "yes"
"#,
        errors: &[("5:21", "stores.a.create_if_missing", "invalid type: string \"yes\", expected a boolean")],
    },
    Case {
        name: "bad region and endpoint together",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "aws"
region = "EU Central"
endpoint_url = "http://secretsmanager.example.com"
"#,
        errors: &[
            ("4:1", "stores.a.region", "invalid AWS region `EU Central`: expected lowercase letters, digits and dashes, e.g. `us-east-1`"),
            ("5:1", "stores.a.endpoint_url", "AWS endpoint URL `http://secretsmanager.example.com` uses plain http; https is required unless the host is loopback"),
        ],
    },
    Case {
        name: "bad endpoints, kms key and lock ttl",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
[stores.a]
type = "aws"
region = "us-east-1"
endpoint_url = "secretsmanager.example.com"
kms_key_id = "alias/my key"
lock_ttl = "2s"
[stores.b]
type = "aws"
region = ""
endpoint_url = "ftp://127.0.0.1:5000"
kms_key_id = ""
lock_ttl = "ten minutes"
"#,
        errors: &[
            ("5:1", "stores.a.endpoint_url", "invalid AWS endpoint URL `secretsmanager.example.com`"),
            ("6:1", "stores.a.kms_key_id", "`alias/my key` is not a KMS key id"),
            ("7:1", "stores.a.lock_ttl", "must be at least 3s (the holder renews its lease every third of it)"),
            ("10:1", "stores.b.region", "invalid AWS region ``"),
            ("11:1", "stores.b.endpoint_url", "unsupported scheme `ftp`"),
            ("12:1", "stores.b.kms_key_id", "`` is not a KMS key id"),
            ("13:1", "stores.b.lock_ttl", "invalid duration `ten minutes`"),
        ],
    },
];

#[test]
fn aws_store_errors_name_the_place_and_field() {
    run_cases(AWS_ERRORS, &FakeEnv::new(), true);
}

/// The stores the destination and lock cases below use, lines 1-5; their
/// first policy starts on line 6.
macro_rules! with_stores {
    ($rest:literal) => {
        concat!(
            r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.local = { type = "file", directory = "store" }
stores.kv = { type = "vault", address = "https://vault.example.com", auth = { method = "token", token = { file = "vault.token" } } }
stores.kv1 = { type = "vault", address = "https://vault.example.com", kv_version = 1, mount = "kv1", auth = { method = "token", token = { file = "vault.token" } } }
stores.aws = { type = "aws", region = "us-east-1" }"#,
            $rest
        )
    };
}

/// Errors of Vault and AWS destinations, of locks and of places two
/// destinations would share.
#[rustfmt::skip]
const DESTINATION_ERRORS: &[Case] = &[
    Case {
        name: "vault paths",
        toml: with_stores!(r#"
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [
  { store = "kv", path = "/app" },
  { store = "kv", path = "app/" },
  { store = "kv", path = "a//b" },
  { store = "kv", path = "a/../b" },
  { store = "kv", path = "my app" },
  { store = "kv", path = "" },
  { store = "kv", path = "app.pending" },
  { store = "kv", path = "app.lock" },
  { store = "kv1", path = "app.previous" },
  { store = "kv", path = "app", bare_token_file = "app.token" },
]
"#),
        errors: &[
            ("11:19", "policy[0].destinations[0].path", "Vault KV path `/app` must not start or end with `/`"),
            ("12:19", "policy[0].destinations[1].path", "Vault KV path `app/` must not start or end with `/`"),
            ("13:19", "policy[0].destinations[2].path", "Vault KV path `a//b` must not have an empty, `.` or `..` segment"),
            ("14:19", "policy[0].destinations[3].path", "Vault KV path `a/../b` must not have an empty, `.` or `..` segment"),
            ("15:19", "policy[0].destinations[4].path", "Vault KV path `my app` must not contain whitespace or any of `? # * +`"),
            ("16:19", "policy[0].destinations[5].path", "Vault KV path `` must not be empty"),
            ("17:19", "policy[0].destinations[6].path", "Vault KV path `app.pending` must not end with `.pending`: the Vault store keeps `<path>.pending`, `<path>.lock` (KV v2) and `<path>.previous` (KV v1) next to each destination"),
            ("18:19", "policy[0].destinations[7].path", "must not end with `.lock`"),
            ("19:20", "policy[0].destinations[8].path", "must not end with `.previous`"),
            ("20:33", "policy[0].destinations[9].bare_token_file", "applies to file stores only, and store `kv` is of type `vault`"),
        ],
    },
    Case {
        name: "aws secret names",
        toml: with_stores!(r#"
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [
  { store = "aws", path = "" },
  { store = "aws", path = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf" },
  { store = "aws", path = "my app" },
  { store = "aws", path = "app#1" },
  { store = "aws", path = "app.journal" },
  { store = "aws", path = "app.lock" },
  { store = "aws", path = "app", bare_token_file = "app.token" },
]
"#),
        errors: &[
            ("11:20", "policy[0].destinations[0].path", "secret name `` must not be empty"),
            ("12:20", "policy[0].destinations[1].path", "secret name `arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf` is an ARN: give the secret's name, after which the store names its companion secrets"),
            ("13:20", "policy[0].destinations[2].path", "secret name `my app` contains ` `, which Secrets Manager does not allow (letters, digits and `/_+=.@-` only)"),
            ("14:20", "policy[0].destinations[3].path", "secret name `app#1` contains `#`"),
            ("15:20", "policy[0].destinations[4].path", "secret name `app.journal` must not end with `.journal`: the AWS store keeps `<name>.journal` and `<name>.lock` next to each destination"),
            ("16:20", "policy[0].destinations[5].path", "must not end with `.lock`"),
            ("17:34", "policy[0].destinations[6].bare_token_file", "applies to file stores only, and store `aws` is of type `aws`"),
        ],
    },
    Case {
        name: "a destination on a store with errors is not checked further",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.v = { type = "vault", address = "http://vault.example.com", auth = { method = "token", token = { file = "vault.token" } } }
stores.x = { type = "consul" }
stores.a = { type = "aws", region = "us-east-1", lock_ttl = "1s" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "v", path = "app" }, { store = "x", path = "app" }, { store = "a", path = "app" }, { store = "v", path = "/bad" }]
"#,
        errors: &[
            ("2:30", "stores.v.address", "uses plain http"),
            ("3:21", "stores.x.type", "unknown variant `consul`"),
            ("4:50", "stores.a.lock_ttl", "must be at least 3s"),
            ("9:125", "policy[0].destinations[3].path", "Vault KV path `/bad` must not start or end with `/`"),
        ],
    },
    Case {
        name: "the default lock on a KV v1 destination",
        toml: with_stores!(r#"
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "app" }, { store = "local", path = "app.json" }]
"#),
        errors: &[("10:19", "policy[0].destinations[0].store", "the policy's lock would be on its first destination, but store `kv1` is a Vault KV v1 mount, which has no check-and-set and cannot hold a lock; set `lock = { store = \"...\", path = \"...\" }` on the policy to put it on a file, KV v2 or AWS store")],
    },
    Case {
        name: "an explicit lock on a KV v1 destination, an unknown store, a bad path",
        toml: with_stores!(r#"
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "a" }]
lock = { store = "kv1", path = "a" }
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "b" }]
lock = { store = "nowhere", path = "b" }
[[policy]]
name = "c"
service_account = "svc_c"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "c" }]
lock = { store = "local", path = "../c.json" }
"#),
        errors: &[
            ("11:10", "policy[0].lock.store", "store `kv1` is a Vault KV v1 mount, which has no check-and-set and cannot hold a lock; put the lock on a file, KV v2 or AWS store"),
            ("17:10", "policy[1].lock.store", "no store named `nowhere` (defined: aws, kv, kv1, local)"),
            ("23:27", "policy[2].lock.path", "`../c.json` must be a plain file name inside the store's directory"),
        ],
    },
    Case {
        name: "a lock with a bare token file",
        toml: with_stores!(r#"
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "a" }]
lock = { store = "local", path = "a.json", bare_token_file = "a.token" }
"#),
        errors: &[("11:44", "policy[0].lock.bare_token_file", "unknown field `bare_token_file`, expected `store` or `path`")],
    },
    Case {
        name: "two destinations on one vault secret or one aws secret",
        toml: with_stores!(r#"
stores.kv-again = { type = "vault", address = "https://vault.example.com/", mount = "/secret/", auth = { method = "token", token = { file = "vault.token" } } }
stores.kv1-on-secret = { type = "vault", address = "https://vault.example.com", kv_version = 1, auth = { method = "token", token = { file = "vault.token" } } }
stores.aws-vpce = { type = "aws", region = "us-east-1", endpoint_url = "https://vpce-1.secretsmanager.us-east-1.vpce.amazonaws.com" }
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "app" }, { store = "aws", path = "app" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "b.json" }, { store = "kv-again", path = "app" }, { store = "aws-vpce", path = "app" }]
lock = { store = "local", path = "b.json" }
[[policy]]
name = "c"
service_account = "svc_c"
schedule = { interval = "1d" }
destinations = [{ store = "local", path = "c.json" }, { store = "kv1-on-secret", path = "app" }]
"#),
        errors: &[
            ("18:77", "policy[1].destinations[1].path", "`vault:secret/app` is already written by policy `a`"),
            ("18:115", "policy[1].destinations[2].path", "`aws:us-east-1/app` is already written by policy `a`"),
            ("24:82", "policy[2].destinations[1].path", "`vault:secret/app` is already written by policy `a`"),
        ],
    },
    Case {
        name: "a lock on another policy's destination, and the other way round",
        toml: with_stores!(r#"
[[policy]]
name = "a"
service_account = "svc_a"
schedule = { interval = "1d" }
destinations = [{ store = "kv", path = "a" }]
[[policy]]
name = "b"
service_account = "svc_b"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "b" }]
lock = { store = "kv", path = "a" }
[[policy]]
name = "c"
service_account = "svc_c"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "c" }]
lock = { store = "aws", path = "shared-lock" }
[[policy]]
name = "d"
service_account = "svc_d"
schedule = { interval = "1d" }
destinations = [{ store = "aws", path = "shared-lock" }]
[[policy]]
name = "e"
service_account = "svc_e"
schedule = { interval = "1d" }
destinations = [{ store = "kv1", path = "e" }]
lock = { store = "aws", path = "shared-lock" }
"#),
        errors: &[
            ("16:24", "policy[1].lock.path", "the lock would be kept at `vault:secret/a.lock`, which is already used by policy `a` as a sibling secret of its record `vault:secret/a`"),
            ("27:34", "policy[3].destinations[0].path", "the aws store keeps `aws:us-east-1/shared-lock.lock` next to this record, but policy `c` already keeps its lock there"),
            ("33:25", "policy[4].lock.path", "the lock would be kept at `aws:us-east-1/shared-lock.lock`, which is already used by policy `c` for its lock"),
        ],
    },
];

#[test]
fn destination_and_lock_errors_name_the_place_and_field() {
    run_cases(DESTINATION_ERRORS, &FakeEnv::new(), true);
}

#[test]
fn the_same_path_on_different_servers_namespaces_or_regions_is_fine() {
    let config = valid(
        r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.primary = { type = "vault", address = "https://vault-1.example.com", auth = { method = "token", token = { file = "vault.token" } } }
stores.dr = { type = "vault", address = "https://vault-2.example.com", auth = { method = "token", token = { file = "vault.token" } } }
stores.team-b = { type = "vault", address = "https://vault-1.example.com", namespace = "team-b", auth = { method = "token", token = { file = "vault.token" } } }
stores.us = { type = "aws", region = "us-east-1" }
stores.eu = { type = "aws", region = "eu-west-1" }
[[policy]]
name = "app"
service_account = "svc_app"
schedule = { interval = "1d" }
verify = [{ type = "motherduck" }]
destinations = [
  { store = "primary", path = "app" },
  { store = "dr", path = "app" },
  { store = "team-b", path = "app" },
  { store = "us", path = "app" },
  { store = "eu", path = "app" },
]
"#,
    );
    assert_eq!(config.policies[0].destinations.len(), 5);
    assert_eq!(config.vault_connections.len(), 3);
}

#[rustfmt::skip]
const STORE_TABLE_ERRORS: &[Case] = &[
    Case {
        name: "store type not a string",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = 1 }
"#,
        errors: &[("2:21", "stores.a.type", "invalid type: integer, expected one of `file`, `vault`, `aws`")],
    },
    Case {
        name: "store not a table",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = "vault"
"#,
        errors: &[("2:8", "stores.a", "a store is a table with a `type`")],
    },
    Case {
        name: "errors in several stores are all reported",
        toml: r#"
motherduck = { admin_token = { env = "MD_TOKEN" } }
stores.a = { type = "aws" }
stores.b = { type = "file", dir = "x" }
stores.c = { type = "vault", address = "https://v", auth = { method = "token" } }
"#,
        errors: &[
            ("2:12", "stores.a", "missing field `region`"),
            ("3:29", "stores.b.dir", "unknown field `dir`"),
            ("4:60", "stores.c.auth.token", "method `token` needs `token`"),
        ],
    },
];

#[test]
fn store_table_errors_name_the_place_and_field() {
    run_cases(STORE_TABLE_ERRORS, &FakeEnv::new(), true);
}
