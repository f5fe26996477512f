//! Mapping between field paths and places in the TOML source, so every
//! configuration error can name the line, the column and the field.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `policy[0].schedule.cron`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    pub fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// The parsed document with spans, for looking places up.
pub struct SourceMap<'a> {
    src: &'a str,
    root: Option<Spanned<DeTable<'a>>>,
}

impl<'a> SourceMap<'a> {
    pub fn new(src: &'a str) -> SourceMap<'a> {
        SourceMap {
            src,
            root: DeTable::parse(src).ok(),
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        (line, col)
    }

    /// The span of the value at `path`, or of its nearest existing parent.
    pub fn span_of(&self, path: &FieldPath) -> Option<Range<usize>> {
        let root = self.root.as_ref()?;
        let mut best = root.span();
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        for seg in &path.0 {
            let next = match (seg, table, value.map(Spanned::get_ref)) {
                (Seg::Key(k), Some(t), _) => t
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k)
                    .map(|(key, v)| (v, key.span())),
                (Seg::Index(i), _, Some(DeValue::Array(a))) => a.get(*i).map(|v| (v, v.span())),
                _ => None,
            };
            let Some((v, key_span)) = next else { break };
            // Point at the key for scalars (where the user looks), at the
            // value for tables and arrays.
            best = match v.get_ref() {
                DeValue::Table(_) | DeValue::Array(_) => v.span(),
                _ => key_span,
            };
            value = Some(v);
            table = match v.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        Some(best)
    }

    /// The deepest field whose value contains `span`, for errors that come
    /// with a place but no field name.
    pub fn path_at(&self, span: &Range<usize>) -> FieldPath {
        let mut path = FieldPath::default();
        let Some(root) = self.root.as_ref() else {
            return path;
        };
        let contains =
            |r: &Range<usize>| r.start <= span.start && span.end <= r.end.max(r.start + 1);
        // A clone of the root keeps the borrows simple; configs are small.
        let root_value = DeValue::Table(root.get_ref().clone());
        let mut cur: &DeValue<'_> = &root_value;
        loop {
            let step = match cur {
                DeValue::Table(t) => t.iter().find_map(|(k, v)| {
                    (contains(&v.span()) || contains(&k.span()))
                        .then(|| (Seg::Key(k.get_ref().to_string()), v))
                }),
                DeValue::Array(a) => a
                    .iter()
                    .enumerate()
                    .find_map(|(i, v)| contains(&v.span()).then_some((Seg::Index(i), v))),
                _ => None,
            };
            let Some((seg, v)) = step else { break };
            path.0.push(seg);
            cur = v.get_ref();
        }
        path
    }
}
