//! The Secrets Manager calls a destination is built from: describe, read,
//! write and relabel versions, and the journal companion.

use std::collections::HashMap;

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::Tag;
use tracing::info;
use zeroize::Zeroizing;

use crate::stores::record::StoredRecord;
use crate::stores::{DestinationView, Journal, StoreError, StoreErrorKind, StoreOp};

use super::CURRENT;
use super::destination::AwsDestination;
use super::labels::{Labels, interpret};
use super::record::JournalDoc;

use aws_sdk_secretsmanager::operation::describe_secret::{
    DescribeSecretError, DescribeSecretOutput,
};

type UpdateStageError =
    aws_sdk_secretsmanager::operation::update_secret_version_stage::UpdateSecretVersionStageError;

/// Which version of a secret to read.
#[derive(Debug, Clone, Copy)]
pub(super) enum Which<'a> {
    Version(&'a str),
    Stage(&'a str),
}

impl AwsDestination {
    /// The labels of the destination secret; `None` when it does not
    /// exist.
    pub(super) async fn describe(&self, op: StoreOp) -> Result<Option<Labels>, StoreError> {
        let name = &self.secret_name;
        let out = match self.describe_secret(name).await {
            Ok(o) => o,
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(self.sdk_err(op, "DescribeSecret", name, &e)),
        };
        if out.deleted_date().is_some() {
            return Err(self.err(
                op,
                StoreErrorKind::Permanent,
                format!(
                    "secret `{name}` is scheduled for deletion; restore it with `aws secretsmanager restore-secret --secret-id {name}`"
                ),
            ));
        }
        Ok(Some(Labels::from_stages(out.version_ids_to_stages())))
    }

    /// The destination secret's labels, failing when it is absent.
    pub(super) async fn describe_existing(&self, op: StoreOp) -> Result<Labels, StoreError> {
        self.describe(op).await?.ok_or_else(|| self.not_found(op))
    }

    /// Whether a companion secret exists (for `check`).
    pub(super) async fn exists(&self, op: StoreOp, name: &str) -> Result<bool, StoreError> {
        let r = self.describe_secret(name).await;
        self.succeeded(op, "DescribeSecret", name, "ResourceNotFoundException", r)
    }

    async fn describe_secret(
        &self,
        name: &str,
    ) -> Result<DescribeSecretOutput, SdkError<DescribeSecretError, HttpResponse>> {
        let client = self.connection.client().await;
        client.describe_secret().secret_id(name).send().await
    }

    /// Reads one version of `name`: its id and string value. `None` when
    /// the secret or the version does not exist.
    pub(super) async fn get_value(
        &self,
        op: StoreOp,
        name: &str,
        which: Which<'_>,
    ) -> Result<Option<(String, Zeroizing<String>)>, StoreError> {
        let req = self
            .connection
            .client()
            .await
            .get_secret_value()
            .secret_id(name);
        let req = match which {
            Which::Version(v) => req.version_id(v),
            Which::Stage(s) => req.version_stage(s),
        };
        let mut out = match req.send().await {
            Ok(o) => o,
            Err(e) if e.code() == Some("ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(self.sdk_err(op, "GetSecretValue", name, &e)),
        };
        let version = out.version_id.take().unwrap_or_default();
        match out.secret_string.take() {
            Some(s) => Ok(Some((version, Zeroizing::new(s)))),
            None => Err(self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("version `{version}` of secret `{name}` holds no string value"),
            )),
        }
    }

    /// Writes a new version of `name` with `token` as its id. `Ok(false)`:
    /// a version with that id exists already (`ResourceExistsException`:
    /// AWS found different content under the same token).
    pub(super) async fn put_value(
        &self,
        op: StoreOp,
        name: &str,
        value: &str,
        token: &str,
        stage: &str,
    ) -> Result<bool, StoreError> {
        // The SDK takes an owned String; its copy of the value is outside
        // our zeroizing control, as any HTTP body is.
        let r = self
            .connection
            .client()
            .await
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .client_request_token(token)
            .version_stages(stage)
            .send()
            .await;
        self.succeeded(op, "PutSecretValue", name, "ResourceExistsException", r)
    }

    /// Creates secret `name`, with a first value if given. `Ok(false)`: it
    /// exists already.
    pub(super) async fn create_secret(
        &self,
        op: StoreOp,
        name: &str,
        description: String,
        first: Option<(&str, &str)>,
    ) -> Result<bool, StoreError> {
        let mut req = self
            .connection
            .client()
            .await
            .create_secret()
            .name(name)
            .description(description)
            .tags(
                Tag::builder()
                    .key("managed-by")
                    .value("motherduck-rotator")
                    .build(),
            );
        if let Some(key) = &self.kms_key_id {
            req = req.kms_key_id(key);
        }
        if let Some((value, token)) = first {
            req = req.secret_string(value).client_request_token(token);
        }
        let r = req.send().await;
        let created = self.succeeded(op, "CreateSecret", name, "ResourceExistsException", r)?;
        if created {
            info!(destination = %self.label(), secret = %name, "secret created");
        }
        Ok(created)
    }

    /// `Ok(true)` when `api` on `name` succeeded, `Ok(false)` when it failed
    /// with the error code `expected` (the one failure the caller
    /// handles), the classified error otherwise.
    fn succeeded<T, E>(
        &self,
        op: StoreOp,
        api: &str,
        name: &str,
        expected: &str,
        r: Result<T, SdkError<E, HttpResponse>>,
    ) -> Result<bool, StoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(expected) => Ok(false),
            Err(e) => Err(self.sdk_err(op, api, name, &e)),
        }
    }

    /// Moves (or, without `to`, removes) `label` on `name`.
    pub(super) async fn move_label(
        &self,
        name: &str,
        label: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<(), SdkError<UpdateStageError, HttpResponse>> {
        let mut req = self
            .connection
            .client()
            .await
            .update_secret_version_stage()
            .secret_id(name)
            .version_stage(label);
        if let Some(f) = from {
            req = req.remove_from_version_id(f);
        }
        if let Some(t) = to {
            req = req.move_to_version_id(t);
        }
        req.send().await.map(|_| ())
    }

    /// [`Self::move_label`] on the destination secret, errors classified.
    pub(super) async fn relabel(
        &self,
        op: StoreOp,
        label: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<(), StoreError> {
        self.move_label(&self.secret_name, label, from, to)
            .await
            .map_err(|e| self.sdk_err(op, "UpdateSecretVersionStage", &self.secret_name, &e))
    }

    /// Reads and parses the record in version `version`.
    pub(super) async fn read_record(
        &self,
        op: StoreOp,
        version: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let Some((_, text)) = self
            .get_value(op, &self.secret_name, Which::Version(version))
            .await?
        else {
            return Ok(None);
        };
        StoredRecord::parse(text.as_bytes())
            .map(Some)
            .map_err(|at| {
                self.err(
                    op,
                    StoreErrorKind::Corrupt,
                    format!(
                        "version `{version}` of secret `{}` is not a token record written by motherduck-rotator ({at}); a secret created for the rotator should have no value until its first rotation",
                        self.secret_name,
                    ),
                )
            })
    }

    /// The journal companion's current content.
    pub(super) async fn read_journal(&self, op: StoreOp) -> Result<Option<JournalDoc>, StoreError> {
        let name = self.journal_secret_name();
        let Some((version, text)) = self.get_value(op, &name, Which::Stage(CURRENT)).await? else {
            return Ok(None);
        };
        serde_json::from_str::<JournalDoc>(&text)
            .map(Some)
            .map_err(|e| {
                self.err(
                    op,
                    StoreErrorKind::Corrupt,
                    format!(
                        "version `{version}` of secret `{name}` is not a rotation journal: {e}"
                    ),
                )
            })
    }

    /// Makes `journal`, annotating version `version_id`, the journal
    /// companion's content, unless it already is.
    pub(super) async fn write_journal(
        &self,
        op: StoreOp,
        version_id: &str,
        journal: &Journal,
        known: Option<&JournalDoc>,
    ) -> Result<(), StoreError> {
        let doc = &JournalDoc {
            version_id: version_id.to_owned(),
            rotation: journal.clone(),
        };
        if known == Some(doc) {
            return Ok(());
        }
        let name = self.journal_secret_name();
        // A journal holds no secret; serializing it cannot fail.
        let body = serde_json::to_string(doc).unwrap_or_default();
        let token = uuid::Uuid::new_v4().hyphenated().to_string();
        let put = self
            .connection
            .client()
            .await
            .put_secret_value()
            .secret_id(&name)
            .secret_string(&body)
            .client_request_token(&token)
            .version_stages(CURRENT)
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                let description = format!(
                    "rotation journal of secret {} (motherduck-rotator); holds no secret",
                    self.secret_name
                );
                let created = self
                    .create_secret(op, &name, description, Some((&body, &token)))
                    .await?;
                if !created {
                    // Created concurrently since the put failed; the lease
                    // holder is the only writer, so this is a leftover from
                    // an earlier attempt of ours: write again.
                    if !self.put_value(op, &name, &body, &token, CURRENT).await? {
                        return Err(self.err(
                            op,
                            StoreErrorKind::Conflict,
                            format!("the journal secret `{name}` changed concurrently"),
                        ));
                    }
                }
                Ok(())
            }
            Err(e) => Err(self.sdk_err(op, "PutSecretValue", &name, &e)),
        }
    }

    /// Reads everything `load` reports, with `op` for errors.
    pub(super) async fn snapshot(
        &self,
        op: StoreOp,
    ) -> Result<Option<DestinationView>, StoreError> {
        let Some(labels) = self.describe(op).await? else {
            return Ok(None);
        };
        let mut records = HashMap::new();
        for v in labels.ids() {
            match self.read_record(op, v).await? {
                Some(r) => {
                    records.insert(v.to_owned(), r.view());
                }
                None => {
                    return Err(self.err(
                        op,
                        StoreErrorKind::Conflict,
                        format!(
                            "version `{v}` of secret `{}` vanished while being read",
                            self.secret_name
                        ),
                    ));
                }
            }
        }
        let journal = self.read_journal(op).await?;
        Ok(Some(interpret(&labels, &records, journal.as_ref())))
    }
}
