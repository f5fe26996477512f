//! How to reach and authenticate to Vault, as configured, and the set-up errors.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::secret::SecretString;
use crate::stores::StoreErrorKind;

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

pub(super) fn validate_address(raw: &str) -> Result<url::Url, VaultSetupError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_https_unless_loopback() {
        for ok in [
            "https://vault.example:8200",
            "http://127.0.0.1:8200",
            "http://localhost:8200",
            "http://[::1]:8200",
        ] {
            assert!(validate_address(ok).is_ok(), "{ok}");
        }
        let e = validate_address("http://vault.example:8200").unwrap_err();
        assert!(matches!(e, VaultSetupError::Insecure { .. }), "{e}");
        let e = validate_address("https://user:hunter2@vault.example").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        for bad in ["ftp://vault.example", "vault.example:8200"] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
    }
}
