//! Request and response bodies of the MotherDuck REST API.
//!
//! Response types ignore unknown fields and default the optional ones, so a
//! newer server that adds fields (as `description` was added) or omits an
//! optional one does not break the client. Enums that the server may extend
//! carry an `Unknown` variant for the same reason.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::secret::SecretString;

/// The kind of token: read/write, or read scaling (read-only replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    ReadWrite,
    ReadScaling,
    /// A value this client does not know yet; never sent by the client.
    #[serde(other)]
    Unknown,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::ReadWrite => "read_write",
            TokenType::ReadScaling => "read_scaling",
            TokenType::Unknown => "unknown",
        }
    }
}

/// Metadata of a token, as listed. The secret is never part of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The token id (a UUID); revocation takes this, never the secret.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub created_ts: DateTime<Utc>,
    /// Absent when the token never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default = "default_token_type")]
    pub token_type: TokenType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_token_type() -> TokenType {
    TokenType::ReadWrite
}

/// `GET /v1/users/{username}/tokens`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenList {
    #[serde(default)]
    pub tokens: Vec<TokenInfo>,
}

/// The body of `POST /v1/users/{username}/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateTokenRequest {
    /// 1–255 characters. The rotator puts the policy and rotation id in it,
    /// which is how an ambiguous create and orphans are recognised.
    pub name: String,
    /// Seconds, 300–31536000; `None` creates a token that never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    pub token_type: TokenType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A freshly created token: the only moment the secret is visible.
#[derive(Debug, Deserialize)]
pub struct CreatedToken {
    /// The secret. `Debug` prints a placeholder.
    pub token: SecretString,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `POST /v1/users` and `DELETE /v1/users/{username}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub username: String,
}

/// Duckling (compute instance) sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceSize {
    Pulse,
    Standard,
    Jumbo,
    Mega,
    Giga,
    #[serde(other)]
    Unknown,
}

impl InstanceSize {
    pub const ALL: [InstanceSize; 5] = [
        InstanceSize::Pulse,
        InstanceSize::Standard,
        InstanceSize::Jumbo,
        InstanceSize::Mega,
        InstanceSize::Giga,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceSize::Pulse => "pulse",
            InstanceSize::Standard => "standard",
            InstanceSize::Jumbo => "jumbo",
            InstanceSize::Mega => "mega",
            InstanceSize::Giga => "giga",
            InstanceSize::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<InstanceSize> {
        InstanceSize::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadWriteConfig {
    pub instance_size: InstanceSize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadScalingConfig {
    pub instance_size: InstanceSize,
    pub flock_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_seconds: Option<u32>,
}

/// `GET/PUT /v1/users/{username}/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DucklingConfig {
    pub read_write: ReadWriteConfig,
    pub read_scaling: ReadScalingConfig,
}

/// `GET /v1/active_accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveAccounts {
    #[serde(default)]
    pub accounts: Vec<ActiveAccount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveAccount {
    pub username: String,
    #[serde(default)]
    pub ducklings: Vec<Duckling>,
}

/// A running Duckling. `kind` and `status` stay strings: they are reported,
/// never acted upon, and new values must not break parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duckling {
    /// `rw` or `rs.N`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

/// The body of `POST /v1/dives/{dive_id}/embed-session`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmbedSessionRequest {
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_hint: Option<String>,
}

/// An embed session string, a credential in its own right.
#[derive(Debug, Deserialize)]
pub struct EmbedSession {
    pub session: SecretString,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ExposeSecret;

    #[test]
    fn token_info_tolerates_unknown_and_missing_optional_fields() {
        let t: TokenInfo = serde_json::from_str(
            r#"{"id":"a","created_ts":"2026-01-02T03:04:05Z","token_type":"brand_new","extra":1}"#,
        )
        .unwrap();
        assert_eq!(t.token_type, TokenType::Unknown);
        assert_eq!(t.expire_at, None);
        assert!(!t.read_only);
    }

    #[test]
    fn created_token_debug_hides_the_secret() {
        let c: CreatedToken = serde_json::from_str(
            r#"{"token":"eyJsecret","id":"a","created_ts":"2026-01-02T03:04:05Z","read_only":false,"token_type":"read_write"}"#,
        )
        .unwrap();
        assert_eq!(c.token.expose_secret(), "eyJsecret");
        assert!(!format!("{c:?}").contains("eyJsecret"));
    }
}
