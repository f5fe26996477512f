//! The KV primitives a destination is built from: KV v2 reads and writes
//! with check-and-set, KV v1 reads and writes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::warn;
use vaultrs::api::kv2::requests::{
    ReadSecretRequest, SetSecretMetadataRequest, SetSecretRequestOptions,
};

use crate::stores::{Journal, StoreError, StoreErrorKind, StoreOp};

use super::connection::{Authed, Failure};
use super::destination::{Sibling, VaultDestination};
use super::record::{Record, SensitiveValue, Tag, decode_tag, journal_metadata, parse_record};

/// KV v2 metadata of one secret, as far as the store needs it.
#[derive(Debug)]
pub(super) struct V2Meta {
    /// `current_version`; 0 for metadata without versions.
    pub(super) version: u64,
    /// Versions whose data can still be read.
    pub(super) readable: HashSet<u64>,
    custom: HashMap<String, String>,
    /// The secret's own `max_versions`; 0 defers to the mount's setting.
    pub(super) max_versions: u64,
}

/// A KV v2 secret as read: metadata, the latest version's data and record,
/// and the journal if it describes that version.
pub(super) struct V2Read {
    meta: Option<V2Meta>,
    pub(super) data: Option<SensitiveValue>,
    pub(super) record: Option<Record>,
    pub(super) tag: Tag,
}

impl V2Read {
    pub(super) fn version(&self) -> u64 {
        self.meta.as_ref().map_or(0, |m| m.version)
    }

    pub(super) fn custom(&self) -> HashMap<String, String> {
        self.meta
            .as_ref()
            .map(|m| m.custom.clone())
            .unwrap_or_default()
    }

    pub(super) fn is_rotation(&self, rid: &str) -> bool {
        self.record.as_ref().is_some_and(|r| r.rotation_id() == rid)
    }

    pub(super) fn journal(&self) -> Option<&Journal> {
        match &self.tag {
            Tag::Valid { journal, .. } => Some(journal),
            Tag::Stale => None,
        }
    }

    /// The version holding the previous record, and whether that comes
    /// from the journal (`true`) or is inferred as the version before the
    /// latest because the journal is stale (`false`).
    pub(super) fn previous_version(&self) -> (Option<u64>, bool) {
        match &self.tag {
            Tag::Valid {
                previous_version, ..
            } => (*previous_version, true),
            Tag::Stale => {
                let v = self.version();
                ((self.record.is_some() && v > 1).then(|| v - 1), false)
            }
        }
    }
}

impl VaultDestination {
    pub(super) async fn v2_meta(
        &self,
        op: StoreOp,
        path: &str,
    ) -> Result<Option<V2Meta>, StoreError> {
        let r = self
            .on_mount(
                |c, mount| async move { vaultrs::kv2::read_metadata(&c.0, mount, path).await },
            )
            .await;
        match r {
            Ok(m) => {
                let now = Utc::now();
                let readable = m
                    .versions
                    .iter()
                    .filter(|(_, v)| {
                        !v.destroyed
                            && (v.deletion_time.is_empty()
                                || v.deletion_time
                                    .parse::<DateTime<Utc>>()
                                    .is_ok_and(|t| t > now))
                    })
                    .filter_map(|(k, _)| k.parse().ok())
                    .collect();
                Ok(Some(V2Meta {
                    version: m.current_version,
                    readable,
                    custom: m.custom_metadata.unwrap_or_default(),
                    max_versions: m.max_versions,
                }))
            }
            Err(Failure::Status { code: 404, errors }) if errors.is_empty() => Ok(None),
            Err(f) => Err(self.fail(
                op,
                &format!("read `{}`", self.api("metadata", path)),
                "`read`",
                f,
            )),
        }
    }

    pub(super) async fn v2_data(
        &self,
        op: StoreOp,
        path: &str,
        version: u64,
    ) -> Result<Option<SensitiveValue>, StoreError> {
        let r = self
            .on_mount(|c, mount| async move {
                let endpoint = ReadSecretRequest::builder()
                    .mount(mount)
                    .path(path)
                    .version(Some(version))
                    .build()
                    .map_err(|e| Failure::BadResponse(e.to_string()))?;
                vaultrs::api::exec_with_result(&c.0, endpoint)
                    .await
                    .map_err(Failure::from)
            })
            .await;
        match r {
            Ok(resp) => Ok(match resp.data {
                Value::Null => None,
                data => Some(SensitiveValue(data)),
            }),
            Err(Failure::Status { code: 404, errors }) if errors.is_empty() => Ok(None),
            // Most likely the version was deleted since the metadata was
            // read (a lease released meanwhile): look again.
            Err(Failure::Unexplained)
                if self
                    .v2_meta(op, path)
                    .await?
                    .is_none_or(|m| !m.readable.contains(&version)) =>
            {
                Ok(None)
            }
            Err(f) => Err(self.fail(
                op,
                &format!("read `{}` version {version}", self.api("data", path)),
                "`read`",
                f,
            )),
        }
    }

    /// Metadata, latest data and journal of a KV v2 secret.
    pub(super) async fn v2_read(&self, op: StoreOp, path: &str) -> Result<V2Read, StoreError> {
        let Some(meta) = self.v2_meta(op, path).await? else {
            return Ok(V2Read {
                meta: None,
                data: None,
                record: None,
                tag: Tag::Stale,
            });
        };
        let version = meta.version;
        let data = if version > 0 && meta.readable.contains(&version) {
            self.v2_data(op, path, version).await?
        } else {
            None
        };
        let record = match &data {
            Some(d) => Some(parse_record(&d.0).map_err(|reason| {
                self.err(
                    op,
                    StoreErrorKind::Corrupt,
                    format!(
                        "`{}` version {version} is not a valid token record: {reason}",
                        self.api("data", path)
                    ),
                )
            })?),
            None => None,
        };
        let tag = decode_tag(&meta.custom, version).map_err(|reason| {
            self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("`{}`: {reason}", self.api("metadata", path)),
            )
        })?;
        Ok(V2Read {
            meta: Some(meta),
            data,
            record,
            tag,
        })
    }

    /// Writes a new version with check-and-set; returns its number.
    pub(super) async fn v2_write(
        &self,
        op: StoreOp,
        path: &str,
        data: &Value,
        cas: u64,
    ) -> Result<u64, StoreError> {
        let action = format!("write `{}`", self.api("data", path));
        let cas = u32::try_from(cas).map_err(|_| {
            self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("{action}: version {cas} is out of range"),
            )
        })?;
        self.on_mount(|c, mount| async move {
            vaultrs::kv2::set_with_options(&c.0, mount, path, data, SetSecretRequestOptions { cas })
                .await
        })
        .await
        .map(|m| m.version)
        .map_err(|f| self.fail(op, &action, "`create` and `update`", f))
    }

    pub(super) async fn v2_set_custom(
        &self,
        op: StoreOp,
        path: &str,
        custom: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let action = format!("write `{}`", self.api("metadata", path));
        let custom = &custom;
        self.on_mount(|c, mount| async move {
            let mut b = SetSecretMetadataRequest::builder();
            b.custom_metadata(custom.clone());
            vaultrs::kv2::set_metadata(&c.0, mount, path, Some(&mut b)).await
        })
        .await
        .map_err(|f| self.fail(op, &action, "`create` and `update`", f))
    }

    /// Writes the journal of `P` for version `record_version`.
    pub(super) async fn v2_set_journal(
        &self,
        op: StoreOp,
        existing: &HashMap<String, String>,
        journal: &Journal,
        record_version: u64,
        previous_version: Option<u64>,
    ) -> Result<(), StoreError> {
        let custom = journal_metadata(existing, journal, record_version, previous_version);
        self.v2_set_custom(op, &self.sib(Sibling::Current), custom)
            .await
    }

    /// Soft-deletes exactly `version` (never a newer one).
    pub(super) async fn v2_delete_version(
        &self,
        op: StoreOp,
        path: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        let action = format!("delete version {version} of `{}`", self.api("data", path));
        self.on_mount(|c, mount| async move {
            vaultrs::kv2::delete_versions(&c.0, mount, path, vec![version]).await
        })
        .await
        .map_err(|f| self.fail(op, &action, "`update`", f))
    }

    /// Deletes a secret with all its versions and metadata.
    pub(super) async fn v2_destroy_all(&self, op: StoreOp, path: &str) -> Result<(), StoreError> {
        let r = self
            .on_mount(
                |c, mount| async move { vaultrs::kv2::delete_metadata(&c.0, mount, path).await },
            )
            .await;
        self.deleted(op, &self.api("metadata", path), r)
    }

    /// Reads the previous record's data for `cur`; `None` when there is
    /// none. A previous version named by the journal must be readable and
    /// valid; an inferred one is best effort.
    pub(super) async fn v2_previous(
        &self,
        op: StoreOp,
        cur: &V2Read,
    ) -> Result<Option<(u64, SensitiveValue, Record)>, StoreError> {
        let (version, strict) = cur.previous_version();
        let Some(version) = version else {
            return Ok(None);
        };
        let path = self.sib(Sibling::Current);
        let readable = cur
            .meta
            .as_ref()
            .is_some_and(|m| m.readable.contains(&version));
        let data = if readable {
            self.v2_data(op, &path, version).await?
        } else {
            None
        };
        let Some(data) = data else {
            if strict {
                warn!(destination = %self.label(), version, "the previous record's version is deleted, destroyed or pruned (max_versions)");
            }
            return Ok(None);
        };
        match parse_record(&data.0) {
            Ok(r) => Ok(Some((version, data, r))),
            Err(reason) if strict => Err(self.err(
                op,
                StoreErrorKind::Corrupt,
                format!(
                    "`{}` version {version} (the previous record) is not a valid token record: {reason}",
                    self.api("data", &path)
                ),
            )),
            Err(_) => Ok(None),
        }
    }

    /// Deletes `P.pending` if it holds rotation `rid`.
    pub(super) async fn v2_drop_pending_of(
        &self,
        op: StoreOp,
        rid: &str,
    ) -> Result<(), StoreError> {
        let pp = self.sib(Sibling::Pending);
        let pend = self.v2_read(op, &pp).await?;
        if pend.is_rotation(rid) {
            self.v2_destroy_all(op, &pp).await?;
        }
        Ok(())
    }

    pub(super) async fn v1_read(
        &self,
        op: StoreOp,
        path: &str,
    ) -> Result<Option<(SensitiveValue, Record)>, StoreError> {
        let r = self
            .on_mount(|c, mount| async move { vaultrs::kv1::get_raw(&c.0, mount, path).await })
            .await;
        let data = match r {
            Ok(resp) => SensitiveValue(resp.data),
            Err(Failure::Status { code: 404, errors }) if errors.is_empty() => return Ok(None),
            Err(f) => {
                return Err(self.fail(op, &format!("read `{}`", self.api("", path)), "`read`", f));
            }
        };
        let record = parse_record(&data.0).map_err(|reason| {
            self.err(
                op,
                StoreErrorKind::Corrupt,
                format!(
                    "`{}` is not a valid token record: {reason}",
                    self.api("", path)
                ),
            )
        })?;
        Ok(Some((data, record)))
    }

    pub(super) async fn v1_write(
        &self,
        op: StoreOp,
        path: &str,
        data: &Value,
    ) -> Result<(), StoreError> {
        let action = format!("write `{}`", self.api("", path));
        let Value::Object(obj) = data else {
            return Err(self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("{action}: the record is not a JSON object"),
            ));
        };
        let map: HashMap<&str, &Value> = obj.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let map = &map;
        self.on_mount(|c, mount| async move { vaultrs::kv1::set(&c.0, mount, path, map).await })
            .await
            .map_err(|f| self.fail(op, &action, "`create` and `update`", f))
    }

    pub(super) async fn v1_delete(&self, op: StoreOp, path: &str) -> Result<(), StoreError> {
        let r = self
            .on_mount(|c, mount| async move { vaultrs::kv1::delete(&c.0, mount, path).await })
            .await;
        self.deleted(op, &self.api("", path), r)
    }

    /// One `vaultrs` call on this destination's mount, through the
    /// connection (which logs in again and retries once on a 403).
    async fn on_mount<'a, T, E, F, Fut>(&'a self, f: F) -> Result<T, Failure>
    where
        F: Fn(Arc<Authed>, &'a str) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        Failure: From<E>,
    {
        let f = &f;
        self.conn
            .call(|c: Arc<Authed>| async move { Ok(f(c, &self.mount).await?) })
            .await
    }

    /// The outcome of deleting the secret at `api_path`: one that does not
    /// exist is deleted too.
    fn deleted(
        &self,
        op: StoreOp,
        api_path: &str,
        r: Result<(), Failure>,
    ) -> Result<(), StoreError> {
        match r {
            Ok(()) | Err(Failure::Status { code: 404, .. }) => Ok(()),
            Err(f) => Err(self.fail(op, &format!("delete `{api_path}`"), "`delete`", f)),
        }
    }
}
