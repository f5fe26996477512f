//! How a record and its journal are stored: one secret version per
//! rotation, and the journal companion's document.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::stores::Journal;

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
