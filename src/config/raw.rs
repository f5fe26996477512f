//! Stage one of configuration: the TOML file as serde sees it.
//!
//! Every table rejects unknown fields, so a typo is an error rather than a
//! silently ignored option. Durations are humantime strings ("90s", "7d").

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub motherduck: RawMotherDuck,
    #[serde(default)]
    pub daemon: RawDaemon,
    /// Only the names: each store is read separately, as a [`RawStore`]
    /// picked by its `type`, so that errors inside it keep their exact
    /// place (serde's own tagged enums lose it).
    #[serde(default)]
    pub stores: BTreeMap<String, serde::de::IgnoredAny>,
    #[serde(default, rename = "policy")]
    pub policies: Vec<RawPolicy>,
    #[serde(default)]
    pub alerts: Option<RawAlerts>,
}

/// `[alerts]`: the daemon's own notifications.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub repeat_interval: Option<String>,
    pub expiry_warning: Option<String>,
    pub old_token_limit: Option<String>,
    pub max_per_minute: Option<u32>,
    pub max_attempts: Option<u32>,
    pub runbook_url: Option<String>,
    #[serde(default, rename = "sink")]
    pub sinks: Vec<RawSink>,
}

/// `[[alerts.sink]]`, by `type`: `alertmanager` (`url`), `webhook` (`url`,
/// `hmac_secret`), `slack` (`webhook_url`, a secret).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: Option<String>,
    pub hmac_secret: Option<RawSecret>,
    pub webhook_url: Option<RawSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMotherDuck {
    pub api_url: Option<String>,
    pub admin_token: RawSecret,
    pub request_timeout: Option<String>,
    pub max_retries: Option<u32>,
    pub rate_limit_per_second: Option<u32>,
}

/// A secret reference, or (rejected) an inline secret.
#[derive(Debug)]
pub enum RawSecret {
    Ref(RawSecretRef),
    /// Present only to give a precise error; the value is dropped unread.
    Inline,
}

/// Strings, and any other plain value, become [`RawSecret::Inline`]
/// (rejected later with a clear message); tables are references. Numbers
/// and booleans are caught here too because serde's own "invalid type"
/// error would quote them.
impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a secret reference such as { file = \"/path\" }, { env = \"VAR\" } or { credential = \"name\" }")
            }
            fn visit_str<E: serde::de::Error>(self, _v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_i64<E: serde::de::Error>(self, _v: i64) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_u64<E: serde::de::Error>(self, _v: u64) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_f64<E: serde::de::Error>(self, _v: f64) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_bool<E: serde::de::Error>(self, _v: bool) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSecret, A::Error> {
                RawSecretRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawSecret::Ref)
            }
        }
        d.deserialize_any(V)
    }
}

/// Exactly one of the three.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretRef {
    /// A file holding the secret (trailing whitespace is trimmed).
    pub file: Option<PathBuf>,
    /// An environment variable holding the secret.
    pub env: Option<String>,
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY/<name>`.
    pub credential: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub listen: Option<String>,
    pub log_format: Option<String>,
    pub rotation_concurrency: Option<usize>,
    pub sweep_interval: Option<String>,
    pub orphan_min_age: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub lock_retry_interval: Option<String>,
    pub recheck_interval: Option<String>,
    pub failed_passes_before_alert: Option<u32>,
    pub health_interval: Option<String>,
    pub instance_id: Option<String>,
    pub metrics_bearer_token: Option<RawSecret>,
}

/// A store, by its `type` (the `type` key itself is not part of the
/// variant's table).
#[derive(Debug)]
pub enum RawStore {
    File(RawFileStore),
    Vault(Box<RawVaultStore>),
    Aws(RawAwsStore),
}

impl RawStore {
    /// The `type` values.
    pub const KINDS: [&str; 3] = ["file", "vault", "aws"];
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileStore {
    pub directory: PathBuf,
}

/// A HashiCorp Vault / OpenBao KV mount.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVaultStore {
    pub address: String,
    pub namespace: Option<String>,
    /// 1 or 2; default 2.
    pub kv_version: Option<i64>,
    /// Default "secret".
    pub mount: Option<String>,
    pub auth: RawVaultAuth,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub lease_ttl: Option<String>,
    pub request_timeout: Option<String>,
}

/// How the daemon logs in to Vault. One table for every method, so that
/// errors keep their place; which keys a method takes is checked when
/// validating.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVaultAuth {
    pub method: RawVaultAuthMethod,
    /// approle, kubernetes: where the method is mounted.
    pub mount: Option<String>,
    /// token
    pub token: Option<RawSecret>,
    /// approle
    pub role_id: Option<RawSecret>,
    /// approle
    pub secret_id: Option<RawSecret>,
    /// kubernetes
    pub role: Option<String>,
    /// kubernetes; default: the pod's service-account token.
    pub jwt_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawVaultAuthMethod {
    Token,
    Approle,
    Kubernetes,
}

impl RawVaultAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            RawVaultAuthMethod::Token => "token",
            RawVaultAuthMethod::Approle => "approle",
            RawVaultAuthMethod::Kubernetes => "kubernetes",
        }
    }
}

/// AWS Secrets Manager in one region.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAwsStore {
    pub region: String,
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub create_if_missing: bool,
    pub kms_key_id: Option<String>,
    pub lock_ttl: Option<String>,
    /// New versions a secret may get within 24 hours, for `validate`'s
    /// worst case (Secrets Manager's quota; raise it only for a compatible
    /// service without that quota).
    pub version_budget: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: String,
    pub service_account: String,
    pub token_type: Option<String>,
    pub token_ttl: Option<String>,
    pub token_name_prefix: Option<String>,
    pub schedule: Option<RawSchedule>,
    pub jitter: Option<String>,
    #[serde(default)]
    pub windows: Vec<RawWindow>,
    pub rotate_before_expiry: Option<String>,
    pub overlap: Option<String>,
    /// Only how many: each hook is read separately, as a [`RawHook`]
    /// picked by its `type`, so that errors inside it keep their exact
    /// place (serde's own tagged enums lose it).
    #[serde(default)]
    pub verify: Vec<serde::de::IgnoredAny>,
    /// Only how many, like `verify`: each action is read by its `type`
    /// (`config::reload`).
    #[serde(default)]
    pub reload: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    pub destinations: Vec<RawDestination>,
    /// Where the policy's coordination lock lives, when not on its first
    /// destination.
    pub lock: Option<RawLock>,
    pub retry: Option<RawRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    #[serde(default)]
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
    pub timezone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    pub store: String,
    pub path: String,
    pub bare_token_file: Option<String>,
    /// File stores: a file holding `MOTHERDUCK_TOKEN=<token>`.
    pub env_file: Option<String>,
}

/// A place used only for a policy's lock: a store and a path in it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLock {
    pub store: String,
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
}

/// A verification hook, by its `type` (the `type` key itself is not part
/// of the variant's table).
#[derive(Debug)]
pub enum RawHook {
    Http(RawHttpHook),
    Command(RawCommandHook),
    Ack(RawAckHook),
    Motherduck(RawBuiltinHook),
}

impl RawHook {
    /// The `type` values.
    pub const KINDS: [&str; 4] = ["http", "command", "ack", "motherduck"];
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpHook {
    pub url: String,
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, RawHeaderValue>,
    pub expect_status: Option<Vec<u16>>,
    pub json_field: Option<String>,
    pub interval: Option<String>,
    pub deadline: Option<String>,
    pub request_timeout: Option<String>,
}

/// A header value: plain text, or a secret by reference.
#[derive(Debug)]
pub enum RawHeaderValue {
    Literal(String),
    Secret(RawSecretRef),
}

impl<'de> Deserialize<'de> for RawHeaderValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawHeaderValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, or a secret reference such as { env = \"VAR\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawHeaderValue, E> {
                Ok(RawHeaderValue::Literal(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawHeaderValue, A::Error> {
                RawSecretRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawHeaderValue::Secret)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommandHook {
    pub command: Vec<String>,
    pub timeout: Option<String>,
    pub interval: Option<String>,
    pub deadline: Option<String>,
    #[serde(default)]
    pub pass_token: bool,
    /// Variables of the daemon's environment the command also gets.
    #[serde(default)]
    pub inherit_env: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAckHook {
    pub deadline: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuiltinHook {
    pub interval: Option<String>,
    pub deadline: Option<String>,
}
