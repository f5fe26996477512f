//! Secret references (`{ file = … }`, `{ env = … }`, `{ credential = … }`):
//! checked for form, resolved unless linting, and never echoed in an error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::raw::{RawConfig, RawHeaderValue, RawHook, RawSecret, RawSecretRef, RawStore};
use super::span::FieldPath;
use super::validator::{Validator, path_problem, plain_file_name};
use crate::secret::{SecretString, read_secret_file};

impl Validator<'_> {
    /// Resolves a secret reference; the value is never part of an error.
    pub(super) fn secret(
        &mut self,
        raw: &RawSecret,
        path: &FieldPath,
    ) -> Option<(SecretString, Option<String>)> {
        let r = match raw {
            RawSecret::Inline => {
                self.error(
                    path,
                    "inline secrets are not allowed; reference it with { file = \"...\" }, { env = \"VAR\" } or { credential = \"name\" }",
                );
                return None;
            }
            RawSecret::Ref(r) => r,
        };
        self.secret_ref(r, path)
    }

    /// Resolves a secret reference (or, without `resolve_secrets`, checks
    /// its form). A reference that looks like a pasted token is refused
    /// without being quoted, since then it is the secret itself.
    pub(super) fn secret_ref(
        &mut self,
        r: &RawSecretRef,
        path: &FieldPath,
    ) -> Option<(SecretString, Option<String>)> {
        let given: Vec<&str> = [
            r.file.as_ref().map(|_| "file"),
            r.env.as_ref().map(|_| "env"),
            r.credential.as_ref().map(|_| "credential"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given.as_slice() {
            [_] => {}
            [] => {
                self.error(
                    path,
                    "a secret reference needs one of `file`, `env` or `credential`",
                );
                return None;
            }
            more => {
                self.error(
                    path,
                    format!(
                        "give exactly one of `file`, `env` or `credential`, not {}",
                        more.iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                );
                return None;
            }
        }
        let pasted = |key: &str| {
            format!(
                "this looks like a token rather than a {key}; never put the secret itself in the configuration (the value is not shown)"
            )
        };
        if let Some(f) = &r.file {
            if f.as_os_str().is_empty() {
                self.error(&path.key("file"), "the secret file path is empty");
                return None;
            }
            if let Some(problem) = path_problem(f) {
                self.error(&path.key("file"), problem);
                return None;
            }
            if looks_like_token(&f.to_string_lossy()) {
                self.error(&path.key("file"), pasted("file path"));
                return None;
            }
            if !self.opts.resolve_secrets {
                return Some((unresolved(), None));
            }
            let f = self.path(f);
            return match read_secret_file(&f) {
                Ok(s) => Some((s, None)),
                Err(e) => {
                    self.error(&path.key("file"), e.to_string());
                    None
                }
            };
        }
        if let Some(var) = &r.env {
            if looks_like_token(var) {
                self.error(&path.key("env"), pasted("variable name"));
                return None;
            }
            if !valid_env_name(var) {
                self.error(
                    &path.key("env"),
                    format!(
                        "`{var}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
                    ),
                );
                return None;
            }
            if !self.opts.resolve_secrets {
                return Some((unresolved(), Some(var.clone())));
            }
            return match self.env.var(var).map(|v| v.trim().to_owned()) {
                Some(v) if !v.is_empty() => Some((SecretString::from(v), Some(var.clone()))),
                _ => {
                    self.error(
                        &path.key("env"),
                        format!("environment variable `{var}` is not set or empty"),
                    );
                    None
                }
            };
        }
        let name = r.credential.as_deref().unwrap_or_default();
        if looks_like_token(name) {
            self.error(&path.key("credential"), pasted("credential name"));
            return None;
        }
        if !plain_file_name(name) {
            self.error(
                &path.key("credential"),
                format!(
                    "invalid credential name `{name}`: it must be a file name in $CREDENTIALS_DIRECTORY (no `/`, not starting with `.`)"
                ),
            );
            return None;
        }
        if !self.opts.resolve_secrets {
            return Some((unresolved(), None));
        }
        let Some(dir) = self.env.var("CREDENTIALS_DIRECTORY") else {
            self.error(
                &path.key("credential"),
                format!("credential `{name}` needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=); it is not set"),
            );
            return None;
        };
        match read_secret_file(&Path::new(&dir).join(name)) {
            Ok(s) => Some((s, None)),
            Err(e) => {
                self.error(&path.key("credential"), e.to_string());
                None
            }
        }
    }
}

/// Whether a secret can be sent in an HTTP header: no line break or other
/// control character inside it (a stray one in a file would otherwise fail
/// only at the first request).
pub(super) fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The environment variable a secret reference names, if any.
fn env_of(s: &RawSecret) -> Option<String> {
    match s {
        RawSecret::Ref(r) => r.env.clone(),
        RawSecret::Inline => None,
    }
}

/// Every environment variable named by a secret reference.
pub(super) fn secret_env_names(
    raw: &RawConfig,
    stores: &BTreeMap<String, Result<RawStore, Option<&'static str>>>,
    hooks: &[Vec<Option<RawHook>>],
) -> BTreeSet<String> {
    let admin = env_of(&raw.motherduck.admin_token);
    let vault = stores.values().flat_map(|s| match s {
        Ok(RawStore::Vault(v)) => [&v.auth.token, &v.auth.role_id, &v.auth.secret_id]
            .into_iter()
            .flatten()
            .filter_map(env_of)
            .collect(),
        _ => Vec::new(),
    });
    let headers = hooks
        .iter()
        .flatten()
        .filter_map(|h| match h {
            Some(RawHook::Http(h)) => Some(h.headers.values()),
            _ => None,
        })
        .flatten()
        .filter_map(|v| match v {
            RawHeaderValue::Secret(r) => r.env.clone(),
            RawHeaderValue::Literal(_) => None,
        });
    admin.into_iter().chain(vault).chain(headers).collect()
}

/// The placeholder a secret gets when `resolve_secrets` is off.
pub(super) fn unresolved() -> SecretString {
    SecretString::from("unresolved".to_owned())
}

/// Whether a value meant to *name* a secret is more likely the secret: a
/// MotherDuck token is a JWT (`eyJ…` in three dot-separated parts). Such a
/// value is never quoted in an error.
fn looks_like_token(s: &str) -> bool {
    s.trim_start().starts_with("eyJ") && s.matches('.').count() >= 2
}

/// A portable environment variable name: letters, digits and `_`, not
/// starting with a digit.
fn valid_env_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
