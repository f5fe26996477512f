//! `[stores.<name>]`: file, Vault and AWS stores, each read by its `type`
//! and validated into the settings and connection its destinations share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawAwsStore, RawStore, RawVaultAuth, RawVaultAuthMethod, RawVaultStore};
use super::secrets::{header_safe, unresolved};
use super::span::FieldPath;
use super::validator::{Validator, path_problem, root, valid_name};
use crate::secret::{ExposeSecret, read_secret_file};
use crate::stores::aws::{self, AwsConnection, AwsConnectionSettings};
use crate::stores::vault::{
    self, KvVersion, VaultAuth, VaultConnection, VaultSettings, VaultSetupError,
};

impl Validator<'_> {
    /// Reads the store `name` by its `type`. `Err` holds the store's kind
    /// when its `type` is valid (the error is reported).
    pub(super) fn raw_store(&mut self, name: &str) -> Result<RawStore, Option<&'static str>> {
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

    pub(super) fn stores(
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
        let lease_ttl = self.duration_at_least(
            &v.lease_ttl,
            &path.key("lease_ttl"),
            vault::DEFAULT_LEASE_TTL,
            vault::MIN_LEASE_TTL,
        );
        if lease_ttl >= vault::MIN_LEASE_TTL && v.lease_ttl.is_some() && kv == KvVersion::V1 {
            self.warn(
                &path.key("lease_ttl"),
                "has no effect: a KV v1 store cannot hold a lock",
            );
        }
        let request_timeout = self.nonzero_duration(
            &v.request_timeout,
            &path.key("request_timeout"),
            DEFAULT_VAULT_REQUEST_TIMEOUT,
        );
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
}

/// A named store's settings, before destinations point into it.
pub(super) enum StoreDef {
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
    pub(super) fn kind(&self) -> Option<&'static str> {
        match self {
            StoreDef::File { .. } => Some("file"),
            StoreDef::Vault(_) => Some("vault"),
            StoreDef::Aws(_) => Some("aws"),
            StoreDef::Invalid { kind } => *kind,
        }
    }
}

pub(super) struct VaultStoreDef {
    pub(super) conn: VaultConnection,
    /// The address and namespace, telling servers apart in
    /// [`super::destinations::Place`].
    pub(super) server: String,
    pub(super) mount: String,
    pub(super) kv: KvVersion,
    pub(super) lease_ttl: Duration,
}

pub(super) struct AwsStoreDef {
    pub(super) conn: AwsConnection,
    pub(super) create_if_missing: bool,
    pub(super) kms_key_id: Option<String>,
    pub(super) lock_ttl: Duration,
    pub(super) version_budget: u32,
}

/// The service-account token a pod gets, the default `jwt_file` of
/// Kubernetes auth.
const DEFAULT_KUBERNETES_JWT: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The default per-request timeout of a Vault store.
const DEFAULT_VAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Suffixes the Vault store uses for the sibling secrets of a destination
/// path (`.previous` on KV v1 only, `.lock` on KV v2 only).
pub(super) const VAULT_SUFFIXES: [&str; 3] = [".pending", ".previous", ".lock"];

/// Suffixes the AWS store uses for the companion secrets of a destination.
pub(super) const AWS_SUFFIXES: [&str; 2] = [".journal", ".lock"];

/// Secrets Manager's limit on a secret name.
const AWS_MAX_NAME: usize = 512;

/// Why `s` cannot be a Vault KV path or mount (without the sibling
/// suffixes, which only paths must avoid).
pub(super) fn vault_path_problem(s: &str) -> Option<String> {
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
pub(super) fn aws_name_problem(s: &str) -> Option<String> {
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
