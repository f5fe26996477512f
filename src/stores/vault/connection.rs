//! A connection to one Vault server: the HTTP clients, one request with a
//! usable token, and how failures are worded.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::warn;
use vaultrs::client::{VaultClient, VaultClientSettings, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

use crate::secret::ExposeSecret;
use crate::stores::StoreErrorKind;

use super::settings::{
    VaultAuth, VaultAuthError, VaultSettings, VaultSetupError, validate_address,
};
use super::tls::TlsFiles;
use super::token::TokenLease;

/// A connection to one Vault server, shared by all destinations on it.
/// Cheap to clone.
#[derive(Clone)]
pub struct VaultConnection {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    /// The address, for messages (never carries credentials).
    pub(super) address: String,
    namespace: Option<String>,
    pub(super) auth: VaultAuth,
    /// Everything but the token, to build a client after a login; rebuilt
    /// when the TLS files change.
    pub(super) template: std::sync::RwLock<VaultClientSettings>,
    /// The client with the current token. A login swaps in a new client;
    /// requests under way finish with the one they took.
    pub(super) client: std::sync::RwLock<Arc<Authed>>,
    /// A client that never carries a token, for logins.
    pub(super) login: std::sync::RwLock<Arc<Authed>>,
    /// The CA, client certificate and key files, watched so that renewed
    /// certificates (cert-manager, Vault Agent, a cron job) are used
    /// without a restart.
    pub(super) tls: TlsFiles,
    pub(super) token: Mutex<TokenState>,
    /// One lookup, renewal or login at a time.
    pub(super) refresh: tokio::sync::Mutex<()>,
    /// Counts logins, so concurrent 403s cause one login, not many.
    pub(super) generation: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct TokenState {
    pub(super) lease: Option<TokenLease>,
    pub(super) accessor: Option<String>,
}

/// A `vaultrs` client whose copies of the token are wiped on drop.
pub(super) struct Authed(pub(super) VaultClient);

impl Drop for Authed {
    fn drop(&mut self) {
        self.0.settings.token.zeroize();
        self.0.middle.token.zeroize();
    }
}

/// A client for `template` carrying `token`.
pub(super) fn build_client(template: &VaultClientSettings, token: &str) -> Result<Authed, String> {
    let mut s = template.clone();
    s.token = token.to_owned();
    VaultClient::new(s).map(Authed).map_err(|e| error_chain(&e))
}

impl fmt::Debug for VaultConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultConnection")
            .field("address", &self.inner.address)
            .field("namespace", &self.inner.namespace)
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}

/// A failed Vault request, before it is given a destination and an
/// operation.
#[derive(Debug)]
pub(super) enum Failure {
    /// Vault answered with an error status and its error list.
    Status { code: u16, errors: Vec<String> },
    /// No answer: connection refused, timeout, TLS failure.
    Transport(String),
    /// An error status whose body had no error list, so `vaultrs` does not
    /// say which status. Vault answers so for a version deleted between
    /// reading the metadata and reading the data.
    Unexplained,
    /// An answer that is not what the API promises.
    BadResponse(String),
    /// Logging in or renewing failed.
    Auth(VaultAuthError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::APIError { code, errors } => Failure::Status { code, errors },
            ClientError::RestClientError { source } => {
                // `rustify` cannot be named from here; its messages are
                // fixed strings. Its source chain carries the cause (never
                // the response body, which may hold a secret).
                let top = source.to_string();
                if top.starts_with("Error parsing") {
                    Failure::BadResponse(top.to_lowercase())
                } else if top == "Server returned error" {
                    Failure::Unexplained
                } else {
                    Failure::Transport(error_chain(&source))
                }
            }
            other => Failure::BadResponse(other.to_string().to_lowercase()),
        }
    }
}

/// An error and its causes, `: `-separated, without repeats.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// Vault's error strings, on one line ("1 error occurred:\n\t* x" → "x").
pub(super) fn clean_errors(errors: &[String]) -> String {
    let parts: Vec<&str> = errors
        .iter()
        .flat_map(|e| e.lines())
        .map(|l| l.trim().trim_start_matches("* ").trim())
        .filter(|l| !l.is_empty())
        .filter(|l| !(l.ends_with("occurred:") && l.contains("error")))
        .collect();
    if parts.is_empty() {
        "no details".to_owned()
    } else {
        parts.join("; ")
    }
}

/// A request that got no answer, worded for an operator: a TLS handshake
/// refused by either side (an untrusted server certificate, a missing or
/// rejected client certificate) points at the TLS settings, since Vault
/// was reached; anything else is "cannot reach Vault{at}".
pub(super) fn unreachable(at: &str, m: &str) -> String {
    // rustls's wording: `Error::AlertReceived`, `Error::InvalidCertificate`.
    if m.contains("received fatal alert") || m.contains("invalid peer certificate") {
        format!(
            "TLS handshake with Vault{at} failed (check `ca_file`, `client_cert` and `client_key`): {m}"
        )
    } else {
        format!("cannot reach Vault{at}: {m}")
    }
}

pub(super) fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

pub(super) fn is_transient_status(code: u16) -> bool {
    // 412: a performance standby has not caught up; 429: rate limited;
    // 472/473: request forwarding of a standby; 5xx: server trouble,
    // including a sealed server (503).
    matches!(code, 412 | 429 | 472 | 473) || code >= 500
}

impl VaultConnection {
    /// Builds the HTTP clients; no network traffic until first use.
    ///
    /// # Errors
    /// An invalid or insecure address, unreadable TLS files, an incomplete
    /// client identity.
    pub fn new(settings: VaultSettings) -> Result<VaultConnection, VaultSetupError> {
        let address = validate_address(&settings.address)?;
        let identity_paths = match (&settings.client_cert, &settings.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => return Err(VaultSetupError::IncompleteIdentity),
        };
        let tls = TlsFiles {
            ca_file: settings.ca_file.clone(),
            identity: identity_paths,
            seen: Mutex::new(Vec::new()),
        };
        let seen = tls.stamps();
        let (ca_certs, identity) = tls.read()?;
        *tls.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        let mut b = VaultClientSettingsBuilder::default();
        // Every field is set explicitly: the builder's defaults read
        // VAULT_* environment variables, which must not change where the
        // daemon writes, with which token, or whether it checks
        // certificates.
        b.address(address.as_str())
            .token("")
            .ca_certs(ca_certs)
            .identity(identity)
            .verify(true)
            .timeout(Some(settings.request_timeout))
            .namespace(settings.namespace.clone());
        let template = b
            .build()
            .map_err(|e| VaultSetupError::Client(e.to_string()))?;
        let initial = match &settings.auth {
            VaultAuth::Token(t) => Zeroizing::new(t.expose_secret().to_owned()),
            _ => Zeroizing::new(String::new()),
        };
        let client = build_client(&template, &initial).map_err(VaultSetupError::Client)?;
        let login = build_client(&template, "").map_err(VaultSetupError::Client)?;
        Ok(VaultConnection {
            inner: Arc::new(Inner {
                address: address.as_str().trim_end_matches('/').to_owned(),
                namespace: settings.namespace,
                auth: settings.auth,
                template: std::sync::RwLock::new(template),
                client: std::sync::RwLock::new(Arc::new(client)),
                login: std::sync::RwLock::new(Arc::new(login)),
                tls,
                token: Mutex::new(TokenState::default()),
                refresh: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// The client that logs in (it carries no token).
    pub(super) fn login_client(&self) -> Arc<Authed> {
        self.inner
            .login
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The client with the current token.
    pub(super) fn client(&self) -> Arc<Authed> {
        self.inner
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server address, for messages.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The namespace requests are sent to, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.inner.namespace.as_deref()
    }

    pub(super) fn auth_error(&self, kind: StoreErrorKind, message: String) -> VaultAuthError {
        VaultAuthError {
            address: self.inner.address.clone(),
            kind,
            message: self.redact(message),
        }
    }

    /// Removes the configured credentials from a message taken from a
    /// server answer, in case a server ever echoes one.
    pub(super) fn redact(&self, mut message: String) -> String {
        let secrets: Vec<&str> = match &self.inner.auth {
            VaultAuth::Token(t) => vec![t.expose_secret()],
            VaultAuth::AppRole {
                role_id, secret_id, ..
            } => vec![role_id.expose_secret(), secret_id.expose_secret()],
            VaultAuth::Kubernetes { .. } => vec![],
        };
        for s in secrets {
            if s.len() >= 4 && message.contains(s) {
                message = message.replace(s, "<redacted>");
            }
        }
        message
    }

    pub(super) fn failure_as_auth(&self, action: &str, f: Failure) -> VaultAuthError {
        match f {
            Failure::Status { code, errors } => self.auth_error(
                if is_transient_status(code) {
                    StoreErrorKind::Transient
                } else {
                    StoreErrorKind::Permanent
                },
                format!(
                    "{action} failed: Vault answered HTTP {code}: {}",
                    clean_errors(&errors)
                ),
            ),
            Failure::Transport(m) => self.auth_error(
                StoreErrorKind::Transient,
                format!("{action} failed: {}", unreachable("", &m)),
            ),
            Failure::Unexplained => self.auth_error(
                StoreErrorKind::Transient,
                format!("{action} failed: Vault answered an error status without details"),
            ),
            Failure::BadResponse(m) => self.auth_error(
                StoreErrorKind::Corrupt,
                format!("{action} failed: unexpected answer from Vault: {m}"),
            ),
            Failure::Auth(e) => e,
        }
    }

    /// Runs one Vault request with a usable token; after a 403, logs in
    /// again (when the method can) and retries once.
    ///
    /// The request is a closure over an owned client handle (not a
    /// reference), so the futures stay `Send` for `tokio::spawn`.
    pub(super) async fn call<T, F, Fut>(&self, f: F) -> Result<T, Failure>
    where
        F: Fn(Arc<Authed>) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.ensure_token(Instant::now())
            .await
            .map_err(Failure::Auth)?;
        let generation = self.inner.generation.load(Ordering::SeqCst);
        let first = f(self.client()).await;
        match first {
            Err(Failure::Status { code: 403, .. }) if self.inner.auth.can_login() => {
                warn!(vault = %self.inner.address, "Vault denied a request (HTTP 403); logging in again and retrying once");
                self.relogin(generation).await.map_err(Failure::Auth)?;
                f(self.client()).await
            }
            other => other,
        }
    }

    /// A request `vaultrs` has no function for (`sys/capabilities-self`,
    /// `sys/internal/ui/mounts`), through the same HTTP client, TLS
    /// settings, token and namespace.
    pub(super) async fn raw(
        &self,
        method: reqwest::Method,
        api_path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let (method, body) = (&method, &body);
        self.call(|c: Arc<Authed>| async move {
            let c = &c.0;
            let url = format!(
                "{}/v1/{api_path}",
                c.settings.address.as_str().trim_end_matches('/')
            );
            let mut req = c.http.http.request(method.clone(), url);
            if !c.middle.token.is_empty() {
                let mut h = reqwest::header::HeaderValue::from_str(&c.middle.token)
                    .map_err(|_| Failure::BadResponse("the token is not a valid header".into()))?;
                h.set_sensitive(true);
                req = req.header("X-Vault-Token", h);
            }
            if let Some(ns) = &c.settings.namespace {
                req = req.header("X-Vault-Namespace", ns);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| Failure::Transport(error_chain(&e)))?;
            let code = resp.status().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| Failure::Transport(error_chain(&e)))?;
            if !(200..300).contains(&code) {
                #[derive(Deserialize)]
                struct Errors {
                    #[serde(default)]
                    errors: Vec<String>,
                }
                let errors = serde_json::from_slice::<Errors>(&bytes)
                    .map(|e| e.errors)
                    .unwrap_or_default();
                return Err(Failure::Status { code, errors });
            }
            serde_json::from_slice(&bytes)
                .map_err(|_| Failure::BadResponse("the answer is not JSON".into()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_error_lists_read_as_one_line() {
        let errs = vec!["1 error occurred:\n\t* permission denied\n\n".to_owned()];
        assert_eq!(clean_errors(&errs), "permission denied");
        let errs = vec![
            "a".to_owned(),
            "2 errors occurred:\n\t* b\n\t* c".to_owned(),
        ];
        assert_eq!(clean_errors(&errs), "a; b; c");
        assert_eq!(clean_errors(&[]), "no details");
    }
}
