//! How a record and its journal are stored: the record as a secret's data,
//! the KV v2 journal as `custom_metadata` keys.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use zeroize::Zeroize;

use crate::motherduck::TokenType;
use crate::secret::{ExposeSecret, SecretString};
use crate::stores::{Journal, JournalState, NewRecord, TokenMeta};

/// Vault's limit for one `custom_metadata` value, in bytes.
const METADATA_VALUE_MAX: usize = 512;
/// Our `custom_metadata` keys all start with this; others are kept.
const JOURNAL_PREFIX: &str = "rotation_";
const K_RECORD_VERSION: &str = "rotation_record_version";
const K_PREVIOUS_VERSION: &str = "rotation_previous_version";
const K_ID: &str = "rotation_id";
const K_STATE: &str = "rotation_state";
const K_PREVIOUS_TOKEN: &str = "rotation_previous_token_id";
const K_NEW_TOKEN: &str = "rotation_new_token_id";
const K_STARTED: &str = "rotation_started_at";
const K_UPDATED: &str = "rotation_updated_at";
const K_REVOKE_AFTER: &str = "rotation_revoke_after";
const K_LAST_ERROR: &str = "rotation_last_error";
const K_FAILURES: &str = "rotation_failures";
const K_RETRY_AT: &str = "rotation_retry_at";
const K_ACKED_AT: &str = "rotation_acknowledged_at";
const K_RELOADED_AT: &str = "rotation_reloaded_at";
const K_RELOAD_NOTE: &str = "rotation_reload_note";

/// A JSON value that may hold secrets: its strings are zeroed on drop.
pub(super) struct SensitiveValue(pub(super) Value);

impl Drop for SensitiveValue {
    fn drop(&mut self) {
        fn wipe(v: &mut Value) {
            match v {
                Value::String(s) => s.zeroize(),
                Value::Array(a) => a.iter_mut().for_each(wipe),
                Value::Object(o) => o.values_mut().for_each(wipe),
                _ => {}
            }
        }
        wipe(&mut self.0);
    }
}

/// The non-secret fields of a record. `token` and `ack_secret` are read
/// separately, so a serde message can never quote them.
#[derive(Deserialize)]
pub(super) struct RecordFields {
    token_id: String,
    token_name: String,
    service_account: String,
    token_type: TokenType,
    created_at: DateTime<Utc>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    rotation_id: String,
    /// KV v1 only: the journal inside the record.
    #[serde(default)]
    pub(super) rotation: Option<Journal>,
}

pub(super) struct Record {
    pub(super) token: SecretString,
    pub(super) ack_secret: Option<SecretString>,
    pub(super) fields: RecordFields,
}

impl Record {
    pub(super) fn rotation_id(&self) -> &str {
        &self.fields.rotation_id
    }

    pub(super) fn meta(&self) -> TokenMeta {
        let f = &self.fields;
        TokenMeta {
            token_id: f.token_id.clone(),
            token_name: f.token_name.clone(),
            service_account: f.service_account.clone(),
            token_type: f.token_type,
            created_at: f.created_at,
            expires_at: f.expires_at,
            rotation_id: f.rotation_id.clone(),
        }
    }
}

/// Reads a record from a secret's data. The reason never quotes a value
/// of `token` or `ack_secret`.
pub(super) fn parse_record(v: &Value) -> Result<Record, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "the data is not a JSON object".to_owned())?;
    let token = match obj.get("token") {
        Some(Value::String(s)) if !s.is_empty() => SecretString::from(s.clone()),
        _ => return Err("missing, empty or non-string field `token`".to_owned()),
    };
    let ack_secret = match obj.get("ack_secret") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(SecretString::from(s.clone())),
        Some(_) => return Err("field `ack_secret` is not a string".to_owned()),
    };
    let fields = RecordFields::deserialize(v).map_err(|e| e.to_string())?;
    Ok(Record {
        token,
        ack_secret,
        fields,
    })
}

/// The data of a new record: the file store's fields, plus the journal
/// as `rotation` when `inline_journal` (KV v1).
pub(super) fn new_record_value(r: &NewRecord, inline_journal: bool) -> SensitiveValue {
    let mut m = Map::new();
    m.insert(
        "token".into(),
        Value::String(r.token.expose_secret().to_owned()),
    );
    m.insert("token_id".into(), Value::String(r.meta.token_id.clone()));
    m.insert(
        "token_name".into(),
        Value::String(r.meta.token_name.clone()),
    );
    m.insert(
        "service_account".into(),
        Value::String(r.meta.service_account.clone()),
    );
    m.insert(
        "token_type".into(),
        Value::String(r.meta.token_type.as_str().to_owned()),
    );
    m.insert(
        "created_at".into(),
        serde_json::to_value(r.meta.created_at).unwrap_or(Value::Null),
    );
    m.insert(
        "expires_at".into(),
        serde_json::to_value(r.meta.expires_at).unwrap_or(Value::Null),
    );
    m.insert(
        "rotation_id".into(),
        Value::String(r.meta.rotation_id.clone()),
    );
    if inline_journal {
        m.insert(
            "rotation".into(),
            serde_json::to_value(&r.journal).unwrap_or(Value::Null),
        );
    }
    if let Some(a) = &r.ack_secret {
        m.insert(
            "ack_secret".into(),
            Value::String(a.expose_secret().to_owned()),
        );
    }
    SensitiveValue(Value::Object(m))
}

/// A copy of `data` with its `rotation` field set to `journal` (KV v1).
pub(super) fn with_inline_journal(data: &Value, journal: &Journal) -> SensitiveValue {
    let mut v = SensitiveValue(data.clone());
    if let Value::Object(m) = &mut v.0 {
        m.insert(
            "rotation".into(),
            serde_json::to_value(journal).unwrap_or(Value::Null),
        );
    }
    v
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The new `custom_metadata`: keys that are not ours from `existing`, and
/// the journal of version `record_version`. Vault rejects empty values, so
/// absent fields are left out.
pub(super) fn journal_metadata(
    existing: &HashMap<String, String>,
    journal: &Journal,
    record_version: u64,
    previous_version: Option<u64>,
) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = existing
        .iter()
        .filter(|(k, _)| !k.starts_with(JOURNAL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut put = |k: &str, v: String| {
        if !v.is_empty() {
            m.insert(k.to_owned(), cut(&v, METADATA_VALUE_MAX).to_owned());
        }
    };
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    put(K_RECORD_VERSION, record_version.to_string());
    put(K_ID, journal.rotation_id.clone());
    put(K_STATE, journal.state.as_str().to_owned());
    put(
        K_PREVIOUS_TOKEN,
        journal.previous_token_id.clone().unwrap_or_default(),
    );
    put(K_NEW_TOKEN, journal.new_token_id.clone());
    put(K_STARTED, ts(journal.started_at));
    put(K_UPDATED, ts(journal.updated_at));
    put(
        K_REVOKE_AFTER,
        journal.revoke_after.map(ts).unwrap_or_default(),
    );
    put(K_LAST_ERROR, journal.last_error.clone().unwrap_or_default());
    put(K_FAILURES, journal.failures.to_string());
    put(K_RETRY_AT, journal.retry_at.map(ts).unwrap_or_default());
    put(
        K_ACKED_AT,
        journal.acknowledged_at.map(ts).unwrap_or_default(),
    );
    put(
        K_RELOADED_AT,
        journal.reloaded_at.map(ts).unwrap_or_default(),
    );
    put(
        K_RELOAD_NOTE,
        journal.reload_note.clone().unwrap_or_default(),
    );
    put(
        K_PREVIOUS_VERSION,
        previous_version.map(|v| v.to_string()).unwrap_or_default(),
    );
    m
}

/// The journal stored in `custom_metadata`, if it describes `version`.
// A tag is decoded per read and dropped at once; boxing the journal would
// buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tag {
    /// No journal, or one written for another version (a write behind our
    /// back, or a crash between a record and its journal).
    Stale,
    Valid {
        journal: Journal,
        previous_version: Option<u64>,
    },
}

fn parse_state(s: &str) -> Option<JournalState> {
    Some(match s {
        "staged" => JournalState::Staged,
        "promoted" => JournalState::Promoted,
        "verified" => JournalState::Verified,
        "done" => JournalState::Done,
        "rolled_back" => JournalState::RolledBack,
        _ => return None,
    })
}

/// Decodes the journal of `version`. The error names the bad key.
pub(super) fn decode_tag(custom: &HashMap<String, String>, version: u64) -> Result<Tag, String> {
    let Some(tag) = custom.get(K_RECORD_VERSION) else {
        return Ok(Tag::Stale);
    };
    let bad = |k: &str| format!("custom_metadata key `{k}` is invalid");
    let tag: u64 = tag.parse().map_err(|_| bad(K_RECORD_VERSION))?;
    if tag != version || version == 0 {
        return Ok(Tag::Stale);
    }
    let Some(rotation_id) = custom.get(K_ID) else {
        return Ok(Tag::Stale);
    };
    let time = |k: &str| -> Result<Option<DateTime<Utc>>, String> {
        custom
            .get(k)
            .map(|s| s.parse::<DateTime<Utc>>().map_err(|_| bad(k)))
            .transpose()
    };
    let state = custom
        .get(K_STATE)
        .and_then(|s| parse_state(s))
        .ok_or_else(|| bad(K_STATE))?;
    let journal = Journal {
        rotation_id: rotation_id.clone(),
        state,
        previous_token_id: custom.get(K_PREVIOUS_TOKEN).cloned(),
        new_token_id: custom.get(K_NEW_TOKEN).cloned().unwrap_or_default(),
        started_at: time(K_STARTED)?.ok_or_else(|| bad(K_STARTED))?,
        updated_at: time(K_UPDATED)?.ok_or_else(|| bad(K_UPDATED))?,
        revoke_after: time(K_REVOKE_AFTER)?,
        last_error: custom.get(K_LAST_ERROR).cloned(),
        failures: custom
            .get(K_FAILURES)
            .map(|s| s.parse().map_err(|_| bad(K_FAILURES)))
            .transpose()?
            .unwrap_or(0),
        retry_at: time(K_RETRY_AT)?,
        acknowledged_at: time(K_ACKED_AT)?,
        reloaded_at: time(K_RELOADED_AT)?,
        reload_note: custom.get(K_RELOAD_NOTE).cloned(),
    };
    let previous_version = custom
        .get(K_PREVIOUS_VERSION)
        .map(|s| s.parse::<u64>().map_err(|_| bad(K_PREVIOUS_VERSION)))
        .transpose()?;
    Ok(Tag::Valid {
        journal,
        previous_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn journal() -> Journal {
        Journal {
            rotation_id: "r1".into(),
            state: JournalState::Verified,
            previous_token_id: Some("tok-0".into()),
            new_token_id: "tok-1".into(),
            started_at: t("2026-05-01T10:00:00Z"),
            updated_at: t("2026-05-01T10:05:00.250Z"),
            revoke_after: Some(t("2026-05-01T11:00:00Z")),
            last_error: None,
            failures: 2,
            retry_at: None,
            acknowledged_at: None,
            reloaded_at: None,
            reload_note: None,
        }
    }

    #[test]
    fn journal_round_trips_through_custom_metadata_and_keeps_foreign_keys() {
        let mut existing = HashMap::new();
        existing.insert("owner".to_owned(), "team-data".to_owned());
        existing.insert(K_STATE.to_owned(), "stale".to_owned());
        let j = journal();
        let m = journal_metadata(&existing, &j, 7, Some(6));
        assert_eq!(m["owner"], "team-data");
        assert!(!m.contains_key(K_LAST_ERROR), "absent fields are left out");
        assert!(m.values().all(|v| !v.is_empty() && v.len() <= 512));
        assert_eq!(
            decode_tag(&m, 7).unwrap(),
            Tag::Valid {
                journal: j,
                previous_version: Some(6)
            }
        );
        assert_eq!(decode_tag(&m, 8).unwrap(), Tag::Stale, "another version");
        assert_eq!(decode_tag(&existing, 7).unwrap(), Tag::Stale, "no tag");
        let mut bad = m.clone();
        bad.insert(K_STATE.into(), "exploded".into());
        assert!(decode_tag(&bad, 7).unwrap_err().contains(K_STATE));
    }

    #[test]
    fn when_consumers_were_told_round_trips_through_custom_metadata() {
        let j = Journal {
            reloaded_at: Some(t("2026-05-01T10:05:01Z")),
            reload_note: Some("signal action failed: no such process".into()),
            ..journal()
        };
        let m = journal_metadata(&HashMap::new(), &j, 3, None);
        assert_eq!(m[K_RELOADED_AT], "2026-05-01T10:05:01Z");
        assert_eq!(
            decode_tag(&m, 3).unwrap(),
            Tag::Valid {
                journal: j,
                previous_version: None
            }
        );
    }

    #[test]
    fn long_last_error_is_cut_at_a_character_boundary() {
        let mut j = journal();
        j.last_error = Some("é".repeat(400));
        let m = journal_metadata(&HashMap::new(), &j, 1, None);
        let e = &m[K_LAST_ERROR];
        assert!(e.len() <= METADATA_VALUE_MAX && e.chars().all(|c| c == 'é'));
    }

    #[test]
    fn record_errors_never_quote_the_secret() {
        let v = serde_json::json!({"token": "eyJsecret", "token_id": 5});
        let e = parse_record(&v).err().unwrap();
        assert!(!e.contains("eyJsecret"), "{e}");
        let v = serde_json::json!({"token": 5, "token_id": "x"});
        assert!(parse_record(&v).err().unwrap().contains("`token`"));
        let v = serde_json::json!({"token": "eyJsecret", "ack_secret": ["eyJack"]});
        let e = parse_record(&v).err().unwrap();
        assert!(!e.contains("eyJ"), "{e}");
    }
}
