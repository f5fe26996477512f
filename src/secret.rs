//! Secret values: MotherDuck tokens, the admin token, embed sessions.
//!
//! Every secret in the process lives in a [`SecretString`]. Its `Debug`
//! prints a fixed placeholder, it has no `Display`, and its memory is zeroed
//! on drop, so a secret can only reach a log line, an error or a metric
//! through an explicit `expose_secret()` call. Those calls are few and each
//! one is where a secret is deliberately handed to the outside world: an
//! `Authorization` header, a store write, a hook that opted in.

pub use secrecy::{ExposeSecret, SecretString};

use std::path::Path;

/// Why a secret could not be read from a file.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("failed to read secret file `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file `{path}` is empty")]
    Empty { path: String },
    #[error("secret file `{path}` is not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("secret file `{path}` {reason} (mode {mode:o}); {fix}")]
    Exposed {
        path: String,
        mode: u32,
        reason: String,
        fix: &'static str,
    },
}

/// Why a secret file's permissions share it too widely, or `None` when only
/// this process's user (and groups it belongs to) can read it.
///
/// Readable by others is always refused. Readable by a group is accepted
/// only for a group this process is in: Kubernetes mounts Secrets with the
/// pod's `fsGroup` (mode 0440), and a systemd credential or a file shared
/// with the service's own group is the same arrangement. Anyone else in a
/// foreign group could read the token.
fn exposure(mode: u32, gid: u32) -> Option<(String, &'static str)> {
    const FIX: &str = "make it owner-only (chmod 600)";
    if mode & 0o004 != 0 {
        return Some(("is readable by others".to_owned(), FIX));
    }
    if mode & 0o040 != 0 && !in_group(gid) {
        return Some((
            format!("is readable by group {gid}, which this process is not in"),
            "make it owner-only (chmod 600) or give it this process's group",
        ));
    }
    None
}

/// Whether this process runs with `gid` as its effective or a supplementary
/// group.
fn in_group(gid: u32) -> bool {
    // SAFETY: getegid has no preconditions and cannot fail.
    if unsafe { libc::getegid() } == gid {
        return true;
    }
    // SAFETY: called first with a zero-length buffer to learn the count, then
    // with a buffer of that many entries; the kernel writes at most `len`.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let Ok(len) = usize::try_from(n) else {
        return false;
    };
    let mut groups: Vec<libc::gid_t> = vec![0; len];
    let got = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    usize::try_from(got).is_ok_and(|got| groups[..got.min(len)].contains(&gid))
}

/// Reads a secret from a file, trimming surrounding whitespace (editors and
/// `echo` add a trailing newline that must not become part of the token).
///
/// # Errors
/// Fails when the file cannot be read, is readable by others or by a group
/// this process is not in, is not UTF-8, or holds only whitespace. The error
/// names the path, never the content.
pub fn read_secret_file(path: &Path) -> Result<SecretString, SecretFileError> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let display = path.display().to_string();
    let io = |source| SecretFileError::Io {
        path: display.clone(),
        source,
    };
    // The permissions are read from the open file, so they are those of the
    // bytes read, even if the path is replaced in between.
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    // A directory and the like fail below with the reader's own error.
    if let Some((reason, fix)) = exposure(meta.mode(), meta.gid()).filter(|_| meta.is_file()) {
        return Err(SecretFileError::Exposed {
            path: display.clone(),
            mode: meta.mode() & 0o7777,
            reason,
            fix,
        });
    }
    // Sized up front so the buffer is not regrown, which would leave
    // unzeroed copies of the secret behind.
    let size = usize::try_from(meta.len()).unwrap_or(0).min(1 << 20);
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(size + 1));
    file.read_to_end(&mut bytes).map_err(io)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| SecretFileError::NotUtf8 {
        path: display.clone(),
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SecretFileError::Empty { path: display });
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = SecretString::from("eyJhbGciOiJIUzI1NiJ9.payload.sig".to_owned());
        let printed = format!("{s:?}");
        assert!(!printed.contains("eyJ"), "{printed}");
    }

    fn write_owner_only(path: &Path, content: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A fresh directory for one test's secret files.
    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mdr-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_is_trimmed_and_empty_file_rejected() {
        let dir = temp_dir();
        let f = dir.join("tok");
        write_owner_only(&f, "abc123\n");
        assert_eq!(read_secret_file(&f).unwrap().expose_secret(), "abc123");
        write_owner_only(&f, " \n");
        let err = read_secret_file(&f).unwrap_err().to_string();
        assert!(err.contains("is empty") && err.contains("tok"), "{err}");
        let missing = read_secret_file(&dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("failed to read secret file"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_others_can_read_is_refused_without_showing_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir();
        let f = dir.join("admin.token");
        write_owner_only(&f, "md-secret-value\n");
        for mode in [0o644, 0o604, 0o444] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret_file(&f).unwrap_err().to_string();
            assert!(
                err.contains("admin.token")
                    && err.contains("readable by others")
                    && err.contains(&format!("mode {mode:o}"))
                    && err.contains("chmod 600"),
                "{err}"
            );
            assert!(!err.contains("md-secret-value"), "{err}");
        }
        // Owner-only, and shared with this process's own group (the
        // Kubernetes `fsGroup` mount, mode 0440), are both accepted.
        for mode in [0o600, 0o400, 0o640, 0o440] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                read_secret_file(&f).unwrap().expose_secret(),
                "md-secret-value",
                "mode {mode:o}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn group_read_is_accepted_only_for_a_group_this_process_is_in() {
        let own = unsafe { libc::getegid() };
        assert!(in_group(own));
        assert_eq!(exposure(0o100640, own), None);
        assert_eq!(exposure(0o100600, own), None);
        let foreign = (60_000..u32::MAX).find(|g| !in_group(*g)).unwrap();
        let (reason, fix) = exposure(0o100640, foreign).unwrap();
        assert!(
            reason.contains(&format!("group {foreign}")) && reason.contains("not in"),
            "{reason}"
        );
        assert!(fix.contains("chmod 600"), "{fix}");
        // Owner-only is fine whatever the group is.
        assert_eq!(exposure(0o100600, foreign), None);
        assert!(exposure(0o100604, own).is_some());
    }
}
