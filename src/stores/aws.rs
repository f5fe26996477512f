//! The AWS Secrets Manager store.
//!
//! # Layout
//!
//! For a destination secret named `N` (a name, not an ARN):
//!
//! - **`N`** holds the token records, one secret *version* per rotation.
//!   Each version's `SecretString` is the same JSON record the file store
//!   writes (`token`, `token_id`, `token_name`, `service_account`,
//!   `token_type`, `created_at`, `expires_at`, `rotation_id`, `rotation`,
//!   and `ack_secret` when the policy takes acknowledgements). Consumers run
//!   `aws secretsmanager get-secret-value --secret-id N --query SecretString`
//!   and read `.token`. The staging labels are the ones AWS uses for its
//!   own rotations:
//!   - `AWSCURRENT`: what consumers read;
//!   - `AWSPENDING`: the staged record of a rotation under way;
//!   - `AWSPREVIOUS`: the record replaced by the last promotion, kept until
//!     its token is revoked (`finish` then removes the label).
//!
//!   A version's id is derived from its rotation id ([`version_id_for`]) and
//!   is passed as `ClientRequestToken`, so repeating a write of the same
//!   rotation never creates a second version.
//! - **`N.journal`** holds the journal of the latest rotation as JSON
//!   `{"version_id": <version of N it annotates>, "rotation": <journal>}`.
//!   Versions of `N` cannot be edited, and the journal changes after the
//!   record is written (promoted, verified, done, rolled back), so those
//!   changes go here, never touching what consumers read. The journal holds
//!   no secret. The record's own `rotation` field keeps the journal as it
//!   was at staging time; it is what a staged or freshly promoted record
//!   reports until `N.journal` annotates that version.
//! - **`N.lock`** is the coordination lock (see below). It holds no secret.
//!
//! Tags are not used for the journal: tag values are limited to 256
//! characters and a small character set, and a journal's `last_error` does
//! not fit.
//!
//! # Reading
//!
//! `DescribeSecret` gives `VersionIdsToStages`; each labelled version is then
//! read by its `VersionId`, and `N.journal` with an explicit
//! `VersionStage=AWSCURRENT`. `interpret` turns that snapshot into a
//! [`DestinationView`] with the file store's meaning. Every multi-call
//! operation below is ordered so that each intermediate state, should the
//! process die there, reads as a state the rotation plan continues from.
//!
//! # Coordination
//!
//! `try_lock` uses two atomic Secrets Manager primitives, never a read
//! followed by a blind write:
//!
//! - the first holder ever creates `N.lock` with `CreateSecret`: creation
//!   is create-if-absent, so of two concurrent creators exactly one succeeds
//!   and the other gets `ResourceExistsException`;
//! - afterwards the lease value (`holder`, `lease_id`, `expires_at`,
//!   `released`) lives in the `AWSCURRENT` version of `N.lock`. A contender
//!   that reads a released or expired lease writes its own lease as a new
//!   version (labelled `AWSPENDING`, so it is inert) and then calls
//!   `UpdateSecretVersionStage(AWSCURRENT, MoveToVersionId = its version,
//!   RemoveFromVersionId = the version it read)`. Secrets Manager applies
//!   that move only if `AWSCURRENT` is still attached to the version named
//!   in `RemoveFromVersionId`, and rejects it with
//!   `InvalidParameterException` otherwise: a compare-and-swap on the label.
//!   Of several contenders that read the same version, one wins. Renewal
//!   and release are the same compare-and-swap from the holder's own
//!   version, so a holder whose lease was taken over can neither extend nor
//!   release the new holder's lease.
//!
//! Release swaps `AWSCURRENT` to a fixed "released" version (written once,
//! labelled `RELEASED`), so it adds no version. The lock secret is never
//! deleted: `DeleteSecret` takes no precondition, so a holder whose lease
//! had expired would delete its successor's lock, and AWS refuses to
//! re-create a force-deleted name for a while.
//!
//! # Version budget
//!
//! AWS advises against writing a secret more often than once every 10
//! minutes, sustained: it removes unlabelled versions only once they are 24
//! hours old, and a secret has a quota of versions. Each rotation writes one
//! version of `N` and about three of `N.journal`. Each lease taken from a
//! free or expired lock writes one version of `N.lock`, and each renewal
//! (every third of the lock TTL, default 10 minutes) one more; a lock that is
//! held costs a contender only reads.
//!
//! # IAM
//!
//! The least-privilege policy for one destination secret `N` (without a
//! customer managed KMS key; with one, also allow `kms:Decrypt` and
//! `kms:GenerateDataKey` on that key, conditioned on `kms:ViaService`
//! `secretsmanager.<region>.amazonaws.com`):
//!
//! ```json
//! {
//!   "Version": "2012-10-17",
//!   "Statement": [
//!     {
//!       "Sid": "RotateTheTokenSecret",
//!       "Effect": "Allow",
//!       "Action": [
//!         "secretsmanager:DescribeSecret",
//!         "secretsmanager:GetSecretValue",
//!         "secretsmanager:PutSecretValue",
//!         "secretsmanager:UpdateSecretVersionStage"
//!       ],
//!       "Resource": [
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N-??????",
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N.journal-??????",
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N.lock-??????"
//!       ]
//!     },
//!     {
//!       "Sid": "CreateCompanionSecrets",
//!       "Effect": "Allow",
//!       "Action": ["secretsmanager:CreateSecret", "secretsmanager:TagResource"],
//!       "Resource": [
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N.journal-??????",
//!         "arn:aws:secretsmanager:REGION:ACCOUNT:secret:N.lock-??????"
//!       ]
//!     }
//!   ]
//! }
//! ```
//!
//! With `create_if_missing`, add `N-??????` to the second statement.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::Credentials;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::Tag;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::{
    DestinationView, Journal, JournalState, NewRecord, RecordView, Slot, StoreError,
    StoreErrorKind, StoreOp, TokenMeta,
};
use crate::clock::Clock;
use crate::motherduck::TokenType;
use crate::secret::{ExposeSecret, SecretString};

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";
const PREVIOUS: &str = "AWSPREVIOUS";
const JOURNAL_SUFFIX: &str = ".journal";
const LOCK_SUFFIX: &str = ".lock";
/// Secrets Manager's limit on secret names.
const MAX_NAME_LEN: usize = 512;
/// The lock's released state: one fixed version, labelled with a label of
/// its own so Secrets Manager never removes it.
const RELEASED_LOCK_VERSION: &str = "00000000-0000-0000-0000-000000000000";
const RELEASED_LOCK_LABEL: &str = "RELEASED";
const RELEASED_LOCK_VALUE: &str = r#"{"holder":"","lease_id":"","acquired_at":"1970-01-01T00:00:00Z","expires_at":"1970-01-01T00:00:00Z","released":true}"#;
/// How long a lease lasts without renewal, unless configured.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(600);

/// Why an AWS connection or destination cannot be set up. Raised before
/// any network call.
#[derive(Debug, thiserror::Error)]
pub enum AwsSetupError {
    #[error(
        "invalid AWS region `{0}`: expected lowercase letters, digits and dashes, e.g. `us-east-1`"
    )]
    Region(String),
    #[error("invalid AWS endpoint URL `{url}`: {reason}")]
    Endpoint { url: String, reason: String },
    #[error(
        "AWS endpoint URL `{0}` uses plain http; https is required unless the host is loopback"
    )]
    InsecureEndpoint(String),
    #[error("invalid secret name `{name}`: {reason}")]
    SecretName { name: String, reason: String },
    #[error("`max_attempts` must be at least 1")]
    MaxAttempts,
    #[error("the lock TTL must be at least 3 seconds, got {0:?}")]
    LockTtl(Duration),
}

/// How to reach Secrets Manager: region, endpoint, and the SDK's retry and
/// timeout settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConnectionSettings {
    pub region: String,
    /// A non-default endpoint (a VPC endpoint, or a test server). `None`:
    /// the regional AWS endpoint.
    pub endpoint_url: Option<String>,
    /// Attempts per AWS call, the first included (the SDK's standard retry
    /// mode, which backs off and retries throttling and 5xx responses).
    pub max_attempts: u32,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for one attempt of a call.
    pub attempt_timeout: Duration,
    /// Time for a call, all attempts included.
    pub operation_timeout: Duration,
}

impl AwsConnectionSettings {
    /// Settings for `region` with the regional endpoint, 3 attempts, and
    /// timeouts that keep a stalled call from holding a rotation step long.
    pub fn new(region: impl Into<String>) -> AwsConnectionSettings {
        AwsConnectionSettings {
            region: region.into(),
            endpoint_url: None,
            max_attempts: 3,
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

/// A Secrets Manager client shared by every destination of one store: one
/// SDK client per region and endpoint. Cheap to clone. The client is built
/// on first use, so constructing a connection does no IO.
#[derive(Clone)]
pub struct AwsConnection {
    inner: Arc<ConnectionInner>,
}

struct ConnectionInner {
    settings: AwsConnectionSettings,
    /// Static credentials (tests, or a deliberate override); `None` uses
    /// the default chain: environment, profile, web identity (IRSA),
    /// container and instance metadata.
    credentials: Option<Credentials>,
    client: tokio::sync::OnceCell<Client>,
}

impl std::fmt::Debug for AwsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("AwsConnection")
            .field("region", &s.region)
            .field("endpoint_url", &s.endpoint_url)
            .field(
                "credentials",
                &if self.inner.credentials.is_some() {
                    "static"
                } else {
                    "default chain"
                },
            )
            .finish_non_exhaustive()
    }
}

impl AwsConnection {
    /// A connection using the default credential chain.
    ///
    /// # Errors
    /// An invalid region, an unparsable endpoint, or plain http to a host
    /// that is not loopback.
    pub fn new(settings: AwsConnectionSettings) -> Result<AwsConnection, AwsSetupError> {
        AwsConnection::build(settings, None)
    }

    /// A connection with fixed credentials instead of the default chain:
    /// for tests against a local server, or when the caller resolved
    /// credentials itself.
    ///
    /// # Errors
    /// As [`AwsConnection::new`].
    pub fn with_credentials(
        settings: AwsConnectionSettings,
        credentials: Credentials,
    ) -> Result<AwsConnection, AwsSetupError> {
        AwsConnection::build(settings, Some(credentials))
    }

    fn build(
        settings: AwsConnectionSettings,
        credentials: Option<Credentials>,
    ) -> Result<AwsConnection, AwsSetupError> {
        let region_ok = !settings.region.is_empty()
            && settings
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !region_ok {
            return Err(AwsSetupError::Region(settings.region));
        }
        if let Some(raw) = &settings.endpoint_url {
            check_endpoint(raw)?;
        }
        if settings.max_attempts == 0 {
            return Err(AwsSetupError::MaxAttempts);
        }
        Ok(AwsConnection {
            inner: Arc::new(ConnectionInner {
                settings,
                credentials,
                client: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// The settings this connection was built with; destinations whose
    /// settings are equal can share one connection.
    pub fn settings(&self) -> &AwsConnectionSettings {
        &self.inner.settings
    }

    pub fn region(&self) -> &str {
        &self.inner.settings.region
    }

    pub fn endpoint_url(&self) -> Option<&str> {
        self.inner.settings.endpoint_url.as_deref()
    }

    async fn client(&self) -> &Client {
        self.inner
            .client
            .get_or_init(|| async {
                let s = &self.inner.settings;
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(s.region.clone()))
                    .retry_config(RetryConfig::standard().with_max_attempts(s.max_attempts))
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(s.connect_timeout)
                            .operation_attempt_timeout(s.attempt_timeout)
                            .operation_timeout(s.operation_timeout)
                            .build(),
                    );
                if let Some(c) = &self.inner.credentials {
                    loader = loader.credentials_provider(c.clone());
                }
                // The endpoint override is for Secrets Manager only (a VPC
                // endpoint, say): set on the loader it would also send the
                // credential chain's STS calls (web identity) there.
                let shared = loader.load().await;
                let mut config = aws_sdk_secretsmanager::config::Builder::from(&shared);
                if let Some(url) = &s.endpoint_url {
                    config = config.endpoint_url(url.clone());
                }
                Client::from_conf(config.build())
            })
            .await
    }
}

fn check_endpoint(raw: &str) -> Result<(), AwsSetupError> {
    let invalid = |reason: &str| AwsSetupError::Endpoint {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = reqwest::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the URL are not allowed"));
    }
    if url.host().is_none() {
        return Err(invalid("no host"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if crate::motherduck::is_loopback(&url) => Ok(()),
        "http" => Err(AwsSetupError::InsecureEndpoint(raw.to_owned())),
        other => Err(invalid(&format!("unsupported scheme `{other}`"))),
    }
}

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

/// A Secrets Manager destination: one secret, plus its journal and lock
/// companions (see the module documentation).
#[derive(Debug, Clone)]
pub struct AwsDestination {
    /// The configured store's name, for messages.
    store: String,
    connection: AwsConnection,
    secret_name: String,
    /// Create the secret when it is absent, instead of failing.
    create_if_missing: bool,
    /// The KMS key for secrets this destination creates; `None`: the
    /// account's `aws/secretsmanager` key.
    kms_key_id: Option<String>,
    /// How long a lease lasts without renewal; the holder renews every
    /// third of it.
    lock_ttl: Duration,
    /// New versions a secret may get within 24 hours (Secrets Manager's
    /// quota, about 100), which `validate` plans within.
    version_budget: u32,
    /// Lease expiry is wall-clock time shared between replicas; tests move
    /// a manual clock instead of sleeping.
    clock: Clock,
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
    fn lock_location(&self) -> String {
        format!(
            "aws {} {} {}",
            self.connection.region(),
            self.connection.endpoint_url().unwrap_or(""),
            self.lock_secret_name()
        )
    }

    fn err(&self, op: StoreOp, kind: StoreErrorKind, message: String) -> StoreError {
        StoreError {
            destination: self.label(),
            op,
            kind,
            message,
        }
    }

    /// Classifies an SDK failure. The message names the API call and the
    /// secret; AWS error messages never echo secret values.
    fn sdk_err<E>(
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

    fn not_found(&self, op: StoreOp) -> StoreError {
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

    // ---- AWS calls ----

    /// The labels of the destination secret; `None` when it does not
    /// exist.
    async fn describe(&self, op: StoreOp) -> Result<Option<Labels>, StoreError> {
        let name = &self.secret_name;
        let out = self
            .connection
            .client()
            .await
            .describe_secret()
            .secret_id(name)
            .send()
            .await;
        let out = match out {
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
    async fn describe_existing(&self, op: StoreOp) -> Result<Labels, StoreError> {
        self.describe(op).await?.ok_or_else(|| self.not_found(op))
    }

    /// Whether a companion secret exists (for `check`).
    async fn exists(&self, op: StoreOp, name: &str) -> Result<bool, StoreError> {
        let r = self
            .connection
            .client()
            .await
            .describe_secret()
            .secret_id(name)
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(false),
            Err(e) => Err(self.sdk_err(op, "DescribeSecret", name, &e)),
        }
    }

    /// Reads one version of `name`: its id and string value. `None` when
    /// the secret or the version does not exist.
    async fn get_value(
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
    async fn put_value(
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
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ResourceExistsException") => Ok(false),
            Err(e) => Err(self.sdk_err(op, "PutSecretValue", name, &e)),
        }
    }

    /// Creates secret `name`, with a first value if given. `Ok(false)`: it
    /// exists already.
    async fn create_secret(
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
        match req.send().await {
            Ok(_) => {
                info!(destination = %self.label(), secret = %name, "secret created");
                Ok(true)
            }
            Err(e) if e.code() == Some("ResourceExistsException") => Ok(false),
            Err(e) => Err(self.sdk_err(op, "CreateSecret", name, &e)),
        }
    }

    /// Moves (or, without `to`, removes) `label` on `name`.
    async fn move_label(
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
    async fn relabel(
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
    async fn read_record(
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
        serde_json::from_str::<StoredRecord>(&text)
            .map(Some)
            .map_err(|e| {
                // Position only: serde's message could quote the secret.
                self.err(
                    op,
                    StoreErrorKind::Corrupt,
                    format!(
                        "version `{version}` of secret `{}` is not a token record written by motherduck-rotator (line {} column {}); a secret created for the rotator should have no value until its first rotation",
                        self.secret_name,
                        e.line(),
                        e.column()
                    ),
                )
            })
    }

    /// The journal companion's current content.
    async fn read_journal(&self, op: StoreOp) -> Result<Option<JournalDoc>, StoreError> {
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

    /// Makes `doc` the journal, unless it already is.
    async fn write_journal(
        &self,
        op: StoreOp,
        doc: &JournalDoc,
        known: Option<&JournalDoc>,
    ) -> Result<(), StoreError> {
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
    async fn snapshot(&self, op: StoreOp) -> Result<Option<DestinationView>, StoreError> {
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

    // ---- the destination operations ----

    /// Reads all records, without secrets.
    ///
    /// # Errors
    /// Unreachable service, access denied, a record that does not parse,
    /// or an absent secret without `create_if_missing`.
    pub async fn load(&self) -> Result<DestinationView, StoreError> {
        match self.snapshot(StoreOp::Load).await? {
            Some(v) => Ok(v),
            None if self.create_if_missing => Ok(DestinationView::default()),
            None => Err(self.not_found(StoreOp::Load)),
        }
    }

    /// The secret (and acknowledgement secret) of the current or pending
    /// version, if it belongs to `rotation_id`.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub async fn read_secret(
        &self,
        slot: Slot,
        rotation_id: &str,
    ) -> Result<Option<(SecretString, Option<SecretString>)>, StoreError> {
        let op = StoreOp::ReadSecret;
        let Some(labels) = self.describe(op).await? else {
            return Ok(None);
        };
        let version = match slot {
            Slot::Current => labels.current,
            Slot::Pending => labels.pending,
        };
        let Some(version) = version else {
            return Ok(None);
        };
        Ok(self
            .read_record(op, &version)
            .await?
            .filter(|r| r.rotation_id == rotation_id)
            .map(|r| (r.token, r.ack_secret)))
    }

    /// Writes the record as a new version labelled `AWSPENDING`, whose id is
    /// derived from the rotation id: a repeat finds that version and
    /// changes nothing. Creates the secret first when it is absent and
    /// `create_if_missing` is set.
    ///
    /// When the secret has no version yet, AWS also labels this first
    /// version `AWSCURRENT`; it is still reported as staged (not current)
    /// until `promote`.
    ///
    /// # Errors
    /// Service failures; `Conflict` when the rotation's version holds a
    /// different token.
    pub async fn stage(&self, record: &NewRecord) -> Result<(), StoreError> {
        let op = StoreOp::Stage;
        let vid = version_id_for(&record.meta.rotation_id);
        let labels = match self.describe(op).await? {
            Some(l) => l,
            None if self.create_if_missing => {
                let description = format!(
                    "MotherDuck token of service account {}, rotated by motherduck-rotator; consumers read `.token`",
                    record.meta.service_account
                );
                self.create_secret(op, &self.secret_name, description, None)
                    .await?;
                Labels::default()
            }
            None => return Err(self.not_found(op)),
        };
        if labels.ids().any(|v| v == vid) {
            // A repeat: the version exists.
            self.same_record_or_conflict(op, &vid, record).await?;
            return self.ensure_staged(op, &labels, &vid).await;
        }
        let body = StoredRecord::json(record);
        if self
            .put_value(op, &self.secret_name, &body, &vid, PENDING)
            .await?
        {
            debug!(destination = %self.label(), version_id = %vid, "record staged");
            return Ok(());
        }
        // The version exists but is not labelled (AWS lists only labelled
        // versions): compare, then label it.
        self.same_record_or_conflict(op, &vid, record).await?;
        let labels = self.describe_existing(op).await?;
        self.ensure_staged(op, &labels, &vid).await
    }

    async fn same_record_or_conflict(
        &self,
        op: StoreOp,
        vid: &str,
        record: &NewRecord,
    ) -> Result<(), StoreError> {
        let existing = self.read_record(op, vid).await?;
        let same = existing.as_ref().is_some_and(|e| {
            e.rotation_id == record.meta.rotation_id
                && e.token_id == record.meta.token_id
                && e.token.expose_secret() == record.token.expose_secret()
        });
        if same {
            return Ok(());
        }
        Err(self.err(
            op,
            StoreErrorKind::Conflict,
            format!(
                "version `{vid}` of secret `{}` already holds a different record for rotation `{}`",
                self.secret_name, record.meta.rotation_id
            ),
        ))
    }

    /// Labels `vid` `AWSPENDING` unless it is pending or current already.
    async fn ensure_staged(
        &self,
        op: StoreOp,
        labels: &Labels,
        vid: &str,
    ) -> Result<(), StoreError> {
        if labels.is(CURRENT, vid) || labels.is(PENDING, vid) {
            return Ok(());
        }
        self.relabel(op, PENDING, labels.pending.as_deref(), Some(vid))
            .await
    }

    /// Moves `AWSCURRENT` to the rotation's version (AWS moves
    /// `AWSPREVIOUS` to the replaced one), records `journal` for it, then
    /// removes `AWSPENDING` from it. The destination counts as promoted only
    /// when all three are done; a repeat finishes whichever had not
    /// happened.
    ///
    /// # Errors
    /// Service failures; `Corrupt` when the rotation is neither staged nor
    /// current.
    pub async fn promote(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Promote;
        let rid = &journal.rotation_id;
        let vid = version_id_for(rid);
        let labels = self.describe_existing(op).await?;
        let known = self.read_journal(op).await?;
        if !labels.is(CURRENT, &vid) {
            if !labels.is(PENDING, &vid) {
                return Err(self.err(
                    op,
                    StoreErrorKind::Corrupt,
                    format!("no staged record for rotation `{rid}`"),
                ));
            }
            self.relabel(op, CURRENT, labels.current.as_deref(), Some(&vid))
                .await?;
        }
        if known.as_ref().is_none_or(|k| k.version_id != vid) {
            let doc = JournalDoc {
                version_id: vid.clone(),
                rotation: journal.clone(),
            };
            self.write_journal(op, &doc, known.as_ref()).await?;
        }
        // Last, so that until it is gone the promotion reads as unfinished
        // (see `interpret`) and is repeated.
        if labels.is(PENDING, &vid) {
            self.relabel(op, PENDING, Some(&vid), None).await?;
        }
        Ok(())
    }

    /// Records `journal` for the current version; what consumers read does
    /// not change.
    ///
    /// # Errors
    /// Service failures; `Corrupt` when there is no current version.
    pub async fn set_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Journal;
        let labels = self.describe_existing(op).await?;
        let Some(current) = labels.current else {
            return Err(self.err(op, StoreErrorKind::Corrupt, "no current version".into()));
        };
        let known = self.read_journal(op).await?;
        let doc = JournalDoc {
            version_id: current,
            rotation: journal.clone(),
        };
        self.write_journal(op, &doc, known.as_ref()).await
    }

    /// Undoes `journal.rotation_id`: moves `AWSCURRENT` back to the previous
    /// version if the new one was promoted, removes the new version's
    /// labels, and records `journal` for the restored version.
    ///
    /// The journal is written first: until `AWSCURRENT` moves back (the
    /// commit point), the destination reads as the rotation still under
    /// way, exactly as a file destination does until its rename. When the
    /// new token is the destination's first, nothing older can be restored:
    /// the new version stays `AWSCURRENT` for lack of another (AWS always
    /// keeps one) and is reported as no current record.
    ///
    /// # Errors
    /// Service failures.
    pub async fn rollback(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Rollback;
        let vid = version_id_for(&journal.rotation_id);
        let Some(labels) = self.describe(op).await? else {
            return Ok(());
        };
        let known = self.read_journal(op).await?;
        let restore = labels.previous.clone().filter(|p| *p != vid);
        match (labels.is(CURRENT, &vid), restore) {
            (true, Some(prev)) => {
                let doc = JournalDoc {
                    version_id: prev.clone(),
                    rotation: journal.clone(),
                };
                self.write_journal(op, &doc, known.as_ref()).await?;
                if labels.is(PENDING, &vid) {
                    self.relabel(op, PENDING, Some(&vid), None).await?;
                }
                self.relabel(op, CURRENT, Some(&vid), Some(&prev)).await?;
                // AWS labelled the undone version AWSPREVIOUS; its token is
                // about to be revoked.
                self.relabel(op, PREVIOUS, Some(&vid), None).await?;
            }
            (true, None) => {
                let doc = JournalDoc {
                    version_id: vid.clone(),
                    rotation: journal.clone(),
                };
                self.write_journal(op, &doc, known.as_ref()).await?;
                if labels.is(PENDING, &vid) {
                    self.relabel(op, PENDING, Some(&vid), None).await?;
                }
            }
            (false, _) => {
                if let Some(current) = &labels.current {
                    let doc = JournalDoc {
                        version_id: current.clone(),
                        rotation: journal.clone(),
                    };
                    self.write_journal(op, &doc, known.as_ref()).await?;
                }
                if labels.is(PENDING, &vid) {
                    self.relabel(op, PENDING, Some(&vid), None).await?;
                }
                // Left by a rollback interrupted after its commit point.
                if labels.is(PREVIOUS, &vid) {
                    self.relabel(op, PREVIOUS, Some(&vid), None).await?;
                }
            }
        }
        Ok(())
    }

    /// Records completion and removes `AWSPREVIOUS` (its token is revoked).
    ///
    /// # Errors
    /// Service failures; `Corrupt` when there is no current version.
    pub async fn finish(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Finish;
        let labels = self.describe_existing(op).await?;
        let Some(current) = labels.current.clone() else {
            return Err(self.err(op, StoreErrorKind::Corrupt, "no current version".into()));
        };
        let known = self.read_journal(op).await?;
        let doc = JournalDoc {
            version_id: current.clone(),
            rotation: journal.clone(),
        };
        self.write_journal(op, &doc, known.as_ref()).await?;
        if let Some(prev) = labels.previous.as_deref().filter(|p| *p != current) {
            self.relabel(op, PREVIOUS, Some(prev), None).await?;
        }
        Ok(())
    }

    /// Takes the coordination lock if it is free, released, or expired.
    /// `Ok(None)`: another holder has it, or won the race for it.
    ///
    /// # Errors
    /// The lock cannot be attempted (permissions, unreachable service, a
    /// lock value that does not parse).
    pub async fn try_lock(&self, holder: &str) -> Result<Option<AwsLease>, StoreError> {
        let op = StoreOp::Lock;
        let lock = self.lock_secret_name();
        let now = self.clock.now();
        // The lease is counted from before any write that may take it.
        let sent = tokio::time::Instant::now();
        let lease_id = uuid::Uuid::new_v4().hyphenated().to_string();
        let doc = LockDoc {
            holder: holder.to_owned(),
            lease_id: lease_id.clone(),
            acquired_at: now,
            expires_at: now + ttl(self.lock_ttl),
            released: false,
        };
        let body = doc.json();
        // The first holder ever: create-if-absent is atomic.
        let description = format!(
            "coordination lock of secret {} (motherduck-rotator); holds no secret",
            self.secret_name
        );
        if self
            .create_secret(op, &lock, description, Some((&body, &lease_id)))
            .await?
        {
            return Ok(Some(self.lease(doc, lease_id, sent)));
        }
        let Some((seen, text)) = self.get_value(op, &lock, Which::Stage(CURRENT)).await? else {
            return Err(self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("lock secret `{lock}` has no current value"),
            ));
        };
        let current: LockDoc = serde_json::from_str(&text).map_err(|e| {
            self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("lock secret `{lock}` does not hold a lease: {e}"),
            )
        })?;
        let reclaimed = !current.released
            && current.expires_at > now
            && super::reclaim_abandoned(&self.lock_location(), &seen);
        if reclaimed {
            info!(destination = %self.label(), expires_at = %current.expires_at, "taking back the lock this process could not release");
        } else if !current.released && current.expires_at > now {
            debug!(destination = %self.label(), holder = %current.holder, expires_at = %current.expires_at, "lock is held");
            return Ok(None);
        }
        // Free or expired: write our lease as an inert version, then swap
        // AWSCURRENT to it only if it still sits on the version we read.
        if !self.put_value(op, &lock, &body, &lease_id, PENDING).await? {
            return Err(self.err(
                op,
                StoreErrorKind::Conflict,
                format!("lease version `{lease_id}` of `{lock}` exists already"),
            ));
        }
        match self
            .move_label(&lock, CURRENT, Some(&seen), Some(&lease_id))
            .await
        {
            Ok(()) => {
                if !current.released && !reclaimed {
                    info!(destination = %self.label(), previous_holder = %current.holder, expired_at = %current.expires_at, "took over an expired lock");
                }
                Ok(Some(self.lease(doc, lease_id, sent)))
            }
            Err(e) if e.code() == Some("InvalidParameterException") => {
                debug!(destination = %self.label(), reason = e.message().unwrap_or(""), "lost the race for the lock");
                Ok(None)
            }
            Err(e) => Err(self.sdk_err(op, "UpdateSecretVersionStage", &lock, &e)),
        }
    }

    fn lease(&self, doc: LockDoc, version: String, sent: tokio::time::Instant) -> AwsLease {
        let shared = Arc::new(LeaseShared {
            fence: super::Fence::expiring(self.label(), sent, self.lock_ttl),
            dest: self.clone(),
            holder: doc.holder,
            lease_id: doc.lease_id,
            acquired_at: doc.acquired_at,
            version: tokio::sync::Mutex::new(version),
            releasing: std::sync::atomic::AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let every = self.lock_ttl / 3;
        let (task_shared, task_stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = task_stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                match task_shared.renew().await {
                    Ok(true) => {}
                    Ok(false) if task_stop.is_cancelled() => return,
                    Ok(false) => {
                        warn!(destination = %task_shared.dest.label(), lease_id = %task_shared.lease_id, "lost the lock: another holder took it over");
                        return;
                    }
                    Err(e) => {
                        warn!(destination = %task_shared.dest.label(), error = %e, "failed to renew the lock; retrying")
                    }
                }
            }
        });
        AwsLease {
            shared,
            stop,
            released: false,
        }
    }

    /// Checks that the secret exists (or may be created), its records parse,
    /// and the companions can be described.
    ///
    /// # Errors
    /// What is wrong.
    pub async fn check(&self) -> Result<(), StoreError> {
        let op = StoreOp::Check;
        if self.snapshot(op).await?.is_none() && !self.create_if_missing {
            return Err(self.not_found(op));
        }
        self.exists(op, &self.lock_secret_name()).await?;
        Ok(())
    }

    /// [`check`](Self::check) for a destination that only holds a
    /// policy's lock: Secrets Manager answers and the lock secret can be
    /// described (it is created on first use).
    ///
    /// # Errors
    /// What is wrong.
    pub async fn check_lock(&self) -> Result<(), StoreError> {
        self.exists(StoreOp::Check, &self.lock_secret_name())
            .await?;
        Ok(())
    }
}

/// Holds a destination's coordination lock; renewed in the background
/// every third of the lock TTL, and released (best-effort) when dropped.
pub struct AwsLease {
    shared: Arc<LeaseShared>,
    /// Stops the renewal task.
    stop: CancellationToken,
    released: bool,
}

struct LeaseShared {
    dest: AwsDestination,
    holder: String,
    lease_id: String,
    acquired_at: DateTime<Utc>,
    /// The lock secret's version that holds our lease now; every renewal
    /// and the release swap `AWSCURRENT` away from it. A mutex held across
    /// the swap keeps a renewal and the release from racing.
    version: tokio::sync::Mutex<String>,
    /// Set when the release starts: a renewal already under way must not
    /// move `AWSCURRENT` on from the released version.
    releasing: std::sync::atomic::AtomicBool,
    fence: super::Fence,
}

impl std::fmt::Debug for AwsLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLease")
            .field("lock", &self.shared.dest.lock_secret_name())
            .field("holder", &self.shared.holder)
            .field("lease_id", &self.shared.lease_id)
            .finish()
    }
}

impl AwsLease {
    pub fn lease_id(&self) -> &str {
        &self.shared.lease_id
    }

    pub fn holder(&self) -> &str {
        &self.shared.holder
    }

    /// What the holder checks before each write.
    pub fn fence(&self) -> super::Fence {
        self.shared.fence.clone()
    }

    /// Extends the lease by the lock TTL from now. `Ok(false)`: the lease
    /// was lost (it expired and another holder took it over).
    ///
    /// # Errors
    /// Service failures.
    pub async fn renew(&self) -> Result<bool, StoreError> {
        self.shared.renew().await
    }

    /// Releases the lock now. Releasing a lease that was already lost is
    /// not an error and leaves the new holder's lease alone.
    ///
    /// # Errors
    /// Service failures; the lease then expires by itself.
    pub async fn release(mut self) -> Result<(), StoreError> {
        self.released = true;
        self.stop.cancel();
        let result = self.shared.release().await;
        if result.is_err() {
            self.shared.abandon().await;
        }
        result
    }
}

impl Drop for AwsLease {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.released {
            return;
        }
        let shared = self.shared.clone();
        let abandoned = shared.clone();
        super::release_in_background(
            shared.dest.label(),
            move || {
                let shared = shared.clone();
                async move { shared.release().await }
            },
            move || async move { abandoned.abandon().await },
        );
    }
}

impl LeaseShared {
    /// Writes `value` as the inert version `next` of the lock (labelled
    /// `label`), then swaps `AWSCURRENT` to it from our version. `Ok(false)`:
    /// our version is no longer current.
    async fn swap(
        &self,
        op: StoreOp,
        value: &str,
        next: String,
        label: &str,
    ) -> Result<bool, StoreError> {
        let d = &self.dest;
        let lock = d.lock_secret_name();
        let mut version = self.version.lock().await;
        if label != RELEASED_LOCK_LABEL && self.releasing.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(false);
        }
        if !d.put_value(op, &lock, value, &next, label).await? {
            return Err(d.err(
                op,
                StoreErrorKind::Conflict,
                format!("version `{next}` of `{lock}` exists with different content"),
            ));
        }
        match d
            .move_label(&lock, CURRENT, Some(&version), Some(&next))
            .await
        {
            Ok(()) => {
                *version = next;
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some("InvalidParameterException" | "ResourceNotFoundException")
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(d.sdk_err(op, "UpdateSecretVersionStage", &lock, &e)),
        }
    }

    async fn renew(&self) -> Result<bool, StoreError> {
        if self.renew_once().await? {
            return Ok(true);
        }
        if self.releasing.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        // Our version is no longer current. A renewal whose answer was lost
        // may have moved `AWSCURRENT` to a version of ours: read the lock
        // before calling the lease lost.
        let op = StoreOp::Lock;
        let lock = self.dest.lock_secret_name();
        if let Some((seen, text)) = self
            .dest
            .get_value(op, &lock, Which::Stage(CURRENT))
            .await?
            && serde_json::from_str::<LockDoc>(&text)
                .is_ok_and(|l| l.lease_id == self.lease_id && !l.released)
        {
            info!(destination = %self.dest.label(), lease_id = %self.lease_id, "a renewal whose answer was lost had been applied; the lock is still ours");
            *self.version.lock().await = seen;
            if self.renew_once().await? {
                return Ok(true);
            }
        }
        self.fence.lost();
        Ok(false)
    }

    /// One renewal from the version we believe is ours.
    async fn renew_once(&self) -> Result<bool, StoreError> {
        let now = self.dest.clock.now();
        let sent = tokio::time::Instant::now();
        let doc = LockDoc {
            holder: self.holder.clone(),
            lease_id: self.lease_id.clone(),
            acquired_at: self.acquired_at,
            expires_at: now + ttl(self.dest.lock_ttl),
            released: false,
        };
        let next = uuid::Uuid::new_v4().hyphenated().to_string();
        let swapped = self.swap(StoreOp::Lock, &doc.json(), next, PENDING).await?;
        if swapped {
            self.fence.renewed(sent, self.dest.lock_ttl);
        }
        Ok(swapped)
    }

    /// Swaps `AWSCURRENT` to the lock's fixed released version: written
    /// once (a repeat with the same token and content is a no-op), so a
    /// release adds no version.
    async fn release(&self) -> Result<(), StoreError> {
        self.releasing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let swapped = self
            .swap(
                StoreOp::Lock,
                RELEASED_LOCK_VALUE,
                RELEASED_LOCK_VERSION.to_owned(),
                RELEASED_LOCK_LABEL,
            )
            .await?;
        if !swapped {
            info!(destination = %self.dest.label(), lease_id = %self.lease_id, "lock was already taken over; nothing to release");
        }
        Ok(())
    }

    /// Notes the lease as given up by this process: see
    /// [`super::abandoned_lease`].
    async fn abandon(&self) {
        let version = self.version.lock().await.clone();
        super::abandoned_lease(self.dest.lock_location(), version);
    }
}

/// Secrets Manager's quota of new versions of one secret within 24 hours.
pub const DEFAULT_VERSION_BUDGET: u32 = 100;

fn ttl(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

type UpdateStageError =
    aws_sdk_secretsmanager::operation::update_secret_version_stage::UpdateSecretVersionStageError;

/// Which version of a secret to read.
#[derive(Debug, Clone, Copy)]
enum Which<'a> {
    Version(&'a str),
    Stage(&'a str),
}

/// Which version carries each staging label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Labels {
    current: Option<String>,
    pending: Option<String>,
    previous: Option<String>,
}

impl Labels {
    fn from_stages(map: Option<&HashMap<String, Vec<String>>>) -> Labels {
        let mut labels = Labels::default();
        for (version, stages) in map.into_iter().flatten() {
            for stage in stages {
                let slot = match stage.as_str() {
                    CURRENT => &mut labels.current,
                    PENDING => &mut labels.pending,
                    PREVIOUS => &mut labels.previous,
                    _ => continue,
                };
                *slot = Some(version.clone());
            }
        }
        labels
    }

    fn is(&self, label: &str, version: &str) -> bool {
        let slot = match label {
            CURRENT => &self.current,
            PENDING => &self.pending,
            _ => &self.previous,
        };
        slot.as_deref() == Some(version)
    }

    /// The labelled versions, each once.
    fn ids(&self) -> impl Iterator<Item = &str> {
        let mut seen: Vec<&str> = Vec::with_capacity(3);
        for v in [&self.current, &self.pending, &self.previous]
            .into_iter()
            .flatten()
        {
            if !seen.contains(&v.as_str()) {
                seen.push(v);
            }
        }
        seen.into_iter()
    }
}

/// The content of the journal companion: the latest journal and the
/// version of the destination secret it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JournalDoc {
    version_id: String,
    rotation: Journal,
}

/// The lock companion's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockDoc {
    holder: String,
    lease_id: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    #[serde(default)]
    released: bool,
}

impl LockDoc {
    fn json(&self) -> String {
        // Strings and timestamps: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A record version as stored. Fields are listed explicitly (no `flatten`)
/// so the secret is decoded straight into a zeroizing type.
#[derive(Deserialize)]
struct StoredRecord {
    token: SecretString,
    token_id: String,
    token_name: String,
    service_account: String,
    token_type: TokenType,
    created_at: DateTime<Utc>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    rotation_id: String,
    #[serde(default)]
    rotation: Option<Journal>,
    #[serde(default)]
    ack_secret: Option<SecretString>,
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
    fn json(r: &NewRecord) -> Zeroizing<String> {
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

    fn view(&self) -> RecordView {
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

/// What the labels, the records (by version id, with the journal each was
/// staged with) and the journal companion mean, in the terms of the file
/// store:
///
/// - the current record is the `AWSCURRENT` version, with the companion's
///   journal when the companion annotates that version, otherwise with its
///   staging-time journal (a promotion that has not recorded its journal
///   yet). It is absent while that version is also `AWSPENDING` and not
///   annotated (staged, not promoted: the first version of a secret gets
///   `AWSCURRENT` from AWS), and absent when the companion records the
///   rollback of that very version's rotation (a first token rolled back:
///   nothing usable is left);
/// - the pending record is the `AWSPENDING` version, unless its rotation was
///   rolled back or it is already current and annotated (a leftover label);
/// - the previous record is the `AWSPREVIOUS` version, unless its rotation
///   was rolled back. Its journal is not kept.
///
/// A rollback whose journal is written but whose `AWSCURRENT` has not moved
/// back yet reads as the rotation still under way.
fn interpret(
    labels: &Labels,
    records: &HashMap<String, RecordView>,
    journal: Option<&JournalDoc>,
) -> DestinationView {
    let annotates = |v: &str| journal.is_some_and(|j| j.version_id == v);
    let rolled_back = journal
        .filter(|j| j.rotation.state == JournalState::RolledBack)
        .map(|j| j.rotation.rotation_id.as_str());
    fn record<'a>(
        v: &'a Option<String>,
        records: &'a HashMap<String, RecordView>,
    ) -> Option<(&'a str, &'a RecordView)> {
        v.as_deref().and_then(|id| records.get(id).map(|r| (id, r)))
    }

    let current = record(&labels.current, records).and_then(|(id, r)| {
        let undone = rolled_back == Some(r.meta.rotation_id.as_str());
        if undone && annotates(id) {
            return None;
        }
        if !undone && labels.is(PENDING, id) && !annotates(id) {
            return None;
        }
        Some(RecordView {
            meta: r.meta.clone(),
            journal: if annotates(id) {
                journal.map(|j| j.rotation.clone())
            } else {
                r.journal.clone()
            },
        })
    });
    let pending = record(&labels.pending, records).and_then(|(id, r)| {
        let undone = rolled_back == Some(r.meta.rotation_id.as_str());
        let leftover = labels.is(CURRENT, id) && annotates(id);
        (!undone && !leftover).then(|| r.clone())
    });
    let previous = record(&labels.previous, records).and_then(|(id, r)| {
        let undone = rolled_back == Some(r.meta.rotation_id.as_str());
        (!undone && !labels.is(CURRENT, id)).then(|| RecordView {
            meta: r.meta.clone(),
            journal: None,
        })
    });
    // A promotion that stopped after the journal annotated the new current
    // version but before its `AWSPENDING` label was removed: the view shows
    // no pending record (the version is current), and the promotion is
    // reported unfinished so it is completed.
    let current_partial = labels
        .current
        .as_deref()
        .is_some_and(|id| labels.is(PENDING, id) && annotates(id) && current.is_some());
    DestinationView {
        current,
        pending,
        previous,
        current_partial,
    }
}

/// Turns an SDK failure into a kind and a message naming the API call and
/// the secret.
fn classify<E>(
    api: &str,
    secret: &str,
    main: &str,
    e: &SdkError<E, HttpResponse>,
) -> (StoreErrorKind, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    use StoreErrorKind::{Conflict, Permanent, Transient};
    match e {
        SdkError::ServiceError(_) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            // An error body the SDK cannot parse has no code; its HTTP
            // status still tells an operator what happened.
            let code = match (e.code(), status) {
                (Some(code), _) => code,
                (None, Some(401 | 403)) => "AccessDenied",
                (None, _) => "UnknownError",
            };
            let aws_message = match (e.message(), status) {
                (Some(message), _) => message.to_owned(),
                (None, Some(status)) => format!("HTTP {status}, no message"),
                (None, None) => "no message".to_owned(),
            };
            let kind = match code {
                "ThrottlingException"
                | "Throttling"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
                | "InternalServiceError"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "ServiceUnavailableException"
                | "RequestTimeout"
                | "RequestTimeoutException"
                | "ExpiredTokenException"
                | "ExpiredToken"
                | "RequestExpired" => Transient,
                "ResourceExistsException" => Conflict,
                _ if status.is_some_and(|s| s >= 500) => Transient,
                _ => Permanent,
            };
            let message = match code {
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "InvalidClientTokenId"
                | "MissingAuthenticationToken"
                | "NotAuthorized" => format!(
                    "access denied: `secretsmanager:{api}` on secret `{secret}`: {code}: {aws_message}"
                ),
                "ResourceNotFoundException" => format!(
                    "{api} on secret `{secret}`: not found ({aws_message}){}",
                    if secret == main {
                        ""
                    } else {
                        "; it is created on demand"
                    }
                ),
                "LimitExceededException" => format!(
                    "{api} on secret `{secret}`: Secrets Manager refused another version ({code}: {aws_message}); it accepts about 100 new versions of a secret within 24 hours, so this clears only as older versions age out: rotate less often, shorten verification deadlines or lengthen `lock_ttl` (`validate` shows the policy's worst case)"
                ),
                "DecryptionFailure" | "EncryptionFailure" => format!(
                    "{api} on secret `{secret}`: KMS refused: {code}: {aws_message}; check the key policy"
                ),
                _ => format!("{api} on secret `{secret}` failed: {code}: {aws_message}"),
            };
            (kind, message)
        }
        SdkError::TimeoutError(_) => (Transient, format!("{api} on secret `{secret}` timed out")),
        SdkError::DispatchFailure(d) => {
            let detail = DisplayErrorContext(e).to_string();
            // The SDK reports missing credentials as a dispatch failure;
            // retrying cannot help with those.
            let no_credentials = !d.is_io()
                && !d.is_timeout()
                && (detail.contains("the credential provider was not enabled")
                    || detail.contains("the credentials provider was not properly configured"));
            // A provider of the chain that failed (instance metadata or STS
            // unreachable, a malformed answer) may recover.
            let credentials_failed = !d.is_io()
                && !d.is_timeout()
                && (detail.contains("while loading credentials")
                    || detail.contains("unexpected credentials error"));
            if no_credentials {
                (
                    Permanent,
                    format!("{api} on secret `{secret}`: no usable AWS credentials: {detail}"),
                )
            } else if credentials_failed {
                (
                    Transient,
                    format!("{api} on secret `{secret}`: cannot load AWS credentials: {detail}"),
                )
            } else {
                (
                    Transient,
                    format!("{api} on secret `{secret}`: cannot reach Secrets Manager: {detail}"),
                )
            }
        }
        SdkError::ResponseError(_) => (
            Transient,
            format!(
                "{api} on secret `{secret}`: unreadable response: {}",
                DisplayErrorContext(e)
            ),
        ),
        SdkError::ConstructionFailure(_) => (
            Permanent,
            format!(
                "{api} on secret `{secret}`: request could not be built: {}",
                DisplayErrorContext(e)
            ),
        ),
        _ => (
            Transient,
            format!(
                "{api} on secret `{secret}` failed: {}",
                DisplayErrorContext(e)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::plan::{self, DestStatus, Step};

    fn t(s: &str) -> DateTime<Utc> {
        format!("2026-05-01T{s}Z").parse().unwrap()
    }

    fn journal(rid: &str, state: JournalState) -> Journal {
        Journal {
            rotation_id: rid.into(),
            state,
            previous_token_id: None,
            new_token_id: format!("tok-{rid}"),
            started_at: t("10:00:00"),
            updated_at: t("10:00:00"),
            revoke_after: None,
            last_error: None,
            failures: 0,
            retry_at: None,
            acknowledged_at: None,
        }
    }

    fn view(rid: &str) -> RecordView {
        RecordView {
            meta: TokenMeta {
                token_id: format!("tok-{rid}"),
                token_name: format!("rotator.p.{rid}"),
                service_account: "svc".into(),
                token_type: TokenType::ReadWrite,
                created_at: t("10:00:00"),
                expires_at: None,
                rotation_id: rid.into(),
            },
            journal: Some(journal(rid, JournalState::Staged)),
        }
    }

    /// Versions `v-<rid>` for each rotation id.
    fn records(rids: &[&str]) -> HashMap<String, RecordView> {
        rids.iter().map(|r| (format!("v-{r}"), view(r))).collect()
    }

    fn labels(current: Option<&str>, pending: Option<&str>, previous: Option<&str>) -> Labels {
        let v = |r: Option<&str>| r.map(|r| format!("v-{r}"));
        Labels {
            current: v(current),
            pending: v(pending),
            previous: v(previous),
        }
    }

    fn doc(rid_of_version: &str, j: Journal) -> JournalDoc {
        JournalDoc {
            version_id: format!("v-{rid_of_version}"),
            rotation: j,
        }
    }

    fn status(v: &DestinationView, rid: &str) -> DestStatus {
        plan::statuses(std::slice::from_ref(v), rid)[0]
    }

    fn step(v: &DestinationView) -> Step {
        plan::decide(
            std::slice::from_ref(v),
            t("11:00:00"),
            (t("23:00:00"), "schedule".into()),
        )
    }

    #[test]
    fn version_ids_are_stable_uuids() {
        let rid = "0196a1b2c3d47e5f8a9b0c1d2e3f4a5b";
        assert_eq!(version_id_for(rid), "0196a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
        let other = version_id_for("r1");
        assert_eq!(other, version_id_for("r1"));
        assert_eq!(other.len(), 36);
        assert_ne!(other, version_id_for("r2"));
    }

    #[test]
    fn staged_first_version_is_pending_not_current() {
        // AWS labels a secret's first version AWSCURRENT as well.
        let v = interpret(
            &labels(Some("r1"), Some("r1"), None),
            &records(&["r1"]),
            None,
        );
        assert!(v.current.is_none());
        assert_eq!(status(&v, "r1"), DestStatus::Staged);
        assert!(matches!(step(&v), Step::Promote { .. }));
    }

    #[test]
    fn promotion_interrupted_at_each_point_resumes() {
        let recs = records(&["r1", "r2"]);
        let old = Some(doc("r1", journal("r1", JournalState::Done)));
        // AWSCURRENT moved, AWSPENDING not yet removed: promote again.
        let v = interpret(
            &labels(Some("r2"), Some("r2"), Some("r1")),
            &recs,
            old.as_ref(),
        );
        assert_eq!(status(&v, "r2"), DestStatus::Staged);
        assert!(matches!(step(&v), Step::Promote { .. }));
        // Journal written for the new version, AWSPENDING still on it (the
        // last part of promote): not promoted yet, promote again.
        let promoted = doc("r2", journal("r2", JournalState::Promoted));
        let v = interpret(
            &labels(Some("r2"), Some("r2"), Some("r1")),
            &recs,
            Some(&promoted),
        );
        assert!(v.current_partial, "a leftover AWSPENDING is unfinished");
        assert_eq!(status(&v, "r2"), DestStatus::Promoting);
        assert!(matches!(step(&v), Step::Promote { .. }));
        // AWSPENDING removed before the journal (the order of earlier
        // versions): what consumers read is promoted; verify.
        let v = interpret(&labels(Some("r2"), None, Some("r1")), &recs, old.as_ref());
        assert_eq!(status(&v, "r2"), DestStatus::Promoted);
        assert!(matches!(step(&v), Step::Verify { .. }));
        // Journal written.
        let j = doc("r2", journal("r2", JournalState::Promoted));
        let v = interpret(&labels(Some("r2"), None, Some("r1")), &recs, Some(&j));
        assert_eq!(status(&v, "r2"), DestStatus::Promoted);
        assert_eq!(v.previous.unwrap().meta.rotation_id, "r1");
    }

    #[test]
    fn rollback_commits_when_awscurrent_moves_back() {
        let recs = records(&["r1", "r2"]);
        let rb = journal("r2", JournalState::RolledBack);
        // Journal written for the version to restore, labels not moved:
        // still the rotation under way, as a file store before its rename.
        let v = interpret(
            &labels(Some("r2"), None, Some("r1")),
            &recs,
            Some(&doc("r1", rb.clone())),
        );
        assert_eq!(v.current.as_ref().unwrap().meta.rotation_id, "r2");
        assert_eq!(status(&v, "r2"), DestStatus::Promoted);
        // AWSCURRENT moved back; AWS put AWSPREVIOUS on the undone version.
        let v = interpret(
            &labels(Some("r1"), None, Some("r2")),
            &recs,
            Some(&doc("r1", rb.clone())),
        );
        assert_eq!(status(&v, "r2"), DestStatus::RolledBack);
        assert!(v.previous.is_none(), "the undone version is not previous");
        assert!(v.pending.is_none());
        let cur = v.current.as_ref().unwrap();
        assert_eq!(cur.meta.rotation_id, "r1");
        assert_eq!(cur.journal.as_ref(), Some(&rb));
        assert!(matches!(step(&v), Step::Wait { .. }));
    }

    #[test]
    fn rollback_before_promotion_hides_the_pending_version() {
        let recs = records(&["r1", "r2"]);
        let rb = journal("r2", JournalState::RolledBack);
        // The pending label is still there (removed right after).
        let v = interpret(
            &labels(Some("r1"), Some("r2"), None),
            &recs,
            Some(&doc("r1", rb)),
        );
        assert!(v.pending.is_none());
        assert_eq!(status(&v, "r2"), DestStatus::RolledBack);
        assert!(
            matches!(step(&v), Step::Wait { .. }),
            "no rollback loop over a leftover label"
        );
    }

    #[test]
    fn first_token_rolled_back_leaves_no_current_record() {
        let recs = records(&["r1"]);
        let rb = journal("r1", JournalState::RolledBack);
        let v = interpret(&labels(Some("r1"), None, None), &recs, Some(&doc("r1", rb)));
        assert_eq!(v, DestinationView::default());
        assert!(matches!(step(&v), Step::Begin { .. }));
    }

    #[test]
    fn finished_rotation_keeps_its_journal() {
        let recs = records(&["r1", "r2", "r3"]);
        let done = journal("r2", JournalState::Done);
        let v = interpret(
            &labels(Some("r2"), Some("r3"), None),
            &recs,
            Some(&doc("r2", done.clone())),
        );
        assert_eq!(v.current.unwrap().journal, Some(done));
        assert_eq!(v.pending.unwrap().meta.rotation_id, "r3");
    }

    #[test]
    fn endpoints_need_https_unless_loopback() {
        let s = |url: &str| AwsConnectionSettings {
            endpoint_url: Some(url.into()),
            ..AwsConnectionSettings::new("us-east-1")
        };
        assert!(AwsConnection::new(s("https://secretsmanager.example.com")).is_ok());
        assert!(AwsConnection::new(s("http://127.0.0.1:5000")).is_ok());
        assert!(AwsConnection::new(s("http://localhost:5000")).is_ok());
        let e = AwsConnection::new(s("http://sm.example.com")).unwrap_err();
        assert!(e.to_string().contains("https is required"), "{e}");
        let e = AwsConnection::new(s("not a url")).unwrap_err();
        assert!(e.to_string().contains("`not a url`"), "{e}");
        let e = AwsConnection::new(AwsConnectionSettings::new("US East")).unwrap_err();
        assert!(e.to_string().contains("invalid AWS region"), "{e}");
    }

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
