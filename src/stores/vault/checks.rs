//! Readiness and preflight checks: the mount, the token's capabilities,
//! `max_versions`.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::time::Instant;
use tracing::warn;

use crate::stores::{StoreError, StoreErrorKind, StoreOp};

use super::connection::{Failure, clean_errors};
use super::destination::{KvVersion, Sibling, VaultDestination};

impl VaultDestination {
    /// Checks that Vault is reachable, the credentials work, the mount is
    /// KV of the configured version, the token has every capability the
    /// layout needs (via `sys/capabilities-self`), and the records parse.
    ///
    /// # Errors
    /// What is wrong, naming paths and missing capabilities.
    pub async fn check(&self) -> Result<(), StoreError> {
        let op = StoreOp::Check;
        self.ensure_token(op).await?;
        self.check_mount(op).await?;
        self.check_layout(op).await?;
        match self.kv {
            KvVersion::V2 => {
                self.v2_read(op, &self.sib(Sibling::Current)).await?;
                self.v2_read(op, &self.sib(Sibling::Pending)).await?;
            }
            KvVersion::V1 => {
                for s in [Sibling::Current, Sibling::Pending, Sibling::Previous] {
                    self.v1_read(op, &self.sib(s)).await?;
                }
            }
        }
        Ok(())
    }

    /// A usable token, or why not as a store error.
    async fn ensure_token(&self, op: StoreOp) -> Result<(), StoreError> {
        self.conn
            .ensure_token(Instant::now())
            .await
            .map(|_| ())
            .map_err(|e| self.err(op, e.kind, e.message))
    }

    pub(super) async fn check_mount(&self, op: StoreOp) -> Result<(), StoreError> {
        let api = format!("sys/internal/ui/mounts/{}", self.mount);
        let info = self
            .conn
            .raw(reqwest::Method::GET, &api, None)
            .await
            .map_err(|f| match f {
                // Vault answers 403 for a mount that does not exist too.
                Failure::Status { code: 403, errors } => self.err(
                    op,
                    StoreErrorKind::Permanent,
                    self.conn.redact(format!(
                        "read mount `{}`: permission denied (HTTP 403: {}); the mount does not exist, or the token may not read `sys/internal/ui/mounts/{}` (granted by the `default` policy), or the token is not valid",
                        self.mount,
                        clean_errors(&errors),
                        self.mount
                    )),
                ),
                f => self.fail(op, &format!("read mount `{}`", self.mount), "access", f),
            })?;
        let data = &info["data"];
        let kind = data["type"].as_str().unwrap_or_default();
        let version = data["options"]["version"].as_str().unwrap_or("1");
        let want = if self.kv == KvVersion::V2 { "2" } else { "1" };
        if !matches!(kind, "kv" | "generic") || version != want {
            return Err(self.err(
                op,
                StoreErrorKind::Permanent,
                format!(
                    "mount `{}` is `{kind}` version {version}, but the destination is configured for KV v{want}",
                    self.mount
                ),
            ));
        }
        Ok(())
    }

    /// The part of [`Self::check`] run before each rotation creates a
    /// token: the token's capabilities on every path of the layout, and a
    /// secret that can be rolled back.
    ///
    /// # Errors
    /// The missing capabilities, naming each path; `max_versions = 1`; or
    /// Vault unreachable.
    pub async fn preflight(&self) -> Result<(), StoreError> {
        let op = StoreOp::Check;
        self.ensure_token(op).await?;
        self.check_layout(op).await
    }

    async fn check_layout(&self, op: StoreOp) -> Result<(), StoreError> {
        self.check_capabilities(op, self.required_capabilities())
            .await?;
        self.check_max_versions(op).await
    }

    /// [`check`](Self::check) for a destination that only holds a
    /// policy's lock (`P.lock`): Vault is reachable, the credentials work,
    /// the mount is KV v2, and the token may take and release the lease.
    ///
    /// # Errors
    /// What is wrong, naming paths and missing capabilities.
    pub async fn check_lock(&self) -> Result<(), StoreError> {
        let op = StoreOp::Check;
        self.ensure_token(op).await?;
        self.check_mount(op).await?;
        let lock = self.sib(Sibling::Lock);
        let need = self
            .required_capabilities()
            .into_iter()
            .filter(|(path, _)| path.ends_with(&format!("/{lock}")))
            .collect();
        self.check_capabilities(op, need).await
    }

    /// A KV v2 secret that keeps a single version cannot be rolled back:
    /// the previous record is the version before the current one.
    async fn check_max_versions(&self, op: StoreOp) -> Result<(), StoreError> {
        if self.kv != KvVersion::V2 {
            return Ok(());
        }
        let p = self.sib(Sibling::Current);
        match self.v2_meta(op, &p).await? {
            Some(meta) if meta.max_versions == 1 => Err(self.err(
                op,
                StoreErrorKind::Permanent,
                format!(
                    "`{}` keeps max_versions = 1, so a rotation could not be rolled back (the previous record is the previous version); set max_versions to 2 or more, or 0 for the mount's default",
                    self.api("metadata", &p)
                ),
            )),
            _ => Ok(()),
        }
    }

    async fn check_capabilities(
        &self,
        op: StoreOp,
        need: Vec<(String, &'static [&'static str])>,
    ) -> Result<(), StoreError> {
        let paths: Vec<&str> = need.iter().map(|(p, _)| p.as_str()).collect();
        let r = self
            .conn
            .raw(
                reqwest::Method::POST,
                "sys/capabilities-self",
                Some(serde_json::json!({ "paths": paths })),
            )
            .await;
        let answer = match r {
            Ok(v) => v,
            Err(Failure::Status { code: 403, .. }) => {
                warn!(destination = %self.label(), "cannot ask Vault for the token's capabilities (sys/capabilities-self is in the `default` policy); skipping that check");
                return Ok(());
            }
            Err(f) => {
                return Err(self.fail(op, "read `sys/capabilities-self`", "`update`", f));
            }
        };
        let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (path, caps) in &need {
            let have: Vec<&str> = answer["data"][path.as_str()]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if have.contains(&"root") {
                continue;
            }
            let lacking: Vec<&str> = caps
                .iter()
                .copied()
                .filter(|c| !have.contains(c) || have.contains(&"deny"))
                .collect();
            if !lacking.is_empty() {
                missing.insert(path.as_str(), lacking);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = missing
            .iter()
            .map(|(p, c)| format!("`{p}` needs {}", c.join(", ")))
            .collect();
        Err(self.err(
            op,
            StoreErrorKind::Permanent,
            format!("the Vault token lacks capabilities: {}", list.join("; ")),
        ))
    }
}
