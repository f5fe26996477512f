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
//!
//! This file holds the entry points and the [`Config`] they build; each
//! section of the file is validated in its own module, as methods of the
//! one `Validator` that collects the problems.

mod alerts;
mod daemon;
mod destinations;
mod hooks;
mod motherduck;
mod policy;
pub mod raw;
mod reload;
mod secrets;
mod span;
mod stores;
mod validator;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use destinations::{Claim, Place};
use raw::{RawConfig, RawHook, RawStore};
use secrets::secret_env_names;
use span::SourceMap;
use stores::StoreDef;
use validator::{Validator, root, serde_error};

pub use daemon::{DaemonSettings, LogFormat};
pub use motherduck::MotherDuckSettings;
pub use policy::Policy;

use crate::stores::vault::VaultConnection;

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

/// The longest duration any setting accepts (100 years of 365 days).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Validator<'_> {
    /// Validates every section and assembles the [`Config`]; `None` when a
    /// section has errors (reported).
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
}

#[cfg(test)]
mod tests;
