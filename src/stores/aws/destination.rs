//! A Secrets Manager destination: its secret and companions, its settings,
//! and its errors.

use std::time::Duration;

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use crate::clock::Clock;
use crate::stores::{StoreError, StoreErrorKind, StoreOp};

use super::connection::{AwsConnection, AwsSetupError, classify};
use super::{DEFAULT_LOCK_TTL, DEFAULT_VERSION_BUDGET};

const JOURNAL_SUFFIX: &str = ".journal";
const LOCK_SUFFIX: &str = ".lock";
/// Secrets Manager's limit on secret names.
const MAX_NAME_LEN: usize = 512;

/// A Secrets Manager destination: one secret, plus its journal and lock
/// companions (see the module documentation).
#[derive(Debug, Clone)]
pub struct AwsDestination {
    /// The configured store's name, for messages.
    store: String,
    pub(super) connection: AwsConnection,
    pub(super) secret_name: String,
    /// Create the secret when it is absent, instead of failing.
    pub(super) create_if_missing: bool,
    /// The KMS key for secrets this destination creates; `None`: the
    /// account's `aws/secretsmanager` key.
    pub(super) kms_key_id: Option<String>,
    /// How long a lease lasts without renewal; the holder renews every
    /// third of it.
    pub(super) lock_ttl: Duration,
    /// New versions a secret may get within 24 hours (Secrets Manager's
    /// quota, about 100), which `validate` plans within.
    version_budget: u32,
    /// Lease expiry is wall-clock time shared between replicas; tests move
    /// a manual clock instead of sleeping.
    pub(super) clock: Clock,
}

impl AwsDestination {
    /// A destination for the secret named `secret_name` (a name, not an ARN:
    /// the companion secrets are named after it).
    ///
    /// # Errors
    /// A name Secrets Manager would refuse, or one too long to leave room
    /// for the companion suffixes.
    pub fn new(
        store: impl Into<String>,
        connection: AwsConnection,
        secret_name: impl Into<String>,
    ) -> Result<AwsDestination, AwsSetupError> {
        let secret_name = secret_name.into();
        let bad = |reason: &str| AwsSetupError::SecretName {
            name: secret_name.clone(),
            reason: reason.to_owned(),
        };
        if secret_name.is_empty() {
            return Err(bad("empty"));
        }
        if secret_name.starts_with("arn:") {
            return Err(bad(
                "give the secret's name, not its ARN; the journal and lock secrets are named after it",
            ));
        }
        if secret_name.len() + JOURNAL_SUFFIX.len() > MAX_NAME_LEN {
            return Err(bad(&format!(
                "longer than {} characters",
                MAX_NAME_LEN - JOURNAL_SUFFIX.len()
            )));
        }
        if let Some(c) = secret_name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "/_+=.@-".contains(*c)))
        {
            return Err(bad(&format!(
                "character `{c}` is not allowed (letters, digits and /_+=.@- are)"
            )));
        }
        Ok(AwsDestination {
            store: store.into(),
            connection,
            secret_name,
            create_if_missing: false,
            kms_key_id: None,
            lock_ttl: DEFAULT_LOCK_TTL,
            version_budget: DEFAULT_VERSION_BUDGET,
            clock: Clock::System,
        })
    }

    /// Creates the secret (with `kms_key_id`, if given) when it is absent,
    /// instead of failing. The companion secrets are always created on
    /// demand, with the same key.
    pub fn create_if_missing(mut self, create: bool, kms_key_id: Option<String>) -> Self {
        self.create_if_missing = create;
        self.kms_key_id = kms_key_id;
        self
    }

    /// Sets how long a lease lasts without renewal.
    ///
    /// # Errors
    /// Shorter than 3 seconds: renewal every third of it would not keep up.
    /// How long a lease on this destination's lock lasts unless renewed.
    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    /// New versions a secret may get within 24 hours.
    pub fn version_budget(&self) -> u32 {
        self.version_budget
    }

    #[must_use]
    pub fn with_version_budget(mut self, budget: u32) -> Self {
        self.version_budget = budget;
        self
    }

    /// The lock secret's name (`<name>.lock`), for messages.
    pub fn lock_name(&self) -> String {
        self.lock_secret_name()
    }

    pub fn with_lock_ttl(mut self, ttl: Duration) -> Result<Self, AwsSetupError> {
        if ttl < Duration::from_secs(3) {
            return Err(AwsSetupError::LockTtl(ttl));
        }
        self.lock_ttl = ttl;
        Ok(self)
    }

    /// Uses `clock` for lease times.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// `aws:<region>/<secret name>`.
    pub fn label(&self) -> String {
        format!("aws:{}/{}", self.connection.region(), self.secret_name)
    }

    pub fn kind(&self) -> &'static str {
        "aws"
    }

    pub fn store(&self) -> &str {
        &self.store
    }

    pub fn secret_name(&self) -> &str {
        &self.secret_name
    }

    pub fn journal_secret_name(&self) -> String {
        format!("{}{JOURNAL_SUFFIX}", self.secret_name)
    }

    pub fn lock_secret_name(&self) -> String {
        format!("{}{LOCK_SUFFIX}", self.secret_name)
    }

    /// Where the lock lives, unique among every region and endpoint this
    /// process talks to.
    pub(super) fn lock_location(&self) -> String {
        format!(
            "aws {} {} {}",
            self.connection.region(),
            self.connection.endpoint_url().unwrap_or(""),
            self.lock_secret_name()
        )
    }

    pub(super) fn err(&self, op: StoreOp, kind: StoreErrorKind, message: String) -> StoreError {
        StoreError::new(self.label(), op, kind, message)
    }

    /// Classifies an SDK failure. The message names the API call and the
    /// secret; AWS error messages never echo secret values.
    pub(super) fn sdk_err<E>(
        &self,
        op: StoreOp,
        api: &str,
        secret: &str,
        e: &SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (kind, message) = classify(api, secret, &self.secret_name, e);
        self.err(op, kind, message)
    }

    pub(super) fn not_found(&self, op: StoreOp) -> StoreError {
        self.err(
            op,
            StoreErrorKind::Permanent,
            format!(
                "secret `{}` does not exist in {}; create it (`aws secretsmanager create-secret --name {}`) or enable `create_if_missing`",
                self.secret_name,
                self.connection.region(),
                self.secret_name
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stores::aws::{AwsConnection, AwsConnectionSettings};

    #[test]
    fn secret_names_are_checked() {
        let conn = AwsConnection::new(AwsConnectionSettings::new("us-east-1")).unwrap();
        let d = AwsDestination::new("aws", conn.clone(), "prod/md/etl").unwrap();
        assert_eq!(d.label(), "aws:us-east-1/prod/md/etl");
        assert_eq!(d.lock_secret_name(), "prod/md/etl.lock");
        assert_eq!(d.journal_secret_name(), "prod/md/etl.journal");
        for bad in [
            "",
            "arn:aws:secretsmanager:us-east-1:1:secret:x-abcdef",
            "a b",
        ] {
            assert!(
                AwsDestination::new("aws", conn.clone(), bad).is_err(),
                "{bad}"
            );
        }
        assert!(AwsDestination::new("aws", conn, "x".repeat(505)).is_err());
    }
}
