//! Configuration validation, data-driven: every case is a TOML text fed to
//! the pure [`parse_with`], with a fake environment and a scratch directory
//! holding the secret files the cases refer to. The expectation is the
//! rendered result: every error in order, as `validate` prints it but
//! without the file (``3:1: `policy[0].name`: reason``), or a summary of the
//! valid configuration with its warnings (see [`render`]).
//!
//! The cases are data files, a directory per section of the configuration
//! under `data/` and a test per directory below ([`check_cases`]): a case is
//! `<case>.toml`, the whole text parsed, and `<case>.expected`, its
//! rendering; a case that is parsed without reading secrets, as `validate`
//! does on a machine that does not hold them, is named
//! `<case>.unresolved.toml`. Notes about a case, such as the bug a
//! regression case pins, are comments at the end of its TOML, where they
//! move no line number. Adding a case is adding its `.toml` and running
//! `UPDATE_EXPECT=1 cargo test --lib config`, which writes (or rewrites)
//! the `.expected` files; review each one before committing it.
//!
//! The few tests that look at something a rendering cannot show (what
//! `Debug` hides, several environments or modes for one text) keep a body
//! of their own, in `secrets`, `stores` and `valid`, and below.

mod secrets;
mod stores;
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
use crate::stores::vault::KvVersion;
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
        for secret in [
            "admin.token",
            "empty.token",
            "broken.token",
            "probe.key",
            "credentials/md_admin",
            "vault.token",
            "vault-role-id",
            "sa.jwt",
            "client.key",
        ] {
            use std::os::unix::fs::PermissionsExt as _;
            let owner_only = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(dir.join(secret), owner_only).unwrap();
        }
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
    expect.assert_eq(&rendered(env, resolve, src));
}

/// The rendering of `src` parsed in a fresh scratch directory.
fn rendered(env: &FakeEnv, resolve: bool, src: &str) -> String {
    let scratch = Scratch::new();
    let result = parse_in(&scratch, src, env, resolve);
    render(&scratch, &result)
}

/// Runs the cases of `data/<section>/`, in file name order: each
/// `<case>.toml` is parsed as [`check`] does and its rendering compared,
/// byte for byte, with `<case>.expected` beside it. A case whose name ends
/// in `.unresolved` (`<case>.unresolved.toml`) is parsed without reading
/// secrets, as [`check_unresolved`] does. Every mismatch is reported, not
/// just the first; with `UPDATE_EXPECT=1` the `.expected` files are
/// rewritten instead (a new case can start as a lone `.toml`).
fn check_cases(section: &str) {
    let shown = Path::new("src/config/tests/data").join(section);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(&shown);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut cases = 0;
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => {}
            Some("expected") if path.with_extension("toml").exists() => continue,
            _ => {
                failures.push(format!(
                    "{name}: not a case (a case is <case>.toml and <case>.expected)\n"
                ));
                continue;
            }
        }
        cases += 1;
        let src = std::fs::read_to_string(path).unwrap();
        let resolve = !path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .ends_with(".unresolved");
        let actual = rendered(&FakeEnv::new(), resolve, &src);
        let expected_path = path.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path).ok();
        if expected.as_deref() == Some(actual.as_str()) {
            continue;
        }
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            println!("updated {}", expected_path.display());
            continue;
        }
        failures.push(match expected {
            Some(expected) => format!(
                "{name}: the rendering differs from {} (-expected +actual):\n{}",
                expected_path.file_name().unwrap().to_string_lossy(),
                line_diff(&expected, &actual)
            ),
            None => format!(
                "{name}: {} is missing; the rendering is:\n{actual}",
                expected_path.file_name().unwrap().to_string_lossy(),
            ),
        });
    }
    assert!(cases > 0, "no cases in {}", shown.display());
    assert!(
        failures.is_empty(),
        "{} problems in {} ({cases} cases); `UPDATE_EXPECT=1 cargo test --lib config` rewrites the .expected files:\n\n{}",
        failures.len(),
        shown.display(),
        failures.join("\n")
    );
}

/// A line diff of `expected` and `actual`: each line prefixed with ` `
/// (in both), `-` (only expected) or `+` (only actual).
fn line_diff(expected: &str, actual: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    // lcs[i][j]: the length of the longest common subsequence of a[i..]
    // and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            writeln!(out, "  {}", a[i]).unwrap();
            (i, j) = (i + 1, j + 1);
        } else if j == b.len() || (i < a.len() && lcs[i + 1][j] >= lcs[i][j + 1]) {
            writeln!(out, "- {}", a[i]).unwrap();
            i += 1;
        } else {
            writeln!(out, "+ {}", b[j]).unwrap();
            j += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out.push_str("(the two differ in their final line break)\n");
    }
    out
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
    for r in &p.reload {
        writeln!(
            out,
            "  reload {}: {}, on_failure {}, debounce {}, min_interval {}",
            r.action.kind(),
            r.action.label(),
            r.on_failure.as_str(),
            d(r.debounce),
            d(r.min_interval)
        )?;
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
            "file store {}: {}, bare_token_file {}{}",
            f.store,
            f.path().display(),
            f.bare_token_file.as_deref().unwrap_or("none"),
            f.env_file
                .as_deref()
                .map_or(String::new(), |e| format!(", env_file {e}"))
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

/// Errors that serde or the TOML parser reports: one a case, since they
/// stop the parse; and a file with a problem in every section, none hiding
/// another.
#[test]
fn parse_cases() {
    check_cases("parse");
}

/// Errors of the `[motherduck]` and `[daemon]` sections and of secrets.
#[test]
fn settings_cases() {
    check_cases("settings");
}

/// Secret references whose form is checked even without reading them.
#[test]
fn secrets_cases() {
    check_cases("secrets");
}

/// Errors of `[[policy]]`: names, token settings, schedules, windows,
/// destinations on file stores, and retries.
#[test]
fn policy_cases() {
    check_cases("policy");
}

/// Errors of verification hooks (`[[policy.verify]]`). A hook's table is
/// read on its own, so the rest of the file is still checked.
#[test]
fn hooks_cases() {
    check_cases("hooks");
}

/// Reload actions (`[[policy.reload]]`): each kind, and the errors of
/// each, at the key they are about.
#[test]
fn reload_cases() {
    check_cases("reload");
}

/// Vault and AWS stores: their errors, and the connections and
/// destinations they become.
#[test]
fn stores_cases() {
    check_cases("stores");
}

/// Destinations and locks on Vault and AWS stores, and the places two
/// destinations must not share.
#[test]
fn destinations_cases() {
    check_cases("destinations");
}

/// Valid configurations, the validated values they become, and their
/// warnings.
#[test]
fn valid_cases() {
    check_cases("valid");
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
