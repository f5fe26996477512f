//! How a record and its journal are stored: one secret version per
//! rotation, and the journal companion's document.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::motherduck::TokenType;
use crate::secret::{ExposeSecret, SecretString};
use crate::stores::{Journal, NewRecord, RecordView, TokenMeta};

/// The secret version id (and `ClientRequestToken`) of a rotation's record:
/// the rotation id itself in UUID form when it is a UUID (the daemon's are,
/// as 32 hex digits), otherwise a UUID-shaped hash of it. Either way 36
/// characters, within the 32–64 AWS requires, and the same on every retry.
pub fn version_id_for(rotation_id: &str) -> String {
    if let Ok(u) = uuid::Uuid::try_parse(rotation_id) {
        return u.hyphenated().to_string();
    }
    let digest = Sha256::digest(format!("motherduck-rotator/{rotation_id}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The content of the journal companion: the latest journal and the
/// version of the destination secret it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct JournalDoc {
    pub(super) version_id: String,
    pub(super) rotation: Journal,
}

/// A record version as stored. Fields are listed explicitly (no `flatten`)
/// so the secret is decoded straight into a zeroizing type.
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
    rotation: Option<Journal>,
    #[serde(default)]
    pub(super) ack_secret: Option<SecretString>,
}

/// The same fields as the file store writes, in the same order.
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

impl StoredRecord {
    pub(super) fn json(r: &NewRecord) -> Zeroizing<String> {
        let out = StoredRecordOut {
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
        };
        // Plain strings and timestamps: serializing cannot fail.
        Zeroizing::new(serde_json::to_string(&out).unwrap_or_default())
    }

    pub(super) fn view(&self) -> RecordView {
        RecordView {
            meta: TokenMeta {
                token_id: self.token_id.clone(),
                token_name: self.token_name.clone(),
                service_account: self.service_account.clone(),
                token_type: self.token_type,
                created_at: self.created_at,
                expires_at: self.expires_at,
                rotation_id: self.rotation_id.clone(),
            },
            journal: self.rotation.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_are_stable_uuids() {
        let rid = "0196a1b2c3d47e5f8a9b0c1d2e3f4a5b";
        assert_eq!(version_id_for(rid), "0196a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
        let other = version_id_for("r1");
        assert_eq!(other, version_id_for("r1"));
        assert_eq!(other.len(), 36);
        assert_ne!(other, version_id_for("r2"));
    }
}
