//! The token record as the file and AWS stores write it: one JSON
//! document holding the secret, its metadata and the journal it was
//! written with. Consumers read its `token` field.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Journal, NewRecord, RecordView, TokenMeta};
use crate::motherduck::TokenType;
use crate::secret::{ExposeSecret, SecretString};

/// A record as stored. Fields are listed explicitly (no `flatten`) so the
/// secret is decoded straight into a zeroizing type.
#[derive(Deserialize)]
pub(super) struct StoredRecord {
    pub(super) token: SecretString,
    pub(super) token_id: String,
    token_name: String,
    service_account: String,
    token_type: TokenType,
    created_at: DateTime<Utc>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    pub(super) rotation_id: String,
    #[serde(default)]
    pub(super) rotation: Option<Journal>,
    #[serde(default)]
    pub(super) ack_secret: Option<SecretString>,
}

/// Where a stored record stopped parsing; displayed as `line L column C`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ParseFailedAt {
    line: usize,
    column: usize,
}

impl std::fmt::Display for ParseFailedAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

/// The fields of a [`StoredRecord`], in the order they are written.
#[derive(Serialize)]
struct StoredRecordOut<'a> {
    token: &'a str,
    token_id: &'a str,
    token_name: &'a str,
    service_account: &'a str,
    token_type: TokenType,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    rotation_id: &'a str,
    rotation: Option<&'a Journal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_secret: Option<&'a str>,
}

impl<'a> StoredRecordOut<'a> {
    fn of_new(r: &'a NewRecord) -> StoredRecordOut<'a> {
        StoredRecordOut {
            token: r.token.expose_secret(),
            token_id: &r.meta.token_id,
            token_name: &r.meta.token_name,
            service_account: &r.meta.service_account,
            token_type: r.meta.token_type,
            created_at: r.meta.created_at,
            expires_at: r.meta.expires_at,
            rotation_id: &r.meta.rotation_id,
            rotation: Some(&r.journal),
            ack_secret: r.ack_secret.as_ref().map(|s| s.expose_secret()),
        }
    }

    fn of_stored(r: &'a StoredRecord) -> StoredRecordOut<'a> {
        StoredRecordOut {
            token: r.token.expose_secret(),
            token_id: &r.token_id,
            token_name: &r.token_name,
            service_account: &r.service_account,
            token_type: r.token_type,
            created_at: r.created_at,
            expires_at: r.expires_at,
            rotation_id: &r.rotation_id,
            rotation: r.rotation.as_ref(),
            ack_secret: r.ack_secret.as_ref().map(|s| s.expose_secret()),
        }
    }
}

impl StoredRecord {
    /// Parses a stored record. A failure says only where it was found:
    /// serde's message could quote the secret.
    pub(super) fn parse(bytes: &[u8]) -> Result<StoredRecord, ParseFailedAt> {
        serde_json::from_slice(bytes).map_err(|e| ParseFailedAt {
            line: e.line(),
            column: e.column(),
        })
    }

    /// The record of `r`, with the journal it is staged with.
    pub(super) fn from_new(r: &NewRecord) -> StoredRecord {
        StoredRecord {
            token: r.token.clone(),
            token_id: r.meta.token_id.clone(),
            token_name: r.meta.token_name.clone(),
            service_account: r.meta.service_account.clone(),
            token_type: r.meta.token_type,
            created_at: r.meta.created_at,
            expires_at: r.meta.expires_at,
            rotation_id: r.meta.rotation_id.clone(),
            rotation: Some(r.journal.clone()),
            ack_secret: r.ack_secret.clone(),
        }
    }

    /// The record of `r` as compact JSON, without an intermediate copy of
    /// the secret.
    pub(super) fn json(r: &NewRecord) -> Zeroizing<String> {
        // Plain strings and timestamps: serializing cannot fail.
        Zeroizing::new(serde_json::to_string(&StoredRecordOut::of_new(r)).unwrap_or_default())
    }

    /// The record as indented JSON and a final newline, for a file.
    pub(super) fn to_pretty_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut buf = Zeroizing::new(Vec::with_capacity(1024));
        // Serializing plain strings and timestamps into memory cannot fail.
        let _ = serde_json::to_writer_pretty(&mut *buf, &StoredRecordOut::of_stored(self));
        buf.push(b'\n');
        buf
    }

    pub(super) fn meta(&self) -> TokenMeta {
        TokenMeta {
            token_id: self.token_id.clone(),
            token_name: self.token_name.clone(),
            service_account: self.service_account.clone(),
            token_type: self.token_type,
            created_at: self.created_at,
            expires_at: self.expires_at,
            rotation_id: self.rotation_id.clone(),
        }
    }

    /// The record without its secret, with the journal it holds.
    pub(super) fn view(&self) -> RecordView {
        RecordView {
            meta: self.meta(),
            journal: self.rotation.clone(),
        }
    }
}
