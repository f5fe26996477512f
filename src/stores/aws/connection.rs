//! A Secrets Manager connection shared by a store's destinations, and how
//! SDK failures are classified.

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::Credentials;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::stores::StoreErrorKind;

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

    pub(super) async fn client(&self) -> &Client {
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

/// Turns an SDK failure into a kind and a message naming the API call and
/// the secret.
pub(super) fn classify<E>(
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
}
