//! The Vault / OpenBao KV store, through `vaultrs`.
//!
//! A destination is a KV mount and a path in it. Consumers read the token
//! the usual way (`vault kv get -field=token <mount>/<path>`); everything
//! else the rotation needs lives beside it, as laid out below.
//!
//! # KV v2 (the default)
//!
//! For mount `M` and path `P`:
//! - `M/data/P`, latest version: the **current** record. Its data has the
//!   same fields as a file-store record: `token`, `token_id`, `token_name`,
//!   `service_account`, `token_type`, `created_at`, `expires_at`,
//!   `rotation_id`, and `ack_secret` when the policy takes
//!   acknowledgements. Nothing else: the journal is not in the data.
//! - `M/metadata/P`, `custom_metadata`: the **journal** of the current
//!   record, one string per key (Vault allows at most 512 bytes per value):
//!   `rotation_id`, `rotation_state`, `rotation_previous_token_id`,
//!   `rotation_new_token_id`, `rotation_started_at`, `rotation_updated_at`,
//!   `rotation_revoke_after`, `rotation_last_error` (cut to 512 bytes),
//!   `rotation_failures`, `rotation_retry_at`, plus
//!   `rotation_previous_version` (the KV version holding the **previous**
//!   record) and `rotation_record_version` (the KV version this journal
//!   describes). Keys that are not ours (no `rotation_` prefix) are kept
//!   on every write. Secrets never go into metadata.
//! - `M/data/P` at version `rotation_previous_version`: the **previous**
//!   record. Rollback writes that version's data back as a new version.
//! - `M/data/P.pending`: the **staged** record, a sibling secret consumers
//!   do not read; its journal is in its own `custom_metadata`. Promotion
//!   copies it to `P` and then deletes it with all its versions.
//! - `M/data/P.lock`: the coordination lease (`holder`, `acquired_at`,
//!   `expires_at`, `ttl_seconds`); see [`VaultLease`].
//!
//! Every data write carries check-and-set: `cas` is the version just read,
//! `cas=0` creates. In addition, `promote`, `set_journal`, `rollback` and
//! `finish` refuse with a `Conflict` when `P` changed since the caller's
//! last [`VaultDestination::load`], so a decision made on stale records is
//! never applied. Metadata writes have no check-and-set in Vault; they are
//! made safe by `rotation_record_version`: a journal whose version is not
//! the latest one is ignored (read as "no journal").
//!
//! ## Crash windows
//! A record and its journal are two requests. For `P` the data goes first
//! (what consumers see is the commit point): a crash in between leaves the
//! new data without a journal, which reads as "promoted, not verified"
//! while `P.pending` still holds the staged record (promotion deletes it
//! last), and the previous record is taken to be the version before. For
//! `P.pending` the journal goes first, tagged with the version about to be
//! written: a crash in between leaves nothing staged, and the new token,
//! referenced by no record, is revoked by the orphan sweep. A crash inside
//! a rollback, after the old record is current again but before its
//! journal, loses the failure count and retry time of that rotation.
//!
//! ## Limits
//! The secret's `max_versions` must keep at least two versions (Vault's
//! default keeps ten), or the previous record is pruned before a rollback
//! can restore it. Finishing a rotation leaves the revoked token in the KV
//! history; it is worthless once revoked.
//!
//! # KV v1
//!
//! KV v1 has neither versions nor check-and-set. The layout mirrors the
//! file store: `M/P` is the current record with the journal in an extra
//! `rotation` field of the data (consumers see it; `-field=token` is
//! unaffected), `M/P.pending` the staged record, `M/P.previous` the
//! previous record. Without check-and-set there is no safe lease: on a
//! KV v1 destination [`VaultDestination::try_lock`] fails with a permanent
//! error, and a policy with several replicas must take its lock from
//! another destination.
//!
//! # Authentication
//! A static token, AppRole or Kubernetes. The token is looked up (or
//! obtained by logging in) on first use, renewed once two thirds of its
//! TTL have passed, replaced by a new login when it cannot be renewed, and
//! after any `403` the request is retried once after a fresh login. The
//! decision is [`token_decision`], a pure function of the token's lease and
//! `now`; [`VaultConnection::ensure_token`] carries it out and
//! [`VaultConnection::spawn_token_renewal`] keeps an idle daemon's token
//! alive.
//!
//! # What stays outside our control
//! `vaultrs` and `reqwest` keep their own copies of request and response
//! bodies (and of the Vault token), which they do not zeroize. The copies
//! this module makes are zeroized.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vaultrs::api::kv2::requests::{
    ReadSecretRequest, SetSecretMetadataRequest, SetSecretRequestOptions,
};
use vaultrs::client::{VaultClient, VaultClientSettings, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

use super::{
    DestinationView, Journal, JournalState, NewRecord, RecordView, Slot, StoreError,
    StoreErrorKind, StoreOp, TokenMeta,
};
use crate::motherduck::TokenType;
use crate::secret::{ExposeSecret, SecretString};

/// How long a coordination lease lasts unless renewed.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(600);
/// The shortest lease accepted; shorter values are raised to this.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
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

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/// How the daemon authenticates to Vault. The config layer has already
/// resolved file and environment references into the secrets here.
#[derive(Clone)]
pub enum VaultAuth {
    /// A static token (from a file, an environment variable or a systemd
    /// credential). Renewed when renewable; it cannot be replaced.
    Token(SecretString),
    /// AppRole login at `auth/<mount>/login`.
    AppRole {
        mount: String,
        role_id: SecretString,
        secret_id: SecretString,
    },
    /// Kubernetes login at `auth/<mount>/login` with the service-account
    /// JWT read from `jwt_path` at each login (projected tokens rotate).
    Kubernetes {
        mount: String,
        role: String,
        jwt_path: PathBuf,
    },
}

impl VaultAuth {
    /// The method name, for logs and status.
    pub fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token(_) => "token",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
        }
    }

    /// Whether a new token can be obtained by logging in.
    pub fn can_login(&self) -> bool {
        !matches!(self, VaultAuth::Token(_))
    }
}

impl fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultAuth::Token(_) => f.write_str("Token(<redacted>)"),
            VaultAuth::AppRole { mount, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", &"<redacted>")
                .field("secret_id", &"<redacted>")
                .finish(),
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => f
                .debug_struct("Kubernetes")
                .field("mount", mount)
                .field("role", role)
                .field("jwt_path", jwt_path)
                .finish(),
        }
    }
}

/// Where Vault is and how to talk to it.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    /// `https://vault.example:8200`; plain `http` only for a loopback host.
    pub address: String,
    /// Sent as `X-Vault-Namespace` (Vault Enterprise, OpenBao namespaces).
    pub namespace: Option<String>,
    /// PEM bundle of CAs to trust besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    pub auth: VaultAuth,
    /// Per-request timeout, so a wedged server cannot stall a rotation.
    pub request_timeout: Duration,
}

impl VaultSettings {
    /// Settings with no namespace, no extra TLS material and a 30 s
    /// request timeout.
    pub fn new(address: impl Into<String>, auth: VaultAuth) -> VaultSettings {
        VaultSettings {
            address: address.into(),
            namespace: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            auth,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a connection or destination could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VaultSetupError {
    #[error("invalid Vault address `{address}`: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error(
        "Vault address `{address}` uses plain http; use https (http is allowed only for a loopback address)"
    )]
    Insecure { address: String },
    #[error("failed to read {what} `{path}`: {source}")]
    ReadFile {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} `{path}` is not usable: {reason}")]
    BadPem {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("a client certificate needs both `client_cert` and `client_key`")]
    IncompleteIdentity,
    #[error("failed to set up the Vault client: {0}")]
    Client(String),
    #[error("invalid Vault destination: {0}")]
    Destination(String),
}

/// An authentication failure: login, renewal or lookup.
#[derive(Debug, Clone, thiserror::Error)]
#[error("vault `{address}`: {message}")]
pub struct VaultAuthError {
    pub address: String,
    pub kind: StoreErrorKind,
    pub message: String,
}

// ---------------------------------------------------------------------------
// Token lifetime: the pure decision
// ---------------------------------------------------------------------------

/// What is known of the token in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLease {
    /// When `ttl` was learned (login, renewal or lookup).
    pub since: Instant,
    /// Remaining lifetime at `since`; `None` for a token that never
    /// expires (or whose TTL cannot be seen).
    pub ttl: Option<Duration>,
    pub renewable: bool,
}

/// What [`VaultConnection::ensure_token`] must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDecision {
    /// The token is fine.
    Keep,
    /// A static token not looked up yet: learn its TTL.
    Lookup,
    /// Past two thirds of its TTL and renewable: `renew-self`.
    Renew,
    /// No token yet, or one that cannot be renewed: log in.
    Login,
}

/// What [`VaultConnection::ensure_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAction {
    Kept,
    LookedUp,
    Renewed,
    LoggedIn,
}

/// Decides whether the token needs attention at `now`: renew once two
/// thirds of its TTL have passed, log in again when it cannot be renewed
/// (and the method can log in). A static token that cannot be renewed is
/// kept until Vault refuses it.
pub fn token_decision(lease: Option<&TokenLease>, now: Instant, can_login: bool) -> TokenDecision {
    let Some(lease) = lease else {
        return if can_login {
            TokenDecision::Login
        } else {
            TokenDecision::Lookup
        };
    };
    let Some(ttl) = lease.ttl else {
        return TokenDecision::Keep;
    };
    let age = now.saturating_duration_since(lease.since);
    if age < ttl * 2 / 3 {
        TokenDecision::Keep
    } else if lease.renewable {
        TokenDecision::Renew
    } else if can_login {
        TokenDecision::Login
    } else {
        TokenDecision::Keep
    }
}

/// Whether a renewal that granted `granted` (after `before` was granted
/// last time) shows the token nearing its maximum TTL, so a fresh login
/// is better than renewing ever more often.
fn renewal_shrank(before: Option<Duration>, granted: Option<Duration>) -> bool {
    matches!((before, granted), (Some(b), Some(g)) if g < b / 2)
}

/// Public view of the token in use, for `status`; never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStatus {
    pub method: &'static str,
    /// The token's accessor (not a secret: it cannot authenticate).
    pub accessor: Option<String>,
    pub lease: Option<TokenLease>,
}

// ---------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------

/// A connection to one Vault server, shared by all destinations on it.
/// Cheap to clone.
#[derive(Clone)]
pub struct VaultConnection {
    inner: Arc<Inner>,
}

struct Inner {
    /// The address, for messages (never carries credentials).
    address: String,
    namespace: Option<String>,
    auth: VaultAuth,
    /// Everything but the token, to build a client after a login; rebuilt
    /// when the TLS files change.
    template: std::sync::RwLock<VaultClientSettings>,
    /// The client with the current token. A login swaps in a new client;
    /// requests under way finish with the one they took.
    client: std::sync::RwLock<Arc<Authed>>,
    /// A client that never carries a token, for logins.
    login: std::sync::RwLock<Arc<Authed>>,
    /// The CA, client certificate and key files, watched so that renewed
    /// certificates (cert-manager, Vault Agent, a cron job) are used
    /// without a restart.
    tls: TlsFiles,
    token: Mutex<TokenState>,
    /// One lookup, renewal or login at a time.
    refresh: tokio::sync::Mutex<()>,
    /// Counts logins, so concurrent 403s cause one login, not many.
    generation: AtomicU64,
}

#[derive(Debug, Default)]
struct TokenState {
    lease: Option<TokenLease>,
    accessor: Option<String>,
}

/// A `vaultrs` client whose copies of the token are wiped on drop.
struct Authed(VaultClient);

impl Drop for Authed {
    fn drop(&mut self) {
        self.0.settings.token.zeroize();
        self.0.middle.token.zeroize();
    }
}

/// The TLS files of a connection and what they looked like when last read.
struct TlsFiles {
    ca_file: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    seen: Mutex<Vec<Option<FileStamp>>>,
}

/// Enough of a file's metadata to notice it was replaced or rewritten
/// (through a symlink, as Kubernetes projects secrets, too).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.ca_file
            .iter()
            .chain(self.identity.iter().flat_map(|(c, k)| [c, k]))
    }

    fn stamps(&self) -> Vec<Option<FileStamp>> {
        use std::os::unix::fs::MetadataExt;
        self.paths()
            .map(|p| {
                std::fs::metadata(p).ok().map(|m| FileStamp {
                    dev: m.dev(),
                    ino: m.ino(),
                    len: m.len(),
                    modified: m.modified().ok(),
                })
            })
            .collect()
    }
}

impl TlsFiles {
    /// The CA paths and the client identity, read and checked.
    fn read(&self) -> Result<(Vec<String>, Option<reqwest::Identity>), VaultSetupError> {
        read_tls(self.ca_file.as_deref(), self.identity.as_ref())
    }
}

fn read_tls(
    ca_file: Option<&Path>,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<(Vec<String>, Option<reqwest::Identity>), VaultSetupError> {
    let ca_certs = match ca_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| VaultSetupError::ReadFile {
                what: "CA file",
                path: path.display().to_string(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&bytes).map_err(|e| {
                VaultSetupError::BadPem {
                    what: "CA file",
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
            if certs.is_empty() {
                return Err(VaultSetupError::BadPem {
                    what: "CA file",
                    path: path.display().to_string(),
                    reason: "no PEM certificate in it".to_owned(),
                });
            }
            vec![path.display().to_string()]
        }
        None => Vec::new(),
    };
    let identity = match identity {
        Some((cert, key)) => Some(read_identity(cert, key)?),
        None => None,
    };
    Ok((ca_certs, identity))
}

/// A client for `template` carrying `token`.
fn build_client(template: &VaultClientSettings, token: &str) -> Result<Authed, String> {
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
enum Failure {
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
fn error_chain(e: &dyn std::error::Error) -> String {
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
fn clean_errors(errors: &[String]) -> String {
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
fn unreachable(at: &str, m: &str) -> String {
    // rustls's wording: `Error::AlertReceived`, `Error::InvalidCertificate`.
    if m.contains("received fatal alert") || m.contains("invalid peer certificate") {
        format!(
            "TLS handshake with Vault{at} failed (check `ca_file`, `client_cert` and `client_key`): {m}"
        )
    } else {
        format!("cannot reach Vault{at}: {m}")
    }
}

fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

fn is_transient_status(code: u16) -> bool {
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
    fn login_client(&self) -> Arc<Authed> {
        self.inner
            .login
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuilds the clients when a TLS file changed since it was read: a
    /// renewed client certificate or CA bundle is used from the next
    /// request on. Unreadable or invalid new files are logged and the
    /// clients in use are kept (the files may be mid-update).
    fn reload_tls_if_changed(&self) {
        let tls = &self.inner.tls;
        if tls.ca_file.is_none() && tls.identity.is_none() {
            return;
        }
        let now = tls.stamps();
        {
            let mut seen = tls.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return;
            }
            *seen = now;
        }
        let (ca_certs, identity) = match tls.read() {
            Ok(t) => t,
            Err(e) => {
                warn!(vault = %self.inner.address, error = %e, "the TLS files changed but cannot be used; keeping the previous ones");
                return;
            }
        };
        let mut template = self
            .inner
            .template
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        template.ca_certs = ca_certs;
        template.identity = identity;
        let token = Zeroizing::new(self.client().0.settings.token.clone());
        let built =
            build_client(&template, &token).and_then(|c| Ok((c, build_client(&template, "")?)));
        match built {
            Ok((client, login)) => {
                *self
                    .inner
                    .template
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = template;
                *self.inner.client.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(client);
                *self.inner.login.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(login);
                info!(vault = %self.inner.address, "the TLS files changed; using the new ones");
            }
            Err(e) => {
                warn!(vault = %self.inner.address, error = %e, "the TLS files changed but no client can be built with them; keeping the previous ones");
            }
        }
    }

    /// The client with the current token.
    fn client(&self) -> Arc<Authed> {
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

    /// What is known of the token in use.
    pub fn token_status(&self) -> TokenStatus {
        let st = self.state();
        TokenStatus {
            method: self.inner.auth.method(),
            accessor: st.accessor.clone(),
            lease: st.lease,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.inner.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease(&self) -> Option<TokenLease> {
        self.state().lease
    }

    fn auth_error(&self, kind: StoreErrorKind, message: String) -> VaultAuthError {
        VaultAuthError {
            address: self.inner.address.clone(),
            kind,
            message: self.redact(message),
        }
    }

    /// Removes the configured credentials from a message taken from a
    /// server answer, in case a server ever echoes one.
    fn redact(&self, mut message: String) -> String {
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

    /// Makes sure the token is usable at `now`: looks a static token up on
    /// first use, renews past two thirds of its TTL, logs in when there is
    /// no token or it cannot be renewed (see [`token_decision`]). Cheap
    /// when nothing is due. `now` is a parameter so tests can step time.
    ///
    /// # Errors
    /// A login or renewal Vault refused (permanent), or could not be asked
    /// (transient).
    pub async fn ensure_token(&self, now: Instant) -> Result<TokenAction, VaultAuthError> {
        self.reload_tls_if_changed();
        let can_login = self.inner.auth.can_login();
        if token_decision(self.lease().as_ref(), now, can_login) == TokenDecision::Keep {
            return Ok(TokenAction::Kept);
        }
        let _one_at_a_time = self.inner.refresh.lock().await;
        // Decide again: another task may have refreshed while this waited.
        let lease = self.lease();
        match (token_decision(lease.as_ref(), now, can_login), lease) {
            (TokenDecision::Keep, _) => Ok(TokenAction::Kept),
            (TokenDecision::Lookup, _) => self.lookup(now).await,
            (TokenDecision::Login, _) | (TokenDecision::Renew, None) => {
                self.login(now).await.map(|()| TokenAction::LoggedIn)
            }
            (TokenDecision::Renew, Some(lease)) => self.renew(now, lease).await,
        }
    }

    async fn lookup(&self, now: Instant) -> Result<TokenAction, VaultAuthError> {
        let r = {
            let c = self.client();
            vaultrs::token::lookup_self(&c.0).await
        };
        match r.map_err(Failure::from) {
            Ok(mut info) => {
                // The lookup echoes the token itself; wipe that copy.
                info.id.zeroize();
                let lease = TokenLease {
                    since: now,
                    ttl: secs(info.ttl),
                    renewable: info.renewable.unwrap_or(false),
                };
                debug!(vault = %self.inner.address, ttl_seconds = info.ttl, renewable = lease.renewable, "looked up the Vault token");
                let mut st = self.state();
                st.lease = Some(lease);
                st.accessor = Some(info.accessor);
                Ok(TokenAction::LookedUp)
            }
            Err(Failure::Status { code, errors }) if !is_transient_status(code) => {
                // Without `auth/token/lookup-self` (the `default` policy)
                // the TTL is unknown: use the token as it is. If it is bad,
                // every request says so with its path.
                warn!(vault = %self.inner.address, status = code, error = %self.redact(clean_errors(&errors)), "cannot look up the Vault token; it will not be renewed");
                let mut st = self.state();
                st.lease = Some(TokenLease {
                    since: now,
                    ttl: None,
                    renewable: false,
                });
                Ok(TokenAction::LookedUp)
            }
            Err(f) => Err(self.failure_as_auth("token lookup", f)),
        }
    }

    async fn renew(&self, now: Instant, before: TokenLease) -> Result<TokenAction, VaultAuthError> {
        let r = {
            let c = self.client();
            vaultrs::token::renew_self(&c.0, None).await
        };
        let can_login = self.inner.auth.can_login();
        match r.map_err(Failure::from) {
            Ok(mut auth) => {
                auth.client_token.zeroize();
                let granted = secs(auth.lease_duration);
                if can_login && renewal_shrank(before.ttl, granted) {
                    info!(vault = %self.inner.address, ttl_seconds = auth.lease_duration, "the Vault token is near its maximum TTL; logging in again");
                    return self.login(now).await.map(|()| TokenAction::LoggedIn);
                }
                debug!(vault = %self.inner.address, ttl_seconds = auth.lease_duration, "renewed the Vault token");
                self.state().lease = Some(TokenLease {
                    since: now,
                    ttl: granted,
                    renewable: auth.renewable,
                });
                Ok(TokenAction::Renewed)
            }
            Err(f @ (Failure::Transport(_) | Failure::BadResponse(_) | Failure::Unexplained)) => {
                Err(self.failure_as_auth("token renewal", f))
            }
            // Vault answered, and refused: OpenBao says `500 past the max
            // TTL, cannot renew` for a token at its maximum TTL. Whatever
            // the status, a fresh login is the way on when there is one.
            Err(Failure::Status { code, errors }) if is_transient_status(code) && can_login => {
                info!(vault = %self.inner.address, status = code, error = %self.redact(clean_errors(&errors)), "Vault refused to renew the token; logging in again");
                self.login(now).await.map(|()| TokenAction::LoggedIn)
            }
            Err(Failure::Status { code, errors }) if is_transient_status(code) => {
                Err(self.failure_as_auth("token renewal", Failure::Status { code, errors }))
            }
            Err(f) => {
                if can_login {
                    info!(vault = %self.inner.address, "renewing the Vault token failed; logging in again");
                    return self.login(now).await.map(|()| TokenAction::LoggedIn);
                }
                let e = self.failure_as_auth("token renewal", f);
                warn!(vault = %self.inner.address, error = %e.message, "cannot renew the static Vault token; it will expire");
                if let Some(l) = self.state().lease.as_mut() {
                    l.renewable = false;
                }
                Ok(TokenAction::Kept)
            }
        }
    }

    async fn login(&self, now: Instant) -> Result<(), VaultAuthError> {
        let method = self.inner.auth.method();
        let r = match &self.inner.auth {
            VaultAuth::Token(_) => {
                return Err(self.auth_error(
                    StoreErrorKind::Permanent,
                    "a static token cannot log in again; provide a valid token".to_owned(),
                ));
            }
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id,
            } => {
                vaultrs::auth::approle::login(
                    &self.login_client().0,
                    mount,
                    role_id.expose_secret(),
                    secret_id.expose_secret(),
                )
                .await
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                let jwt = crate::secret::read_secret_file(jwt_path).map_err(|e| {
                    self.auth_error(StoreErrorKind::Permanent, format!("kubernetes login: {e}"))
                })?;
                vaultrs::auth::kubernetes::login(
                    &self.login_client().0,
                    mount,
                    role,
                    jwt.expose_secret(),
                )
                .await
            }
        };
        let auth =
            r.map_err(|e| self.failure_as_auth(&format!("{method} login"), Failure::from(e)))?;
        // Moved, not copied, into a zeroizing string.
        let token = SecretString::from(auth.client_token);
        let template = self
            .inner
            .template
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let client = build_client(&template, token.expose_secret()).map_err(|e| {
            self.auth_error(
                StoreErrorKind::Permanent,
                format!("{method} login: cannot set up the client: {e}"),
            )
        })?;
        *self.inner.client.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(client);
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        {
            let mut st = self.state();
            st.lease = Some(TokenLease {
                since: now,
                ttl: secs(auth.lease_duration),
                renewable: auth.renewable,
            });
            st.accessor = Some(auth.accessor);
        }
        info!(vault = %self.inner.address, method, ttl_seconds = auth.lease_duration, renewable = auth.renewable, "logged in to Vault");
        Ok(())
    }

    /// Logs in again after a 403, unless another task already did since
    /// `generation` was read.
    async fn relogin(&self, generation: u64) -> Result<(), VaultAuthError> {
        let _one_at_a_time = self.inner.refresh.lock().await;
        if self.inner.generation.load(Ordering::SeqCst) != generation {
            return Ok(());
        }
        self.login(Instant::now()).await
    }

    fn failure_as_auth(&self, action: &str, f: Failure) -> VaultAuthError {
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
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Failure>
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
    async fn raw(
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

    /// When the token next needs attention, from now; `None` when it never
    /// does (a token without expiry, or a static token that cannot be
    /// renewed).
    fn next_refresh_in(&self, now: Instant) -> Option<Duration> {
        let can_login = self.inner.auth.can_login();
        let Some(lease) = self.lease() else {
            return Some(Duration::ZERO);
        };
        let ttl = lease.ttl?;
        if !lease.renewable && !can_login {
            return None;
        }
        let due = lease.since + ttl * 2 / 3;
        Some(
            due.saturating_duration_since(now)
                .max(Duration::from_secs(1)),
        )
    }

    /// Keeps the token alive while the daemon is idle between rotations:
    /// wakes when [`token_decision`] says renew or log in, until `shutdown`.
    /// Failures are logged and retried after 30 s; requests also refresh
    /// the token themselves, so this is a convenience, not a requirement.
    pub fn spawn_token_renewal(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let conn = self.clone();
        tokio::spawn(async move {
            loop {
                let Some(wait) = conn.next_refresh_in(Instant::now()) else {
                    debug!(vault = %conn.inner.address, "the Vault token needs no renewal");
                    return;
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                if let Err(e) = conn.ensure_token(Instant::now()).await {
                    warn!(vault = %conn.inner.address, error = %e, "keeping the Vault token alive failed; retrying in 30 s");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                }
            }
        })
    }
}

fn validate_address(raw: &str) -> Result<url::Url, VaultSetupError> {
    let invalid = |reason: &str| VaultSetupError::InvalidAddress {
        address: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Do not echo it: it holds credentials.
        return Err(VaultSetupError::InvalidAddress {
            address: "<redacted>".to_owned(),
            reason: "an address must not carry credentials".to_owned(),
        });
    }
    if url.host().is_none() {
        return Err(invalid("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("no query or fragment allowed"));
    }
    match url.scheme() {
        "https" => {}
        "http" if crate::motherduck::is_loopback(&url) => {}
        "http" => {
            return Err(VaultSetupError::Insecure {
                address: raw.to_owned(),
            });
        }
        other => return Err(invalid(&format!("unsupported scheme `{other}`"))),
    }
    Ok(url)
}

fn read_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<reqwest::Identity, VaultSetupError> {
    let read = |what: &'static str, p: &std::path::Path| {
        std::fs::read(p)
            .map(Zeroizing::new)
            .map_err(|source| VaultSetupError::ReadFile {
                what,
                path: p.display().to_string(),
                source,
            })
    };
    let mut pem = read("client certificate", cert)?;
    let key_pem = read("client key", key)?;
    if !pem.ends_with(b"\n") {
        pem.push(b'\n');
    }
    pem.extend_from_slice(&key_pem);
    let bad = |reason: String| VaultSetupError::BadPem {
        what: "client certificate and key",
        path: format!("{}, {}", cert.display(), key.display()),
        reason,
    };
    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| bad(error_chain(&e)))?;
    // `from_pem` does not check that the key belongs to the certificate;
    // building a client does, so a mismatch names both files here instead
    // of surfacing as an anonymous client set-up error. Only the identity
    // is under test: no proxy from the environment, no system roots.
    reqwest::Client::builder()
        .tls_backend_rustls()
        .no_proxy()
        .tls_certs_only(Vec::new())
        .identity(identity.clone())
        .build()
        .map_err(|e| {
            bad(format!(
                "{} (does the key belong to the certificate?)",
                error_chain(&e)
            ))
        })?;
    Ok(identity)
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// A JSON value that may hold secrets: its strings are zeroed on drop.
struct SensitiveValue(Value);

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
struct RecordFields {
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
    rotation: Option<Journal>,
}

struct Record {
    token: SecretString,
    ack_secret: Option<SecretString>,
    fields: RecordFields,
}

impl Record {
    fn rotation_id(&self) -> &str {
        &self.fields.rotation_id
    }

    fn meta(&self) -> TokenMeta {
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
fn parse_record(v: &Value) -> Result<Record, String> {
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
fn new_record_value(r: &NewRecord, inline_journal: bool) -> SensitiveValue {
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
fn with_inline_journal(data: &Value, journal: &Journal) -> SensitiveValue {
    let mut v = SensitiveValue(data.clone());
    if let Value::Object(m) = &mut v.0 {
        m.insert(
            "rotation".into(),
            serde_json::to_value(journal).unwrap_or(Value::Null),
        );
    }
    v
}

// ---------------------------------------------------------------------------
// The journal in KV v2 custom_metadata
// ---------------------------------------------------------------------------

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
fn journal_metadata(
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
        K_PREVIOUS_VERSION,
        previous_version.map(|v| v.to_string()).unwrap_or_default(),
    );
    m
}

/// The journal stored in `custom_metadata`, if it describes `version`.
#[derive(Debug, Clone, PartialEq)]
enum Tag {
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
fn decode_tag(custom: &HashMap<String, String>, version: u64) -> Result<Tag, String> {
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

// ---------------------------------------------------------------------------
// Destination
// ---------------------------------------------------------------------------

/// The KV engine version of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvVersion {
    V1,
    V2,
}

/// A Vault destination: a KV mount and a path on one connection.
#[derive(Clone)]
pub struct VaultDestination {
    /// The configured store's name, for messages.
    store: String,
    mount: String,
    path: String,
    kv: KvVersion,
    lease_ttl: Duration,
    conn: VaultConnection,
    /// The version of `P` the last `load` saw (or our last write made);
    /// writes to `P` refuse when it changed meanwhile. Shared by clones.
    observed: Arc<Mutex<Option<u64>>>,
    /// The mount was found to be KV of the configured version; checked
    /// once, before the first lock is written.
    mount_ok: Arc<tokio::sync::OnceCell<()>>,
}

impl fmt::Debug for VaultDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultDestination")
            .field("store", &self.store)
            .field("address", &self.conn.address())
            .field("mount", &self.mount)
            .field("path", &self.path)
            .field("kv", &self.kv)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// The data of `P.lock` (KV v2).
#[derive(Debug, Serialize, Deserialize)]
struct LockData {
    holder: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ttl_seconds: u64,
}

/// KV v2 metadata of one secret, as far as the store needs it.
#[derive(Debug)]
struct V2Meta {
    /// `current_version`; 0 for metadata without versions.
    version: u64,
    /// Versions whose data can still be read.
    readable: HashSet<u64>,
    custom: HashMap<String, String>,
    /// The secret's own `max_versions`; 0 defers to the mount's setting.
    max_versions: u64,
}

/// A KV v2 secret as read: metadata, the latest version's data and record,
/// and the journal if it describes that version.
struct V2Read {
    meta: Option<V2Meta>,
    data: Option<SensitiveValue>,
    record: Option<Record>,
    tag: Tag,
}

impl V2Read {
    fn version(&self) -> u64 {
        self.meta.as_ref().map_or(0, |m| m.version)
    }

    fn custom(&self) -> HashMap<String, String> {
        self.meta
            .as_ref()
            .map(|m| m.custom.clone())
            .unwrap_or_default()
    }

    fn is_rotation(&self, rid: &str) -> bool {
        self.record.as_ref().is_some_and(|r| r.rotation_id() == rid)
    }

    fn journal(&self) -> Option<&Journal> {
        match &self.tag {
            Tag::Valid { journal, .. } => Some(journal),
            Tag::Stale => None,
        }
    }

    /// The version holding the previous record, and whether that comes
    /// from the journal (`true`) or is inferred as the version before the
    /// latest because the journal is stale (`false`).
    fn previous_version(&self) -> (Option<u64>, bool) {
        match &self.tag {
            Tag::Valid {
                previous_version, ..
            } => (*previous_version, true),
            Tag::Stale => {
                let v = self.version();
                ((self.record.is_some() && v > 1).then(|| v - 1), false)
            }
        }
    }
}

/// Which sibling of the destination path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sibling {
    Current,
    Pending,
    Previous,
    Lock,
}

impl VaultDestination {
    /// A destination at `mount`/`path` (surrounding slashes are dropped).
    ///
    /// # Errors
    /// An empty or malformed mount or path, or a path ending in a suffix
    /// the store uses for its siblings.
    pub fn new(
        conn: VaultConnection,
        store: impl Into<String>,
        mount: &str,
        path: &str,
        kv: KvVersion,
    ) -> Result<VaultDestination, VaultSetupError> {
        let clean = |what: &str, s: &str| -> Result<String, VaultSetupError> {
            let t = s.trim_matches('/');
            let bad = |why: &str| VaultSetupError::Destination(format!("{what} `{s}` {why}"));
            if t.is_empty() {
                return Err(bad("is empty"));
            }
            if t.chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '*' | '+'))
            {
                return Err(bad("contains whitespace or one of `? # * +`"));
            }
            if t.split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                return Err(bad("has an empty, `.` or `..` segment"));
            }
            Ok(t.to_owned())
        };
        let mount = clean("mount", mount)?;
        let path = clean("path", path)?;
        for suffix in [".pending", ".previous", ".lock"] {
            if path.ends_with(suffix) {
                return Err(VaultSetupError::Destination(format!(
                    "path `{path}` ends with `{suffix}`, which the store uses for its sibling secrets"
                )));
            }
        }
        Ok(VaultDestination {
            store: store.into(),
            mount,
            path,
            kv,
            lease_ttl: DEFAULT_LEASE_TTL,
            conn,
            observed: Arc::new(Mutex::new(None)),
            mount_ok: Arc::default(),
        })
    }

    /// Sets how long a coordination lease lasts unless renewed (at least
    /// [`MIN_LEASE_TTL`]).
    pub fn with_lease_ttl(mut self, ttl: Duration) -> VaultDestination {
        self.lease_ttl = ttl.max(MIN_LEASE_TTL);
        self
    }

    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// The configured store's name.
    pub fn store(&self) -> &str {
        &self.store
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn kv_version(&self) -> KvVersion {
        self.kv
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    pub fn connection(&self) -> &VaultConnection {
        &self.conn
    }

    /// `vault:<mount>/<path>`, with ` (kv v1)` for a KV v1 mount.
    pub fn label(&self) -> String {
        match self.kv {
            KvVersion::V2 => format!("vault:{}/{}", self.mount, self.path),
            KvVersion::V1 => format!("vault:{}/{} (kv v1)", self.mount, self.path),
        }
    }

    pub fn kind(&self) -> &'static str {
        "vault"
    }

    /// Where the lease lives, unique among every Vault server, namespace
    /// and mount this process talks to.
    fn lease_location(&self) -> String {
        format!(
            "vault {} ns={} {}",
            self.conn.address(),
            self.conn.namespace().unwrap_or(""),
            self.api("data", &self.sib(Sibling::Lock))
        )
    }

    /// The path of a sibling inside the mount.
    fn sib(&self, s: Sibling) -> String {
        match s {
            Sibling::Current => self.path.clone(),
            Sibling::Pending => format!("{}.pending", self.path),
            Sibling::Previous => format!("{}.previous", self.path),
            Sibling::Lock => format!("{}.lock", self.path),
        }
    }

    /// The API path of a KV v2 secret (`secret/data/x`), or of a KV v1
    /// secret when `kind` is empty (`kv/x`).
    fn api(&self, kind: &str, path: &str) -> String {
        if kind.is_empty() {
            format!("{}/{path}", self.mount)
        } else {
            format!("{}/{kind}/{path}", self.mount)
        }
    }

    /// The paths this destination uses and the capabilities each needs.
    pub fn required_capabilities(&self) -> Vec<(String, &'static [&'static str])> {
        const RCU: &[&str] = &["create", "read", "update"];
        const RCUD: &[&str] = &["create", "read", "update", "delete"];
        const RU: &[&str] = &["read", "update"];
        const R: &[&str] = &["read"];
        const U: &[&str] = &["update"];
        let p = |s| self.sib(s);
        match self.kv {
            KvVersion::V2 => vec![
                (self.api("data", &p(Sibling::Current)), RCU),
                (self.api("metadata", &p(Sibling::Current)), RU),
                (self.api("delete", &p(Sibling::Current)), U),
                (self.api("data", &p(Sibling::Pending)), RCU),
                (self.api("metadata", &p(Sibling::Pending)), RCUD),
                (self.api("data", &p(Sibling::Lock)), RCU),
                (self.api("metadata", &p(Sibling::Lock)), R),
                (self.api("delete", &p(Sibling::Lock)), U),
            ],
            KvVersion::V1 => vec![
                (self.api("", &p(Sibling::Current)), RCUD),
                (self.api("", &p(Sibling::Pending)), RCUD),
                (self.api("", &p(Sibling::Previous)), RCUD),
            ],
        }
    }

    /// The least-privilege Vault policy (HCL) for this destination. Token
    /// lookup and renewal come from Vault's built-in `default` policy.
    pub fn required_policy_hcl(&self) -> String {
        let mut out = format!("# motherduck-rotator: {}\n", self.label());
        for (path, caps) in self.required_capabilities() {
            let caps: Vec<String> = caps.iter().map(|c| format!("\"{c}\"")).collect();
            out.push_str(&format!(
                "path \"{path}\" {{\n  capabilities = [{}]\n}}\n",
                caps.join(", ")
            ));
        }
        out
    }

    fn err(&self, op: StoreOp, kind: StoreErrorKind, message: String) -> StoreError {
        StoreError {
            destination: self.label(),
            op,
            kind,
            message,
        }
    }

    /// Turns a failed request into a store error. `action` says what was
    /// attempted on which path ("write `secret/data/x`"); `caps` which
    /// capabilities that needs.
    fn fail(&self, op: StoreOp, action: &str, caps: &str, f: Failure) -> StoreError {
        let (kind, message) = match f {
            Failure::Status { code: 400, errors }
                if errors.iter().any(|e| e.contains("check-and-set")) =>
            {
                (
                    StoreErrorKind::Conflict,
                    format!(
                        "{action}: check-and-set failed, the secret changed since it was read (another writer): {}",
                        clean_errors(&errors)
                    ),
                )
            }
            Failure::Status { code: 403, errors }
                if errors.iter().any(|e| e.contains("invalid token")) =>
            {
                (
                    StoreErrorKind::Permanent,
                    format!(
                        "{action}: the Vault token is not valid (HTTP 403: {}); it expired, was revoked, or belongs to another server or namespace",
                        clean_errors(&errors)
                    ),
                )
            }
            Failure::Status { code: 403, errors } => (
                StoreErrorKind::Permanent,
                format!(
                    "{action}: permission denied (HTTP 403: {}); the Vault policy must grant {caps} on that path, and the token must be valid (not expired or revoked)",
                    clean_errors(&errors)
                ),
            ),
            Failure::Status { code: 404, errors } => (
                StoreErrorKind::Permanent,
                format!(
                    "{action}: not found (HTTP 404: {}); is `{}` a KV v{} mount?",
                    clean_errors(&errors),
                    self.mount,
                    if self.kv == KvVersion::V2 { 2 } else { 1 }
                ),
            ),
            Failure::Status { code, errors } => (
                if is_transient_status(code) {
                    StoreErrorKind::Transient
                } else {
                    StoreErrorKind::Permanent
                },
                format!(
                    "{action}: Vault answered HTTP {code}: {}",
                    clean_errors(&errors)
                ),
            ),
            Failure::Transport(m) => (
                StoreErrorKind::Transient,
                format!(
                    "{action}: {}",
                    unreachable(&format!(" at {}", self.conn.address()), &m)
                ),
            ),
            Failure::Unexplained => (
                StoreErrorKind::Transient,
                format!("{action}: Vault answered an error status without details"),
            ),
            Failure::BadResponse(m) => (
                StoreErrorKind::Corrupt,
                format!("{action}: unexpected answer from Vault: {m}"),
            ),
            Failure::Auth(e) => (e.kind, format!("{action}: {}", e.message)),
        };
        self.err(op, kind, self.conn.redact(message))
    }

    fn observe(&self, version: u64) {
        *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
    }

    /// Refuses a write to `P` when `P` changed since the last `load` (or
    /// our own last write). The refusal records the new version, so a
    /// deliberate retry goes through.
    fn check_observed(&self, op: StoreOp, fresh: u64) -> Result<(), StoreError> {
        let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match *o {
            Some(seen) if seen != fresh => {
                *o = Some(fresh);
                Err(self.err(
                    op,
                    StoreErrorKind::Conflict,
                    format!(
                        "`{}` changed since it was loaded (version {seen}, now {fresh}): another writer; reload and decide again",
                        self.api("data", &self.path)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    // ----- KV v2 primitives -----

    async fn v2_meta(&self, op: StoreOp, path: &str) -> Result<Option<V2Meta>, StoreError> {
        let mount = &self.mount;
        let r = self
            .conn
            .call(|c: Arc<Authed>| async move {
                vaultrs::kv2::read_metadata(&c.0, mount, path)
                    .await
                    .map_err(Failure::from)
            })
            .await;
        match r {
            Ok(m) => {
                let now = Utc::now();
                let readable = m
                    .versions
                    .iter()
                    .filter(|(_, v)| {
                        !v.destroyed
                            && (v.deletion_time.is_empty()
                                || v.deletion_time
                                    .parse::<DateTime<Utc>>()
                                    .is_ok_and(|t| t > now))
                    })
                    .filter_map(|(k, _)| k.parse().ok())
                    .collect();
                Ok(Some(V2Meta {
                    version: m.current_version,
                    readable,
                    custom: m.custom_metadata.unwrap_or_default(),
                    max_versions: m.max_versions,
                }))
            }
            Err(Failure::Status { code: 404, errors }) if errors.is_empty() => Ok(None),
            Err(f) => Err(self.fail(
                op,
                &format!("read `{}`", self.api("metadata", path)),
                "`read`",
                f,
            )),
        }
    }

    async fn v2_data(
        &self,
        op: StoreOp,
        path: &str,
        version: u64,
    ) -> Result<Option<SensitiveValue>, StoreError> {
        let mount = &self.mount;
        let r = self
            .conn
            .call(|c: Arc<Authed>| async move {
                let endpoint = ReadSecretRequest::builder()
                    .mount(mount.as_str())
                    .path(path)
                    .version(Some(version))
                    .build()
                    .map_err(|e| Failure::BadResponse(e.to_string()))?;
                vaultrs::api::exec_with_result(&c.0, endpoint)
                    .await
                    .map_err(Failure::from)
            })
            .await;
        match r {
            Ok(resp) => Ok(match resp.data {
                Value::Null => None,
                data => Some(SensitiveValue(data)),
            }),
            Err(Failure::Status { code: 404, errors }) if errors.is_empty() => Ok(None),
            // Most likely the version was deleted since the metadata was
            // read (a lease released meanwhile): look again.
            Err(Failure::Unexplained)
                if self
                    .v2_meta(op, path)
                    .await?
                    .is_none_or(|m| !m.readable.contains(&version)) =>
            {
                Ok(None)
            }
            Err(f) => Err(self.fail(
                op,
                &format!("read `{}` version {version}", self.api("data", path)),
                "`read`",
                f,
            )),
        }
    }

    /// Metadata, latest data and journal of a KV v2 secret.
    async fn v2_read(&self, op: StoreOp, path: &str) -> Result<V2Read, StoreError> {
        let Some(meta) = self.v2_meta(op, path).await? else {
            return Ok(V2Read {
                meta: None,
                data: None,
                record: None,
                tag: Tag::Stale,
            });
        };
        let version = meta.version;
        let data = if version > 0 && meta.readable.contains(&version) {
            self.v2_data(op, path, version).await?
        } else {
            None
        };
        let record = match &data {
            Some(d) => Some(parse_record(&d.0).map_err(|reason| {
                self.err(
                    op,
                    StoreErrorKind::Corrupt,
                    format!(
                        "`{}` version {version} is not a valid token record: {reason}",
                        self.api("data", path)
                    ),
                )
            })?),
            None => None,
        };
        let tag = decode_tag(&meta.custom, version).map_err(|reason| {
            self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("`{}`: {reason}", self.api("metadata", path)),
            )
        })?;
        Ok(V2Read {
            meta: Some(meta),
            data,
            record,
            tag,
        })
    }

    /// Writes a new version with check-and-set; returns its number.
    async fn v2_write(
        &self,
        op: StoreOp,
        path: &str,
        data: &Value,
        cas: u64,
    ) -> Result<u64, StoreError> {
        let action = format!("write `{}`", self.api("data", path));
        let cas = u32::try_from(cas).map_err(|_| {
            self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("{action}: version {cas} is out of range"),
            )
        })?;
        let mount = &self.mount;
        self.conn
            .call(|c: Arc<Authed>| async move {
                vaultrs::kv2::set_with_options(
                    &c.0,
                    mount,
                    path,
                    data,
                    SetSecretRequestOptions { cas },
                )
                .await
                .map_err(Failure::from)
            })
            .await
            .map(|m| m.version)
            .map_err(|f| self.fail(op, &action, "`create` and `update`", f))
    }

    async fn v2_set_custom(
        &self,
        op: StoreOp,
        path: &str,
        custom: HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let mount = &self.mount;
        let custom = &custom;
        self.conn
            .call(|c: Arc<Authed>| async move {
                let mut b = SetSecretMetadataRequest::builder();
                b.custom_metadata(custom.clone());
                vaultrs::kv2::set_metadata(&c.0, mount, path, Some(&mut b))
                    .await
                    .map_err(Failure::from)
            })
            .await
            .map_err(|f| {
                self.fail(
                    op,
                    &format!("write `{}`", self.api("metadata", path)),
                    "`create` and `update`",
                    f,
                )
            })
    }

    /// Writes the journal of `P` for version `record_version`.
    async fn v2_set_journal(
        &self,
        op: StoreOp,
        existing: &HashMap<String, String>,
        journal: &Journal,
        record_version: u64,
        previous_version: Option<u64>,
    ) -> Result<(), StoreError> {
        let custom = journal_metadata(existing, journal, record_version, previous_version);
        self.v2_set_custom(op, &self.sib(Sibling::Current), custom)
            .await
    }

    /// Soft-deletes exactly `version` (never a newer one).
    async fn v2_delete_version(
        &self,
        op: StoreOp,
        path: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        let mount = &self.mount;
        self.conn
            .call(|c: Arc<Authed>| async move {
                vaultrs::kv2::delete_versions(&c.0, mount, path, vec![version])
                    .await
                    .map_err(Failure::from)
            })
            .await
            .map_err(|f| {
                self.fail(
                    op,
                    &format!("delete version {version} of `{}`", self.api("data", path)),
                    "`update`",
                    f,
                )
            })
    }

    /// Deletes a secret with all its versions and metadata.
    async fn v2_destroy_all(&self, op: StoreOp, path: &str) -> Result<(), StoreError> {
        let mount = &self.mount;
        let r = self
            .conn
            .call(|c: Arc<Authed>| async move {
                vaultrs::kv2::delete_metadata(&c.0, mount, path)
                    .await
                    .map_err(Failure::from)
            })
            .await;
        match r {
            Ok(()) | Err(Failure::Status { code: 404, .. }) => Ok(()),
            Err(f) => Err(self.fail(
                op,
                &format!("delete `{}`", self.api("metadata", path)),
                "`delete`",
                f,
            )),
        }
    }

    /// Reads the previous record's data for `cur`; `None` when there is
    /// none. A previous version named by the journal must be readable and
    /// valid; an inferred one is best effort.
    async fn v2_previous(
        &self,
        op: StoreOp,
        cur: &V2Read,
    ) -> Result<Option<(u64, SensitiveValue, Record)>, StoreError> {
        let (version, strict) = cur.previous_version();
        let Some(version) = version else {
            return Ok(None);
        };
        let path = self.sib(Sibling::Current);
        let readable = cur
            .meta
            .as_ref()
            .is_some_and(|m| m.readable.contains(&version));
        let data = if readable {
            self.v2_data(op, &path, version).await?
        } else {
            None
        };
        let Some(data) = data else {
            if strict {
                warn!(destination = %self.label(), version, "the previous record's version is deleted, destroyed or pruned (max_versions)");
            }
            return Ok(None);
        };
        match parse_record(&data.0) {
            Ok(r) => Ok(Some((version, data, r))),
            Err(reason) if strict => Err(self.err(
                op,
                StoreErrorKind::Corrupt,
                format!(
                    "`{}` version {version} (the previous record) is not a valid token record: {reason}",
                    self.api("data", &path)
                ),
            )),
            Err(_) => Ok(None),
        }
    }

    /// Deletes `P.pending` if it holds rotation `rid`.
    async fn v2_drop_pending_of(&self, op: StoreOp, rid: &str) -> Result<(), StoreError> {
        let pp = self.sib(Sibling::Pending);
        let pend = self.v2_read(op, &pp).await?;
        if pend.is_rotation(rid) {
            self.v2_destroy_all(op, &pp).await?;
        }
        Ok(())
    }

    // ----- KV v1 primitives -----

    async fn v1_read(
        &self,
        op: StoreOp,
        path: &str,
    ) -> Result<Option<(SensitiveValue, Record)>, StoreError> {
        let mount = &self.mount;
        let r = self
            .conn
            .call(|c: Arc<Authed>| async move {
                vaultrs::kv1::get_raw(&c.0, mount, path)
                    .await
                    .map_err(Failure::from)
            })
            .await;
        let data = match r {
            Ok(resp) => SensitiveValue(resp.data),
            Err(Failure::Status { code: 404, errors }) if errors.is_empty() => return Ok(None),
            Err(f) => {
                return Err(self.fail(op, &format!("read `{}`", self.api("", path)), "`read`", f));
            }
        };
        let record = parse_record(&data.0).map_err(|reason| {
            self.err(
                op,
                StoreErrorKind::Corrupt,
                format!(
                    "`{}` is not a valid token record: {reason}",
                    self.api("", path)
                ),
            )
        })?;
        Ok(Some((data, record)))
    }

    async fn v1_write(&self, op: StoreOp, path: &str, data: &Value) -> Result<(), StoreError> {
        let action = format!("write `{}`", self.api("", path));
        let Value::Object(obj) = data else {
            return Err(self.err(
                op,
                StoreErrorKind::Corrupt,
                format!("{action}: the record is not a JSON object"),
            ));
        };
        let map: HashMap<&str, &Value> = obj.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mount = &self.mount;
        let map = &map;
        self.conn
            .call(|c: Arc<Authed>| async move {
                vaultrs::kv1::set(&c.0, mount, path, map)
                    .await
                    .map_err(Failure::from)
            })
            .await
            .map_err(|f| self.fail(op, &action, "`create` and `update`", f))
    }

    async fn v1_delete(&self, op: StoreOp, path: &str) -> Result<(), StoreError> {
        let mount = &self.mount;
        let r = self
            .conn
            .call(|c: Arc<Authed>| async move {
                vaultrs::kv1::delete(&c.0, mount, path)
                    .await
                    .map_err(Failure::from)
            })
            .await;
        match r {
            Ok(()) | Err(Failure::Status { code: 404, .. }) => Ok(()),
            Err(f) => Err(self.fail(
                op,
                &format!("delete `{}`", self.api("", path)),
                "`delete`",
                f,
            )),
        }
    }

    // ----- The destination operations -----

    /// Reads all records, without secrets. On KV v2, remembers the current
    /// version so a later write can tell whether `P` changed meanwhile.
    ///
    /// # Errors
    /// Unreachable Vault, missing permission, a corrupt record or journal.
    pub async fn load(&self) -> Result<DestinationView, StoreError> {
        let op = StoreOp::Load;
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_read(op, &self.sib(Sibling::Current)).await?;
                let previous = self.v2_previous(op, &cur).await?;
                let pend = self.v2_read(op, &self.sib(Sibling::Pending)).await?;
                self.observe(cur.version());
                let view = |r: &V2Read| {
                    r.record.as_ref().map(|rec| RecordView {
                        meta: rec.meta(),
                        journal: r.journal().cloned(),
                    })
                };
                Ok(DestinationView {
                    current: view(&cur),
                    pending: view(&pend),
                    previous: previous.map(|(_, _, r)| RecordView {
                        meta: r.meta(),
                        journal: None,
                    }),
                    current_partial: false,
                })
            }
            KvVersion::V1 => {
                let view = |r: Option<(SensitiveValue, Record)>| {
                    r.map(|(_, rec)| RecordView {
                        meta: rec.meta(),
                        journal: rec.fields.rotation.clone(),
                    })
                };
                Ok(DestinationView {
                    current: view(self.v1_read(op, &self.sib(Sibling::Current)).await?),
                    pending: view(self.v1_read(op, &self.sib(Sibling::Pending)).await?),
                    previous: view(self.v1_read(op, &self.sib(Sibling::Previous)).await?),
                    current_partial: false,
                })
            }
        }
    }

    /// Reads the secret (and acknowledgement secret) of the current or
    /// pending record, if that record belongs to `rotation_id`.
    ///
    /// # Errors
    /// Unreachable Vault, missing permission, a corrupt record.
    pub async fn read_secret(
        &self,
        slot: Slot,
        rotation_id: &str,
    ) -> Result<Option<(SecretString, Option<SecretString>)>, StoreError> {
        let op = StoreOp::ReadSecret;
        let sib = match slot {
            Slot::Current => Sibling::Current,
            Slot::Pending => Sibling::Pending,
        };
        let record = match self.kv {
            KvVersion::V2 => self.v2_read(op, &self.sib(sib)).await?.record,
            KvVersion::V1 => self.v1_read(op, &self.sib(sib)).await?.map(|(_, r)| r),
        };
        Ok(record
            .filter(|r| r.rotation_id() == rotation_id)
            .map(|r| (r.token, r.ack_secret)))
    }

    /// Writes the new record to `P.pending`, where consumers do not read
    /// it. Repeating it for the same rotation changes nothing.
    ///
    /// # Errors
    /// Any failed write; nothing consumers read has changed.
    pub async fn stage(&self, record: &NewRecord) -> Result<(), StoreError> {
        let op = StoreOp::Stage;
        let pp = self.sib(Sibling::Pending);
        let rid = &record.meta.rotation_id;
        match self.kv {
            KvVersion::V2 => {
                let pend = self.v2_read(op, &pp).await?;
                if pend.is_rotation(rid) {
                    if pend.journal() != Some(&record.journal) {
                        let custom =
                            journal_metadata(&pend.custom(), &record.journal, pend.version(), None);
                        self.v2_set_custom(op, &pp, custom).await?;
                    }
                    return Ok(());
                }
                let cas = pend.version();
                // The journal first, tagged with the version about to be
                // written: until that version exists it is ignored, so a
                // crash in between leaves nothing staged (module docs).
                let custom = journal_metadata(&pend.custom(), &record.journal, cas + 1, None);
                self.v2_set_custom(op, &pp, custom).await?;
                let data = new_record_value(record, false);
                let written = self.v2_write(op, &pp, &data.0, cas).await?;
                if written != cas + 1 {
                    let custom = journal_metadata(&pend.custom(), &record.journal, written, None);
                    self.v2_set_custom(op, &pp, custom).await?;
                }
                Ok(())
            }
            KvVersion::V1 => {
                let data = new_record_value(record, true);
                self.v1_write(op, &pp, &data.0).await
            }
        }
    }

    /// Makes the staged record of `journal.rotation_id` current: on KV v2
    /// a new version of `P` (check-and-set on the version read), the
    /// replaced version becoming the previous record; on KV v1 the current
    /// record is copied to `P.previous` first. Repeating it finishes what a
    /// crash interrupted.
    ///
    /// # Errors
    /// Any failed write; `Conflict` when `P` changed since it was loaded;
    /// `Corrupt` when there is no staged record for this rotation.
    pub async fn promote(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Promote;
        let rid = &journal.rotation_id;
        let p = self.sib(Sibling::Current);
        let pp = self.sib(Sibling::Pending);
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_read(op, &p).await?;
                let pend = self.v2_read(op, &pp).await?;
                if cur.is_rotation(rid) {
                    // Already promoted (a repeat after a crash): write the
                    // journal if the crash came before it, drop the staged
                    // copy.
                    if cur.tag == Tag::Stale {
                        let (prev, _) = cur.previous_version();
                        self.v2_set_journal(op, &cur.custom(), journal, cur.version(), prev)
                            .await?;
                    }
                    if pend.is_rotation(rid) {
                        self.v2_destroy_all(op, &pp).await?;
                    }
                    self.observe(cur.version());
                    return Ok(());
                }
                self.check_observed(op, cur.version())?;
                let Some(data) = pend.data.as_ref().filter(|_| pend.is_rotation(rid)) else {
                    return Err(self.err(
                        op,
                        StoreErrorKind::Corrupt,
                        format!(
                            "no staged record for rotation `{rid}` at `{}`",
                            self.api("data", &pp)
                        ),
                    ));
                };
                let previous = cur.record.is_some().then(|| cur.version());
                let written = self.v2_write(op, &p, &data.0, cur.version()).await?;
                self.observe(written);
                self.v2_set_journal(op, &cur.custom(), journal, written, previous)
                    .await?;
                self.v2_destroy_all(op, &pp).await
            }
            KvVersion::V1 => {
                let current = self.v1_read(op, &p).await?;
                let pending = self.v1_read(op, &pp).await?;
                if current
                    .as_ref()
                    .is_some_and(|(_, c)| c.rotation_id() == rid)
                {
                    if pending
                        .as_ref()
                        .is_some_and(|(_, r)| r.rotation_id() == rid)
                    {
                        self.v1_delete(op, &pp).await?;
                    }
                    return Ok(());
                }
                let Some((new, _)) = pending.filter(|(_, r)| r.rotation_id() == rid) else {
                    return Err(self.err(
                        op,
                        StoreErrorKind::Corrupt,
                        format!(
                            "no staged record for rotation `{rid}` at `{}`",
                            self.api("", &pp)
                        ),
                    ));
                };
                if let Some((cur, _)) = &current {
                    self.v1_write(op, &self.sib(Sibling::Previous), &cur.0)
                        .await?;
                }
                let new = with_inline_journal(&new.0, journal);
                self.v1_write(op, &p, &new.0).await?;
                self.v1_delete(op, &pp).await
            }
        }
    }

    /// Rewrites the journal of the current record.
    ///
    /// # Errors
    /// Any failed write; `Conflict` when `P` changed since it was loaded;
    /// `Corrupt` when there is no current record.
    pub async fn set_journal(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Journal;
        let p = self.sib(Sibling::Current);
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_read(op, &p).await?;
                if cur.record.is_none() {
                    return Err(self.err(op, StoreErrorKind::Corrupt, "no current record".into()));
                }
                if cur.journal() != Some(journal) {
                    self.check_observed(op, cur.version())?;
                    let (prev, _) = cur.previous_version();
                    self.v2_set_journal(op, &cur.custom(), journal, cur.version(), prev)
                        .await?;
                }
                if cur.is_rotation(&journal.rotation_id) {
                    // After a crash inside `promote`, the staged copy is
                    // still there; it must not look like an active stage.
                    self.v2_drop_pending_of(op, &journal.rotation_id).await?;
                }
                Ok(())
            }
            KvVersion::V1 => {
                let Some((data, cur)) = self.v1_read(op, &p).await? else {
                    return Err(self.err(op, StoreErrorKind::Corrupt, "no current record".into()));
                };
                if cur.fields.rotation.as_ref() == Some(journal) {
                    return Ok(());
                }
                let data = with_inline_journal(&data.0, journal);
                self.v1_write(op, &p, &data.0).await
            }
        }
    }

    /// Undoes `journal.rotation_id` here: when its record is current, the
    /// previous record becomes current again (KV v2: its data written as a
    /// new version, with check-and-set); a staged record is dropped; the
    /// journal records the rollback. When the rotation's token was the
    /// destination's first, nothing older exists and the current version
    /// is deleted.
    ///
    /// # Errors
    /// Any failed write; `Conflict` when `P` changed since it was loaded;
    /// `Corrupt` when the previous record cannot be read back.
    pub async fn rollback(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Rollback;
        let rid = &journal.rotation_id;
        let p = self.sib(Sibling::Current);
        let pp = self.sib(Sibling::Pending);
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_read(op, &p).await?;
                if cur.is_rotation(rid) {
                    self.check_observed(op, cur.version())?;
                    let (prev_version, _) = cur.previous_version();
                    match self.v2_previous(op, &cur).await? {
                        Some((_, data, _)) => {
                            let written = self.v2_write(op, &p, &data.0, cur.version()).await?;
                            self.observe(written);
                            self.v2_set_journal(op, &cur.custom(), journal, written, None)
                                .await?;
                        }
                        None if prev_version.is_none() => {
                            // The destination's first token: nothing older
                            // to restore, and this one is about to be
                            // revoked.
                            self.v2_delete_version(op, &p, cur.version()).await?;
                            self.v2_set_journal(op, &cur.custom(), journal, cur.version(), None)
                                .await?;
                        }
                        None => {
                            return Err(self.err(
                                op,
                                StoreErrorKind::Corrupt,
                                format!(
                                    "cannot restore the previous record: version {} of `{}` is deleted, destroyed or pruned by max_versions; restore it by hand",
                                    prev_version.unwrap_or_default(),
                                    self.api("data", &p)
                                ),
                            ));
                        }
                    }
                } else if cur.record.is_some() && cur.journal() != Some(journal) {
                    self.check_observed(op, cur.version())?;
                    let prev = match &cur.tag {
                        Tag::Valid {
                            previous_version, ..
                        } => *previous_version,
                        Tag::Stale => None,
                    };
                    self.v2_set_journal(op, &cur.custom(), journal, cur.version(), prev)
                        .await?;
                }
                self.v2_drop_pending_of(op, rid).await
            }
            KvVersion::V1 => {
                let current = self.v1_read(op, &p).await?;
                let prev_path = self.sib(Sibling::Previous);
                match current {
                    Some((_, cur)) if cur.rotation_id() == rid => {
                        match self.v1_read(op, &prev_path).await? {
                            Some((prev, _)) => {
                                let prev = with_inline_journal(&prev.0, journal);
                                self.v1_write(op, &p, &prev.0).await?;
                                self.v1_delete(op, &prev_path).await?;
                            }
                            None => self.v1_delete(op, &p).await?,
                        }
                    }
                    Some((data, cur)) if cur.fields.rotation.as_ref() != Some(journal) => {
                        let data = with_inline_journal(&data.0, journal);
                        self.v1_write(op, &p, &data.0).await?;
                    }
                    Some(_) | None => {}
                }
                if self
                    .v1_read(op, &pp)
                    .await?
                    .is_some_and(|(_, r)| r.rotation_id() == rid)
                {
                    self.v1_delete(op, &pp).await?;
                }
                Ok(())
            }
        }
    }

    /// Records completion and forgets the previous record (its token is
    /// revoked). On KV v2 the old version stays in the history, holding a
    /// revoked token.
    ///
    /// # Errors
    /// Any failed write; `Conflict` when `P` changed since it was loaded;
    /// `Corrupt` when there is no current record.
    pub async fn finish(&self, journal: &Journal) -> Result<(), StoreError> {
        let op = StoreOp::Finish;
        let p = self.sib(Sibling::Current);
        match self.kv {
            KvVersion::V2 => {
                let cur = self.v2_read(op, &p).await?;
                if cur.record.is_none() {
                    return Err(self.err(op, StoreErrorKind::Corrupt, "no current record".into()));
                }
                let done = matches!(&cur.tag, Tag::Valid { journal: j, previous_version: None } if j == journal);
                if !done {
                    self.check_observed(op, cur.version())?;
                    self.v2_set_journal(op, &cur.custom(), journal, cur.version(), None)
                        .await?;
                }
                if cur.is_rotation(&journal.rotation_id) {
                    self.v2_drop_pending_of(op, &journal.rotation_id).await?;
                }
                Ok(())
            }
            KvVersion::V1 => {
                let Some((data, cur)) = self.v1_read(op, &p).await? else {
                    return Err(self.err(op, StoreErrorKind::Corrupt, "no current record".into()));
                };
                if cur.fields.rotation.as_ref() != Some(journal) {
                    let data = with_inline_journal(&data.0, journal);
                    self.v1_write(op, &p, &data.0).await?;
                }
                self.v1_delete(op, &self.sib(Sibling::Previous)).await
            }
        }
    }

    /// Takes the policy's coordination lease if it is free or expired
    /// (see [`VaultLease`]), at the system clock's time.
    ///
    /// # Errors
    /// KV v1 (no check-and-set, so no safe lease): always a permanent
    /// error. Otherwise an unreachable Vault, a missing permission, or an
    /// unreadable lease record.
    pub async fn try_lock(&self, holder: &str) -> Result<Option<VaultLease>, StoreError> {
        self.try_lock_at(holder, Utc::now()).await
    }

    /// [`try_lock`](Self::try_lock) at `now`, for tests that step time.
    ///
    /// # Errors
    /// As [`try_lock`](Self::try_lock).
    pub async fn try_lock_at(
        &self,
        holder: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<VaultLease>, StoreError> {
        let op = StoreOp::Lock;
        if self.kv == KvVersion::V1 {
            return Err(self.err(
                op,
                StoreErrorKind::Permanent,
                "a KV v1 mount has no check-and-set, so it cannot hold the multi-replica lock; configure the policy's lock on another destination (a KV v2 path, AWS or a file)".to_owned(),
            ));
        }
        // On a mount of another kind or version the lease would be
        // written somewhere nothing reads (`kv/data/P.lock` on KV v1).
        self.mount_ok
            .get_or_try_init(|| self.check_mount(op))
            .await?;
        let lp = self.sib(Sibling::Lock);
        let cas = match self.v2_meta(op, &lp).await? {
            None => 0,
            Some(meta) => {
                if meta.version > 0 && meta.readable.contains(&meta.version) {
                    let data = self.v2_data(op, &lp, meta.version).await?;
                    if let Some(data) = data {
                        let lock = LockData::deserialize(&data.0).map_err(|e| {
                            self.err(
                                op,
                                StoreErrorKind::Corrupt,
                                format!("`{}` is not a lease record: {e}", self.api("data", &lp)),
                            )
                        })?;
                        if lock.expires_at <= now {
                            info!(destination = %self.label(), previous_holder = %lock.holder, expired_at = %lock.expires_at, "taking over an expired lease");
                        } else if super::reclaim_abandoned(
                            &self.lease_location(),
                            &abandoned_mark(meta.version, lock.expires_at),
                        ) {
                            info!(destination = %self.label(), expires_at = %lock.expires_at, "taking back the lease this process could not release");
                        } else {
                            debug!(destination = %self.label(), holder = %lock.holder, expires_at = %lock.expires_at, "the lease is held");
                            return Ok(None);
                        }
                    }
                }
                meta.version
            }
        };
        let lease_ttl = chrono::Duration::from_std(self.lease_ttl).unwrap_or(chrono::Duration::MAX);
        let lock = LockData {
            holder: holder.to_owned(),
            acquired_at: now,
            expires_at: now + lease_ttl,
            ttl_seconds: self.lease_ttl.as_secs(),
        };
        let data = serde_json::to_value(&lock).unwrap_or(Value::Null);
        let sent = tokio::time::Instant::now();
        match self.v2_write(op, &lp, &data, cas).await {
            Ok(version) => Ok(Some(VaultLease::start(
                self.clone(),
                holder.to_owned(),
                version,
                lock.expires_at,
                sent,
            ))),
            // Another replica wrote first.
            Err(e) if e.kind == StoreErrorKind::Conflict => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checks that Vault is reachable, the credentials work, the mount is
    /// KV of the configured version, the token has every capability the
    /// layout needs (via `sys/capabilities-self`), and the records parse.
    ///
    /// # Errors
    /// What is wrong, naming paths and missing capabilities.
    pub async fn check(&self) -> Result<(), StoreError> {
        let op = StoreOp::Check;
        self.conn
            .ensure_token(Instant::now())
            .await
            .map_err(|e| self.err(op, e.kind, e.message))?;
        self.check_mount(op).await?;
        self.check_layout(op).await?;
        match self.kv {
            KvVersion::V2 => {
                self.v2_read(op, &self.sib(Sibling::Current)).await?;
                self.v2_read(op, &self.sib(Sibling::Pending)).await?;
            }
            KvVersion::V1 => {
                for s in [Sibling::Current, Sibling::Pending, Sibling::Previous] {
                    self.v1_read(op, &self.sib(s)).await?;
                }
            }
        }
        Ok(())
    }

    async fn check_mount(&self, op: StoreOp) -> Result<(), StoreError> {
        let api = format!("sys/internal/ui/mounts/{}", self.mount);
        let info = self
            .conn
            .raw(reqwest::Method::GET, &api, None)
            .await
            .map_err(|f| match f {
                // Vault answers 403 for a mount that does not exist too.
                Failure::Status { code: 403, errors } => self.err(
                    op,
                    StoreErrorKind::Permanent,
                    self.conn.redact(format!(
                        "read mount `{}`: permission denied (HTTP 403: {}); the mount does not exist, or the token may not read `sys/internal/ui/mounts/{}` (granted by the `default` policy), or the token is not valid",
                        self.mount,
                        clean_errors(&errors),
                        self.mount
                    )),
                ),
                f => self.fail(op, &format!("read mount `{}`", self.mount), "access", f),
            })?;
        let data = &info["data"];
        let kind = data["type"].as_str().unwrap_or_default();
        let version = data["options"]["version"].as_str().unwrap_or("1");
        let want = if self.kv == KvVersion::V2 { "2" } else { "1" };
        if !matches!(kind, "kv" | "generic") || version != want {
            return Err(self.err(
                op,
                StoreErrorKind::Permanent,
                format!(
                    "mount `{}` is `{kind}` version {version}, but the destination is configured for KV v{want}",
                    self.mount
                ),
            ));
        }
        Ok(())
    }

    /// The part of [`Self::check`] run before each rotation creates a
    /// token: the token's capabilities on every path of the layout, and a
    /// secret that can be rolled back.
    ///
    /// # Errors
    /// The missing capabilities, naming each path; `max_versions = 1`; or
    /// Vault unreachable.
    pub async fn preflight(&self) -> Result<(), StoreError> {
        let op = StoreOp::Check;
        self.conn
            .ensure_token(Instant::now())
            .await
            .map_err(|e| self.err(op, e.kind, e.message))?;
        self.check_layout(op).await
    }

    async fn check_layout(&self, op: StoreOp) -> Result<(), StoreError> {
        self.check_capabilities(op, self.required_capabilities())
            .await?;
        self.check_max_versions(op).await
    }

    /// [`check`](Self::check) for a destination that only holds a
    /// policy's lock (`P.lock`): Vault is reachable, the credentials work,
    /// the mount is KV v2, and the token may take and release the lease.
    ///
    /// # Errors
    /// What is wrong, naming paths and missing capabilities.
    pub async fn check_lock(&self) -> Result<(), StoreError> {
        let op = StoreOp::Check;
        self.conn
            .ensure_token(Instant::now())
            .await
            .map_err(|e| self.err(op, e.kind, e.message))?;
        self.check_mount(op).await?;
        let lock = self.sib(Sibling::Lock);
        let need = self
            .required_capabilities()
            .into_iter()
            .filter(|(path, _)| path.ends_with(&format!("/{lock}")))
            .collect();
        self.check_capabilities(op, need).await
    }

    /// A KV v2 secret that keeps a single version cannot be rolled back:
    /// the previous record is the version before the current one.
    async fn check_max_versions(&self, op: StoreOp) -> Result<(), StoreError> {
        if self.kv != KvVersion::V2 {
            return Ok(());
        }
        let p = self.sib(Sibling::Current);
        match self.v2_meta(op, &p).await? {
            Some(meta) if meta.max_versions == 1 => Err(self.err(
                op,
                StoreErrorKind::Permanent,
                format!(
                    "`{}` keeps max_versions = 1, so a rotation could not be rolled back (the previous record is the previous version); set max_versions to 2 or more, or 0 for the mount's default",
                    self.api("metadata", &p)
                ),
            )),
            _ => Ok(()),
        }
    }

    async fn check_capabilities(
        &self,
        op: StoreOp,
        need: Vec<(String, &'static [&'static str])>,
    ) -> Result<(), StoreError> {
        let paths: Vec<&str> = need.iter().map(|(p, _)| p.as_str()).collect();
        let r = self
            .conn
            .raw(
                reqwest::Method::POST,
                "sys/capabilities-self",
                Some(serde_json::json!({ "paths": paths })),
            )
            .await;
        let answer = match r {
            Ok(v) => v,
            Err(Failure::Status { code: 403, .. }) => {
                warn!(destination = %self.label(), "cannot ask Vault for the token's capabilities (sys/capabilities-self is in the `default` policy); skipping that check");
                return Ok(());
            }
            Err(f) => {
                return Err(self.fail(op, "read `sys/capabilities-self`", "`update`", f));
            }
        };
        let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (path, caps) in &need {
            let have: Vec<&str> = answer["data"][path.as_str()]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if have.contains(&"root") {
                continue;
            }
            let lacking: Vec<&str> = caps
                .iter()
                .copied()
                .filter(|c| !have.contains(c) || have.contains(&"deny"))
                .collect();
            if !lacking.is_empty() {
                missing.insert(path.as_str(), lacking);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = missing
            .iter()
            .map(|(p, c)| format!("`{p}` needs {}", c.join(", ")))
            .collect();
        Err(self.err(
            op,
            StoreErrorKind::Permanent,
            format!("the Vault token lacks capabilities: {}", list.join("; ")),
        ))
    }
}

// ---------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------

/// The policy's coordination lease on a KV v2 destination: the secret
/// `P.lock`, written with check-and-set.
///
/// - **Take**: when `P.lock` does not exist, write it with `cas=0`
///   (create-if-absent); when its latest version is deleted or its
///   `expires_at` has passed, write with `cas` = that version (a safe
///   takeover: of several replicas seeing the same expired lease, exactly
///   one write succeeds).
/// - **Renew**: rewrite it with `cas` = our version and a new
///   `expires_at`. A background task renews every third of the TTL while
///   the lease is held, so a long verification keeps it; [`renew`] is
///   there for callers that want to renew at a point of their choosing,
///   and [`is_lost`] says whether a renewal found the lease taken over.
/// - **Release**: soft-delete exactly our version (never a newer one a
///   successor wrote), explicitly with [`release`] or best effort on drop.
///
/// A crashed holder's lease blocks others until it expires (the TTL,
/// ten minutes by default). Expiry compares the replicas' own clocks:
/// keep their skew well below the TTL. Check-and-set on the records
/// bounds what a holder that lost its lease (paused past the TTL) can do:
/// its writes fail once the successor has written.
///
/// [`renew`]: VaultLease::renew
/// [`is_lost`]: VaultLease::is_lost
/// [`release`]: VaultLease::release
pub struct VaultLease {
    shared: Arc<LeaseShared>,
    keepalive: Option<tokio::task::JoinHandle<()>>,
    /// [`release`](Self::release) was called, so dropping it does nothing.
    release_called: bool,
}

struct LeaseShared {
    dest: VaultDestination,
    holder: String,
    state: tokio::sync::Mutex<LeaseState>,
    lost: AtomicBool,
    fence: super::Fence,
}

#[derive(Debug, Clone, Copy)]
struct LeaseState {
    /// Our version of `P.lock`.
    version: u64,
    expires_at: DateTime<Utc>,
    released: bool,
    /// The `expires_at` of a renewal whose outcome is unknown (the request
    /// failed without an answer): if Vault applied it, the record is ours
    /// at a newer version, and a conflict must not be taken for a loss.
    unanswered: Option<DateTime<Utc>>,
}

impl fmt::Debug for VaultLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.try_lock().map(|s| *s).ok();
        f.debug_struct("VaultLease")
            .field("destination", &self.shared.dest.label())
            .field("holder", &self.shared.holder)
            .field("state", &state)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl VaultLease {
    fn start(
        dest: VaultDestination,
        holder: String,
        version: u64,
        expires_at: DateTime<Utc>,
        sent: tokio::time::Instant,
    ) -> VaultLease {
        let every = (dest.lease_ttl / 3).max(Duration::from_millis(100));
        let fence = super::Fence::expiring(dest.label(), sent, dest.lease_ttl);
        let shared = Arc::new(LeaseShared {
            dest,
            holder,
            state: tokio::sync::Mutex::new(LeaseState {
                version,
                expires_at,
                released: false,
                unanswered: None,
            }),
            lost: AtomicBool::new(false),
            fence,
        });
        let weak = Arc::downgrade(&shared);
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else { return };
                match shared.renew_at(Utc::now()).await {
                    Ok(_) => {}
                    Err(e) if e.kind == StoreErrorKind::Conflict => return,
                    Err(e) if e.kind == StoreErrorKind::Permanent && shared.is_released().await => {
                        return;
                    }
                    Err(e) => {
                        warn!(destination = %shared.dest.label(), error = %e, "renewing the lease failed; retrying");
                    }
                }
            }
        });
        VaultLease {
            shared,
            keepalive: Some(keepalive),
            release_called: false,
        }
    }

    /// Who holds it (the daemon's instance id).
    pub fn holder(&self) -> &str {
        &self.shared.holder
    }

    /// When the lease expires unless renewed.
    pub async fn expires_at(&self) -> DateTime<Utc> {
        self.shared.state.lock().await.expires_at
    }

    /// What the holder checks before each write.
    pub fn fence(&self) -> super::Fence {
        self.shared.fence.clone()
    }

    /// Whether a renewal found the lease taken over by another holder; the
    /// holder must then stop changing the destination.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// Extends the lease by its TTL from now.
    ///
    /// # Errors
    /// `Conflict` when another holder took the lease over (it had
    /// expired); `Permanent` after release; transient Vault failures.
    pub async fn renew(&self) -> Result<DateTime<Utc>, StoreError> {
        self.shared.renew_at(Utc::now()).await
    }

    /// [`renew`](Self::renew) at `now`, for tests that step time.
    ///
    /// # Errors
    /// As [`renew`](Self::renew).
    pub async fn renew_at(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        self.shared.renew_at(now).await
    }

    /// Gives the lease up: deletes our version of `P.lock`.
    ///
    /// # Errors
    /// The delete failed; the lease then ends when it expires, or when
    /// this process next takes the lock.
    pub async fn release(mut self) -> Result<(), StoreError> {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        self.release_called = true;
        let result = self.shared.release().await;
        if result.is_err() {
            self.shared.abandon().await;
        }
        result
    }
}

impl Drop for VaultLease {
    fn drop(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
        if self.release_called {
            return;
        }
        // Best effort: a lease not released ends when it expires.
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

/// What identifies an abandoned lease record: its version and its expiry.
/// A version number alone repeats once the lock's metadata is deleted (an
/// operator clearing a stuck lock) and another holder's versions count up
/// again; the expiry, to the nanosecond, is that record's own.
fn abandoned_mark(version: u64, expires_at: DateTime<Utc>) -> String {
    format!(
        "{version}@{}",
        expires_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    )
}

impl LeaseShared {
    async fn is_released(&self) -> bool {
        self.state.lock().await.released
    }

    async fn renew_at(&self, now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        let op = StoreOp::Lock;
        let d = &self.dest;
        let mut st = self.state.lock().await;
        if st.released {
            return Err(d.err(
                op,
                StoreErrorKind::Permanent,
                "the lease was released".into(),
            ));
        }
        let ttl = chrono::Duration::from_std(d.lease_ttl).unwrap_or(chrono::Duration::MAX);
        let lock = LockData {
            holder: self.holder.clone(),
            acquired_at: now,
            expires_at: now + ttl,
            ttl_seconds: d.lease_ttl.as_secs(),
        };
        let data = serde_json::to_value(&lock).unwrap_or(Value::Null);
        let sent = tokio::time::Instant::now();
        match d
            .v2_write(op, &d.sib(Sibling::Lock), &data, st.version)
            .await
        {
            Ok(v) => {
                st.version = v;
                st.expires_at = lock.expires_at;
                st.unanswered = None;
                self.fence.renewed(sent, d.lease_ttl);
                Ok(lock.expires_at)
            }
            Err(e) if e.kind == StoreErrorKind::Conflict && st.unanswered.is_some() => {
                // An earlier renewal may have been applied without its
                // answer reaching us: the record is then ours at a newer
                // version. Read it before calling the lease lost.
                let lp = d.sib(Sibling::Lock);
                let ours = match d.v2_meta(op, &lp).await? {
                    Some(meta) if meta.version > 0 => d
                        .v2_data(op, &lp, meta.version)
                        .await?
                        .and_then(|data| LockData::deserialize(&data.0).ok())
                        .filter(|l| l.holder == self.holder && Some(l.expires_at) == st.unanswered)
                        .map(|l| (meta.version, l.expires_at)),
                    _ => None,
                };
                st.unanswered = None;
                match ours {
                    Some((version, expires_at)) => {
                        info!(destination = %d.label(), "a renewal whose answer was lost had been applied; the lease is still ours");
                        st.version = version;
                        st.expires_at = expires_at;
                        Err(d.err(
                            op,
                            StoreErrorKind::Transient,
                            "the lease record moved on by our own earlier renewal; renewing again"
                                .into(),
                        ))
                    }
                    None => {
                        self.lost.store(true, Ordering::SeqCst);
                        self.fence.lost();
                        warn!(destination = %d.label(), holder = %self.holder, "the lease was taken over by another holder");
                        Err(d.err(
                            op,
                            StoreErrorKind::Conflict,
                            format!(
                                "the lease `{}` was taken over by another holder after it expired; stop changing this destination",
                                d.api("data", &lp)
                            ),
                        ))
                    }
                }
            }
            Err(e) if e.kind == StoreErrorKind::Conflict => {
                self.lost.store(true, Ordering::SeqCst);
                self.fence.lost();
                warn!(destination = %d.label(), holder = %self.holder, "the lease was taken over by another holder");
                Err(d.err(
                    op,
                    StoreErrorKind::Conflict,
                    format!(
                        "the lease `{}` was taken over by another holder after it expired; stop changing this destination",
                        d.api("data", &d.sib(Sibling::Lock))
                    ),
                ))
            }
            Err(e) => {
                if e.kind == StoreErrorKind::Transient {
                    st.unanswered = Some(lock.expires_at);
                }
                Err(e)
            }
        }
    }

    async fn release(&self) -> Result<(), StoreError> {
        let mut st = self.state.lock().await;
        if st.released {
            return Ok(());
        }
        let d = &self.dest;
        // Marked released only once done, so a failed release can be
        // repeated; the state lock keeps renewals out meanwhile.
        d.v2_delete_version(StoreOp::Lock, &d.sib(Sibling::Lock), st.version)
            .await?;
        st.released = true;
        Ok(())
    }

    /// Notes the lease as given up by this process: see
    /// [`super::abandoned_lease`].
    async fn abandon(&self) {
        let st = self.state.lock().await;
        if !st.released {
            super::abandoned_lease(
                self.dest.lease_location(),
                abandoned_mark(st.version, st.expires_at),
            );
        }
    }
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
        }
    }

    #[test]
    fn token_decision_renews_after_two_thirds_and_logs_in_when_it_cannot() {
        let t0 = Instant::now();
        let lease = |ttl: Option<u64>, renewable| TokenLease {
            since: t0,
            ttl: ttl.map(Duration::from_secs),
            renewable,
        };
        let at = |s: u64| t0 + Duration::from_secs(s);
        use TokenDecision::*;
        // (lease, now, can_login, want)
        let cases = [
            (None, at(0), true, Login),
            (None, at(0), false, Lookup),
            (Some(lease(None, false)), at(99_999), false, Keep),
            (Some(lease(Some(30), true)), at(19), true, Keep),
            (Some(lease(Some(30), true)), at(20), true, Renew),
            (Some(lease(Some(30), true)), at(20), false, Renew),
            (Some(lease(Some(30), false)), at(20), true, Login),
            (Some(lease(Some(30), false)), at(20), false, Keep),
            (Some(lease(Some(30), false)), at(40), true, Login),
            (Some(lease(Some(3), true)), at(2), true, Renew),
        ];
        for (i, (l, now, can, want)) in cases.into_iter().enumerate() {
            assert_eq!(token_decision(l.as_ref(), now, can), want, "case {i}");
        }
        assert!(renewal_shrank(
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(10))
        ));
        assert!(!renewal_shrank(
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        ));
        assert!(!renewal_shrank(None, Some(Duration::from_secs(1))));
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

    #[test]
    fn long_last_error_is_cut_at_a_character_boundary() {
        let mut j = journal();
        j.last_error = Some("é".repeat(400));
        let m = journal_metadata(&HashMap::new(), &j, 1, None);
        let e = &m[K_LAST_ERROR];
        assert!(e.len() <= METADATA_VALUE_MAX && e.chars().all(|c| c == 'é'));
    }

    #[test]
    fn addresses_need_https_unless_loopback() {
        assert!(validate_address("https://vault.example:8200").is_ok());
        assert!(validate_address("http://127.0.0.1:8200").is_ok());
        assert!(validate_address("http://localhost:8200").is_ok());
        assert!(validate_address("http://[::1]:8200").is_ok());
        let e = validate_address("http://vault.example:8200").unwrap_err();
        assert!(matches!(e, VaultSetupError::Insecure { .. }), "{e}");
        let e = validate_address("https://user:hunter2@vault.example").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(validate_address("ftp://vault.example").is_err());
        assert!(validate_address("vault.example:8200").is_err());
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

    #[test]
    fn debug_output_never_shows_credentials() {
        let auth = VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: SecretString::from("role-id-value".to_owned()),
            secret_id: SecretString::from("secret-id-value".to_owned()),
        };
        let conn = VaultConnection::new(VaultSettings::new("http://127.0.0.1:1", auth)).unwrap();
        let d = VaultDestination::new(conn.clone(), "vault", "secret", "md/etl", KvVersion::V2)
            .unwrap();
        let tok = VaultConnection::new(VaultSettings::new(
            "http://127.0.0.1:1",
            VaultAuth::Token(SecretString::from("hvs.static-token".to_owned())),
        ))
        .unwrap();
        let printed = format!("{conn:?} {d:?} {tok:?}");
        for s in ["role-id-value", "secret-id-value", "hvs.static-token"] {
            assert!(!printed.contains(s), "{printed}");
        }
        assert_eq!(d.label(), "vault:secret/md/etl");
    }

    #[test]
    fn destinations_validate_mount_and_path() {
        let conn = VaultConnection::new(VaultSettings::new(
            "http://127.0.0.1:1",
            VaultAuth::Token(SecretString::from("t".to_owned())),
        ))
        .unwrap();
        let mk = |m: &str, p: &str| {
            VaultDestination::new(conn.clone(), "v", m, p, KvVersion::V1).map(|d| d.label())
        };
        assert_eq!(mk("/kv/", "/a/b/").unwrap(), "vault:kv/a/b (kv v1)");
        for (m, p) in [
            ("", "a"),
            ("kv", ""),
            ("kv", "a//b"),
            ("kv", "a/../b"),
            ("kv", "a b"),
        ] {
            assert!(mk(m, p).is_err(), "{m:?} {p:?}");
        }
        let e = mk("kv", "etl.lock").unwrap_err().to_string();
        assert!(e.contains(".lock"), "{e}");
    }

    #[test]
    fn policy_lists_every_path_of_the_layout() {
        let conn = VaultConnection::new(VaultSettings::new(
            "http://127.0.0.1:1",
            VaultAuth::Token(SecretString::from("t".to_owned())),
        ))
        .unwrap();
        let d = VaultDestination::new(conn, "v", "secret", "md/etl", KvVersion::V2).unwrap();
        let hcl = d.required_policy_hcl();
        for p in [
            "path \"secret/data/md/etl\"",
            "path \"secret/metadata/md/etl\"",
            "path \"secret/delete/md/etl\"",
            "path \"secret/data/md/etl.pending\"",
            "path \"secret/metadata/md/etl.pending\"",
            "path \"secret/data/md/etl.lock\"",
            "path \"secret/metadata/md/etl.lock\"",
            "path \"secret/delete/md/etl.lock\"",
        ] {
            assert!(hcl.contains(p), "{p} missing from\n{hcl}");
        }
    }

    #[test]
    fn missing_tls_files_are_named() {
        let mut s = VaultSettings::new(
            "https://vault.example",
            VaultAuth::Token(SecretString::from("t".to_owned())),
        );
        s.ca_file = Some("/nonexistent/ca.pem".into());
        let e = VaultConnection::new(s.clone()).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        s.ca_file = None;
        s.client_cert = Some("/nonexistent/cert.pem".into());
        let e = VaultConnection::new(s).unwrap_err();
        assert!(matches!(e, VaultSetupError::IncompleteIdentity), "{e}");
    }
}
