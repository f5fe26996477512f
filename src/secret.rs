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
}

/// Reads a secret from a file, trimming surrounding whitespace (editors and
/// `echo` add a trailing newline that must not become part of the token).
///
/// # Errors
/// Fails when the file cannot be read, is not UTF-8, or holds only
/// whitespace. The error names the path, never the content.
pub fn read_secret_file(path: &Path) -> Result<SecretString, SecretFileError> {
    let display = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| SecretFileError::Io {
        path: display.clone(),
        source,
    })?;
    let bytes = zeroize::Zeroizing::new(bytes);
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

    #[test]
    fn file_is_trimmed_and_empty_file_rejected() {
        let dir = std::env::temp_dir().join(format!("mdr-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tok");
        std::fs::write(&f, "abc123\n").unwrap();
        assert_eq!(read_secret_file(&f).unwrap().expose_secret(), "abc123");
        std::fs::write(&f, " \n").unwrap();
        let err = read_secret_file(&f).unwrap_err().to_string();
        assert!(err.contains("is empty") && err.contains("tok"), "{err}");
        let missing = read_secret_file(&dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("failed to read secret file"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
