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
    #[serde(default)]
    pub stores: BTreeMap<String, RawStore>,
    #[serde(default, rename = "policy")]
    pub policies: Vec<RawPolicy>,
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
    pub instance_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawStore {
    File(RawFileStore),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileStore {
    pub directory: PathBuf,
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
    #[serde(default)]
    pub verify: Vec<RawHook>,
    #[serde(default)]
    pub destinations: Vec<RawDestination>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawHook {
    Http(RawHttpHook),
    Command(RawCommandHook),
    Ack(RawAckHook),
    Motherduck(RawBuiltinHook),
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
