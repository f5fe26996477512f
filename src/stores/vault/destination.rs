//! A Vault destination: its place (mount, path, siblings), the capabilities
//! it needs, and how its failures read.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::stores::{StoreError, StoreErrorKind, StoreOp};

use super::connection::{Failure, VaultConnection, clean_errors, is_transient_status, unreachable};
use super::settings::VaultSetupError;
use super::{DEFAULT_LEASE_TTL, MIN_LEASE_TTL};

/// The KV engine version of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvVersion {
    V1,
    V2,
}

/// A Vault destination: a KV mount and a path on one connection.
#[derive(Clone)]
pub struct VaultDestination {
    /// The configured store's name, for messages.
    store: String,
    pub(super) mount: String,
    path: String,
    pub(super) kv: KvVersion,
    pub(super) lease_ttl: Duration,
    pub(super) conn: VaultConnection,
    /// The version of `P` the last `load` saw (or our last write made);
    /// writes to `P` refuse when it changed meanwhile. Shared by clones.
    observed: Arc<Mutex<Option<u64>>>,
    /// The mount was found to be KV of the configured version; checked
    /// once, before the first lock is written.
    pub(super) mount_ok: Arc<tokio::sync::OnceCell<()>>,
}

impl fmt::Debug for VaultDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultDestination")
            .field("store", &self.store)
            .field("address", &self.conn.address())
            .field("mount", &self.mount)
            .field("path", &self.path)
            .field("kv", &self.kv)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// Which sibling of the destination path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sibling {
    Current,
    Pending,
    Previous,
    Lock,
}

impl VaultDestination {
    /// A destination at `mount`/`path` (surrounding slashes are dropped).
    ///
    /// # Errors
    /// An empty or malformed mount or path, or a path ending in a suffix
    /// the store uses for its siblings.
    pub fn new(
        conn: VaultConnection,
        store: impl Into<String>,
        mount: &str,
        path: &str,
        kv: KvVersion,
    ) -> Result<VaultDestination, VaultSetupError> {
        let clean = |what: &str, s: &str| -> Result<String, VaultSetupError> {
            let t = s.trim_matches('/');
            let bad = |why: &str| VaultSetupError::Destination(format!("{what} `{s}` {why}"));
            if t.is_empty() {
                return Err(bad("is empty"));
            }
            if t.chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '*' | '+'))
            {
                return Err(bad("contains whitespace or one of `? # * +`"));
            }
            if t.split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                return Err(bad("has an empty, `.` or `..` segment"));
            }
            Ok(t.to_owned())
        };
        let mount = clean("mount", mount)?;
        let path = clean("path", path)?;
        for suffix in [".pending", ".previous", ".lock"] {
            if path.ends_with(suffix) {
                return Err(VaultSetupError::Destination(format!(
                    "path `{path}` ends with `{suffix}`, which the store uses for its sibling secrets"
                )));
            }
        }
        Ok(VaultDestination {
            store: store.into(),
            mount,
            path,
            kv,
            lease_ttl: DEFAULT_LEASE_TTL,
            conn,
            observed: Arc::new(Mutex::new(None)),
            mount_ok: Arc::default(),
        })
    }

    /// Sets how long a coordination lease lasts unless renewed (at least
    /// [`MIN_LEASE_TTL`]).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> VaultDestination {
        self.lease_ttl = ttl.max(MIN_LEASE_TTL);
        self
    }

    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// The configured store's name.
    pub fn store(&self) -> &str {
        &self.store
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn kv_version(&self) -> KvVersion {
        self.kv
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    pub fn connection(&self) -> &VaultConnection {
        &self.conn
    }

    /// `vault:<mount>/<path>`, with ` (kv v1)` for a KV v1 mount.
    pub fn label(&self) -> String {
        match self.kv {
            KvVersion::V2 => format!("vault:{}/{}", self.mount, self.path),
            KvVersion::V1 => format!("vault:{}/{} (kv v1)", self.mount, self.path),
        }
    }

    pub fn kind(&self) -> &'static str {
        "vault"
    }

    /// Where the lease lives, unique among every Vault server, namespace
    /// and mount this process talks to.
    pub(super) fn lease_location(&self) -> String {
        format!(
            "vault {} ns={} {}",
            self.conn.address(),
            self.conn.namespace().unwrap_or(""),
            self.api("data", &self.sib(Sibling::Lock))
        )
    }

    /// The path of a sibling inside the mount.
    pub(super) fn sib(&self, s: Sibling) -> String {
        match s {
            Sibling::Current => self.path.clone(),
            Sibling::Pending => format!("{}.pending", self.path),
            Sibling::Previous => format!("{}.previous", self.path),
            Sibling::Lock => format!("{}.lock", self.path),
        }
    }

    /// The API path of a KV v2 secret (`secret/data/x`), or of a KV v1
    /// secret when `kind` is empty (`kv/x`).
    pub(super) fn api(&self, kind: &str, path: &str) -> String {
        if kind.is_empty() {
            format!("{}/{path}", self.mount)
        } else {
            format!("{}/{kind}/{path}", self.mount)
        }
    }

    /// The paths this destination uses and the capabilities each needs.
    pub fn required_capabilities(&self) -> Vec<(String, &'static [&'static str])> {
        const RCU: &[&str] = &["create", "read", "update"];
        const RCUD: &[&str] = &["create", "read", "update", "delete"];
        const RU: &[&str] = &["read", "update"];
        const R: &[&str] = &["read"];
        const U: &[&str] = &["update"];
        let p = |s| self.sib(s);
        match self.kv {
            KvVersion::V2 => vec![
                (self.api("data", &p(Sibling::Current)), RCU),
                (self.api("metadata", &p(Sibling::Current)), RU),
                (self.api("delete", &p(Sibling::Current)), U),
                (self.api("data", &p(Sibling::Pending)), RCU),
                (self.api("metadata", &p(Sibling::Pending)), RCUD),
                (self.api("data", &p(Sibling::Lock)), RCU),
                (self.api("metadata", &p(Sibling::Lock)), R),
                (self.api("delete", &p(Sibling::Lock)), U),
            ],
            KvVersion::V1 => vec![
                (self.api("", &p(Sibling::Current)), RCUD),
                (self.api("", &p(Sibling::Pending)), RCUD),
                (self.api("", &p(Sibling::Previous)), RCUD),
            ],
        }
    }

    /// The least-privilege Vault policy (HCL) for this destination. Token
    /// lookup and renewal come from Vault's built-in `default` policy.
    pub fn required_policy_hcl(&self) -> String {
        let mut out = format!("# motherduck-rotator: {}\n", self.label());
        for (path, caps) in self.required_capabilities() {
            let caps: Vec<String> = caps.iter().map(|c| format!("\"{c}\"")).collect();
            out.push_str(&format!(
                "path \"{path}\" {{\n  capabilities = [{}]\n}}\n",
                caps.join(", ")
            ));
        }
        out
    }

    pub(super) fn err(&self, op: StoreOp, kind: StoreErrorKind, message: String) -> StoreError {
        StoreError::new(self.label(), op, kind, message)
    }

    /// Turns a failed request into a store error. `action` says what was
    /// attempted on which path ("write `secret/data/x`"); `caps` which
    /// capabilities that needs.
    pub(super) fn fail(&self, op: StoreOp, action: &str, caps: &str, f: Failure) -> StoreError {
        let (kind, message) = match f {
            Failure::Status { code: 400, errors }
                if errors.iter().any(|e| e.contains("check-and-set")) =>
            {
                (
                    StoreErrorKind::Conflict,
                    format!(
                        "{action}: check-and-set failed, the secret changed since it was read (another writer): {}",
                        clean_errors(&errors)
                    ),
                )
            }
            Failure::Status { code: 403, errors }
                if errors.iter().any(|e| e.contains("invalid token")) =>
            {
                (
                    StoreErrorKind::Permanent,
                    format!(
                        "{action}: the Vault token is not valid (HTTP 403: {}); it expired, was revoked, or belongs to another server or namespace",
                        clean_errors(&errors)
                    ),
                )
            }
            Failure::Status { code: 403, errors } => (
                StoreErrorKind::Permanent,
                format!(
                    "{action}: permission denied (HTTP 403: {}); the Vault policy must grant {caps} on that path, and the token must be valid (not expired or revoked)",
                    clean_errors(&errors)
                ),
            ),
            Failure::Status { code: 404, errors } => (
                StoreErrorKind::Permanent,
                format!(
                    "{action}: not found (HTTP 404: {}); is `{}` a KV v{} mount?",
                    clean_errors(&errors),
                    self.mount,
                    if self.kv == KvVersion::V2 { 2 } else { 1 }
                ),
            ),
            Failure::Status { code, errors } => (
                if is_transient_status(code) {
                    StoreErrorKind::Transient
                } else {
                    StoreErrorKind::Permanent
                },
                format!(
                    "{action}: Vault answered HTTP {code}: {}",
                    clean_errors(&errors)
                ),
            ),
            Failure::Transport(m) => (
                StoreErrorKind::Transient,
                format!(
                    "{action}: {}",
                    unreachable(&format!(" at {}", self.conn.address()), &m)
                ),
            ),
            Failure::Unexplained => (
                StoreErrorKind::Transient,
                format!("{action}: Vault answered an error status without details"),
            ),
            Failure::BadResponse(m) => (
                StoreErrorKind::Corrupt,
                format!("{action}: unexpected answer from Vault: {m}"),
            ),
            Failure::Auth(e) => (e.kind, format!("{action}: {}", e.message)),
        };
        self.err(op, kind, self.conn.redact(message))
    }

    pub(super) fn observe(&self, version: u64) {
        *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
    }

    /// Refuses a write to `P` when `P` changed since the last `load` (or
    /// our own last write). The refusal records the new version, so a
    /// deliberate retry goes through.
    pub(super) fn check_observed(&self, op: StoreOp, fresh: u64) -> Result<(), StoreError> {
        let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match *o {
            Some(seen) if seen != fresh => {
                *o = Some(fresh);
                Err(self.err(
                    op,
                    StoreErrorKind::Conflict,
                    format!(
                        "`{}` changed since it was loaded (version {seen}, now {fresh}): another writer; reload and decide again",
                        self.api("data", &self.path)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;
    use crate::stores::vault::{VaultAuth, VaultSettings};

    #[test]
    fn debug_output_never_shows_credentials() {
        let auth = VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: SecretString::from("role-id-value".to_owned()),
            secret_id: SecretString::from("secret-id-value".to_owned()),
        };
        let conn = VaultConnection::new(VaultSettings::new("http://127.0.0.1:1", auth)).unwrap();
        let d = VaultDestination::new(conn.clone(), "vault", "secret", "md/etl", KvVersion::V2)
            .unwrap();
        let tok = VaultConnection::new(VaultSettings::new(
            "http://127.0.0.1:1",
            VaultAuth::Token(SecretString::from("hvs.static-token".to_owned())),
        ))
        .unwrap();
        let printed = format!("{conn:?} {d:?} {tok:?}");
        for s in ["role-id-value", "secret-id-value", "hvs.static-token"] {
            assert!(!printed.contains(s), "{printed}");
        }
        assert_eq!(d.label(), "vault:secret/md/etl");
    }

    #[test]
    fn destinations_validate_mount_and_path() {
        let conn = VaultConnection::new(VaultSettings::new(
            "http://127.0.0.1:1",
            VaultAuth::Token(SecretString::from("t".to_owned())),
        ))
        .unwrap();
        let mk = |m: &str, p: &str| {
            VaultDestination::new(conn.clone(), "v", m, p, KvVersion::V1).map(|d| d.label())
        };
        assert_eq!(mk("/kv/", "/a/b/").unwrap(), "vault:kv/a/b (kv v1)");
        for (m, p) in [
            ("", "a"),
            ("kv", ""),
            ("kv", "a//b"),
            ("kv", "a/../b"),
            ("kv", "a b"),
        ] {
            assert!(mk(m, p).is_err(), "{m:?} {p:?}");
        }
        let e = mk("kv", "etl.lock").unwrap_err().to_string();
        assert!(e.contains(".lock"), "{e}");
    }

    #[test]
    fn policy_lists_every_path_of_the_layout() {
        let conn = VaultConnection::new(VaultSettings::new(
            "http://127.0.0.1:1",
            VaultAuth::Token(SecretString::from("t".to_owned())),
        ))
        .unwrap();
        let d = VaultDestination::new(conn, "v", "secret", "md/etl", KvVersion::V2).unwrap();
        let hcl = d.required_policy_hcl();
        for p in [
            "path \"secret/data/md/etl\"",
            "path \"secret/metadata/md/etl\"",
            "path \"secret/delete/md/etl\"",
            "path \"secret/data/md/etl.pending\"",
            "path \"secret/metadata/md/etl.pending\"",
            "path \"secret/data/md/etl.lock\"",
            "path \"secret/metadata/md/etl.lock\"",
            "path \"secret/delete/md/etl.lock\"",
        ] {
            assert!(hcl.contains(p), "{p} missing from\n{hcl}");
        }
    }
}
