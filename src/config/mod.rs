//! Configuration: TOML → validated types, in two stages.
//!
//! [`raw`] is what serde reads (unknown fields rejected); [`load`] turns it
//! into a [`Config`] of validated types, collecting every problem with the
//! file, line, column and field it concerns. Secrets are accepted only by
//! reference (a file, an environment variable, or a systemd credential) and
//! are resolved here, so a missing token file is a configuration error, found
//! before any network call.
//!
//! Store kinds: `file`, `vault` (HashiCorp Vault / OpenBao KV v1 or v2) and
//! `aws` (AWS Secrets Manager). Each Vault or AWS store gets one connection,
//! built here (a Vault connection reads its CA and client identity files);
//! the destinations on that store share it.

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
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::motherduck::{self, TokenType};
use crate::rotation::plan::RetryPolicy;
use crate::schedule::{Cadence, ScheduleSpec};
use crate::secret::{ExposeSecret, SecretString, read_secret_file};
use crate::stores::Destination;
use crate::stores::aws::{self, AwsConnection, AwsConnectionSettings, AwsDestination};
use crate::stores::file::FileDestination;
use crate::stores::vault::{
    self, KvVersion, VaultAuth, VaultConnection, VaultDestination, VaultSettings, VaultSetupError,
};
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
    /// The connection of every Vault store a destination or lock uses, in
    /// store-name order, so the daemon can keep their tokens alive
    /// ([`VaultConnection::spawn_token_renewal`]). Destinations on the same
    /// store share these connections.
    ///
    /// Loaded without `resolve_secrets`, these hold placeholder credentials
    /// and no TLS material: such a configuration is for linting only.
    pub vault_connections: Vec<VaultConnection>,
    /// The daemon's own alerts: sinks, deduplication, rate limit.
    pub alerts: crate::alerts::AlertSettings,
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
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_bearer_token: Option<SecretString>,
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
    /// The longest a policy goes without its records being read again
    /// while it waits, so a rotation started elsewhere (`rotate`, another
    /// replica) is finished on time.
    pub recheck_interval: Duration,
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
    /// Where the policy's coordination lock is taken (invariant 4): its
    /// first destination, unless the policy's `lock` names another place
    /// (then used only for locking). Never a Vault KV v1 destination, which
    /// has no check-and-set to lock with.
    pub lock: Destination,
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
    /// form only and the config carries placeholders. Neither are a Vault
    /// store's TLS files (CA, client certificate and key) nor a Kubernetes
    /// JWT read then; its connection is built without them.
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
    let error = |line, column, reason: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            field: String::new(),
            reason,
        }])
    };
    let bytes = std::fs::read(path)
        .map_err(|e| error(0, 0, format!("failed to read the configuration file: {e}")))?;
    let src = decode_utf8(&bytes).map_err(|(line, column)| {
        error(
            line,
            column,
            "the configuration is not valid UTF-8 here (TOML files are UTF-8; was it saved in another encoding?)".to_owned(),
        )
    })?;
    parse_with(path, src, &ProcessEnv, opts)
}

/// The text, or the line and column (1-based, in characters) of the first
/// byte that is not UTF-8.
fn decode_utf8(bytes: &[u8]) -> Result<&str, (usize, usize)> {
    std::str::from_utf8(bytes).map_err(|e| {
        // Everything before `valid_up_to` is valid text.
        let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
        let line = good.matches('\n').count() + 1;
        let column = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    })
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
        Err(e) => return Err(ConfigErrors(vec![serde_error(path, &map, &e)])),
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
        secret_envs: BTreeSet::new(),
    };
    let stores: BTreeMap<String, Result<RawStore, Option<&'static str>>> = raw
        .stores
        .keys()
        .map(|name| (name.clone(), v.raw_store(name)))
        .collect();
    // Each policy's hooks, in order; `None` for one with errors.
    let hooks: Vec<Vec<Option<RawHook>>> = raw
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let path = root().key("policy").index(i).key("verify");
            (0..p.verify.len())
                .map(|j| v.raw_hook(&path.index(j)))
                .collect()
        })
        .collect();
    v.secret_envs = secret_env_names(&raw, &stores, &hooks);
    let config = v.config(raw, &stores, &hooks);
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

/// A TOML or serde error as a [`ConfigError`] at its place.
fn serde_error(file: &Path, map: &SourceMap<'_>, e: &toml::de::Error) -> ConfigError {
    let reason = e.message().trim().to_owned();
    let mut span = e.span().unwrap_or(0..0);
    // An empty span is toml's way of pointing at the whole document (a
    // missing top-level table).
    let mut field = if span.is_empty() {
        FieldPath::default()
    } else {
        map.path_at(&span)
    };
    // Serde places an unknown field at its table; point at the key itself,
    // where the typo is.
    if let Some((path, key_span)) = unknown_field(&reason).and_then(|k| map.find_key(&field, k)) {
        field = path;
        span = key_span;
    }
    let (line, column) = map.line_col(span.start);
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        field: field.to_string(),
        reason,
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

/// The longest duration any setting accepts (100 years of 365 days).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn root() -> FieldPath {
    FieldPath::default()
}

impl<'a> Validator<'a> {
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

    /// A humantime duration (at most [`MAX_DURATION`]), or `default` when
    /// absent.
    fn duration(&mut self, raw: &Option<String>, path: &FieldPath, default: Duration) -> Duration {
        self.opt_duration(raw, path).unwrap_or(default)
    }

    fn opt_duration(&mut self, raw: &Option<String>, path: &FieldPath) -> Option<Duration> {
        let s = raw.as_ref()?;
        match humantime::parse_duration(s.trim()) {
            // Every duration is added to timestamps; beyond this, the
            // arithmetic would overflow instead of meaning anything.
            Ok(d) if d > MAX_DURATION => {
                self.error(
                    path,
                    format!(
                        "`{s}` is longer than 100 years, the longest duration any setting takes"
                    ),
                );
                None
            }
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
            if let Some(problem) = path_problem(f) {
                self.error(&path.key("file"), problem);
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

    /// Reads the store `name` by its `type`. `Err` holds the store's kind
    /// when its `type` is valid (the error is reported).
    fn raw_store(&mut self, name: &str) -> Result<RawStore, Option<&'static str>> {
        let path = root().key("stores").key(name);
        let (kind, table) = self
            .tagged_table(
                &path,
                &RawStore::KINDS,
                "store",
                "{ type = \"file\", directory = \"...\" }",
            )
            .ok_or(None)?;
        let store = match kind {
            "file" => self.variant(table).map(RawStore::File),
            "vault" => self.variant(table).map(|v| RawStore::Vault(Box::new(v))),
            _ => self.variant(table).map(RawStore::Aws),
        };
        store.ok_or(Some(kind))
    }

    /// Reads the verification hook at `path` by its `type`; `None` when it
    /// has errors (reported).
    fn raw_hook(&mut self, path: &FieldPath) -> Option<RawHook> {
        let (kind, table) = self.tagged_table(
            path,
            &RawHook::KINDS,
            "verification hook",
            "{ type = \"motherduck\" }",
        )?;
        match kind {
            "http" => self.variant(table).map(RawHook::Http),
            "command" => self.variant(table).map(RawHook::Command),
            "ack" => self.variant(table).map(RawHook::Ack),
            _ => self.variant(table).map(RawHook::Motherduck),
        }
    }

    /// The table at `path` split by its `type`, one of `kinds`: the kind,
    /// and the rest of the table for [`Validator::variant`]. Serde's tagged
    /// enums would buffer the table and lose every place inside it, so the
    /// variant's table is deserialized from the document itself, where
    /// every value keeps its span. `None` when there is no such table or
    /// its `type` is not one of `kinds` (the error is reported); `what`
    /// and `example` are for that message.
    fn tagged_table<'k>(
        &mut self,
        path: &FieldPath,
        kinds: &[&'k str],
        what: &str,
        example: &str,
    ) -> Option<(&'k str, Spanned<DeValue<'a>>)> {
        let Some(value) = self.map.value(path) else {
            self.error(path, format!("the {what}'s table is missing"));
            return None;
        };
        let span = value.span();
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                path,
                format!("a {what} is a table with a `type`, such as {example}"),
            );
            return None;
        };
        let Some((_, tag)) = table.iter().find(|(k, _)| k.get_ref() == "type") else {
            self.error(path, "missing field `type`");
            return None;
        };
        let kind = tag
            .get_ref()
            .as_str()
            .and_then(|t| kinds.iter().copied().find(|k| *k == t));
        if let Some(kind) = kind {
            let rest: DeTable<'a> = table
                .iter()
                .filter(|(k, _)| k.get_ref() != "type")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            return Some((kind, Spanned::new(span, DeValue::Table(rest))));
        }
        // The message serde gives for a tagged enum, at the tag's value.
        let expected = kinds
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let reason = match tag.get_ref().as_str() {
            Some(t) => format!("unknown variant `{t}`, expected one of {expected}"),
            None => format!(
                "invalid type: {}, expected one of {expected}",
                tag.get_ref().type_str()
            ),
        };
        let (line, column) = self.map.line_col(tag.span().start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            field: path.key("type").to_string(),
            reason,
        });
        None
    }

    /// Deserializes a table from [`Validator::tagged_table`]; serde's
    /// errors keep their place in the document.
    fn variant<T: serde::Deserialize<'a>>(&mut self, table: Spanned<DeValue<'a>>) -> Option<T> {
        T::deserialize(ValueDeserializer::from(table))
            .map_err(|e| {
                let e = serde_error(&self.file, &self.map, &e);
                self.errors.push(e);
            })
            .ok()
    }

    fn config(
        &mut self,
        raw: RawConfig,
        raw_stores: &BTreeMap<String, Result<RawStore, Option<&'static str>>>,
        raw_hooks: &[Vec<Option<RawHook>>],
    ) -> Option<Config> {
        let md = self.motherduck(&raw.motherduck);
        let daemon = self.daemon(&raw.daemon);
        let alerts = self.alerts(raw.alerts.as_ref());
        let stores = self.stores(raw_stores);
        let mut policies = Vec::new();
        let mut names = BTreeSet::new();
        let mut claims: BTreeMap<Place, Claim> = BTreeMap::new();
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
            if let Some((policy, targets, lock)) = self.policy(p, &raw_hooks[i], &path, &stores) {
                for (j, t) in targets.iter().enumerate() {
                    self.claim(
                        &mut claims,
                        &policy.name,
                        t,
                        false,
                        &path.key("destinations").index(j),
                    );
                }
                // A lock on one of the policy's own destinations is covered
                // by that destination's claims.
                if !targets.iter().any(|t| t.record == lock.record) {
                    self.claim(&mut claims, &policy.name, &lock, true, &path.key("lock"));
                }
                policies.push(policy);
            }
        }
        // Only the stores something uses: an unused Vault store needs no
        // token kept alive.
        let used: BTreeSet<&str> = raw
            .policies
            .iter()
            .flat_map(|p| {
                p.destinations
                    .iter()
                    .map(|d| d.store.as_str())
                    .chain(p.lock.iter().map(|l| l.store.as_str()))
            })
            .collect();
        let vault_connections = stores
            .iter()
            .filter(|(name, _)| used.contains(name.as_str()))
            .filter_map(|(_, s)| match s {
                StoreDef::Vault(v) => Some(v.conn.clone()),
                _ => None,
            })
            .collect();
        Some(Config {
            source: self.file.clone(),
            motherduck: md?,
            daemon: daemon?,
            policies,
            vault_connections,
            alerts: alerts?,
            warnings: Vec::new(),
        })
    }

    /// Records what a destination of `policy` writes (its record, the
    /// siblings its store keeps next to it, a bare token file), reporting
    /// anything another destination (of any policy, this one included)
    /// already writes. Two records at one place would overwrite each other,
    /// and so would a record named like another record's sibling: the file
    /// store keeps `P.pending`, `P.previous` and `P.lock` next to a record
    /// `P`, the Vault store `P.pending` and `P.lock` (KV v2) or
    /// `P.previous` (KV v1), the AWS store `N.journal` and `N.lock`. With
    /// `lock_only`, `t` is a policy's separate lock place, where only the
    /// lock is written.
    fn claim(
        &mut self,
        claims: &mut BTreeMap<Place, Claim>,
        policy: &str,
        t: &Target,
        lock_only: bool,
        dpath: &FieldPath,
    ) {
        let kind = t.kind;
        let wanted = if lock_only {
            vec![("path", t.lock.clone(), Some(t.record.clone()))]
        } else {
            t.writes.clone()
        };
        let mut reported = BTreeSet::new();
        for (field, place, sibling_of) in wanted {
            let new = Claim {
                policy: policy.to_owned(),
                kind,
                sibling_of,
                lock_only,
            };
            let Some(c) = claims.get(&place) else {
                claims.insert(place, new);
                continue;
            };
            let theirs = c.role();
            let reason = match (&new.sibling_of, lock_only) {
                (None, _) => format!("`{place}` is already {theirs}"),
                (Some(_), true) => {
                    format!("the lock would be kept at `{place}`, which is already {theirs}")
                }
                (Some(_), false) => match (&c.sibling_of, c.lock_only) {
                    (None, _) => format!(
                        "the {kind} store keeps `{place}` next to this record, but policy `{}` already writes that {}",
                        c.policy,
                        c.noun()
                    ),
                    (Some(_), true) => format!(
                        "the {kind} store keeps `{place}` next to this record, but policy `{}` already keeps its lock there",
                        c.policy
                    ),
                    // Equal records, reported for the record itself.
                    (Some(_), false) => continue,
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
                // The client sends it as `Authorization: Bearer …`.
                let ok = header_safe(t.expose_secret());
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
        let recheck_interval = self.duration(
            &raw.recheck_interval,
            &path.key("recheck_interval"),
            Duration::from_secs(300),
        );
        if recheck_interval < Duration::from_secs(1) {
            self.error(&path.key("recheck_interval"), "must be at least 1s");
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
        let metrics_bearer_token = match &raw.metrics_bearer_token {
            Some(r) => Some(self.secret(r, &path.key("metrics_bearer_token"))?.0),
            None => None,
        };
        Some(DaemonSettings {
            listen: listen.ok()?,
            log_format,
            rotation_concurrency: rotation_concurrency?,
            sweep_interval,
            orphan_min_age,
            shutdown_timeout,
            lock_retry_interval,
            recheck_interval,
            instance_id,
            metrics_bearer_token,
        })
    }

    fn alerts(&mut self, raw: Option<&RawAlerts>) -> Option<crate::alerts::AlertSettings> {
        use crate::alerts::{AlertSettings, Sink};
        let mut settings = AlertSettings::default();
        let Some(raw) = raw else {
            return Some(settings);
        };
        let path = root().key("alerts");
        settings.repeat_interval = self.duration(
            &raw.repeat_interval,
            &path.key("repeat_interval"),
            settings.repeat_interval,
        );
        settings.expiry_warning = self.duration(
            &raw.expiry_warning,
            &path.key("expiry_warning"),
            settings.expiry_warning,
        );
        if let Some(n) = raw.max_per_minute {
            match std::num::NonZeroU32::new(n) {
                Some(n) => settings.max_per_minute = n,
                None => self.error(&path.key("max_per_minute"), "must be at least 1"),
            }
        }
        if let Some(n) = raw.max_attempts {
            if n == 0 || n > 20 {
                self.error(
                    &path.key("max_attempts"),
                    format!("`{n}` is not between 1 and 20"),
                );
            }
            settings.max_attempts = n.clamp(1, 20);
        }
        settings.runbook_url = raw.runbook_url.clone();
        let before = self.errors.len();
        for (i, sink) in raw.sinks.iter().enumerate() {
            let sp = path.key("sink").index(i);
            let url = |v: &mut Self, field: &str| -> Option<reqwest::Url> {
                let Some(u) = sink.url.as_deref() else {
                    v.error(
                        &sp.key(field),
                        format!("a `{}` sink needs `url`", sink.kind),
                    );
                    return None;
                };
                // Alerts carry no secrets (webhook bodies are signed), so
                // plain http is allowed, as in-cluster Alertmanagers use it.
                match reqwest::Url::parse(u) {
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Some(parsed),
                    Ok(_) => {
                        v.error(&sp.key(field), format!("`{u}` must be an http(s) URL"));
                        None
                    }
                    Err(e) => {
                        v.error(&sp.key(field), format!("invalid URL `{u}`: {e}"));
                        None
                    }
                }
            };
            let unexpected = |v: &mut Self, present: bool, field: &str| {
                if present {
                    v.error(
                        &sp.key(field),
                        format!("not used by a `{}` sink", sink.kind),
                    );
                }
            };
            match sink.kind.as_str() {
                "alertmanager" => {
                    unexpected(self, sink.hmac_secret.is_some(), "hmac_secret");
                    unexpected(self, sink.webhook_url.is_some(), "webhook_url");
                    if let Some(url) = url(self, "url") {
                        settings.sinks.push(Sink::Alertmanager { url });
                    }
                }
                "webhook" => {
                    unexpected(self, sink.webhook_url.is_some(), "webhook_url");
                    let u = url(self, "url");
                    let secret = match &sink.hmac_secret {
                        Some(r) => self.secret(r, &sp.key("hmac_secret")).map(|(s, _)| s),
                        None => {
                            self.error(&sp.key("type"), "a `webhook` sink needs `hmac_secret`, the key its bodies are signed with");
                            None
                        }
                    };
                    if let (Some(url), Some(hmac_secret)) = (u, secret) {
                        settings.sinks.push(Sink::Webhook { url, hmac_secret });
                    }
                }
                "slack" => {
                    unexpected(self, sink.url.is_some(), "url");
                    unexpected(self, sink.hmac_secret.is_some(), "hmac_secret");
                    match &sink.webhook_url {
                        Some(r) => {
                            if let Some((s, _)) = self.secret(r, &sp.key("webhook_url")) {
                                settings.sinks.push(Sink::Slack { webhook_url: s });
                            }
                        }
                        None => self.error(
                            &sp.key("type"),
                            "a `slack` sink needs `webhook_url` (a secret reference: the URL is a credential)",
                        ),
                    }
                }
                other => self.error(
                    &sp.key("type"),
                    format!("`{other}` is not one of alertmanager, webhook, slack"),
                ),
            }
        }
        (self.errors.len() == before).then_some(settings)
    }

    fn stores(
        &mut self,
        raw: &BTreeMap<String, Result<RawStore, Option<&'static str>>>,
    ) -> BTreeMap<String, StoreDef> {
        let mut out = BTreeMap::new();
        for (name, s) in raw {
            let path = root().key("stores").key(name);
            if !valid_name(name) {
                self.error(
                    &path,
                    format!("store name `{name}` may contain only a-z, 0-9, `_` and `-`"),
                );
            }
            let def = match s {
                Err(kind) => StoreDef::Invalid { kind: *kind },
                Ok(RawStore::File(f)) => {
                    let problem = if f.directory.as_os_str().is_empty() {
                        Some(
                            "must not be empty: name the directory that holds the records"
                                .to_owned(),
                        )
                    } else {
                        path_problem(&f.directory)
                    };
                    match problem {
                        Some(problem) => {
                            self.error(&path.key("directory"), problem);
                            StoreDef::Invalid { kind: Some("file") }
                        }
                        None => StoreDef::File {
                            directory: self.path(&f.directory),
                        },
                    }
                }
                Ok(RawStore::Vault(v)) => self.vault_store(v, &path).map_or(
                    StoreDef::Invalid {
                        kind: Some("vault"),
                    },
                    StoreDef::Vault,
                ),
                Ok(RawStore::Aws(a)) => self
                    .aws_store(a, &path)
                    .map_or(StoreDef::Invalid { kind: Some("aws") }, StoreDef::Aws),
            };
            out.insert(name.clone(), def);
        }
        out
    }

    /// A Vault store and its connection. Without `resolve_secrets` the
    /// credentials are placeholders and the TLS files are not read (the
    /// client key is a secret, and the CA and certificate live beside it on
    /// the host that runs the daemon).
    fn vault_store(&mut self, v: &RawVaultStore, path: &FieldPath) -> Option<VaultStoreDef> {
        let before = self.errors.len();
        if let Some(ns) = &v.namespace
            && (ns.trim_matches('/').is_empty()
                || ns.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            self.error(
                &path.key("namespace"),
                format!(
                    "`{}` is not a namespace: give a path such as \"admin/team-a\", without whitespace",
                    ns.escape_debug()
                ),
            );
        }
        let kv = match v.kv_version.unwrap_or(2) {
            1 => KvVersion::V1,
            2 => KvVersion::V2,
            other => {
                self.error(
                    &path.key("kv_version"),
                    format!("`{other}` is not a KV secrets engine version: use 1 or 2"),
                );
                KvVersion::V2
            }
        };
        let mount = self.vault_mount(v.mount.as_deref().unwrap_or("secret"), &path.key("mount"));
        let auth = self.vault_auth(&v.auth, &path.key("auth"));
        match (&v.client_cert, &v.client_key) {
            (Some(_), None) => self.error(
                &path.key("client_cert"),
                "a client certificate needs its key: set `client_key` too (both or neither)",
            ),
            (None, Some(_)) => self.error(
                &path.key("client_key"),
                "a client key needs its certificate: set `client_cert` too (both or neither)",
            ),
            _ => {}
        }
        let lease_ttl = self.duration(
            &v.lease_ttl,
            &path.key("lease_ttl"),
            vault::DEFAULT_LEASE_TTL,
        );
        if lease_ttl < vault::MIN_LEASE_TTL {
            self.error(
                &path.key("lease_ttl"),
                format!(
                    "must be at least {}",
                    humantime::format_duration(vault::MIN_LEASE_TTL)
                ),
            );
        } else if v.lease_ttl.is_some() && kv == KvVersion::V1 {
            self.warn(
                &path.key("lease_ttl"),
                "has no effect: a KV v1 store cannot hold a lock",
            );
        }
        let request_timeout = self.duration(
            &v.request_timeout,
            &path.key("request_timeout"),
            DEFAULT_VAULT_REQUEST_TIMEOUT,
        );
        if request_timeout.is_zero() {
            self.error(&path.key("request_timeout"), "must be greater than zero");
        }
        let namespace = v
            .namespace
            .as_ref()
            .map(|ns| ns.trim_matches('/').to_owned());
        // Built even when a setting above was bad (with a stand-in for bad
        // credentials), so the address and the TLS files are checked too.
        let auth_ok = auth.is_some();
        let mut settings = VaultSettings::new(
            v.address.clone(),
            auth.unwrap_or_else(|| VaultAuth::Token(unresolved())),
        );
        settings.namespace = namespace.clone();
        settings.request_timeout = request_timeout;
        if self.opts.resolve_secrets {
            settings.ca_file = v.ca_file.as_deref().map(|p| self.path(p));
            // Half an identity is reported above.
            if let (Some(cert), Some(key)) = (&v.client_cert, &v.client_key) {
                settings.client_cert = Some(self.path(cert));
                settings.client_key = Some(self.path(key));
            }
        }
        let conn = match VaultConnection::new(settings.clone()) {
            Ok(conn) => conn,
            Err(e) => {
                let address_bad = vault_setup_field(&e) == Some("address");
                self.vault_setup_error(&e, path);
                if address_bad {
                    // The address is checked first; check the TLS files
                    // too, with a stand-in address, so every problem shows.
                    settings.address = "https://127.0.0.1".to_owned();
                    if let Err(e) = VaultConnection::new(settings) {
                        self.vault_setup_error(&e, path);
                    }
                }
                return None;
            }
        };
        if self.errors.len() > before || !auth_ok {
            return None;
        }
        let server = match &namespace {
            Some(ns) => format!("{} (namespace {ns})", conn.address()),
            None => conn.address().to_owned(),
        };
        Some(VaultStoreDef {
            conn,
            server,
            mount: mount?,
            kv,
            lease_ttl,
        })
    }

    fn vault_setup_error(&mut self, e: &VaultSetupError, path: &FieldPath) {
        let field = vault_setup_field(e).map_or(path.clone(), |f| path.key(f));
        self.error(&field, e.to_string());
    }

    /// A Vault mount (of a secrets engine or an auth method), surrounding
    /// slashes dropped (`vault secrets list` shows `secret/`).
    fn vault_mount(&mut self, raw: &str, path: &FieldPath) -> Option<String> {
        let mount = raw.trim_matches('/');
        match vault_path_problem(mount) {
            None => Some(mount.to_owned()),
            Some(why) => {
                self.error(path, format!("mount `{}` {why}", raw.escape_debug()));
                None
            }
        }
    }

    fn vault_auth(&mut self, raw: &RawVaultAuth, path: &FieldPath) -> Option<VaultAuth> {
        use RawVaultAuthMethod as M;
        let method = raw.method;
        let takes: &[&str] = match method {
            M::Token => &["token"],
            M::Approle => &["mount", "role_id", "secret_id"],
            M::Kubernetes => &["mount", "role", "jwt_file"],
        };
        let given = [
            ("mount", raw.mount.is_some()),
            ("token", raw.token.is_some()),
            ("role_id", raw.role_id.is_some()),
            ("secret_id", raw.secret_id.is_some()),
            ("role", raw.role.is_some()),
            ("jwt_file", raw.jwt_file.is_some()),
        ];
        let mut ok = true;
        for (key, present) in given {
            if present && !takes.contains(&key) {
                ok = false;
                self.error(
                    &path.key(key),
                    format!(
                        "does not apply to method `{}`, which takes {}",
                        method.as_str(),
                        takes
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        let needs = |me: &mut Self, key: &str, present: bool| {
            if !present {
                me.error(
                    &path.key(key),
                    format!("method `{}` needs `{key}`", method.as_str()),
                );
            }
            present
        };
        match method {
            M::Token => {
                let token = raw.token.as_ref();
                if !needs(self, "token", token.is_some()) {
                    return None;
                }
                let (token, _) = self.secret(token?, &path.key("token"))?;
                if !header_safe(token.expose_secret()) {
                    self.error(
                        &path.key("token"),
                        "the Vault token contains characters not allowed in an HTTP header, such as a line break inside it",
                    );
                    return None;
                }
                ok.then_some(VaultAuth::Token(token))
            }
            M::Approle => {
                let has_role_id = needs(self, "role_id", raw.role_id.is_some());
                let has_secret_id = needs(self, "secret_id", raw.secret_id.is_some());
                let mount = self.vault_mount(
                    raw.mount.as_deref().unwrap_or("approle"),
                    &path.key("mount"),
                );
                let role_id = raw
                    .role_id
                    .as_ref()
                    .and_then(|r| self.secret(r, &path.key("role_id")));
                let secret_id = raw
                    .secret_id
                    .as_ref()
                    .and_then(|r| self.secret(r, &path.key("secret_id")));
                if !(ok && has_role_id && has_secret_id) {
                    return None;
                }
                Some(VaultAuth::AppRole {
                    mount: mount?,
                    role_id: role_id?.0,
                    secret_id: secret_id?.0,
                })
            }
            M::Kubernetes => {
                let mount = self.vault_mount(
                    raw.mount.as_deref().unwrap_or("kubernetes"),
                    &path.key("mount"),
                );
                let role = raw.role.as_deref();
                let mut role_ok = needs(self, "role", role.is_some());
                if let Some(role) = role
                    && (role.is_empty()
                        || role
                            .chars()
                            .any(|c| c.is_whitespace() || c.is_control() || c == '/'))
                {
                    role_ok = false;
                    self.error(
                        &path.key("role"),
                        format!(
                            "`{}` is not a role name: it must be non-empty, without whitespace or `/`",
                            role.escape_debug()
                        ),
                    );
                }
                let jwt_path = self.path(
                    raw.jwt_file
                        .as_deref()
                        .unwrap_or(Path::new(DEFAULT_KUBERNETES_JWT)),
                );
                // Read at every login (projected tokens rotate); checked
                // here so a missing one is found before any network call.
                let jwt_ok = if raw
                    .jwt_file
                    .as_ref()
                    .is_some_and(|f| f.as_os_str().is_empty())
                {
                    self.error(&path.key("jwt_file"), "the JWT file path is empty");
                    false
                } else if self.opts.resolve_secrets {
                    match read_secret_file(&jwt_path) {
                        Ok(_) => true,
                        Err(e) => {
                            self.error(
                                &path.key("jwt_file"),
                                format!(
                                    "{e} (the service-account token Kubernetes auth logs in with)"
                                ),
                            );
                            false
                        }
                    }
                } else {
                    true
                };
                if !(ok && role_ok && jwt_ok) {
                    return None;
                }
                Some(VaultAuth::Kubernetes {
                    mount: mount?,
                    role: role?.to_owned(),
                    jwt_path,
                })
            }
        }
    }

    /// An AWS Secrets Manager store and its connection (which does no IO
    /// until first use).
    fn aws_store(&mut self, a: &RawAwsStore, path: &FieldPath) -> Option<AwsStoreDef> {
        let before = self.errors.len();
        let mut settings = AwsConnectionSettings::new(a.region.clone());
        settings.endpoint_url = a.endpoint_url.clone();
        let conn = match AwsConnection::new(settings.clone()) {
            Ok(c) => Some(c),
            Err(e) => {
                let region_bad = matches!(e, aws::AwsSetupError::Region(_));
                self.aws_setup_error(&e, path);
                if region_bad && a.endpoint_url.is_some() {
                    // The region is checked first; check the endpoint
                    // too, with a stand-in region, so every problem shows.
                    settings.region = "us-east-1".to_owned();
                    if let Err(e) = AwsConnection::new(settings) {
                        self.aws_setup_error(&e, path);
                    }
                }
                None
            }
        };
        if let Some(k) = &a.kms_key_id
            && (k.is_empty()
                || k.len() > 2048
                || k.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            self.error(
                &path.key("kms_key_id"),
                format!(
                    "`{}` is not a KMS key id: give a key id, key ARN, alias name (`alias/...`) or alias ARN, without whitespace",
                    k.escape_debug()
                ),
            );
        }
        let lock_ttl = self.duration(&a.lock_ttl, &path.key("lock_ttl"), aws::DEFAULT_LOCK_TTL);
        if lock_ttl < Duration::from_secs(3) {
            self.error(
                &path.key("lock_ttl"),
                "must be at least 3s (the holder renews its lease every third of it)",
            );
        }
        if self.errors.len() > before {
            return None;
        }
        if a.version_budget == Some(0) {
            self.error(&path.key("version_budget"), "must be at least 1");
            return None;
        }
        Some(AwsStoreDef {
            conn: conn?,
            create_if_missing: a.create_if_missing,
            kms_key_id: a.kms_key_id.clone(),
            lock_ttl,
            version_budget: a.version_budget.unwrap_or(aws::DEFAULT_VERSION_BUDGET),
        })
    }

    fn aws_setup_error(&mut self, e: &aws::AwsSetupError, path: &FieldPath) {
        let field = match e {
            aws::AwsSetupError::Region(_) => path.key("region"),
            aws::AwsSetupError::Endpoint { .. } | aws::AwsSetupError::InsecureEndpoint(_) => {
                path.key("endpoint_url")
            }
            aws::AwsSetupError::LockTtl(_) => path.key("lock_ttl"),
            _ => path.clone(),
        };
        self.error(&field, e.to_string());
    }

    fn policy(
        &mut self,
        p: &RawPolicy,
        raw_hooks: &[Option<RawHook>],
        path: &FieldPath,
        stores: &BTreeMap<String, StoreDef>,
    ) -> Option<(Policy, Vec<Target>, Target)> {
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
        for (i, h) in raw_hooks.iter().enumerate() {
            if let Some(h) = h
                && let Some(h) = self.hook(h, &path.key("verify").index(i))
            {
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
        let mut targets = Vec::new();
        let mut all_built = true;
        if p.destinations.is_empty() {
            self.error(
                &path.key("name"),
                "a policy needs at least one entry in `destinations`",
            );
        }
        for (i, d) in p.destinations.iter().enumerate() {
            let dpath = path.key("destinations").index(i);
            match self.destination(
                &d.store,
                &d.path,
                d.bare_token_file.as_deref(),
                &dpath,
                stores,
            ) {
                Some((dest, target)) => {
                    destinations.push(dest);
                    targets.push(target);
                }
                None => all_built = false,
            }
        }
        let lock = match &p.lock {
            Some(l) => {
                let lpath = path.key("lock");
                let lock = self.destination(&l.store, &l.path, None, &lpath, stores);
                if let Some((Destination::Vault(v), _)) = &lock
                    && v.kv_version() == KvVersion::V1
                {
                    self.error(
                        &lpath.key("store"),
                        format!(
                            "store `{}` is a Vault KV v1 mount, which has no check-and-set and cannot hold a lock; put the lock on a file, KV v2 or AWS store",
                            l.store
                        ),
                    );
                }
                lock
            }
            None => {
                let first = destinations.first().zip(targets.first());
                if let Some((Destination::Vault(v), _)) = first
                    && v.kv_version() == KvVersion::V1
                {
                    self.error(
                        &path.key("destinations").index(0).key("store"),
                        format!(
                            "the policy's lock would be on its first destination, but store `{}` is a Vault KV v1 mount, which has no check-and-set and cannot hold a lock; set `lock = {{ store = \"...\", path = \"...\" }}` on the policy to put it on a file, KV v2 or AWS store",
                            p.destinations[0].store
                        ),
                    );
                }
                first.map(|(d, t)| (d.clone(), t.clone()))
            }
        };

        let retry = self.retry(p.retry.as_ref(), &path.key("retry"));
        // An expiring token is replaced `rotate_before_expiry` ahead of its
        // expiry; the rotation then verifies (up to its longest deadline),
        // may retry a step, and keeps the old token for `overlap`. All of
        // it has to fit, or a rollback would restore a token about to
        // expire and the overlap would end after it.
        if let (Some(_), Some(ahead)) = (
            token_ttl,
            schedule.as_ref().and_then(|s| s.rotate_before_expiry),
        ) && ahead > overlap
        {
            let longest = hooks
                .iter()
                .map(HookSpec::deadline)
                .max()
                .unwrap_or_default();
            let budget: Duration = (1..retry.max_attempts).map(|n| retry.backoff(n)).sum();
            let needed = overlap.saturating_add(longest).saturating_add(budget);
            if ahead <= needed {
                let fmt = |d: Duration| humantime::format_duration(d).to_string();
                self.error(
                    &path.key("rotate_before_expiry"),
                    format!(
                        "`{}` must be longer than `overlap` (`{}`) + the longest verification deadline (`{}`) + the step retries (`{}`) = `{}`: otherwise the old token can expire before the rotation is verified and its overlap is over",
                        fmt(ahead),
                        fmt(overlap),
                        fmt(longest),
                        fmt(budget),
                        fmt(needed)
                    ),
                );
            }
        }
        if self.errors.len() > before || !all_built {
            return None;
        }
        let (lock, lock_target) = lock?;
        if let (Destination::Aws(d), Some(schedule)) = (&lock, &schedule) {
            self.aws_lock_budget(p, path, d, schedule, token_ttl, &hooks, &retry);
            if self.errors.len() > before {
                return None;
            }
        }
        let policy = Policy {
            name: p.name.clone(),
            service_account: p.service_account.clone(),
            token_type,
            token_ttl,
            token_name_prefix: prefix,
            schedule: schedule?,
            overlap,
            hooks,
            destinations,
            lock,
            retry,
        };
        Some((policy, targets, lock_target))
    }

    /// Secrets Manager accepts about 100 new versions of a secret within 24
    /// hours, and every lease on an AWS lock writes versions of
    /// `<name>.lock`: one when taken (twice per rotation: the rotation, and
    /// the revocation after the overlap) and one per renewal, every third
    /// of `lock_ttl`, for as long as a pass can last (the longest
    /// verification deadline plus the step retries). Refuses a policy whose
    /// worst day exceeds the store's `version_budget`.
    #[allow(clippy::too_many_arguments)]
    fn aws_lock_budget(
        &mut self,
        p: &RawPolicy,
        path: &FieldPath,
        lock: &aws::AwsDestination,
        schedule: &ScheduleSpec,
        token_ttl: Option<Duration>,
        hooks: &[HookSpec],
        retry: &RetryPolicy,
    ) {
        let day = chrono::Duration::days(1);
        let start = chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(20_000);
        let token = crate::schedule::TokenTimes {
            created_at: start,
            expires_at: token_ttl
                .and_then(|t| chrono::Duration::from_std(t).ok())
                .map(|t| start + t),
        };
        let budget = u64::from(lock.version_budget());
        // Enough rotations to see any schedule over the budget.
        let rotations = crate::schedule::upcoming(
            &p.name,
            schedule,
            Some(&token),
            start,
            token_ttl,
            usize::try_from(budget)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        )
        .iter()
        .filter(|d| d.at.max(start) <= start + day)
        .count() as u64;
        let longest = hooks
            .iter()
            .map(HookSpec::deadline)
            .max()
            .unwrap_or_default();
        let retries: Duration = (1..retry.max_attempts).map(|n| retry.backoff(n)).sum();
        let pass = longest.saturating_add(retries);
        let every = (lock.lock_ttl() / 3).max(Duration::from_millis(1));
        let renewals =
            u64::try_from(pass.as_nanos().div_ceil(every.as_nanos())).unwrap_or(u64::MAX);
        let worst = rotations.saturating_mul(renewals.saturating_add(2));
        if worst > budget {
            self.error(
                &path.key("name"),
                format!(
                    "in a day this policy can write about {worst} versions of the AWS lock secret `{}` ({rotations} rotations, each taking the lock twice and renewing it up to {renewals} times over a pass of up to {}), above the {budget} new versions Secrets Manager accepts within 24 hours: rotate less often, shorten verification deadlines or retries, or lengthen `lock_ttl` (or, for a service without that quota, raise the store's `version_budget`)",
                    lock.lock_name(),
                    humantime::format_duration(pass)
                ),
            );
        }
    }

    /// A destination (or, without `bare_token_file`, a lock place) on the
    /// store named `store`, and what it writes. On a store whose settings
    /// have errors, `path` is checked for form only and `None` returned.
    fn destination(
        &mut self,
        store: &str,
        place: &str,
        bare_token_file: Option<&str>,
        dpath: &FieldPath,
        stores: &BTreeMap<String, StoreDef>,
    ) -> Option<(Destination, Target)> {
        let Some(def) = stores.get(store) else {
            let known: Vec<&str> = stores.keys().map(String::as_str).collect();
            self.error(
                &dpath.key("store"),
                format!(
                    "no store named `{store}` (defined: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            return None;
        };
        let before = self.errors.len();
        let kind = def.kind()?;
        let ppath = dpath.key("path");
        match kind {
            "file" => {
                if !plain_file_name(place) {
                    self.error(
                        &ppath,
                        format!(
                            "`{}` must be a plain file name inside the store's directory",
                            place.escape_debug()
                        ),
                    );
                }
                if let Some(b) = bare_token_file
                    && (!plain_file_name(b) || b == place)
                {
                    self.error(
                        &dpath.key("bare_token_file"),
                        format!(
                            "`{}` must be a plain file name, different from `path`",
                            b.escape_debug()
                        ),
                    );
                }
            }
            "vault" => {
                let problem = vault_path_problem(place).or_else(|| {
                    VAULT_SUFFIXES.iter().find(|s| place.ends_with(*s)).map(|s| {
                        format!(
                            "must not end with `{s}`: the Vault store keeps `<path>.pending`, `<path>.lock` (KV v2) and `<path>.previous` (KV v1) next to each destination"
                        )
                    })
                });
                if let Some(why) = problem {
                    self.error(
                        &ppath,
                        format!("Vault KV path `{}` {why}", place.escape_debug()),
                    );
                }
            }
            _ => {
                let problem = aws_name_problem(place).or_else(|| {
                    AWS_SUFFIXES.iter().find(|s| place.ends_with(*s)).map(|s| {
                        format!(
                            "must not end with `{s}`: the AWS store keeps `<name>.journal` and `<name>.lock` next to each destination"
                        )
                    })
                });
                if let Some(why) = problem {
                    self.error(
                        &ppath,
                        format!("secret name `{}` {why}", place.escape_debug()),
                    );
                }
            }
        }
        if kind != "file" && bare_token_file.is_some() {
            self.error(
                &dpath.key("bare_token_file"),
                format!("applies to file stores only, and store `{store}` is of type `{kind}`"),
            );
        }
        if self.errors.len() > before {
            return None;
        }
        match def {
            StoreDef::File { directory } => {
                let dest = FileDestination {
                    store: store.to_owned(),
                    directory: directory.clone(),
                    file: place.to_owned(),
                    bare_token_file: bare_token_file.map(str::to_owned),
                };
                let mut target = Target::new(
                    "file",
                    Place::File(dest.path()),
                    &[".pending", ".previous", ".lock"],
                );
                if let Some(b) = bare_token_file {
                    target
                        .writes
                        .push(("bare_token_file", Place::File(directory.join(b)), None));
                }
                Some((Destination::File(dest), target))
            }
            StoreDef::Vault(v) => {
                let dest = match VaultDestination::new(v.conn.clone(), store, &v.mount, place, v.kv)
                {
                    Ok(d) => d.with_lease_ttl(v.lease_ttl),
                    Err(e) => {
                        self.error(&ppath, e.to_string());
                        return None;
                    }
                };
                let suffixes: &[&str] = match v.kv {
                    KvVersion::V2 => &[".pending", ".lock"],
                    KvVersion::V1 => &[".pending", ".previous"],
                };
                let record = Place::Vault {
                    server: v.server.clone(),
                    mount: v.mount.clone(),
                    path: place.to_owned(),
                };
                Some((
                    Destination::Vault(dest),
                    Target::new("vault", record, suffixes),
                ))
            }
            StoreDef::Aws(a) => {
                let dest = AwsDestination::new(store, a.conn.clone(), place).and_then(|d| {
                    d.create_if_missing(a.create_if_missing, a.kms_key_id.clone())
                        .with_version_budget(a.version_budget)
                        .with_lock_ttl(a.lock_ttl)
                });
                let dest = match dest {
                    Ok(d) => d,
                    Err(e) => {
                        self.error(&ppath, e.to_string());
                        return None;
                    }
                };
                let record = Place::Aws {
                    region: a.conn.region().to_owned(),
                    name: place.to_owned(),
                };
                Some((
                    Destination::Aws(dest),
                    Target::new("aws", record, &AWS_SUFFIXES),
                ))
            }
            StoreDef::Invalid { .. } => None,
        }
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

/// A place a destination writes: a file, a Vault secret or an AWS secret.
/// Equal places are the same object in the same system.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    File(PathBuf),
    /// A secret in a KV mount; `server` is the address and namespace.
    Vault {
        server: String,
        mount: String,
        path: String,
    },
    /// A secret of the account in `region` (one credential chain per
    /// daemon, so one account).
    Aws {
        region: String,
        name: String,
    },
}

impl Place {
    /// The place `suffix` appended to this one names.
    fn with_suffix(&self, suffix: &str) -> Place {
        match self {
            Place::File(p) => {
                let mut name = p.clone().into_os_string();
                name.push(suffix);
                Place::File(PathBuf::from(name))
            }
            Place::Vault {
                server,
                mount,
                path,
            } => Place::Vault {
                server: server.clone(),
                mount: mount.clone(),
                path: format!("{path}{suffix}"),
            },
            Place::Aws { region, name } => Place::Aws {
                region: region.clone(),
                name: format!("{name}{suffix}"),
            },
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::File(p) => write!(f, "{}", p.display()),
            Place::Vault { mount, path, .. } => write!(f, "vault:{mount}/{path}"),
            Place::Aws { region, name } => write!(f, "aws:{region}/{name}"),
        }
    }
}

/// Everything one destination writes, for finding two destinations that
/// would write the same place.
#[derive(Debug, Clone)]
struct Target {
    /// The store kind, for messages.
    kind: &'static str,
    /// The record consumers read.
    record: Place,
    /// The record, the siblings its store keeps next to it and a bare token
    /// file: each with the field a conflict is reported at and, for a
    /// sibling, the record it belongs to.
    writes: Vec<(&'static str, Place, Option<Place>)>,
    /// The sibling a lock on this destination is kept in.
    lock: Place,
}

impl Target {
    /// A record at `record` with the siblings `suffixes` next to it and the
    /// lock at `<record>.lock`.
    fn new(kind: &'static str, record: Place, suffixes: &[&str]) -> Target {
        let mut writes = vec![("path", record.clone(), None)];
        for suffix in suffixes {
            writes.push(("path", record.with_suffix(suffix), Some(record.clone())));
        }
        Target {
            kind,
            lock: record.with_suffix(".lock"),
            record,
            writes,
        }
    }
}

/// Who writes a place, for reporting two destinations that would write the
/// same one.
struct Claim {
    policy: String,
    kind: &'static str,
    /// The record this is a sibling of (`.pending`, `.lock`, …), or `None`
    /// for a record or bare-token file itself.
    sibling_of: Option<Place>,
    /// Claimed by a policy's separate lock place.
    lock_only: bool,
}

impl Claim {
    /// What the place is to its claimant, for messages: "written by policy
    /// `a`", "used by policy `a` as a working file of its record `x`", ….
    fn role(&self) -> String {
        let policy = &self.policy;
        match (&self.sibling_of, self.lock_only) {
            (None, _) => format!("written by policy `{policy}`"),
            (Some(_), true) => format!("used by policy `{policy}` for its lock"),
            (Some(record), false) => format!(
                "used by policy `{policy}` as a {} of its record `{record}`",
                match self.kind {
                    "file" => "working file",
                    "vault" => "sibling secret",
                    _ => "companion secret",
                }
            ),
        }
    }

    /// What the store writes: a file or a secret.
    fn noun(&self) -> &'static str {
        if self.kind == "file" {
            "file"
        } else {
            "secret"
        }
    }
}

/// A named store's settings, before destinations point into it.
enum StoreDef {
    File {
        directory: PathBuf,
    },
    Vault(VaultStoreDef),
    Aws(AwsStoreDef),
    /// A store whose settings have errors (reported): destinations on it
    /// are checked for form only, if its kind is known.
    Invalid {
        kind: Option<&'static str>,
    },
}

impl StoreDef {
    fn kind(&self) -> Option<&'static str> {
        match self {
            StoreDef::File { .. } => Some("file"),
            StoreDef::Vault(_) => Some("vault"),
            StoreDef::Aws(_) => Some("aws"),
            StoreDef::Invalid { kind } => *kind,
        }
    }
}

struct VaultStoreDef {
    conn: VaultConnection,
    /// The address and namespace, telling servers apart in [`Place`].
    server: String,
    mount: String,
    kv: KvVersion,
    lease_ttl: Duration,
}

struct AwsStoreDef {
    conn: AwsConnection,
    create_if_missing: bool,
    kms_key_id: Option<String>,
    lock_ttl: Duration,
    version_budget: u32,
}

/// The service-account token a pod gets, the default `jwt_file` of
/// Kubernetes auth.
const DEFAULT_KUBERNETES_JWT: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The default per-request timeout of a Vault store.
const DEFAULT_VAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Suffixes the Vault store uses for the sibling secrets of a destination
/// path (`.previous` on KV v1 only, `.lock` on KV v2 only).
const VAULT_SUFFIXES: [&str; 3] = [".pending", ".previous", ".lock"];

/// Suffixes the AWS store uses for the companion secrets of a destination.
const AWS_SUFFIXES: [&str; 2] = [".journal", ".lock"];

/// Secrets Manager's limit on a secret name.
const AWS_MAX_NAME: usize = 512;

/// Why `s` cannot be a Vault KV path or mount (without the sibling
/// suffixes, which only paths must avoid).
fn vault_path_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if s.starts_with('/') || s.ends_with('/') {
        return Some("must not start or end with `/`".to_owned());
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '*' | '+'))
    {
        return Some("must not contain whitespace or any of `? # * +`".to_owned());
    }
    if s.split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Some("must not have an empty, `.` or `..` segment".to_owned());
    }
    None
}

/// Why `s` cannot be a Secrets Manager secret name of a destination.
fn aws_name_problem(s: &str) -> Option<String> {
    let room = AWS_MAX_NAME - ".journal".len();
    if s.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if s.starts_with("arn:") {
        return Some(
            "is an ARN: give the secret's name, after which the store names its companion secrets"
                .to_owned(),
        );
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/_+=.@-".contains(*c)))
    {
        return Some(format!(
            "contains `{}`, which Secrets Manager does not allow (letters, digits and `/_+=.@-` only)",
            c.escape_debug()
        ));
    }
    if s.len() > room {
        return Some(format!(
            "is {} characters long; at most {room} fit, since Secrets Manager allows {AWS_MAX_NAME} and the store keeps `<name>.journal` next to it",
            s.len()
        ));
    }
    None
}

/// The field of a Vault store a [`VaultSetupError`] is about; `None`: the
/// store as a whole.
fn vault_setup_field(e: &VaultSetupError) -> Option<&'static str> {
    match e {
        VaultSetupError::InvalidAddress { .. } | VaultSetupError::Insecure { .. } => {
            Some("address")
        }
        VaultSetupError::ReadFile { what, .. } | VaultSetupError::BadPem { what, .. } => {
            Some(match *what {
                "CA file" => "ca_file",
                "client key" => "client_key",
                _ => "client_cert",
            })
        }
        VaultSetupError::IncompleteIdentity => Some("client_cert"),
        VaultSetupError::Client(_) | VaultSetupError::Destination(_) => None,
    }
}

/// Whether a secret can be sent in an HTTP header: no line break or other
/// control character inside it (a stray one in a file would otherwise fail
/// only at the first request).
fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The key named by serde's "unknown field `key`, expected …" message.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key)
}

/// The environment variable a secret reference names, if any.
fn env_of(s: &RawSecret) -> Option<String> {
    match s {
        RawSecret::Ref(r) => r.env.clone(),
        RawSecret::Inline => None,
    }
}

/// Every environment variable named by a secret reference.
fn secret_env_names(
    raw: &RawConfig,
    stores: &BTreeMap<String, Result<RawStore, Option<&'static str>>>,
    hooks: &[Vec<Option<RawHook>>],
) -> BTreeSet<String> {
    let admin = env_of(&raw.motherduck.admin_token);
    let vault = stores.values().flat_map(|s| match s {
        Ok(RawStore::Vault(v)) => [&v.auth.token, &v.auth.role_id, &v.auth.secret_id]
            .into_iter()
            .flatten()
            .filter_map(env_of)
            .collect(),
        _ => Vec::new(),
    });
    let headers = hooks
        .iter()
        .flatten()
        .filter_map(|h| match h {
            Some(RawHook::Http(h)) => Some(h.headers.values()),
            _ => None,
        })
        .flatten()
        .filter_map(|v| match v {
            RawHeaderValue::Secret(r) => r.env.clone(),
            RawHeaderValue::Literal(_) => None,
        });
    admin.into_iter().chain(vault).chain(headers).collect()
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
        && !s.chars().any(char::is_control)
        && !s.starts_with('.')
}

/// Why a configured path cannot be used: a NUL byte cannot be passed to
/// the operating system, and newlines or other control characters in a
/// path are a pasting mistake that would also garble every message naming
/// it.
fn path_problem(p: &Path) -> Option<String> {
    let text = p.to_string_lossy();
    text.chars().any(char::is_control).then(|| {
        format!(
            "`{}` contains a control character (NUL, newline, tab, ...); paths must not",
            text.escape_debug()
        )
    })
}

fn default_instance_id() -> String {
    // gethostname(2) rather than /proc/sys/kernel/hostname: systemd's
    // ProcSubset=pid hides the latter.
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim().to_owned()
    } else {
        String::new()
    };
    let host = if host.is_empty() {
        "unknown-host".to_owned()
    } else {
        host
    };
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests;
