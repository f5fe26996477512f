//! The validator: what it carries through a configuration (the source map,
//! the environment, the problems found so far) and the helpers every
//! section uses to report a problem at its place or to read a common kind
//! of value (durations, paths, tables picked by their `type`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::span::{FieldPath, SourceMap};
use super::{ConfigError, Env, LoadOptions, MAX_DURATION};

/// Validates one configuration text: each section of it through its own
/// methods (one module a section), every problem collected with its place.
pub(super) struct Validator<'a> {
    /// The configuration file, named in every problem.
    pub(super) file: PathBuf,
    /// Its directory, which relative paths resolve against.
    pub(super) base: PathBuf,
    /// The parsed document, for the place of a field.
    pub(super) map: SourceMap<'a>,
    /// Where `{ env = … }` and `$CREDENTIALS_DIRECTORY` are looked up.
    pub(super) env: &'a dyn Env,
    /// Whether secrets are read or only checked for form.
    pub(super) opts: LoadOptions,
    /// Every problem found so far, section by section.
    pub(super) errors: Vec<ConfigError>,
    /// Legal but risky choices, for [`super::Config::warnings`].
    pub(super) warnings: Vec<String>,
    /// Environment variables the configuration reads secrets from; command
    /// hooks may not inherit them.
    pub(super) secret_envs: BTreeSet<String>,
}

/// The path of the document itself, which every field path starts from.
pub(super) fn root() -> FieldPath {
    FieldPath::default()
}

impl<'a> Validator<'a> {
    pub(super) fn error(&mut self, path: &FieldPath, reason: impl Into<String>) {
        let (line, column) = self
            .map
            .span_of(path)
            .map_or((1, 1), |s| self.map.line_col(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            field: path.to_string(),
            reason: reason.into(),
        });
    }

    pub(super) fn warn(&mut self, path: &FieldPath, reason: impl Into<String>) {
        let (line, _) = self
            .map
            .span_of(path)
            .map_or((1, 1), |s| self.map.line_col(s.start));
        self.warnings.push(format!(
            "{}:{line}: `{path}`: {}",
            self.file.display(),
            reason.into()
        ));
    }

    /// A humantime duration (at most [`MAX_DURATION`]), or `default` when
    /// absent.
    pub(super) fn duration(
        &mut self,
        raw: &Option<String>,
        path: &FieldPath,
        default: Duration,
    ) -> Duration {
        self.opt_duration(raw, path).unwrap_or(default)
    }

    /// [`duration`](Self::duration), which must be at least `min`.
    pub(super) fn duration_at_least(
        &mut self,
        raw: &Option<String>,
        path: &FieldPath,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let d = self.duration(raw, path, default);
        if d < min {
            let min = humantime::format_duration(min);
            self.error(path, format!("must be at least {min}"));
        }
        d
    }

    /// [`duration`](Self::duration), which must not be zero.
    pub(super) fn nonzero_duration(
        &mut self,
        raw: &Option<String>,
        path: &FieldPath,
        default: Duration,
    ) -> Duration {
        let d = self.duration(raw, path, default);
        if d.is_zero() {
            self.error(path, "must be greater than zero");
        }
        d
    }

    pub(super) fn opt_duration(
        &mut self,
        raw: &Option<String>,
        path: &FieldPath,
    ) -> Option<Duration> {
        let s = raw.as_ref()?;
        match humantime::parse_duration(s.trim()) {
            // Every duration is added to timestamps; beyond this, the
            // arithmetic would overflow instead of meaning anything.
            Ok(d) if d > MAX_DURATION => {
                self.error(
                    path,
                    format!(
                        "`{s}` is longer than 100 years, the longest duration any setting takes"
                    ),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    path,
                    format!("invalid duration `{s}`: {e} (use e.g. \"90s\", \"15m\", \"7d\")"),
                );
                None
            }
        }
    }

    pub(super) fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// The table at `path` split by its `type`, one of `kinds`: the kind,
    /// and the rest of the table for [`Validator::variant`]. Serde's tagged
    /// enums would buffer the table and lose every place inside it, so the
    /// variant's table is deserialized from the document itself, where
    /// every value keeps its span. `None` when there is no such table or
    /// its `type` is not one of `kinds` (the error is reported); `what`
    /// and `example` are for that message.
    pub(super) fn tagged_table<'k>(
        &mut self,
        path: &FieldPath,
        kinds: &[&'k str],
        what: &str,
        example: &str,
    ) -> Option<(&'k str, Spanned<DeValue<'a>>)> {
        let Some(value) = self.map.value(path) else {
            self.error(path, format!("the {what}'s table is missing"));
            return None;
        };
        let span = value.span();
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                path,
                format!("a {what} is a table with a `type`, such as {example}"),
            );
            return None;
        };
        let Some((_, tag)) = table.iter().find(|(k, _)| k.get_ref() == "type") else {
            self.error(path, "missing field `type`");
            return None;
        };
        let kind = tag
            .get_ref()
            .as_str()
            .and_then(|t| kinds.iter().copied().find(|k| *k == t));
        if let Some(kind) = kind {
            let rest: DeTable<'a> = table
                .iter()
                .filter(|(k, _)| k.get_ref() != "type")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            return Some((kind, Spanned::new(span, DeValue::Table(rest))));
        }
        // The message serde gives for a tagged enum, at the tag's value.
        let expected = kinds
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let reason = match tag.get_ref().as_str() {
            Some(t) => format!("unknown variant `{t}`, expected one of {expected}"),
            None => format!(
                "invalid type: {}, expected one of {expected}",
                tag.get_ref().type_str()
            ),
        };
        let (line, column) = self.map.line_col(tag.span().start);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            field: path.key("type").to_string(),
            reason,
        });
        None
    }

    /// Deserializes a table from [`Validator::tagged_table`]; serde's
    /// errors keep their place in the document.
    pub(super) fn variant<T: serde::Deserialize<'a>>(
        &mut self,
        table: Spanned<DeValue<'a>>,
    ) -> Option<T> {
        T::deserialize(ValueDeserializer::from(table))
            .map_err(|e| {
                let e = serde_error(&self.file, &self.map, &e);
                self.errors.push(e);
            })
            .ok()
    }
}

/// A TOML or serde error as a [`ConfigError`] at its place.
pub(super) fn serde_error(file: &Path, map: &SourceMap<'_>, e: &toml::de::Error) -> ConfigError {
    let reason = e.message().trim().to_owned();
    let mut span = e.span().unwrap_or(0..0);
    // An empty span is toml's way of pointing at the whole document (a
    // missing top-level table).
    let mut field = if span.is_empty() {
        FieldPath::default()
    } else {
        map.path_at(&span)
    };
    // Serde places an unknown field at its table; point at the key itself,
    // where the typo is.
    if let Some((path, key_span)) = unknown_field(&reason).and_then(|k| map.find_key(&field, k)) {
        field = path;
        span = key_span;
    }
    let (line, column) = map.line_col(span.start);
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        field: field.to_string(),
        reason,
    }
}

/// The key named by serde's "unknown field `key`, expected …" message.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key)
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

pub(super) fn plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.chars().any(char::is_control)
        && !s.starts_with('.')
}

/// Why a configured path cannot be used: a NUL byte cannot be passed to
/// the operating system, and newlines or other control characters in a
/// path are a pasting mistake that would also garble every message naming
/// it.
pub(super) fn path_problem(p: &Path) -> Option<String> {
    let text = p.to_string_lossy();
    text.chars().any(char::is_control).then(|| {
        format!(
            "`{}` contains a control character (NUL, newline, tab, ...); paths must not",
            text.escape_debug()
        )
    })
}
