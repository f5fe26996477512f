//! The MotherDuck REST client.
//!
//! # Retries
//! Like the official Terraform provider's client, every method is retried on
//! 429 (honouring `Retry-After`, in seconds or as an HTTP date, capped), and
//! the idempotent ones (GET, PUT, DELETE) also on 502/503/504, timeouts and
//! transport errors, with exponential backoff and full jitter.
//!
//! # Creating tokens is never retried blindly
//! A repeated `POST /v1/users/{sa}/tokens` makes a second live token, and its
//! secret is lost if the first answer was. So when a create fails in a way
//! that leaves its outcome open (5xx, a timeout, a connection dropped after
//! the request was sent), [`Client::create_token`] lists the account's tokens
//! and looks for the unique name the request carried (the rotator puts the
//! rotation id in it):
//! - if a token with that name exists, the server did create it but its
//!   secret never reached us, so it can never be stored: the client revokes
//!   it, then creates again;
//! - if none exists, creating again is safe.
//!
//! Either way at most one token with that name is live when `create_token`
//! returns. A create still in flight on the server while we list is the one
//! case this cannot see; the rotator's orphan sweep, which matches token ids
//! against stored records, revokes such a token later.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{ApiError, Endpoint, ErrorBody};
use super::rate::RateGate;
use super::types::*;
use crate::secret::{ExposeSecret, SecretString};

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://api.motherduck.com` in production; plain http is accepted
    /// only for loopback addresses (the simulator, a local proxy).
    pub base_url: String,
    /// A read/write token of an Admin user.
    pub admin_token: SecretString,
    /// Upper bound for one attempt, from connect to the last body byte.
    pub request_timeout: Duration,
    /// Retries after the first attempt for retryable failures.
    pub max_retries: u32,
    /// First backoff delay; later ones double, with full jitter.
    pub backoff_min: Duration,
    /// Largest backoff delay.
    pub backoff_max: Duration,
    /// Largest wait honoured from a `Retry-After` header.
    pub retry_after_cap: Duration,
    /// Client-side ceiling on requests per second; the rate starts lower
    /// and adapts to the server's 429s (see `rate::RateGate`).
    pub rate_limit_per_second: NonZeroU32,
    /// How the client waits between attempts; tests record instead.
    pub sleep: RetrySleep,
    /// Where request counts and latencies are recorded, if anywhere.
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl ClientConfig {
    /// Defaults matching the official client: 30 s `Retry-After` cap.
    pub fn new(base_url: impl Into<String>, admin_token: SecretString) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into(),
            admin_token,
            request_timeout: Duration::from_secs(15),
            max_retries: 4,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            retry_after_cap: Duration::from_secs(30),
            rate_limit_per_second: NonZeroU32::new(100).expect("100 is not zero"),
            sleep: RetrySleep::Tokio,
            metrics: None,
        }
    }
}

/// How the client waits between attempts.
#[derive(Debug, Clone, Default)]
pub enum RetrySleep {
    /// `tokio::time::sleep`, which a paused test clock controls.
    #[default]
    Tokio,
    /// Record each delay and do not wait: lets tests check the chosen delays
    /// (`Retry-After`, backoff) exactly while talking to a real socket, where
    /// a paused clock would also fire the request timeout.
    Record(Arc<Mutex<Vec<Duration>>>),
}

impl RetrySleep {
    async fn sleep(&self, d: Duration) {
        match self {
            RetrySleep::Tokio => tokio::time::sleep(d).await,
            RetrySleep::Record(log) => {
                if let Ok(mut log) = log.lock() {
                    log.push(d);
                }
            }
        }
    }
}

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("invalid MotherDuck API URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "MotherDuck API URL `{url}` must use https (plain http is allowed only for loopback addresses)"
    )]
    Insecure { url: String },
    #[error("the admin token contains characters not allowed in an HTTP header")]
    InvalidToken,
    #[error("failed to build the HTTP client: {0}")]
    Http(String),
}

/// Validates a MotherDuck API base URL: absolute, http(s), no credentials,
/// query or fragment, and https unless the host is a loopback address.
///
/// # Errors
/// Returns [`ClientBuildError::InvalidUrl`] or [`ClientBuildError::Insecure`].
pub fn validate_base_url(raw: &str) -> Result<Url, ClientBuildError> {
    let invalid = |reason: &str| ClientBuildError::InvalidUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ClientBuildError::InvalidUrl {
            url: "<redacted: contains credentials>".into(),
            reason:
                "credentials in the URL are not allowed; configure the admin token by reference"
                    .into(),
        });
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a query or fragment is not allowed"));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(ClientBuildError::Insecure {
                url: raw.to_owned(),
            });
        }
        other => return Err(invalid(&format!("unsupported scheme `{other}`"))),
    }
    if url.host().is_none() {
        return Err(invalid("no host"));
    }
    Ok(url)
}

/// True for `localhost`, 127.0.0.0/8 and `::1`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether a call may be repeated after a failure whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotence {
    /// GET, PUT, DELETE: repeat on 429, 502/503/504, timeouts, transport.
    Idempotent,
    /// POST: repeat only when the server certainly did nothing (429, or the
    /// connection was refused before the request was sent).
    NotIdempotent,
}

/// The outcome of a delete: both count as success for an idempotent caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// The server answered an entity 404: it was already gone.
    AlreadyGone,
}

/// What MotherDuck says of a token presented as a bearer credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// Accepted on an admin-only route.
    ValidAdmin,
    /// A valid token without the Admin role (403): normal for a service
    /// account's token.
    ValidNonAdmin,
    /// Unknown, revoked or expired (401).
    Rejected,
}

/// An async client for the MotherDuck REST API. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base.as_str())
            .field("admin_token", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    /// `Bearer <admin token>`, marked sensitive so hyper never prints it.
    admin_auth: HeaderValue,
    cfg: ClientConfig,
    limiter: RateGate,
}

/// One attempt's failure plus what the retry logic needs to know about it.
struct Failure {
    error: ApiError,
    retry_after: Option<Duration>,
}

impl Client {
    /// Builds a client.
    ///
    /// # Errors
    /// Fails on an invalid or insecure base URL, or an admin token that
    /// cannot be sent in a header.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClientBuildError> {
        let base = validate_base_url(&cfg.base_url)?;
        let admin_auth = bearer(&cfg.admin_token)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("motherduck-rotator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.request_timeout)
            // A redirect could carry the bearer token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientBuildError::Http(e.to_string()))?;
        let limiter = RateGate::new(cfg.rate_limit_per_second);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                admin_auth,
                cfg,
                limiter,
            }),
        })
    }

    /// The request rate the client allows itself now, in requests a
    /// second: at most the configured ceiling.
    pub fn current_rate(&self) -> u32 {
        self.inner.limiter.rate()
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// `POST /v1/users`: creates a service account (Member role).
    ///
    /// # Errors
    /// Validation errors (400), a duplicate username (400 or 409), auth.
    pub async fn create_service_account(&self, username: &str) -> Result<UserRef, ApiError> {
        let body = UserRef {
            username: username.to_owned(),
        };
        self.call(
            Endpoint::CreateServiceAccount,
            Method::POST,
            &["v1", "users"],
            Some(&body),
            Idempotence::NotIdempotent,
        )
        .await
    }

    /// `DELETE /v1/users/{username}`: deletes the account and all its tokens.
    /// A missing account counts as already deleted.
    ///
    /// # Errors
    /// Auth, transport and server errors after retries.
    pub async fn delete_service_account(&self, username: &str) -> Result<Removal, ApiError> {
        let r: Result<serde_json::Value, ApiError> = self
            .call(
                Endpoint::DeleteServiceAccount,
                Method::DELETE,
                &["v1", "users", username],
                None::<&()>,
                Idempotence::Idempotent,
            )
            .await;
        removal(r)
    }

    /// `GET /v1/users/{username}/tokens`: token metadata, never secrets.
    ///
    /// # Errors
    /// 404 when the user does not exist; auth, transport, server errors.
    pub async fn list_tokens(&self, username: &str) -> Result<Vec<TokenInfo>, ApiError> {
        let list: TokenList = self
            .call(
                Endpoint::ListTokens,
                Method::GET,
                &["v1", "users", username, "tokens"],
                None::<&()>,
                Idempotence::Idempotent,
            )
            .await?;
        Ok(list.tokens)
    }

    /// `POST /v1/users/{username}/tokens`, made safe to repeat; see the
    /// module documentation. `req.name` should be unique.
    ///
    /// # Errors
    /// Validation and auth errors at once; the last failure when retries
    /// ran out (no token with this name is then live);
    /// [`ApiError::CreateOutcomeUnknown`] when the check by listing failed,
    /// so a token with this name may exist.
    pub async fn create_token(
        &self,
        username: &str,
        req: &CreateTokenRequest,
    ) -> Result<CreatedToken, ApiError> {
        let endpoint = Endpoint::CreateToken;
        let mut backoff = self.backoff();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let failure = match self
                .attempt(
                    endpoint,
                    Method::POST,
                    &["v1", "users", username, "tokens"],
                    Some(req),
                    &self.inner.admin_auth,
                )
                .await
            {
                Ok(created) => return Ok(created),
                Err(f) => f,
            };
            let definitely_not_created = matches!(
                &failure.error,
                ApiError::Status { status: 429, .. } | ApiError::Transport { not_sent: true, .. }
            );
            let ambiguous = !definitely_not_created && is_ambiguous(&failure.error);
            if !definitely_not_created && !ambiguous {
                return Err(failure.error);
            }
            if ambiguous {
                // Find out whether the failed attempt created a token; if it
                // did, its secret is lost, so revoke it.
                if let Err(e) = self.discard_lost_tokens(username, &req.name).await {
                    return Err(ApiError::CreateOutcomeUnknown {
                        endpoint,
                        username: username.to_owned(),
                        name: req.name.clone(),
                        attempts,
                        last: Box::new(e),
                    });
                }
            }
            let Some(delay) = backoff.next() else {
                return Err(failure.error);
            };
            let delay = self.delay_for(&failure, delay);
            tracing::warn!(
                endpoint = endpoint.as_str(),
                attempt = attempts,
                error = %failure.error,
                delay_ms = delay.as_millis() as u64,
                "retrying token create"
            );
            self.inner.cfg.sleep.sleep(delay).await;
        }
    }

    /// Revokes every live token of `username` named `name`: tokens whose
    /// create answer was lost.
    async fn discard_lost_tokens(&self, username: &str, name: &str) -> Result<(), ApiError> {
        let tokens = self.list_tokens(username).await?;
        for t in tokens.iter().filter(|t| t.name.as_deref() == Some(name)) {
            tracing::warn!(
                endpoint = Endpoint::CreateToken.as_str(),
                token_id = %t.id,
                "a failed create did create the token; revoking it because its secret was lost"
            );
            self.revoke_token(username, &t.id).await?;
        }
        Ok(())
    }

    /// `DELETE /v1/users/{username}/tokens/{token_id}`. A 404 counts as done.
    ///
    /// # Errors
    /// Auth, transport and server errors after retries.
    pub async fn revoke_token(&self, username: &str, token_id: &str) -> Result<Removal, ApiError> {
        let r: Result<serde_json::Value, ApiError> = self
            .call(
                Endpoint::RevokeToken,
                Method::DELETE,
                &["v1", "users", username, "tokens", token_id],
                None::<&()>,
                Idempotence::Idempotent,
            )
            .await;
        removal(r)
    }

    /// `GET /v1/users/{username}/instances`.
    ///
    /// # Errors
    /// 404 when the user does not exist; auth, transport, server errors.
    pub async fn get_duckling_config(&self, username: &str) -> Result<DucklingConfig, ApiError> {
        self.call(
            Endpoint::GetDucklingConfig,
            Method::GET,
            &["v1", "users", username, "instances"],
            None::<&()>,
            Idempotence::Idempotent,
        )
        .await
    }

    /// Whether a user exists; the API has no "get user", so this probes the
    /// Duckling configuration, which answers an entity 404 for a missing user.
    ///
    /// # Errors
    /// Any failure other than an entity 404.
    pub async fn user_exists(&self, username: &str) -> Result<bool, ApiError> {
        match self.get_duckling_config(username).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_entity_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `PUT /v1/users/{username}/instances`; always sends the whole body.
    ///
    /// # Errors
    /// Validation (400, including plan limits), auth, transport, server.
    pub async fn set_duckling_config(
        &self,
        username: &str,
        config: &DucklingConfig,
    ) -> Result<DucklingConfig, ApiError> {
        #[derive(Serialize)]
        struct Body<'a> {
            config: &'a DucklingConfig,
        }
        self.call(
            Endpoint::SetDucklingConfig,
            Method::PUT,
            &["v1", "users", username, "instances"],
            Some(&Body { config }),
            Idempotence::Idempotent,
        )
        .await
    }

    /// `GET /v1/active_accounts`.
    ///
    /// # Errors
    /// Auth, transport and server errors after retries.
    pub async fn active_accounts(&self) -> Result<ActiveAccounts, ApiError> {
        self.call(
            Endpoint::ActiveAccounts,
            Method::GET,
            &["v1", "active_accounts"],
            None::<&()>,
            Idempotence::Idempotent,
        )
        .await
    }

    /// `POST /v1/dives/{dive_id}/embed-session`.
    ///
    /// # Errors
    /// 403 outside the Business plan; validation, auth, transport, server.
    pub async fn create_embed_session(
        &self,
        dive_id: &str,
        req: &EmbedSessionRequest,
    ) -> Result<EmbedSession, ApiError> {
        self.call(
            Endpoint::EmbedSession,
            Method::POST,
            &["v1", "dives", dive_id, "embed-session"],
            Some(req),
            Idempotence::NotIdempotent,
        )
        .await
    }

    /// Presents `token` (not the admin token) on a read-only admin route:
    /// 401 means rejected, 403 means a valid token without the Admin role.
    /// This is the built-in "the new token authenticates" check.
    ///
    /// # Errors
    /// Transport and server errors after retries, and any other status.
    pub async fn check_token(&self, token: &SecretString) -> Result<TokenCheck, ApiError> {
        let auth = bearer(token).map_err(|_| ApiError::Decode {
            endpoint: Endpoint::ActiveAccounts,
            reason: "token contains characters not allowed in an HTTP header".into(),
        })?;
        let r: Result<ActiveAccounts, ApiError> = self
            .call_with_auth(
                Endpoint::ActiveAccounts,
                Method::GET,
                &["v1", "active_accounts"],
                None::<&()>,
                Idempotence::Idempotent,
                &auth,
            )
            .await;
        match r {
            Ok(_) => Ok(TokenCheck::ValidAdmin),
            Err(ApiError::Status { status: 403, .. }) => Ok(TokenCheck::ValidNonAdmin),
            Err(ApiError::Status { status: 401, .. }) => Ok(TokenCheck::Rejected),
            Err(e) => Err(e),
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        segments: &[&str],
        body: Option<&B>,
        idem: Idempotence,
    ) -> Result<T, ApiError> {
        self.call_with_auth(
            endpoint,
            method,
            segments,
            body,
            idem,
            &self.inner.admin_auth,
        )
        .await
    }

    /// Runs attempts until success, a permanent error, or the retry budget
    /// is spent.
    async fn call_with_auth<B: Serialize, T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        segments: &[&str],
        body: Option<&B>,
        idem: Idempotence,
        auth: &HeaderValue,
    ) -> Result<T, ApiError> {
        let mut backoff = self.backoff();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let failure = match self
                .attempt(endpoint, method.clone(), segments, body, auth)
                .await
            {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            if !should_retry(&failure.error, idem) {
                return Err(failure.error);
            }
            let Some(delay) = backoff.next() else {
                return Err(failure.error);
            };
            let delay = self.delay_for(&failure, delay);
            tracing::warn!(
                endpoint = endpoint.as_str(),
                attempt,
                error = %failure.error,
                delay_ms = delay.as_millis() as u64,
                "retrying MotherDuck request"
            );
            self.inner.cfg.sleep.sleep(delay).await;
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        let cfg = &self.inner.cfg;
        ExponentialBuilder::default()
            .with_min_delay(cfg.backoff_min)
            .with_max_delay(cfg.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(cfg.max_retries as usize)
            .build()
    }

    /// `Retry-After` (capped) wins over the computed backoff.
    fn delay_for(&self, failure: &Failure, backoff: Duration) -> Duration {
        match failure.retry_after {
            Some(d) => d.min(self.inner.cfg.retry_after_cap),
            None => backoff,
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// One request, bounded by the request timeout from send to last byte.
    async fn attempt<B: Serialize, T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: Method,
        segments: &[&str],
        body: Option<&B>,
        auth: &HeaderValue,
    ) -> Result<T, Failure> {
        self.inner.limiter.acquire().await;
        let url = self.url(segments);
        let mut req = self
            .inner
            .http
            .request(method, url.clone())
            .header(AUTHORIZATION, auth.clone());
        if let Some(b) = body {
            req = req.json(b);
        }
        let timeout = self.inner.cfg.request_timeout;
        let exchange = async {
            let resp = req.send().await.map_err(reqwest::Error::without_url)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.map_err(reqwest::Error::without_url)?;
            Ok::<_, reqwest::Error>((status, headers, bytes))
        };
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(timeout, exchange).await;
        if let Some(m) = &self.inner.cfg.metrics {
            let class = match &outcome {
                Ok(Ok((status, _, _))) => match status.as_u16() {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                },
                _ => "error",
            };
            m.api_requests_total
                .with_label_values(&[endpoint.as_str(), class])
                .inc();
            m.api_request_duration_seconds
                .with_label_values(&[endpoint.as_str()])
                .observe(started.elapsed().as_secs_f64());
            // An answer is the server up, unless it is an error of its own
            // or a refusal of the admin token. (A 403 is an answer: the
            // admin check expects one for a token without the Admin role,
            // and a 429 is the rate limiter's business.)
            let failure = match &outcome {
                Err(_) => Some("timeout"),
                Ok(Err(_)) => Some("transport"),
                Ok(Ok((status, _, _))) => match status.as_u16() {
                    401 => Some("unauthorized"),
                    500..=599 => Some("server_error"),
                    _ => None,
                },
            };
            m.dependency_call("motherduck", endpoint.as_str(), started.elapsed(), failure);
        }
        let (status, headers, bytes) = match outcome {
            Err(_) => {
                return Err(Failure {
                    error: ApiError::Timeout {
                        endpoint,
                        after: timeout,
                    },
                    retry_after: None,
                });
            }
            Ok(Err(e)) => {
                return Err(Failure {
                    error: transport_error(endpoint, &e),
                    retry_after: None,
                });
            }
            Ok(Ok(r)) => r,
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.inner.limiter.throttled();
        } else if status.is_success() {
            self.inner.limiter.answered();
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| Failure {
                error: ApiError::Decode {
                    endpoint,
                    reason: describe_json_error(&e),
                },
                retry_after: None,
            });
        }
        Err(Failure {
            error: status_error(endpoint, status, &url, &bytes),
            retry_after: retry_after(&headers, SystemTime::now()),
        })
    }
}

fn bearer(token: &SecretString) -> Result<HeaderValue, ClientBuildError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
        .map_err(|_| ClientBuildError::InvalidToken)?;
    v.set_sensitive(true);
    Ok(v)
}

fn removal(r: Result<serde_json::Value, ApiError>) -> Result<Removal, ApiError> {
    match r {
        Ok(_) => Ok(Removal::Removed),
        Err(e) if e.is_entity_not_found() => Ok(Removal::AlreadyGone),
        Err(e) => Err(e),
    }
}

fn should_retry(e: &ApiError, idem: Idempotence) -> bool {
    match e {
        ApiError::Status { status: 429, .. } => true,
        ApiError::Transport { not_sent: true, .. } => true,
        ApiError::Status {
            status: 502..=504, ..
        }
        | ApiError::Timeout { .. }
        | ApiError::Transport { .. } => idem == Idempotence::Idempotent,
        _ => false,
    }
}

/// A create failure after which the token may or may not exist.
fn is_ambiguous(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Status {
            status: 500..=599,
            ..
        } | ApiError::Timeout { .. }
            | ApiError::Transport { .. }
    )
}

fn transport_error(endpoint: Endpoint, e: &reqwest::Error) -> ApiError {
    // The caller strips the URL (`without_url`): it holds usernames and
    // token ids, never secrets, but the endpoint already says enough.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ApiError::Transport {
        endpoint,
        message,
        not_sent: e.is_connect(),
    }
}

fn status_error(endpoint: Endpoint, status: StatusCode, url: &Url, body: &[u8]) -> ApiError {
    let parsed: Option<ErrorBody> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .filter(|v| v.is_object())
        .and_then(|v| serde_json::from_value(v).ok());
    match parsed {
        None if status == StatusCode::NOT_FOUND => ApiError::RouteNotFound {
            endpoint,
            url: url.to_string(),
        },
        None => ApiError::Status {
            endpoint,
            status: status.as_u16(),
            code: None,
            message: format!(
                "{} (non-JSON error body)",
                status.canonical_reason().unwrap_or("error")
            ),
            issues: Vec::new(),
        },
        Some(b) => ApiError::Status {
            endpoint,
            status: status.as_u16(),
            code: b.code,
            message: b
                .message
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
            issues: b.issues,
        },
    }
}

/// Describes a JSON error by category and position only: serde's own
/// message can quote values from the body, and a create response holds
/// the token secret.
fn describe_json_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "JSON of an unexpected shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Parses `Retry-After` as delta-seconds or an HTTP date relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(raw).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        for ok in [
            "https://api.motherduck.com",
            "http://127.0.0.1:8080",
            "http://127.5.0.1:8080/prefix/",
            "http://[::1]:8080",
            "http://localhost:8080",
        ] {
            assert!(validate_base_url(ok).is_ok(), "{ok}");
        }
        let e = validate_base_url("http://api.motherduck.com").unwrap_err();
        assert!(e.to_string().contains("must use https"), "{e}");
        let e = validate_base_url("http://10.0.0.1").unwrap_err();
        assert!(matches!(e, ClientBuildError::Insecure { .. }));
        let e = validate_base_url("https://u:hunter2@api.motherduck.com").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        for bad in ["ftp://x", "not a url", "https://api.motherduck.com/?a=b"] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(42)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(42));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&earlier).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn json_errors_never_quote_the_body() {
        let e =
            serde_json::from_str::<CreatedToken>(r#"{"token": 5, "id": "eyJsecret"}"#).unwrap_err();
        let d = describe_json_error(&e);
        assert!(!d.contains("eyJ"), "{d}");
        assert!(d.contains("line 1"), "{d}");
    }

    #[test]
    fn client_debug_redacts_admin_token() {
        let c = Client::new(ClientConfig::new(
            "http://127.0.0.1:1",
            SecretString::from("eyJadmin".to_owned()),
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains("eyJadmin"));
    }
}
