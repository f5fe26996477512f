//! Records as the driver hands them to a store, for tests that drive a
//! destination directly (the unit tests here and the integration tests).

use chrono::{DateTime, Utc};

use super::{Journal, JournalState, NewRecord, TokenMeta};
use crate::motherduck::TokenType;
use crate::secret::SecretString;

/// The staged record of rotation `rid` of `svc_etl`: token `id-<rid>`
/// holding `secret`, replacing `prev`, created (and the rotation started)
/// at `at`, expiring at `expires_at`.
pub fn staged(
    rid: &str,
    secret: &str,
    prev: Option<&str>,
    at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> NewRecord {
    NewRecord {
        token: SecretString::from(secret.to_owned()),
        meta: TokenMeta {
            token_id: format!("id-{rid}"),
            token_name: format!("rotator.etl.{rid}"),
            service_account: "svc_etl".into(),
            token_type: TokenType::ReadWrite,
            created_at: at,
            expires_at,
            rotation_id: rid.into(),
        },
        journal: Journal {
            rotation_id: rid.into(),
            state: JournalState::Staged,
            previous_token_id: prev.map(str::to_owned),
            new_token_id: format!("id-{rid}"),
            started_at: at,
            updated_at: at,
            revoke_after: None,
            last_error: None,
            failures: 0,
            retry_at: None,
            acknowledged_at: None,
            reloaded_at: None,
            reload_note: None,
        },
        ack_secret: None,
    }
}

/// The journal of `r` moved to `state`.
pub fn journal(r: &NewRecord, state: JournalState) -> Journal {
    Journal {
        state,
        ..r.journal.clone()
    }
}
