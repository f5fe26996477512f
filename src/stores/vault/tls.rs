//! The connection's TLS files: read and checked at start, and read again
//! when they change on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};
use zeroize::Zeroizing;

use super::connection::{VaultConnection, build_client, error_chain};
use super::settings::VaultSetupError;

/// The TLS files of a connection and what they looked like when last read.
pub(super) struct TlsFiles {
    pub(super) ca_file: Option<PathBuf>,
    pub(super) identity: Option<(PathBuf, PathBuf)>,
    pub(super) seen: Mutex<Vec<Option<FileStamp>>>,
}

/// Enough of a file's metadata to notice it was replaced or rewritten
/// (through a symlink, as Kubernetes projects secrets, too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileStamp {
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

    pub(super) fn stamps(&self) -> Vec<Option<FileStamp>> {
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
    pub(super) fn read(&self) -> Result<(Vec<String>, Option<reqwest::Identity>), VaultSetupError> {
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

impl VaultConnection {
    /// Rebuilds the clients when a TLS file changed since it was read: a
    /// renewed client certificate or CA bundle is used from the next
    /// request on. Unreadable or invalid new files are logged and the
    /// clients in use are kept (the files may be mid-update).
    pub(super) fn reload_tls_if_changed(&self) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;
    use crate::stores::vault::{VaultAuth, VaultSettings};

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
