//! Configuration: TOML → validated types, in two stages.
//!
//! [`raw`] is what serde reads (unknown fields rejected); [`load`] turns it
//! into a [`Config`] of validated types, collecting every problem with the
//! file, line, column and field it concerns. Secrets are accepted only by
//! reference (a file, an environment variable, or a systemd credential) and
//! are resolved here, so a missing token file is a configuration error, found
//! before any network call.

pub mod raw;
mod span;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::*;
use span::{FieldPath, SourceMap};

use crate::motherduck::{self, TokenType};
use crate::rotation::plan::RetryPolicy;
use crate::schedule::{Cadence, ScheduleSpec};
use crate::secret::{ExposeSecret, SecretString, read_secret_file};
use crate::stores::Destination;
use crate::stores::file::FileDestination;
use crate::verify::HookSpec;

/// The validated configuration. Built completely before use, so a reload
/// either swaps in a whole new one or keeps the old.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    pub motherduck: MotherDuckSettings,
    pub daemon: DaemonSettings,
    pub policies: Vec<Policy>,
    /// Legal but risky choices, reported by `validate` and at start.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct MotherDuckSettings {
    pub api_url: String,
    pub admin_token: SecretString,
    /// The environment variable the admin token came from, if any, so
    /// verification commands do not inherit it.
    pub admin_token_env: Option<String>,
    pub request_timeout: Duration,
    pub max_retries: u32,
    pub rate_limit_per_second: NonZeroU32,
}

impl MotherDuckSettings {
    /// The client configuration these settings describe.
    pub fn client_config(&self) -> motherduck::ClientConfig {
        let mut c = motherduck::ClientConfig::new(self.api_url.clone(), self.admin_token.clone());
        c.request_timeout = self.request_timeout;
        c.max_retries = self.max_retries;
        c.rate_limit_per_second = self.rate_limit_per_second;
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`, acks).
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    /// Policies rotating at the same time, at most.
    pub rotation_concurrency: NonZeroUsize,
    /// How often the orphan sweep runs (it also runs at start).
    pub sweep_interval: Duration,
    /// Tokens younger than this are never treated as orphans.
    pub orphan_min_age: Duration,
    /// How long in-flight rotations get to reach a safe point on shutdown.
    pub shutdown_timeout: Duration,
    /// How soon to look again when another replica holds a policy's lock.
    pub lock_retry_interval: Duration,
    /// Names this replica in lock files and logs.
    pub instance_id: String,
}

/// One rotation policy, validated.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub service_account: String,
    pub token_type: TokenType,
    /// `None`: tokens never expire.
    pub token_ttl: Option<Duration>,
    pub token_name_prefix: String,
    pub schedule: ScheduleSpec,
    /// How long the old token stays valid after the new one is verified.
    pub overlap: Duration,
    pub hooks: Vec<HookSpec>,
    pub destinations: Vec<Destination>,
    pub retry: RetryPolicy,
}

impl Policy {
    /// The token name for a rotation: `<prefix>.<policy>.<rotation id>`.
    /// Dots are not allowed in prefixes or policy names, so the name parses
    /// back unambiguously; orphans are recognised by it.
    pub fn token_name(&self, rotation_id: &str) -> String {
        format!("{}{rotation_id}", self.token_name_stem())
    }

    /// `<prefix>.<policy>.`, the start of every token name of this policy.
    pub fn token_name_stem(&self) -> String {
        format!("{}.{}.", self.token_name_prefix, self.name)
    }

    /// The rotation id in a token name of this policy, if it is one.
    pub fn rotation_id_of<'a>(&self, token_name: &'a str) -> Option<&'a str> {
        let stem = self.token_name_stem();
        token_name
            .strip_prefix(stem.as_str())
            .filter(|r| !r.is_empty() && !r.contains('.'))
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the file itself could not be read.
    pub line: usize,
    pub column: usize,
    /// The field, e.g. `policy[0].schedule.cron`; empty for syntax errors.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the problem is with the file as a whole (it could not be
        // read), so there is no place in it to name.
        if self.line == 0 {
            write!(f, "{}: ", self.file.display())?;
        } else {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, "`{}`: ", self.field)?;
        }
        f.write_str(&self.reason)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where secrets by reference are looked up; injectable for tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Reads and validates the configuration file at `path`.
///
/// # Errors
/// Every problem found, each naming the file, line, column, field and
/// reason.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, LoadOptions::default())
}

/// How [`load_with`] treats secret references.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Read every referenced secret. Off for linting a configuration on a
    /// machine that does not hold the secrets: references are checked for
    /// form only and the config carries placeholders.
    pub resolve_secrets: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            resolve_secrets: true,
        }
    }
}

/// [`load`] with options.
///
/// # Errors
/// Every problem found.
pub fn load_with(path: &Path, opts: LoadOptions) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            reason: format!("failed to read the configuration file: {e}"),
        }])
    })?;
    parse_with(path, &src, &ProcessEnv, opts)
}

/// Validates configuration text; `path` is for messages and for resolving
/// relative paths (against its directory).
///
/// # Errors
/// Every problem found.
pub fn parse(path: &Path, src: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
    parse_with(path, src, env, LoadOptions::default())
}

/// [`parse`] with options.
///
/// # Errors
/// Every problem found.
pub fn parse_with(
    path: &Path,
    src: &str,
    env: &dyn Env,
    opts: LoadOptions,
) -> Result<Config, ConfigErrors> {
    let map = SourceMap::new(src);
    let raw: RawConfig = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            let reason = e.message().trim().to_owned();
            let mut span = e.span().unwrap_or(0..0);
            // An empty span is toml's way of pointing at the whole document
            // (a missing top-level table).
            let mut field = if span.is_empty() {
                FieldPath::default()
            } else {
                map.path_at(&span)
            };
            // Serde places an unknown field at its table (or, for the
            // tagged store and hook tables, at the enclosing array); point
            // at the key itself, where the typo is.
            if let Some((path, key_span)) =
                unknown_field(&reason).and_then(|k| map.find_key(&field, k))
            {
                field = path;
                span = key_span;
            }
            let (line, column) = map.line_col(span.start);
            return Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                field: field.to_string(),
                reason,
            }]));
        }
    };
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut v = Validator {
        file: path.to_path_buf(),
        base,
        map,
        env,
        opts,
        errors: Vec::new(),
        warnings: Vec::new(),
        secret_envs: secret_env_names(&raw),
    };
    let config = v.config(raw);
    if v.errors.is_empty() {
        let mut config = config.expect("no errors means a config was built");
        config.warnings = v.warnings;
        Ok(config)
    } else {
        // Found section by section; reported in the order of the file.
        let mut errors = v.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }
}

struct Validator<'a> {
    file: PathBuf,
    base: PathBuf,
    map: SourceMap<'a>,
    env: &'a dyn Env,
    opts: LoadOptions,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    /// Environment variables the configuration reads secrets from; command
    /// hooks may not inherit them.
    secret_envs: BTreeSet<String>,
}

const DEFAULT_API_URL: &str = "https://api.motherduck.com";

fn root() -> FieldPath {
    FieldPath::default()
}

impl Validator<'_> {
    fn error(&mut self, path: &FieldPath, reason: impl Into<String>) {
        let (line, column) = self
            .map
            .span_of(path)
            .map_or((1, 1), |s| self.map.line_col(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            field: path.to_string(),
            reason: reason.into(),
        });
    }

    fn warn(&mut self, path: &FieldPath, reason: impl Into<String>) {
        let (line, _) = self
            .map
            .span_of(path)
            .map_or((1, 1), |s| self.map.line_col(s.start));
        self.warnings.push(format!(
            "{}:{line}: `{path}`: {}",
            self.file.display(),
            reason.into()
        ));
    }

    /// A humantime duration, or `default` when absent.
    fn duration(&mut self, raw: &Option<String>, path: &FieldPath, default: Duration) -> Duration {
        self.opt_duration(raw, path).unwrap_or(default)
    }

    fn opt_duration(&mut self, raw: &Option<String>, path: &FieldPath) -> Option<Duration> {
        let s = raw.as_ref()?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    path,
                    format!("invalid duration `{s}`: {e} (use e.g. \"90s\", \"15m\", \"7d\")"),
                );
                None
            }
        }
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Resolves a secret reference; the value is never part of an error.
    fn secret(
        &mut self,
        raw: &RawSecret,
        path: &FieldPath,
    ) -> Option<(SecretString, Option<String>)> {
        let r = match raw {
            RawSecret::Inline => {
                self.error(
                    path,
                    "inline secrets are not allowed; reference it with { file = \"...\" }, { env = \"VAR\" } or { credential = \"name\" }",
                );
                return None;
            }
            RawSecret::Ref(r) => r,
        };
        self.secret_ref(r, path)
    }

    /// Resolves a secret reference (or, without `resolve_secrets`, checks
    /// its form). A reference that looks like a pasted token is refused
    /// without being quoted, since then it is the secret itself.
    fn secret_ref(
        &mut self,
        r: &RawSecretRef,
        path: &FieldPath,
    ) -> Option<(SecretString, Option<String>)> {
        let given: Vec<&str> = [
            r.file.as_ref().map(|_| "file"),
            r.env.as_ref().map(|_| "env"),
            r.credential.as_ref().map(|_| "credential"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given.as_slice() {
            [_] => {}
            [] => {
                self.error(
                    path,
                    "a secret reference needs one of `file`, `env` or `credential`",
                );
                return None;
            }
            more => {
                self.error(
                    path,
                    format!(
                        "give exactly one of `file`, `env` or `credential`, not {}",
                        more.iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                );
                return None;
            }
        }
        let pasted = |key: &str| {
            format!(
                "this looks like a token rather than a {key}; never put the secret itself in the configuration (the value is not shown)"
            )
        };
        if let Some(f) = &r.file {
            if f.as_os_str().is_empty() {
                self.error(&path.key("file"), "the secret file path is empty");
                return None;
            }
            if looks_like_token(&f.to_string_lossy()) {
                self.error(&path.key("file"), pasted("file path"));
                return None;
            }
            if !self.opts.resolve_secrets {
                return Some((unresolved(), None));
            }
            let f = self.path(f);
            return match read_secret_file(&f) {
                Ok(s) => Some((s, None)),
                Err(e) => {
                    self.error(&path.key("file"), e.to_string());
                    None
                }
            };
        }
        if let Some(var) = &r.env {
            if looks_like_token(var) {
                self.error(&path.key("env"), pasted("variable name"));
                return None;
            }
            if !valid_env_name(var) {
                self.error(
                    &path.key("env"),
                    format!(
                        "`{var}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
                    ),
                );
                return None;
            }
            if !self.opts.resolve_secrets {
                return Some((unresolved(), Some(var.clone())));
            }
            return match self.env.var(var).map(|v| v.trim().to_owned()) {
                Some(v) if !v.is_empty() => Some((SecretString::from(v), Some(var.clone()))),
                _ => {
                    self.error(
                        &path.key("env"),
                        format!("environment variable `{var}` is not set or empty"),
                    );
                    None
                }
            };
        }
        let name = r.credential.as_deref().unwrap_or_default();
        if looks_like_token(name) {
            self.error(&path.key("credential"), pasted("credential name"));
            return None;
        }
        if !plain_file_name(name) {
            self.error(
                &path.key("credential"),
                format!(
                    "invalid credential name `{name}`: it must be a file name in $CREDENTIALS_DIRECTORY (no `/`, not starting with `.`)"
                ),
            );
            return None;
        }
        if !self.opts.resolve_secrets {
            return Some((unresolved(), None));
        }
        let Some(dir) = self.env.var("CREDENTIALS_DIRECTORY") else {
            self.error(
                &path.key("credential"),
                format!("credential `{name}` needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=); it is not set"),
            );
            return None;
        };
        match read_secret_file(&Path::new(&dir).join(name)) {
            Ok(s) => Some((s, None)),
            Err(e) => {
                self.error(&path.key("credential"), e.to_string());
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        let md = self.motherduck(&raw.motherduck);
        let daemon = self.daemon(&raw.daemon);
        let stores = self.stores(&raw.stores);
        let mut policies = Vec::new();
        let mut names = BTreeSet::new();
        let mut files: BTreeMap<PathBuf, FileClaim> = BTreeMap::new();
        if raw.policies.is_empty() {
            self.warn(
                &root(),
                "no [[policy]] defined; the daemon will have nothing to rotate",
            );
        }
        for (i, p) in raw.policies.iter().enumerate() {
            let path = root().key("policy").index(i);
            if !names.insert(p.name.clone()) {
                self.error(
                    &path.key("name"),
                    format!("duplicate policy name `{}`", p.name),
                );
            }
            if let Some(policy) = self.policy(p, &path, &stores) {
                for (j, d) in policy.destinations.iter().enumerate() {
                    self.claim_files(
                        &mut files,
                        &policy.name,
                        d,
                        &path.key("destinations").index(j),
                    );
                }
                policies.push(policy);
            }
        }
        Some(Config {
            source: self.file.clone(),
            motherduck: md?,
            daemon: daemon?,
            policies,
            warnings: Vec::new(),
        })
    }

    /// Records the files destination `d` of `policy` writes, reporting any
    /// that another destination (of any policy, this one included) already
    /// writes. Besides the record `P` and the bare-token file, the file
    /// store keeps `P.pending`, `P.previous` and `P.lock` next to the record,
    /// so a record named like another record's working file would be
    /// overwritten by that rotation.
    fn claim_files(
        &mut self,
        files: &mut BTreeMap<PathBuf, FileClaim>,
        policy: &str,
        d: &Destination,
        dpath: &FieldPath,
    ) {
        let Destination::File(f) = d;
        let record = f.path();
        let mut wanted = vec![("path", record.clone(), None)];
        for suffix in ["pending", "previous", "lock"] {
            let mut name = record.clone().into_os_string();
            name.push(format!(".{suffix}"));
            wanted.push(("path", PathBuf::from(name), Some(record.clone())));
        }
        if let Some(b) = &f.bare_token_file {
            wanted.push(("bare_token_file", f.directory.join(b), None));
        }
        let mut reported = BTreeSet::new();
        for (field, file, working_file_of) in wanted {
            let reason = match (files.get(&file), &working_file_of) {
                (None, _) => {
                    files.insert(
                        file,
                        FileClaim {
                            policy: policy.to_owned(),
                            working_file_of,
                        },
                    );
                    continue;
                }
                (Some(c), None) => match &c.working_file_of {
                    None => format!(
                        "`{}` is already written by policy `{}`",
                        file.display(),
                        c.policy
                    ),
                    Some(r) => format!(
                        "`{}` is already used by policy `{}` as a working file of its record `{}`",
                        file.display(),
                        c.policy,
                        r.display()
                    ),
                },
                (Some(c), Some(_)) => match &c.working_file_of {
                    None => format!(
                        "the file store keeps `{}` next to this record, but policy `{}` already writes that file",
                        file.display(),
                        c.policy
                    ),
                    // Equal records, reported for the record itself.
                    Some(_) => continue,
                },
            };
            if reported.insert(field) {
                self.error(&dpath.key(field), reason);
            }
        }
    }

    fn motherduck(&mut self, raw: &RawMotherDuck) -> Option<MotherDuckSettings> {
        let path = root().key("motherduck");
        let api_url = raw
            .api_url
            .clone()
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        if let Err(e) = motherduck::validate_base_url(&api_url) {
            self.error(&path.key("api_url"), e.to_string());
        }
        let token = self
            .secret(&raw.admin_token, &path.key("admin_token"))
            .filter(|(t, _)| {
                // The client sends it as `Authorization: Bearer …`; a token
                // that cannot be a header value (a stray line break inside
                // the file) would otherwise fail only at the first request.
                let ok = t
                    .expose_secret()
                    .bytes()
                    .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
                if !ok {
                    self.error(
                        &path.key("admin_token"),
                        "the admin token contains characters not allowed in an HTTP header, such as a line break inside it",
                    );
                }
                ok
            });
        let request_timeout = self.duration(
            &raw.request_timeout,
            &path.key("request_timeout"),
            Duration::from_secs(15),
        );
        if request_timeout.is_zero() {
            self.error(&path.key("request_timeout"), "must be greater than zero");
        }
        let max_retries = raw.max_retries.unwrap_or(4);
        if max_retries > 20 {
            self.error(
                &path.key("max_retries"),
                format!("`{max_retries}` is more than the maximum of 20"),
            );
        }
        let rate = raw.rate_limit_per_second.unwrap_or(10);
        let rate_limit_per_second = NonZeroU32::new(rate).or_else(|| {
            self.error(&path.key("rate_limit_per_second"), "must be at least 1");
            None
        });
        let (admin_token, admin_token_env) = token?;
        Some(MotherDuckSettings {
            api_url,
            admin_token,
            admin_token_env,
            request_timeout,
            max_retries,
            rate_limit_per_second: rate_limit_per_second?,
        })
    }

    fn daemon(&mut self, raw: &RawDaemon) -> Option<DaemonSettings> {
        let path = root().key("daemon");
        let listen_s = raw
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:9464".to_owned());
        let listen = listen_s.parse::<SocketAddr>().map_err(|_| {
            self.error(
                &path.key("listen"),
                format!("`{listen_s}` is not an address like 127.0.0.1:9464"),
            );
        });
        let log_format = match raw.log_format.as_deref().unwrap_or("auto") {
            "auto" => LogFormat::Auto,
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.error(
                    &path.key("log_format"),
                    format!("`{other}` is not one of auto, text, json"),
                );
                LogFormat::Auto
            }
        };
        let conc = raw.rotation_concurrency.unwrap_or(4);
        let rotation_concurrency = NonZeroUsize::new(conc).or_else(|| {
            self.error(&path.key("rotation_concurrency"), "must be at least 1");
            None
        });
        let sweep_interval = self.duration(
            &raw.sweep_interval,
            &path.key("sweep_interval"),
            Duration::from_secs(3600),
        );
        if sweep_interval < Duration::from_secs(1) {
            self.error(&path.key("sweep_interval"), "must be at least 1s");
        }
        let orphan_min_age = self.duration(
            &raw.orphan_min_age,
            &path.key("orphan_min_age"),
            Duration::from_secs(300),
        );
        let shutdown_timeout = self.duration(
            &raw.shutdown_timeout,
            &path.key("shutdown_timeout"),
            Duration::from_secs(30),
        );
        let lock_retry_interval = self.duration(
            &raw.lock_retry_interval,
            &path.key("lock_retry_interval"),
            Duration::from_secs(30),
        );
        if lock_retry_interval.is_zero() {
            self.error(
                &path.key("lock_retry_interval"),
                "must be greater than zero",
            );
        }
        if let Some(id) = &raw.instance_id
            && (id.trim().is_empty() || id.chars().any(char::is_control))
        {
            self.error(
                &path.key("instance_id"),
                format!(
                    "`{}` must be non-empty text without control characters",
                    id.escape_debug()
                ),
            );
        }
        let instance_id = raw.instance_id.clone().unwrap_or_else(default_instance_id);
        Some(DaemonSettings {
            listen: listen.ok()?,
            log_format,
            rotation_concurrency: rotation_concurrency?,
            sweep_interval,
            orphan_min_age,
            shutdown_timeout,
            lock_retry_interval,
            instance_id,
        })
    }

    fn stores(&mut self, raw: &BTreeMap<String, RawStore>) -> BTreeMap<String, StoreDef> {
        let mut out = BTreeMap::new();
        for (name, s) in raw {
            let path = root().key("stores").key(name);
            if !valid_name(name) {
                self.error(
                    &path,
                    format!("store name `{name}` may contain only a-z, 0-9, `_` and `-`"),
                );
            }
            match s {
                RawStore::File(f) => {
                    out.insert(
                        name.clone(),
                        StoreDef::File {
                            directory: self.path(&f.directory),
                        },
                    );
                }
            }
        }
        out
    }

    fn policy(
        &mut self,
        p: &RawPolicy,
        path: &FieldPath,
        stores: &BTreeMap<String, StoreDef>,
    ) -> Option<Policy> {
        let before = self.errors.len();
        if !valid_name(&p.name) || p.name.len() > 64 {
            self.error(
                &path.key("name"),
                format!(
                    "policy name `{}` must be 1-64 characters of a-z, 0-9, `_` and `-`",
                    p.name
                ),
            );
        }
        if let Err(issues) = crate::simulator::validate::username(
            Some(&serde_json::json!(p.service_account)),
            &["service_account"],
        ) {
            // The API's messages read "Username must …"; say "it must …".
            let reasons: Vec<String> = issues
                .into_iter()
                .map(|i| match i.message.strip_prefix("Username ") {
                    Some(rest) => format!("it {rest}"),
                    None => i.message,
                })
                .collect();
            self.error(
                &path.key("service_account"),
                format!(
                    "`{}` is not a valid service account name: {}",
                    p.service_account,
                    reasons.join("; ")
                ),
            );
        }
        let token_type = match p.token_type.as_deref().unwrap_or("read_write") {
            "read_write" => TokenType::ReadWrite,
            "read_scaling" => TokenType::ReadScaling,
            other => {
                self.error(
                    &path.key("token_type"),
                    format!("`{other}` is not one of read_write, read_scaling"),
                );
                TokenType::ReadWrite
            }
        };
        // An invalid TTL is reported once and then treated as absent, so
        // the checks that compare against it do not report follow-on errors.
        let token_ttl = self
            .opt_duration(&p.token_ttl, &path.key("token_ttl"))
            .filter(|ttl| {
                let ok = (300..=31_536_000).contains(&ttl.as_secs()) && ttl.subsec_nanos() == 0;
                if !ok {
                    self.error(
                        &path.key("token_ttl"),
                        format!(
                            "`{}` is outside what MotherDuck accepts (whole seconds from 5m to 365d)",
                            p.token_ttl.as_deref().unwrap_or_default()
                        ),
                    );
                }
                ok
            });
        let prefix = p
            .token_name_prefix
            .clone()
            .unwrap_or_else(|| "rotator".to_owned());
        if prefix.is_empty()
            || prefix.len() > 32
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.error(
                &path.key("token_name_prefix"),
                format!("`{prefix}` must be 1-32 characters of letters, digits, `_` and `-`"),
            );
        }
        let overlap = self.duration(&p.overlap, &path.key("overlap"), Duration::from_secs(300));
        let schedule = self.schedule(p, path, token_ttl, overlap);

        let mut hooks = Vec::new();
        for (i, h) in p.verify.iter().enumerate() {
            if let Some(h) = self.hook(h, &path.key("verify").index(i)) {
                hooks.push(h);
            }
        }
        if p.verify.is_empty() {
            self.warn(
                &path.key("name"),
                format!(
                    "policy `{}` has no verification hook; it relies on the overlap period ({}) alone",
                    p.name,
                    humantime::format_duration(overlap)
                ),
            );
        }

        let mut destinations = Vec::new();
        if p.destinations.is_empty() {
            self.error(
                &path.key("name"),
                "a policy needs at least one entry in `destinations`",
            );
        }
        for (i, d) in p.destinations.iter().enumerate() {
            let dpath = path.key("destinations").index(i);
            match stores.get(&d.store) {
                None => {
                    let known: Vec<&str> = stores.keys().map(String::as_str).collect();
                    self.error(
                        &dpath.key("store"),
                        format!(
                            "no store named `{}` (defined: {})",
                            d.store,
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
                Some(StoreDef::File { directory }) => {
                    if !plain_file_name(&d.path) {
                        self.error(
                            &dpath.key("path"),
                            format!(
                                "`{}` must be a plain file name inside the store's directory",
                                d.path
                            ),
                        );
                    }
                    if let Some(b) = &d.bare_token_file
                        && (!plain_file_name(b) || b == &d.path)
                    {
                        self.error(
                            &dpath.key("bare_token_file"),
                            format!("`{b}` must be a plain file name, different from `path`"),
                        );
                    }
                    destinations.push(Destination::File(FileDestination {
                        store: d.store.clone(),
                        directory: directory.clone(),
                        file: d.path.clone(),
                        bare_token_file: d.bare_token_file.clone(),
                    }));
                }
            }
        }

        let retry = self.retry(p.retry.as_ref(), &path.key("retry"));
        if self.errors.len() > before {
            return None;
        }
        Some(Policy {
            name: p.name.clone(),
            service_account: p.service_account.clone(),
            token_type,
            token_ttl,
            token_name_prefix: prefix,
            schedule: schedule?,
            overlap,
            hooks,
            destinations,
            retry,
        })
    }

    fn schedule(
        &mut self,
        p: &RawPolicy,
        path: &FieldPath,
        ttl: Option<Duration>,
        overlap: Duration,
    ) -> Option<ScheduleSpec> {
        let before = self.errors.len();
        let spath = path.key("schedule");
        let cadence = match &p.schedule {
            None => None,
            Some(s) => match (&s.cron, &s.interval) {
                (Some(_), Some(_)) => {
                    self.error(&spath, "give either `cron` or `interval`, not both");
                    None
                }
                (None, None) => {
                    self.error(
                        &spath,
                        "give `cron` (with an optional `timezone`) or `interval`",
                    );
                    None
                }
                (Some(expr), None) => {
                    match crate::schedule::parse_cron(expr, s.timezone.as_deref().unwrap_or("UTC"))
                    {
                        Ok(c) => Some(Cadence::Cron(c)),
                        Err(e) => {
                            let field = if e.contains("time zone") {
                                "timezone"
                            } else {
                                "cron"
                            };
                            self.error(&spath.key(field), e);
                            None
                        }
                    }
                }
                (None, Some(iv)) => {
                    if s.timezone.is_some() {
                        self.error(&spath.key("timezone"), "`timezone` applies to `cron` only");
                    }
                    match self.opt_duration(&Some(iv.clone()), &spath.key("interval")) {
                        Some(d) if d < Duration::from_secs(1) => {
                            self.error(&spath.key("interval"), "must be at least 1s");
                            None
                        }
                        Some(d) => Some(Cadence::Interval(d)),
                        None => None,
                    }
                }
            },
        };
        let jitter = self.duration(&p.jitter, &path.key("jitter"), Duration::ZERO);
        let mut windows = Vec::new();
        for (i, w) in p.windows.iter().enumerate() {
            let wpath = path.key("windows").index(i);
            match crate::schedule::parse_window(
                &w.days,
                &w.start,
                &w.end,
                w.timezone.as_deref().unwrap_or("UTC"),
            ) {
                Ok(w) => windows.push(w),
                Err(e) => {
                    let field = window_error_field(&e);
                    self.error(&field.map_or(wpath.clone(), |f| wpath.key(f)), e);
                }
            }
        }
        let rbe_path = path.key("rotate_before_expiry");
        let mut rotate_before_expiry = self.opt_duration(&p.rotate_before_expiry, &rbe_path);
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let rbe_invalid = p.rotate_before_expiry.is_some() && rotate_before_expiry.is_none();
        if let Some(ttl) = ttl.filter(|_| !rbe_invalid) {
            // Expiring tokens always rotate before they expire; a third of
            // the lifetime leaves room for retries and the overlap.
            let defaulted = rotate_before_expiry.is_none() && p.rotate_before_expiry.is_none();
            let before = *rotate_before_expiry.get_or_insert(ttl / 3);
            let what = if defaulted {
                format!("the default (a third of `token_ttl`, `{}`)", fmt(before))
            } else {
                format!("`{}`", fmt(before))
            };
            if before >= ttl {
                self.error(
                    &rbe_path,
                    format!("{what} must be shorter than `token_ttl` (`{}`)", fmt(ttl)),
                );
            } else if before <= overlap {
                let fix = if defaulted {
                    "; set `rotate_before_expiry` longer than `overlap`, or shorten `overlap`"
                } else {
                    ""
                };
                self.error(
                    &rbe_path,
                    format!(
                        "{what} must be longer than `overlap` (`{}`): the old token has to outlive the overlap period after the rotation starts{fix}",
                        fmt(overlap)
                    ),
                );
            }
        } else if p.rotate_before_expiry.is_some() && p.token_ttl.is_none() {
            self.warn(
                &rbe_path,
                "has no effect: `token_ttl` is not set, tokens never expire",
            );
        }
        if p.schedule.is_none() && p.token_ttl.is_none() {
            self.error(
                &path.key("name"),
                "nothing would ever make this policy due: set `schedule`, or `token_ttl` for expiry-driven rotation",
            );
        }
        if self.errors.len() > before {
            return None;
        }
        Some(ScheduleSpec {
            cadence,
            jitter,
            windows,
            rotate_before_expiry,
        })
    }

    fn hook(&mut self, raw: &RawHook, path: &FieldPath) -> Option<HookSpec> {
        use crate::verify::{AckHook, BuiltinCheck, CommandHook, HeaderValueSpec, HttpProbe};
        // For telling which header a builder's error is about.
        let mut header_names: Vec<&str> = Vec::new();
        let built = match raw {
            RawHook::Http(h) => {
                header_names = h.headers.keys().map(String::as_str).collect();
                let mut b = HttpProbe::builder(h.url.clone());
                if let Some(m) = &h.method {
                    b = b.method(m.clone());
                }
                for (name, v) in &h.headers {
                    let value = match v {
                        RawHeaderValue::Literal(l) => HeaderValueSpec::Literal(l.clone()),
                        RawHeaderValue::Secret(r) => {
                            let (s, _) = self.secret_ref(r, &path.key("headers").key(name))?;
                            HeaderValueSpec::Secret(s)
                        }
                    };
                    b = b.header(name.clone(), value);
                }
                if let Some(st) = &h.expect_status {
                    b = b.expect_status(st.clone());
                }
                if let Some(f) = &h.json_field {
                    b = b.json_field(f.clone());
                }
                if let Some(d) = self.opt_duration(&h.interval, &path.key("interval")) {
                    b = b.interval(d);
                }
                if let Some(d) = self.opt_duration(&h.deadline, &path.key("deadline")) {
                    b = b.deadline(d);
                }
                if let Some(d) = self.opt_duration(&h.request_timeout, &path.key("request_timeout"))
                {
                    b = b.request_timeout(d);
                }
                b.build().map(HookSpec::Http)
            }
            RawHook::Command(c) => {
                let Some((program, args)) = c.command.split_first() else {
                    self.error(&path.key("command"), "needs at least the program to run");
                    return None;
                };
                for (i, name) in c.inherit_env.iter().enumerate() {
                    if self.secret_envs.contains(name) {
                        self.error(
                            &path.key("inherit_env").index(i),
                            format!(
                                "`{name}` holds a secret this configuration references; a verification command must not inherit it"
                            ),
                        );
                    }
                }
                let mut b = CommandHook::builder(program.clone())
                    .args(args.iter().cloned())
                    .pass_token(c.pass_token)
                    .inherit_env(c.inherit_env.iter().cloned());
                if let Some(d) = self.opt_duration(&c.timeout, &path.key("timeout")) {
                    b = b.timeout(d);
                }
                if let Some(d) = self.opt_duration(&c.interval, &path.key("interval")) {
                    b = b.interval(d);
                }
                if let Some(d) = self.opt_duration(&c.deadline, &path.key("deadline")) {
                    b = b.deadline(d);
                }
                b.build().map(HookSpec::Command)
            }
            RawHook::Ack(a) => {
                let d = self.duration(&a.deadline, &path.key("deadline"), Duration::from_secs(600));
                AckHook::new(d).map(HookSpec::Ack)
            }
            RawHook::Motherduck(m) => {
                let i = self.duration(&m.interval, &path.key("interval"), Duration::from_secs(5));
                let d = self.duration(&m.deadline, &path.key("deadline"), Duration::from_secs(60));
                BuiltinCheck::new(i, d).map(HookSpec::MotherDuck)
            }
        };
        match built {
            Ok(h) => Some(h),
            Err(e) => {
                // The builders check every setting at once and answer with
                // one message; point at the setting it names.
                let field = hook_error_field(&e, &header_names);
                self.error(&field.map_or(path.clone(), |f| path.join(&f)), e);
                None
            }
        }
    }

    fn retry(&mut self, raw: Option<&RawRetry>, path: &FieldPath) -> RetryPolicy {
        let max_attempts = raw.and_then(|r| r.max_attempts).unwrap_or(3);
        if max_attempts == 0 {
            self.error(&path.key("max_attempts"), "must be at least 1");
        }
        let initial = self.duration(
            &raw.and_then(|r| r.initial_backoff.clone()),
            &path.key("initial_backoff"),
            Duration::from_secs(30),
        );
        let max = self.duration(
            &raw.and_then(|r| r.max_backoff.clone()),
            &path.key("max_backoff"),
            Duration::from_secs(3600),
        );
        if initial.is_zero() {
            self.error(&path.key("initial_backoff"), "must be greater than zero");
        }
        if max < initial {
            self.error(
                &path.key("max_backoff"),
                "must not be less than `initial_backoff`",
            );
        }
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            initial_backoff: initial,
            max_backoff: max,
        }
    }
}

/// Who writes a file, for reporting two destinations that would write the
/// same one.
struct FileClaim {
    policy: String,
    /// The record this is the `.pending`/`.previous`/`.lock` file of, or
    /// `None` for a record or bare-token file itself.
    working_file_of: Option<PathBuf>,
}

/// A named store's settings, before destinations point into it.
enum StoreDef {
    File { directory: PathBuf },
}

/// The key named by serde's "unknown field `key`, expected …" message.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key)
}

/// Every environment variable named by a secret reference.
fn secret_env_names(raw: &RawConfig) -> BTreeSet<String> {
    let admin = match &raw.motherduck.admin_token {
        RawSecret::Ref(r) => r.env.clone(),
        RawSecret::Inline => None,
    };
    let headers = raw
        .policies
        .iter()
        .flat_map(|p| &p.verify)
        .filter_map(|h| match h {
            RawHook::Http(h) => Some(h.headers.values()),
            _ => None,
        })
        .flatten()
        .filter_map(|v| match v {
            RawHeaderValue::Secret(r) => r.env.clone(),
            RawHeaderValue::Literal(_) => None,
        });
    admin.into_iter().chain(headers).collect()
}

/// Which window setting a [`crate::schedule::parse_window`] error is about,
/// from its wording; `None` leaves the error on the window as a whole.
fn window_error_field(message: &str) -> Option<&'static str> {
    if message.starts_with("unknown day") || message.contains("at least one day") {
        Some("days")
    } else if message.contains("equals its end") || message.starts_with("invalid window end") {
        Some("end")
    } else if message.starts_with("invalid window start") {
        Some("start")
    } else if message.starts_with("unknown time zone") {
        Some("timezone")
    } else {
        None
    }
}

/// Which hook setting a hook builder's error is about, from its wording;
/// `None` leaves the error on the hook as a whole. The hook modules'
/// messages name the setting first, which is what this relies on.
fn hook_error_field(message: &str, header_names: &[&str]) -> Option<FieldPath> {
    if let Some(name) = header_names
        .iter()
        .find(|n| message.contains(&format!("header `{n}`")))
    {
        return Some(root().key("headers").key(name));
    }
    let field = if message.contains("probe url") {
        "url"
    } else if message.starts_with("invalid http method") {
        "method"
    } else if message.starts_with("invalid header name") {
        "headers"
    } else if message.starts_with("expect_status") || message.starts_with("expected status") {
        "expect_status"
    } else if message.starts_with("json_field") {
        "json_field"
    } else if message.starts_with("the command program") {
        "command"
    } else if message.contains("inherit_env") {
        "inherit_env"
    } else if message.starts_with("request_timeout") {
        "request_timeout"
    } else if message.starts_with("timeout") {
        "timeout"
    } else if message.starts_with("interval") {
        "interval"
    } else if message.starts_with("deadline") {
        "deadline"
    } else {
        return None;
    };
    Some(root().key(field))
}

/// The placeholder a secret gets when `resolve_secrets` is off.
fn unresolved() -> SecretString {
    SecretString::from("unresolved".to_owned())
}

/// Whether a value meant to *name* a secret is more likely the secret: a
/// MotherDuck token is a JWT (`eyJ…` in three dot-separated parts). Such a
/// value is never quoted in an error.
fn looks_like_token(s: &str) -> bool {
    s.trim_start().starts_with("eyJ") && s.matches('.').count() >= 2
}

/// A portable environment variable name: letters, digits and `_`, not
/// starting with a digit.
fn valid_env_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.contains('\0')
        && !s.starts_with('.')
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests;
